//! What the layer above Engine.IO sees: messages, why a session closed, and
//! the [`EngineHandler`] it implements.

use std::sync::Arc;

use axum::body::Bytes;
use roomcast_core::{Disconnect, Frame};

use super::Session;

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
