//! Socket.IO settings.

use std::time::Duration;

use crate::engineio::EngineConfig;

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
