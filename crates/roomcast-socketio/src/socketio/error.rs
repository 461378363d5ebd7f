//! The errors of the operations of a socket, and a namespace's refusal of a
//! connection.

use serde_json::Value;

use roomcast_core::PushError;

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
