//! Engine.IO v4: sessions over HTTP long-polling and WebSocket, the
//! polling → WebSocket upgrade, and the server-driven heartbeat.
//!
//! A session's outgoing packets live in a roomcast [`Outbox`]: text packets
//! as `Frame::Text("<type><data>")`, binary messages as `Frame::Binary`.
//! Whichever transport is current drains it: a pending long-polling GET (all
//! queued packets batched into one payload) or the WebSocket task (one frame
//! per packet, one flush per batch). The layer above (Socket.IO, or the echo
//! example) sees messages through [`EngineHandler`].

pub mod packet;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use roomcast_core::admission::{Admission, AdmitError, Slot};
use roomcast_core::{Disconnect, Frame, Outbox, PushError};

use packet::{Encoded, Packet};

/// Engine.IO settings. `Default` matches the reference Node server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// How often the server pings. Default: 25 s.
    pub ping_interval: Duration,
    /// How long the client has to answer a ping. Default: 20 s.
    pub ping_timeout: Duration,
    /// Largest message or polling body a client may send, in bytes. Default: 1 000 000.
    pub max_payload: usize,
    /// Bytes a session's outgoing queue may hold before it is closed as a slow consumer. Default: 1 MiB.
    pub max_queue_bytes: usize,
    /// How long a started upgrade may take. Default: 10 s.
    pub upgrade_timeout: Duration,
    /// Which browser origins get CORS headers.
    pub cors: Cors,
    /// Most open sessions (connected to a namespace or not) of an
    /// [`EngineIo::new`]; a handshake over it is answered 503. 0 means no
    /// limit. Default: 0. A server made with [`EngineIo::with_admission`]
    /// (as [`SocketIo`](crate::socketio::SocketIo) does, with its hub's)
    /// counts its sessions there instead.
    pub max_sessions: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            ping_interval: Duration::from_millis(25_000),
            ping_timeout: Duration::from_millis(20_000),
            max_payload: 1_000_000,
            max_queue_bytes: 1 << 20,
            upgrade_timeout: Duration::from_millis(10_000),
            cors: Cors::Off,
            max_sessions: 0,
        }
    }
}

/// CORS policy for the polling transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cors {
    /// No CORS headers (same-origin pages and non-browser clients only).
    Off,
    /// Any origin (the request's `Origin` is echoed, with credentials allowed).
    Any,
    /// These origins only (exact `scheme://host[:port]` strings).
    Origins(Vec<String>),
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent a close packet.
    ClientClose,
    /// The transport (socket or HTTP) went away.
    TransportClose,
    /// The client did not answer a ping in time.
    PingTimeout,
    /// The client broke the protocol (bad packet, duplicate poll, ping from the client...).
    ProtocolError(String),
    /// A WebSocket message was larger than `max_payload`.
    MessageTooBig,
    /// The session's outbox was closed: slow consumer, server shutdown, a server-side disconnect.
    Server(Disconnect),
    /// The layer above closed it.
    ServerClose,
}

impl CloseReason {
    /// The reason as Socket.IO names it to disconnect handlers.
    pub fn as_str(&self) -> &str {
        match self {
            CloseReason::ClientClose => "client namespace disconnect",
            CloseReason::TransportClose => "transport close",
            CloseReason::PingTimeout => "ping timeout",
            CloseReason::ProtocolError(_) => "parse error",
            CloseReason::MessageTooBig => "transport error",
            CloseReason::Server(d) if d == &Disconnect::SHUTDOWN => "server shutting down",
            CloseReason::Server(_) | CloseReason::ServerClose => "server namespace disconnect",
        }
    }
}

/// A received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A text message (`4<text>`).
    Text(String),
    /// A binary message.
    Binary(Bytes),
}

/// What the layer above Engine.IO implements.
pub trait EngineHandler: Send + Sync + 'static {
    /// A session opened.
    fn on_open(&self, session: &Arc<Session>);
    /// A message arrived. Called in order, from the transport's task: do not block.
    fn on_message(&self, session: &Arc<Session>, message: Incoming);
    /// The session closed; called once.
    fn on_close(&self, session: &Arc<Session>, reason: &CloseReason);
    /// Packets to send before the server closes the session with a code that
    /// tells clients not to reconnect (Socket.IO sends DISCONNECT per namespace
    /// so that its clients do not reconnect by themselves). Default: none.
    fn farewell(&self, _session: &Arc<Session>) -> Vec<Frame> {
        Vec::new()
    }
}

#[derive(Debug, Default)]
struct TransportState {
    websocket: bool,
    /// The client sent a close packet over polling: the next poll gets the
    /// queued noop, then the session ends.
    closing: bool,
    upgrading: bool,
    polling_get: bool,
    polling_post: bool,
}

/// One Engine.IO session.
pub struct Session {
    /// The session id.
    pub sid: String,
    outbox: Arc<Outbox>,
    state: Mutex<TransportState>,
    pong: Notify,
    /// When the unanswered ping expires; checked on every request as well, so
    /// a late request never finds a session that has timed out.
    pong_deadline: Mutex<Option<tokio::time::Instant>>,
    /// Cancelled when the session moves to WebSocket: a poll still pending then gets 400.
    upgraded: CancellationToken,
    closed: CancellationToken,
    close_once: AtomicBool,
    pub(crate) close_reason: Mutex<Option<CloseReason>>,
    /// The layer above's per-session state.
    pub ext: OnceLock<Arc<dyn std::any::Any + Send + Sync>>,
    /// The handshake request's headers.
    pub headers: HeaderMap,
    /// The place the session holds, freed when it closes.
    slot: Mutex<Option<Slot>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("sid", &self.sid)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The session's outgoing queue (shared with the hub connections on it).
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Queues a text message (`4<text>`).
    pub fn send_text(&self, text: &str) -> Result<(), PushError> {
        self.outbox.push(Frame::text(format!("4{text}")))
    }

    /// Queues a binary message.
    pub fn send_binary(&self, data: Bytes) -> Result<(), PushError> {
        self.outbox.push(Frame::Binary(data))
    }

    /// Whether the session is over.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Whether the session runs on WebSocket (from the start or after an upgrade).
    pub fn is_websocket(&self) -> bool {
        self.state().websocket
    }

    fn state(&self) -> std::sync::MutexGuard<'_, TransportState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Serves requests for sessions that another process owns: a node of a
/// cluster forwards a long-polling request to the node holding the session,
/// so a load balancer needs no sticky sessions.
pub trait SessionForwarder: Send + Sync + 'static {
    /// `sid` is not a session of this server. Returns the owner's response,
    /// or gives the request back when no other process owns the session.
    fn forward(
        &self,
        sid: &str,
        request: Request,
    ) -> roomcast_core::BoxFuture<'static, Result<Response, Request>>;
}

struct Forwarding {
    sid_prefix: String,
    forwarder: Arc<dyn SessionForwarder>,
}

/// An Engine.IO server: its sessions and the route that serves them.
pub struct EngineIo {
    me: Weak<EngineIo>,
    config: EngineConfig,
    sessions: RwLock<HashMap<String, Arc<Session>>>,
    admission: Arc<Admission>,
    handler: Arc<dyn EngineHandler>,
    tasks: TaskTracker,
    forwarding: std::sync::OnceLock<Forwarding>,
}

impl std::fmt::Debug for EngineIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineIo")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Engine.IO error codes and their HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EioError {
    TransportUnknown,
    SessionUnknown,
    BadHandshakeMethod,
    BadRequest,
    Forbidden,
    UnsupportedVersion,
}

impl EioError {
    fn response(self, cors: Option<HeaderMap>) -> Response {
        let (code, message) = match self {
            EioError::TransportUnknown => (0, "Transport unknown"),
            EioError::SessionUnknown => (1, "Session ID unknown"),
            EioError::BadHandshakeMethod => (2, "Bad handshake method"),
            EioError::BadRequest => (3, "Bad request"),
            EioError::Forbidden => (4, "Forbidden"),
            EioError::UnsupportedVersion => (5, "Unsupported protocol version"),
        };
        let status = if self == EioError::Forbidden {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::BAD_REQUEST
        };
        let body = serde_json::json!({"code": code, "message": message}).to_string();
        let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if let Some(h) = cors {
            resp.headers_mut().extend(h);
        }
        resp
    }
}

pub(crate) fn random_sid() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 15];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: fall back to hashing state (ids stay unique, not secret).
        let h = std::collections::hash_map::RandomState::new();
        for (i, b) in bytes.iter_mut().enumerate() {
            *b =
                (std::hash::BuildHasher::hash_one(&h, (i, std::time::Instant::now())) & 0xff) as u8;
        }
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[derive(Debug, Default)]
struct Query {
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
}

fn parse_query(q: Option<&str>) -> Query {
    let mut out = Query::default();
    for pair in q.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = v.to_owned();
        match k {
            "EIO" => out.eio = Some(v),
            "transport" => out.transport = Some(v),
            "sid" => out.sid = Some(v),
            _ => {}
        }
    }
    out
}

impl EngineIo {
    /// An Engine.IO server that hands sessions to `handler`, at most
    /// `config.max_sessions` at once.
    pub fn new(config: EngineConfig, handler: Arc<dyn EngineHandler>) -> Arc<EngineIo> {
        let admission = Admission::new(config.max_sessions);
        EngineIo::with_admission(config, handler, admission)
    }

    /// An Engine.IO server whose sessions each take a place of `admission`
    /// (shared with other transports, such as a hub's); a handshake that gets
    /// none is answered 503 (`server_full`, or `shutting_down` once the
    /// admission is closed). `config.max_sessions` is not used.
    pub fn with_admission(
        config: EngineConfig,
        handler: Arc<dyn EngineHandler>,
        admission: Arc<Admission>,
    ) -> Arc<EngineIo> {
        Arc::new_cyclic(|me| EngineIo {
            me: me.clone(),
            config,
            admission,
            sessions: RwLock::new(HashMap::new()),
            handler,
            tasks: TaskTracker::new(),
            forwarding: std::sync::OnceLock::new(),
        })
    }

    /// Starts every new session id with `sid_prefix` (which names this
    /// process to the others) and hands requests for unknown sessions to
    /// `forwarder`. Call once, before serving; later calls are ignored.
    pub fn set_forwarder(&self, sid_prefix: &str, forwarder: Arc<dyn SessionForwarder>) {
        let _ = self.forwarding.set(Forwarding {
            sid_prefix: sid_prefix.to_owned(),
            forwarder,
        });
    }

    fn self_ref(&self) -> Arc<EngineIo> {
        self.me
            .upgrade()
            .expect("an EngineIo is only used through its Arc")
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Open sessions.
    pub fn session_count(&self) -> usize {
        self.sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// A session by id.
    pub fn session(&self, sid: &str) -> Option<Arc<Session>> {
        self.sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(sid)
            .cloned()
    }

    /// The route serving Engine.IO at `path` (e.g. `/engine.io/`, `/socket.io/`),
    /// with and without the trailing slash.
    pub fn router<S: Clone + Send + Sync + 'static>(self: &Arc<Self>, path: &str) -> Router<S> {
        let trimmed = path.trim_end_matches('/');
        let route = any(serve).with_state(self.clone());
        Router::new()
            .route(&format!("{trimmed}/"), route.clone())
            .route(trimmed, route)
    }

    /// Waits up to `drain` for WebSocket tasks to finish (after the hub's
    /// shutdown closed every outbox); returns whether all did.
    pub async fn drain(&self, drain: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(drain, self.tasks.wait()).await.is_ok()
    }

    /// After the hub closed every outbox: ends polling sessions now (a pending
    /// poll gets a close packet; WebSocket sessions close themselves with the
    /// outbox's code).
    pub fn close_polling_sessions(&self) {
        let sessions: Vec<Arc<Session>> = self
            .sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for s in sessions {
            let polling = {
                let st = s.state();
                !st.websocket && !st.upgrading && !st.polling_get
            };
            if polling {
                self.close(&s, CloseReason::Server(Disconnect::SHUTDOWN));
            }
        }
    }

    /// Closes a session (idempotent).
    pub fn close(&self, session: &Arc<Session>, reason: CloseReason) {
        if session.close_once.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::debug!(sid = %session.sid, ?reason, "engine.io session closed");
        *session
            .close_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(reason.clone());
        self.sessions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&session.sid);
        drop(
            session
                .slot
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        session.closed.cancel();
        self.handler.on_close(session, &reason);
    }

    fn cors_headers(&self, req: &HeaderMap) -> Option<HeaderMap> {
        let origin = req.get(header::ORIGIN)?;
        let allowed = match &self.config.cors {
            Cors::Off => false,
            Cors::Any => true,
            Cors::Origins(list) => origin.to_str().is_ok_and(|o| list.iter().any(|a| a == o)),
        };
        if !allowed {
            return None;
        }
        let mut h = HeaderMap::new();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        Some(h)
    }

    fn open_session(
        self: &Arc<Self>,
        headers: HeaderMap,
        websocket: bool,
        slot: Slot,
    ) -> Arc<Session> {
        let prefix = self.forwarding.get().map_or("", |f| f.sid_prefix.as_str());
        let session = Arc::new(Session {
            sid: format!("{prefix}{}", random_sid()),
            outbox: Arc::new(Outbox::new(self.config.max_queue_bytes)),
            state: Mutex::new(TransportState {
                websocket,
                ..Default::default()
            }),
            pong: Notify::new(),
            pong_deadline: Mutex::new(None),
            upgraded: CancellationToken::new(),
            closed: CancellationToken::new(),
            close_once: AtomicBool::new(false),
            close_reason: Mutex::new(None),
            ext: OnceLock::new(),
            headers,
            slot: Mutex::new(Some(slot)),
        });
        self.sessions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(session.sid.clone(), session.clone());
        let open = serde_json::json!({
            "sid": session.sid,
            "upgrades": if websocket { vec![] } else { vec!["websocket"] },
            "pingInterval": self.config.ping_interval.as_millis() as u64,
            "pingTimeout": self.config.ping_timeout.as_millis() as u64,
            "maxPayload": self.config.max_payload,
        });
        let _ = session.outbox.push(Frame::text(format!("0{open}")));
        self.handler.on_open(&session);
        let (eio, s) = (self.clone(), session.clone());
        self.tasks.spawn(async move { eio.heartbeat(s).await });
        session
    }

    /// Pings every interval; closes the session when a pong does not come in time.
    async fn heartbeat(self: Arc<Self>, session: Arc<Session>) {
        let mut next_ping = tokio::time::Instant::now() + self.config.ping_interval;
        loop {
            tokio::select! {
                _ = session.closed.cancelled() => return,
                _ = tokio::time::sleep_until(next_ping) => {}
            }
            if session.outbox.is_closed() {
                // A transport that is not draining (polling client between polls)
                // will not notice; end it here.
                self.close(&session, CloseReason::Server(Disconnect::SHUTDOWN));
                return;
            }
            let waiting = session.pong.notified();
            tokio::pin!(waiting);
            waiting.as_mut().enable();
            let deadline = next_ping + self.config.ping_timeout;
            *session
                .pong_deadline
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(deadline);
            if session.outbox.push(Frame::text("2".to_owned())).is_err() {
                self.close(&session, CloseReason::Server(Disconnect::SLOW));
                return;
            }
            tokio::select! {
                _ = session.closed.cancelled() => return,
                _ = &mut waiting => {
                    *session.pong_deadline.lock().unwrap_or_else(|e| e.into_inner()) = None;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    self.close(&session, CloseReason::PingTimeout);
                    return;
                }
            }
            next_ping = tokio::time::Instant::now() + self.config.ping_interval;
        }
    }

    /// Closes the session if its pong is overdue; returns whether it is still open.
    fn check_pong(&self, session: &Arc<Session>) -> bool {
        let overdue = session
            .pong_deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|d| tokio::time::Instant::now() >= d);
        if overdue {
            self.close(session, CloseReason::PingTimeout);
        }
        !overdue && !session.is_closed()
    }

    /// Handles one decoded packet from the client. Returns false if the session was closed.
    fn receive(&self, session: &Arc<Session>, packet: Packet) -> bool {
        match packet {
            Packet::Pong(_) => {
                *session
                    .pong_deadline
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = None;
                session.pong.notify_one();
            }
            Packet::Message(text) => self.handler.on_message(session, Incoming::Text(text)),
            Packet::Binary(data) => self.handler.on_message(session, Incoming::Binary(data)),
            Packet::Close => {
                if session.is_websocket() {
                    self.close(session, CloseReason::ClientClose);
                    return false;
                }
                // A pending (or the next) poll is answered with a noop, then the
                // session ends; if no poll comes, it ends after ping_timeout.
                session.state().closing = true;
                let _ = session.outbox.push(Frame::text("6".to_owned()));
                let (eio, s) = (self.self_ref(), session.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = s.closed.cancelled() => {}
                        _ = tokio::time::sleep(eio.config.ping_timeout) => eio.close(&s, CloseReason::ClientClose),
                    }
                });
                return false;
            }
            Packet::Ping(_) => {
                self.close(
                    session,
                    CloseReason::ProtocolError("ping from the client".into()),
                );
                return false;
            }
            Packet::Open(_) | Packet::Upgrade | Packet::Noop => {
                self.close(
                    session,
                    CloseReason::ProtocolError("unexpected packet".into()),
                );
                return false;
            }
        }
        !session.is_closed()
    }

    async fn poll(self: Arc<Self>, session: Arc<Session>, cors: Option<HeaderMap>) -> Response {
        {
            let mut st = session.state();
            if st.websocket {
                drop(st);
                return EioError::BadRequest.response(cors);
            }
            if st.polling_get {
                drop(st);
                // A second concurrent poll: the first gets a close packet.
                self.close(
                    &session,
                    CloseReason::ProtocolError("duplicate poll".into()),
                );
                return EioError::BadRequest.response(cors);
            }
            st.polling_get = true;
        }
        let mut batch = Vec::new();
        let body = tokio::select! {
            biased;
            _ = session.upgraded.cancelled() => {
                session.state().polling_get = false;
                return EioError::BadRequest.response(cors);
            }
            reason = session.outbox.next_batch(&mut batch) => {
                if batch.is_empty() {
                    let reason = reason.unwrap_or(Disconnect::SHUTDOWN);
                    let mut last = if reason.reconnect() { Vec::new() } else { self.handler.farewell(&session) };
                    last.push(Frame::text("1".to_owned()));
                    self.close(&session, CloseReason::Server(reason));
                    packet::encode_payload(last.iter().map(|f| match f {
                        Frame::Text(b) => Encoded::Text(std::str::from_utf8(b).unwrap_or("6")),
                        Frame::Binary(b) => Encoded::Binary(b),
                    }))
                } else {
                    packet::encode_payload(batch.iter().map(|f| match f {
                        Frame::Text(b) => Encoded::Text(std::str::from_utf8(b).unwrap_or("6")),
                        Frame::Binary(b) => Encoded::Binary(b),
                    }))
                }
            }
            _ = session.closed.cancelled() => "1".to_owned(),
        };
        let closing = {
            let mut st = session.state();
            st.polling_get = false;
            st.closing
        };
        if closing {
            self.close(&session, CloseReason::ClientClose);
        }
        let mut resp = (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=UTF-8")],
            body,
        )
            .into_response();
        if let Some(h) = cors {
            resp.headers_mut().extend(h);
        }
        resp
    }

    fn post(&self, session: &Arc<Session>, body: &Bytes, cors: Option<HeaderMap>) -> Response {
        {
            let mut st = session.state();
            if st.websocket || st.polling_post {
                drop(st);
                self.close(
                    session,
                    CloseReason::ProtocolError("concurrent or late post".into()),
                );
                return EioError::BadRequest.response(cors);
            }
            st.polling_post = true;
        }
        let result = match std::str::from_utf8(body).ok().map(packet::decode_payload) {
            Some(Ok(packets)) => {
                for p in packets {
                    if !self.receive(session, p) {
                        break;
                    }
                }
                Ok(())
            }
            _ => Err(()),
        };
        session.state().polling_post = false;
        if result.is_err() {
            self.close(session, CloseReason::ProtocolError("bad payload".into()));
            return EioError::BadRequest.response(cors);
        }
        let mut resp =
            (StatusCode::OK, [(header::CONTENT_TYPE, "text/html")], "ok").into_response();
        if let Some(h) = cors {
            resp.headers_mut().extend(h);
        }
        resp
    }

    /// Serves a WebSocket: a new session, or the upgrade of a polling one.
    async fn websocket(
        self: Arc<Self>,
        mut ws: WebSocket,
        upgrade_of: Result<Arc<Session>, Slot>,
        headers: HeaderMap,
    ) {
        let session = match upgrade_of {
            Err(slot) => self.open_session(headers, true, slot),
            Ok(session) => match self.upgrade(&mut ws, &session).await {
                Ok(()) => session,
                Err(()) => {
                    session.state().upgrading = false;
                    let _ = ws.close().await;
                    return;
                }
            },
        };
        let mut reason = self.ws_loop(&mut ws, &session).await;
        let closed_elsewhere = reason.is_none();
        if closed_elsewhere {
            // Closed while handling a packet (client close, ping from the client,
            // an invalid Socket.IO packet...) or by the layer above: still say why.
            reason = session
                .close_reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
        }
        if let Some(CloseReason::Server(d)) = &reason {
            if !d.reconnect() {
                for f in self.handler.farewell(&session) {
                    if let Frame::Text(b) = f {
                        let _ = ws
                            .feed(Message::Text(Utf8Bytes::try_from(b).unwrap_or_default()))
                            .await;
                    }
                }
            }
        }
        if let Some(reason) = reason {
            let code = match &reason {
                CloseReason::Server(d) => d.code,
                CloseReason::PingTimeout => Disconnect::HEARTBEAT_TIMEOUT.code,
                CloseReason::ProtocolError(_) => 1002,
                CloseReason::MessageTooBig => 1009,
                _ => 1000,
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let _ = ws
                    .send(Message::Close(Some(CloseFrame {
                        code,
                        reason: Utf8Bytes::from(reason.as_str()),
                    })))
                    .await;
            })
            .await;
            self.close(&session, reason);
        }
    }

    /// The probe exchange; on success the session is on WebSocket.
    async fn upgrade(&self, ws: &mut WebSocket, session: &Arc<Session>) -> Result<(), ()> {
        let exchange = async {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.as_str() == "2probe" => {}
                _ => return Err(()),
            }
            ws.send(Message::text("3probe")).await.map_err(|_| ())?;
            // Free a pending poll with a noop so the client can send `5`; check
            // again every 100 ms, as the client's last poll may still be on its way.
            let mut noop_sent = false;
            let mut check = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    m = ws.next() => return match m {
                        Some(Ok(Message::Text(t))) if t.as_str() == "5" => Ok(()),
                        _ => Err(()),
                    },
                    _ = check.tick() => {
                        let pending = session.state().polling_get;
                        if pending && !noop_sent {
                            let _ = session.outbox.push(Frame::text("6".to_owned()));
                        }
                        noop_sent = pending;
                    }
                }
            }
        };
        tokio::select! {
            r = tokio::time::timeout(self.config.upgrade_timeout, exchange) => r.map_err(|_| ())??,
            _ = session.closed.cancelled() => return Err(()),
        }
        let mut st = session.state();
        st.websocket = true;
        st.upgrading = false;
        drop(st);
        session.upgraded.cancel();
        Ok(())
    }

    /// Returns the reason to close with, or `None` if the session was closed elsewhere.
    async fn ws_loop(&self, ws: &mut WebSocket, session: &Arc<Session>) -> Option<CloseReason> {
        let mut batch = Vec::new();
        let write_limit = self.config.ping_interval + self.config.ping_timeout;
        loop {
            tokio::select! {
                biased;
                _ = session.closed.cancelled() => return None,
                closing = session.outbox.next_batch(&mut batch) => {
                    if !batch.is_empty() {
                        let write = async {
                            for f in batch.drain(..) {
                                let m = match f {
                                    Frame::Text(b) => Message::Text(Utf8Bytes::try_from(b).unwrap_or_default()),
                                    Frame::Binary(b) => Message::Binary(b),
                                };
                                ws.feed(m).await?;
                            }
                            ws.flush().await
                        };
                        match tokio::time::timeout(write_limit, write).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => return Some(CloseReason::TransportClose),
                            Err(_) => return Some(CloseReason::Server(Disconnect::SLOW)),
                        }
                    }
                    if let Some(d) = closing {
                        return Some(CloseReason::Server(d));
                    }
                }
                msg = ws.next() => {
                    let packet = match msg {
                        Some(Err(e)) => {
                            let too_big = e
                                .into_inner()
                                .downcast::<tungstenite::Error>()
                                .is_ok_and(|e| matches!(*e, tungstenite::Error::Capacity(_)));
                            return Some(if too_big { CloseReason::MessageTooBig } else { CloseReason::TransportClose });
                        }
                        None | Some(Ok(Message::Close(_))) => return Some(CloseReason::TransportClose),
                        Some(Ok(Message::Text(t))) => match Packet::decode(t.as_str()) {
                            Ok(p) => p,
                            Err(e) => return Some(CloseReason::ProtocolError(e.to_string())),
                        },
                        Some(Ok(Message::Binary(b))) => Packet::Binary(b),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    };
                    if !self.receive(session, packet) {
                        return None;
                    }
                }
            }
        }
    }
}

/// The single route: handshake, polling GET/POST, WebSocket, CORS preflight.
async fn serve(State(eio): State<Arc<EngineIo>>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    let cors = eio.cors_headers(&parts.headers);
    if parts.method == Method::OPTIONS {
        let mut resp = StatusCode::NO_CONTENT.into_response();
        if let Some(mut h) = cors {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, OPTIONS"),
            );
            if let Some(req_headers) = parts.headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
                h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, req_headers.clone());
            }
            resp.headers_mut().extend(h);
        }
        return resp;
    }
    if matches!(eio.config.cors, Cors::Origins(_))
        && parts.headers.contains_key(header::ORIGIN)
        && cors.is_none()
    {
        return EioError::Forbidden.response(None);
    }
    let q = parse_query(parts.uri.query());
    if q.eio.as_deref() != Some("4") {
        return EioError::UnsupportedVersion.response(cors);
    }
    let websocket = match q.transport.as_deref() {
        Some("polling") => false,
        Some("websocket") => true,
        _ => return EioError::TransportUnknown.response(cors),
    };
    let session = match &q.sid {
        None => None,
        Some(sid) => match eio.session(sid) {
            Some(s) if eio.check_pong(&s) => Some(s),
            Some(_) => return EioError::SessionUnknown.response(cors),
            None => {
                // Long-polling for a session another node owns. (A WebSocket
                // upgrade of such a session is refused: the client stays on
                // long-polling, which Engine.IO clients handle.)
                let Some(f) = eio.forwarding.get().filter(|_| !websocket) else {
                    return EioError::SessionUnknown.response(cors);
                };
                return match f
                    .forwarder
                    .forward(sid, Request::from_parts(parts, body))
                    .await
                {
                    Ok(resp) => resp,
                    Err(_) => EioError::SessionUnknown.response(cors),
                };
            }
        },
    };
    // A new session takes a place now: the answer says at once if there is none.
    let session = match session {
        Some(s) => Ok(s),
        None => match eio.admission.admit() {
            Ok(slot) => Err(slot),
            Err(e) => {
                let (code, message) = match e {
                    AdmitError::Full { .. } => {
                        ("server_full", "server full: try another node or later")
                    }
                    AdmitError::ShuttingDown => ("shutting_down", "server shutting down"),
                };
                let mut resp = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(serde_json::json!({"code": code, "message": message})),
                )
                    .into_response();
                if let Some(h) = cors {
                    resp.headers_mut().extend(h);
                }
                return resp;
            }
        },
    };
    if websocket {
        if parts.method != Method::GET {
            return EioError::BadHandshakeMethod.response(cors);
        }
        let mut duplicate = false;
        if let Ok(s) = &session {
            let mut st = s.state();
            if st.websocket || st.upgrading {
                duplicate = true;
            } else {
                st.upgrading = true;
            }
        }
        let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(u) => u,
            Err(e) => {
                if let (Ok(s), false) = (&session, duplicate) {
                    s.state().upgrading = false;
                }
                return e.into_response();
            }
        };
        if duplicate {
            // A second WebSocket for a session that has one: open it, then close it.
            return upgrade.on_upgrade(|mut ws| async move {
                let _ = ws.send(Message::Close(None)).await;
            });
        }
        let headers = parts.headers.clone();
        let tasks = eio.tasks.clone();
        let max = eio.config.max_payload;
        return upgrade
            .read_buffer_size(1024)
            .write_buffer_size(64 << 10)
            .max_message_size(max)
            .max_frame_size(max)
            .on_upgrade(move |ws| tasks.track_future(eio.websocket(ws, session, headers)));
    }
    match (parts.method.clone(), session) {
        (Method::GET, Err(slot)) => {
            let session = eio.open_session(parts.headers.clone(), false, slot);
            eio.poll(session, cors).await
        }
        (_, Err(_)) => EioError::BadHandshakeMethod.response(cors),
        (Method::GET, Ok(s)) => eio.poll(s, cors).await,
        (Method::POST, Ok(s)) => {
            let limit = eio.config.max_payload;
            match axum::body::to_bytes(body, limit).await {
                Ok(bytes) => eio.post(&s, &bytes, cors),
                Err(_) => {
                    eio.close(&s, CloseReason::ProtocolError("payload too large".into()));
                    let mut resp = StatusCode::PAYLOAD_TOO_LARGE.into_response();
                    if let Some(h) = cors {
                        resp.headers_mut().extend(h);
                    }
                    resp
                }
            }
        }
        _ => EioError::BadRequest.response(cors),
    }
}
