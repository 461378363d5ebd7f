//! The native protocol: JSON text frames over a plain WebSocket at `/ws`.
//!
//! Pure functions over strings: [`decode`] turns a client frame into a
//! [`ClientCommand`], the `encode_*` functions build server frames, and
//! [`NativeProtocol`] is the hub's encoder. `docs/protocol.md` is the reference.
//! `socket.rs` serves one connection: the upgrade, then a task that decodes
//! frames into calls of the command layer.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use roomcast_core::history::Since;
use roomcast_core::{Disconnect, Frame, PresenceEvent, Protocol, Publication, Target};

use crate::codes::Code;

mod socket;
pub(crate) use socket::{upgrade, Endpoint};

/// A client command, with the reply id it asked for.
#[derive(Debug)]
pub struct Request {
    /// The `id` to echo in the reply, if the client asked for one.
    pub id: Option<u64>,
    /// What the client asked for.
    pub command: ClientCommand,
}

/// What a client can ask for.
#[derive(Debug)]
pub enum ClientCommand {
    /// Present a token, an auth payload for the backend (proxy mode) or, in
    /// open mode, a user id.
    Auth {
        /// A connection token.
        token: Option<String>,
        /// A client-chosen user id (open mode).
        user: Option<String>,
        /// An auth payload for the connect proxy.
        data: Option<Value>,
    },
    /// Present a fresh token for the same user before the current one expires.
    Refresh {
        /// The new token.
        token: String,
    },
    /// An event for the backend (the event proxy); its answer is the ack.
    Rpc {
        /// The event name.
        event: String,
        /// The data.
        data: Value,
    },
    /// Join a room, replaying what was published after `since` (rooms with history).
    Join {
        /// The room.
        room: String,
        /// The last position the client has.
        since: Option<Since>,
    },
    /// Leave a room.
    Leave {
        /// The room.
        room: String,
    },
    /// Publish to a room.
    Publish {
        /// The room.
        room: String,
        /// The event name.
        event: String,
        /// The data.
        data: Box<RawValue>,
        /// Do not deliver to the sender.
        exclude_self: bool,
    },
    /// Send to every connection of a user.
    Send {
        /// The user.
        user: String,
        /// The event name.
        event: String,
        /// The data.
        data: Box<RawValue>,
    },
    /// Send to every connection.
    Broadcast {
        /// The event name.
        event: String,
        /// The data.
        data: Box<RawValue>,
    },
    /// Ask who is in a room.
    Presence {
        /// The room.
        room: String,
    },
    /// Merge into the connection's session data.
    Session {
        /// Keys to set (null removes).
        data: Map<String, Value>,
    },
    /// Ask for a pong.
    Ping,
}

/// Why a client frame was not understood; answered with an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The reply id, if the frame got far enough to have one.
    pub id: Option<u64>,
    /// `bad_request` or `unknown_type`.
    pub code: Code,
    /// What was wrong, naming the field.
    pub message: String,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "type")]
    ty: Option<String>,
    id: Option<u64>,
    token: Option<String>,
    user: Option<String>,
    room: Option<String>,
    event: Option<String>,
    data: Option<Box<RawValue>>,
    exclude_self: Option<bool>,
    since: Option<RawSince>,
}

/// `"since":{"offset":N,"epoch":"..."}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSince {
    offset: u64,
    epoch: String,
}

fn json_value(raw: &RawValue) -> Value {
    // A RawValue is valid JSON, so this parses.
    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).expect("null is JSON")
}

/// Decodes one client text frame. An error carries the frame's `id` whenever
/// the frame is a JSON object with a readable one ([`request_id`]), whatever
/// else is wrong with it.
pub fn decode(text: &str) -> Result<Request, DecodeError> {
    decode_command(text).map_err(|mut e| {
        if e.id.is_none() {
            e.id = request_id(text);
        }
        e
    })
}

/// The top-level `id` of a frame that is a JSON object, when it is a
/// non-negative integer, without decoding the rest: found in frames that are
/// otherwise wrong (a field of the wrong type, nesting too deep, trailing
/// characters), so that their error can name it. Reads without recursion.
pub fn request_id(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let mut i = 0;
    let ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    // The end of the string starting at b[i] == '"' (the index after its closing quote).
    let string_end = |mut i: usize| -> Option<usize> {
        i += 1;
        while i < b.len() {
            match b[i] {
                b'\\' => i += 2,
                b'"' => return Some(i + 1),
                _ => i += 1,
            }
        }
        None
    };
    ws(&mut i);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        ws(&mut i);
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let end = string_end(i)?;
        let raw_key = &text[i..end];
        let is_id = raw_key == "\"id\""
            || (raw_key.contains('\\')
                && serde_json::from_str::<String>(raw_key).is_ok_and(|k| k == "id"));
        i = end;
        ws(&mut i);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i += 1;
        ws(&mut i);
        if is_id {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            let after = b.get(i).copied();
            let ends = matches!(after, None | Some(b',' | b'}'))
                || after.is_some_and(|c| c.is_ascii_whitespace());
            return if i > start && ends {
                text[start..i].parse().ok()
            } else {
                None
            };
        }
        // Skip the value: strings, and nesting by depth alone.
        let mut depth = 0usize;
        loop {
            match b.get(i)? {
                b'"' => {
                    i = string_end(i)?;
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth == 0 => break,
                b'}' | b']' => depth -= 1,
                b',' if depth == 0 => break,
                _ => {}
            }
            i += 1;
        }
        match b.get(i)? {
            b',' => i += 1,
            _ => return None,
        }
    }
}

fn decode_command(text: &str) -> Result<Request, DecodeError> {
    let first = text.trim_start().as_bytes().first().copied();
    if first != Some(b'{') && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
        return Err(DecodeError {
            id: None,
            code: Code::BAD_REQUEST,
            message: "a command is a JSON object with a \"type\"".to_owned(),
        });
    }
    if !roomcast_core::json_depth_within(text.as_bytes(), roomcast_core::MAX_JSON_DEPTH) {
        return Err(DecodeError {
            id: None,
            code: Code::BAD_REQUEST,
            message: format!(
                "JSON nested deeper than {} levels",
                roomcast_core::MAX_JSON_DEPTH
            ),
        });
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let raw: Raw = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if inner.is_data() && path != "." {
            format!("field `{path}`: {inner}")
        } else if inner.is_data() {
            "a command is a JSON object with a \"type\"".to_owned()
        } else {
            format!("invalid JSON: {inner}")
        };
        DecodeError {
            id: None,
            code: Code::BAD_REQUEST,
            message,
        }
    })?;
    let id = raw.id;
    if de.end().is_err() {
        return Err(DecodeError {
            id,
            code: Code::BAD_REQUEST,
            message: "invalid JSON: trailing characters after the command".to_owned(),
        });
    }
    let missing = |field: &str| DecodeError {
        id,
        code: Code::BAD_REQUEST,
        message: format!("missing field `{field}`"),
    };
    let Some(ty) = raw.ty else {
        return Err(missing("type"));
    };
    let room = || raw.room.clone().ok_or_else(|| missing("room"));
    let event = || raw.event.clone().ok_or_else(|| missing("event"));
    let command = match ty.as_str() {
        // Which credential is missing depends on the mode: the server says.
        "auth" => ClientCommand::Auth {
            token: raw.token,
            user: raw.user,
            data: raw.data.as_deref().map(json_value),
        },
        "refresh" => ClientCommand::Refresh {
            token: raw.token.ok_or_else(|| missing("token"))?,
        },
        "rpc" => ClientCommand::Rpc {
            event: event()?,
            data: raw.data.as_deref().map(json_value).unwrap_or(Value::Null),
        },
        "join" => ClientCommand::Join {
            room: room()?,
            since: raw.since.map(|s| Since::Offset {
                offset: s.offset,
                epoch: s.epoch,
            }),
        },
        "leave" => ClientCommand::Leave { room: room()? },
        "publish" => ClientCommand::Publish {
            room: room()?,
            event: event()?,
            data: raw.data.unwrap_or_else(null),
            exclude_self: raw.exclude_self.unwrap_or(false),
        },
        "send" => ClientCommand::Send {
            user: raw.user.ok_or_else(|| missing("user"))?,
            event: event()?,
            data: raw.data.unwrap_or_else(null),
        },
        "broadcast" => ClientCommand::Broadcast {
            event: event()?,
            data: raw.data.unwrap_or_else(null),
        },
        "presence" => ClientCommand::Presence { room: room()? },
        "session" => {
            let data = raw.data.ok_or_else(|| missing("data"))?;
            match serde_json::from_str::<Map<String, Value>>(data.get()) {
                Ok(data) => ClientCommand::Session { data },
                Err(_) => {
                    return Err(DecodeError {
                        id,
                        code: Code::BAD_REQUEST,
                        message: "field `data` must be a JSON object".to_owned(),
                    })
                }
            }
        }
        "ping" => ClientCommand::Ping,
        other => {
            return Err(DecodeError {
                id,
                code: Code::UNKNOWN_TYPE,
                message: format!("unknown command type `{other}`"),
            })
        }
    };
    Ok(Request { id, command })
}

fn to_frame<T: Serialize>(value: &T) -> Frame {
    // Serialising these plain structs cannot fail.
    Frame::text(serde_json::to_string(value).unwrap_or_default())
}

#[derive(Serialize)]
struct FromOut<'a> {
    conn: String,
    user: Option<&'a str>,
}

#[derive(Serialize)]
struct MessageOut<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conn: Option<String>,
    event: &'a str,
    data: &'a RawValue,
    from: Option<FromOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a str>,
}

/// `{"type":"message",...}` for a publication.
pub fn encode_message(p: &Publication) -> Frame {
    to_frame(&message_out(p))
}

/// The fields of a publication's `message` frame, as a JSON object (the HTTP
/// API's history shows publications this way).
pub fn message_fields(p: &Publication) -> Map<String, Value> {
    match serde_json::to_value(message_out(p)) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

fn message_out(p: &Publication) -> MessageOut<'_> {
    let (room, user, conn) = match &p.target {
        Target::Room(r) => (Some(r.as_str()), None, None),
        Target::User(u) => (None, Some(u.as_str()), None),
        Target::Conn(c) => (None, None, Some(c.to_string())),
        Target::All => (None, None, None),
    };
    MessageOut {
        ty: "message",
        room,
        user,
        conn,
        event: &p.event,
        data: &p.data,
        from: p.from.as_ref().map(|f| FromOut {
            conn: f.conn.to_string(),
            user: f.user.as_deref(),
        }),
        offset: p.position.as_ref().map(|s| s.offset),
        epoch: p.position.as_ref().map(|s| &*s.epoch),
    }
}

/// `{"type":"presence","room":...,"event":"join"|"leave","user":...,"conn":...}`.
pub fn encode_presence(e: &PresenceEvent) -> Frame {
    to_frame(&serde_json::json!({
        "type": "presence",
        "room": e.room,
        "event": e.kind.as_str(),
        "user": &*e.user,
        "conn": e.conn.to_string(),
    }))
}

/// `{"type":"joined"|"left","room":...}`: the server changed the connection's rooms.
pub fn encode_membership(room: &str, joined: bool) -> Frame {
    to_frame(&serde_json::json!({
        "type": if joined { "joined" } else { "left" },
        "room": room,
    }))
}

/// `{"type":"disconnect","code":N,"reason":"...","reconnect":bool}`, sent before a close.
pub fn encode_disconnect(d: &Disconnect) -> Frame {
    to_frame(&serde_json::json!({
        "type": "disconnect",
        "code": d.code,
        "reason": d.reason,
        "reconnect": d.reconnect(),
    }))
}

/// `{"type":"error","id":N,"code":"...","message":"..."}`.
pub fn encode_error(id: Option<u64>, code: &str, message: &str) -> Frame {
    to_frame(&serde_json::json!({
        "type": "error",
        "id": id,
        "code": code,
        "message": message,
    }))
}

/// `{"type":"ack","id":N, ...fields}`; `fields` must be a JSON object or null.
pub fn encode_ack(id: u64, fields: Value) -> Frame {
    let mut obj = match fields {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    obj.insert("type".into(), "ack".into());
    obj.insert("id".into(), id.into());
    to_frame(&Value::Object(obj))
}

/// The native protocol's encoder for the hub.
#[derive(Debug, Default)]
pub struct NativeProtocol;

impl Protocol for NativeProtocol {
    fn encode_publication(&self, publication: &Publication) -> Frame {
        encode_message(publication)
    }

    fn encode_presence(&self, event: &PresenceEvent) -> Option<Frame> {
        Some(encode_presence(event))
    }

    fn encode_membership(&self, room: &str, joined: bool) -> Option<Frame> {
        Some(encode_membership(room, joined))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomcast_core::{ConnId, PresenceKind, Sender, StreamPosition};

    fn text(f: Frame) -> String {
        f.as_text().unwrap().to_owned()
    }

    #[test]
    fn decodes_every_command() {
        let r = decode(r#"{"type":"join","room":"lobby","id":7}"#).unwrap();
        assert_eq!(r.id, Some(7));
        assert!(matches!(r.command, ClientCommand::Join { room, since: None } if room == "lobby"));
        let r = decode(r#"{"type":"join","room":"h","since":{"offset":4,"epoch":"e"}}"#).unwrap();
        assert!(matches!(
            r.command,
            ClientCommand::Join { since: Some(Since::Offset { offset: 4, ref epoch }), .. } if epoch == "e"
        ));
        let e =
            decode(r#"{"type":"join","room":"h","since":{"offset":-1,"epoch":"e"}}"#).unwrap_err();
        assert!(e.message.contains("since.offset"), "{}", e.message);
        let r = decode(r#"{"type":"publish","room":"r","event":"chat","data":{"a":[1,2]},"exclude_self":true}"#).unwrap();
        match r.command {
            ClientCommand::Publish {
                room,
                event,
                data,
                exclude_self,
            } => {
                assert_eq!(
                    (room.as_str(), event.as_str(), data.get(), exclude_self),
                    ("r", "chat", r#"{"a":[1,2]}"#, true)
                );
            }
            c => panic!("{c:?}"),
        }
        let r = decode(r#"{"type":"publish","room":"r","event":"e"}"#).unwrap();
        assert!(matches!(r.command, ClientCommand::Publish { data, .. } if data.get() == "null"));
        assert!(
            matches!(decode(r#"{"type":"auth","user":"alice"}"#).unwrap().command, ClientCommand::Auth { user: Some(u), token: None, data: None } if u == "alice")
        );
        assert!(matches!(
            decode(r#"{"type":"send","user":"bob","event":"e","data":1}"#)
                .unwrap()
                .command,
            ClientCommand::Send { .. }
        ));
        assert!(matches!(
            decode(r#"{"type":"broadcast","event":"e","data":1}"#)
                .unwrap()
                .command,
            ClientCommand::Broadcast { .. }
        ));
        assert!(matches!(
            decode(r#"{"type":"presence","room":"r"}"#).unwrap().command,
            ClientCommand::Presence { .. }
        ));
        assert!(matches!(
            decode(r#"{"type":"session","data":{"k":1}}"#)
                .unwrap()
                .command,
            ClientCommand::Session { .. }
        ));
        assert!(matches!(
            decode(r#"{"type":"rpc","event":"chat.send","data":{"t":1}}"#)
                .unwrap()
                .command,
            ClientCommand::Rpc { event, data } if event == "chat.send" && data == serde_json::json!({"t":1})
        ));
        assert!(matches!(
            decode(r#"{"type":"refresh","token":"t"}"#).unwrap().command,
            ClientCommand::Refresh { token } if token == "t"
        ));
        assert!(matches!(
            decode(r#"{"type":"auth","data":{"k":"v"}}"#)
                .unwrap()
                .command,
            ClientCommand::Auth { data: Some(_), .. }
        ));
        assert!(matches!(
            decode(r#"{"type":"ping","extra":"ignored"}"#)
                .unwrap()
                .command,
            ClientCommand::Ping
        ));
    }

    #[test]
    fn bad_input_names_what_is_wrong() {
        let e = decode("not json").unwrap_err();
        assert_eq!(e.code, "bad_request");
        assert!(e.message.starts_with("invalid JSON"), "{}", e.message);
        let e = decode("[1,2]").unwrap_err();
        assert!(e.message.contains("JSON object"), "{}", e.message);
        let e = decode(r#"{"type":"join","id":3}"#).unwrap_err();
        assert_eq!(
            (e.id, e.code.as_str(), e.message.as_str()),
            (Some(3), "bad_request", "missing field `room`")
        );
        let e = decode(r#"{"type":"join","room":5}"#).unwrap_err();
        assert!(e.message.contains("field `room`"), "{}", e.message);
        let e = decode(r#"{"type":"fly","id":1}"#).unwrap_err();
        assert_eq!((e.id, e.code.as_str()), (Some(1), "unknown_type"));
        let e = decode(r#"{"id":1}"#).unwrap_err();
        assert_eq!(e.message, "missing field `type`");
        let e = decode(r#"{"type":"session","data":[1]}"#).unwrap_err();
        assert!(e.message.contains("JSON object"));
        let e = decode(r#"{"type":"publish","room":"r"}"#).unwrap_err();
        assert_eq!(e.message, "missing field `event`");
        let e = decode(r#"{"type":"ping","id":9} xyz"#).unwrap_err();
        assert_eq!((e.id, e.code.as_str()), (Some(9), "bad_request"));
        assert!(decode("{\"type\":\"ping\"} \n").is_ok());
        let deep = format!(
            r#"{{"type":"publish","room":"r","event":"e","data":{}1{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let e = decode(&deep).unwrap_err();
        assert!(e.message.contains("nested deeper"), "{}", e.message);
    }

    #[test]
    fn errors_carry_every_readable_id() {
        let cases = [
            (r#"{"type":"join","room":5,"id":14}"#, Some(14)),
            (r#"{"id":14,"type":"join","room":5}"#, Some(14)),
            (
                r#"{"type":"join","room":"h","since":{"offset":3},"id":15}"#,
                Some(15),
            ),
            (r#"{"type":"ping","id":16} trailing"#, Some(16)),
            (r#"{"type":"fly","id":17}"#, Some(17)),
            (
                r#"{"type":"publish","room":"r","event":"e","data":{"id":1,"x":"}"},"id":18,"exclude_self":"no"}"#,
                Some(18),
            ),
            (r#"{"\u0069d":19,"type":5}"#, Some(19)),
            (r#"{"type":5,"id":-1}"#, None),
            (r#"{"type":5,"id":1.5}"#, None),
            (r#"{"type":5,"id":"7"}"#, None),
            (r#"{"type":5,"data":{"id":7}}"#, None),
            (r#"[{"id":7}]"#, None),
            ("not json", None),
        ];
        for (text, id) in cases {
            let e = decode(text).unwrap_err();
            assert_eq!(e.id, id, "{text}: {e:?}");
        }
        let deep = format!(
            r#"{{"type":"publish","room":"r","event":"e","data":{}1{},"id":20}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let e = decode(&deep).unwrap_err();
        assert_eq!((e.id, e.code.as_str()), (Some(20), "bad_request"));
        assert!(e.message.contains("nested deeper"), "{}", e.message);
        let huge = format!(r#"{{"id":21,"data":{}}}"#, "[".repeat(100_000));
        assert_eq!(request_id(&huge), Some(21));
        assert_eq!(request_id(&"{".repeat(100_000)), None);
    }

    #[test]
    fn encodes_messages_literally() {
        let mut p = Publication::json(
            Target::Room("lobby".into()),
            "chat",
            &serde_json::json!({"t":"hi"}),
        )
        .unwrap();
        p.from = Some(Sender {
            conn: ConnId(0x1a),
            user: Some("alice".into()),
        });
        assert_eq!(
            text(encode_message(&p)),
            r#"{"type":"message","room":"lobby","event":"chat","data":{"t":"hi"},"from":{"conn":"000000000000001a","user":"alice"}}"#
        );
        let mut p = Publication::json(Target::User("bob".into()), "n", &1).unwrap();
        p.position = Some(StreamPosition {
            offset: 5,
            epoch: "e1".into(),
            seq: 9,
        });
        assert_eq!(
            text(encode_message(&p)),
            r#"{"type":"message","user":"bob","event":"n","data":1,"from":null,"offset":5,"epoch":"e1"}"#
        );
        let p = Publication::json(Target::All, "x", &"\"quoted\"").unwrap();
        assert_eq!(
            text(encode_message(&p)),
            r#"{"type":"message","event":"x","data":"\"quoted\"","from":null}"#
        );
    }

    #[test]
    fn encodes_control_frames_literally() {
        let e = PresenceEvent {
            room: "r".into(),
            kind: PresenceKind::Leave,
            user: "u".into(),
            conn: ConnId(1),
        };
        assert_eq!(
            text(encode_presence(&e)),
            r#"{"conn":"0000000000000001","event":"leave","room":"r","type":"presence","user":"u"}"#
        );
        assert_eq!(
            text(encode_membership("r", true)),
            r#"{"room":"r","type":"joined"}"#
        );
        assert_eq!(
            text(encode_disconnect(&Disconnect::SLOW)),
            r#"{"code":4001,"reason":"slow consumer","reconnect":true,"type":"disconnect"}"#
        );
        assert_eq!(
            text(encode_error(Some(2), "bad_request", "x")),
            r#"{"code":"bad_request","id":2,"message":"x","type":"error"}"#
        );
        assert_eq!(
            text(encode_ack(9, serde_json::json!({"delivered":3}))),
            r#"{"delivered":3,"id":9,"type":"ack"}"#
        );
    }
}
