//! The table of client-visible error codes, and [`Refusal`], the error a
//! client command is answered with.
//!
//! Native `error` frames, Socket.IO error acks and HTTP API errors all take
//! their codes from [`Code`]; [`Code::TABLE`] says what each means and where
//! it is documented, and a test keeps docs/protocol.md, docs/socketio.md and
//! docs/http-api.md in step with it. A leaf: it imports nothing of this crate.

use std::borrow::Cow;

use roomcast_core::error::{AuthError, JoinError, LeaveError, PublishError, QueryError};

/// A client-visible error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Code(&'static str);

/// Where a code can reach a client (a bit set): native `error` frames
/// (docs/protocol.md), Socket.IO error acks and CONNECT refusals
/// (docs/socketio.md), HTTP API errors (docs/http-api.md), and refused
/// WebSocket upgrades and Engine.IO handshakes (docs/protocol.md).
pub type Surfaces = u8;
/// Native `error` frames.
pub const NATIVE: Surfaces = 1;
/// Socket.IO error acks, `roomcast:error` events and CONNECT refusals.
pub const SOCKETIO: Surfaces = 2;
/// HTTP API error bodies.
pub const HTTP: Surfaces = 4;
/// Refused WebSocket upgrades and Engine.IO handshakes.
pub const HANDSHAKE: Surfaces = 8;
const CLIENTS: Surfaces = NATIVE | SOCKETIO;

macro_rules! codes {
    ($($name:ident = $code:literal, $surfaces:expr, $meaning:literal;)*) => {
        impl Code {
            $(
                #[doc = $meaning]
                pub const $name: Code = Code($code);
            )*
            /// Every code: the code, where it can reach a client, and what it means.
            pub const TABLE: &'static [(Code, Surfaces, &'static str)] = &[
                $((Code::$name, $surfaces, $meaning),)*
            ];
        }
    };
}

codes! {
    BAD_REQUEST = "bad_request", CLIENTS | HTTP, "The input could not be read: not JSON, not an object, nested too deep, a missing or mistyped field.";
    UNKNOWN_TYPE = "unknown_type", NATIVE, "A native frame's `type` is not a command.";
    BINARY_NOT_SUPPORTED = "binary_not_supported", NATIVE, "A binary frame on the native protocol.";
    INVALID_ROOM = "invalid_room", NATIVE | HTTP, "A malformed room name.";
    INVALID_EVENT = "invalid_event", NATIVE | HTTP, "A malformed event name.";
    INVALID_USER = "invalid_user", CLIENTS | HTTP, "A malformed user id.";
    INVALID_CONN = "invalid_conn", HTTP, "A malformed connection id.";
    TOO_MANY_ROOMS = "too_many_rooms", NATIVE, "The connection is in `limits.max_rooms_per_connection` rooms.";
    ROOM_FULL = "room_full", NATIVE, "The room allows no more members.";
    FORBIDDEN = "forbidden", CLIENTS | HTTP, "A room rule or client setting does not allow this.";
    UNAUTHENTICATED = "unauthenticated", CLIENTS, "The connection has not authenticated and anonymous ones may not act.";
    TOKEN_EXPIRED = "token_expired", CLIENTS, "The token presented has expired.";
    RATE_LIMITED = "rate_limited", CLIENTS | HANDSHAKE, "Over `limits.message_rate` (a command) or `limits.connection_rate_per_ip` (a handshake).";
    NO_HANDLER = "no_handler", CLIENTS, "No backend route handles the event.";
    TOO_MANY_REQUESTS = "too_many_requests", SOCKETIO, "Too many events of one connection wait for the backend.";
    BACKEND_TIMEOUT = "backend_timeout", CLIENTS, "The backend did not answer in time.";
    BACKEND_ERROR = "backend_error", CLIENTS, "The backend failed.";
    ACTION_FAILED = "action_failed", CLIENTS, "One of the backend's actions could not be applied.";
    ALREADY_AUTHENTICATED = "already_authenticated", NATIVE, "A second `auth` on one connection.";
    AUTH_AFTER_JOIN = "auth_after_join", NATIVE, "`auth` after joining rooms.";
    AUTH_FAILED = "auth_failed", CLIENTS, "The credentials were refused.";
    ALREADY_BOUND = "already_bound", CLIENTS | HTTP, "A `bind` (backend action or `POST /api/bind`) of a connection that is another user's.";
    NO_CONNECTION = "no_connection", HTTP, "`POST /api/bind` of a connection that is not open.";
    TOO_MANY_CONNECTIONS = "too_many_connections", CLIENTS | HTTP, "Over `limits.max_connections_per_user`: a Socket.IO CONNECT (native connections are closed with 4505), or a `bind`.";
    SESSION_TOO_LARGE = "session_too_large", NATIVE, "The session data would pass `limits.max_session_bytes`.";
    BACKEND_UNAVAILABLE = "backend_unavailable", CLIENTS | HTTP, "The broker, presence or history store could not be reached.";
    NO_HISTORY = "no_history", NATIVE | HTTP, "The room keeps no history.";
    CLOSED = "closed", CLIENTS, "The connection is closing.";
    JOIN_FAILED = "join_failed", SOCKETIO, "A built-in join the hub could not do (room name, limits).";
    LEAVE_FAILED = "leave_failed", SOCKETIO, "A built-in leave the hub could not do.";
    PUBLISH_FAILED = "publish_failed", SOCKETIO, "A built-in publish the hub could not do.";
    PRESENCE_FAILED = "presence_failed", SOCKETIO, "A built-in presence query the hub could not answer.";
    UNKNOWN_BUILTIN = "unknown_builtin", SOCKETIO, "A prefixed event that is not a built-in one.";
    UNAUTHORIZED = "unauthorized", HTTP, "Missing or wrong API key.";
    INSUFFICIENT_SCOPE = "insufficient_scope", HTTP, "The API key's scope does not cover this endpoint.";
    NOT_FOUND = "not_found", HTTP, "No such endpoint.";
    METHOD_NOT_ALLOWED = "method_not_allowed", HTTP, "The endpoint does not take this method.";
    BODY_TOO_LARGE = "body_too_large", HTTP, "The body is over `api.max_body_bytes`.";
    IDEMPOTENCY_IN_PROGRESS = "idempotency_in_progress", HTTP, "A request with this `idempotency_key` is still being carried out; retry.";
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused", HTTP, "The `idempotency_key` was used for a different request within the window.";
    INTERNAL_ERROR = "internal_error", HTTP, "An internal error.";
    SHUTTING_DOWN = "shutting_down", HANDSHAKE, "The server is draining before it stops.";
    SERVER_FULL = "server_full", HANDSHAKE, "The node holds `limits.max_connections` connections.";
    ORIGIN_NOT_ALLOWED = "origin_not_allowed", HANDSHAKE, "The handshake's Origin is not in `auth.allowed_origins`.";
}

impl Code {
    /// The code as clients see it.
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl PartialEq<&str> for Code {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// A refused or failed client command: an error code and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// A code of [`Code::TABLE`], or one the backend chose.
    pub code: Cow<'static, str>,
    /// What went wrong, for the client.
    pub message: String,
}

impl Refusal {
    /// A refusal with a code of the table.
    pub fn new(code: Code, message: impl ToString) -> Refusal {
        Refusal {
            code: Cow::Borrowed(code.0),
            message: message.to_string(),
        }
    }

    /// A refusal whose code the backend chose (passed on as it is).
    pub fn passed_on(code: String, message: String) -> Refusal {
        Refusal {
            code: Cow::Owned(code),
            message,
        }
    }
}

impl From<JoinError> for Refusal {
    fn from(e: JoinError) -> Self {
        let code = match e {
            JoinError::InvalidRoom(_) => Code::INVALID_ROOM,
            JoinError::TooManyRooms { .. } => Code::TOO_MANY_ROOMS,
            JoinError::RoomFull { .. } => Code::ROOM_FULL,
            JoinError::Closed => Code::CLOSED,
            JoinError::Presence(_) => Code::BACKEND_UNAVAILABLE,
        };
        Refusal::new(code, e)
    }
}

impl From<LeaveError> for Refusal {
    fn from(e: LeaveError) -> Self {
        let code = match e {
            LeaveError::InvalidRoom(_) => Code::INVALID_ROOM,
            LeaveError::Presence(_) => Code::BACKEND_UNAVAILABLE,
        };
        Refusal::new(code, e)
    }
}

impl From<PublishError> for Refusal {
    fn from(e: PublishError) -> Self {
        let code = match e {
            PublishError::InvalidRoom(_) => Code::INVALID_ROOM,
            PublishError::InvalidEvent => Code::INVALID_EVENT,
            PublishError::Broker { .. } | PublishError::History(_) => Code::BACKEND_UNAVAILABLE,
        };
        Refusal::new(code, e)
    }
}

impl From<QueryError> for Refusal {
    fn from(e: QueryError) -> Self {
        let code = match e {
            QueryError::InvalidRoom(_) => Code::INVALID_ROOM,
            QueryError::Forbidden => Code::FORBIDDEN,
            QueryError::NoHistory => Code::NO_HISTORY,
            QueryError::Presence(_) | QueryError::History(_) => Code::BACKEND_UNAVAILABLE,
        };
        Refusal::new(code, e)
    }
}

impl From<AuthError> for Refusal {
    fn from(e: AuthError) -> Self {
        let code = match e {
            AuthError::AlreadyAuthenticated => Code::ALREADY_AUTHENTICATED,
            AuthError::AfterJoin => Code::AUTH_AFTER_JOIN,
            AuthError::InvalidUser => Code::INVALID_USER,
            AuthError::Closed => Code::CLOSED,
            AuthError::Presence(_) => Code::BACKEND_UNAVAILABLE,
        };
        Refusal::new(code, e)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The codes in the tables under a heading that speaks of errors: every
    /// `` `code` `` in a row's cells but the last (which says what it means).
    fn documented(path: &str) -> BTreeSet<String> {
        let text =
            std::fs::read_to_string(format!("{}/../../docs/{path}", env!("CARGO_MANIFEST_DIR")))
                .unwrap();
        let mut out = BTreeSet::new();
        let mut in_errors = false;
        for line in text.lines() {
            if line.starts_with('#') {
                in_errors = line.to_ascii_lowercase().contains("error");
            }
            if !in_errors || !line.starts_with('|') {
                continue;
            }
            let cells: Vec<&str> = line.split('|').collect();
            for cell in &cells[1..cells.len().saturating_sub(2)] {
                for part in cell.split('`').skip(1).step_by(2) {
                    if !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    {
                        out.insert(part.to_owned());
                    }
                }
            }
        }
        out
    }

    #[test]
    fn the_docs_list_every_code_of_the_table_and_no_other() {
        for (doc, surfaces) in [
            ("protocol.md", NATIVE | HANDSHAKE),
            ("socketio.md", SOCKETIO),
            ("http-api.md", HTTP),
        ] {
            let docs = documented(doc);
            let table: BTreeSet<String> = Code::TABLE
                .iter()
                .filter(|(_, s, _)| s & surfaces != 0)
                .map(|(c, _, _)| c.0.to_owned())
                .collect();
            let missing: Vec<_> = table.difference(&docs).collect();
            let unknown: Vec<_> = docs.difference(&table).collect();
            assert!(
                missing.is_empty() && unknown.is_empty(),
                "docs/{doc}: codes of the table it lacks {missing:?}, codes it has that the table lacks {unknown:?}"
            );
        }
    }

    #[test]
    fn codes_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for (c, _, _) in Code::TABLE {
            assert!(seen.insert(c.0), "{c} twice");
        }
    }
}
