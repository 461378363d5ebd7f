//! The backend, over HTTP: the connect proxy, the subscribe proxy, the event
//! proxy (RPC) and webhooks. Every call is a JSON `POST` carrying
//! `X-Roomcast-Secret` and the connection's forwarded handshake headers, so a
//! backend sees its own cookies and sessions. `docs/security.md` is the reference.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, Semaphore};

use roomcast_core::presence::{ReapListener, Reaped};
use roomcast_core::ConnId;

use crate::auth::{AuthFailure, Handshake, Identity};
use crate::config::ProxyConfig;

/// The header carrying `proxy.secret`.
pub const SECRET_HEADER: &str = "x-roomcast-secret";

/// Headers never forwarded from a client, whatever `proxy.forward_headers`
/// says: they belong to the request roomcast makes, or would let a client
/// speak as roomcast.
const NEVER_FORWARDED: [&str; 9] = [
    SECRET_HEADER,
    crate::http::PEER_HEADER,
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
];

/// The largest backend answer read; a larger one is a failed call.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

pub use crate::metrics::{BackendMetrics, CallKind, RESULTS};

/// Why a backend call did not produce an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The backend did not answer within `proxy.timeout_ms`.
    #[error("backend timeout")]
    Timeout,
    /// The backend could not be reached, or its answer was not usable.
    #[error("backend error: {0}")]
    Failed(String),
    /// The backend refused (HTTP 4xx, or an `error` object).
    #[error("{message}")]
    Refused {
        /// The backend's code, or `forbidden`.
        code: String,
        /// The backend's message.
        message: String,
    },
}

impl CallError {
    /// The message a client sees: the backend's own for a refusal; no more
    /// than "backend error" otherwise, since the details (URLs, status lines,
    /// the backend's 5xx text) are for roomcast's log, not for clients.
    pub fn client_message(&self) -> String {
        match self {
            CallError::Timeout => "backend timeout".to_owned(),
            CallError::Failed(_) => "backend error".to_owned(),
            CallError::Refused { message, .. } => message.clone(),
        }
    }

    /// The error code a client sees.
    pub fn code(&self) -> String {
        match self {
            CallError::Timeout => "backend_timeout".to_owned(),
            CallError::Failed(_) => "backend_error".to_owned(),
            CallError::Refused { code, .. } => code.clone(),
        }
    }
}

/// The connection a call is about.
#[derive(Debug, Clone)]
pub struct Caller<'a> {
    /// Its hub id.
    pub conn: ConnId,
    /// Its user.
    pub user: Option<&'a str>,
    /// `websocket` or `socketio`.
    pub transport: &'static str,
    /// The Socket.IO namespace.
    pub namespace: Option<&'a str>,
    /// Its handshake headers that are forwarded.
    pub forwarded: &'a HeaderMap,
}

/// Something the backend asks roomcast to do after an RPC.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Action {
    /// Publish to a room.
    Publish {
        /// The room.
        room: String,
        /// The event.
        event: String,
        /// The data.
        #[serde(default)]
        data: Value,
        /// Not to the calling connection.
        #[serde(default)]
        exclude_self: bool,
    },
    /// Send to a user's connections.
    Send {
        /// The user.
        user: String,
        /// The event.
        event: String,
        /// The data.
        #[serde(default)]
        data: Value,
    },
    /// Send to every connection.
    Broadcast {
        /// The event.
        event: String,
        /// The data.
        #[serde(default)]
        data: Value,
    },
    /// The calling connection joins a room (no permission check).
    Join {
        /// The room.
        room: String,
    },
    /// The calling connection leaves a room.
    Leave {
        /// The room.
        room: String,
    },
    /// Bind a user to the calling connection, which has none (a login event).
    Bind {
        /// The user id.
        user: String,
    },
    /// Merge into the calling connection's session data.
    Session {
        /// Keys to set (null removes).
        data: Map<String, Value>,
    },
    /// Disconnect the calling connection.
    Disconnect {
        /// A close code from 4000 to 4999. Default: 4500.
        code: Option<u16>,
        /// The reason. Default: "disconnected by server".
        reason: Option<String>,
    },
}

/// The backend's answer to an event.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcAnswer {
    /// The ack's value.
    pub result: Value,
    /// What to do, in order.
    pub actions: Vec<Action>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectBody {
    #[serde(default)]
    user: Option<Value>,
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(default)]
    session: Map<String, Value>,
    #[serde(default)]
    info: Option<Value>,
    #[serde(default)]
    expires_at: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RpcBody {
    #[serde(default)]
    result: Value,
    #[serde(default)]
    actions: Vec<Action>,
}

/// A webhook event waiting to be posted.
#[derive(Debug, Clone)]
pub struct WebhookEvent {
    body: Value,
}

/// The HTTP client to the backend. Cheap to share.
pub struct Backend {
    http: reqwest::Client,
    config: ProxyConfig,
    forward: Vec<HeaderName>,
    slots: Semaphore,
    node: String,
    seq: AtomicU64,
    webhooks: Mutex<Option<WebhookQueue>>,
    /// Call counters.
    pub metrics: BackendMetrics,
}

enum WebhookQueue {
    Idle(mpsc::Receiver<WebhookEvent>, mpsc::Sender<WebhookEvent>),
    Running(mpsc::Sender<WebhookEvent>),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Backend {
    /// A client for `config`; `node` names this node in webhooks.
    pub fn new(config: &ProxyConfig, node: String) -> Arc<Backend> {
        let http = reqwest::Client::builder()
            // A redirect would carry the secret (and the request) to wherever
            // the answer points: the configured URLs are the only ones called.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(config.timeout_ms))
            .connect_timeout(Duration::from_millis(config.timeout_ms))
            .build()
            .unwrap_or_default();
        let forward = config
            .forward_headers
            .iter()
            .filter_map(|h| HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok())
            .filter(|h| !NEVER_FORWARDED.contains(&h.as_str()))
            .collect();
        let webhooks = (!config.webhook_url.is_empty()).then(|| {
            let (tx, rx) = mpsc::channel(config.webhook_queue.max(1));
            WebhookQueue::Idle(rx, tx)
        });
        Arc::new(Backend {
            http,
            config: config.clone(),
            forward,
            slots: Semaphore::new(config.max_in_flight),
            node,
            seq: AtomicU64::new(0),
            webhooks: Mutex::new(webhooks),
            metrics: BackendMetrics::default(),
        })
    }

    /// The handshake headers that `proxy.forward_headers` names.
    /// Several `Cookie` headers (HTTP/2 splits them) become one, as HTTP/1.1
    /// servers expect.
    pub fn forwarded(&self, headers: &HeaderMap) -> HeaderMap {
        let mut out = HeaderMap::new();
        for name in &self.forward {
            let values = headers.get_all(name);
            if name == axum::http::header::COOKIE && values.iter().count() > 1 {
                let joined: Vec<&[u8]> = values.iter().map(HeaderValue::as_bytes).collect();
                if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
                    out.insert(name.clone(), v);
                }
                continue;
            }
            for v in values {
                // A copy: the parsed value shares the request's whole read buffer.
                if let Ok(v) = HeaderValue::from_bytes(v.as_bytes()) {
                    out.append(name.clone(), v);
                }
            }
        }
        out
    }

    /// Whether client events go anywhere.
    pub fn handles_events(&self) -> bool {
        !self.config.rpc_url.is_empty() || !self.config.rpc_routes.is_empty()
    }

    /// Whether joins can be asked about.
    pub fn handles_subscribe(&self) -> bool {
        !self.config.subscribe_url.is_empty()
    }

    fn rpc_url(&self, event: &str) -> Option<&str> {
        self.config
            .rpc_routes
            .iter()
            .find(|r| roomcast_core::room::RoomRule::default_for(&r.event).matches(event))
            .map(|r| r.url.as_str())
            .or(Some(self.config.rpc_url.as_str()).filter(|u| !u.is_empty()))
    }

    /// One POST, retried only where that is safe: when the request never reached
    /// the backend (connection refused), or for webhooks (idempotent by `id`)
    /// also on timeouts and 5xx.
    async fn call(
        &self,
        kind: CallKind,
        url: &str,
        forwarded: &HeaderMap,
        body: &Value,
    ) -> Result<Value, CallError> {
        let started = std::time::Instant::now();
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let r = match tokio::time::timeout(timeout, self.slots.acquire()).await {
            Err(_) => Err(CallError::Timeout),
            Ok(Err(_)) => Err(CallError::Failed("closed".to_owned())),
            Ok(Ok(_permit)) => self.attempts(kind, url, forwarded, body).await,
        };
        let result = match &r {
            Ok(_) => 0,
            Err(CallError::Refused { .. }) => 1,
            Err(CallError::Failed(_)) => 2,
            Err(CallError::Timeout) => 3,
        };
        self.metrics.count(kind, result, started.elapsed());
        if let Err(e) = &r {
            if !matches!(e, CallError::Refused { .. }) {
                tracing::warn!(kind = kind.as_str(), %url, error = %e, "backend call failed");
            }
        }
        r
    }

    async fn attempts(
        &self,
        kind: CallKind,
        url: &str,
        forwarded: &HeaderMap,
        body: &Value,
    ) -> Result<Value, CallError> {
        let mut backoff = Duration::from_millis(50);
        let mut left = self.config.retries;
        loop {
            let r = self.once(url, forwarded, body).await;
            let retry = match &r {
                Err(Attempt::NotSent(_)) => true,
                Err(Attempt::Timeout | Attempt::Status5xx(..)) => kind == CallKind::Webhook,
                _ => false,
            };
            if retry && left > 0 {
                left -= 1;
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                continue;
            }
            return match r {
                Ok(v) => Ok(v),
                Err(Attempt::Timeout) => Err(CallError::Timeout),
                Err(Attempt::NotSent(e)) => Err(CallError::Failed(e)),
                Err(Attempt::Status5xx(s, detail)) => {
                    Err(CallError::Failed(format!("HTTP {s}{detail}")))
                }
                Err(Attempt::Refused(code, message)) => Err(CallError::Refused { code, message }),
                Err(Attempt::Bad(e)) => Err(CallError::Failed(e)),
            };
        }
    }

    async fn once(&self, url: &str, forwarded: &HeaderMap, body: &Value) -> Result<Value, Attempt> {
        let mut req = self.http.post(url).json(body);
        for (k, v) in forwarded {
            req = req.header(k, v);
        }
        if !self.config.secret.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&self.config.secret) {
                req = req.header(SECRET_HEADER, v);
            }
        }
        let mut resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Err(Attempt::Timeout),
            Err(e) if e.is_connect() => return Err(Attempt::NotSent(e.to_string())),
            Err(e) => return Err(Attempt::Bad(e.to_string())),
        };
        let status = resp.status();
        let too_big = || {
            Attempt::Bad(format!(
                "the answer is larger than {MAX_ANSWER_BYTES} bytes"
            ))
        };
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
        {
            return Err(too_big());
        }
        let mut bytes = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                        return Err(too_big());
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => return Err(Attempt::Timeout),
                Err(e) => return Err(Attempt::Bad(e.to_string())),
            }
        }
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        let error = parsed
            .as_ref()
            .and_then(|v| serde_json::from_value::<ErrorBody>(v.clone()).ok());
        if status.is_server_error() {
            let detail = error
                .and_then(|e| e.error.message)
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            return Err(Attempt::Status5xx(status.as_u16(), detail));
        }
        if let Some(e) = error {
            let code = e.error.code.unwrap_or_else(|| "forbidden".to_owned());
            let message = e
                .error
                .message
                .unwrap_or_else(|| "refused by the backend".to_owned());
            return Err(Attempt::Refused(code, message));
        }
        if status.is_client_error() {
            let code = if status == StatusCode::UNAUTHORIZED {
                "unauthorized"
            } else {
                "forbidden"
            };
            return Err(Attempt::Refused(
                code.to_owned(),
                format!("refused by the backend (HTTP {})", status.as_u16()),
            ));
        }
        if !status.is_success() {
            return Err(Attempt::Bad(format!("unexpected HTTP {}", status.as_u16())));
        }
        match parsed {
            Some(v @ Value::Object(_)) => Ok(v),
            _ if bytes.is_empty() => Ok(Value::Object(Map::new())),
            _ => Err(Attempt::Bad("the answer is not a JSON object".to_owned())),
        }
    }

    /// Asks `proxy.connect_url` who the handshake's client is.
    pub async fn connect(
        &self,
        handshake: &Handshake,
        token: Option<String>,
        data: Option<Value>,
    ) -> Result<Identity, AuthFailure> {
        let body = json!({
            "conn": handshake.conn.to_string(),
            "transport": handshake.transport,
            "namespace": handshake.namespace,
            "remote_addr": handshake.remote.map(|a| a.to_string()),
            "token": token,
            "data": data,
        });
        let forwarded = self.forwarded(&handshake.headers);
        let v = self
            .call(
                CallKind::Connect,
                &self.config.connect_url,
                &forwarded,
                &body,
            )
            .await
            .map_err(|e| match e {
                CallError::Refused { message, .. } => AuthFailure::Refused(message),
                e => AuthFailure::Unavailable(e.to_string()),
            })?;
        let b: ConnectBody = serde_json::from_value(v).map_err(|e| {
            tracing::warn!(error = %e, "connect proxy answer not understood");
            AuthFailure::Unavailable(format!("connect proxy answer not understood: {e}"))
        })?;
        let user = match b.user {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(_) => {
                return Err(AuthFailure::Unavailable(
                    "connect proxy answer: `user` must be a string, a number or null".to_owned(),
                ))
            }
        };
        Ok(Identity {
            user,
            rooms: b.rooms,
            session: b.session,
            info: b.info,
            expires_at: b.expires_at,
        })
    }

    /// Asks `proxy.subscribe_url` whether the caller may join `room`.
    pub async fn subscribe(
        &self,
        caller: &Caller<'_>,
        session: &Map<String, Value>,
        room: &str,
    ) -> Result<(), CallError> {
        let body = json!({
            "room": room,
            "conn": caller.conn.to_string(),
            "user": caller.user,
            "session": session,
            "transport": caller.transport,
            "namespace": caller.namespace,
        });
        self.call(
            CallKind::Subscribe,
            &self.config.subscribe_url,
            caller.forwarded,
            &body,
        )
        .await
        .map(|_| ())
    }

    /// Hands a client event to the backend; `None` when no route takes it.
    pub async fn rpc(
        &self,
        caller: &Caller<'_>,
        session: &Map<String, Value>,
        rooms: &[String],
        room: Option<&str>,
        event: &str,
        data: Value,
    ) -> Option<Result<RpcAnswer, CallError>> {
        let url = self.rpc_url(event)?;
        let mut body = json!({
            "event": event,
            "data": data,
            "conn": caller.conn.to_string(),
            "user": caller.user,
            "session": session,
            "rooms": rooms,
            "transport": caller.transport,
            "namespace": caller.namespace,
        });
        if let Some(room) = room {
            // A frame of a URL-per-room endpoint in rpc mode: the room of its path.
            body["room"] = room.into();
        }
        Some(
            self.call(CallKind::Rpc, url, caller.forwarded, &body)
                .await
                .and_then(|v| {
                    serde_json::from_value::<RpcBody>(v)
                        .map(|b| RpcAnswer {
                            result: b.result,
                            actions: b.actions,
                        })
                        .map_err(|e| {
                            tracing::warn!(%event, error = %e, "RPC answer not understood");
                            CallError::Failed(format!("RPC answer not understood: {e}"))
                        })
                }),
        )
    }

    /// Queues a webhook event (`connect`, `disconnect`, `join`, `leave`) when
    /// webhooks are on and the event is wanted. Never waits: a full queue drops it.
    pub fn webhook(
        self: &Arc<Self>,
        kind: &'static str,
        conn: ConnId,
        user: Option<&str>,
        room: Option<&str>,
        reason: Option<&str>,
    ) {
        if !self.wants_webhook(kind) {
            return;
        }
        let mut body = json!({
            "type": kind,
            "node": self.node,
            "conn": conn.to_string(),
            "user": user,
        });
        if let Some(r) = room {
            body["room"] = r.into();
        }
        if let Some(r) = reason {
            body["reason"] = r.into();
        }
        self.queue_webhook(kind, body);
    }

    /// Whether webhooks are on and `kind` is one of `proxy.webhook_events`.
    fn wants_webhook(&self, kind: &str) -> bool {
        !self.config.webhook_url.is_empty() && self.config.webhook_events.iter().any(|e| e == kind)
    }

    /// Queues `body` (an event object without `id` and `time_ms`, which this adds).
    fn queue_webhook(self: &Arc<Self>, kind: &'static str, mut body: serde_json::Value) {
        body["id"] = format!("{}-{}", self.node, self.seq.fetch_add(1, Ordering::Relaxed)).into();
        body["time_ms"] = now_ms().into();
        let tx = {
            let mut q = self.webhooks.lock().unwrap_or_else(|e| e.into_inner());
            match q.take() {
                None => return,
                Some(WebhookQueue::Running(tx)) => {
                    *q = Some(WebhookQueue::Running(tx.clone()));
                    tx
                }
                Some(WebhookQueue::Idle(rx, tx)) => {
                    // The first event starts the sender, inside the runtime.
                    tokio::spawn(post_webhooks(Arc::downgrade(self), rx));
                    *q = Some(WebhookQueue::Running(tx.clone()));
                    tx
                }
            }
        };
        if tx.try_send(WebhookEvent { body }).is_err() {
            self.metrics
                .webhooks_dropped
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(kind, "webhook queue full: event dropped");
        }
    }
}

/// Posts a `disconnect` webhook for each connection of a dead node that this
/// node removed from cluster presence: `node` is the dead node, `reported_by`
/// this one, `reason` "node died".
pub(crate) struct ReapedWebhooks(pub(crate) Arc<Backend>);

impl ReapListener for ReapedWebhooks {
    fn reaped(&self, conns: Vec<Reaped>) {
        let b = &self.0;
        if !b.wants_webhook("disconnect") {
            return;
        }
        for r in conns {
            b.queue_webhook(
                "disconnect",
                json!({
                    "type": "disconnect",
                    "node": r.node,
                    "reported_by": b.node,
                    "conn": r.conn.to_string(),
                    "user": r.user.as_deref(),
                    "reason": "node died",
                }),
            );
        }
    }
}

enum Attempt {
    Timeout,
    NotSent(String),
    Status5xx(u16, String),
    Refused(String, String),
    Bad(String),
}

/// Posts webhook events one at a time, in order.
async fn post_webhooks(backend: std::sync::Weak<Backend>, mut rx: mpsc::Receiver<WebhookEvent>) {
    while let Some(event) = rx.recv().await {
        let Some(b) = backend.upgrade() else { return };
        let url = b.config.webhook_url.clone();
        if b.call(CallKind::Webhook, &url, &HeaderMap::new(), &event.body)
            .await
            .is_err()
        {
            b.metrics.webhooks_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl crate::auth::ConnectProxy for Backend {
    fn connect<'a>(
        &'a self,
        handshake: &'a Handshake,
        token: Option<String>,
        data: Option<Value>,
    ) -> roomcast_core::BoxFuture<'a, Result<Identity, AuthFailure>> {
        Box::pin(Backend::connect(self, handshake, token, data))
    }
}
