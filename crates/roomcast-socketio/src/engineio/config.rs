//! Engine.IO settings.

use std::time::Duration;

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
    /// [`EngineIo::new`](super::EngineIo::new); a handshake over it is answered 503. 0 means no
    /// limit. Default: 0. A server made with [`EngineIo::with_admission`](super::EngineIo::with_admission)
    /// (as the Socket.IO server does, with its hub's)
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
