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
pub enum BrokerError {
    /// The broker cannot take the call now (an outage, a full queue, a stopped
    /// task); the reason says which.
    #[error("broker unavailable: {0}")]
    Unavailable(std::borrow::Cow<'static, str>),
    /// A call to the broker's backend failed or was answered with nonsense.
    #[error("broker failed: {0}")]
    Failed(#[source] Arc<dyn std::error::Error + Send + Sync>),
}

impl BrokerError {
    /// [`BrokerError::Failed`] with `cause` as its source.
    pub fn failed(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> BrokerError {
        BrokerError::Failed(Arc::from(cause.into()))
    }

    /// [`BrokerError::Unavailable`] for `reason`.
    pub fn unavailable(reason: impl Into<std::borrow::Cow<'static, str>>) -> BrokerError {
        BrokerError::Unavailable(reason.into())
    }
}

/// Where a broker hands envelopes from other nodes; implemented by the hub.
pub trait EnvelopeSink: Send + Sync + 'static {
    /// An envelope from another node.
    fn receive(&self, envelope: Envelope);

    /// An envelope to deliver now; returns how many local connections it
    /// reached. (A history store hands its own node's publications here.)
    fn deliver(&self, envelope: Envelope) -> usize {
        self.receive(envelope);
        0
    }

    /// Whether the node has members in `room` right now. A broker that
    /// subscribes asynchronously asks this when it acts on
    /// [`subscribe_room`](Broker::subscribe_room) or
    /// [`unsubscribe_room`](Broker::unsubscribe_room), so that racing calls
    /// settle on the hub's current state rather than on their arrival order.
    fn has_room(&self, room: &str) -> bool {
        let _ = room;
        true
    }

    /// Whether the node has connections of `user` right now; see [`has_room`](EnvelopeSink::has_room).
    fn has_user(&self, user: &str) -> bool {
        let _ = user;
        true
    }
}

/// How a backend is doing, for `/healthz` and the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Working.
    Ok,
    /// Unreachable or failing; local delivery goes on. The string says why.
    Degraded(String),
}

/// One metric a backend exports (Prometheus text format).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSample {
    /// The metric name, `roomcast_` prefixed.
    pub name: &'static str,
    /// `counter` or `gauge`.
    pub kind: &'static str,
    /// The help text.
    pub help: &'static str,
    /// Labels, already formatted: `kind="python-socketio"`, or empty.
    pub labels: String,
    /// The value.
    pub value: u64,
}

/// The cross-node backplane; see the module docs.
pub trait Broker: Send + Sync + 'static {
    /// Registers the node's sink; called once by the hub when it starts.
    fn attach(&self, node: NodeId, sink: Arc<dyn EnvelopeSink>);

    /// Carries an envelope to every other node that needs it.
    ///
    /// The envelope takes its place in the node's order when this is called,
    /// not when the future is polled: envelopes reach each other node in the
    /// order of the calls. The future resolves once the envelope is on its way
    /// (or failed); dropping it does not withdraw the envelope.
    fn publish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// The node now has members in `room`: deliver that room's envelopes to it.
    fn subscribe_room(&self, node: NodeId, room: &str) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// The node has no members left in `room`.
    fn unsubscribe_room(&self, node: NodeId, room: &str) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// The node now has connections of `user`: deliver envelopes for that user
    /// to it. Brokers that do not route by user (the default) send user
    /// envelopes to every node.
    fn subscribe_user(&self, node: NodeId, user: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        let _ = (node, user);
        Box::pin(async { Ok(()) })
    }

    /// The node has no connection of `user` left.
    fn unsubscribe_user(&self, node: NodeId, user: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        let _ = (node, user);
        Box::pin(async { Ok(()) })
    }

    /// Whether the broker can reach the other nodes.
    fn health(&self) -> Health {
        Health::Ok
    }

    /// The broker's own metrics.
    fn metrics(&self) -> Vec<MetricSample> {
        Vec::new()
    }
}

/// The shared test suite every [`Broker`] implementation must pass.
///
/// `make` returns brokers that share one backplane (for the memory broker, the
/// same instance; for a network broker, clients of the same server).
#[cfg(any(test, feature = "testing"))]
pub mod suite {
    use std::sync::Mutex;

    use super::*;
    use crate::{Payload, PresenceEvent, PresenceKind, Publication, Target};

    /// Records what it receives; `rooms` and `users` play the hub's index.
    #[derive(Default)]
    struct Recorder(
        Mutex<Vec<Envelope>>,
        tokio::sync::Notify,
        Mutex<std::collections::HashSet<String>>,
    );

    impl EnvelopeSink for Recorder {
        fn receive(&self, envelope: Envelope) {
            self.0.lock().unwrap().push(envelope);
            self.1.notify_one();
        }
        fn has_room(&self, room: &str) -> bool {
            self.2.lock().unwrap().contains(&format!("r:{room}"))
        }
        fn has_user(&self, user: &str) -> bool {
            self.2.lock().unwrap().contains(&format!("u:{user}"))
        }
    }

    /// What `items` holds once it holds `n` (`notify` is told of each push);
    /// panics after 5 s, naming `what`.
    pub(crate) async fn wait_for_items<T: Clone>(
        items: &Mutex<Vec<T>>,
        notify: &tokio::sync::Notify,
        n: usize,
        what: &str,
    ) -> Vec<T> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            {
                let got = items.lock().unwrap();
                if got.len() >= n {
                    return got.clone();
                }
            }
            if tokio::time::timeout_at(deadline, notify.notified())
                .await
                .is_err()
            {
                panic!("timed out waiting for {n} {what}");
            }
        }
    }

    impl Recorder {
        async fn wait_for(&self, n: usize) -> Vec<Envelope> {
            wait_for_items(&self.0, &self.1, n, "envelopes").await
        }
        fn len(&self) -> usize {
            self.0.lock().unwrap().len()
        }
        fn set(&self, key: String, on: bool) {
            let mut s = self.2.lock().unwrap();
            if on {
                s.insert(key);
            } else {
                s.remove(&key);
            }
        }
    }

    async fn sub<B: Broker>(b: &B, rec: &Recorder, node: NodeId, room: &str) {
        rec.set(format!("r:{room}"), true);
        b.subscribe_room(node, room).await.unwrap();
    }

    async fn unsub<B: Broker>(b: &B, rec: &Recorder, node: NodeId, room: &str) {
        rec.set(format!("r:{room}"), false);
        b.unsubscribe_room(node, room).await.unwrap();
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
        routes_users_and_connections(&make).await;
    }

    /// User envelopes reach the nodes with that user once; connection envelopes
    /// and commands reach the connection's node once.
    async fn routes_users_and_connections<B: Broker>(make: &impl Fn() -> Arc<B>) {
        let (a, b, c) = (make(), make(), make());
        let (na, nb, nc) = (
            NodeId(0x0100_0021),
            NodeId(0x0100_0022),
            NodeId(0x0100_0023),
        );
        let (rb, rc) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
        a.attach(na, Arc::new(Recorder::default()));
        b.attach(nb, rb.clone());
        c.attach(nc, rc.clone());
        rb.set("u:ann".into(), true);
        b.subscribe_user(nb, "ann").await.unwrap();
        let on_c = crate::ConnId((0x23u64 << 40) | 7);
        assert_eq!(on_c.node(), nc);
        let publication = |target| Envelope {
            origin: na,
            payload: Payload::Publication(Arc::new(Publication::json(target, "e", &1).unwrap())),
        };
        a.publish(publication(Target::User("ann".into())))
            .await
            .unwrap();
        a.publish(publication(Target::Conn(on_c))).await.unwrap();
        a.publish(Envelope {
            origin: na,
            payload: Payload::Command(crate::Command::Disconnect {
                who: crate::Who::Conn(on_c),
                reason: crate::Disconnect::BY_SERVER,
            }),
        })
        .await
        .unwrap();
        a.publish(publication(Target::All)).await.unwrap();
        let got_b = rb.wait_for(2).await;
        let got_c = rc.wait_for(3).await;
        let is_user = |e: &Envelope| matches!(&e.payload, Payload::Publication(p) if p.target == Target::User("ann".into()));
        let is_conn = |e: &Envelope| match &e.payload {
            Payload::Publication(p) => p.target == Target::Conn(on_c),
            Payload::Command(_) => true,
            _ => false,
        };
        assert_eq!(got_b.iter().filter(|e| is_user(e)).count(), 1);
        assert_eq!(got_b.iter().filter(|e| is_conn(e)).count(), 0);
        assert_eq!(got_c.iter().filter(|e| is_conn(e)).count(), 2);
        assert_eq!(
            rb.len(),
            2,
            "node b got more than the user envelope and the broadcast"
        );
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
        sub(&*b, &rb, nb, "r1").await;
        sub(&*c, &rc, nc, "r2").await;
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
        unsub(&*b, &rb, nb, "r1").await;
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
        sub(&*a, &ra, na, "x").await;
        sub(&*b, &rb, nb, "x").await;
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
