//! Protocol-neutral messages: what the hub delivers and what brokers carry between nodes.

use std::sync::Arc;

use serde_json::value::RawValue;

use crate::{ConnId, Disconnect, NodeId};

/// Where a publication goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every member of a room.
    Room(String),
    /// Every connection of a user.
    User(String),
    /// One connection.
    Conn(ConnId),
    /// Every connection.
    All,
}

/// Who sent a publication, when a client did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    /// The sending connection.
    pub conn: ConnId,
    /// Its user, if it authenticated as one.
    pub user: Option<Arc<str>>,
}

/// Where a publication stands in its room's history stream.
///
/// Filled in by a history store (rooms with history); `None` otherwise. The
/// protocols put it on the wire as `offset` and `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    /// Monotonically increasing within an epoch.
    pub offset: u64,
    /// Changes whenever the stream was lost and restarted.
    pub epoch: Arc<str>,
    /// The history store's sequence number: orders publications across rooms
    /// (Socket.IO clients resume from it).
    pub seq: u64,
}

/// One message for clients: an event name and JSON data, sent to a [`Target`].
#[derive(Debug, Clone)]
pub struct Publication {
    /// Who receives it.
    pub target: Target,
    /// The application's event name.
    pub event: String,
    /// Any JSON value, kept as the sender wrote it (never re-parsed per recipient).
    pub data: Box<RawValue>,
    /// The client that published it, if any.
    pub from: Option<Sender>,
    /// A connection that must not receive it (a sender's `exclude_self`).
    pub exclude: Option<ConnId>,
    /// Its position in the room's history, for rooms that keep one.
    pub position: Option<StreamPosition>,
    /// `data` is a JSON array holding several arguments (an event from a
    /// Socket.IO emitter): Socket.IO spreads them, the native protocol sends
    /// the array.
    pub spread: bool,
    /// A frame a client sent on a relay endpoint, kept in `data` so that
    /// endpoint members get it byte for byte; [`Relayed::No`] for everything else.
    pub relayed: Relayed,
}

/// How a frame relayed from an endpoint client (a URL-per-room WebSocket) is
/// kept in a [`Publication`]'s `data`. Endpoint members get the frame as it
/// was sent; other protocols see `data` as JSON like any publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Relayed {
    /// Not a relayed frame.
    #[default]
    No,
    /// A text frame holding JSON: `data` is that text, unchanged.
    Json,
    /// A text frame that is not JSON: `data` is a JSON string of the text.
    Text,
    /// A binary frame: `data` is a JSON string of its bytes in base64.
    Binary,
}

impl Publication {
    /// A publication from the server (no sender), with JSON `data`.
    pub fn new(target: Target, event: impl Into<String>, data: Box<RawValue>) -> Publication {
        Publication {
            target,
            event: event.into(),
            data,
            from: None,
            exclude: None,
            position: None,
            spread: false,
            relayed: Relayed::No,
        }
    }

    /// A publication whose data is serialised from a Rust value.
    pub fn json<T: serde::Serialize>(
        target: Target,
        event: impl Into<String>,
        data: &T,
    ) -> Result<Publication, serde_json::Error> {
        let raw = serde_json::value::to_raw_value(data)?;
        Ok(Publication::new(target, event, raw))
    }
}

/// The event name native and Socket.IO members see for a relayed frame.
pub const RELAY_EVENT: &str = "message";

/// The WebSocket frame a relayed publication carries, as its client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayedFrame {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
}

impl Publication {
    /// A text frame relayed to `target`: event [`RELAY_EVENT`], `data` the
    /// text itself when it is JSON (kept byte for byte), else a JSON string of it.
    pub fn relayed_text(target: Target, text: &str) -> Publication {
        // One parse. `from_string` trims surrounding whitespace: such a frame
        // is kept as text, so that endpoint members still get it as sent.
        let (data, relayed) = match RawValue::from_string(text.to_owned()) {
            Ok(raw)
                if raw.get().len() == text.len()
                    && json_depth_within(text.as_bytes(), MAX_JSON_DEPTH) =>
            {
                (raw, Relayed::Json)
            }
            _ => (json_string(text), Relayed::Text),
        };
        let mut p = Publication::new(target, RELAY_EVENT, data);
        p.relayed = relayed;
        p
    }

    /// A binary frame relayed to `target`: event [`RELAY_EVENT`], `data` a
    /// JSON string of its bytes in base64.
    pub fn relayed_binary(target: Target, bytes: &[u8]) -> Publication {
        use base64::Engine as _;
        let text = base64::engine::general_purpose::STANDARD.encode(bytes);
        let mut p = Publication::new(target, RELAY_EVENT, json_string(&text));
        p.relayed = Relayed::Binary;
        p
    }

    /// The frame a relayed publication carries; `None` for any other publication.
    pub fn relayed_frame(&self) -> Option<RelayedFrame> {
        use base64::Engine as _;
        let data = self.data.get();
        match self.relayed {
            Relayed::No => None,
            Relayed::Json => Some(RelayedFrame::Text(data.to_owned())),
            Relayed::Text => Some(RelayedFrame::Text(
                serde_json::from_str::<String>(data).unwrap_or_default(),
            )),
            Relayed::Binary => {
                let text = serde_json::from_str::<String>(data).unwrap_or_default();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .unwrap_or_default();
                Some(RelayedFrame::Binary(bytes))
            }
        }
    }
}

/// A JSON string holding `text`.
fn json_string(text: &str) -> Box<RawValue> {
    // Serialising a string cannot fail.
    serde_json::value::to_raw_value(text).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

/// How deeply JSON from clients may nest (arrays and objects): as deep as
/// serde_json parses into a `Value`, so that every receiving client library
/// can read what roomcast relays.
pub const MAX_JSON_DEPTH: usize = 128;

/// Whether the JSON text `json` nests arrays and objects at most `max` deep.
/// A linear scan that skips strings; `json` is assumed to be valid JSON.
pub fn json_depth_within(json: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// A user's first connection joined a room, or their last one left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEvent {
    /// The room.
    pub room: String,
    /// Joined or left.
    pub kind: PresenceKind,
    /// The user.
    pub user: Arc<str>,
    /// The connection whose join or leave caused the event.
    pub conn: ConnId,
}

/// See [`PresenceEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceKind {
    /// The user's first connection joined.
    Join,
    /// The user's last connection left.
    Leave,
}

impl PresenceKind {
    /// `"join"` or `"leave"`.
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceKind::Join => "join",
            PresenceKind::Leave => "leave",
        }
    }
}

/// Whose connections a server-side command acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// Every connection of a user, on every node.
    User(String),
    /// One connection.
    Conn(ConnId),
}

/// A server-side action carried to every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Put connections into a room.
    Join {
        /// Whose connections.
        who: Who,
        /// The room.
        room: String,
    },
    /// Take connections out of a room.
    Leave {
        /// Whose connections.
        who: Who,
        /// The room.
        room: String,
    },
    /// Take every member out of a room.
    CloseRoom {
        /// The room.
        room: String,
    },
    /// Close connections.
    Disconnect {
        /// Whose connections.
        who: Who,
        /// The code and reason the clients are given.
        reason: Disconnect,
    },
    /// Bind a user to a connection that has none (applied by its node).
    Bind {
        /// The connection.
        conn: ConnId,
        /// The user id.
        user: String,
    },
}

/// What brokers carry between nodes.
#[derive(Debug, Clone)]
pub enum Payload {
    /// A message for clients.
    Publication(Arc<Publication>),
    /// A presence change, for the room's members.
    Presence(PresenceEvent),
    /// A server-side action.
    Command(Command),
}

/// A [`Payload`] and the node it came from.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The node that sent it; brokers do not hand it back to that node.
    pub origin: NodeId,
    /// What it carries.
    pub payload: Payload,
}

/// Which nodes need an envelope; see [`Envelope::route`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// Nodes with members in the room.
    Room(&'a str),
    /// Nodes with connections of the user.
    User(&'a str),
    /// The one node holding the connection.
    Node(NodeId),
    /// Every node.
    All,
}

impl Envelope {
    /// The narrowest set of nodes that need the envelope.
    pub fn route(&self) -> Route<'_> {
        match &self.payload {
            Payload::Publication(p) => match &p.target {
                Target::Room(r) => Route::Room(r),
                Target::User(u) => Route::User(u),
                Target::Conn(c) => Route::Node(c.node()),
                Target::All => Route::All,
            },
            Payload::Presence(e) => Route::Room(&e.room),
            Payload::Command(c) => match c {
                Command::Join { who, .. }
                | Command::Leave { who, .. }
                | Command::Disconnect { who, .. } => match who {
                    Who::User(u) => Route::User(u),
                    Who::Conn(c) => Route::Node(c.node()),
                },
                Command::CloseRoom { room } => Route::Room(room),
                Command::Bind { conn, .. } => Route::Node(conn.node()),
            },
        }
    }

    /// The room a broker may use to route the envelope only to nodes with members in it.
    pub fn room(&self) -> Option<&str> {
        match &self.payload {
            Payload::Publication(p) => match &p.target {
                Target::Room(r) => Some(r),
                _ => None,
            },
            Payload::Presence(e) => Some(&e.room),
            Payload::Command(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_depth_counts_arrays_and_objects_outside_strings() {
        assert!(json_depth_within(br#"{"a":[1,{"b":2}]}"#, 3));
        assert!(!json_depth_within(br#"{"a":[1,{"b":2}]}"#, 2));
        assert!(json_depth_within(br#"{"a":"[[[[[[\"{{{{"}"#, 1));
        assert!(json_depth_within(br#"[[],[],[]]"#, 2));
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(!json_depth_within(deep.as_bytes(), MAX_JSON_DEPTH));
        assert!(json_depth_within(b"1", 0));
    }
}
