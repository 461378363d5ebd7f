//! The fuzz targets: one function per decoder of bytes that a client, another
//! program or the network controls. Each decodes `data` and, where an encoder
//! exists, checks the round trip (`decode(encode(x)) == x`); a panic, an
//! unbounded allocation or a failed check is a bug.
//!
//! `fuzz_targets/*.rs` hand them to libFuzzer (`cargo +nightly fuzz run
//! <name> --features fuzz`); `tests/corpus.rs` replays every file of
//! `corpus/<name>/` through the same functions on stable, so CI catches a
//! regression without nightly.

use roomcast_redis::emitter::decode::{self, Limits};
use roomcast_socketio::{engineio, socketio};

/// A fuzz target: decodes (and checks) one input.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("native_command", native_command),
    ("engineio_packet", engineio_packet),
    ("engineio_payload", engineio_payload),
    ("socketio_packet", socketio_packet),
    ("pickle", pickle),
    ("msgpack", msgpack),
    ("emitter_python_socketio", emitter_python_socketio),
    ("emitter_node", emitter_node),
    ("channels_message", channels_message),
    ("jwt", jwt),
    ("config_toml", config_toml),
    ("endpoint_path", endpoint_path),
];

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// A native protocol frame (`{"type":...}` text).
pub fn native_command(data: &[u8]) {
    if let Some(t) = text(data) {
        let _ = roomcast::native::decode(t);
    }
}

/// One Engine.IO text packet; text packets encode back to the same text.
pub fn engineio_packet(data: &[u8]) {
    let Some(t) = text(data) else { return };
    if let Ok(p) = engineio::packet::Packet::decode(t) {
        let again = p
            .encode_text()
            .expect("a decoded text packet has a text form");
        assert_eq!(engineio::packet::Packet::decode(&again), Ok(p));
    }
}

/// A long-polling request body; payloads encode back to the same packets.
pub fn engineio_payload(data: &[u8]) {
    use engineio::packet::{decode_payload, encode_payload, Encoded, Packet};
    let Some(t) = text(data) else { return };
    if let Ok(packets) = decode_payload(t) {
        let texts: Vec<Option<String>> = packets.iter().map(Packet::encode_text).collect();
        let encoded = packets.iter().zip(&texts).map(|(p, t)| match (p, t) {
            (Packet::Binary(b), _) => Encoded::Binary(b),
            (_, Some(t)) => Encoded::Text(t),
            (_, None) => unreachable!("only binary packets lack a text form"),
        });
        let body = encode_payload(encoded);
        assert_eq!(decode_payload(&body).as_ref(), Ok(&packets), "{body:?}");
    }
}

/// A Socket.IO packet (binary kinds with their attachment count and
/// placeholders); it encodes back to an equal packet.
pub fn socketio_packet(data: &[u8]) {
    let Some(t) = text(data) else { return };
    if let Ok(p) = socketio::packet::Packet::decode(t) {
        if let Some(d) = &p.data {
            let _ = socketio::packet::placeholders_valid(d, p.attachments);
        }
        let again = p.encode();
        assert_eq!(
            socketio::packet::Packet::decode(&again).as_ref(),
            Ok(&p),
            "{again}"
        );
    }
}

/// A pickle, as python-socketio before 5.14 publishes on Redis.
pub fn pickle(data: &[u8]) {
    let _ = decode::pickle::load(data, &Limits::default());
}

/// msgpack, as Node's emitter publishes, read as JSON; what it reads encodes
/// back (as msgpack) to the same JSON.
pub fn msgpack(data: &[u8]) {
    let limits = Limits::default();
    if let Ok(v) = decode::msgpack::read(data, &limits) {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &to_msgpack(&v)).expect("writing to a Vec cannot fail");
        assert_eq!(decode::msgpack::read(&out, &limits).ok(), Some(v));
    }
}

fn to_msgpack(v: &serde_json::Value) -> rmpv::Value {
    use serde_json::Value as J;
    match v {
        J::Null => rmpv::Value::Nil,
        J::Bool(b) => rmpv::Value::Boolean(*b),
        J::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => rmpv::Value::from(u),
            (None, Some(i)) => rmpv::Value::from(i),
            _ => rmpv::Value::F64(n.as_f64().unwrap_or_default()),
        },
        J::String(s) => rmpv::Value::from(s.as_str()),
        J::Array(a) => rmpv::Value::Array(a.iter().map(to_msgpack).collect()),
        J::Object(m) => rmpv::Value::Map(
            m.iter()
                .map(|(k, v)| (rmpv::Value::from(k.as_str()), to_msgpack(v)))
                .collect(),
        ),
    }
}

/// A python-socketio `RedisManager` message (JSON or pickle).
pub fn emitter_python_socketio(data: &[u8]) {
    let _ = decode::python_socketio(data, &Limits::default());
}

/// A Node `@socket.io/redis-emitter` / adapter message: a broadcast and a request.
pub fn emitter_node(data: &[u8]) {
    let limits = Limits::default();
    let _ = decode::node_broadcast(data, &limits);
    let _ = decode::node_request(data, "/", &limits);
}

/// A channels_redis layer message, msgpack (with the core layer's random
/// prefix, and without) and JSON.
pub fn channels_message(data: &[u8]) {
    use roomcast_redis::channels::{Format, LayerMessage};
    for (format, prefix) in [
        (Format::Msgpack, 12),
        (Format::Msgpack, 0),
        (Format::Json, 0),
    ] {
        let _ = LayerMessage::decode(data, format, prefix, 1 << 20);
    }
}

/// A connection token, checked against an HS256 key.
pub fn jwt(data: &[u8]) {
    use std::sync::OnceLock;
    static VERIFIER: OnceLock<roomcast::auth::Verifier> = OnceLock::new();
    let Some(t) = text(data) else { return };
    let v = VERIFIER.get_or_init(|| {
        let c = roomcast::config::JwtConfig {
            secret: "fuzzing-secret-of-at-least-32-bytes!".into(),
            ..Default::default()
        };
        roomcast::auth::Verifier::from_config(&c)
            .expect("an HS256 secret loads")
            .expect("a key is configured")
    });
    let _ = v.verify(t);
}

/// A configuration file, parsed and validated as `roomcast serve --config` does.
pub fn config_toml(data: &[u8]) {
    let Some(t) = text(data) else { return };
    if let Ok(c) = toml::from_str::<roomcast::Config>(t) {
        let _ = c.validate();
    }
}

/// `[[endpoints]]` paths, and requests for them: the first line is an
/// endpoint's `path`, the second its `room` template, the rest the path a
/// client asks for. A path that passes validation must build the server's
/// router (axum panics on a route it cannot take), and no request path gets
/// a 5xx.
pub fn endpoint_path(data: &[u8]) {
    use std::cell::RefCell;
    let Some(t) = text(data) else { return };
    let mut lines = t.splitn(3, '\n');
    let (path, room, request) = (
        lines.next().unwrap_or(""),
        lines.next().unwrap_or("{room}"),
        lines.next().unwrap_or("/"),
    );
    let mut endpoint = roomcast::config::EndpointConfig::relay(path);
    endpoint.room = room.to_owned();
    let mut config = roomcast::Config::default();
    config.endpoints.push(endpoint);
    if config.validate().is_err() {
        return;
    }
    thread_local! {
        static RT: RefCell<tokio::runtime::Runtime> = RefCell::new(
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
        );
    }
    RT.with(|rt| {
        rt.borrow().block_on(async {
            use tower::ServiceExt;
            let server = roomcast::Server::new(config);
            let router = server.router();
            if let Ok(req) = axum::http::Request::get(request).body(axum::body::Body::empty()) {
                let status = router.oneshot(req).await.unwrap().status();
                assert!(
                    !status.is_server_error(),
                    "{request:?} under {path:?}: {status}"
                );
            }
            server.hub().shutdown(roomcast_core::Disconnect::SHUTDOWN);
        })
    });
}
