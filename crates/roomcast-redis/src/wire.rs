//! How envelopes travel between roomcast nodes over Redis: one compact JSON
//! object per message. Publication data is copied through as raw JSON, never
//! re-parsed into a value.

use std::borrow::Cow;
use std::sync::Arc;

use roomcast_core::{
    Command, ConnId, Disconnect, Envelope, NodeId, Payload, PresenceEvent, PresenceKind,
    Publication, Relayed, Sender, StreamPosition, Target, Who,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Publish,
    Presence,
    Join,
    Leave,
    CloseRoom,
    Disconnect,
    Bind,
}

/// The JSON object on the wire. Absent fields are left out.
#[derive(Serialize, Deserialize, Debug)]
struct Wire<'a> {
    /// Origin node.
    o: u32,
    k: Kind,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    room: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    user: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    conn: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    all: bool,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    event: Option<Cow<'a, str>>,
    /// Present (possibly JSON `null`) for publications only.
    #[serde(
        borrow,
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    data: Option<&'a RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from_conn: Option<u64>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    from_user: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exclude: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    spread: bool,
    /// A relayed endpoint frame: 1 JSON text, 2 other text, 3 binary.
    #[serde(default, skip_serializing_if = "is_zero")]
    relayed: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    epoch: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    /// Presence: `true` for a join, `false` for a leave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    joined: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    reason: Option<Cow<'a, str>>,
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

/// A field that is there is `Some`, even when it holds `null`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

impl<'a> Wire<'a> {
    fn new(origin: NodeId, k: Kind) -> Wire<'a> {
        Wire {
            o: origin.0,
            k,
            room: None,
            user: None,
            conn: None,
            all: false,
            event: None,
            data: None,
            from_conn: None,
            from_user: None,
            exclude: None,
            spread: false,
            relayed: 0,
            offset: None,
            epoch: None,
            seq: None,
            joined: None,
            code: None,
            reason: None,
        }
    }

    fn who(&mut self, who: &'a Who) {
        match who {
            Who::User(u) => self.user = Some(Cow::Borrowed(u)),
            Who::Conn(c) => self.conn = Some(c.0),
        }
    }
}

/// The envelope as bytes for Redis.
pub fn encode(env: &Envelope) -> Vec<u8> {
    let mut w = Wire::new(env.origin, Kind::Publish);
    match &env.payload {
        Payload::Publication(p) => {
            match &p.target {
                Target::Room(r) => w.room = Some(Cow::Borrowed(r)),
                Target::User(u) => w.user = Some(Cow::Borrowed(u)),
                Target::Conn(c) => w.conn = Some(c.0),
                Target::All => w.all = true,
            }
            w.event = Some(Cow::Borrowed(&p.event));
            w.data = Some(&p.data);
            if let Some(from) = &p.from {
                w.from_conn = Some(from.conn.0);
                w.from_user = from.user.as_deref().map(Cow::Borrowed);
            }
            w.exclude = p.exclude.map(|c| c.0);
            w.spread = p.spread;
            w.relayed = match p.relayed {
                Relayed::No => 0,
                Relayed::Json => 1,
                Relayed::Text => 2,
                Relayed::Binary => 3,
            };
            if let Some(pos) = &p.position {
                w.offset = Some(pos.offset);
                w.epoch = Some(Cow::Borrowed(&pos.epoch));
                w.seq = Some(pos.seq);
            }
        }
        Payload::Presence(e) => {
            w.k = Kind::Presence;
            w.room = Some(Cow::Borrowed(&e.room));
            w.user = Some(Cow::Borrowed(&e.user));
            w.conn = Some(e.conn.0);
            w.joined = Some(e.kind == PresenceKind::Join);
        }
        Payload::Command(c) => match c {
            Command::Join { who, room } | Command::Leave { who, room } => {
                w.k = if matches!(c, Command::Join { .. }) {
                    Kind::Join
                } else {
                    Kind::Leave
                };
                w.who(who);
                w.room = Some(Cow::Borrowed(room));
            }
            Command::CloseRoom { room } => {
                w.k = Kind::CloseRoom;
                w.room = Some(Cow::Borrowed(room));
            }
            Command::Disconnect { who, reason } => {
                w.k = Kind::Disconnect;
                w.who(who);
                w.code = Some(reason.code);
                w.reason = Some(Cow::Borrowed(&reason.reason));
            }
            Command::Bind { conn, user } => {
                w.k = Kind::Bind;
                w.conn = Some(conn.0);
                w.user = Some(Cow::Borrowed(user));
            }
        },
    }
    serde_json::to_vec(&w).expect("an envelope always serialises")
}

/// What was wrong with a message on a roomcast channel.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not the JSON object `encode` writes.
    #[error("malformed envelope: {0}")]
    Json(#[from] serde_json::Error),
    /// A field the kind needs is missing.
    #[error("envelope of kind {0:?} lacks `{1}`")]
    Missing(&'static str, &'static str),
}

fn need<T>(v: Option<T>, kind: &'static str, field: &'static str) -> Result<T, DecodeError> {
    v.ok_or(DecodeError::Missing(kind, field))
}

fn who(w: &Wire<'_>, kind: &'static str) -> Result<Who, DecodeError> {
    match (&w.user, w.conn) {
        (Some(u), _) => Ok(Who::User(u.to_string())),
        (None, Some(c)) => Ok(Who::Conn(ConnId(c))),
        _ => Err(DecodeError::Missing(kind, "user or conn")),
    }
}

/// Bytes from Redis back into an envelope.
pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    let w: Wire<'_> = serde_json::from_slice(bytes)?;
    let room = |kind| need(w.room.as_deref().map(str::to_owned), kind, "room");
    let payload = match w.k {
        Kind::Publish => {
            let target = match (&w.room, &w.user, w.conn, w.all) {
                (Some(r), _, _, _) => Target::Room(r.to_string()),
                (_, Some(u), _, _) => Target::User(u.to_string()),
                (_, _, Some(c), _) => Target::Conn(ConnId(c)),
                (_, _, _, true) => Target::All,
                _ => return Err(DecodeError::Missing("publish", "target")),
            };
            let data: Box<RawValue> = need(w.data, "publish", "data")?.to_owned();
            let mut p =
                Publication::new(target, need(w.event.as_deref(), "publish", "event")?, data);
            p.from = w.from_conn.map(|c| Sender {
                conn: ConnId(c),
                user: w.from_user.as_deref().map(Arc::from),
            });
            p.exclude = w.exclude.map(ConnId);
            p.spread = w.spread;
            p.relayed = match w.relayed {
                1 => Relayed::Json,
                2 => Relayed::Text,
                3 => Relayed::Binary,
                _ => Relayed::No,
            };
            p.position = match (w.offset, &w.epoch) {
                (Some(offset), Some(epoch)) => Some(StreamPosition {
                    offset,
                    epoch: Arc::from(&**epoch),
                    seq: w.seq.unwrap_or(0),
                }),
                _ => None,
            };
            Payload::Publication(Arc::new(p))
        }
        Kind::Presence => Payload::Presence(PresenceEvent {
            room: room("presence")?,
            kind: if need(w.joined, "presence", "joined")? {
                PresenceKind::Join
            } else {
                PresenceKind::Leave
            },
            user: Arc::from(need(w.user.as_deref(), "presence", "user")?),
            conn: ConnId(need(w.conn, "presence", "conn")?),
        }),
        Kind::Join => Payload::Command(Command::Join {
            who: who(&w, "join")?,
            room: room("join")?,
        }),
        Kind::Leave => Payload::Command(Command::Leave {
            who: who(&w, "leave")?,
            room: room("leave")?,
        }),
        Kind::CloseRoom => Payload::Command(Command::CloseRoom {
            room: room("close_room")?,
        }),
        Kind::Disconnect => Payload::Command(Command::Disconnect {
            who: who(&w, "disconnect")?,
            reason: Disconnect::custom(
                need(w.code, "disconnect", "code")?,
                w.reason.as_deref().unwrap_or(""),
            ),
        }),
        Kind::Bind => Payload::Command(Command::Bind {
            conn: ConnId(need(w.conn, "bind", "conn")?),
            user: need(w.user.as_deref(), "bind", "user")?.to_owned(),
        }),
    };
    Ok(Envelope {
        origin: NodeId(w.o),
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(env: Envelope) -> Envelope {
        let bytes = encode(&env);
        decode(&bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)))
    }

    #[test]
    fn publications_keep_every_field() {
        let mut p = Publication::json(
            Target::Room("chat:1".into()),
            "msg",
            &serde_json::json!({"t": "hé \"q\""}),
        )
        .unwrap();
        p.from = Some(Sender {
            conn: ConnId(0x0102_0000_0000_0003),
            user: Some("ann".into()),
        });
        p.exclude = Some(ConnId(9));
        p.spread = true;
        p.relayed = Relayed::Text;
        p.position = Some(StreamPosition {
            offset: 42,
            epoch: "ep".into(),
            seq: 7,
        });
        let env = round_trip(Envelope {
            origin: NodeId(0x0100_0042),
            payload: Payload::Publication(Arc::new(p.clone())),
        });
        assert_eq!(env.origin, NodeId(0x0100_0042));
        let Payload::Publication(q) = env.payload else {
            panic!("not a publication")
        };
        assert_eq!(q.target, p.target);
        assert_eq!(q.event, p.event);
        assert_eq!(q.data.get(), p.data.get());
        assert_eq!(q.from, p.from);
        assert_eq!(q.exclude, p.exclude);
        assert!(q.spread);
        assert_eq!(q.relayed, Relayed::Text);
        assert_eq!(q.position, p.position);
        for target in [
            Target::User("u".into()),
            Target::Conn(ConnId(5)),
            Target::All,
        ] {
            let env = round_trip(Envelope {
                origin: NodeId(1),
                payload: Payload::Publication(Arc::new(
                    Publication::json(target.clone(), "e", &()).unwrap(),
                )),
            });
            let Payload::Publication(q) = env.payload else {
                panic!()
            };
            assert_eq!(q.target, target);
            assert_eq!(q.data.get(), "null");
        }
    }

    #[test]
    fn presence_and_commands_round_trip() {
        let presence = PresenceEvent {
            room: "r".into(),
            kind: PresenceKind::Leave,
            user: "bob".into(),
            conn: ConnId(77),
        };
        let Payload::Presence(e) = round_trip(Envelope {
            origin: NodeId(1),
            payload: Payload::Presence(presence.clone()),
        })
        .payload
        else {
            panic!()
        };
        assert_eq!(e, presence);
        for cmd in [
            Command::Join {
                who: Who::User("u".into()),
                room: "r".into(),
            },
            Command::Leave {
                who: Who::Conn(ConnId(3)),
                room: "r".into(),
            },
            Command::CloseRoom { room: "r".into() },
            Command::Bind {
                conn: ConnId(7),
                user: "alice".into(),
            },
            Command::Disconnect {
                who: Who::User("u".into()),
                reason: Disconnect::custom(4500, "bye"),
            },
        ] {
            let Payload::Command(c) = round_trip(Envelope {
                origin: NodeId(1),
                payload: Payload::Command(cmd.clone()),
            })
            .payload
            else {
                panic!()
            };
            assert_eq!(c, cmd);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"{",
            b"[]",
            br#"{"o":1,"k":"publish"}"#,
            br#"{"o":1,"k":"publish","room":"r","event":"e"}"#,
            br#"{"o":1,"k":"join","room":"r"}"#,
            br#"{"o":1,"k":"nope"}"#,
            br#"{"o":1,"k":"disconnect","user":"u"}"#,
        ] {
            assert!(decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
