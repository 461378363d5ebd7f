//! Server configuration: a plain struct whose `Default` is the documented default.
//!
//! The `roomcast` binary layers a TOML file, `ROOMCAST_*` environment variables
//! and command-line flags onto it; an embedding application fills it in code.
//! Every field is listed, with its default and unit, in `docs/configuration.md`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use roomcast_core::room::{RoomRule, RoomRules};

mod channels;
mod endpoint;

pub use channels::{ChannelsSettings, LayerSetting, SerializerSetting};
pub use endpoint::{EndpointConfig, EndpointMode};
use roomcast_core::HubConfig;

/// The whole server configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address and port to listen on. Default: `127.0.0.1:8700`.
    pub listen: SocketAddr,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing filter). Default: `info`.
    pub log: String,
    /// The HTTP server API.
    pub api: ApiConfig,
    /// Client authentication.
    pub auth: AuthConfig,
    /// What clients may do beyond rooms.
    pub client: ClientConfig,
    /// The backend: connect, subscribe and event proxies, webhooks.
    pub proxy: ProxyConfig,
    /// Size and count limits.
    pub limits: LimitsConfig,
    /// Server-driven WebSocket pings.
    pub heartbeat: HeartbeatConfig,
    /// WebSocket buffers.
    pub websocket: WebSocketConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// Socket.IO clients.
    pub socketio: SocketIoSettings,
    /// How nodes of a cluster reach each other, and Socket.IO emitters on Redis.
    pub broker: BrokerConfig,
    /// Room history, for clients that reconnect.
    pub history: HistoryConfig,
    /// Per-room rules, first match wins; rooms no rule matches get the defaults.
    pub rooms: Vec<RoomRule>,
    /// URL-per-room WebSocket endpoints (`[[endpoints]]`), for pages written
    /// for Django Channels; see `docs/channels.md`.
    pub endpoints: Vec<EndpointConfig>,
    /// The bridge to Django Channels' Redis layer; see `docs/channels.md`.
    pub channels: ChannelsSettings,
}

/// `[history]`: what rooms keep for clients that reconnect (see `docs/recovery.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Publications every room keeps, unless its rule's `history_size` says
    /// otherwise; 0 keeps none. Default: 0.
    pub size: usize,
    /// Seconds a publication is kept, unless a rule's `history_ttl` says otherwise. Default: 300.
    pub ttl: u64,
    /// Seconds a room's stream position (epoch and offset) outlives its last
    /// publication. Default: 86400.
    pub meta_ttl: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            size: 0,
            ttl: 300,
            meta_ttl: 86_400,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8700)),
            log: "info".to_owned(),
            api: ApiConfig::default(),
            auth: AuthConfig::default(),
            client: ClientConfig::default(),
            proxy: ProxyConfig::default(),
            limits: LimitsConfig::default(),
            heartbeat: HeartbeatConfig::default(),
            websocket: WebSocketConfig::default(),
            shutdown: ShutdownConfig::default(),
            socketio: SocketIoSettings::default(),
            broker: BrokerConfig::default(),
            history: HistoryConfig::default(),
            rooms: Vec::new(),
            endpoints: Vec::new(),
            channels: ChannelsSettings::default(),
        }
    }
}

/// `[api]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// API key required as `Authorization: Bearer <key>` on `/api/*`; empty means no key. Default: empty.
    pub key: String,
    /// Largest request body, in bytes. Default: 1048576 (1 MiB).
    pub max_body_bytes: usize,
    /// More keys, each with a scope: `[{key = "...", scope = "publish"}]`;
    /// `publish` keys may only publish, broadcast and send. Default: none.
    pub keys: Vec<ApiKey>,
    /// How long an `idempotency_key` of `/api/publish`, `/api/send` and
    /// `/api/broadcast` is remembered, in milliseconds. Default: 300000 (5 min).
    pub idempotency_window_ms: u64,
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiScope {
    /// `/api/publish`, `/api/broadcast` and `/api/send` only.
    Publish,
    /// Every route.
    Admin,
}

/// One `api.keys` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// The key, sent as `Authorization: Bearer <key>`.
    pub key: String,
    /// `publish` or `admin`.
    pub scope: ApiScope,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            key: String::new(),
            max_body_bytes: 1 << 20,
            keys: Vec::new(),
            idempotency_window_ms: 300_000,
        }
    }
}

impl ApiConfig {
    /// Whether `/api/*` needs a key.
    pub fn requires_key(&self) -> bool {
        !self.key.is_empty() || !self.keys.is_empty()
    }
}

/// How clients authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Development: clients pick their own user id (`{"type":"auth","user":"alice"}`);
    /// tokens are checked too when a JWT key is configured.
    Open,
    /// Clients present a JWT connection token signed with the configured key.
    Token,
    /// The backend decides: roomcast forwards each handshake to `proxy.connect_url`.
    Proxy,
}

impl AuthMode {
    /// The name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Open => "open",
            AuthMode::Token => "token",
            AuthMode::Proxy => "proxy",
        }
    }
}

/// A permission that follows the auth mode unless set: `auto`, `allow`
/// (`true`) or `deny` (`false`). `auth.anonymous`, `client.send` and
/// `client.broadcast` are one each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Permit {
    /// Allowed in `open` mode, refused in `token` and `proxy` modes.
    #[default]
    Auto,
    /// Allowed.
    Allow,
    /// Refused.
    Deny,
}

/// Whether a connection may act without a user id. Refused: only `auth` and
/// `ping` work until the connection authenticates, and it is closed (4501)
/// if it has not after `auth.timeout_ms`.
pub type Anonymous = Permit;

impl Permit {
    /// Whether it allows, in auth mode `mode`.
    pub fn allows(self, mode: AuthMode) -> bool {
        match self {
            Permit::Auto => mode == AuthMode::Open,
            Permit::Allow => true,
            Permit::Deny => false,
        }
    }
}

impl<'de> Deserialize<'de> for Permit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(Permit::Allow),
            Raw::Bool(false) => Ok(Permit::Deny),
            Raw::Text(t) => match t.as_str() {
                "auto" => Ok(Permit::Auto),
                "allow" | "true" => Ok(Permit::Allow),
                "deny" | "false" => Ok(Permit::Deny),
                other => Err(serde::de::Error::custom(format!(
                    "expected auto, allow or deny, got {other:?}"
                ))),
            },
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `open`, `token` or `proxy`. Default: `open`.
    pub mode: AuthMode,
    /// Whether a connection may do anything but `auth` and `ping` before it
    /// authenticates: `auto`, `allow` (`true`) or `deny` (`false`). Default: `auto`
    /// (allowed in open mode only).
    pub anonymous: Anonymous,
    /// When anonymous connections are refused, connections that have not
    /// authenticated after this many milliseconds are closed with code 4501. Default: 10000.
    pub timeout_ms: u64,
    /// Browser origins (`scheme://host[:port]`) allowed to open connections;
    /// a request with another `Origin` header is refused with 403. Empty allows
    /// every origin. Requests without `Origin` (non-browser clients) are allowed. Default: empty.
    pub allowed_origins: Vec<String>,
    /// JWT connection tokens.
    pub jwt: JwtConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Open,
            anonymous: Anonymous::Auto,
            timeout_ms: 10_000,
            allowed_origins: Vec::new(),
            jwt: JwtConfig::default(),
        }
    }
}

impl AuthConfig {
    /// Whether connections without a user id may use rooms.
    pub fn allows_anonymous(&self) -> bool {
        self.anonymous.allows(self.mode)
    }
}

/// `[auth.jwt]`: how connection tokens are checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// `HS256`, `HS384`, `HS512`, `RS256` or `ES256`; tokens signed with any
    /// other algorithm are refused. With `jwks_file`, each key's own `alg` applies. Default: `HS256`.
    pub algorithm: String,
    /// The shared secret for `HS*` tokens. Default: empty.
    pub secret: String,
    /// The PEM public key for `RS256`/`ES256` tokens, inline. Default: empty.
    pub public_key: String,
    /// A file holding the PEM public key for `RS256`/`ES256` tokens. Default: empty.
    pub public_key_file: String,
    /// A JWKS file (`{"keys":[...]}`): the token's `kid` picks the key. Default: empty.
    pub jwks_file: String,
    /// When set, tokens must carry this `iss`. Default: empty.
    pub issuer: String,
    /// When set, tokens must carry this `aud`. Default: empty.
    pub audience: String,
    /// Seconds of clock skew allowed on `exp` and `nbf`. Default: 0.
    pub leeway_s: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            algorithm: "HS256".to_owned(),
            secret: String::new(),
            public_key: String::new(),
            public_key_file: String::new(),
            jwks_file: String::new(),
            issuer: String::new(),
            audience: String::new(),
            leeway_s: 0,
        }
    }
}

/// The values `auth.jwt.algorithm` accepts, spelled exactly so.
pub const JWT_ALGORITHMS: [&str; 5] = ["HS256", "HS384", "HS512", "RS256", "ES256"];

impl JwtConfig {
    fn validate(&self) -> Result<(), String> {
        if !JWT_ALGORITHMS.contains(&self.algorithm.as_str()) {
            return Err(format!(
                "auth.jwt.algorithm must be one of {}, got {:?}",
                JWT_ALGORITHMS.join(", "),
                self.algorithm
            ));
        }
        let hmac = self.algorithm.starts_with("HS");
        if hmac && !(self.public_key.is_empty() && self.public_key_file.is_empty()) {
            return Err(format!(
                "auth.jwt.public_key and auth.jwt.public_key_file need auth.jwt.algorithm RS256 or ES256, got {:?}",
                self.algorithm
            ));
        }
        if !hmac && !self.secret.is_empty() {
            return Err(format!(
                "auth.jwt.secret is for HS256, HS384 or HS512; auth.jwt.algorithm {:?} needs auth.jwt.public_key, auth.jwt.public_key_file or auth.jwt.jwks_file",
                self.algorithm
            ));
        }
        Ok(())
    }

    /// Whether any key is configured.
    pub fn has_key(&self) -> bool {
        !(self.secret.is_empty()
            && self.public_key.is_empty()
            && self.public_key_file.is_empty()
            && self.jwks_file.is_empty())
    }
}

/// `[client]`: what clients may do beyond rooms.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// Let clients send to a user (`{"type":"send"}`): `auto` (allowed in
    /// `open` mode only), `allow` (`true`) or `deny` (`false`). Default: `auto`.
    pub send: Permit,
    /// Let clients send to every connection (`{"type":"broadcast"}`), the same way. Default: `auto`.
    pub broadcast: Permit,
}

/// `[proxy]`: the backend that authenticates, authorises and handles events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Sent as `X-Roomcast-Secret` on every backend request, so the backend
    /// knows the call comes from roomcast. Default: empty (not sent).
    pub secret: String,
    /// Where handshakes go in `proxy` auth mode. Default: empty.
    pub connect_url: String,
    /// Where joins of rooms whose rule says `join = "proxy"` are approved. Default: empty.
    pub subscribe_url: String,
    /// Where client events with no built-in meaning go (native `rpc`, Socket.IO
    /// events); empty answers them with `no_handler`. Default: empty.
    pub rpc_url: String,
    /// Per-event routes, first match wins over `rpc_url`: `[{event = "chat.*", url = "..."}]`. Default: none.
    pub rpc_routes: Vec<RpcRoute>,
    /// Where connect, disconnect, join and leave events are posted. Default: empty (off).
    pub webhook_url: String,
    /// Which webhook events to post. Default: `["connect", "disconnect", "join", "leave"]`.
    pub webhook_events: Vec<String>,
    /// Webhook events waiting to be posted before new ones are dropped (and counted). Default: 10000.
    pub webhook_queue: usize,
    /// How long one backend request may take, in milliseconds. Default: 5000.
    pub timeout_ms: u64,
    /// Most backend requests in flight on this node; more wait for a slot. Default: 256.
    pub max_in_flight: usize,
    /// Retries of a request that never reached the backend (connection refused),
    /// and of webhooks on 5xx. Default: 2.
    pub retries: u32,
    /// Handshake headers passed to the backend as HTTP headers on every call
    /// for that connection (lower case). Add `x-forwarded-for` only behind a
    /// reverse proxy that sets it: a client can send any value. Default:
    /// `["cookie", "user-agent", "accept-language"]`.
    pub forward_headers: Vec<String>,
}

/// One `proxy.rpc_routes` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpcRoute {
    /// An event name, or a glob where `*` matches any run of characters.
    pub event: String,
    /// The backend URL for those events.
    pub url: String,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            secret: String::new(),
            connect_url: String::new(),
            subscribe_url: String::new(),
            rpc_url: String::new(),
            rpc_routes: Vec::new(),
            webhook_url: String::new(),
            webhook_events: ["connect", "disconnect", "join", "leave"]
                .map(str::to_owned)
                .to_vec(),
            webhook_queue: 10_000,
            timeout_ms: 5_000,
            max_in_flight: 256,
            retries: 2,
            forward_headers: ["cookie", "user-agent", "accept-language"]
                .map(str::to_owned)
                .to_vec(),
        }
    }
}

/// The webhook event names `proxy.webhook_events` accepts.
pub const WEBHOOK_EVENTS: [&str; 4] = ["connect", "disconnect", "join", "leave"];

impl ProxyConfig {
    fn validate(&self, mode: AuthMode) -> Result<(), String> {
        let urls = [
            ("proxy.connect_url", &self.connect_url),
            ("proxy.subscribe_url", &self.subscribe_url),
            ("proxy.rpc_url", &self.rpc_url),
            ("proxy.webhook_url", &self.webhook_url),
        ];
        let routes = self
            .rpc_routes
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("proxy.rpc_routes[{i}].url"), &r.url));
        for (key, url) in urls
            .into_iter()
            .map(|(k, u)| (k.to_owned(), u))
            .chain(routes)
        {
            if !url.is_empty() && !url.starts_with("http://") && !url.starts_with("https://") {
                return Err(format!(
                    "{key} must be an http:// or https:// URL, got {url:?}"
                ));
            }
        }
        if mode == AuthMode::Proxy && self.connect_url.is_empty() {
            return Err("auth.mode = \"proxy\" needs proxy.connect_url".to_owned());
        }
        for e in &self.webhook_events {
            if !WEBHOOK_EVENTS.contains(&e.as_str()) {
                return Err(format!(
                    "proxy.webhook_events: unknown event {e:?} (known: {})",
                    WEBHOOK_EVENTS.join(", ")
                ));
            }
        }
        if self.timeout_ms == 0 || self.max_in_flight == 0 {
            return Err(
                "proxy.timeout_ms and proxy.max_in_flight must be greater than 0".to_owned(),
            );
        }
        Ok(())
    }
}

/// `[limits]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most open client connections on this node; 0 means no limit. Default: 100000.
    pub max_connections: usize,
    /// Largest WebSocket message (and frame) a client may send, in bytes. Default: 65536.
    pub max_message_bytes: usize,
    /// Bytes a connection's outgoing queue may hold before it is closed as a slow
    /// consumer (code 4001). Default: 1048576 (1 MiB).
    pub max_queue_bytes: usize,
    /// Most rooms one connection may be in. Default: 100.
    pub max_rooms_per_connection: usize,
    /// Longest room name, in bytes. Default: 200.
    pub max_room_name_bytes: usize,
    /// Most bytes of JSON in one connection's session data. Default: 16384.
    pub max_session_bytes: usize,
    /// Most open connections of one user on this node; more are closed with
    /// code 4505. 0 means no limit. Default: 0.
    pub max_connections_per_user: usize,
    /// Messages per second one connection may send, sustained; over it a
    /// message is refused with `rate_limited`, and a connection that keeps going
    /// is closed with code 4005. 0 means no limit. Default: 0.
    pub message_rate: u32,
    /// Messages a connection may send in a burst above `message_rate`. Default: 50.
    pub message_burst: u32,
    /// New connections per second from one IP address; over it the handshake is
    /// answered 429. 0 means no limit. Default: 0.
    pub connection_rate_per_ip: u32,
    /// New connections one IP address may open in a burst above `connection_rate_per_ip`. Default: 20.
    pub connection_burst_per_ip: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let hub = HubConfig::default();
        LimitsConfig {
            max_connections: hub.max_connections,
            max_message_bytes: 64 << 10,
            max_queue_bytes: hub.max_queue_bytes,
            max_rooms_per_connection: hub.max_rooms_per_connection,
            max_room_name_bytes: hub.max_room_name_bytes,
            max_session_bytes: hub.max_session_bytes,
            max_connections_per_user: 0,
            message_rate: 0,
            message_burst: 50,
            connection_rate_per_ip: 0,
            connection_burst_per_ip: 20,
        }
    }
}

/// `[heartbeat]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatConfig {
    /// Milliseconds between server pings. Default: 25000.
    pub interval_ms: u64,
    /// A connection silent (no frame, no pong) for `interval_ms + timeout_ms` is
    /// closed with code 4002; a write that cannot finish in that time closes it
    /// with 4001. Default: 10000.
    pub timeout_ms: u64,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            interval_ms: 25_000,
            timeout_ms: 10_000,
        }
    }
}

impl HeartbeatConfig {
    /// Time between pings.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms.max(1))
    }

    /// How long a connection may stay silent.
    pub fn silence_limit(&self) -> Duration {
        Duration::from_millis(self.interval_ms.max(1) + self.timeout_ms)
    }
}

/// `[websocket]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Initial read buffer per connection, in bytes (grows for larger messages). Default: 1024.
    pub read_buffer_bytes: usize,
    /// Queued frames are written to the socket once this many bytes are buffered,
    /// and always at the end of a batch. Default: 65536.
    pub write_buffer_bytes: usize,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            read_buffer_bytes: 1024,
            write_buffer_bytes: 64 << 10,
        }
    }
}

/// `[shutdown]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// After SIGTERM/SIGINT, how long to wait for connections to receive their
    /// close (code 4000) before exiting anyway, in milliseconds. The listener
    /// stays open meanwhile (`/healthz` and new connections answer 503
    /// `shutting_down`). Default: 5000.
    pub drain_ms: u64,
    /// Keep answering HTTP (with those 503s) at least this long after the
    /// signal, even when every connection finished earlier, so that a load
    /// balancer's health checks see the node go, in milliseconds. Default: 0.
    pub linger_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_ms: 5_000,
            linger_ms: 0,
        }
    }
}

/// `[socketio]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketIoSettings {
    /// Accept Socket.IO (Engine.IO v4) clients. Default: true.
    pub enabled: bool,
    /// Where Engine.IO is served. Default: `/socket.io/`.
    pub path: String,
    /// Namespaces clients may connect to. Default: `["/"]`.
    pub namespaces: Vec<String>,
    /// Milliseconds between Engine.IO pings. Default: 25000.
    pub ping_interval_ms: u64,
    /// Milliseconds a client has to answer a ping. Default: 20000.
    pub ping_timeout_ms: u64,
    /// Largest message or polling body from a client, in bytes. Default: 1000000.
    pub max_payload_bytes: usize,
    /// A session that joins no namespace within this many milliseconds is closed. Default: 45000.
    pub connect_timeout_ms: u64,
    /// Browser origins allowed by CORS for long-polling; `["*"]` allows any. Default: none.
    pub cors_origins: Vec<String>,
    /// Let clients use the built-in events (`<prefix>join`, `<prefix>leave`,
    /// `<prefix>publish`, `<prefix>presence`) and receive presence events. Default: false.
    pub builtin_events: bool,
    /// Prefix of the built-in events. Default: `roomcast:`.
    pub event_prefix: String,
    /// Connection-state recovery: a client that reconnects within this many
    /// milliseconds gets its socket id, rooms and data back, and what it
    /// missed in rooms with history; 0 turns it off. Default: 0.
    pub recovery_ms: u64,
}

impl Default for SocketIoSettings {
    fn default() -> Self {
        SocketIoSettings {
            enabled: true,
            path: "/socket.io/".to_owned(),
            namespaces: vec!["/".to_owned()],
            ping_interval_ms: 25_000,
            ping_timeout_ms: 20_000,
            max_payload_bytes: 1_000_000,
            connect_timeout_ms: 45_000,
            cors_origins: Vec::new(),
            builtin_events: false,
            event_prefix: "roomcast:".to_owned(),
            recovery_ms: 0,
        }
    }
}

/// `[broker]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Empty for the in-memory broker (one node), or `redis://[user:password@]host:port/db`
    /// to make this node part of a cluster. Default: empty.
    pub url: String,
    /// `url` is a Redis Cluster: comma-separated seed URLs; sharded pub/sub
    /// (SPUBLISH/SSUBSCRIBE) and presence keys in one hash slot. Default: false.
    pub cluster: bool,
    /// Prefix of every Redis key and channel roomcast uses. Default: `roomcast`.
    pub prefix: String,
    /// How often the node refreshes its heartbeat in Redis, in milliseconds. Default: 2000.
    pub heartbeat_ms: u64,
    /// A node silent for this long is dead and its presence is removed, in
    /// milliseconds. Default: 10000.
    pub node_ttl_ms: u64,
    /// Socket.IO emitters to accept, comma-separated: `python-socketio`,
    /// `socket.io`. Needs a Redis `url`. Default: none.
    pub emitters: String,
    /// The channel python-socketio's `RedisManager` publishes on. Default: `socketio`.
    pub python_socketio_channel: String,
    /// The key prefix of Node's `@socket.io/redis-emitter`. Default: `socket.io`.
    pub socket_io_prefix: String,
    /// `host:port` where the other nodes reach this node's HTTP port, to forward
    /// Socket.IO long-polling requests for its sessions. Default: empty, the
    /// listen address (when it is not `0.0.0.0` or `[::]`).
    pub advertise: String,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            url: String::new(),
            cluster: false,
            prefix: "roomcast".to_owned(),
            heartbeat_ms: 2_000,
            node_ttl_ms: 10_000,
            emitters: String::new(),
            python_socketio_channel: "socketio".to_owned(),
            socket_io_prefix: "socket.io".to_owned(),
            advertise: String::new(),
        }
    }
}

/// The emitter names `broker.emitters` accepts.
pub const EMITTERS: [&str; 2] = ["python-socketio", "socket.io"];

impl BrokerConfig {
    /// The emitters turned on, validated.
    pub fn emitter_list(&self) -> Result<Vec<&str>, String> {
        let list: Vec<&str> = self
            .emitters
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        for e in &list {
            if !EMITTERS.contains(e) {
                return Err(format!(
                    "broker.emitters: unknown emitter {e:?} (known: {})",
                    EMITTERS.join(", ")
                ));
            }
        }
        Ok(list)
    }

    fn validate(&self) -> Result<(), String> {
        let emitters = self.emitter_list()?;
        if self.url.is_empty() {
            if !emitters.is_empty() {
                return Err("broker.emitters needs a Redis broker.url".to_owned());
            }
            return Ok(());
        }
        let urls: Vec<&str> = self.url.split(',').map(str::trim).collect();
        if urls.len() > 1 && !self.cluster {
            return Err(
                "broker.url lists several servers: set broker.cluster = true for a Redis Cluster"
                    .to_owned(),
            );
        }
        for url in urls {
            if !url.starts_with("redis://") && !url.starts_with("redis+unix://") {
                return Err(format!(
                    "broker.url must be empty or redis:// URLs, got {:?}",
                    self.url
                ));
            }
        }
        if self.prefix.is_empty() || self.prefix.contains(['#', '*', '?', '[', '{', '}']) {
            return Err("broker.prefix must be non-empty and free of # * ? [ { }".to_owned());
        }
        if self.heartbeat_ms == 0 || self.node_ttl_ms < 2 * self.heartbeat_ms {
            return Err(
                "broker.heartbeat_ms must be positive and broker.node_ttl_ms at least twice it"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

impl Config {
    /// The hub's part of the configuration.
    pub fn hub_config(&self) -> HubConfig {
        HubConfig {
            max_connections: self.limits.max_connections,
            max_queue_bytes: self.limits.max_queue_bytes,
            max_rooms_per_connection: self.limits.max_rooms_per_connection,
            max_room_name_bytes: self.limits.max_room_name_bytes,
            max_session_bytes: self.limits.max_session_bytes,
            rooms: RoomRules::new(self.rooms.clone()).with_history(
                roomcast_core::history::HistoryLimits {
                    size: self.history.size,
                    ttl: Duration::from_secs(self.history.ttl),
                },
            ),
        }
    }

    /// The configuration with its secrets masked, for printing: API keys,
    /// the JWT secret, the backend secret and passwords in Redis URLs keep
    /// enough to recognise which one is set (their length and last
    /// characters), not enough to use.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        c.api.key = mask(&c.api.key);
        for k in &mut c.api.keys {
            k.key = mask(&k.key);
        }
        c.auth.jwt.secret = mask(&c.auth.jwt.secret);
        c.proxy.secret = mask(&c.proxy.secret);
        c.broker.url = c
            .broker
            .url
            .split(',')
            .map(mask_url_password)
            .collect::<Vec<_>>()
            .join(",");
        c
    }

    /// Settings that are valid but unsafe outside development, each as a
    /// sentence naming the key to change. The binary logs them at startup.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let exposed = !self.listen.ip().is_loopback();
        if self.auth.mode == AuthMode::Open && exposed {
            out.push(format!(
                "auth.mode = \"open\" lets clients pick their own user id, and {} is not a loopback address: use \"token\" or \"proxy\" outside development",
                self.listen
            ));
        }
        if self.auth.mode == AuthMode::Proxy && self.auth.allowed_origins.is_empty() {
            out.push("auth.mode = \"proxy\" authenticates by the browser's cookies, which a page on any site can make it send: set auth.allowed_origins to your own origins".to_owned());
        }
        if !self.api.requires_key() && exposed {
            out.push(format!(
                "the HTTP API (/api/*) has no key and {} is not a loopback address: set api.key",
                self.listen
            ));
        }
        out
    }

    /// Checks values that parse but make no sense; names the key.
    pub fn validate(&self) -> Result<(), String> {
        check_log_filter(&self.log).map_err(|e| format!("log: {e}"))?;
        self.auth.jwt.validate()?;
        let positive = [
            ("api.max_body_bytes", self.api.max_body_bytes as u64),
            (
                "limits.max_message_bytes",
                self.limits.max_message_bytes as u64,
            ),
            ("limits.max_queue_bytes", self.limits.max_queue_bytes as u64),
            (
                "limits.max_room_name_bytes",
                self.limits.max_room_name_bytes as u64,
            ),
            ("heartbeat.interval_ms", self.heartbeat.interval_ms),
            (
                "websocket.read_buffer_bytes",
                self.websocket.read_buffer_bytes as u64,
            ),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(format!("{key} must be greater than 0"));
            }
        }
        self.broker.validate()?;
        self.channels.validate()?;
        self.proxy.validate(self.auth.mode)?;
        for (i, e) in self.endpoints.iter().enumerate() {
            e.validate(i)?;
            if self.endpoints[..i].iter().any(|o| o.path == e.path) {
                return Err(format!("endpoints[{i}].path {:?} is listed twice", e.path));
            }
            if e.mode == EndpointMode::Rpc
                && self.proxy.rpc_url.is_empty()
                && self.proxy.rpc_routes.is_empty()
            {
                return Err(format!(
                    "endpoints[{i}].mode = \"rpc\" needs an event proxy: proxy.rpc_url or proxy.rpc_routes"
                ));
            }
            if e.mode == EndpointMode::Channel && !self.channels.enabled() {
                return Err(format!(
                    "endpoints[{i}].mode = \"channel\" needs the Channels layer: channels.url"
                ));
            }
            if e.path == "/ws" || e.path == "/" || e.path.starts_with("/api/") {
                return Err(format!(
                    "endpoints[{i}].path {:?} is roomcast's own",
                    e.path
                ));
            }
        }
        if self.auth.mode == AuthMode::Token && !self.auth.jwt.has_key() {
            return Err("auth.mode = \"token\" needs a key: auth.jwt.secret, auth.jwt.public_key, auth.jwt.public_key_file or auth.jwt.jwks_file".to_owned());
        }
        for (i, k) in self.api.keys.iter().enumerate() {
            if k.key.is_empty() {
                return Err(format!("api.keys[{i}].key must not be empty"));
            }
        }
        for (i, o) in self.auth.allowed_origins.iter().enumerate() {
            if o != "*" && !o.contains("://") {
                return Err(format!(
                    "auth.allowed_origins[{i}] must be scheme://host[:port], got {o:?}"
                ));
            }
        }
        let sio = &self.socketio;
        if !sio.path.starts_with('/') {
            return Err("socketio.path must start with /".to_owned());
        }
        for (i, ns) in sio.namespaces.iter().enumerate() {
            if !ns.starts_with('/') {
                return Err(format!("socketio.namespaces[{i}] must start with /"));
            }
        }
        for (key, v) in [
            ("socketio.ping_interval_ms", sio.ping_interval_ms),
            ("socketio.ping_timeout_ms", sio.ping_timeout_ms),
            ("socketio.max_payload_bytes", sio.max_payload_bytes as u64),
        ] {
            if v == 0 {
                return Err(format!("{key} must be greater than 0"));
            }
        }
        for (i, rule) in self.rooms.iter().enumerate() {
            if rule.pattern.is_empty() {
                return Err(format!("rooms[{i}].pattern must not be empty"));
            }
            if rule.history_ttl == Some(0) {
                return Err(format!("rooms[{i}].history_ttl must be greater than 0"));
            }
        }
        if self.history.ttl == 0 || self.history.meta_ttl == 0 {
            return Err("history.ttl and history.meta_ttl must be greater than 0".to_owned());
        }
        let history = self.hub_config().rooms.any_history();
        if history && self.broker.cluster {
            return Err("history needs a single Redis server: it does not work with broker.cluster = true yet".to_owned());
        }
        if sio.recovery_ms > 0 && !history {
            return Err("socketio.recovery_ms replays rooms with history: set history.size (or a rule's history_size) too".to_owned());
        }
        Ok(())
    }
}

/// A secret as `roomcast config` prints it: empty stays empty; a long one
/// keeps its last 4 characters, a short one none.
fn mask(secret: &str) -> String {
    let n = secret.chars().count();
    match n {
        0 => String::new(),
        16.. => {
            let tail: String = secret.chars().skip(n - 4).collect();
            format!("****{tail} ({n} chars, masked)")
        }
        _ => format!("**** ({n} chars, masked)"),
    }
}

/// `redis://user:password@host` with the password masked.
fn mask_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, password)) if !password.is_empty() => {
            format!("{scheme}://{user}:****@{host}")
        }
        _ => url.to_owned(),
    }
}

/// The levels a log filter names.
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks a log filter: comma-separated directives, each a level or
/// `target=level` (the target may carry a `[span{field}]` selector). A bare
/// word that is not a level would be read as a target enabled at every
/// level, which is never what `verbose` or `warning` meant.
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    let is_level = |l: &str| LOG_LEVELS.contains(&l.trim().to_ascii_lowercase().as_str());
    let known = || LOG_LEVELS.join(", ");
    if filter.trim().is_empty() {
        return Err(format!("must name a level ({})", known()));
    }
    for directive in filter.split(',').map(str::trim) {
        let level = match directive.rsplit_once('=') {
            Some((target, level)) if !target.trim().is_empty() => level,
            Some(_) => return Err(format!("{directive:?} has no target before `=`")),
            None => directive,
        };
        if !is_level(level) {
            return Err(format!(
                "{directive:?} is not a level ({}) or target=level",
                known()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_masks_every_secret() {
        let mut c = Config::default();
        c.api.key = "0123456789abcdefWXYZ".into();
        c.api.keys = vec![ApiKey {
            key: "short".into(),
            scope: ApiScope::Publish,
        }];
        c.auth.jwt.secret = "jwt-secret-that-is-long".into();
        c.proxy.secret = "backend".into();
        c.broker.url = "redis://app:hunter2@127.0.0.1:6379/0".into();
        let r = c.redacted();
        assert_eq!(r.api.key, "****WXYZ (20 chars, masked)");
        assert_eq!(r.api.keys[0].key, "**** (5 chars, masked)");
        assert_eq!(r.auth.jwt.secret, "****long (23 chars, masked)");
        assert_eq!(r.proxy.secret, "**** (7 chars, masked)");
        assert_eq!(r.broker.url, "redis://app:****@127.0.0.1:6379/0");
        let text = serde_json::to_string(&r).unwrap();
        for secret in [
            "0123456789abcdef",
            "short",
            "jwt-secret",
            "backend",
            "hunter2",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(Config::default().redacted(), Config::default());
    }

    #[test]
    fn log_filters_name_levels() {
        for ok in [
            "info",
            "WARN",
            "roomcast=debug,tower_http=info",
            "warn, roomcast[conn]=trace",
        ] {
            assert_eq!(check_log_filter(ok), Ok(()), "{ok}");
        }
        for bad in ["verbose", "", "info,", "roomcast=loud", "=info", "warning"] {
            assert!(check_log_filter(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn jwt_algorithms_are_spelled_exactly() {
        let mut c = Config::default();
        for bad in ["none", "hs256", "PS256", ""] {
            c.auth.jwt.algorithm = bad.into();
            let e = c.validate().unwrap_err();
            assert!(e.contains("auth.jwt.algorithm"), "{e}");
        }
        c.auth.jwt.algorithm = "RS256".into();
        assert_eq!(c.validate(), Ok(()));
        c.auth.jwt.secret = "s".into();
        assert!(c.validate().unwrap_err().contains("auth.jwt.secret"));
        c.auth.jwt.algorithm = "HS384".into();
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn unsafe_settings_are_named_in_warnings() {
        let local = Config::default();
        assert!(local.warnings().is_empty(), "{:?}", local.warnings());
        let mut exposed = Config {
            listen: "0.0.0.0:8700".parse().unwrap(),
            ..Config::default()
        };
        let w = exposed.warnings();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("auth.mode = \"open\"") && w[1].contains("api.key"));
        exposed.api.key = "k".into();
        exposed.auth.mode = AuthMode::Proxy;
        let w = exposed.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("auth.allowed_origins"));
        exposed.auth.allowed_origins = vec!["https://app.example".into()];
        assert!(exposed.warnings().is_empty());
    }
}
