//! A publication the history store appended before a join read the stream,
//! but delivered after the join's replay (as Redis can, its pub/sub message
//! trailing the read), reaches the joining connection once: from the replay.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use roomcast_core::broker::{EnvelopeSink, MemoryBroker};
use roomcast_core::history::{
    HistoryError, HistoryLimits, HistoryPage, HistoryStore, MemoryHistory, Published, Since,
};
use roomcast_core::presence::MemoryPresence;
use roomcast_core::room::RoomRules;
use roomcast_core::{
    BoxFuture, Envelope, Frame, Hub, HubConfig, NodeId, PresenceEvent, Protocol, Publication,
    StreamPosition, Target,
};

/// Passes deliveries on, or keeps them while gated.
#[derive(Default)]
struct Gate {
    sink: Mutex<Option<Arc<dyn EnvelopeSink>>>,
    gated: Mutex<Option<Vec<Envelope>>>,
}

impl EnvelopeSink for Gate {
    fn receive(&self, envelope: Envelope) {
        let _ = self.deliver(envelope);
    }

    fn deliver(&self, envelope: Envelope) -> usize {
        if let Some(kept) = self.gated.lock().unwrap().as_mut() {
            kept.push(envelope);
            return 0;
        }
        let sink = self.sink.lock().unwrap().clone().unwrap();
        sink.deliver(envelope)
    }
}

impl Gate {
    fn close(&self) {
        *self.gated.lock().unwrap() = Some(Vec::new());
    }

    /// Delivers what was kept, late.
    fn open(&self) {
        let kept = self.gated.lock().unwrap().take().unwrap_or_default();
        let sink = self.sink.lock().unwrap().clone().unwrap();
        for e in kept {
            sink.deliver(e);
        }
    }
}

/// The memory store, its deliveries going through a [`Gate`].
struct Laggy {
    store: MemoryHistory,
    gate: Arc<Gate>,
}

impl HistoryStore for Laggy {
    fn attach(&self, node: NodeId, sink: Arc<dyn EnvelopeSink>) {
        *self.gate.sink.lock().unwrap() = Some(sink);
        self.store.attach(node, self.gate.clone());
    }
    fn publish(
        &self,
        origin: NodeId,
        publication: Publication,
        limits: &HistoryLimits,
    ) -> BoxFuture<'_, Result<Published, HistoryError>> {
        self.store.publish(origin, publication, limits)
    }
    fn read(
        &self,
        room: &str,
        since: &Since,
        limit: usize,
        limits: &HistoryLimits,
    ) -> BoxFuture<'_, Result<HistoryPage, HistoryError>> {
        self.store.read(room, since, limit, limits)
    }
    fn open(
        &self,
        room: &str,
        limits: &HistoryLimits,
    ) -> BoxFuture<'_, Result<StreamPosition, HistoryError>> {
        self.store.open(room, limits)
    }
    fn remove(&self, room: &str) -> BoxFuture<'_, Result<(), HistoryError>> {
        self.store.remove(room)
    }
    fn keep_session(
        &self,
        key: &str,
        record: String,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), HistoryError>> {
        self.store.keep_session(key, record, ttl)
    }
    fn take_session(&self, key: &str) -> BoxFuture<'_, Result<Option<String>, HistoryError>> {
        self.store.take_session(key)
    }
}

/// Frames are the publication's data.
struct Data;

impl Protocol for Data {
    fn encode_publication(&self, p: &Publication) -> Frame {
        Frame::text(p.data.get().to_owned())
    }
    fn encode_presence(&self, _: &PresenceEvent) -> Option<Frame> {
        None
    }
    fn encode_membership(&self, _: &str, _: bool) -> Option<Frame> {
        None
    }
}

fn publication(n: u64) -> Publication {
    Publication::json(Target::Room("h".into()), "n", &n).unwrap()
}

#[tokio::test]
async fn a_late_copy_of_a_replayed_publication_is_dropped() {
    let gate = Arc::new(Gate::default());
    let store = Arc::new(Laggy {
        store: MemoryHistory::new(),
        gate: gate.clone(),
    });
    let rooms = RoomRules::default().with_history(HistoryLimits {
        size: 10,
        ttl: Duration::from_secs(60),
    });
    let hub = Hub::with_stores(
        HubConfig {
            rooms,
            ..HubConfig::default()
        },
        Arc::new(MemoryBroker::new()),
        Arc::new(MemoryPresence::new()),
        store,
    );
    hub.publish(publication(0)).await.unwrap();
    let epoch = hub
        .history("h", &Since::Latest, 0)
        .await
        .unwrap()
        .position
        .unwrap()
        .epoch
        .to_string();
    // Publication 1 is in the stream, its delivery still on its way.
    gate.close();
    hub.publish(publication(1)).await.unwrap();
    let conn = hub.connect(Arc::new(Data), None).await.unwrap();
    let r = conn
        .join_since("h", Since::Offset { offset: 0, epoch }, |_| None)
        .await
        .unwrap();
    assert!(r.recovered);
    assert_eq!(r.position.unwrap().offset, 2);
    gate.open();
    hub.publish(publication(2)).await.unwrap();
    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some("2") {
        let mut batch = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), conn.outbox().next_batch(&mut batch))
            .await
            .expect("frames in time");
        got.extend(batch.iter().map(|f| f.as_text().unwrap().to_owned()));
    }
    assert_eq!(got, ["0", "1", "2"], "each publication once, in order");
    conn.close().await;
}
