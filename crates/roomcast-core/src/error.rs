//! One error type per hub operation.

use crate::broker::BrokerError;
use crate::history::HistoryError;
use crate::presence::PresenceError;
use crate::room::RoomNameError;

/// A connection could not be opened.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// `max_connections` connections are open already.
    #[error("server full: {max} connections")]
    ServerFull {
        /// The limit.
        max: usize,
    },
    /// The hub is shutting down.
    #[error("server shutting down")]
    ShuttingDown,
    /// The presence store failed.
    #[error(transparent)]
    Presence(#[from] PresenceError),
}

impl From<crate::admission::AdmitError> for ConnectError {
    fn from(e: crate::admission::AdmitError) -> Self {
        match e {
            crate::admission::AdmitError::Full { max } => ConnectError::ServerFull { max },
            crate::admission::AdmitError::ShuttingDown => ConnectError::ShuttingDown,
        }
    }
}

/// A connection could not take a user id.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// The connection has a user id already.
    #[error("connection is authenticated already")]
    AlreadyAuthenticated,
    /// The connection joined rooms before authenticating.
    #[error("authenticate before joining rooms")]
    AfterJoin,
    /// The user id is empty, longer than 200 bytes or has control characters.
    #[error("user id must be 1 to 200 bytes without control characters")]
    InvalidUser,
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
    /// The presence store failed.
    #[error(transparent)]
    Presence(#[from] PresenceError),
}

/// A connection could not join a room.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JoinError {
    /// The room name is invalid.
    #[error(transparent)]
    InvalidRoom(#[from] RoomNameError),
    /// The connection is in `max_rooms_per_connection` rooms already.
    #[error("a connection may be in at most {max} rooms")]
    TooManyRooms {
        /// The limit.
        max: usize,
    },
    /// The room holds its rule's `max_members` connections already.
    #[error("room is full ({max} members)")]
    RoomFull {
        /// The limit.
        max: usize,
    },
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
    /// The presence store failed.
    #[error(transparent)]
    Presence(#[from] PresenceError),
}

/// A connection could not leave a room.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LeaveError {
    /// The room name is invalid.
    #[error(transparent)]
    InvalidRoom(#[from] RoomNameError),
    /// The presence store failed.
    #[error(transparent)]
    Presence(#[from] PresenceError),
}

/// A server-side command ([`Hub::join`](crate::Hub::join),
/// [`leave`](crate::Hub::leave), [`close_room`](crate::Hub::close_room))
/// was refused or could not reach the other nodes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterCommandError {
    /// The room name is invalid.
    #[error(transparent)]
    InvalidRoom(#[from] RoomNameError),
    /// This node's connections were served; the broker could not carry the
    /// command to the other nodes.
    #[error("the command could not reach the other nodes: {0}")]
    Broker(#[source] BrokerError),
}

/// A user could not be bound to a connection ([`Hub::bind`](crate::Hub::bind)).
#[derive(Debug, Clone, thiserror::Error)]
pub enum BindError {
    /// No such connection on this node.
    #[error("no such connection")]
    NotFound,
    /// The connection is closed, bound to another user, or the user id is invalid.
    #[error(transparent)]
    Auth(AuthError),
    /// The connection is on another node and the broker could not carry the command.
    #[error("the command could not reach the other nodes: {0}")]
    Broker(#[source] BrokerError),
}

/// A publication could not be sent.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// The target room name is invalid.
    #[error(transparent)]
    InvalidRoom(#[from] RoomNameError),
    /// The event name is empty or longer than 200 bytes.
    #[error("event name must be 1 to 200 bytes")]
    InvalidEvent,
    /// Local connections got it; the broker could not carry it to other nodes.
    #[error("delivered to {delivered} local connections, but: {source}")]
    Broker {
        /// Local connections reached.
        delivered: usize,
        /// What the broker said.
        source: BrokerError,
    },
    /// The room keeps history and the history store could not take the
    /// publication: nobody got it.
    #[error(transparent)]
    History(#[from] HistoryError),
}

/// Session data could not be changed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionError {
    /// The merged session data would be larger than `max_session_bytes`.
    #[error("session data may hold at most {max} bytes of JSON")]
    TooLarge {
        /// The limit.
        max: usize,
    },
}

/// A presence question could not be answered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueryError {
    /// The room name is invalid.
    #[error(transparent)]
    InvalidRoom(#[from] RoomNameError),
    /// The room's rule does not allow presence queries.
    #[error("presence is not available in this room")]
    Forbidden,
    /// The presence store failed.
    #[error(transparent)]
    Presence(#[from] PresenceError),
    /// The room keeps no history.
    #[error("this room keeps no history")]
    NoHistory,
    /// The history store failed.
    #[error(transparent)]
    History(#[from] HistoryError),
}
