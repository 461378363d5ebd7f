//! The hub on its own: no sockets, a protocol that writes readable lines,
//! frames read straight from the outboxes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::Hub;
use crate::broker::{EnvelopeSink, MemoryBroker};
use crate::error::{JoinError, PublishError};
use crate::history::{
    HistoryError, HistoryLimits, HistoryPage, HistoryStore, MemoryHistory, Published, Since,
};
use crate::presence::MemoryPresence;
use crate::room::{RoomRule, RoomRules};
use crate::{
    BoxFuture, Connection, Disconnect, Envelope, Frame, HubConfig, NodeId, Payload, PresenceEvent,
    PresenceKind, Protocol, Publication, StreamPosition, Target, Who,
};

/// Writes `event data`, `presence join|leave user` and `member room in|out`,
/// and counts how often it encoded a publication.
#[derive(Default)]
struct Lines {
    encoded: AtomicUsize,
}

impl Protocol for Lines {
    fn encode_publication(&self, p: &Publication) -> Frame {
        self.encoded.fetch_add(1, Ordering::Relaxed);
        Frame::text(format!("{} {}", p.event, p.data.get()))
    }

    fn encode_presence(&self, e: &PresenceEvent) -> Option<Frame> {
        let kind = match e.kind {
            PresenceKind::Join => "join",
            PresenceKind::Leave => "leave",
        };
        Some(Frame::text(format!("presence {kind} {}", e.user)))
    }

    fn encode_membership(&self, room: &str, joined: bool) -> Option<Frame> {
        let how = if joined { "in" } else { "out" };
        Some(Frame::text(format!("member {room} {how}")))
    }
}

/// What is queued for `c` now, as text; empty if nothing is.
async fn queued(c: &Connection) -> Vec<String> {
    if c.outbox().queued_bytes() == 0 {
        return Vec::new();
    }
    let mut batch = Vec::new();
    c.outbox().next_batch(&mut batch).await;
    batch
        .iter()
        .map(|f| f.as_text().unwrap_or("<binary>").to_owned())
        .collect()
}

fn to_room(room: &str, event: &str, data: u32) -> Publication {
    Publication::json(Target::Room(room.into()), event, &data).unwrap()
}

#[tokio::test]
async fn presence_events_follow_a_users_first_and_last_connection() {
    let hub = Hub::new(HubConfig::default());
    let lines = Arc::new(Lines::default());
    let alice = hub.connect(lines.clone(), Some("alice")).await.unwrap();
    let bob1 = hub.connect(lines.clone(), Some("bob")).await.unwrap();
    let bob2 = hub.connect(lines.clone(), Some("bob")).await.unwrap();

    assert!(alice.join("lobby").await.unwrap());
    assert_eq!(queued(&alice).await, ["presence join alice"]);
    assert!(
        !alice.join("lobby").await.unwrap(),
        "a second join is a no-op"
    );

    assert!(bob1.join("lobby").await.unwrap());
    assert_eq!(queued(&alice).await, ["presence join bob"]);
    assert_eq!(queued(&bob1).await, ["presence join bob"]);

    // Bob's second connection is not news; neither is his first one leaving.
    assert!(bob2.join("lobby").await.unwrap());
    assert!(bob1.leave("lobby").await.unwrap());
    assert!(
        !bob1.leave("lobby").await.unwrap(),
        "not in the room any more"
    );
    assert_eq!(queued(&alice).await, Vec::<String>::new());

    // His last one closing is.
    bob2.close().await;
    assert_eq!(queued(&alice).await, ["presence leave bob"]);

    let room = hub.room_presence("lobby").await.unwrap();
    let users: Vec<_> = room.users.iter().map(|u| u.user.to_string()).collect();
    assert_eq!(users, ["alice"]);
    assert_eq!(hub.local_rooms(), 1);
    alice.close().await;
    assert_eq!(hub.local_rooms(), 0);
    assert_eq!(hub.local_connections(), 1, "bob1 is still open");
}

#[tokio::test]
async fn a_publication_is_encoded_once_and_skips_the_excluded_connection() {
    let hub = Hub::new(HubConfig::default());
    let lines = Arc::new(Lines::default());
    let mut conns = Vec::new();
    for _ in 0..3 {
        let c = hub.connect(lines.clone(), None).await.unwrap();
        c.join("room").await.unwrap();
        conns.push(c);
    }
    let outsider = hub.connect(lines.clone(), None).await.unwrap();

    let mut p = to_room("room", "chat", 1);
    p.exclude = Some(conns[1].id());
    assert_eq!(hub.publish(p).await.unwrap(), 2);
    assert_eq!(lines.encoded.load(Ordering::Relaxed), 1);
    assert_eq!(queued(&conns[0]).await, ["chat 1"]);
    assert_eq!(queued(&conns[1]).await, Vec::<String>::new());
    assert_eq!(queued(&conns[2]).await, ["chat 1"]);
    assert_eq!(queued(&outsider).await, Vec::<String>::new());

    // A user target reaches every connection of the user, and nobody else.
    let carol = hub.connect(lines.clone(), Some("carol")).await.unwrap();
    let p = Publication::json(Target::User("carol".into()), "dm", &2).unwrap();
    assert_eq!(hub.publish(p).await.unwrap(), 1);
    assert_eq!(queued(&carol).await, ["dm 2"]);
    assert_eq!(queued(&conns[0]).await, Vec::<String>::new());

    let m = hub.metrics();
    assert_eq!(m.publications.load(Ordering::Relaxed), 2);
    assert_eq!(m.messages_out.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn a_slow_consumer_is_closed_and_the_others_keep_receiving() {
    let config = HubConfig {
        max_queue_bytes: 64,
        ..HubConfig::default()
    };
    let hub = Hub::new(config);
    let lines = Arc::new(Lines::default());
    let slow = hub.connect(lines.clone(), None).await.unwrap();
    let fast = hub.connect(lines.clone(), None).await.unwrap();
    slow.join("r").await.unwrap();
    fast.join("r").await.unwrap();

    for i in 0..20 {
        hub.publish(to_room("r", "tick", i)).await.unwrap();
        assert_eq!(queued(&fast).await, [format!("tick {i}")]);
    }
    assert!(slow.outbox().is_closed());
    assert_eq!(slow.outbox().closed().await, Disconnect::SLOW);
    assert_eq!(
        hub.metrics()
            .slow_consumer_disconnects
            .load(Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn server_side_joins_reach_every_connection_of_a_user_with_a_notice() {
    let hub = Hub::new(HubConfig::default());
    let lines = Arc::new(Lines::default());
    let a = hub.connect(lines.clone(), Some("dana")).await.unwrap();
    let b = hub.connect(lines.clone(), Some("dana")).await.unwrap();
    let other = hub.connect(lines.clone(), Some("erin")).await.unwrap();

    assert_eq!(hub.join(Who::User("dana".into()), "team").await.unwrap(), 2);
    assert_eq!(
        queued(&a).await,
        ["member team in", "presence join dana"],
        "the notice comes before the presence event"
    );
    assert_eq!(queued(&b).await, ["member team in"]);
    assert_eq!(a.rooms(), ["team"]);
    assert!(other.rooms().is_empty());

    assert_eq!(hub.close_room("team").await.unwrap(), 2);
    // Dana's leave event would go to the room's members: there are none left.
    assert_eq!(queued(&a).await, ["member team out"]);
    assert_eq!(queued(&b).await, ["member team out"]);
    assert_eq!(hub.local_rooms(), 0);
}

#[tokio::test]
async fn join_limits_are_typed_refusals() {
    let config = HubConfig {
        max_rooms_per_connection: 1,
        rooms: RoomRules::new(vec![RoomRule {
            max_members: 1,
            ..RoomRule::default_for("small")
        }]),
        ..HubConfig::default()
    };
    let hub = Hub::new(config);
    let lines = Arc::new(Lines::default());
    let a = hub.connect(lines.clone(), None).await.unwrap();
    let b = hub.connect(lines.clone(), None).await.unwrap();

    a.join("small").await.unwrap();
    assert!(matches!(
        b.join("small").await,
        Err(JoinError::RoomFull { max: 1 })
    ));
    assert!(matches!(
        a.join("another").await,
        Err(JoinError::TooManyRooms { max: 1 })
    ));
    assert!(matches!(b.join("").await, Err(JoinError::InvalidRoom(_))));
    assert!(b.rooms().is_empty(), "a refused join leaves nothing behind");
    assert!(matches!(
        hub.publish(Publication::json(Target::All, "", &0).unwrap())
            .await,
        Err(PublishError::InvalidEvent)
    ));
}

/// A history store whose reads wait until the test lets them go, telling the
/// test when a reader arrived.
struct Gated {
    store: MemoryHistory,
    arrived: Notify,
    proceed: Notify,
}

impl Gated {
    async fn gate(&self) {
        self.arrived.notify_one();
        self.proceed.notified().await;
    }
}

impl HistoryStore for Gated {
    fn attach(&self, node: NodeId, sink: Arc<dyn EnvelopeSink>) {
        self.store.attach(node, sink)
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
        let (room, since, limits) = (room.to_owned(), since.clone(), *limits);
        Box::pin(async move {
            // Only a resuming join waits; the test's own reads do not.
            if matches!(since, Since::Offset { .. }) {
                self.gate().await;
            }
            self.store.read(&room, &since, limit, &limits).await
        })
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

fn history_hub(store: Arc<dyn HistoryStore>) -> Hub {
    let config = HubConfig {
        rooms: RoomRules::new(Vec::new()).with_history(HistoryLimits {
            size: 100,
            ttl: Duration::from_secs(600),
        }),
        ..HubConfig::default()
    };
    Hub::with_stores(
        config,
        Arc::new(MemoryBroker::new()),
        Arc::new(MemoryPresence::new()),
        store,
    )
}

#[tokio::test]
async fn a_join_that_reads_history_holds_live_publications_back_and_drops_late_copies() {
    let store = Arc::new(Gated {
        store: MemoryHistory::new(),
        arrived: Notify::new(),
        proceed: Notify::new(),
    });
    let hub = history_hub(store.clone());
    let lines = Arc::new(Lines::default());
    let member = hub.connect(lines.clone(), None).await.unwrap();
    member.join("h").await.unwrap();
    hub.publish(to_room("h", "m", 1)).await.unwrap();
    hub.publish(to_room("h", "m", 2)).await.unwrap();
    assert_eq!(queued(&member).await, ["m 1", "m 2"]);
    let epoch = member.marks()["h"].epoch.to_string();

    // A client that has offset 1 comes back; its read of the stream waits.
    let late = Arc::new(hub.connect(lines.clone(), None).await.unwrap());
    let joining = tokio::spawn({
        let late = late.clone();
        async move {
            let since = Since::Offset { offset: 1, epoch };
            late.join_since("h", since, |r| {
                Some(Frame::text(format!("recovered {}", r.recovered)))
            })
            .await
            .unwrap()
        }
    });
    store.arrived.notified().await;

    // Published while it reads: the member gets it, the joiner later.
    hub.publish(to_room("h", "m", 3)).await.unwrap();
    assert_eq!(queued(&member).await, ["m 3"]);
    assert_eq!(queued(&late).await, Vec::<String>::new(), "held back");

    store.proceed.notify_one();
    let recovery = joining.await.unwrap();
    assert!(recovery.joined && recovery.recovered);
    assert_eq!(recovery.position.as_ref().unwrap().offset, 3);
    // The reply, then what it missed, in order, each once: 3 was both read
    // and held, and goes out once.
    assert_eq!(queued(&late).await, ["recovered true", "m 2", "m 3"]);

    // A late copy of something the join read (as Redis may deliver it after
    // the read) is dropped; the first newer one passes and ends the filter.
    let page = hub.history("h", &Since::Oldest, 10).await;
    let third = page.unwrap().publications[2].clone();
    let copy = Envelope {
        origin: NodeId::random(),
        payload: Payload::Publication(third),
    };
    super::delivery::Receiver(hub.downgrade().0).deliver(copy);
    assert_eq!(
        queued(&late).await,
        Vec::<String>::new(),
        "late copy dropped"
    );
    assert_eq!(
        queued(&member).await,
        ["m 3"],
        "a member without a filter gets it"
    );
    hub.publish(to_room("h", "m", 4)).await.unwrap();
    assert_eq!(queued(&late).await, ["m 4"]);
    assert_eq!(queued(&member).await, ["m 4"]);
    assert_eq!(hub.metrics().recoveries.load(Ordering::Relaxed), 1);
    assert_eq!(hub.metrics().replayed.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_join_after_a_gap_is_not_recovered_and_replays_nothing() {
    let hub = history_hub(Arc::new(MemoryHistory::new()));
    let lines = Arc::new(Lines::default());
    let member = hub.connect(lines.clone(), None).await.unwrap();
    member.join("h").await.unwrap();
    hub.publish(to_room("h", "m", 1)).await.unwrap();

    let late = hub.connect(lines.clone(), None).await.unwrap();
    let since = Since::Offset {
        offset: 1,
        epoch: "an-epoch-long-gone".into(),
    };
    let r = late
        .join_since("h", since, |r| {
            Some(Frame::text(format!("recovered {}", r.recovered)))
        })
        .await
        .unwrap();
    assert!(r.joined && !r.recovered);
    assert_eq!(queued(&late).await, ["recovered false"]);
    assert_eq!(hub.metrics().recoveries_failed.load(Ordering::Relaxed), 1);
}
