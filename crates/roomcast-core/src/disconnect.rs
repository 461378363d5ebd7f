//! Why the server closed a connection: the documented close-code table.
//!
//! Codes 4000–4499 mean "something went wrong that a reconnect may fix"; codes
//! 4500–4999 mean "do not reconnect without changing something" (credentials,
//! the client's code). Standard WebSocket codes are used where one fits.
//! `docs/protocol.md` holds the same table; a test keeps the two in step.

use std::borrow::Cow;

/// A close code and a short reason, sent to the client before its connection closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// The WebSocket close code.
    pub code: u16,
    /// A short, human-readable reason (at most 123 bytes on the wire).
    pub reason: Cow<'static, str>,
}

impl Disconnect {
    /// A disconnect with a code and reason of the caller's choice (HTTP API).
    pub fn custom(code: u16, reason: impl Into<String>) -> Disconnect {
        let mut reason: String = reason.into();
        if reason.len() > 123 {
            let mut end = 123;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        Disconnect {
            code,
            reason: Cow::Owned(reason),
        }
    }

    /// Whether the client may reconnect straight away.
    pub fn reconnect(&self) -> bool {
        !(4500..5000).contains(&self.code) && self.code != 1008
    }

    const fn known(code: u16, reason: &'static str) -> Disconnect {
        Disconnect {
            code,
            reason: Cow::Borrowed(reason),
        }
    }

    /// 1000: the client closed the connection normally.
    pub const NORMAL: Disconnect = Disconnect::known(1000, "normal");
    /// 1002: the client broke the WebSocket framing rules (RFC 6455 §7.4.1):
    /// reserved bits, an unmasked frame, a fragmented or oversize control
    /// frame, an unknown opcode, a stray continuation.
    pub const WS_PROTOCOL: Disconnect = Disconnect::known(1002, "websocket protocol error");
    /// 1007: a text frame (or a close reason) that is not valid UTF-8.
    pub const INVALID_UTF8: Disconnect = Disconnect::known(1007, "invalid UTF-8");
    /// 1009: a frame or message was larger than `limits.max_message_bytes`.
    pub const MESSAGE_TOO_BIG: Disconnect = Disconnect::known(1009, "message too big");
    /// 1011: an unexpected server error.
    pub const INTERNAL: Disconnect = Disconnect::known(1011, "internal error");
    /// 4000: the server is shutting down; reconnect (to another node).
    pub const SHUTDOWN: Disconnect = Disconnect::known(4000, "server shutting down");
    /// 4001: the client did not read its messages fast enough; its outgoing queue
    /// passed `limits.max_queue_bytes`.
    pub const SLOW: Disconnect = Disconnect::known(4001, "slow consumer");
    /// 4002: nothing was heard from the client for `heartbeat.interval_ms + heartbeat.timeout_ms`.
    pub const HEARTBEAT_TIMEOUT: Disconnect = Disconnect::known(4002, "heartbeat timeout");
    /// 4003: the server is at `limits.max_connections`.
    pub const SERVER_FULL: Disconnect = Disconnect::known(4003, "server full");
    /// 4004: the authentication backend (`proxy.connect_url`) failed or did not
    /// answer in time; reconnect later.
    pub const AUTH_UNAVAILABLE: Disconnect =
        Disconnect::known(4004, "authentication backend unavailable");
    /// 4005: the client kept sending after its messages were refused for
    /// `limits.message_rate`; reconnect after a pause.
    pub const RATE_LIMITED: Disconnect = Disconnect::known(4005, "message rate limit exceeded");
    /// 4500: the server's HTTP API (or the embedding application) disconnected the client.
    pub const BY_SERVER: Disconnect = Disconnect::known(4500, "disconnected by server");
    /// 4501: the client did not authenticate within `auth.timeout_ms`.
    pub const AUTH_TIMEOUT: Disconnect = Disconnect::known(4501, "authentication timeout");
    /// 4502: the credentials presented at connect time were refused.
    pub const AUTH_FAILED: Disconnect = Disconnect::known(4502, "authentication failed");
    /// 4503: the client broke the protocol in a way that cannot be answered with an error frame.
    pub const PROTOCOL_ERROR: Disconnect = Disconnect::known(4503, "protocol error");
    /// 4504: the connection's token expired and no fresh one was presented in time.
    pub const TOKEN_EXPIRED: Disconnect = Disconnect::known(4504, "token expired");
    /// 4505: the user already has `limits.max_connections_per_user` connections on this node.
    pub const TOO_MANY_CONNECTIONS: Disconnect =
        Disconnect::known(4505, "too many connections for this user");
    /// 4506: a URL-per-room endpoint's connection may not join the room of
    /// its path (the room's `join` rule, the subscribe proxy, a full room, an
    /// invalid name).
    pub const JOIN_REFUSED: Disconnect = Disconnect::known(4506, "join refused");

    /// Every code of the table, for documentation and tests.
    pub const TABLE: &'static [Disconnect] = &[
        Disconnect::NORMAL,
        Disconnect::WS_PROTOCOL,
        Disconnect::INVALID_UTF8,
        Disconnect::MESSAGE_TOO_BIG,
        Disconnect::INTERNAL,
        Disconnect::SHUTDOWN,
        Disconnect::SLOW,
        Disconnect::HEARTBEAT_TIMEOUT,
        Disconnect::SERVER_FULL,
        Disconnect::AUTH_UNAVAILABLE,
        Disconnect::RATE_LIMITED,
        Disconnect::BY_SERVER,
        Disconnect::AUTH_TIMEOUT,
        Disconnect::AUTH_FAILED,
        Disconnect::PROTOCOL_ERROR,
        Disconnect::TOKEN_EXPIRED,
        Disconnect::TOO_MANY_CONNECTIONS,
        Disconnect::JOIN_REFUSED,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_reasons_are_cut_at_a_char_boundary() {
        let d = Disconnect::custom(4600, "é".repeat(100));
        assert!(d.reason.len() <= 123);
        assert!(!d.reconnect());
        assert!(Disconnect::SLOW.reconnect());
    }
}
