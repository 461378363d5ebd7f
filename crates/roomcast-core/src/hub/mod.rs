//! The hub: every connection of this node, the rooms they are in, their users,
//! and delivery to them.
//!
//! [`Hub`] is one struct; each child module adds an `impl Hub` block for one
//! concern, layered so that no two import each other:
//!
//! | module | what |
//! |---|---|
//! | `config` | [`HubConfig`], [`HubMetrics`] |
//! | `state` | one connection's state (`ConnState`), [`ConnInfo`] |
//! | `index` | the sharded maps by id, room and user; the user index's upkeep |
//! | `delivery` | encode once per protocol, queue for every matching connection; the broker's receiver |
//! | `publish` | [`Hub::publish`]: local delivery and the broker, or the history store |
//! | `commands` | server-side join, leave, close room, disconnect, on every node |
//! | `membership` | one connection joining or leaving a room; presence events |
//! | `recovery` | joins that replay history: hold-back, replay, late-copy filter |
//! | `query` | presence, history reads, health, totals |
//! | `connection` | [`Connection`], the handle a protocol's connection task holds |
//! | `select` | [`Selection`]: emitter selections over local connections |
//! | `echo` | waiting for this node's copy of a publication from the history store |
//!
//! Lock order: a connection's `meta`, then a room's index shard, then the
//! connection's `held`; no lock is held across an `.await`.

mod commands;
mod config;
mod connection;
mod delivery;
mod echo;
mod index;
mod membership;
mod publish;
mod query;
mod recovery;
mod select;
mod state;
#[cfg(test)]
mod tests;

pub use commands::BindOutcome;
pub use config::{HubConfig, HubMetrics};
pub use connection::Connection;
pub use recovery::Recovery;
pub use select::Selection;
pub use state::ConnInfo;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::admission::{Admission, Slot};
use crate::broker::{Broker, MemoryBroker};
use crate::error::ConnectError;
use crate::history::{HistoryStore, MemoryHistory};
use crate::id::ConnIdGen;
use crate::presence::{MemoryPresence, PresenceStore};
use crate::{ConnId, Disconnect, NodeId, Outbox, Protocol};

use self::delivery::Receiver;
use self::index::Sharded;
use self::state::ConnState;

struct Inner {
    config: HubConfig,
    node: NodeId,
    ids: ConnIdGen,
    open: AtomicUsize,
    /// Places for client connections, shared by every transport.
    admission: Arc<Admission>,
    stopped: tokio_util::sync::CancellationToken,
    conns: Sharded<ConnId, Arc<ConnState>>,
    rooms: Sharded<String, HashMap<ConnId, Arc<ConnState>>>,
    users: Sharded<Arc<str>, Vec<Arc<ConnState>>>,
    broker: Arc<dyn Broker>,
    presence: Arc<dyn PresenceStore>,
    history: Arc<dyn HistoryStore>,
    metrics: HubMetrics,
    /// Publishers waiting for this node's copy of their publication.
    echoes: echo::Echoes,
}

/// The hub of one node; cheap to clone. See the crate docs for an example.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

/// A hub reference that does not keep the hub alive; see [`Hub::downgrade`].
#[derive(Clone, Debug)]
pub struct WeakHub(std::sync::Weak<Inner>);

impl WeakHub {
    /// The hub, unless it is gone.
    pub fn upgrade(&self) -> Option<Hub> {
        self.0.upgrade().map(|inner| Hub { inner })
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

/// Whether `user` is a valid user id: 1 to 200 bytes, no control characters.
pub fn valid_user(user: &str) -> bool {
    !user.is_empty() && user.len() <= 200 && !user.chars().any(char::is_control)
}

fn valid_event(event: &str) -> bool {
    !event.is_empty() && event.len() <= 200
}

impl Hub {
    /// A hub with the in-memory broker and presence store: one node, nothing else needed.
    pub fn new(config: HubConfig) -> Hub {
        Hub::with_backends(
            config,
            Arc::new(MemoryBroker::new()),
            Arc::new(MemoryPresence::new()),
        )
    }

    /// A hub with the given broker and presence store, and history in a
    /// [`MemoryHistory`] of its own: rooms with history then reach only this
    /// hub's connections. For several nodes give them one history store that
    /// reaches them all with [`with_stores`](Hub::with_stores) (the backend's,
    /// or one `MemoryHistory` shared by hubs of one process).
    pub fn with_backends(
        config: HubConfig,
        broker: Arc<dyn Broker>,
        presence: Arc<dyn PresenceStore>,
    ) -> Hub {
        Hub::with_stores(config, broker, presence, Arc::new(MemoryHistory::new()))
    }

    /// A hub with the given broker, presence store and history store. The
    /// history store must reach the same nodes as the broker (the memory store
    /// serves one node).
    pub fn with_stores(
        config: HubConfig,
        broker: Arc<dyn Broker>,
        presence: Arc<dyn PresenceStore>,
        history: Arc<dyn HistoryStore>,
    ) -> Hub {
        let node = NodeId::random();
        let inner = Arc::new(Inner {
            admission: Admission::new(config.max_connections),
            config,
            node,
            ids: ConnIdGen::new(node),
            open: AtomicUsize::new(0),
            stopped: tokio_util::sync::CancellationToken::new(),
            conns: Sharded::new(),
            rooms: Sharded::new(),
            users: Sharded::new(),
            broker,
            presence,
            history,
            metrics: HubMetrics::default(),
            echoes: echo::Echoes::default(),
        });
        inner
            .broker
            .attach(node, Arc::new(Receiver(Arc::downgrade(&inner))));
        inner
            .history
            .attach(node, Arc::new(Receiver(Arc::downgrade(&inner))));
        Hub { inner }
    }

    /// A reference for backends that must reach the hub without keeping it alive.
    pub fn downgrade(&self) -> WeakHub {
        WeakHub(Arc::downgrade(&self.inner))
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.inner.node
    }

    /// The hub's limits and rules.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// The hub's counters.
    pub fn metrics(&self) -> &HubMetrics {
        &self.inner.metrics
    }

    /// Connections open on this node.
    pub fn local_connections(&self) -> usize {
        self.inner.open.load(Ordering::Relaxed)
    }

    /// Rooms with members on this node.
    pub fn local_rooms(&self) -> usize {
        let mut n = 0;
        self.inner.rooms.for_each_shard(|s| n += s.len());
        n
    }

    /// Resolves when [`shutdown`](Hub::shutdown) is called: tie timers and
    /// background tasks to the server's lifetime with it.
    pub async fn stopped(&self) {
        self.inner.stopped.cancelled().await
    }

    /// Runs `tick` every `period` until the hub shuts down (periodic emits).
    pub fn every<F, Fut>(
        &self,
        period: std::time::Duration,
        mut tick: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: FnMut(Hub) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let hub = self.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = hub.stopped() => return,
                    _ = interval.tick() => tick(hub.clone()).await,
                }
            }
        })
    }

    /// Whether [`shutdown`](Hub::shutdown) was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.admission.is_closed()
    }

    /// The places for client connections of this node (`max_connections`),
    /// counted once across transports: [`connect`](Hub::connect) takes one per
    /// connection; a transport that multiplexes connections over one session
    /// (Engine.IO) takes one per session and opens its connections with
    /// [`connect_shared`](Hub::connect_shared).
    pub fn admission(&self) -> &Arc<Admission> {
        &self.inner.admission
    }

    /// Takes a place for a client connection now (before a WebSocket upgrade,
    /// say), for [`connect_admitted`](Hub::connect_admitted).
    pub fn admit(&self) -> Result<Slot, ConnectError> {
        Ok(self.inner.admission.admit()?)
    }

    /// Opens a connection that speaks `protocol`, optionally bound to a user;
    /// it takes a place of [`admission`](Hub::admission) for its lifetime.
    ///
    /// The caller (a protocol's connection task) writes what the returned
    /// connection's [`Outbox`] hands out and calls [`Connection::close`] when the
    /// socket is gone.
    pub async fn connect(
        &self,
        protocol: Arc<dyn Protocol>,
        user: Option<&str>,
    ) -> Result<Connection, ConnectError> {
        let slot = self.admit()?;
        self.connect_admitted(protocol, user, slot).await
    }

    /// Like [`connect`](Hub::connect), in a place taken earlier with
    /// [`admit`](Hub::admit); the connection frees it when it closes.
    pub async fn connect_admitted(
        &self,
        protocol: Arc<dyn Protocol>,
        user: Option<&str>,
        slot: Slot,
    ) -> Result<Connection, ConnectError> {
        let outbox = Arc::new(Outbox::new(self.inner.config.max_queue_bytes));
        self.open(protocol, user, outbox, Some(slot)).await
    }

    /// Opens a connection that writes into an outbox shared with other
    /// connections of the same transport (Socket.IO namespaces multiplexed over
    /// one Engine.IO session). Closing the connection leaves the outbox open;
    /// closing the outbox (slow consumer, shutdown, a server-side disconnect)
    /// ends every connection on it. It takes no place of
    /// [`admission`](Hub::admission): the session holds one for all of them.
    pub async fn connect_shared(
        &self,
        protocol: Arc<dyn Protocol>,
        user: Option<&str>,
        outbox: Arc<Outbox>,
    ) -> Result<Connection, ConnectError> {
        self.open(protocol, user, outbox, None).await
    }

    /// A fresh outbox with this hub's queue limit, for [`connect_shared`](Hub::connect_shared).
    pub fn new_outbox(&self) -> Arc<Outbox> {
        Arc::new(Outbox::new(self.inner.config.max_queue_bytes))
    }

    async fn open(
        &self,
        protocol: Arc<dyn Protocol>,
        user: Option<&str>,
        outbox: Arc<Outbox>,
        slot: Option<Slot>,
    ) -> Result<Connection, ConnectError> {
        let inner = &self.inner;
        if inner.admission.is_closed() {
            return Err(ConnectError::ShuttingDown);
        }
        // A connection that owns its outbox holds its own place.
        let owns_outbox = slot.is_some();
        inner.open.fetch_add(1, Ordering::AcqRel);
        let user: Option<Arc<str>> = user.filter(|u| valid_user(u)).map(Arc::from);
        let state = Arc::new(ConnState::new(
            inner.ids.next(),
            protocol,
            outbox,
            owns_outbox,
            user.clone(),
        ));
        inner
            .conns
            .write(&state.id, |m| m.insert(state.id, state.clone()));
        if let Some(u) = &user {
            self.index_user(u, &state).await;
        }
        inner
            .metrics
            .connections_accepted
            .fetch_add(1, Ordering::Relaxed);
        let conn = Connection {
            hub: self.clone(),
            state,
            slot: Mutex::new(slot),
            done: AtomicBool::new(false),
        };
        let member = conn.member();
        if let Err(e) = inner.presence.connect(&member).await {
            conn.close().await;
            return Err(e.into());
        }
        Ok(conn)
    }

    /// Closes every local connection with `reason` and refuses new ones. The
    /// connection tasks tell their clients and finish on their own.
    pub fn shutdown(&self, reason: Disconnect) -> usize {
        self.inner.admission.close();
        self.inner.stopped.cancel();
        let mut all = Vec::new();
        self.inner
            .conns
            .for_each_shard(|m| all.extend(m.values().cloned()));
        all.iter()
            .filter(|c| c.outbox.close(reason.clone()))
            .count()
    }

    fn backend_error(&self, e: &dyn std::fmt::Display) {
        self.inner
            .metrics
            .backend_errors
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, "presence or broker call failed");
    }
}
