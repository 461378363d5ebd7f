//! The cross-node backplane: how publications, presence events and server-side
//! commands reach the other nodes of a cluster.
//!
//! A hub delivers to its own connections itself and hands every envelope to its
//! broker for the *other* nodes. A node tells the broker which rooms it has
//! members in, so that a broker can route a room's traffic only to the nodes
//! that need it.

mod memory;

use std::sync::Arc;

pub use memory::MemoryBroker;

use crate::{BoxFuture, Envelope, NodeId};

/// The broker failed to carry an envelope.
#[derive(Debug, Clone, thiserror::Error)]
#[error("broker unavailable: {0}")]
pub struct BrokerError(pub String);

/// Where a broker hands envelopes from other nodes; implemented by the hub.
pub trait EnvelopeSink: Send + Sync + 'static {
    /// An envelope from another node.
    fn receive(&self, envelope: Envelope);
}

/// The cross-node backplane; see the module docs.
pub trait Broker: Send + Sync + 'static {
    /// Registers the node's sink; called once by the hub when it starts.
    fn attach(&self, node: NodeId, sink: Arc<dyn EnvelopeSink>);

    /// Carries an envelope to every other node that needs it.
    fn publish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// The node now has members in `room`: deliver that room's envelopes to it.
    fn subscribe_room(&self, node: NodeId, room: &str) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// The node has no members left in `room`.
    fn unsubscribe_room(&self, node: NodeId, room: &str) -> BoxFuture<'_, Result<(), BrokerError>>;
}

/// The shared test suite every [`Broker`] implementation must pass.
///
/// `make` returns brokers that share one backplane (for the memory broker, the
/// same instance; for a network broker, clients of the same server).
pub mod suite {
    use std::sync::Mutex;

    use super::*;
    use crate::{Payload, PresenceEvent, PresenceKind, Publication, Target};

    #[derive(Default)]
    struct Recorder(Mutex<Vec<Envelope>>, tokio::sync::Notify);

    impl EnvelopeSink for Recorder {
        fn receive(&self, envelope: Envelope) {
            self.0.lock().unwrap().push(envelope);
            self.1.notify_one();
        }
    }

    impl Recorder {
        async fn wait_for(&self, n: usize) -> Vec<Envelope> {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                {
                    let got = self.0.lock().unwrap();
                    if got.len() >= n {
                        return got.clone();
                    }
                }
                if tokio::time::timeout_at(deadline, self.1.notified())
                    .await
                    .is_err()
                {
                    panic!("timed out waiting for {n} envelopes");
                }
            }
        }
        fn len(&self) -> usize {
            self.0.lock().unwrap().len()
        }
    }

    fn room_pub(room: &str, event: &str) -> Envelope {
        Envelope {
            origin: NodeId(0x0100_0001),
            payload: Payload::Publication(Arc::new(
                Publication::json(Target::Room(room.into()), event, &1).unwrap(),
            )),
        }
    }

    /// Runs every case against brokers made by `make`.
    pub async fn run<B: Broker>(make: impl Fn() -> Arc<B>) {
        routes_rooms_only_to_subscribed_nodes(&make).await;
        never_returns_an_envelope_to_its_origin(&make).await;
    }

    async fn routes_rooms_only_to_subscribed_nodes<B: Broker>(make: &impl Fn() -> Arc<B>) {
        let (a, b, c) = (make(), make(), make());
        let (na, nb, nc) = (
            NodeId(0x0100_0001),
            NodeId(0x0100_0002),
            NodeId(0x0100_0003),
        );
        let (rb, rc) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
        a.attach(na, Arc::new(Recorder::default()));
        b.attach(nb, rb.clone());
        c.attach(nc, rc.clone());
        b.subscribe_room(nb, "r1").await.unwrap();
        c.subscribe_room(nc, "r2").await.unwrap();
        a.publish(room_pub("r1", "one")).await.unwrap();
        a.publish(room_pub("r2", "two")).await.unwrap();
        let presence = Envelope {
            origin: na,
            payload: Payload::Presence(PresenceEvent {
                room: "r1".into(),
                kind: PresenceKind::Join,
                user: "u".into(),
                conn: crate::ConnId(1),
            }),
        };
        a.publish(presence).await.unwrap();
        let got_b = rb.wait_for(2).await;
        let got_c = rc.wait_for(1).await;
        assert_eq!(got_b[0].room(), Some("r1"));
        assert_eq!(got_b[1].room(), Some("r1"));
        assert_eq!(got_c[0].room(), Some("r2"));
        // A broadcast reaches both; by then nothing else may have slipped through.
        let all = Envelope {
            origin: na,
            payload: Payload::Publication(Arc::new(
                Publication::json(Target::All, "all", &1).unwrap(),
            )),
        };
        a.publish(all).await.unwrap();
        rb.wait_for(3).await;
        rc.wait_for(2).await;
        assert_eq!(rb.len(), 3);
        assert_eq!(rc.len(), 2);
        b.unsubscribe_room(nb, "r1").await.unwrap();
        a.publish(room_pub("r1", "after")).await.unwrap();
        a.publish(Envelope {
            origin: na,
            payload: Payload::Publication(Arc::new(
                Publication::json(Target::All, "fence", &1).unwrap(),
            )),
        })
        .await
        .unwrap();
        let got_b = rb.wait_for(4).await;
        assert_eq!(got_b.len(), 4, "unsubscribed room still delivered");
        assert_eq!(got_b[3].room(), None);
    }

    async fn never_returns_an_envelope_to_its_origin<B: Broker>(make: &impl Fn() -> Arc<B>) {
        let (a, b) = (make(), make());
        let (na, nb) = (NodeId(0x0100_0011), NodeId(0x0100_0012));
        let (ra, rb) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
        a.attach(na, ra.clone());
        b.attach(nb, rb.clone());
        a.subscribe_room(na, "x").await.unwrap();
        b.subscribe_room(nb, "x").await.unwrap();
        let mut env = room_pub("x", "e");
        env.origin = na;
        a.publish(env).await.unwrap();
        let mut fence = room_pub("x", "fence");
        fence.origin = nb;
        b.publish(fence).await.unwrap();
        ra.wait_for(1).await;
        rb.wait_for(1).await;
        assert_eq!(ra.len(), 1);
        assert_eq!(rb.len(), 1);
    }
}
