//! The hub: every connection of this node, the rooms they are in, their users,
//! and delivery to them.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::{Map, Value};

mod echo;
mod select;

pub use select::Selection;

use crate::admission::{Admission, Slot};
use crate::broker::{Broker, BrokerError, EnvelopeSink, Health, MemoryBroker, MetricSample};
use crate::error::*;
use crate::history::{
    HistoryError, HistoryLimits, HistoryPage, HistoryStore, MemoryHistory, Published, Since,
};
use crate::id::ConnIdGen;
use crate::presence::{
    Member, MemoryPresence, PresenceStats, PresenceStore, RoomPresence, RoomSummary, UserPresence,
};
use crate::room::{validate_room_name, RoomRules, DEFAULT_MAX_ROOM_NAME};
use crate::{
    BoxFuture, Command, ConnId, Disconnect, Envelope, Frame, NodeId, Outbox, Payload,
    PresenceEvent, PresenceKind, Protocol, Publication, PushError, StreamPosition, Target, Who,
};

/// Limits and room rules of a hub. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The most connections this node accepts; 0 means no limit. Default: 100 000.
    pub max_connections: usize,
    /// Bytes a connection's outgoing queue may hold before it is disconnected as a
    /// slow consumer (close code 4001). Default: 1 MiB.
    pub max_queue_bytes: usize,
    /// The most rooms one connection may be in. Default: 100.
    pub max_rooms_per_connection: usize,
    /// The longest room name, in bytes. Default: 200.
    pub max_room_name_bytes: usize,
    /// The most bytes of JSON a connection's session data may hold. Default: 16 KiB.
    pub max_session_bytes: usize,
    /// Per-room settings by name pattern.
    pub rooms: RoomRules,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_connections: 100_000,
            max_queue_bytes: 1 << 20,
            max_rooms_per_connection: 100,
            max_room_name_bytes: DEFAULT_MAX_ROOM_NAME,
            max_session_bytes: 16 << 10,
            rooms: RoomRules::default(),
        }
    }
}

/// Counters the hub keeps; the server exports them as Prometheus metrics.
#[derive(Debug, Default)]
pub struct HubMetrics {
    /// Connections accepted since start.
    pub connections_accepted: AtomicU64,
    /// Connections closed since start.
    pub connections_closed: AtomicU64,
    /// Publications sent by this node (clients, API, library).
    pub publications: AtomicU64,
    /// Frames queued for clients.
    pub messages_out: AtomicU64,
    /// Bytes queued for clients.
    pub bytes_out: AtomicU64,
    /// Connections closed because their queue overflowed.
    pub slow_consumer_disconnects: AtomicU64,
    /// Broker, presence and history store failures.
    pub backend_errors: AtomicU64,
    /// Joins that resumed from a position in a room's history and got everything after it.
    pub recoveries: AtomicU64,
    /// Joins that asked to resume and were told they were not recovered.
    pub recoveries_failed: AtomicU64,
    /// Publications replayed from history.
    pub replayed: AtomicU64,
}

const SHARDS: usize = 64;

/// A map split into independently locked shards.
struct Sharded<K, V> {
    shards: Box<[RwLock<HashMap<K, V>>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl<K: Hash + Eq, V> Sharded<K, V> {
    fn new() -> Self {
        Sharded {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }

    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> &RwLock<HashMap<K, V>> {
        let h = self.hasher.hash_one(key) as usize;
        &self.shards[h % SHARDS]
    }

    fn read<Q: Hash + ?Sized, T>(&self, key: &Q, f: impl FnOnce(&HashMap<K, V>) -> T) -> T {
        f(&self.shard(key).read().unwrap_or_else(|e| e.into_inner()))
    }

    fn write<Q: Hash + ?Sized, T>(&self, key: &Q, f: impl FnOnce(&mut HashMap<K, V>) -> T) -> T {
        f(&mut self.shard(key).write().unwrap_or_else(|e| e.into_inner()))
    }

    fn for_each_shard(&self, mut f: impl FnMut(&HashMap<K, V>)) {
        for s in self.shards.iter() {
            f(&s.read().unwrap_or_else(|e| e.into_inner()));
        }
    }
}

/// What the hub knows of one local connection; shared by its task and the indexes.
pub(crate) struct ConnState {
    id: ConnId,
    protocol: Arc<dyn Protocol>,
    outbox: Arc<Outbox>,
    /// False when the outbox belongs to a transport shared by several connections
    /// (Socket.IO namespaces over one Engine.IO session): closing this
    /// connection then leaves the outbox open.
    owns_outbox: bool,
    /// Set while a join of a room with history holds the room's live
    /// publications back (see [`Hub::enter_rooms`]); checked on every delivery.
    holding: AtomicBool,
    /// What is held back. Its own lock: deliveries take it inside a room's
    /// index lock, which joins take inside `meta`.
    held: Mutex<Holding>,
    meta: Mutex<ConnMeta>,
    /// Told when the rooms or the session data change.
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct Holding {
    rooms: Vec<String>,
    held: Vec<Held>,
    bytes: usize,
    /// After a join of a room with history: the room, its epoch and the top
    /// the join read. A publication up to that top arriving late (from
    /// Redis, after the read) was replayed or is older than the join, and is
    /// dropped; the first one past it ends the filter.
    filters: Vec<(String, Arc<str>, u64)>,
}

impl Holding {
    fn idle(&self) -> bool {
        self.rooms.is_empty() && self.filters.is_empty()
    }
}

/// A live publication held back while the connection's join reads history.
struct Held {
    room: String,
    position: StreamPosition,
    frame: Frame,
}

#[derive(Default)]
struct ConnMeta {
    user: Option<Arc<str>>,
    rooms: Vec<String>,
    session: Map<String, Value>,
    /// Public data (JSON text), passed to the presence store.
    info: Option<Arc<str>>,
    closed: bool,
    /// Where the connection joined each room with history (the stream's top
    /// at that moment): it has every publication after it.
    marks: HashMap<String, StreamPosition>,
}

impl ConnState {
    fn meta(&self) -> std::sync::MutexGuard<'_, ConnMeta> {
        self.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Holding> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A local connection, as the HTTP API shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ConnInfo {
    /// The connection id.
    pub conn: String,
    /// Its user.
    pub user: Option<String>,
    /// The node it is on.
    pub node: String,
    /// The rooms it is in, sorted.
    pub rooms: Vec<String>,
    /// Its session data, when the connection is on this node.
    pub session: Option<Map<String, Value>>,
    /// Public data about it (a token's `info` claim), when it is on this node.
    pub info: Option<Value>,
}

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

/// The broker's confirmation that an envelope is on its way to the other nodes.
type Confirmation<'a> = BoxFuture<'a, Result<(), BrokerError>>;

/// A publication on its way: delivered here and handed to the broker, or
/// handed to the history store.
enum Started<'a> {
    Sent(usize, Option<Confirmation<'a>>),
    Stored(BoxFuture<'a, Result<Published, HistoryError>>),
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

/// Receives envelopes from other nodes without keeping the hub alive.
struct Receiver(std::sync::Weak<Inner>);

impl EnvelopeSink for Receiver {
    fn receive(&self, envelope: Envelope) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        let hub = Hub { inner };
        match envelope.payload {
            Payload::Command(cmd) => {
                // Joins and leaves touch the presence store, which may be remote.
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        hub.apply_command_locally(&cmd).await;
                    });
                }
            }
            payload => {
                let n = hub.deliver_local(&payload);
                if envelope.origin == hub.inner.node {
                    hub.echoed(&payload, n);
                }
            }
        }
    }

    fn deliver(&self, envelope: Envelope) -> usize {
        match envelope.payload {
            Payload::Command(_) => {
                self.receive(envelope);
                0
            }
            payload => self.0.upgrade().map_or(0, |inner| {
                let hub = Hub { inner };
                let n = hub.deliver_local(&payload);
                if envelope.origin == hub.inner.node {
                    hub.echoed(&payload, n);
                }
                n
            }),
        }
    }

    fn has_room(&self, room: &str) -> bool {
        self.0
            .upgrade()
            .is_some_and(|inner| inner.rooms.read(room, |m| m.contains_key(room)))
    }

    fn has_user(&self, user: &str) -> bool {
        self.0
            .upgrade()
            .is_some_and(|inner| inner.users.read(user, |m| m.contains_key(user)))
    }
}

/// One frame per protocol for one delivery.
struct EncodeCache<'a> {
    payload: &'a Payload,
    frames: Vec<(usize, Option<Frame>)>,
}

impl<'a> EncodeCache<'a> {
    fn new(payload: &'a Payload) -> Self {
        EncodeCache {
            payload,
            frames: Vec::with_capacity(2),
        }
    }

    fn frame(&mut self, protocol: &Arc<dyn Protocol>) -> Option<Frame> {
        let key = Arc::as_ptr(protocol) as *const () as usize;
        if let Some((_, f)) = self.frames.iter().find(|(k, _)| *k == key) {
            return f.clone();
        }
        let f = match self.payload {
            Payload::Publication(p) => Some(protocol.encode_publication(p)),
            Payload::Presence(e) => protocol.encode_presence(e),
            Payload::Command(_) => None,
        };
        self.frames.push((key, f.clone()));
        f
    }
}

/// Counts one delivery's frames, added to the metrics once at the end.
#[derive(Default)]
struct Tally {
    frames: u64,
    bytes: u64,
    slow: u64,
}

impl Tally {
    fn push(&mut self, conn: &ConnState, frame: Frame) -> bool {
        let len = frame.len() as u64;
        match conn.outbox.push(frame) {
            Ok(()) => {
                self.frames += 1;
                self.bytes += len;
                true
            }
            Err(PushError::Overflow) => {
                self.slow += 1;
                false
            }
            Err(PushError::Closed) => false,
        }
    }

    fn record(self, m: &HubMetrics) {
        m.messages_out.fetch_add(self.frames, Ordering::Relaxed);
        m.bytes_out.fetch_add(self.bytes, Ordering::Relaxed);
        if self.slow > 0 {
            m.slow_consumer_disconnects
                .fetch_add(self.slow, Ordering::Relaxed);
        }
    }
}

/// What [`hold`] did with a live publication.
enum Hold {
    /// Nothing: deliver it.
    Pass,
    /// Held back, or dropped as a late copy of what the join replayed.
    Taken,
    /// Held back past the queue limit: the connection is closed as slow.
    Overflow,
}

/// Holds a live publication back if the connection is reading `room`'s
/// history, or drops it if the join already replayed it.
fn hold(c: &ConnState, room: &str, position: &StreamPosition, frame: &Frame) -> Hold {
    let mut h = c.held();
    if !h.rooms.iter().any(|r| r == room) {
        let Some(i) = h.filters.iter().position(|f| f.0 == room) else {
            return Hold::Pass;
        };
        let (_, epoch, top) = &h.filters[i];
        if **epoch == *position.epoch && position.offset <= *top {
            return Hold::Taken;
        }
        h.filters.swap_remove(i);
        if h.idle() {
            c.holding.store(false, Ordering::Release);
        }
        return Hold::Pass;
    }
    h.bytes += frame.len();
    if h.bytes > c.outbox.limit() {
        drop(h);
        c.outbox.close(Disconnect::SLOW);
        return Hold::Overflow;
    }
    h.held.push(Held {
        room: room.to_owned(),
        position: position.clone(),
        frame: frame.clone(),
    });
    Hold::Taken
}

/// Stops holding `rooms` back; returns the frames held for them that `keep` keeps.
fn release(
    meta: &mut Holding,
    c: &ConnState,
    rooms: &[&str],
    keep: impl Fn(&Held) -> bool,
) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut rest = Vec::new();
    for h in std::mem::take(&mut meta.held) {
        if rooms.contains(&h.room.as_str()) {
            if keep(&h) {
                out.push(h.frame);
            }
        } else {
            rest.push(h);
        }
    }
    meta.bytes = rest.iter().map(|h| h.frame.len()).sum();
    meta.held = rest;
    meta.rooms.retain(|r| !rooms.contains(&r.as_str()));
    if meta.idle() {
        c.holding.store(false, Ordering::Release);
    }
    out
}

/// Builds the frames that go to a connection before what its joins replay.
type ReplyFn<'a> = Box<dyn FnOnce(&[Recovery]) -> Vec<Frame> + Send + 'a>;

/// What a join of a room found in its history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The room.
    pub room: String,
    /// Whether the connection joined (false: it was in the room already).
    pub joined: bool,
    /// Whether the room keeps history.
    pub history: bool,
    /// The stream's top when the connection joined: it gets every publication
    /// after it. `None` for a room without history, one nothing was published
    /// to yet, or when the history store could not be read.
    pub position: Option<StreamPosition>,
    /// Every publication after the requested start was replayed (for a join
    /// that asked for none, whether the position is known). When false
    /// nothing was replayed: the client should reload what it shows.
    pub recovered: bool,
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
        let state = Arc::new(ConnState {
            id: inner.ids.next(),
            protocol,
            outbox,
            owns_outbox,
            holding: AtomicBool::new(false),
            held: Mutex::new(Holding::default()),
            changed: tokio::sync::Notify::new(),
            meta: Mutex::new(ConnMeta {
                user: user.clone(),
                ..Default::default()
            }),
        });
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

    /// Adds a connection to the user index; the node's first connection of the
    /// user subscribes the node to the user's envelopes.
    async fn index_user(&self, user: &Arc<str>, state: &Arc<ConnState>) {
        let first = self.index_user_now(user, state);
        self.user_indexed(user, first).await;
    }

    fn index_user_now(&self, user: &Arc<str>, state: &Arc<ConnState>) -> bool {
        self.inner.users.write(user, |m| {
            let list = m.entry(user.clone()).or_default();
            list.push(state.clone());
            list.len() == 1
        })
    }

    async fn user_indexed(&self, user: &str, first: bool) {
        if first {
            if let Err(e) = self
                .inner
                .broker
                .subscribe_user(self.inner.node, user)
                .await
            {
                self.backend_error(&e);
            }
        }
    }

    /// Removes a connection from the user index; see [`index_user`](Hub::index_user).
    async fn unindex_user(&self, user: &Arc<str>, id: ConnId) {
        let last = self.inner.users.write(user, |m| {
            let Some(list) = m.get_mut(user) else {
                return false;
            };
            list.retain(|c| c.id != id);
            if list.is_empty() {
                m.remove(user);
                return true;
            }
            false
        });
        if last {
            if let Err(e) = self
                .inner
                .broker
                .unsubscribe_user(self.inner.node, user)
                .await
            {
                self.backend_error(&e);
            }
        }
    }

    fn member_of(&self, c: &ConnState) -> Member {
        let meta = c.meta();
        Member {
            conn: c.id,
            user: meta.user.clone(),
            node: self.inner.node,
            info: meta.info.clone(),
        }
    }

    /// Sends a publication to its target on every node. Returns how many local
    /// connections it reached.
    ///
    /// A publication to a room with history goes through the history store,
    /// which gives it its position and delivers it in stream order, this
    /// node included. In a Redis cluster this node's members get it back
    /// from Redis: `publish` returns once that copy was queued here (so a
    /// publisher's answer comes after its own copy), or after
    /// [`ECHO_WAIT`](echo::ECHO_WAIT) if it never comes (counting 0).
    pub async fn publish(&self, publication: Publication) -> Result<usize, PublishError> {
        // Registered before the store has it, so that its delivery cannot come first.
        let echo = match &publication.target {
            Target::Room(room) if self.inner.config.rooms.history_for(room).is_some() => {
                self.expect_echo(room)
            }
            _ => None,
        };
        match self.publish_start(publication)? {
            Started::Sent(delivered, None) => Ok(delivered),
            Started::Sent(delivered, Some(sent)) => {
                sent.await
                    .map_err(|source| PublishError::Broker { delivered, source })?;
                Ok(delivered)
            }
            Started::Stored(stored) => {
                let published = self.stored(stored.await)?;
                match echo {
                    Some(echo) => Ok(echo.delivered(&published.position).await),
                    None => Ok(published.delivered),
                }
            }
        }
    }

    fn stored(&self, r: Result<Published, HistoryError>) -> Result<Published, PublishError> {
        r.map_err(|e| {
            self.backend_error(&e);
            PublishError::History(e)
        })
    }

    /// Like [`publish`](Hub::publish), but returns once the publication is
    /// delivered locally and handed to the broker, without waiting for the
    /// broker to confirm it is on its way to the other nodes. The order of
    /// publications is the same; an error comes back only when the broker
    /// refuses at once (a known outage), later failures are logged and counted
    /// by the broker. For clients that asked for no acknowledgement.
    pub fn publish_detached(&self, publication: Publication) -> Result<usize, PublishError> {
        // Poll once: an immediate refusal is reported, anything else is left to run.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match self.publish_start(publication)? {
            Started::Sent(delivered, None) => Ok(delivered),
            Started::Sent(delivered, Some(mut sent)) => {
                if let std::task::Poll::Ready(Err(source)) = sent.as_mut().poll(&mut cx) {
                    return Err(PublishError::Broker { delivered, source });
                }
                Ok(delivered)
            }
            Started::Stored(mut stored) => match stored.as_mut().poll(&mut cx) {
                std::task::Poll::Ready(r) => Ok(self.stored(r)?.delivered),
                std::task::Poll::Pending => {
                    // It has its place in the stream's order already; the
                    // store counts a later failure.
                    Ok(0)
                }
            },
        }
    }

    /// Validates, delivers locally and hands the publication to the broker
    /// (or, for a room with history, to the history store, which does both).
    fn publish_start(&self, publication: Publication) -> Result<Started<'_>, PublishError> {
        if !valid_event(&publication.event) {
            return Err(PublishError::InvalidEvent);
        }
        let mut history = None;
        if let Target::Room(room) = &publication.target {
            validate_room_name(room, self.inner.config.max_room_name_bytes)?;
            history = self.inner.config.rooms.history_for(room);
        }
        self.inner
            .metrics
            .publications
            .fetch_add(1, Ordering::Relaxed);
        if let Some(limits) = history {
            let stored = self
                .inner
                .history
                .publish(self.inner.node, publication, &limits);
            return Ok(Started::Stored(stored));
        }
        let local_only =
            matches!(publication.target, Target::Conn(c) if c.node() == self.inner.node);
        let payload = Payload::Publication(Arc::new(publication));
        let delivered = self.deliver_local(&payload);
        if local_only {
            return Ok(Started::Sent(delivered, None));
        }
        Ok(Started::Sent(delivered, Some(self.to_other_nodes(payload))))
    }

    /// Hands an envelope to the broker now (its place in this node's order is
    /// fixed by this call); the future is the broker's confirmation.
    fn to_other_nodes(&self, payload: Payload) -> Confirmation<'_> {
        let env = Envelope {
            origin: self.inner.node,
            payload,
        };
        let sent = self.inner.broker.publish(env);
        Box::pin(async move {
            let r = sent.await;
            if let Err(e) = &r {
                self.inner
                    .metrics
                    .backend_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "broker publish failed");
            }
            r
        })
    }

    /// Queues a payload for every matching local connection, encoding it once per protocol.
    fn deliver_local(&self, payload: &Payload) -> usize {
        let inner = &self.inner;
        let mut cache = EncodeCache::new(payload);
        let mut tally = Tally::default();
        let mut delivered = 0;
        // A positioned room publication may be held back for a connection
        // whose join of the room is reading history.
        let positioned = match payload {
            Payload::Publication(p) => match (&p.target, &p.position) {
                (Target::Room(room), Some(pos)) => Some((room.as_str(), pos)),
                _ => None,
            },
            _ => None,
        };
        let mut offer = |c: &ConnState, exclude: Option<ConnId>| {
            if Some(c.id) == exclude {
                return;
            }
            if let Some(frame) = cache.frame(&c.protocol) {
                if let Some((room, pos)) = positioned {
                    if c.holding.load(Ordering::Acquire) {
                        match hold(c, room, pos, &frame) {
                            Hold::Pass => {}
                            Hold::Taken => return,
                            Hold::Overflow => {
                                tally.slow += 1;
                                return;
                            }
                        }
                    }
                }
                if tally.push(c, frame) {
                    delivered += 1;
                }
            }
        };
        match payload {
            Payload::Publication(p) => match &p.target {
                Target::Room(room) => inner.rooms.read(room.as_str(), |m| {
                    if let Some(members) = m.get(room.as_str()) {
                        members.values().for_each(|c| offer(c, p.exclude));
                    }
                }),
                Target::User(user) => inner.users.read(user.as_str(), |m| {
                    if let Some(list) = m.get(user.as_str()) {
                        list.iter().for_each(|c| offer(c, p.exclude));
                    }
                }),
                Target::Conn(id) => inner.conns.read(id, |m| {
                    if let Some(c) = m.get(id) {
                        offer(c, p.exclude);
                    }
                }),
                Target::All => inner
                    .conns
                    .for_each_shard(|m| m.values().for_each(|c| offer(c, p.exclude))),
            },
            Payload::Presence(e) => inner.rooms.read(e.room.as_str(), |m| {
                if let Some(members) = m.get(e.room.as_str()) {
                    members.values().for_each(|c| offer(c, None));
                }
            }),
            Payload::Command(_) => {}
        }
        tally.record(&inner.metrics);
        delivered
    }

    fn local_matches(&self, who: &Who) -> Vec<Arc<ConnState>> {
        match who {
            Who::Conn(id) => self
                .inner
                .conns
                .read(id, |m| m.get(id).cloned())
                .into_iter()
                .collect(),
            Who::User(u) => self.inner.users.read(u.as_str(), |m| {
                m.get(u.as_str()).cloned().unwrap_or_default()
            }),
        }
    }

    /// Applies a server-side command to local connections; returns how many it affected.
    async fn apply_command_locally(&self, cmd: &Command) -> usize {
        match cmd {
            Command::Join { who, room } => {
                let mut n = 0;
                for c in self.local_matches(who) {
                    if self.join_state(&c, room, true).await.is_ok() {
                        n += 1;
                    }
                }
                n
            }
            Command::Leave { who, room } => {
                let mut n = 0;
                for c in self.local_matches(who) {
                    if matches!(self.leave_state(&c, room, true).await, Ok(true)) {
                        n += 1;
                    }
                }
                n
            }
            Command::CloseRoom { room } => {
                let members: Vec<Arc<ConnState>> = self
                    .inner
                    .rooms
                    .read(room.as_str(), |m| {
                        m.get(room.as_str()).map(|m| m.values().cloned().collect())
                    })
                    .unwrap_or_default();
                let mut n = 0;
                for c in members {
                    if matches!(self.leave_state(&c, room, true).await, Ok(true)) {
                        n += 1;
                    }
                }
                n
            }
            Command::Disconnect { who, reason } => self
                .local_matches(who)
                .iter()
                .filter(|c| c.outbox.close(reason.clone()))
                .count(),
        }
    }

    /// Runs a server-side command here and on every other node that may hold its
    /// connections. Returns how many local connections it affected.
    async fn command(&self, cmd: Command) -> Result<usize, crate::broker::BrokerError> {
        let n = self.apply_command_locally(&cmd).await;
        let local_only = match &cmd {
            Command::Join { who, .. }
            | Command::Leave { who, .. }
            | Command::Disconnect { who, .. } => {
                matches!(who, Who::Conn(c) if c.node() == self.inner.node)
            }
            Command::CloseRoom { .. } => false,
        };
        if !local_only {
            self.to_other_nodes(Payload::Command(cmd)).await?;
        }
        Ok(n)
    }

    /// Puts every connection of `who` into `room`, on every node; they are told
    /// with a membership notice. Returns how many local connections joined.
    pub async fn join(&self, who: Who, room: &str) -> Result<usize, JoinError> {
        validate_room_name(room, self.inner.config.max_room_name_bytes)?;
        self.command(Command::Join {
            who,
            room: room.to_owned(),
        })
        .await
        .map_err(|e| JoinError::Presence(crate::presence::PresenceError(e.0)))
    }

    /// Takes every connection of `who` out of `room`, on every node.
    pub async fn leave(&self, who: Who, room: &str) -> Result<usize, LeaveError> {
        validate_room_name(room, self.inner.config.max_room_name_bytes)?;
        self.command(Command::Leave {
            who,
            room: room.to_owned(),
        })
        .await
        .map_err(|e| LeaveError::Presence(crate::presence::PresenceError(e.0)))
    }

    /// Takes every member out of `room`, on every node; they are told with a
    /// membership notice. Returns how many local connections left.
    pub async fn close_room(&self, room: &str) -> Result<usize, LeaveError> {
        validate_room_name(room, self.inner.config.max_room_name_bytes)?;
        self.command(Command::CloseRoom {
            room: room.to_owned(),
        })
        .await
        .map_err(|e| LeaveError::Presence(crate::presence::PresenceError(e.0)))
    }

    /// Disconnects every connection of `who`, on every node, with `reason`.
    pub async fn disconnect(
        &self,
        who: Who,
        reason: Disconnect,
    ) -> Result<usize, crate::broker::BrokerError> {
        self.command(Command::Disconnect { who, reason }).await
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

    async fn join_state(
        &self,
        c: &Arc<ConnState>,
        room: &str,
        by_server: bool,
    ) -> Result<bool, JoinError> {
        validate_room_name(room, self.inner.config.max_room_name_bytes)?;
        if self.inner.config.rooms.history_for(room).is_none() {
            return self.enter(c, room, by_server).await;
        }
        let r = self
            .enter_rooms(c, vec![(room.to_owned(), Since::Latest)], by_server, None)
            .await?;
        Ok(r.first().is_some_and(|r| r.joined))
    }

    /// Joins rooms, replaying history where `Since` asks for it.
    ///
    /// Live publications of the rooms with history are held back while their
    /// streams are read (after the join, so nothing falls between); then the
    /// `reply` frames, the missed publications (in sequence order) and the
    /// held ones newer than what was read go to the outbox back to back. The
    /// connection ends up with every publication after the position it is
    /// told, once, in order.
    async fn enter_rooms(
        &self,
        c: &Arc<ConnState>,
        requests: Vec<(String, Since)>,
        by_server: bool,
        reply: Option<ReplyFn<'_>>,
    ) -> Result<Vec<Recovery>, JoinError> {
        let inner = &self.inner;
        for (room, _) in &requests {
            validate_room_name(room, inner.config.max_room_name_bytes)?;
        }
        let plan: Vec<(String, Since, Option<HistoryLimits>)> = requests
            .into_iter()
            .map(|(room, since)| {
                let limits = inner.config.rooms.history_for(&room);
                (room, since, limits)
            })
            .collect();
        let held: Vec<&str> = plan
            .iter()
            .filter(|(_, _, l)| l.is_some())
            .map(|(r, _, _)| r.as_str())
            .collect();
        if !held.is_empty() {
            if c.meta().closed {
                return Err(JoinError::Closed);
            }
            c.held().rooms.extend(held.iter().map(|r| (*r).to_owned()));
            c.holding.store(true, Ordering::Release);
        }
        // A room the connection is in already: it got the live publications
        // after its mark, so only what came before the mark is replayed.
        let before: HashMap<String, Option<u64>> = {
            let meta = c.meta();
            plan.iter()
                .filter(|(room, _, _)| meta.rooms.iter().any(|r| r == room))
                .map(|(room, _, _)| (room.clone(), meta.marks.get(room).map(|m| m.seq)))
                .collect()
        };
        let mut joined = Vec::with_capacity(plan.len());
        for (room, _, _) in &plan {
            match self.enter(c, room, by_server).await {
                Ok(j) => joined.push(j),
                Err(e) => {
                    // Rooms joined so far keep what was held for them.
                    let mut h = c.held();
                    let frames = release(&mut h, c, &held, |_| true);
                    let _ = c.outbox.push_all(frames);
                    return Err(e);
                }
            }
        }
        let mut pages: Vec<Option<Result<HistoryPage, HistoryError>>> =
            Vec::with_capacity(plan.len());
        for (room, since, limits) in &plan {
            pages.push(match limits {
                Some(l) => Some(self.read_or_open(room, since, l).await),
                None => None,
            });
        }
        let mut recoveries = Vec::with_capacity(plan.len());
        let mut replay: Vec<Arc<Publication>> = Vec::new();
        for (((room, since, limits), joined), page) in plan.iter().zip(joined).zip(pages) {
            let (position, recovered) = match page {
                None => (None, matches!(since, Since::Latest)),
                Some(Ok(page)) => {
                    if page.complete {
                        let cutoff = before.get(room).map(|m| m.unwrap_or(0));
                        replay.extend(page.publications.into_iter().filter(|p| {
                            cutoff
                                .is_none_or(|cut| p.position.as_ref().is_some_and(|s| s.seq <= cut))
                        }));
                    }
                    (page.position, page.complete)
                }
                Some(Err(e)) => {
                    self.backend_error(&e);
                    (None, false)
                }
            };
            recoveries.push(Recovery {
                room: room.clone(),
                joined,
                history: limits.is_some(),
                position,
                recovered,
            });
        }
        replay.sort_by_key(|p| p.position.as_ref().map_or(0, |s| s.seq));
        let m = &inner.metrics;
        for ((_, since, _), r) in plan.iter().zip(&recoveries) {
            if *since != Since::Latest {
                let counter = if r.recovered {
                    &m.recoveries
                } else {
                    &m.recoveries_failed
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
        m.replayed.fetch_add(replay.len() as u64, Ordering::Relaxed);
        {
            let mut meta = c.meta();
            for r in recoveries.iter().filter(|r| !before.contains_key(&r.room)) {
                if let Some(p) = &r.position {
                    meta.marks.insert(r.room.clone(), p.clone());
                }
            }
        }
        let mut h = c.held();
        let mut out = match reply {
            Some(reply) => reply(&recoveries),
            None => Vec::new(),
        };
        out.extend(
            replay
                .iter()
                .filter(|p| p.exclude != Some(c.id))
                .map(|p| c.protocol.encode_publication(p)),
        );
        let newer = |h: &Held| match recoveries
            .iter()
            .find(|r| r.room == h.room && !before.contains_key(&r.room))
        {
            Some(Recovery {
                position: Some(top),
                ..
            }) => h.position.epoch != top.epoch || h.position.offset > top.offset,
            _ => true,
        };
        out.extend(release(&mut h, c, &held, newer));
        for r in recoveries.iter().filter(|r| !before.contains_key(&r.room)) {
            if let Some(p) = &r.position {
                h.filters.retain(|f| f.0 != r.room);
                h.filters.push((r.room.clone(), p.epoch.clone(), p.offset));
                c.holding.store(true, Ordering::Release);
            }
        }
        if c.outbox.push_all(out) == Err(PushError::Overflow) {
            inner
                .metrics
                .slow_consumer_disconnects
                .fetch_add(1, Ordering::Relaxed);
        }
        drop(h);
        Ok(recoveries)
    }

    /// Reads a joining connection's history page. The room's stream is
    /// opened if it has none, so that the page always has a position to
    /// resume from (offset 0 of a new epoch before the first publication).
    async fn read_or_open(
        &self,
        room: &str,
        since: &Since,
        limits: &HistoryLimits,
    ) -> Result<HistoryPage, HistoryError> {
        let history = &self.inner.history;
        if *since == Since::Latest {
            return Ok(HistoryPage {
                position: Some(history.open(room, limits).await?),
                publications: Vec::new(),
                complete: true,
            });
        }
        let mut page = history.read(room, since, limits.size, limits).await?;
        if page.position.is_some() {
            return Ok(page);
        }
        let opened = history.open(room, limits).await?;
        if opened.offset > 0 {
            // Published to between the read and the open: read what is there now.
            return history.read(room, since, limits.size, limits).await;
        }
        page.position = Some(opened);
        Ok(page)
    }

    /// Joins a room, the raw way: no history.
    async fn enter(
        &self,
        c: &Arc<ConnState>,
        room: &str,
        by_server: bool,
    ) -> Result<bool, JoinError> {
        let inner = &self.inner;
        let rule = inner.config.rooms.for_room(room);
        {
            let mut meta = c.meta();
            if meta.closed {
                return Err(JoinError::Closed);
            }
            if meta.rooms.iter().any(|r| r == room) {
                return Ok(false);
            }
            if meta.rooms.len() >= inner.config.max_rooms_per_connection {
                return Err(JoinError::TooManyRooms {
                    max: inner.config.max_rooms_per_connection,
                });
            }
            meta.rooms.push(room.to_owned());
        }
        let member = self.member_of(c);
        let undo = |c: &ConnState| c.meta().rooms.retain(|r| r != room);
        let outcome = match inner.presence.join(room, &member).await {
            Ok(o) => o,
            Err(e) => {
                undo(c);
                self.backend_error(&e);
                return Err(e.into());
            }
        };
        if rule.max_members > 0 && outcome.added && outcome.connections > rule.max_members {
            undo(c);
            let _ = inner.presence.leave(room, c.id).await;
            return Err(JoinError::RoomFull {
                max: rule.max_members,
            });
        }
        let first_local = {
            let meta = c.meta();
            if meta.closed {
                None
            } else {
                Some(inner.rooms.write(room, |m| {
                    let members = m.entry(room.to_owned()).or_default();
                    members.insert(c.id, c.clone());
                    members.len() == 1
                }))
            }
        };
        let Some(first_local) = first_local else {
            // Closed while the presence store answered: undo what it recorded.
            let _ = inner.presence.leave(room, c.id).await;
            return Err(JoinError::Closed);
        };
        if first_local {
            if let Err(e) = inner.broker.subscribe_room(inner.node, room).await {
                self.backend_error(&e);
            }
        }
        if by_server {
            if let Some(f) = c.protocol.encode_membership(room, true) {
                let _ = c.outbox.push(f);
            }
        }
        if outcome.first_for_user && rule.announces_members() {
            if let Some(user) = member.user {
                self.presence_event(room, PresenceKind::Join, user, c.id)
                    .await;
            }
        }
        c.changed.notify_one();
        Ok(true)
    }

    /// Returns whether the connection was in the room.
    async fn leave_state(
        &self,
        c: &Arc<ConnState>,
        room: &str,
        by_server: bool,
    ) -> Result<bool, LeaveError> {
        let (user, was_in) = {
            let mut meta = c.meta();
            let before = meta.rooms.len();
            meta.rooms.retain(|r| r != room);
            meta.marks.remove(room);
            (meta.user.clone(), meta.rooms.len() != before)
        };
        if !was_in {
            return Ok(false);
        }
        self.leave_locally(c.id, room, user, by_server.then_some(c))
            .await?;
        c.changed.notify_one();
        Ok(true)
    }

    /// Removes a connection from a room's local index and from presence, and
    /// sends the leave event if it was the user's last connection there.
    async fn leave_locally(
        &self,
        id: ConnId,
        room: &str,
        user: Option<Arc<str>>,
        notify: Option<&Arc<ConnState>>,
    ) -> Result<(), LeaveError> {
        let inner = &self.inner;
        let emptied = inner.rooms.write(room, |m| {
            let Some(members) = m.get_mut(room) else {
                return false;
            };
            members.remove(&id);
            if members.is_empty() {
                m.remove(room);
                return true;
            }
            false
        });
        if emptied {
            if let Err(e) = inner.broker.unsubscribe_room(inner.node, room).await {
                self.backend_error(&e);
            }
        }
        if let Some(c) = notify {
            if let Some(f) = c.protocol.encode_membership(room, false) {
                let _ = c.outbox.push(f);
            }
        }
        let outcome = inner.presence.leave(room, id).await.inspect_err(|e| {
            self.backend_error(e);
        })?;
        if outcome.last_for_user && inner.config.rooms.for_room(room).announces_members() {
            if let Some(user) = user {
                self.presence_event(room, PresenceKind::Leave, user, id)
                    .await;
            }
        }
        Ok(())
    }

    async fn presence_event(&self, room: &str, kind: PresenceKind, user: Arc<str>, conn: ConnId) {
        let payload = Payload::Presence(PresenceEvent {
            room: room.to_owned(),
            kind,
            user,
            conn,
        });
        self.deliver_local(&payload);
        let _ = self.to_other_nodes(payload).await;
    }

    fn backend_error(&self, e: &dyn std::fmt::Display) {
        self.inner
            .metrics
            .backend_errors
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, "presence or broker call failed");
    }

    /// A room's history after `since`, at most `limit` publications.
    pub async fn history(
        &self,
        room: &str,
        since: &Since,
        limit: usize,
    ) -> Result<HistoryPage, QueryError> {
        validate_room_name(room, self.inner.config.max_room_name_bytes)?;
        let limits = self
            .inner
            .config
            .rooms
            .history_for(room)
            .ok_or(QueryError::NoHistory)?;
        Ok(self
            .inner
            .history
            .read(room, since, limit.min(limits.size), &limits)
            .await?)
    }

    /// Removes a room's history; its next publication starts a new epoch.
    pub async fn remove_history(&self, room: &str) -> Result<(), QueryError> {
        validate_room_name(room, self.inner.config.max_room_name_bytes)?;
        Ok(self.inner.history.remove(room).await?)
    }

    /// The history store (it also keeps Socket.IO recovery sessions).
    pub fn history_store(&self) -> &Arc<dyn HistoryStore> {
        &self.inner.history
    }

    /// Who is in a room, on every node.
    pub async fn room_presence(&self, room: &str) -> Result<RoomPresence, QueryError> {
        validate_room_name(room, self.inner.config.max_room_name_bytes)?;
        if !self.inner.config.rooms.for_room(room).presence {
            return Err(QueryError::Forbidden);
        }
        Ok(self.inner.presence.room(room).await?)
    }

    /// Every room with members, on every node.
    pub async fn rooms(&self) -> Result<Vec<RoomSummary>, QueryError> {
        Ok(self.inner.presence.rooms().await?)
    }

    /// Where a user is connected, on every node.
    pub async fn user_presence(&self, user: &str) -> Result<UserPresence, QueryError> {
        Ok(self.inner.presence.user(user).await?)
    }

    /// The live nodes of the cluster, as the presence store knows them.
    pub async fn nodes(&self) -> Result<Vec<crate::presence::NodeInfo>, QueryError> {
        Ok(self.inner.presence.nodes().await?)
    }

    /// Tells the other nodes of the cluster where this node serves HTTP (`host:port`).
    pub fn advertise(&self, address: &str) {
        self.inner.presence.advertise(address);
    }

    /// How the broker and the presence store are doing; the first problem wins.
    pub fn backend_health(&self) -> Health {
        match self.inner.broker.health() {
            Health::Ok => match self.inner.presence.health() {
                Health::Ok => self.inner.history.health(),
                bad => bad,
            },
            bad => bad,
        }
    }

    /// The broker's own metrics.
    pub fn backend_metrics(&self) -> Vec<MetricSample> {
        self.inner.broker.metrics()
    }

    /// Totals, on every node.
    pub async fn stats(&self) -> Result<PresenceStats, QueryError> {
        Ok(self.inner.presence.stats().await?)
    }

    /// One connection: from this node with its session data, else from presence.
    pub async fn connection_info(&self, conn: ConnId) -> Result<Option<ConnInfo>, QueryError> {
        let local = self.inner.conns.read(&conn, |m| m.get(&conn).cloned());
        if let Some(c) = local {
            let meta = c.meta();
            if !meta.closed {
                let mut rooms = meta.rooms.clone();
                rooms.sort();
                return Ok(Some(ConnInfo {
                    conn: conn.to_string(),
                    user: meta.user.as_deref().map(str::to_owned),
                    node: self.inner.node.to_string(),
                    rooms,
                    session: Some(meta.session.clone()),
                    info: meta
                        .info
                        .as_deref()
                        .and_then(|i| serde_json::from_str(i).ok()),
                }));
            }
        }
        Ok(self
            .inner
            .presence
            .connection(conn)
            .await?
            .map(|p| ConnInfo {
                conn: conn.to_string(),
                user: p.user.as_deref().map(str::to_owned),
                node: p.node.to_string(),
                rooms: p.rooms,
                session: None,
                info: None,
            }))
    }
}

/// One open connection, owned by the task that serves its socket.
///
/// Dropping it without [`close`](Connection::close) still removes it from the
/// hub (in a spawned task), so a panicking connection task leaks nothing.
pub struct Connection {
    hub: Hub,
    state: Arc<ConnState>,
    /// The place it holds (for connections that own their outbox).
    slot: Mutex<Option<Slot>>,
    done: AtomicBool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.state.id)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// The connection id.
    pub fn id(&self) -> ConnId {
        self.state.id
    }

    /// The hub it belongs to.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Its outgoing queue: write what it hands out, in order.
    pub fn outbox(&self) -> &Outbox {
        &self.state.outbox
    }

    /// Queues a frame for this connection alone (a reply).
    pub fn send_frame(&self, frame: Frame) -> Result<(), PushError> {
        let r = self.state.outbox.push(frame);
        if r == Err(PushError::Overflow) {
            self.hub
                .inner
                .metrics
                .slow_consumer_disconnects
                .fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Its user id, once it has one.
    pub fn user(&self) -> Option<Arc<str>> {
        self.state.meta().user.clone()
    }

    /// The rooms it is in.
    pub fn rooms(&self) -> Vec<String> {
        self.state.meta().rooms.clone()
    }

    fn member(&self) -> Member {
        self.hub.member_of(&self.state)
    }

    /// Binds a user id to a connection that has none yet (open mode's `auth`,
    /// or a verified token's subject).
    pub async fn authenticate(&self, user: &str) -> Result<(), AuthError> {
        if !valid_user(user) {
            return Err(AuthError::InvalidUser);
        }
        let user: Arc<str> = Arc::from(user);
        let first = {
            let mut meta = self.state.meta();
            if meta.closed {
                return Err(AuthError::Closed);
            }
            if meta.user.is_some() {
                return Err(AuthError::AlreadyAuthenticated);
            }
            if !meta.rooms.is_empty() {
                return Err(AuthError::AfterJoin);
            }
            meta.user = Some(user.clone());
            self.hub.index_user_now(&user, &self.state)
        };
        self.hub.user_indexed(&user, first).await;
        self.hub.inner.presence.connect(&self.member()).await?;
        Ok(())
    }

    /// Joins a room. Returns false if the connection was in it already.
    pub async fn join(&self, room: &str) -> Result<bool, JoinError> {
        self.hub.join_state(&self.state, room, false).await
    }

    /// Joins a room and replays its history after `since`; `reply` builds
    /// the frame that goes to the client before the replay (an answer telling
    /// whether the recovery worked). Publications after the position in the
    /// returned [`Recovery`] follow live, without duplicates or gaps.
    pub async fn join_since(
        &self,
        room: &str,
        since: Since,
        reply: impl FnOnce(&Recovery) -> Option<Frame> + Send,
    ) -> Result<Recovery, JoinError> {
        let reply: ReplyFn<'_> =
            Box::new(move |r: &[Recovery]| r.first().and_then(reply).into_iter().collect());
        let mut r = self
            .hub
            .enter_rooms(
                &self.state,
                vec![(room.to_owned(), since)],
                false,
                Some(reply),
            )
            .await?;
        Ok(r.remove(0))
    }

    /// Joins several rooms at once, replaying each one's history after its
    /// `Since`, all merged in sequence order; `reply` builds the frames that
    /// go before the replay. See [`join_since`](Connection::join_since).
    pub async fn rejoin(
        &self,
        rooms: Vec<(String, Since)>,
        reply: impl FnOnce(&[Recovery]) -> Vec<Frame> + Send,
    ) -> Result<Vec<Recovery>, JoinError> {
        self.hub
            .enter_rooms(&self.state, rooms, false, Some(Box::new(reply)))
            .await
    }

    /// Resolves when the connection's rooms or session data changed since the
    /// last time it resolved (for code that keeps a copy of them somewhere).
    pub async fn changed(&self) {
        self.state.changed.notified().await
    }

    /// Where the connection joined each room with history (see [`Recovery::position`]).
    pub fn marks(&self) -> HashMap<String, StreamPosition> {
        self.state.meta().marks.clone()
    }

    /// Leaves a room. Returns false if the connection was not in it.
    pub async fn leave(&self, room: &str) -> Result<bool, LeaveError> {
        validate_room_name(room, self.hub.inner.config.max_room_name_bytes)?;
        self.hub.leave_state(&self.state, room, false).await
    }

    /// Publishes as this connection: the publication carries it as the sender.
    pub async fn publish(&self, publication: Publication) -> Result<usize, PublishError> {
        self.hub.publish(self.as_sender(publication)).await
    }

    /// [`Hub::publish_detached`] as this connection.
    pub fn publish_detached(&self, publication: Publication) -> Result<usize, PublishError> {
        self.hub.publish_detached(self.as_sender(publication))
    }

    fn as_sender(&self, mut publication: Publication) -> Publication {
        publication.from = Some(crate::Sender {
            conn: self.state.id,
            user: self.user(),
        });
        publication
    }

    /// Merges `data` into the session data: each key is set, or removed when its value is null.
    pub fn merge_session(&self, data: Map<String, Value>) -> Result<(), SessionError> {
        let max = self.hub.inner.config.max_session_bytes;
        let mut meta = self.state.meta();
        let mut merged = meta.session.clone();
        for (k, v) in data {
            if v.is_null() {
                merged.remove(&k);
            } else {
                merged.insert(k, v);
            }
        }
        let size = serde_json::to_vec(&merged)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > max {
            return Err(SessionError::TooLarge { max });
        }
        meta.session = merged;
        self.state.changed.notify_one();
        Ok(())
    }

    /// The session data.
    pub fn session(&self) -> Map<String, Value> {
        self.state.meta().session.clone()
    }

    /// Sets the connection's public data (a token's `info` claim), shown by
    /// [`Hub::connection_info`] and, once the connection authenticates (call
    /// this first), in room presence next to its user.
    pub fn set_info(&self, info: &Value) {
        self.state.meta().info = Some(Arc::from(info.to_string()));
    }

    /// The connection's public data.
    pub fn info(&self) -> Option<Value> {
        let text = self.state.meta().info.clone()?;
        serde_json::from_str(&text).ok()
    }

    /// Removes the connection from every room, index and the presence store.
    /// Later calls do nothing.
    pub async fn close(&self) {
        if self.done.swap(true, Ordering::AcqRel) {
            return;
        }
        let slot = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        cleanup(self.hub.clone(), self.state.clone(), slot).await;
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if *self.done.get_mut() {
            return;
        }
        let (hub, state) = (self.hub.clone(), self.state.clone());
        let slot = self
            .slot
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(cleanup(hub, state, slot));
        }
    }
}

async fn cleanup(hub: Hub, state: Arc<ConnState>, slot: Option<Slot>) {
    let inner = &hub.inner;
    let (user, rooms) = {
        let mut meta = state.meta();
        if meta.closed {
            return;
        }
        meta.closed = true;
        (meta.user.clone(), std::mem::take(&mut meta.rooms))
    };
    if state.owns_outbox {
        state.outbox.close(Disconnect::NORMAL);
    }
    inner.conns.write(&state.id, |m| m.remove(&state.id));
    if let Some(u) = &user {
        hub.unindex_user(u, state.id).await;
    }
    for room in rooms {
        let _ = hub.leave_locally(state.id, &room, user.clone(), None).await;
    }
    if let Err(e) = inner.presence.disconnect(state.id).await {
        hub.backend_error(&e);
    }
    // The place is free before the connection count says so.
    drop(slot);
    inner.open.fetch_sub(1, Ordering::AcqRel);
    inner
        .metrics
        .connections_closed
        .fetch_add(1, Ordering::Relaxed);
}
