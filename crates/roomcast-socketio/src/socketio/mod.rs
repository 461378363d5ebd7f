//! Socket.IO v5: namespaces, sockets, events, acks both ways and binary
//! attachments, on top of [`engineio`](crate::engineio) and the roomcast hub.
//!
//! Every socket (one per namespace an Engine.IO session connects to) is a hub
//! [`Connection`] writing into the session's outbox, so room emits reach
//! Socket.IO and native clients alike, each encoded once per protocol.

pub mod packet;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use roomcast_core::error::{JoinError, LeaveError, PublishError};
use roomcast_core::history::Since;
use roomcast_core::{
    BoxFuture, Connection, Frame, Hub, PresenceEvent, Protocol, Publication, PushError, Target,
};

use crate::engineio::{CloseReason, EngineConfig, EngineHandler, EngineIo, Incoming, Session};
use packet::{Kind, Packet};

/// Socket.IO settings.
#[derive(Debug, Clone)]
pub struct SocketIoConfig {
    /// Engine.IO settings (heartbeat, max payload, CORS, queue bound).
    pub engine: EngineConfig,
    /// A session that connects to no namespace within this time is closed. Default: 45 s.
    pub connect_timeout: Duration,
    /// Connection-state recovery: a client that reconnects within this time
    /// gets its socket id, rooms and data back and the events it missed in
    /// rooms with history (see [`Socket::recovered`]). Default: off.
    pub recovery: Option<Duration>,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        SocketIoConfig {
            engine: EngineConfig::default(),
            connect_timeout: Duration::from_secs(45),
            recovery: None,
        }
    }
}

/// Event arguments and their binary attachments. Binary values appear in
/// `args` as `{"_placeholder":true,"num":N}`, the attachment being `binary[N]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Payload {
    /// The arguments after the event name.
    pub args: Vec<Value>,
    /// Binary attachments.
    pub binary: Vec<Bytes>,
}

impl Payload {
    /// One JSON argument.
    pub fn json<T: Serialize>(value: &T) -> Payload {
        Payload {
            args: vec![serde_json::to_value(value).unwrap_or(Value::Null)],
            binary: Vec::new(),
        }
    }

    /// No arguments.
    pub fn empty() -> Payload {
        Payload::default()
    }

    /// One binary argument.
    pub fn bytes(data: Bytes) -> Payload {
        Payload {
            args: vec![serde_json::json!({"_placeholder": true, "num": 0})],
            binary: vec![data],
        }
    }

    /// The first argument, or null.
    pub fn first(&self) -> &Value {
        self.args.first().unwrap_or(&Value::Null)
    }
}

/// A connection refused by a namespace handler; the client gets
/// `CONNECT_ERROR {"message":..., "data":...}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectRefusal {
    /// Shown to the client as the error message.
    pub message: String,
    /// Optional details.
    pub data: Option<Value>,
}

impl ConnectRefusal {
    /// A refusal with a message.
    pub fn new(message: impl Into<String>) -> ConnectRefusal {
        ConnectRefusal {
            message: message.into(),
            data: None,
        }
    }
}

/// An emit did not reach the socket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    /// The socket is disconnected.
    #[error("socket disconnected")]
    Disconnected,
    /// The client's queue overflowed; it is being disconnected.
    #[error("client too slow: disconnected")]
    SlowConsumer,
}

impl From<PushError> for EmitError {
    fn from(e: PushError) -> Self {
        match e {
            PushError::Closed => EmitError::Disconnected,
            PushError::Overflow => EmitError::SlowConsumer,
        }
    }
}

/// A client did not acknowledge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// No ack within the timeout.
    #[error("ack timed out")]
    Timeout,
    /// The emit failed or the socket disconnected before the ack.
    #[error(transparent)]
    Emit(#[from] EmitError),
}

type ConnectFn =
    dyn Fn(Socket, Value) -> BoxFuture<'static, Result<(), ConnectRefusal>> + Send + Sync;
type EventFn = dyn Fn(Socket, Payload, Option<AckSender>) -> BoxFuture<'static, ()> + Send + Sync;
type FallbackFn =
    dyn Fn(Socket, String, Payload, Option<AckSender>) -> BoxFuture<'static, ()> + Send + Sync;
type AcceptFn = dyn Fn(&str) -> bool + Send + Sync;
type DisconnectFn = dyn Fn(Socket, String) -> BoxFuture<'static, ()> + Send + Sync;

struct Namespace {
    name: String,
    on_connect: Arc<ConnectFn>,
    protocol: Arc<dyn Protocol>,
}

/// How the hub's publications look to Socket.IO clients of one namespace:
/// `42<nsp>,["<event>",<data>]`.
struct NamespaceProtocol {
    nsp: String,
    presence_event: Option<String>,
    /// Append a positioned publication's offset as its last argument, for
    /// connection-state recovery.
    offsets: bool,
}

impl NamespaceProtocol {
    /// `data` is zero or more comma-separated JSON values: the arguments.
    fn frame(&self, event: &str, data: &str) -> Frame {
        self.frame_with(event, data, None)
    }

    fn frame_with(&self, event: &str, data: &str, offset: Option<u64>) -> Frame {
        let mut s = String::with_capacity(event.len() + data.len() + self.nsp.len() + 32);
        s.push_str("42");
        if self.nsp != "/" {
            s.push_str(&self.nsp);
            s.push(',');
        }
        s.push('[');
        s.push_str(&Value::String(event.to_owned()).to_string());
        if !data.is_empty() {
            s.push(',');
            s.push_str(data);
        }
        if let Some(offset) = offset {
            // An opaque string to the client: the history sequence number.
            use std::fmt::Write as _;
            let _ = write!(s, ",\"{offset}\"");
        }
        s.push(']');
        Frame::text(s)
    }
}

impl Protocol for NamespaceProtocol {
    fn encode_publication(&self, p: &Publication) -> Frame {
        let data = p.data.get();
        let offset = self
            .offsets
            .then(|| p.position.as_ref().map(|s| s.seq))
            .flatten();
        if p.spread {
            // `data` is a JSON array of arguments: `["ev",a,b]` rather than `["ev",[a,b]]`.
            if let Some(inner) = data.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
                return self.frame_with(&p.event, inner.trim(), offset);
            }
        }
        self.frame_with(&p.event, data, offset)
    }

    fn namespace(&self) -> Option<&str> {
        Some(&self.nsp)
    }

    fn encode_presence(&self, e: &PresenceEvent) -> Option<Frame> {
        let name = self.presence_event.as_ref()?;
        let data = serde_json::json!({
            "room": e.room, "event": e.kind.as_str(), "user": &*e.user, "conn": e.conn.to_string(),
        });
        Some(self.frame(name, &data.to_string()))
    }

    fn encode_membership(&self, _: &str, _: bool) -> Option<Frame> {
        None
    }
}

struct Inner {
    hub: Hub,
    config: SocketIoConfig,
    namespaces: RwLock<HashMap<String, Arc<Namespace>>>,
    dynamic: RwLock<Vec<(Arc<AcceptFn>, Arc<ConnectFn>)>>,
    presence_event: RwLock<Option<String>>,
    engine: std::sync::OnceLock<Weak<EngineIo>>,
}

/// A Socket.IO server on a roomcast hub. Cheap to clone.
#[derive(Clone)]
pub struct SocketIo {
    inner: Arc<Inner>,
    engine: Arc<EngineIo>,
}

impl std::fmt::Debug for SocketIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketIo").finish_non_exhaustive()
    }
}

/// Per Engine.IO session: its sockets, the queue its driver task reads, and a
/// binary packet waiting for its attachments.
struct SessionState {
    tx: mpsc::UnboundedSender<Queued>,
    /// The weight of the packets waiting in `tx` (see [`weight`]); bounded by
    /// [`SessionState::max_queued`].
    queued: AtomicUsize,
    max_queued: usize,
    /// CONNECTs refused on this session so far.
    refused: AtomicU32,
    sockets: Mutex<HashMap<String, Socket>>,
}

/// What the session's task handles, in order.
enum Queued {
    /// A message and its weight.
    Packet(Incoming, usize),
    /// The Engine.IO session closed, for this reason: after the packets
    /// before it (a client's DISCONNECT then its transport close are a
    /// namespace disconnect, not a lost transport).
    Closed(String),
}

/// What a waiting packet costs: its bytes plus the bookkeeping of one queue
/// entry, so that a flood of tiny packets counts as much as it weighs.
fn weight(message: &Incoming) -> usize {
    let len = match message {
        Incoming::Text(t) => t.len(),
        Incoming::Binary(b) => b.len(),
    };
    len + 64
}

/// Packets may wait for the session's task up to this many times the
/// Engine.IO max payload (weighed with [`weight`]); more close the session.
const QUEUED_PAYLOADS: usize = 4;

/// Refused CONNECTs a session may make; the next one closes it.
pub const MAX_REFUSED_CONNECTS: u32 = 5;

impl SocketIo {
    /// A Socket.IO server delivering through `hub`. Register namespaces with
    /// [`ns`](SocketIo::ns), then mount [`router`](SocketIo::router).
    pub fn new(hub: Hub, config: SocketIoConfig) -> SocketIo {
        let inner = Arc::new(Inner {
            hub,
            config: config.clone(),
            namespaces: RwLock::new(HashMap::new()),
            dynamic: RwLock::new(Vec::new()),
            presence_event: RwLock::new(None),
            engine: std::sync::OnceLock::new(),
        });
        // Sessions count against the hub's max_connections, with every other transport.
        let admission = inner.hub.admission().clone();
        let engine = EngineIo::with_admission(
            config.engine,
            Arc::new(Handler(Arc::downgrade(&inner))),
            admission,
        );
        let _ = inner.engine.set(Arc::downgrade(&engine));
        SocketIo { inner, engine }
    }

    /// The hub.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// The Engine.IO server underneath.
    pub fn engine(&self) -> &Arc<EngineIo> {
        &self.engine
    }

    /// The routes, at `path` (usually `/socket.io/`).
    pub fn router<S: Clone + Send + Sync + 'static>(&self, path: &str) -> axum::Router<S> {
        self.engine.router(path)
    }

    /// Registers a namespace. `on_connect` runs for every socket that connects,
    /// with the CONNECT auth payload (or null); returning `Err` refuses the
    /// connection with CONNECT_ERROR. Emits made inside it reach the client
    /// after the CONNECT reply.
    pub fn ns<F, Fut>(&self, name: &str, on_connect: F)
    where
        F: Fn(Socket, Value) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), ConnectRefusal>> + Send + 'static,
    {
        let f: Arc<ConnectFn> = Arc::new(move |s, a| Box::pin(on_connect(s, a)));
        let ns = self.inner.namespace(name, f);
        self.inner
            .namespaces
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), ns);
    }

    /// Accepts any namespace for which `accept` returns true (dynamic
    /// namespaces), with the same kind of handler as [`ns`](SocketIo::ns).
    pub fn dynamic_ns<A, F, Fut>(&self, accept: A, on_connect: F)
    where
        A: Fn(&str) -> bool + Send + Sync + 'static,
        F: Fn(Socket, Value) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), ConnectRefusal>> + Send + 'static,
    {
        let f: Arc<ConnectFn> = Arc::new(move |s, a| Box::pin(on_connect(s, a)));
        self.inner
            .dynamic
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push((Arc::new(accept), f));
    }

    /// Shows presence join/leave events to Socket.IO clients as events with this name.
    pub fn presence_events(&self, event: Option<&str>) {
        *self
            .inner
            .presence_event
            .write()
            .unwrap_or_else(|e| e.into_inner()) = event.map(str::to_owned);
    }

    /// Emits to every member of a room (Socket.IO and native clients) on every
    /// node, with one JSON argument; binary attachments are not carried through rooms.
    pub async fn emit_to_room<T: Serialize>(
        &self,
        room: &str,
        event: &str,
        data: &T,
    ) -> Result<usize, PublishError> {
        let p = publication(room_target(room), event, data)?;
        self.inner.hub.publish(p).await
    }

    /// Emits to every connection on every node.
    pub async fn emit_all<T: Serialize>(
        &self,
        event: &str,
        data: &T,
    ) -> Result<usize, PublishError> {
        let p = publication(Target::All, event, data)?;
        self.inner.hub.publish(p).await
    }
}

fn publication<T: Serialize>(
    target: Target,
    event: &str,
    data: &T,
) -> Result<Publication, PublishError> {
    Publication::json(target, event, data).map_err(|_| PublishError::InvalidEvent)
}

impl Inner {
    fn namespace(&self, name: &str, on_connect: Arc<ConnectFn>) -> Arc<Namespace> {
        Arc::new(Namespace {
            name: name.to_owned(),
            on_connect,
            protocol: Arc::new(NamespaceProtocol {
                nsp: name.to_owned(),
                presence_event: self
                    .presence_event
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
                offsets: self.config.recovery.is_some(),
            }),
        })
    }

    fn find_namespace(&self, name: &str) -> Option<Arc<Namespace>> {
        if let Some(ns) = self
            .namespaces
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Some(ns.clone());
        }
        let handler = self
            .dynamic
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(accept, _)| accept(name))
            .map(|(_, h)| h.clone())?;
        // A dynamic namespace becomes a registered one on first use, so its
        // sockets share one protocol instance (one encoding per delivery).
        let ns = self.namespace(name, handler);
        let mut map = self.namespaces.write().unwrap_or_else(|e| e.into_inner());
        Some(map.entry(name.to_owned()).or_insert(ns).clone())
    }

    fn engine(&self) -> Option<Arc<EngineIo>> {
        self.engine.get().and_then(Weak::upgrade)
    }
}

struct Handler(Weak<Inner>);

fn state_of(session: &Session) -> Option<Arc<SessionState>> {
    session.ext.get()?.clone().downcast::<SessionState>().ok()
}

impl EngineHandler for Handler {
    fn on_open(&self, session: &Arc<Session>) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(SessionState {
            tx,
            queued: AtomicUsize::new(0),
            max_queued: QUEUED_PAYLOADS * inner.config.engine.max_payload.max(1),
            refused: AtomicU32::new(0),
            sockets: Mutex::new(HashMap::new()),
        });
        let _ = session.ext.set(state.clone());
        tokio::spawn(drive(inner, session.clone(), state, rx));
    }

    fn on_message(&self, session: &Arc<Session>, message: Incoming) {
        let Some(state) = state_of(session) else {
            return;
        };
        if session.is_closed() {
            return;
        }
        let w = weight(&message);
        if state.queued.fetch_add(w, Ordering::AcqRel) + w > state.max_queued {
            // The client sends faster than its packets are handled: refuse to
            // buffer without bound.
            if let Some(inner) = self.0.upgrade() {
                tracing::info!(sid = %session.sid, "closing a Socket.IO session: too many packets waiting");
                close_session(&inner, session, "too many packets waiting");
            }
            return;
        }
        let _ = state.tx.send(Queued::Packet(message, w));
    }

    fn farewell(&self, session: &Arc<Session>) -> Vec<Frame> {
        let Some(state) = state_of(session) else {
            return Vec::new();
        };
        let sockets = state.sockets.lock().unwrap_or_else(|e| e.into_inner());
        sockets
            .keys()
            .map(|nsp| {
                Frame::text(format!(
                    "4{}",
                    Packet::simple(Kind::Disconnect, nsp, None).encode()
                ))
            })
            .collect()
    }

    fn on_close(&self, session: &Arc<Session>, reason: &CloseReason) {
        let Some(state) = state_of(session) else {
            return;
        };
        let reason = reason.as_str().to_owned();
        // The session's task closes the sockets once it has handled what came before.
        if let Err(mpsc::error::SendError(Queued::Closed(reason))) =
            state.tx.send(Queued::Closed(reason))
        {
            for s in drain_sockets(&state) {
                let reason = reason.clone();
                tokio::spawn(async move { s.closed(reason).await });
            }
        }
    }
}

fn drain_sockets(state: &SessionState) -> Vec<Socket> {
    state
        .sockets
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
        .map(|(_, s)| s)
        .collect()
}

/// The per-session task: decodes packets in order and dispatches them; once
/// the session closed, handles only the DISCONNECTs that came before the
/// close, then closes the remaining sockets.
async fn drive(
    inner: Arc<Inner>,
    session: Arc<Session>,
    state: Arc<SessionState>,
    rx: mpsc::UnboundedReceiver<Queued>,
) {
    let reason = handle_packets(&inner, &session, &state, rx).await;
    for s in drain_sockets(&state) {
        s.closed(reason.clone()).await;
    }
}

/// Why the session closed, as Socket.IO names it.
fn close_reason(session: &Session) -> String {
    session
        .close_reason
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map_or("transport close", |r| r.as_str())
        .to_owned()
}

/// Handles the session's packets until it closes; returns why it closed.
async fn handle_packets(
    inner: &Arc<Inner>,
    session: &Arc<Session>,
    state: &Arc<SessionState>,
    mut rx: mpsc::UnboundedReceiver<Queued>,
) -> String {
    let deadline = tokio::time::Instant::now() + inner.config.connect_timeout;
    let mut pending: Option<(Packet, Vec<Bytes>)> = None;
    // The connect timeout applies until the first namespace is joined; a client
    // that later leaves every namespace keeps its session, as with Node.
    let mut ever_connected = false;
    loop {
        ever_connected = ever_connected
            || !state
                .sockets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty();
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = tokio::time::sleep_until(deadline), if !ever_connected && pending.is_none() && !session.is_closed() => {
                if state.sockets.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
                    close_session(inner, session, "connect timeout");
                    return close_reason(session);
                }
                continue;
            }
        };
        let (msg, w) = match msg {
            Some(Queued::Packet(msg, w)) => (msg, w),
            Some(Queued::Closed(reason)) => return reason,
            None => return close_reason(session),
        };
        state.queued.fetch_sub(w, Ordering::AcqRel);
        if session.is_closed() {
            // What the client said before it went: only a namespace disconnect matters now.
            if let Incoming::Text(text) = &msg {
                if let Ok(p) = Packet::decode(text) {
                    if p.kind == Kind::Disconnect {
                        dispatch(inner, session, state, p, Vec::new()).await;
                    }
                }
            }
            continue;
        }
        let ready = match (msg, pending.take()) {
            (Incoming::Text(text), None) => match Packet::decode(&text) {
                Ok(p) if p.kind.is_binary() && p.attachments > 0 => {
                    if !p
                        .data
                        .as_ref()
                        .is_some_and(|d| packet::placeholders_valid(d, p.attachments))
                    {
                        close_session(inner, session, "invalid placeholders");
                        return close_reason(session);
                    }
                    pending = Some((p, Vec::new()));
                    None
                }
                Ok(p) => Some((p, Vec::new())),
                Err(e) => {
                    close_session(inner, session, &e.to_string());
                    return close_reason(session);
                }
            },
            (Incoming::Binary(b), Some((p, mut bins))) => {
                bins.push(b);
                if bins.len() == p.attachments {
                    Some((p, bins))
                } else {
                    pending = Some((p, bins));
                    None
                }
            }
            (Incoming::Text(_), Some(_)) | (Incoming::Binary(_), None) => {
                close_session(inner, session, "unexpected binary or missing attachment");
                return close_reason(session);
            }
        };
        if let Some((p, bins)) = ready {
            dispatch(inner, session, state, p, bins).await;
        }
    }
}

fn close_session(inner: &Inner, session: &Arc<Session>, why: &str) {
    if let Some(engine) = inner.engine() {
        engine.close(session, CloseReason::ProtocolError(why.to_owned()));
    }
}

fn push_packet(session: &Session, p: &Packet, binary: &[Bytes]) -> Result<(), PushError> {
    let mut frames = Vec::with_capacity(1 + binary.len());
    frames.push(Frame::text(format!("4{}", p.encode())));
    frames.extend(binary.iter().cloned().map(Frame::Binary));
    session.outbox().push_all(frames)
}

async fn dispatch(
    inner: &Arc<Inner>,
    session: &Arc<Session>,
    state: &Arc<SessionState>,
    p: Packet,
    bins: Vec<Bytes>,
) {
    let existing = state
        .sockets
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&p.nsp)
        .cloned();
    match p.kind {
        Kind::Connect => {
            if existing.is_some() {
                return;
            }
            if state.refused.load(Ordering::Acquire) >= MAX_REFUSED_CONNECTS {
                tracing::info!(sid = %session.sid, "closing a Socket.IO session: too many refused CONNECTs");
                close_session(inner, session, "too many refused CONNECTs");
                return;
            }
            connect(
                inner,
                session,
                state,
                &p.nsp,
                p.data.unwrap_or_else(|| Value::Object(Default::default())),
            )
            .await;
        }
        Kind::Disconnect => {
            let removed = state
                .sockets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&p.nsp);
            if let Some(s) = removed {
                s.closed("client namespace disconnect".to_owned()).await;
            }
        }
        Kind::Event | Kind::BinaryEvent => {
            let Some(socket) = existing else { return };
            let mut args = match p.data {
                Some(Value::Array(a)) => a,
                _ => return,
            };
            let name = match args.remove(0) {
                Value::String(s) => s,
                other => other.to_string(),
            };
            let ack = p.id.map(|id| AckSender {
                socket: socket.clone(),
                id,
            });
            socket
                .dispatch_event(name, Payload { args, binary: bins }, ack)
                .await;
        }
        Kind::Ack | Kind::BinaryAck => {
            let Some(socket) = existing else { return };
            let (Some(id), Some(Value::Array(args))) = (p.id, p.data) else {
                return;
            };
            let waiter = socket
                .0
                .acks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            if let Some(tx) = waiter {
                let _ = tx.send(Payload { args, binary: bins });
            }
        }
        Kind::ConnectError => close_session(inner, session, "CONNECT_ERROR from a client"),
    }
}

/// What a Socket.IO client that may come back is recovered from, kept in the
/// history store under its private id (`pid`).
#[derive(Debug, Serialize, serde::Deserialize)]
struct Record {
    sid: String,
    nsp: String,
    user: Option<String>,
    data: serde_json::Map<String, Value>,
    rooms: Vec<RoomMark>,
}

/// A room of a [`Record`], and where the socket joined its history stream.
#[derive(Debug, Serialize, serde::Deserialize)]
struct RoomMark {
    room: String,
    #[serde(default)]
    epoch: Option<String>,
    #[serde(default)]
    seq: Option<u64>,
}

/// Disconnect reasons after which a client may recover, as with Node.
const RECOVERABLE: [&str; 4] = [
    "transport close",
    "transport error",
    "ping timeout",
    "server shutting down",
];

/// Takes `pid` and `offset` out of a CONNECT payload (they are not the
/// application's: the pid is the client's secret).
fn take_resume(auth: &mut Value) -> Option<(String, Option<String>)> {
    let obj = auth.as_object_mut()?;
    let pid = obj.remove("pid");
    let offset = obj.remove("offset");
    let pid = pid?.as_str()?.to_owned();
    Some((pid, offset.and_then(|o| o.as_str().map(str::to_owned))))
}

/// The stored record under `pid` for namespace `nsp`, if it is still kept.
async fn restore(inner: &Inner, pid: &str, nsp: &str) -> Option<Record> {
    match inner.hub.history_store().take_session(pid).await {
        Ok(Some(text)) => serde_json::from_str::<Record>(&text)
            .ok()
            .filter(|r| r.nsp == nsp),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read a Socket.IO recovery session; connecting afresh");
            None
        }
    }
}

async fn connect(
    inner: &Arc<Inner>,
    session: &Arc<Session>,
    state: &Arc<SessionState>,
    nsp: &str,
    mut auth: Value,
) {
    let Some(ns) = inner.find_namespace(nsp) else {
        let refusal = Packet::simple(
            Kind::ConnectError,
            nsp,
            Some(serde_json::json!({"message": "Invalid namespace"})),
        );
        let _ = push_packet(session, &refusal, &[]);
        return;
    };
    let resume = take_resume(&mut auth);
    let window = inner.config.recovery;
    let mut restored = None;
    if let (Some(_), Some((pid, offset))) = (window, &resume) {
        // The client's offset is the last one it got (none if it got none);
        // one that is not ours (an event's own string argument) tells nothing.
        let client = match offset {
            None => Some(0),
            Some(o) => o.parse::<u64>().ok(),
        };
        if let Some(client) = client {
            restored = restore(inner, pid, nsp)
                .await
                .map(|r| (pid.clone(), client, r));
        }
    }
    let conn = match inner
        .hub
        .connect_shared(ns.protocol.clone(), None, session.outbox().clone())
        .await
    {
        Ok(c) => c,
        Err(e) => {
            let refusal = Packet::simple(
                Kind::ConnectError,
                nsp,
                Some(serde_json::json!({"message": e.to_string()})),
            );
            let _ = push_packet(session, &refusal, &[]);
            return;
        }
    };
    // The socket id is the hub connection id, so that emitters and the HTTP
    // API that name a socket reach it on whichever node it is; a recovered
    // socket keeps the id it had.
    let id = match &restored {
        Some((_, _, r)) => r.sid.clone(),
        None => conn.id().to_string(),
    };
    let pid = window.map(|_| match &restored {
        Some((pid, _, _)) => pid.clone(),
        None => crate::engineio::random_sid(),
    });
    let socket = Socket(Arc::new(SocketInner {
        id,
        nsp: ns.name.clone(),
        hub_conn_id: conn.id(),
        conn: Mutex::new(Some(Arc::new(conn))),
        session: session.clone(),
        io: inner.clone(),
        handlers: Mutex::new(HashMap::new()),
        fallback: Mutex::new(None),
        on_disconnect: Mutex::new(Vec::new()),
        acks: Mutex::new(HashMap::new()),
        next_ack: AtomicU64::new(0),
        connected: AtomicBool::new(false),
        early: Mutex::new(Vec::new()),
        pid,
        recovered: AtomicBool::new(false),
        gone: tokio_util::sync::CancellationToken::new(),
        keeper: Mutex::new(None),
    }));
    let on_connect = ns.on_connect.clone();
    match on_connect(socket.clone(), auth).await {
        Ok(()) => {
            state
                .sockets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(nsp.to_owned(), socket.clone());
            if let Some((_, client, record)) = restored {
                // Another user, or some of what it missed is gone (and part
                // of it may have been sent): have it connect afresh, its pid
                // is used up.
                let same_user = record.user.as_deref() == socket.user().as_deref();
                if !same_user || !socket.recover(record, client).await {
                    tracing::info!(sid = %session.sid, same_user, "closing a Socket.IO session: its recovery failed");
                    close_session(inner, session, "recovery failed");
                    return;
                }
            } else {
                let frames = socket.connect_frames();
                if session.outbox().push_all(frames).is_err() {
                    socket.closed("transport close".to_owned()).await;
                    return;
                }
            }
            if let Some(window) = window {
                let keeper = tokio::spawn(keep_recoverable(socket.clone(), window));
                *socket.0.keeper.lock().unwrap_or_else(|e| e.into_inner()) = Some(keeper);
            }
        }
        Err(refusal) => {
            state.refused.fetch_add(1, Ordering::AcqRel);
            let mut data = serde_json::json!({"message": refusal.message});
            if let Some(d) = refusal.data {
                data["data"] = d;
            }
            let _ = push_packet(
                session,
                &Packet::simple(Kind::ConnectError, nsp, Some(data)),
                &[],
            );
            socket.release().await;
        }
    }
}

/// Keeps the socket's recovery record in the history store while it is
/// connected (so that it survives this node), rewritten whenever its rooms or
/// data change and refreshed before it expires.
async fn keep_recoverable(socket: Socket, window: Duration) {
    let period = (window / 2).max(Duration::from_millis(500));
    let Some(conn) = socket.conn() else { return };
    loop {
        if socket.0.gone.is_cancelled() {
            return;
        }
        socket.save(window + period).await;
        tokio::select! {
            _ = conn.changed() => {}
            _ = tokio::time::sleep(period) => {}
            _ = socket.0.gone.cancelled() => return,
        }
    }
}

/// Where an emit "to a room" goes: as in Socket.IO, a socket id is a room
/// holding just that socket (on whichever node it is).
fn room_target(room: &str) -> Target {
    match room.parse::<roomcast_core::ConnId>() {
        Ok(id) => Target::Conn(id),
        Err(_) => Target::Room(room.to_owned()),
    }
}

struct SocketInner {
    id: String,
    nsp: String,
    conn: Mutex<Option<Arc<Connection>>>,
    hub_conn_id: roomcast_core::ConnId,
    session: Arc<Session>,
    io: Arc<Inner>,
    handlers: Mutex<HashMap<String, Arc<EventFn>>>,
    fallback: Mutex<Option<Arc<FallbackFn>>>,
    on_disconnect: Mutex<Vec<Arc<DisconnectFn>>>,
    acks: Mutex<HashMap<u64, oneshot::Sender<Payload>>>,
    next_ack: AtomicU64,
    connected: AtomicBool,
    /// Frames emitted by the connect handler, sent after the CONNECT reply.
    early: Mutex<Vec<Frame>>,
    /// The private id a client recovers with, when recovery is on.
    pid: Option<String>,
    recovered: AtomicBool,
    /// Cancelled when the socket disconnects.
    gone: tokio_util::sync::CancellationToken,
    /// The task keeping the recovery record, awaited before the last write.
    keeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A client's connection to one namespace. Cheap to clone.
#[derive(Clone)]
pub struct Socket(Arc<SocketInner>);

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("id", &self.0.id)
            .field("nsp", &self.0.nsp)
            .finish()
    }
}

/// Answers a client's event that asked for an ack.
#[derive(Debug, Clone)]
pub struct AckSender {
    socket: Socket,
    id: u64,
}

impl AckSender {
    /// Sends the ack with these arguments (and attachments).
    pub fn send(self, payload: Payload) -> Result<(), EmitError> {
        let p = Packet::ack(
            &self.socket.0.nsp,
            Value::Array(payload.args),
            self.id,
            payload.binary.len(),
        );
        self.socket.push(&p, &payload.binary)
    }
}

impl Socket {
    /// The socket id (sent to the client in the CONNECT reply).
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// The namespace.
    pub fn ns(&self) -> &str {
        &self.0.nsp
    }

    /// Whether this socket was recovered: the client reconnected within the
    /// recovery window and got its id, rooms, data and missed events back.
    pub fn recovered(&self) -> bool {
        self.0.recovered.load(Ordering::Acquire)
    }

    /// The CONNECT reply (with the pid when recovery is on) and what the
    /// connect handler emitted; marks the socket connected.
    fn connect_frames(&self) -> Vec<Frame> {
        let mut data = serde_json::json!({"sid": self.0.id});
        if let Some(pid) = &self.0.pid {
            data["pid"] = pid.as_str().into();
        }
        let reply = Packet::simple(Kind::Connect, &self.0.nsp, Some(data));
        let mut frames = vec![Frame::text(format!("4{}", reply.encode()))];
        frames.append(&mut self.0.early.lock().unwrap_or_else(|e| e.into_inner()));
        self.0.connected.store(true, Ordering::Release);
        // Emits that raced the flag are in `early` too.
        frames.append(&mut self.0.early.lock().unwrap_or_else(|e| e.into_inner()));
        frames
    }

    /// Restores a recovered socket's data and rooms, and replays what it
    /// missed (after sequence number `client`) after the CONNECT reply.
    /// False if some room's missed events were gone.
    async fn recover(&self, record: Record, client: u64) -> bool {
        let Some(conn) = self.conn() else {
            return false;
        };
        let hub = self.hub();
        let rooms: Vec<(String, Since)> = record
            .rooms
            .into_iter()
            .map(|m| {
                let since = if hub.config().rooms.history_for(&m.room).is_some() {
                    Since::Seq {
                        seq: client.max(m.seq.unwrap_or(0)),
                        epoch: m.epoch,
                    }
                } else {
                    Since::Latest
                };
                (m.room, since)
            })
            .collect();
        let _ = conn.merge_session(record.data);
        self.0.recovered.store(true, Ordering::Release);
        let me = self.clone();
        let done = conn.rejoin(rooms, move |_| me.connect_frames()).await;
        match done {
            Ok(r) => r.iter().all(|r| !r.history || r.recovered),
            Err(e) => {
                tracing::info!(error = %e, "a recovered socket could not rejoin its rooms");
                false
            }
        }
    }

    /// The socket's recovery record, from its connection.
    fn record(&self) -> Option<String> {
        let conn = self.conn()?;
        let marks = conn.marks();
        let record = Record {
            sid: self.0.id.clone(),
            nsp: self.0.nsp.clone(),
            user: conn.user().as_deref().map(str::to_owned),
            data: conn.session(),
            rooms: conn
                .rooms()
                .into_iter()
                .map(|room| {
                    let mark = marks.get(&room);
                    RoomMark {
                        epoch: mark.map(|m| m.epoch.to_string()),
                        seq: mark.map(|m| m.seq),
                        room,
                    }
                })
                .collect(),
        };
        serde_json::to_string(&record).ok()
    }

    /// Writes the recovery record, to be kept for `ttl`.
    async fn save(&self, ttl: Duration) {
        let (Some(pid), Some(record)) = (&self.0.pid, self.record()) else {
            return;
        };
        if let Err(e) = self
            .hub()
            .history_store()
            .keep_session(pid, record, ttl)
            .await
        {
            // Every socket would say so during an outage, which the store reports itself.
            tracing::debug!(error = %e, "cannot keep a Socket.IO recovery session");
        }
    }

    /// The hub connection id (what the HTTP API and native clients see).
    pub fn conn_id(&self) -> roomcast_core::ConnId {
        self.0.hub_conn_id
    }

    /// The handshake request's headers (cookies, user agent...).
    pub fn headers(&self) -> &axum::http::HeaderMap {
        &self.0.session.headers
    }

    /// The transport in use now: `"websocket"` or `"polling"`.
    pub fn transport(&self) -> &'static str {
        if self.0.session.is_websocket() {
            "websocket"
        } else {
            "polling"
        }
    }

    /// The user id the socket authenticated as.
    pub fn user(&self) -> Option<Arc<str>> {
        self.with_conn(|c| c.user()).flatten()
    }

    fn with_conn<T>(&self, f: impl FnOnce(&Connection) -> T) -> Option<T> {
        self.0
            .conn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_deref()
            .map(f)
    }

    fn hub(&self) -> &Hub {
        &self.0.io.hub
    }

    /// Registers the handler of an event.
    pub fn on<F, Fut>(&self, event: &str, handler: F)
    where
        F: Fn(Socket, Payload, Option<AckSender>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let f: Arc<EventFn> = Arc::new(move |s, p, a| Box::pin(handler(s, p, a)));
        self.0
            .handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(event.to_owned(), f);
    }

    /// Registers the handler of events that have none of their own.
    pub fn on_any<F, Fut>(&self, handler: F)
    where
        F: Fn(Socket, String, Payload, Option<AckSender>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let f: Arc<FallbackFn> = Arc::new(move |s, e, p, a| Box::pin(handler(s, e, p, a)));
        *self.0.fallback.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    /// Registers a handler run when the socket disconnects, with the reason.
    pub fn on_disconnect<F, Fut>(&self, handler: F)
    where
        F: Fn(Socket, String) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let f: Arc<DisconnectFn> = Arc::new(move |s, r| Box::pin(handler(s, r)));
        self.0
            .on_disconnect
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(f);
    }

    async fn dispatch_event(&self, event: String, payload: Payload, ack: Option<AckSender>) {
        let handler = self
            .0
            .handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&event)
            .cloned();
        let fut = match handler {
            Some(h) => h(self.clone(), payload, ack),
            None => {
                let fallback = self
                    .0
                    .fallback
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                match fallback {
                    Some(f) => f(self.clone(), event, payload, ack),
                    None => return,
                }
            }
        };
        run_handler(fut).await;
    }

    fn push(&self, p: &Packet, binary: &[Bytes]) -> Result<(), EmitError> {
        if !self.0.connected.load(Ordering::Acquire) {
            let mut early = self.0.early.lock().unwrap_or_else(|e| e.into_inner());
            if !self.0.connected.load(Ordering::Acquire) {
                early.push(Frame::text(format!("4{}", p.encode())));
                early.extend(binary.iter().cloned().map(Frame::Binary));
                return Ok(());
            }
        }
        push_packet(&self.0.session, p, binary).map_err(EmitError::from)
    }

    fn event_packet(&self, event: &str, payload: &Payload, id: Option<u64>) -> Packet {
        let mut args = Vec::with_capacity(payload.args.len() + 1);
        args.push(Value::String(event.to_owned()));
        args.extend(payload.args.iter().cloned());
        Packet::event(&self.0.nsp, Value::Array(args), id, payload.binary.len())
    }

    /// Emits an event with one JSON argument to this socket.
    pub fn emit<T: Serialize>(&self, event: &str, data: &T) -> Result<(), EmitError> {
        self.emit_payload(event, Payload::json(data))
    }

    /// Emits an event with any arguments and attachments to this socket.
    pub fn emit_payload(&self, event: &str, payload: Payload) -> Result<(), EmitError> {
        self.push(&self.event_packet(event, &payload, None), &payload.binary)
    }

    /// Emits and waits for the client's ack, at most `timeout`.
    pub async fn emit_with_ack(
        &self,
        event: &str,
        payload: Payload,
        timeout: Duration,
    ) -> Result<Payload, AckError> {
        let id = self.0.next_ack.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.0
            .acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        if let Err(e) = self.push(
            &self.event_packet(event, &payload, Some(id)),
            &payload.binary,
        ) {
            self.0
                .acks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return Err(e.into());
        }
        let result = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(AckError::Emit(EmitError::Disconnected)),
            Err(_) => Err(AckError::Timeout),
        };
        self.0
            .acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        result
    }

    /// The socket's hub connection, until it disconnects.
    pub fn connection(&self) -> Option<Arc<Connection>> {
        self.conn()
    }

    fn conn(&self) -> Option<Arc<Connection>> {
        self.0
            .conn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Binds a user id (for presence, `/api/send` by user, ...). Must come
    /// before joining rooms; only once.
    pub async fn authenticate(&self, user: &str) -> Result<(), roomcast_core::error::AuthError> {
        let conn = self.conn().ok_or(roomcast_core::error::AuthError::Closed)?;
        conn.authenticate(user).await
    }

    /// Joins a room (shared with native clients and every node).
    pub async fn join(&self, room: &str) -> Result<bool, JoinError> {
        let conn = self.conn().ok_or(JoinError::Closed)?;
        conn.join(room).await
    }

    /// Leaves a room.
    pub async fn leave(&self, room: &str) -> Result<bool, LeaveError> {
        match self.conn() {
            Some(conn) => conn.leave(room).await,
            None => Ok(false),
        }
    }

    /// The rooms the socket is in.
    pub fn rooms(&self) -> Vec<String> {
        self.with_conn(|c| c.rooms()).unwrap_or_default()
    }

    /// Merges into the socket's session data (a key set to null is removed).
    pub fn set_data(
        &self,
        data: serde_json::Map<String, Value>,
    ) -> Result<(), roomcast_core::error::SessionError> {
        self.with_conn(|c| c.merge_session(data)).unwrap_or(Ok(()))
    }

    /// The socket's session data.
    pub fn data(&self) -> serde_json::Map<String, Value> {
        self.with_conn(|c| c.session()).unwrap_or_default()
    }

    /// Emits to a room's members except this socket, on every node.
    pub async fn to_room<T: Serialize>(
        &self,
        room: &str,
        event: &str,
        data: &T,
    ) -> Result<usize, PublishError> {
        let mut p = publication(room_target(room), event, data)?;
        p.exclude = Some(self.conn_id());
        self.publish_as_self(p).await
    }

    /// Emits to a room's members, this socket included.
    pub async fn within_room<T: Serialize>(
        &self,
        room: &str,
        event: &str,
        data: &T,
    ) -> Result<usize, PublishError> {
        let p = publication(room_target(room), event, data)?;
        self.publish_as_self(p).await
    }

    /// Emits to every connection except this socket.
    pub async fn broadcast<T: Serialize>(
        &self,
        event: &str,
        data: &T,
    ) -> Result<usize, PublishError> {
        let mut p = publication(Target::All, event, data)?;
        p.exclude = Some(self.conn_id());
        self.publish_as_self(p).await
    }

    async fn publish_as_self(&self, mut p: Publication) -> Result<usize, PublishError> {
        p.from = Some(roomcast_core::Sender {
            conn: self.conn_id(),
            user: self.user(),
        });
        self.hub().publish(p).await
    }

    /// Takes every member out of a room, on every node.
    pub async fn close_room(&self, room: &str) -> Result<usize, LeaveError> {
        self.hub().close_room(room).await
    }

    /// Disconnects the socket from its namespace (the client gets DISCONNECT and
    /// does not reconnect by itself); the Engine.IO session stays open.
    pub async fn disconnect(&self) {
        let _ = push_packet(
            &self.0.session,
            &Packet::simple(Kind::Disconnect, &self.0.nsp, None),
            &[],
        );
        if let Some(state) = state_of(&self.0.session) {
            state
                .sockets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&self.0.nsp);
        }
        self.closed("server namespace disconnect".to_owned()).await;
    }

    /// Runs disconnect handlers once and removes the socket from the hub.
    async fn closed(&self, reason: String) {
        if !self.0.gone.is_cancelled() {
            self.0.gone.cancel();
            // Its last write must not land after this one.
            let keeper = self
                .0
                .keeper
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(keeper) = keeper {
                let _ = keeper.await;
            }
            if let (Some(window), Some(pid)) = (self.0.io.config.recovery, &self.0.pid) {
                if RECOVERABLE.contains(&reason.as_str()) {
                    self.save(window).await;
                } else {
                    let _ = self.hub().history_store().take_session(pid).await;
                }
            }
        }
        let handlers = std::mem::take(
            &mut *self
                .0
                .on_disconnect
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for h in handlers {
            h(self.clone(), reason.clone()).await;
        }
        self.0
            .acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.release().await;
    }

    async fn release(&self) {
        let conn = self.0.conn.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(conn) = conn {
            conn.close().await;
        }
    }
}

/// Runs a handler's synchronous part now (so emits keep the order of the
/// events that caused them), and the rest as its own task.
async fn run_handler(mut fut: BoxFuture<'static, ()>) {
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await;
    if first.is_pending() {
        tokio::spawn(fut);
    }
}
