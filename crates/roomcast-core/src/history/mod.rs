//! Room history: the seam ([`HistoryStore`]) through which publications to
//! rooms with history are appended to a bounded stream and delivered in the
//! stream's order, and from which a reconnecting client gets what it missed.
//!
//! # The stream of a room
//!
//! A room whose rule keeps history has a stream: an *epoch* (a random string,
//! new whenever the stream is created or was lost), a *top* offset and at most
//! `size` entries, none older than `ttl`. Every publication to the room gets
//! the next offset (1, 2, 3, ... within the epoch) and a store-wide *sequence
//! number* that orders publications across rooms. Both travel with the
//! publication as its [`StreamPosition`].
//!
//! # Order
//!
//! [`HistoryStore::publish`] both appends and delivers: the store hands the
//! positioned publication to every node with members in the room (this one
//! included) in sequence order. That is what makes the live stream and the
//! stored one agree, so that a client can be told "everything after offset N"
//! without duplicates or gaps.
//!
//! # Sessions
//!
//! The store also keeps small opaque session records for a limited time
//! (Socket.IO connection-state recovery), so that they are shared by the nodes
//! that share the streams.

mod memory;

use std::sync::Arc;
use std::time::Duration;

pub use memory::MemoryHistory;

use crate::broker::{EnvelopeSink, Health};
use crate::{BoxFuture, NodeId, Publication, StreamPosition};

/// How much history a room keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// The most publications kept; older ones are dropped.
    pub size: usize,
    /// How long a publication is kept.
    pub ttl: Duration,
}

/// Where a reader starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// Nothing to replay: only the stream's current position.
    Latest,
    /// Everything the stream holds (what the HTTP API reads without `since`).
    Oldest,
    /// After this offset of this epoch (what the native protocol's `since` names).
    Offset {
        /// The last offset the reader has.
        offset: u64,
        /// The epoch it belongs to.
        epoch: String,
    },
    /// After this store-wide sequence number (what a Socket.IO client's
    /// `offset` names), in the stream of this epoch (`None`: the room had no
    /// stream yet when the reader started).
    Seq {
        /// The last sequence number the reader has.
        seq: u64,
        /// The epoch of the room's stream the reader knew.
        epoch: Option<String>,
    },
}

/// What a read found.
#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    /// The stream's top (its last publication's position; offset 0 in a
    /// stream [opened](HistoryStore::open) that nothing was published to
    /// yet), or `None` when the room has no stream (never opened, forgotten
    /// after `meta_ttl`, or removed).
    pub position: Option<StreamPosition>,
    /// Publications after the start, oldest first, at most the limit asked for.
    pub publications: Vec<Arc<Publication>>,
    /// `publications` start right after the reader's start: nothing between
    /// was lost (trimmed, expired, or in another epoch). When false,
    /// `publications` is empty. Always true for [`Since::Latest`] and
    /// [`Since::Oldest`].
    pub complete: bool,
}

/// An appended publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Its position.
    pub position: StreamPosition,
    /// How many of this node's connections it reached at once (0 when it
    /// reaches them through the store's network, as with Redis).
    pub delivered: usize,
}

/// The history store failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HistoryError {
    /// The history store cannot take the call now (an outage, a full queue, a stopped
    /// task); the reason says which.
    #[error("history unavailable: {0}")]
    Unavailable(std::borrow::Cow<'static, str>),
    /// A call to the history store's backend failed or was answered with nonsense.
    #[error("history failed: {0}")]
    Failed(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// Only publications to a room have history.
    #[error("only room publications have history")]
    NotARoom,
}

impl HistoryError {
    /// [`HistoryError::Failed`] with `cause` as its source.
    pub fn failed(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> HistoryError {
        HistoryError::Failed(Arc::from(cause.into()))
    }

    /// [`HistoryError::Unavailable`] for `reason`.
    pub fn unavailable(reason: impl Into<std::borrow::Cow<'static, str>>) -> HistoryError {
        HistoryError::Unavailable(reason.into())
    }
}

/// Appends room publications to their streams, delivers them in stream order
/// and reads the streams back; see the module docs.
pub trait HistoryStore: Send + Sync + 'static {
    /// Registers a node's sink: positioned publications for rooms with members
    /// there are handed to it. Called once by the hub when it starts.
    fn attach(&self, node: NodeId, sink: Arc<dyn EnvelopeSink>);

    /// Appends `publication` (whose target is a room) to the room's stream
    /// and delivers it, positioned, to every node with members in the room,
    /// `origin` included, in sequence order.
    ///
    /// The publication takes its place in `origin`'s order when this is
    /// called, not when the future is polled; dropping the future does not
    /// withdraw it.
    fn publish(
        &self,
        origin: NodeId,
        publication: Publication,
        limits: &HistoryLimits,
    ) -> BoxFuture<'_, Result<Published, HistoryError>>;

    /// Reads a room's stream after `since`, at most `limit` publications.
    fn read(
        &self,
        room: &str,
        since: &Since,
        limit: usize,
        limits: &HistoryLimits,
    ) -> BoxFuture<'_, Result<HistoryPage, HistoryError>>;

    /// The room's stream position, creating the stream (a new epoch at offset
    /// 0, kept for the store's `meta_ttl`) if the room has none: a reader
    /// that starts before the first publication still has a position to
    /// resume from. An existing stream is left as it is.
    fn open(
        &self,
        room: &str,
        limits: &HistoryLimits,
    ) -> BoxFuture<'_, Result<StreamPosition, HistoryError>>;

    /// Removes a room's stream; the next publication starts a new epoch.
    fn remove(&self, room: &str) -> BoxFuture<'_, Result<(), HistoryError>>;

    /// Keeps an opaque session record under `key` for `ttl` (replacing any).
    fn keep_session(
        &self,
        key: &str,
        record: String,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), HistoryError>>;

    /// Takes (reads and removes) the session record under `key`, if it is
    /// still kept. Only one caller gets it.
    fn take_session(&self, key: &str) -> BoxFuture<'_, Result<Option<String>, HistoryError>>;

    /// Whether the store is reachable.
    fn health(&self) -> Health {
        Health::Ok
    }
}

/// A fresh epoch: 16 random hex digits.
pub fn new_epoch() -> String {
    format!("{:016x}", crate::id::random_u64())
}

/// The shared test suite every [`HistoryStore`] implementation must pass.
///
/// `make` returns stores that share one set of streams (for the memory store,
/// the same instance; for a network store, clients of the same server). Each
/// call uses rooms of its own, named after `prefix`.
#[cfg(any(test, feature = "testing"))]
pub mod suite {
    use std::sync::Mutex;

    use super::*;
    use crate::{Envelope, Payload, Target};

    /// Records positioned publications; plays a hub with members everywhere.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Arc<Publication>>>, tokio::sync::Notify);

    impl EnvelopeSink for Recorder {
        fn receive(&self, envelope: Envelope) {
            if let Payload::Publication(p) = envelope.payload {
                self.0.lock().unwrap().push(p);
                self.1.notify_one();
            }
        }
    }

    impl Recorder {
        async fn wait_for(&self, n: usize) -> Vec<Arc<Publication>> {
            crate::broker::suite::wait_for_items(&self.0, &self.1, n, "publications").await
        }
    }

    fn publication(room: &str, n: u64) -> Publication {
        Publication::json(Target::Room(room.into()), "e", &n).unwrap()
    }

    const LIMITS: HistoryLimits = HistoryLimits {
        size: 5,
        ttl: Duration::from_secs(60),
    };

    /// Runs every case. `subscribe(store, node, room)` makes the store deliver
    /// `room` to `node` (a network store subscribes; the memory store needs nothing).
    pub async fn run<S: HistoryStore, F, Fut>(prefix: &str, make: impl Fn() -> Arc<S>, subscribe: F)
    where
        F: Fn(Arc<S>, NodeId, String) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let (a, b) = (make(), make());
        let (na, nb) = (NodeId(0x0100_0a01), NodeId(0x0100_0a02));
        let (ra, rb) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
        a.attach(na, ra.clone());
        b.attach(nb, rb.clone());
        let room = format!("{prefix}:r1");
        subscribe(a.clone(), na, room.clone()).await;
        subscribe(b.clone(), nb, room.clone()).await;

        // Offsets count up from 1 within one epoch, from either node; both
        // nodes see the same order.
        let mut positions = Vec::new();
        for n in 0..7u64 {
            let store = if n % 2 == 0 { &a } else { &b };
            let origin = if n % 2 == 0 { na } else { nb };
            let p = store
                .publish(origin, publication(&room, n), &LIMITS)
                .await
                .unwrap();
            positions.push(p.position);
        }
        let offsets: Vec<u64> = positions.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, (1..=7).collect::<Vec<_>>());
        let epoch = positions[0].epoch.clone();
        assert!(positions.iter().all(|p| p.epoch == epoch));
        assert!(positions.windows(2).all(|w| w[0].seq < w[1].seq));
        let seen_a = ra.wait_for(7).await;
        let seen_b = rb.wait_for(7).await;
        let order = |s: &[Arc<Publication>]| -> Vec<u64> {
            s.iter()
                .map(|p| p.position.as_ref().unwrap().offset)
                .collect()
        };
        assert_eq!(order(&seen_a), offsets, "node a saw another order");
        assert_eq!(order(&seen_b), offsets, "node b saw another order");

        // Reading after an offset gives the rest, in order; the stream keeps 5.
        let since = |offset: u64, epoch: &str| Since::Offset {
            offset,
            epoch: epoch.to_owned(),
        };
        let page = b
            .read(&room, &since(4, &epoch), 100, &LIMITS)
            .await
            .unwrap();
        assert!(page.complete);
        assert_eq!(page.position.as_ref().unwrap().offset, 7);
        let data: Vec<&str> = page.publications.iter().map(|p| p.data.get()).collect();
        assert_eq!(data, ["4", "5", "6"]);
        assert_eq!(page.publications[0].position.as_ref().unwrap().offset, 5);
        // The limit pages.
        let page = b.read(&room, &since(2, &epoch), 2, &LIMITS).await.unwrap();
        assert!(page.complete);
        assert_eq!(order(&page.publications), [3, 4]);
        // At the top: complete, nothing to give.
        let page = a
            .read(&room, &since(7, &epoch), 100, &LIMITS)
            .await
            .unwrap();
        assert!(page.complete && page.publications.is_empty());
        // Offset 1 and 2 were trimmed: after 1 is a gap, after 2 is not.
        let page = a
            .read(&room, &since(1, &epoch), 100, &LIMITS)
            .await
            .unwrap();
        assert!(!page.complete && page.publications.is_empty());
        let page = a
            .read(&room, &since(2, &epoch), 100, &LIMITS)
            .await
            .unwrap();
        assert!(page.complete);
        assert_eq!(page.publications.len(), 5);
        // Another epoch, or an offset from the future: not complete.
        let page = a
            .read(&room, &since(3, "other"), 100, &LIMITS)
            .await
            .unwrap();
        assert!(!page.complete && page.publications.is_empty());
        let page = a
            .read(&room, &since(9, &epoch), 100, &LIMITS)
            .await
            .unwrap();
        assert!(!page.complete);
        // Latest: the position only.
        let page = a.read(&room, &Since::Latest, 100, &LIMITS).await.unwrap();
        assert!(page.complete && page.publications.is_empty());
        assert_eq!(page.position.as_ref().unwrap(), &positions[6]);
        // Oldest: everything held (offsets 3 to 7), at most the limit.
        let page = b.read(&room, &Since::Oldest, 100, &LIMITS).await.unwrap();
        assert!(page.complete);
        assert_eq!(order(&page.publications), [3, 4, 5, 6, 7]);
        let page = b.read(&room, &Since::Oldest, 2, &LIMITS).await.unwrap();
        assert_eq!(order(&page.publications), [3, 4]);
        // Opening an existing stream changes nothing.
        assert_eq!(a.open(&room, &LIMITS).await.unwrap(), positions[6]);

        // Opening a room nothing was published to gives it an epoch at
        // offset 0; its first publication is offset 1 of that epoch.
        let fresh = format!("{prefix}:fresh");
        let page = a.read(&fresh, &Since::Oldest, 100, &LIMITS).await.unwrap();
        assert!(page.position.is_none() && page.publications.is_empty());
        let opened = a.open(&fresh, &LIMITS).await.unwrap();
        assert_eq!(opened.offset, 0);
        assert_eq!(
            b.open(&fresh, &LIMITS).await.unwrap(),
            opened,
            "both nodes see one stream"
        );
        let page = b.read(&fresh, &Since::Latest, 100, &LIMITS).await.unwrap();
        assert_eq!(page.position.as_ref(), Some(&opened));
        let resume = Since::Offset {
            offset: 0,
            epoch: opened.epoch.to_string(),
        };
        let page = b.read(&fresh, &resume, 100, &LIMITS).await.unwrap();
        assert!(page.complete && page.publications.is_empty());
        let first = b
            .publish(nb, publication(&fresh, 1), &LIMITS)
            .await
            .unwrap();
        assert_eq!(
            (first.position.offset, &first.position.epoch),
            (1, &opened.epoch)
        );
        let page = a.read(&fresh, &resume, 100, &LIMITS).await.unwrap();
        assert!(page.complete);
        assert_eq!(order(&page.publications), [1]);

        // By sequence number, across rooms.
        let other = format!("{prefix}:r2");
        let q = a
            .publish(na, publication(&other, 100), &LIMITS)
            .await
            .unwrap();
        assert!(q.position.seq > positions[6].seq);
        assert_eq!(q.position.offset, 1);
        let page = a
            .read(
                &room,
                &Since::Seq {
                    seq: positions[4].seq,
                    epoch: Some(epoch.to_string()),
                },
                100,
                &LIMITS,
            )
            .await
            .unwrap();
        assert!(page.complete);
        assert_eq!(order(&page.publications), [6, 7]);
        let page = a
            .read(
                &other,
                &Since::Seq {
                    seq: positions[0].seq,
                    epoch: None,
                },
                100,
                &LIMITS,
            )
            .await
            .unwrap();
        assert!(
            page.complete,
            "a stream started after the seq loses nothing"
        );
        assert_eq!(order(&page.publications), [1]);
        let page = a
            .read(
                &room,
                &Since::Seq {
                    seq: positions[0].seq,
                    epoch: Some(epoch.to_string()),
                },
                100,
                &LIMITS,
            )
            .await
            .unwrap();
        assert!(!page.complete, "offset 2 was trimmed");
        let page = a
            .read(
                &room,
                &Since::Seq {
                    seq: q.position.seq,
                    epoch: Some(epoch.to_string()),
                },
                100,
                &LIMITS,
            )
            .await
            .unwrap();
        assert!(page.complete && page.publications.is_empty());
        // Another epoch: not complete.
        let page = a
            .read(
                &room,
                &Since::Seq {
                    seq: q.position.seq,
                    epoch: Some("other".into()),
                },
                100,
                &LIMITS,
            )
            .await
            .unwrap();
        assert!(!page.complete);

        // Removing starts a new epoch at offset 1.
        b.remove(&room).await.unwrap();
        let page = a
            .read(&room, &since(7, &epoch), 100, &LIMITS)
            .await
            .unwrap();
        assert!(!page.complete);
        assert!(page.position.is_none());
        let p = a.publish(na, publication(&room, 8), &LIMITS).await.unwrap();
        assert_eq!(p.position.offset, 1);
        assert_ne!(p.position.epoch, epoch);

        // Expiry: a publication older than the ttl is gone, and so is what came before.
        let short = HistoryLimits {
            size: 10,
            ttl: Duration::from_millis(300),
        };
        let fading = format!("{prefix}:fading");
        let first = a
            .publish(na, publication(&fading, 1), &short)
            .await
            .unwrap();
        let page = a
            .read(
                &fading,
                &Since::Seq {
                    seq: first.position.seq - 1,
                    epoch: None,
                },
                10,
                &short,
            )
            .await
            .unwrap();
        assert_eq!(page.publications.len(), 1);
        // Waiting out a ttl is what this case tests: no event marks it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let page = a
            .read(&fading, &since(0, &first.position.epoch), 10, &short)
            .await
            .unwrap();
        assert!(
            !page.complete,
            "an expired publication was not reported missing"
        );
        let page = a
            .read(&fading, &since(1, &first.position.epoch), 10, &short)
            .await
            .unwrap();
        assert!(page.complete, "nothing after offset 1 was lost");

        // Sessions: kept, taken once, and gone after their ttl.
        let key = format!("{prefix}:session");
        a.keep_session(&key, "state".into(), Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(
            b.take_session(&key).await.unwrap().as_deref(),
            Some("state")
        );
        assert_eq!(a.take_session(&key).await.unwrap(), None);
        a.keep_session(&key, "brief".into(), Duration::from_millis(200))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(b.take_session(&key).await.unwrap(), None);
    }
}
