//! Pure decoders for what existing Socket.IO emitters publish on Redis: bytes
//! in, one protocol-neutral [`EmitterCommand`] out. No I/O, no Redis.
//!
//! - [`python_socketio`]: python-socketio's `RedisManager` channel, pickle
//!   (≤ 5.13) or JSON (≥ 5.14). Pickle goes through [`pickle::load`], a
//!   restricted unpickler that builds plain data and runs nothing.
//! - [`node_broadcast`] and [`node_request`]: Node's `@socket.io/redis-emitter`
//!   (and `@socket.io/redis-adapter`) channels, msgpack through
//!   [`msgpack::read`], or JSON.
//!
//! Every decoder applies [`Limits`] and returns a [`DecodeError`] rather than
//! panic, whatever the bytes. The fixtures in `fixtures/` were captured from
//! the real packages; `fixtures/README.md` says how.

pub mod msgpack;
pub mod pickle;

use serde_json::{Map, Value};

pub use pickle::PyValue;

/// Which sockets a command acts on, as the emitter selected them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Selector {
    /// The Socket.IO namespace, "/" when the emitter gave none.
    pub namespace: String,
    /// Rooms whose members are selected; empty means every socket of the namespace.
    /// (A Socket.IO socket id is also a room name: emitters target one socket this way.)
    pub rooms: Vec<String>,
    /// Rooms (or socket ids) whose members are left out.
    pub except: Vec<String>,
}

/// One thing an emitter asked the Socket.IO servers to do.
#[derive(Debug, Clone, PartialEq)]
pub enum EmitterCommand {
    /// Emit `event` with `args` (zero or more JSON arguments) to the selected sockets.
    Emit {
        /// The sockets to emit to.
        selector: Selector,
        /// The event name.
        event: String,
        /// The event's arguments, in order.
        args: Vec<Value>,
    },
    /// The selected sockets join `rooms`.
    Join {
        /// The sockets that join.
        selector: Selector,
        /// The rooms they join.
        rooms: Vec<String>,
    },
    /// The selected sockets leave `rooms`.
    Leave {
        /// The sockets that leave.
        selector: Selector,
        /// The rooms they leave.
        rooms: Vec<String>,
    },
    /// The selected sockets are disconnected (`close`: also close the underlying transport).
    Disconnect {
        /// The sockets to disconnect.
        selector: Selector,
        /// Whether the underlying transport is closed too.
        close: bool,
    },
    /// Every member leaves `room` (python-socketio close_room).
    CloseRoom {
        /// The namespace of the room.
        namespace: String,
        /// The room every member leaves.
        room: String,
    },
    /// serverSideEmit from a Node emitter: arguments for the servers' own handlers.
    ServerSideEmit {
        /// The namespace, from the request channel's name.
        namespace: String,
        /// The arguments, the event name first.
        args: Vec<Value>,
    },
}

/// Why a message was not turned into a command.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Not valid in the channel's format (bad pickle/msgpack/JSON, wrong shape, missing field).
    #[error("malformed: {0}")]
    Malformed(String),
    /// Well formed but carries something roomcast does not do; the string says what
    /// (e.g. "binary arguments", "emit with callback", "python-socketio callback message",
    /// "node request type 5 (fetchSockets)"). The caller logs and counts it.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Over a size, depth or count cap.
    #[error("too large: {0}")]
    TooLarge(String),
}

/// Caps applied while decoding.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest message accepted, in bytes. Also caps the total length of
    /// the strings a pickle expands to, since its memo can repeat one string
    /// many times. Default 1 MiB.
    pub max_bytes: usize,
    /// The deepest nesting of arrays, maps, lists, tuples, dicts and sets,
    /// counting the message's own top-level container as 1. Default 64. The
    /// decoders recurse this deep, so keep it in the hundreds at most.
    pub max_depth: usize,
    /// The most values (scalars and containers alike) one message may decode
    /// to; also caps the pickle machine's stack and memo. Default 100 000.
    pub max_items: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 1 << 20,
            max_depth: 64,
            max_items: 100_000,
        }
    }
}

pub(crate) fn malformed(what: impl Into<String>) -> DecodeError {
    DecodeError::Malformed(what.into())
}

fn unsupported(what: impl Into<String>) -> DecodeError {
    DecodeError::Unsupported(what.into())
}

pub(crate) fn check_size(bytes: &[u8], limits: &Limits) -> Result<(), DecodeError> {
    if bytes.len() > limits.max_bytes {
        return Err(DecodeError::TooLarge(format!(
            "message of {} bytes, more than {}",
            bytes.len(),
            limits.max_bytes
        )));
    }
    Ok(())
}

pub(crate) fn too_deep(limits: &Limits) -> DecodeError {
    DecodeError::TooLarge(format!("nested deeper than {}", limits.max_depth))
}

pub(crate) fn too_many(limits: &Limits) -> DecodeError {
    DecodeError::TooLarge(format!("more than {} values", limits.max_items))
}

/// One message from python-socketio's channel (default name "socketio"):
/// pickle (python-socketio <= 5.13) or JSON (>= 5.14). Pickle is tried when the
/// first byte is 0x80 (PROTO opcode), JSON otherwise.
///
/// How `data` becomes the arguments:
/// - pickle (≤ 5.13, `data` is the raw value): a tuple is the argument list,
///   `None` is no argument, anything else (a list too) is one argument;
/// - JSON without a `binary` field (5.14.0 and 5.14.1, which also published
///   the raw value): `null` is no argument, anything else (an array too) is
///   one argument;
/// - JSON with a `binary` field (5.14.2 and later): an array is the argument
///   list, as python-socketio ≥ 5.15.1 publishes and reads it (a one-element
///   array is that one argument, `[null]` none); anything else is one
///   argument, `null` none. Nothing in the message tells 5.14.2–5.15.0, which
///   still published the raw value, from 5.15.1: their lists are read as
///   argument lists, as a current python-socketio server reads them too.
///
/// `room` and `skip_sid` are a name or a list of names; integer names become
/// their decimal text (roomcast rooms are strings). An empty `room` list is
/// malformed (python-socketio fails on it) rather than read as "everyone".
/// `NaN` and `Infinity`, which Python's `json.dumps` writes for non-finite
/// floats, are not JSON: such a message is malformed.
pub fn python_socketio(bytes: &[u8], limits: &Limits) -> Result<EmitterCommand, DecodeError> {
    check_size(bytes, limits)?;
    if bytes.first() == Some(&0x80) {
        let PyValue::Dict(entries) = pickle::load(bytes, limits)? else {
            return Err(malformed("python-socketio message is not a dict"));
        };
        let mut fields = Map::new();
        let mut data = None;
        for (key, value) in entries {
            let PyValue::Str(key) = key else {
                return Err(malformed("python-socketio message key is not a str"));
            };
            // Only the fields roomcast reads are converted: `args` of a
            // callback message may hold anything.
            match key.as_str() {
                "data" => data = Some(value),
                "method" | "event" | "namespace" | "room" | "skip_sid" | "callback" | "sid"
                | "binary" => {
                    fields.insert(key, value.into_json()?);
                }
                _ => {}
            }
        }
        python_command(&fields, || {
            Ok(match data {
                None => return Err(malformed("emit without data")),
                Some(PyValue::None) => Vec::new(),
                Some(PyValue::Tuple(items)) => items
                    .into_iter()
                    .map(PyValue::into_json)
                    .collect::<Result<_, _>>()?,
                Some(value) => vec![value.into_json()?],
            })
        })
    } else {
        let Value::Object(mut fields) = parse_json(bytes, limits)? else {
            return Err(malformed("python-socketio message is not a JSON object"));
        };
        let argument_list = fields.contains_key("binary");
        let data = fields.remove("data");
        python_command(&fields, || {
            let raw = match data {
                None => return Err(malformed("emit without data")),
                Some(Value::Array(mut items)) if argument_list => {
                    if items.len() != 1 {
                        return Ok(items);
                    }
                    items.pop().unwrap_or_default()
                }
                Some(value) => value,
            };
            Ok(match raw {
                Value::Null => Vec::new(),
                value => vec![value],
            })
        })
    }
}

/// The command of a python-socketio message whose fields (all but `data`) are
/// JSON; `args` gives the emit's arguments.
fn python_command(
    fields: &Map<String, Value>,
    args: impl FnOnce() -> Result<Vec<Value>, DecodeError>,
) -> Result<EmitterCommand, DecodeError> {
    let method = required_str(fields, "method")?;
    let namespace = match fields.get("namespace") {
        // `namespace or '/'`, as the manager reads it
        None | Some(Value::Null) => "/".to_owned(),
        Some(Value::String(s)) if s.is_empty() => "/".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(malformed("namespace is not a string")),
    };
    let one_socket = |namespace: String| -> Result<Selector, DecodeError> {
        Ok(Selector {
            namespace,
            rooms: vec![required_str(fields, "sid")?.to_owned()],
            except: Vec::new(),
        })
    };
    match method {
        "emit" => {
            let event = required_str(fields, "event")?.to_owned();
            if !matches!(fields.get("callback"), None | Some(Value::Null)) {
                return Err(unsupported("emit with callback"));
            }
            match fields.get("binary") {
                None | Some(Value::Null) | Some(Value::Bool(false)) => {}
                Some(Value::Bool(true)) => return Err(unsupported("binary arguments")),
                Some(_) => return Err(malformed("binary is not a boolean")),
            }
            let rooms = match fields.get("room") {
                Some(Value::Array(items)) if items.is_empty() => {
                    return Err(malformed("room is an empty list"))
                }
                room => room_names(room, "room", true)?,
            };
            let except = room_names(fields.get("skip_sid"), "skip_sid", true)?;
            let args = args()?;
            Ok(EmitterCommand::Emit {
                selector: Selector {
                    namespace,
                    rooms,
                    except,
                },
                event,
                args,
            })
        }
        "disconnect" => Ok(EmitterCommand::Disconnect {
            selector: one_socket(namespace)?,
            close: false,
        }),
        "enter_room" | "leave_room" => {
            let selector = one_socket(namespace)?;
            let rooms = vec![room_name(fields.get("room"), "room")?];
            Ok(if method == "enter_room" {
                EmitterCommand::Join { selector, rooms }
            } else {
                EmitterCommand::Leave { selector, rooms }
            })
        }
        "close_room" => Ok(EmitterCommand::CloseRoom {
            namespace,
            room: room_name(fields.get("room"), "room")?,
        }),
        "callback" => Err(unsupported("python-socketio callback message")),
        other => Err(malformed(format!("unknown method {other:?}"))),
    }
}

/// One message from a Node emitter's broadcast channels (`<prefix>#<nsp>#` and
/// `<prefix>#<nsp>#<room>#`): msgpack `[uid, packet, opts]`.
///
/// `packet` is `{type: 2, data: [event, ...args], nsp}` (a missing `nsp` is
/// "/"); `opts` is `{rooms: [...], except: [...], flags: {...}}`, where
/// missing rooms select the whole namespace and the flags (volatile,
/// compress) are ignored. Arguments read as a Node server would pass them on
/// through `JSON.stringify`: see [`msgpack::read`]. A binary packet (type 5)
/// or bytes anywhere is unsupported, as is a packet with an ack id.
pub fn node_broadcast(bytes: &[u8], limits: &Limits) -> Result<EmitterCommand, DecodeError> {
    let Value::Array(mut message) = msgpack::read(bytes, limits)? else {
        return Err(malformed("broadcast is not an array [uid, packet, opts]"));
    };
    if message.len() < 3 {
        return Err(malformed("broadcast is not an array [uid, packet, opts]"));
    }
    let opts = message.swap_remove(2);
    let Value::Object(mut packet) = message.swap_remove(1) else {
        return Err(malformed("packet is not a map"));
    };
    let Value::Object(opts) = opts else {
        return Err(malformed("opts is not a map"));
    };
    match packet.get("type").and_then(Value::as_u64) {
        Some(2) => {}
        Some(5) => return Err(unsupported("binary arguments")),
        Some(t) => return Err(unsupported(format!("node packet type {t}"))),
        None => return Err(malformed("packet type is not an integer")),
    }
    if !matches!(packet.get("id"), None | Some(Value::Null)) {
        return Err(unsupported("emit with callback"));
    }
    let namespace = match packet.get("nsp") {
        None => "/".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(malformed("packet nsp is not a string")),
    };
    let Some(Value::Array(mut args)) = packet.remove("data") else {
        return Err(malformed("packet data is not an array"));
    };
    if args.is_empty() {
        return Err(malformed("packet data has no event name"));
    }
    let Value::String(event) = args.remove(0) else {
        return Err(malformed("event name is not a string"));
    };
    Ok(EmitterCommand::Emit {
        selector: node_selector(&opts, namespace)?,
        event,
        args,
    })
}

/// One message from a Node emitter's request channel (`<prefix>-request#<nsp>#`):
/// JSON if the first byte is `{`, msgpack otherwise. `namespace` is the nsp taken
/// from the channel name (the request does not carry it).
///
/// Types 2 (socketsJoin), 3 (socketsLeave) and 4 (disconnectSockets) with
/// `opts`, and 6 (serverSideEmit) without an ack, are decoded. The requests
/// that expect an answer are unsupported: 0 (sockets), 1 (allRooms), 2–4
/// aimed at one socket id without `opts` (the adapter's remoteJoin,
/// remoteLeave, remoteDisconnect), 5 (fetchSockets), 6 with a `requestId`,
/// 7 (broadcast with acknowledgement), 8 and 9 (their replies), and any
/// other type.
pub fn node_request(
    bytes: &[u8],
    namespace: &str,
    limits: &Limits,
) -> Result<EmitterCommand, DecodeError> {
    let request = if bytes.first() == Some(&b'{') {
        parse_json(bytes, limits)?
    } else {
        msgpack::read(bytes, limits)?
    };
    let Value::Object(mut request) = request else {
        return Err(malformed("request is not a map"));
    };
    let Some(kind) = request.get("type").and_then(Value::as_u64) else {
        return Err(malformed("request type is not an integer"));
    };
    let name = match kind {
        0 => "sockets",
        1 => "allRooms",
        2 => "socketsJoin",
        3 => "socketsLeave",
        4 => "disconnectSockets",
        5 => "fetchSockets",
        6 => "serverSideEmit",
        7 => "broadcast with acknowledgement",
        8 => "broadcast client count",
        9 => "broadcast acknowledgement",
        _ => return Err(unsupported(format!("node request type {kind}"))),
    };
    let namespace = namespace.to_owned();
    match kind {
        2..=4 => {
            let Some(opts) = request.get("opts") else {
                return Err(unsupported(format!(
                    "node request type {kind} ({name} of one socket id)"
                )));
            };
            let Value::Object(opts) = opts else {
                return Err(malformed("request opts is not a map"));
            };
            let selector = node_selector(opts, namespace)?;
            Ok(match kind {
                2 => EmitterCommand::Join {
                    selector,
                    rooms: room_names(request.get("rooms"), "rooms", false)?,
                },
                3 => EmitterCommand::Leave {
                    selector,
                    rooms: room_names(request.get("rooms"), "rooms", false)?,
                },
                _ => EmitterCommand::Disconnect {
                    selector,
                    close: match request.get("close") {
                        None | Some(Value::Null) => false,
                        Some(Value::Bool(close)) => *close,
                        Some(_) => return Err(malformed("close is not a boolean")),
                    },
                },
            })
        }
        6 => {
            if !matches!(request.get("requestId"), None | Some(Value::Null)) {
                return Err(unsupported("serverSideEmit with acknowledgement"));
            }
            let Some(Value::Array(args)) = request.remove("data") else {
                return Err(malformed("serverSideEmit data is not an array"));
            };
            Ok(EmitterCommand::ServerSideEmit { namespace, args })
        }
        _ => Err(unsupported(format!("node request type {kind} ({name})"))),
    }
}

/// The sockets `opts.rooms` and `opts.except` select in `namespace`.
fn node_selector(opts: &Map<String, Value>, namespace: String) -> Result<Selector, DecodeError> {
    Ok(Selector {
        namespace,
        rooms: room_names(opts.get("rooms"), "opts.rooms", false)?,
        except: room_names(opts.get("except"), "opts.except", false)?,
    })
}

fn required_str<'a>(fields: &'a Map<String, Value>, name: &str) -> Result<&'a str, DecodeError> {
    match fields.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(malformed(format!("{name} is not a string"))),
        None => Err(malformed(format!("missing {name}"))),
    }
}

/// A room name: a string, or an integer as its decimal text.
fn room_name(value: Option<&Value>, field: &str) -> Result<String, DecodeError> {
    match value {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        Some(_) => Err(malformed(format!("{field} is not a room name"))),
        None => Err(malformed(format!("missing {field}"))),
    }
}

/// A list of room names; absent or null is none. `single`: one bare name is
/// accepted too (python-socketio's `room` and `skip_sid`).
fn room_names(
    value: Option<&Value>,
    field: &str,
    single: bool,
) -> Result<Vec<String>, DecodeError> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| room_name(Some(item), field))
            .collect(),
        Some(one) if single => Ok(vec![room_name(Some(one), field)?]),
        Some(_) => Err(malformed(format!("{field} is not a list"))),
    }
}

/// Parses JSON text within `limits`.
fn parse_json(bytes: &[u8], limits: &Limits) -> Result<Value, DecodeError> {
    check_size(bytes, limits)?;
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        // serde_json stops at 128 levels by itself
        if e.to_string().contains("recursion limit") {
            too_deep(limits)
        } else {
            malformed(format!("JSON: {e}"))
        }
    })?;
    let mut items = 0;
    check_json(&value, 1, &mut items, limits)?;
    Ok(value)
}

fn check_json(
    value: &Value,
    depth: usize,
    items: &mut usize,
    limits: &Limits,
) -> Result<(), DecodeError> {
    *items += 1;
    if *items > limits.max_items {
        return Err(too_many(limits));
    }
    let children: Box<dyn Iterator<Item = &Value>> = match value {
        Value::Array(a) => Box::new(a.iter()),
        Value::Object(o) => Box::new(o.values()),
        _ => return Ok(()),
    };
    if depth > limits.max_depth {
        return Err(too_deep(limits));
    }
    for child in children {
        check_json(child, depth + 1, items, limits)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn py(bytes: &[u8]) -> Result<EmitterCommand, DecodeError> {
        python_socketio(bytes, &Limits::default())
    }

    fn broadcast(bytes: &[u8]) -> Result<EmitterCommand, DecodeError> {
        node_broadcast(bytes, &Limits::default())
    }

    fn request(bytes: &[u8], nsp: &str) -> Result<EmitterCommand, DecodeError> {
        node_request(bytes, nsp, &Limits::default())
    }

    fn selector(namespace: &str, rooms: &[&str], except: &[&str]) -> Selector {
        Selector {
            namespace: namespace.into(),
            rooms: rooms.iter().map(|s| s.to_string()).collect(),
            except: except.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn emit(selector: Selector, event: &str, args: Value) -> EmitterCommand {
        let Value::Array(args) = args else { panic!() };
        EmitterCommand::Emit {
            selector,
            event: event.into(),
            args,
        }
    }

    fn is_unsupported(r: Result<EmitterCommand, DecodeError>, what: &str) -> bool {
        matches!(r, Err(DecodeError::Unsupported(w)) if w == what)
    }

    fn is_malformed(r: Result<EmitterCommand, DecodeError>) -> bool {
        matches!(r, Err(DecodeError::Malformed(_)))
    }

    fn is_too_large(r: Result<EmitterCommand, DecodeError>) -> bool {
        matches!(r, Err(DecodeError::TooLarge(_)))
    }

    /// The same emitter calls, captured from python-socketio 5.13 (pickle),
    /// 5.14.0 (JSON, raw data) and 5.18 (JSON, argument list), decode alike.
    macro_rules! python_versions {
        ($name:literal) => {
            [
                &include_bytes!(concat!("fixtures/py513_", $name, ".pickle"))[..],
                &include_bytes!(concat!("fixtures/py514_", $name, ".json"))[..],
                &include_bytes!(concat!("fixtures/py518_", $name, ".json"))[..],
            ]
        };
    }

    #[test]
    fn python_emits_decode_alike_in_every_version() {
        let cases = [
            (
                python_versions!("emit_dict_all"),
                emit(
                    selector("/", &[], &[]),
                    "ping",
                    json!([{"a": 1, "b": [1, 2.5, null, true], "u": "h\u{e9}llo"}]),
                ),
            ),
            (
                python_versions!("emit_none"),
                emit(selector("/", &[], &[]), "bare", json!([])),
            ),
            (
                python_versions!("emit_str_to_sid"),
                emit(
                    selector("/", &["SID123"], &["s1", "s2"]),
                    "direct",
                    json!(["hello"]),
                ),
            ),
        ];
        for (fixtures, expected) in cases {
            for (version, bytes) in ["5.13", "5.14", "5.18"].iter().zip(fixtures) {
                assert_eq!(
                    py(bytes).as_ref(),
                    Ok(&expected),
                    "python-socketio {version}"
                );
            }
        }
    }

    #[test]
    fn python_tuple_data_is_the_argument_list_where_the_version_keeps_it() {
        let three = emit(
            selector("/", &["room1"], &[]),
            "multi",
            json!(["x", 2, {"k": "v"}]),
        );
        let pickled = include_bytes!("fixtures/py513_emit_tuple_room.pickle");
        assert_eq!(py(pickled), Ok(three.clone()));
        let wrapped = include_bytes!("fixtures/py518_emit_tuple_room.json");
        assert_eq!(py(wrapped), Ok(three));
        // 5.14.0 wrote the tuple as a JSON array, indistinguishable from a
        // list: one argument, as the python-socketio servers of 5.14 read it
        let raw = include_bytes!("fixtures/py514_emit_tuple_room.json");
        assert_eq!(
            py(raw),
            Ok(emit(
                selector("/", &["room1"], &[]),
                "multi",
                json!([["x", 2, {"k": "v"}]])
            ))
        );
    }

    #[test]
    fn python_list_data_is_one_argument_where_the_version_says_so() {
        let one_list = emit(
            selector("/chat", &["r1", "r2"], &["sidA"]),
            "items",
            json!([[1, 2, 3]]),
        );
        let pickled = include_bytes!("fixtures/py513_emit_list_rooms_skip.pickle");
        assert_eq!(py(pickled), Ok(one_list.clone()));
        // 5.14.0 published the raw list, without a `binary` field
        let raw = include_bytes!("fixtures/py514_emit_list_rooms_skip.json");
        assert_eq!(py(raw), Ok(one_list.clone()));
        // 5.18 wraps it: [[1, 2, 3]]
        let wrapped = include_bytes!("fixtures/py518_emit_list_rooms_skip.json");
        assert_eq!(py(wrapped), Ok(one_list));
        // 5.15.0 has a `binary` field but still publishes the raw list: it
        // reads as three arguments, as a current python-socketio reads it
        let ambiguous = include_bytes!("fixtures/py515_emit_list_rooms_skip.json");
        assert_eq!(
            py(ambiguous),
            Ok(emit(
                selector("/chat", &["r1", "r2"], &["sidA"]),
                "items",
                json!([1, 2, 3])
            ))
        );
        let dict = include_bytes!("fixtures/py515_emit_dict_all.json");
        assert!(matches!(py(dict), Ok(EmitterCommand::Emit { args, .. }) if args.len() == 1));
    }

    #[test]
    fn python_argument_list_edge_cases() {
        let msg =
            |data: &str| format!(r#"{{"method":"emit","event":"e","data":{data},"binary":false}}"#);
        let args = |data: &str| match py(msg(data).as_bytes()) {
            Ok(EmitterCommand::Emit { args, .. }) => Value::Array(args),
            other => panic!("{other:?}"),
        };
        assert_eq!(args("[]"), json!([]));
        assert_eq!(args("[null]"), json!([]));
        assert_eq!(args("[null, null]"), json!([null, null]));
        assert_eq!(args("[[null]]"), json!([[null]]));
        assert_eq!(args("{\"a\": 1}"), json!([{"a": 1}]));
        assert_eq!(args("null"), json!([]));
        assert_eq!(args("7"), json!([7]));
    }

    #[test]
    fn python_room_commands() {
        for bytes in python_versions!("disconnect") {
            assert_eq!(
                py(bytes),
                Ok(EmitterCommand::Disconnect {
                    selector: selector("/chat", &["SID123"], &[]),
                    close: false
                })
            );
        }
        for bytes in python_versions!("enter_room") {
            assert_eq!(
                py(bytes),
                Ok(EmitterCommand::Join {
                    selector: selector("/chat", &["SID123"], &[]),
                    rooms: vec!["lobby".into()]
                })
            );
        }
        for bytes in python_versions!("leave_room") {
            assert_eq!(
                py(bytes),
                Ok(EmitterCommand::Leave {
                    selector: selector("/", &["SID123"], &[]),
                    rooms: vec!["lobby".into()]
                })
            );
        }
        for bytes in python_versions!("close_room") {
            assert_eq!(
                py(bytes),
                Ok(EmitterCommand::CloseRoom {
                    namespace: "/chat".into(),
                    room: "lobby".into()
                })
            );
        }
    }

    #[test]
    fn python_unsupported_messages() {
        for bytes in python_versions!("callback") {
            assert!(is_unsupported(
                py(bytes),
                "python-socketio callback message"
            ));
        }
        let bin = [
            &include_bytes!("fixtures/py513_emit_bytes.pickle")[..],
            &include_bytes!("fixtures/py513_emit_bytearray.pickle")[..],
            &include_bytes!("fixtures/py515_emit_bytes.json")[..],
            &include_bytes!("fixtures/py518_emit_bytes.json")[..],
        ];
        for bytes in bin {
            assert!(is_unsupported(py(bytes), "binary arguments"));
        }
        let callback = include_bytes!("fixtures/py513_emit_callback.pickle");
        assert!(is_unsupported(py(callback), "emit with callback"));
        let json_callback =
            br#"{"method":"emit","event":"e","data":1,"room":"s","callback":["s","/",1]}"#;
        assert!(is_unsupported(py(json_callback), "emit with callback"));
    }

    #[test]
    fn python_pickle_shapes() {
        let tuple_rooms = include_bytes!("fixtures/py513_emit_tuple_rooms.pickle");
        assert!(matches!(py(tuple_rooms),
            Ok(EmitterCommand::Emit { selector: s, .. }) if s == selector("/", &["r1", "r2"], &[])));
        let int_room = include_bytes!("fixtures/py513_emit_int_room.pickle");
        assert!(matches!(py(int_room),
            Ok(EmitterCommand::Emit { selector: s, .. }) if s == selector("/", &["42"], &[])));
        let keys = include_bytes!("fixtures/py513_emit_dict_keys.pickle");
        assert_eq!(
            py(keys),
            Ok(emit(
                selector("/", &[], &[]),
                "ev",
                json!([{"1": "i", "false": "b", "null": "n"}])
            )),
            "keys become text as json.dumps writes them"
        );
        let sets = include_bytes!("fixtures/py513_emit_sets.pickle");
        let Ok(EmitterCommand::Emit { args, .. }) = py(sets) else {
            panic!()
        };
        let mut first: Vec<i64> = args[0]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        first.sort();
        assert_eq!((first, &args[1]), (vec![1, 3], &json!(["z"])));
        let shared = include_bytes!("fixtures/py513_emit_shared.pickle");
        assert_eq!(
            py(shared),
            Ok(emit(
                selector("/", &[], &[]),
                "ev",
                json!([{"a": {"same": 1}, "b": {"same": 1}}, [{"same": 1}]])
            ))
        );
        let empty_rooms = include_bytes!("fixtures/py513_emit_empty_room_list.pickle");
        assert!(is_malformed(py(empty_rooms)));
        assert!(is_malformed(py(include_bytes!(
            "fixtures/py513_unknown_method.pickle"
        ))));
        assert!(is_malformed(py(include_bytes!(
            "fixtures/py513_not_a_dict.pickle"
        ))));
        assert!(is_too_large(py(include_bytes!(
            "fixtures/py513_emit_cycle.pickle"
        ))));
    }

    #[test]
    fn python_every_pickle_protocol() {
        let expected = emit(
            selector("/", &[], &[]),
            "ev",
            json!(["t\u{fc}ple", -7, 3.25, null, true, false,
                   {"k": ["v", 1u64 << 40, -(1i64 << 62)]}, [], {}]),
        );
        let fixtures = [
            &include_bytes!("fixtures/py513_emit_proto0.pickle")[..],
            &include_bytes!("fixtures/py513_emit_proto1.pickle")[..],
            &include_bytes!("fixtures/py513_emit_proto2.pickle")[..],
            &include_bytes!("fixtures/py513_emit_proto3.pickle")[..],
            &include_bytes!("fixtures/py513_emit_proto4.pickle")[..],
            &include_bytes!("fixtures/py513_emit_proto5.pickle")[..],
        ];
        for (protocol, bytes) in fixtures.iter().enumerate() {
            // protocol 0 and 1 pickles do not start with PROTO: they are
            // tried as JSON and refused; the unpickler itself reads them
            let decoded = if protocol < 2 {
                let PyValue::Dict(entries) = pickle::load(bytes, &Limits::default()).unwrap()
                else {
                    panic!()
                };
                let data = entries
                    .into_iter()
                    .find(|(k, _)| *k == PyValue::Str("data".into()))
                    .unwrap()
                    .1;
                let PyValue::Tuple(items) = data else {
                    panic!()
                };
                let args = items.into_iter().map(|v| v.into_json().unwrap()).collect();
                EmitterCommand::Emit {
                    selector: selector("/", &[], &[]),
                    event: "ev".into(),
                    args,
                }
            } else {
                py(bytes).unwrap()
            };
            assert_eq!(decoded, expected, "protocol {protocol}");
        }
        assert!(is_malformed(py(fixtures[0])));
    }

    #[test]
    fn python_pickle_that_runs_code_is_refused() {
        let os_system = include_bytes!("fixtures/py513_global_os_system.pickle");
        assert_eq!(
            py(os_system),
            Err(malformed("pickle opcode STACK_GLOBAL not allowed"))
        );
        let proto0 = include_bytes!("fixtures/py513_global_os_system_proto0.pickle");
        assert_eq!(
            pickle::load(proto0, &Limits::default()),
            Err(malformed("pickle opcode GLOBAL not allowed"))
        );
    }

    #[test]
    fn python_malformed_json() {
        for bytes in [
            &br#"{"method":"emit","data":1}"#[..],
            br#"{"method":"emit","event":5,"data":1}"#,
            br#"{"method":"emit","event":"e"}"#,
            br#"{"method":"emit","event":"e","data":1,"namespace":3}"#,
            br#"{"method":"emit","event":"e","data":1,"room":{"a":1}}"#,
            br#"{"method":"emit","event":"e","data":1,"binary":"yes"}"#,
            br#"{"method":"disconnect","namespace":"/"}"#,
            br#"{"method":"enter_room","sid":"s"}"#,
            br#"{"event":"e","data":1}"#,
            br#"{"method":"nope"}"#,
            br#"["method","emit"]"#,
            b"{\"method\":",
            b"",
            b"\xff\xfe",
        ] {
            assert!(
                is_malformed(py(bytes)),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        let ok = br#"{"method":"emit","event":"e","data":1,"namespace":""}"#;
        assert!(matches!(py(ok),
            Ok(EmitterCommand::Emit { selector: s, .. }) if s.namespace == "/"));
    }

    #[test]
    fn node_broadcasts() {
        let room = include_bytes!("fixtures/node_emit_room.msgpack");
        assert_eq!(
            broadcast(room),
            Ok(emit(
                selector("/", &["room1"], &[]),
                "ev",
                json!([{"a": 1}, 2])
            ))
        );
        let flags = include_bytes!("fixtures/node_emit_flags.msgpack");
        assert_eq!(
            broadcast(flags),
            Ok(emit(
                selector("/chat", &[], &["x", "y"]),
                "hello",
                json!(["w\u{f6}rld", [1.5, -3, null, true], {"nested": {"deep": []}}])
            ))
        );
        let two_rooms = include_bytes!("fixtures/node_emit_two_rooms.msgpack");
        assert_eq!(
            broadcast(two_rooms),
            Ok(emit(selector("/", &["r1", "r2"], &[]), "multi", json!([])))
        );
        // what a Node server would send on: undefined, NaN and Infinity are
        // null, undefined properties are left out, a Date is its ISO text
        let undefined = include_bytes!("fixtures/node_emit_undefined.msgpack");
        assert_eq!(
            broadcast(undefined),
            Ok(emit(
                selector("/", &[], &[]),
                "u",
                json!([null, {"keep": 1}, null, null, "2024-01-02T03:04:05.678Z"])
            ))
        );
        let legacy = include_bytes!("fixtures/node_emit_legacy.msgpack");
        assert_eq!(
            broadcast(legacy),
            Ok(emit(
                selector("/", &[], &[]),
                "u",
                json!([null, {"keep": 1}, "2024-01-02T03:04:05.678Z"])
            ))
        );
        let numbers = include_bytes!("fixtures/node_emit_numbers.msgpack");
        assert_eq!(
            broadcast(numbers),
            Ok(emit(
                selector("/", &[], &[]),
                "num",
                json!([
                    1u64 << 40,
                    -(1i64 << 40),
                    4294967295u32,
                    -2147483649i64,
                    0.1
                ])
            ))
        );
        let binary = include_bytes!("fixtures/node_emit_binary.msgpack");
        assert!(is_unsupported(broadcast(binary), "binary arguments"));
    }

    #[test]
    fn node_broadcast_shapes() {
        let encode = |v: &rmpv::Value| {
            let mut out = Vec::new();
            rmpv::encode::write_value(&mut out, v).unwrap();
            out
        };
        let m = |pairs: Vec<(&str, rmpv::Value)>| {
            rmpv::Value::Map(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
        };
        let msg = |packet: rmpv::Value, opts: rmpv::Value| {
            encode(&rmpv::Value::Array(vec!["uid".into(), packet, opts]))
        };
        let data = || rmpv::Value::Array(vec!["e".into(), 1.into()]);
        let no_nsp = msg(m(vec![("type", 2.into()), ("data", data())]), m(vec![]));
        assert_eq!(
            broadcast(&no_nsp),
            Ok(emit(selector("/", &[], &[]), "e", json!([1])))
        );
        let typed = |t: i64| msg(m(vec![("type", t.into()), ("data", data())]), m(vec![]));
        assert!(is_unsupported(broadcast(&typed(5)), "binary arguments"));
        assert!(is_unsupported(broadcast(&typed(3)), "node packet type 3"));
        let with_id = msg(
            m(vec![("type", 2.into()), ("data", data()), ("id", 4.into())]),
            m(vec![]),
        );
        assert!(is_unsupported(broadcast(&with_id), "emit with callback"));
        let numeric_room = msg(
            m(vec![("type", 2.into()), ("data", data())]),
            m(vec![("rooms", rmpv::Value::Array(vec![42.into()]))]),
        );
        assert!(matches!(broadcast(&numeric_room),
            Ok(EmitterCommand::Emit { selector: s, .. }) if s.rooms == ["42"]));
        for bad in [
            encode(&rmpv::Value::Array(vec!["uid".into(), m(vec![])])),
            msg(m(vec![("type", 2.into())]), m(vec![])),
            msg(m(vec![("type", "2".into()), ("data", data())]), m(vec![])),
            msg(
                m(vec![
                    ("type", 2.into()),
                    ("data", rmpv::Value::Array(vec![])),
                ]),
                m(vec![]),
            ),
            msg(
                m(vec![
                    ("type", 2.into()),
                    ("data", rmpv::Value::Array(vec![1.into()])),
                ]),
                m(vec![]),
            ),
            msg(
                m(vec![("type", 2.into()), ("data", data())]),
                rmpv::Value::Nil,
            ),
            msg(
                m(vec![("type", 2.into()), ("data", data())]),
                m(vec![("rooms", "room1".into())]),
            ),
            msg(
                m(vec![
                    ("type", 2.into()),
                    ("data", data()),
                    ("nsp", 1.into()),
                ]),
                m(vec![]),
            ),
            b"{}".to_vec(),
        ] {
            assert!(is_malformed(broadcast(&bad)), "{bad:x?}");
        }
    }

    #[test]
    fn node_requests() {
        let join = include_bytes!("fixtures/node_join.json");
        assert_eq!(
            request(join, "/"),
            Ok(EmitterCommand::Join {
                selector: selector("/", &["room1"], &["sidX"]),
                rooms: vec!["room2".into(), "room3".into()]
            })
        );
        let leave = include_bytes!("fixtures/node_leave.json");
        assert_eq!(
            request(leave, "/"),
            Ok(EmitterCommand::Leave {
                selector: selector("/", &["room1"], &[]),
                rooms: vec!["room2".into()]
            })
        );
        let disconnect = include_bytes!("fixtures/node_disconnect.json");
        assert_eq!(
            request(disconnect, "/chat"),
            Ok(EmitterCommand::Disconnect {
                selector: selector("/chat", &["room1"], &[]),
                close: true
            })
        );
        let everyone = include_bytes!("fixtures/node_disconnect_all.json");
        assert_eq!(
            request(everyone, "/"),
            Ok(EmitterCommand::Disconnect {
                selector: selector("/", &[], &[]),
                close: false
            })
        );
        let server_side = include_bytes!("fixtures/node_server_side_emit.json");
        assert_eq!(
            request(server_side, "/"),
            Ok(EmitterCommand::ServerSideEmit {
                namespace: "/".into(),
                args: vec![json!("hello"), json!({"a": 1}), Value::Null]
            })
        );
    }

    #[test]
    fn node_request_kinds() {
        let cases = [
            (
                r#"{"type":0,"requestId":"x","rooms":[]}"#,
                "node request type 0 (sockets)",
            ),
            (
                r#"{"type":1,"requestId":"x"}"#,
                "node request type 1 (allRooms)",
            ),
            (
                r#"{"type":2,"requestId":"x","sid":"s","room":"r"}"#,
                "node request type 2 (socketsJoin of one socket id)",
            ),
            (
                r#"{"type":5,"requestId":"x","opts":{}}"#,
                "node request type 5 (fetchSockets)",
            ),
            (
                r#"{"type":6,"requestId":"x","data":[]}"#,
                "serverSideEmit with acknowledgement",
            ),
            (
                r#"{"type":7,"requestId":"x","packet":{},"opts":{}}"#,
                "node request type 7 (broadcast with acknowledgement)",
            ),
            (
                r#"{"type":8}"#,
                "node request type 8 (broadcast client count)",
            ),
            (
                r#"{"type":9}"#,
                "node request type 9 (broadcast acknowledgement)",
            ),
            (r#"{"type":42}"#, "node request type 42"),
        ];
        for (json, what) in cases {
            assert!(
                is_unsupported(request(json.as_bytes(), "/"), what),
                "{json}"
            );
        }
        for bad in [
            &br#"{"type":"2"}"#[..],
            br#"{"type":2,"opts":[],"rooms":[]}"#,
            br#"{"type":2,"opts":{},"rooms":"r"}"#,
            br#"{"type":4,"opts":{},"close":1}"#,
            br#"{"type":6,"data":{}}"#,
            br#"{"type":6"#,
            br#"[1]"#,
        ] {
            assert!(
                is_malformed(request(bad, "/")),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // the adapter publishes requests carrying binary data as msgpack
        let mut packed = Vec::new();
        let join = rmpv::Value::Map(vec![
            ("type".into(), 2.into()),
            (
                "opts".into(),
                rmpv::Value::Map(vec![("rooms".into(), rmpv::Value::Array(vec![]))]),
            ),
            ("rooms".into(), rmpv::Value::Array(vec!["r".into()])),
        ]);
        rmpv::encode::write_value(&mut packed, &join).unwrap();
        assert_eq!(
            request(&packed, "/x"),
            Ok(EmitterCommand::Join {
                selector: selector("/x", &[], &[]),
                rooms: vec!["r".into()]
            })
        );
    }

    #[test]
    fn adversarial_inputs_are_refused() {
        let limits = Limits::default();
        let too_large = |r: Result<EmitterCommand, DecodeError>| is_too_large(r);
        let malformed = |r: Result<EmitterCommand, DecodeError>| is_malformed(r);
        type Check = fn(Result<EmitterCommand, DecodeError>) -> bool;
        let deep = include_bytes!("fixtures/adv_json_deep.json");
        assert!(too_large(node_request(deep, "/", &limits)));
        assert!(too_large(python_socketio(deep, &limits)));
        let msgpack: [(&str, &[u8], Check); 5] = [
            (
                "deep",
                include_bytes!("fixtures/adv_msgpack_deep.msgpack"),
                too_large,
            ),
            (
                "huge array",
                include_bytes!("fixtures/adv_msgpack_huge_array.msgpack"),
                malformed,
            ),
            (
                "huge str",
                include_bytes!("fixtures/adv_msgpack_huge_str.msgpack"),
                malformed,
            ),
            (
                "int key",
                include_bytes!("fixtures/adv_msgpack_int_key.msgpack"),
                malformed,
            ),
            (
                "truncated",
                include_bytes!("fixtures/adv_msgpack_truncated.msgpack"),
                malformed,
            ),
        ];
        for (name, bytes, check) in msgpack {
            let r = node_broadcast(bytes, &limits);
            assert!(check(r.clone()), "{name}: {r:?}");
            let r = node_request(bytes, "/", &limits);
            assert!(check(r.clone()), "{name}: {r:?}");
        }
        let pickles: [(&str, &[u8], Check); 6] = [
            (
                "truncated",
                include_bytes!("fixtures/adv_pickle_truncated.pickle"),
                malformed,
            ),
            (
                "huge length",
                include_bytes!("fixtures/adv_pickle_huge_len.pickle"),
                malformed,
            ),
            (
                "deep",
                include_bytes!("fixtures/adv_pickle_deep.pickle"),
                too_large,
            ),
            (
                "deep marks",
                include_bytes!("fixtures/adv_pickle_deep_marks.pickle"),
                too_large,
            ),
            (
                "memo bomb",
                include_bytes!("fixtures/adv_pickle_memo_bomb.pickle"),
                too_large,
            ),
            (
                "string bomb",
                include_bytes!("fixtures/adv_pickle_string_bomb.pickle"),
                too_large,
            ),
        ];
        for (name, bytes, check) in pickles {
            let r = python_socketio(bytes, &limits);
            assert!(check(r.clone()), "{name}: {r:?}");
        }
        let big = vec![b' '; limits.max_bytes + 1];
        assert!(too_large(python_socketio(&big, &limits)));
        assert!(too_large(node_broadcast(&big, &limits)));
        assert!(too_large(node_request(&big, "/", &limits)));
        let mut many = b"{\"type\":6,\"data\":[".to_vec();
        many.extend(std::iter::repeat_n(&b"0,"[..], 100).flatten());
        many.extend_from_slice(b"0]}");
        let few = Limits {
            max_items: 50,
            ..limits
        };
        assert!(too_large(node_request(&many, "/", &few)));
        assert!(node_request(&many, "/", &limits).is_ok());
    }

    /// Every prefix and many one-byte changes of every fixture decode to a
    /// result, never a panic.
    #[test]
    fn no_fixture_mutation_panics() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let fixtures = std::fs::read_dir(file_dir(dir)).unwrap();
        let limits = Limits::default();
        let mut seen = 0;
        for entry in fixtures {
            let path = entry.unwrap().path();
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if !["pickle", "json", "msgpack"].contains(&ext) {
                continue;
            }
            seen += 1;
            let bytes = std::fs::read(&path).unwrap();
            if bytes.len() > 4096 {
                continue;
            }
            let run = |b: &[u8]| {
                let _ = python_socketio(b, &limits);
                let _ = node_broadcast(b, &limits);
                let _ = node_request(b, "/", &limits);
            };
            for end in 0..bytes.len() {
                run(&bytes[..end]);
            }
            let mut mutated = bytes.clone();
            for i in 0..bytes.len() {
                for x in [0x00, 0xff, 0x80, bytes[i].wrapping_add(1), bytes[i] ^ 0x40] {
                    mutated[i] = x;
                    run(&mutated);
                }
                mutated[i] = bytes[i];
            }
        }
        assert!(seen > 50, "found {seen} fixtures");
    }

    /// This file's folder, found from the crate's manifest folder.
    fn file_dir(manifest: &std::path::Path) -> std::path::PathBuf {
        let here = std::path::Path::new(file!());
        let fixtures = here.parent().unwrap().join("fixtures");
        // file!() is relative to the workspace root (or the crate root)
        manifest
            .ancestors()
            .map(|a| a.join(&fixtures))
            .find(|p| p.is_dir())
            .unwrap_or_else(|| panic!("no {} above {}", fixtures.display(), manifest.display()))
    }
}
