//! Layer messages: how channels_redis serialises them, how roomcast names
//! its channels, and how a message maps onto a publication and back.
//!
//! A message is a map with string keys and a `type`. channels_redis writes
//! it as msgpack (the default) or JSON; the core layer puts 12 random bytes
//! in front so that equal messages stay distinct in a sorted set.

pub use rmpv::Value;
use roomcast_core::{ConnId, Disconnect, NodeId, Publication, Relayed, RelayedFrame, Target};

/// How the layer serialises messages (`serializer_format` on the Django side).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// msgpack, channels_redis's default.
    #[default]
    Msgpack,
    /// JSON; byte strings cannot be carried.
    Json,
}

/// A layer message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Over the size limit.
    #[error("message of {0} bytes is over the limit")]
    TooBig(usize),
    /// Shorter than the random prefix.
    #[error("message shorter than its random prefix")]
    Truncated,
    /// Not msgpack (or JSON), or trailing bytes.
    #[error("undecodable message: {0}")]
    Undecodable(String),
    /// Not a map with string keys and a string `type`.
    #[error("not a channels message: {0}")]
    Shape(&'static str),
}

/// How deep a message may nest.
const MAX_DEPTH: usize = 64;

/// A decoded message: its fields in order, `type` among them.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerMessage {
    pub(crate) fields: Vec<(String, Value)>,
}

impl LayerMessage {
    /// A message of `type` with no other field.
    pub fn new(kind: &str) -> LayerMessage {
        LayerMessage {
            fields: vec![("type".to_owned(), Value::from(kind))],
        }
    }

    /// Sets `key` (replacing an earlier value).
    pub fn set(&mut self, key: &str, value: Value) {
        match self.fields.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.fields.push((key.to_owned(), value)),
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Removes `key`, returning its value.
    pub fn take(&mut self, key: &str) -> Option<Value> {
        let i = self.fields.iter().position(|(k, _)| k == key)?;
        Some(self.fields.remove(i).1)
    }

    /// Its `type`.
    pub fn kind(&self) -> &str {
        self.get("type").and_then(Value::as_str).unwrap_or("")
    }

    /// Reads a message as channels_redis wrote it, `prefix` random bytes first.
    pub fn decode(
        bytes: &[u8],
        format: Format,
        prefix: usize,
        max_bytes: usize,
    ) -> Result<LayerMessage, MessageError> {
        if bytes.len() > max_bytes {
            return Err(MessageError::TooBig(bytes.len()));
        }
        let body = bytes.get(prefix..).ok_or(MessageError::Truncated)?;
        let value = match format {
            Format::Msgpack => {
                let mut rd = body;
                let v = rmpv::decode::read_value_with_max_depth(&mut rd, MAX_DEPTH)
                    .map_err(|e| MessageError::Undecodable(e.to_string()))?;
                if !rd.is_empty() {
                    return Err(MessageError::Undecodable(format!(
                        "{} bytes after the value",
                        rd.len()
                    )));
                }
                v
            }
            Format::Json => {
                let v: serde_json::Value = serde_json::from_slice(body)
                    .map_err(|e| MessageError::Undecodable(e.to_string()))?;
                from_json(v)
            }
        };
        let Value::Map(pairs) = value else {
            return Err(MessageError::Shape("not a map"));
        };
        let mut fields = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            let Value::String(k) = k else {
                return Err(MessageError::Shape("a key that is not a string"));
            };
            let k = k
                .into_str()
                .ok_or(MessageError::Shape("a key that is not UTF-8"))?;
            fields.push((k, v));
        }
        let m = LayerMessage { fields };
        if !m.get("type").is_some_and(Value::is_str) {
            return Err(MessageError::Shape("no string type"));
        }
        Ok(m)
    }

    /// Serialises the message as channels_redis would, `prefix` random bytes first.
    pub fn encode(&self, format: Format, prefix: usize) -> Vec<u8> {
        let mut out = random_bytes(prefix);
        match format {
            // Writing into a Vec cannot fail.
            Format::Msgpack => {
                let map = Value::Map(
                    self.fields
                        .iter()
                        .map(|(k, v)| (Value::from(k.as_str()), v.clone()))
                        .collect(),
                );
                let _ = rmpv::encode::write_value(&mut out, &map);
            }
            Format::Json => {
                // Fields in order (a serde_json map would sort them).
                out.push(b'{');
                for (i, (k, v)) in self.fields.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    let _ = serde_json::to_writer(&mut out, k);
                    out.push(b':');
                    let _ = serde_json::to_writer(&mut out, &to_json(v));
                }
                out.push(b'}');
            }
        }
        out
    }
}

fn random_bytes(n: usize) -> Vec<u8> {
    use std::hash::{BuildHasher, Hasher};
    let mut out = Vec::with_capacity(n + 64);
    while out.len() < n {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(out.len());
        out.extend_from_slice(&h.finish().to_le_bytes());
    }
    out.truncate(n);
    out
}

/// JSON as a msgpack value.
pub fn from_json(v: serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Boolean(b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::F64(n.as_f64().unwrap_or(0.0))
            }
        }
        serde_json::Value::String(s) => Value::from(s),
        serde_json::Value::Array(a) => Value::Array(a.into_iter().map(from_json).collect()),
        serde_json::Value::Object(o) => Value::Map(
            o.into_iter()
                .map(|(k, v)| (Value::from(k), from_json(v)))
                .collect(),
        ),
    }
}

/// A msgpack value as JSON: byte strings become a string when they are
/// UTF-8, else an array of byte values; extensions and non-string map keys
/// are left out, NaN and infinities are `null`.
pub fn to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Nil | Value::Ext(..) => J::Null,
        Value::Boolean(b) => J::Bool(*b),
        Value::Integer(i) => match (i.as_i64(), i.as_u64()) {
            (Some(n), _) => J::from(n),
            (None, Some(n)) => J::from(n),
            _ => J::Null,
        },
        Value::F32(f) => serde_json::Number::from_f64(f64::from(*f)).map_or(J::Null, J::Number),
        Value::F64(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::String(s) => match s.as_str() {
            Some(s) => J::String(s.to_owned()),
            None => J::String(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        },
        Value::Binary(b) => match std::str::from_utf8(b) {
            Ok(s) => J::String(s.to_owned()),
            Err(_) => J::Array(b.iter().map(|&x| J::from(x)).collect()),
        },
        Value::Array(a) => J::Array(a.iter().map(to_json).collect()),
        Value::Map(m) => J::Object(
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), to_json(v))))
                .collect(),
        ),
    }
}

/// Whether `name` can be a Channels group: `^[a-zA-Z\d\-_.]+$`, under 100 characters.
pub fn valid_group(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The client prefix of a node's channels: `roomcast-<node>`.
pub fn node_prefix(node: NodeId) -> String {
    format!("{PREFIX_BASE}{node}")
}

/// What every roomcast node's client prefix starts with.
pub(crate) const PREFIX_BASE: &str = "roomcast-";

/// The Channels channel name of a connection: `specific.roomcast-<node>!<conn>`.
pub fn conn_channel(conn: ConnId) -> String {
    format!("specific.{}!{conn}", node_prefix(conn.node()))
}

/// The channel a node registers in the group of one of its rooms:
/// `specific.roomcast-<node>!room.<room>`.
pub(crate) fn room_channel(node: NodeId, room: &str) -> String {
    format!("specific.{}!room.{room}", node_prefix(node))
}

/// Whether a group member is one of roomcast's channels (on any node).
pub(crate) fn is_roomcast_channel(name: &str) -> bool {
    name.strip_prefix("specific.")
        .is_some_and(|r| r.starts_with(PREFIX_BASE))
}

/// What a channel name of this node stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Addressee {
    /// The node's members of a room.
    Room(String),
    /// One of its connections.
    Conn(ConnId),
}

/// Parses `specific.roomcast-<node>!room.<room>` or `…!<conn>` of `node`.
pub(crate) fn addressee(node: NodeId, name: &str) -> Option<Addressee> {
    let local = name
        .strip_prefix("specific.")?
        .strip_prefix(PREFIX_BASE)?
        .strip_prefix(&node.to_string())?
        .strip_prefix('!')?;
    if let Some(room) = local.strip_prefix("room.") {
        return valid_group(room).then(|| Addressee::Room(room.to_owned()));
    }
    let conn: ConnId = local.parse().ok()?;
    (conn.node() == node).then_some(Addressee::Conn(conn))
}

/// What an incoming message asks of its addressees.
#[derive(Debug)]
pub(crate) enum Action {
    /// Deliver this publication (its target is set per addressee).
    Deliver(Publication),
    /// Close the connection (`websocket.close`).
    Close(Disconnect),
}

/// Maps an incoming message (without `__asgi_channel__`): `websocket.send`
/// with `text` or `bytes` is that frame, relayed; `websocket.close` closes a
/// connection; any other type is a publication with event = the type and
/// data = the other fields.
pub(crate) fn incoming(mut m: LayerMessage, target: Target) -> Option<Action> {
    let kind = m.kind().to_owned();
    let is_conn = matches!(target, Target::Conn(_));
    match kind.as_str() {
        "websocket.send" => match (m.get("text"), m.get("bytes")) {
            (Some(Value::String(t)), _) if t.as_str().is_some() => Some(Action::Deliver(
                Publication::relayed_text(target, t.as_str().unwrap_or_default()),
            )),
            (_, Some(Value::Binary(b))) => {
                Some(Action::Deliver(Publication::relayed_binary(target, b)))
            }
            _ => None,
        },
        "websocket.close" if is_conn => {
            let code = m
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .filter(|&c| sendable_close_code(c))
                .unwrap_or(1000);
            let reason = m
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("closed by the application")
                .chars()
                .take(120)
                .collect::<String>();
            Some(Action::Close(Disconnect::custom(code, reason)))
        }
        _ => {
            m.take("type");
            let data = serde_json::Value::Object(
                m.fields
                    .iter()
                    .map(|(k, v)| (k.clone(), to_json(v)))
                    .collect(),
            );
            let raw = serde_json::value::to_raw_value(&data).ok()?;
            Some(Action::Deliver(Publication::new(target, kind, raw)))
        }
    }
}

/// Close codes a server may send: 1000–1003, 1007–1011, 3000–4999.
fn sendable_close_code(c: u16) -> bool {
    matches!(c, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// The message a room publication becomes for the group's other members:
/// `type` = `kind`; a JSON object's fields merged in; a relayed text frame
/// that is not an object as `text`, a binary one as `bytes`; any other data
/// as `data`.
pub(crate) fn outgoing(p: &Publication, kind: &str) -> LayerMessage {
    let mut m = LayerMessage::new(kind);
    let frame = p.relayed_frame();
    let parsed = match (&frame, p.relayed) {
        (_, Relayed::Text | Relayed::Binary) => None,
        _ => serde_json::from_str::<serde_json::Value>(p.data.get()).ok(),
    };
    match (parsed, frame) {
        (Some(serde_json::Value::Object(o)), _) => {
            for (k, v) in o {
                if k != "type" && k != "__asgi_channel__" {
                    m.set(&k, from_json(v));
                }
            }
        }
        (_, Some(RelayedFrame::Text(t))) => m.set("text", Value::from(t)),
        (_, Some(RelayedFrame::Binary(b))) => m.set("bytes", Value::Binary(b)),
        (Some(v), None) => m.set("data", from_json(v)),
        (None, None) => m.set("data", Value::Nil),
    }
    m
}

/// `data` of a publication as raw JSON (for tests).
#[cfg(test)]
fn data(p: &Publication) -> &serde_json::value::RawValue {
    &p.data
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgpack(v: Value, prefix: usize) -> Vec<u8> {
        let mut out = vec![7u8; prefix];
        rmpv::encode::write_value(&mut out, &v).unwrap();
        out
    }

    fn map(pairs: Vec<(&str, Value)>) -> Value {
        Value::Map(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    #[test]
    fn decodes_what_channels_redis_writes_and_round_trips() {
        let bytes = msgpack(
            map(vec![
                ("type", "chat.message".into()),
                ("message", "hi".into()),
            ]),
            12,
        );
        let m = LayerMessage::decode(&bytes, Format::Msgpack, 12, 1 << 20).unwrap();
        assert_eq!(m.kind(), "chat.message");
        assert_eq!(m.get("message").and_then(Value::as_str), Some("hi"));
        let again =
            LayerMessage::decode(&m.encode(Format::Msgpack, 12), Format::Msgpack, 12, 1 << 20);
        assert_eq!(again.unwrap(), m);
        let json = m.encode(Format::Json, 0);
        assert_eq!(json, br#"{"type":"chat.message","message":"hi"}"#);
        let back = LayerMessage::decode(&json, Format::Json, 0, 1 << 20).unwrap();
        assert_eq!(
            (back.kind(), back.get("message")),
            (m.kind(), m.get("message"))
        );
    }

    #[test]
    fn refuses_what_is_not_a_message() {
        let no_type = msgpack(map(vec![("message", "hi".into())]), 0);
        assert!(matches!(
            LayerMessage::decode(&no_type, Format::Msgpack, 0, 1 << 20),
            Err(MessageError::Shape(_))
        ));
        let int_key = msgpack(Value::Map(vec![(1.into(), 2.into())]), 0);
        assert!(LayerMessage::decode(&int_key, Format::Msgpack, 0, 1 << 20).is_err());
        let mut trailing = msgpack(map(vec![("type", "x".into())]), 0);
        trailing.push(0);
        assert!(LayerMessage::decode(&trailing, Format::Msgpack, 0, 1 << 20).is_err());
        assert_eq!(
            LayerMessage::decode(&[1, 2], Format::Msgpack, 12, 1 << 20),
            Err(MessageError::Truncated)
        );
        assert_eq!(
            LayerMessage::decode(&[0; 100], Format::Msgpack, 0, 10),
            Err(MessageError::TooBig(100))
        );
        // Nesting past the limit is refused, not recursed into.
        let mut deep = vec![0x91u8; 10_000];
        deep.push(0xc0);
        assert!(LayerMessage::decode(&deep, Format::Msgpack, 0, 1 << 20).is_err());
    }

    #[test]
    fn names() {
        let node = NodeId(0x0123_4567);
        let conn = ConnId((0x23_4567u64 << 40) | 5);
        assert_eq!(conn.node(), node);
        let c = conn_channel(conn);
        assert_eq!(c, format!("specific.roomcast-01234567!{conn}"));
        assert_eq!(addressee(node, &c), Some(Addressee::Conn(conn)));
        let r = room_channel(node, "chat_lobby");
        assert_eq!(
            addressee(node, &r),
            Some(Addressee::Room("chat_lobby".into()))
        );
        assert_eq!(addressee(NodeId(0x0100_0001), &r), None);
        assert!(is_roomcast_channel(&r));
        assert!(!is_roomcast_channel("specific.abc!def"));
        assert!(valid_group("chat_lobby-1.x"));
        assert!(!valid_group("chat:lobby"));
        assert!(!valid_group(&"a".repeat(100)));
    }

    #[test]
    fn maps_incoming_messages() {
        let room = || Target::Room("r".into());
        let mut send = LayerMessage::new("websocket.send");
        send.set("text", "{\"message\": 1}".into());
        let Some(Action::Deliver(p)) = incoming(send, room()) else {
            panic!()
        };
        assert_eq!(
            p.relayed_frame(),
            Some(RelayedFrame::Text("{\"message\": 1}".into()))
        );
        let mut bin = LayerMessage::new("websocket.send");
        bin.set("bytes", Value::Binary(vec![0, 255]));
        let Some(Action::Deliver(p)) = incoming(bin, room()) else {
            panic!()
        };
        assert_eq!(p.relayed_frame(), Some(RelayedFrame::Binary(vec![0, 255])));
        let mut chat = LayerMessage::new("chat.message");
        chat.set("message", "hi".into());
        let Some(Action::Deliver(p)) = incoming(chat, room()) else {
            panic!()
        };
        assert_eq!(p.event, "chat.message");
        assert_eq!(data(&p).get(), r#"{"message":"hi"}"#);
        let mut close = LayerMessage::new("websocket.close");
        close.set("code", 4321.into());
        let conn = Target::Conn(ConnId(1));
        let Some(Action::Close(d)) = incoming(close.clone(), conn.clone()) else {
            panic!()
        };
        assert_eq!(d.code, 4321);
        close.set("code", 1006.into());
        let Some(Action::Close(d)) = incoming(close, conn) else {
            panic!()
        };
        assert_eq!(d.code, 1000);
    }

    #[test]
    fn maps_outgoing_publications() {
        let room = || Target::Room("r".into());
        let m = outgoing(
            &Publication::relayed_text(room(), r#"{"message":"hi","type":"x"}"#),
            "chat.message",
        );
        assert_eq!(
            m.encode(Format::Json, 0),
            br#"{"type":"chat.message","message":"hi"}"#
        );
        let m = outgoing(
            &Publication::relayed_text(room(), "plain"),
            "roomcast.message",
        );
        assert_eq!(
            m.encode(Format::Json, 0),
            br#"{"type":"roomcast.message","text":"plain"}"#
        );
        let m = outgoing(&Publication::relayed_binary(room(), &[1, 2]), "t");
        assert_eq!(m.get("bytes"), Some(&Value::Binary(vec![1, 2])));
        let p = Publication::new(
            room(),
            "e",
            serde_json::value::RawValue::from_string("[1]".into()).unwrap(),
        );
        assert_eq!(
            outgoing(&p, "t").encode(Format::Json, 0),
            br#"{"type":"t","data":[1]}"#
        );
    }
}
