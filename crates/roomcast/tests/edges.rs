//! Bad input at the edges, over raw TCP sockets so that malformed bytes get
//! through: WebSocket frame-level violations on every WebSocket surface (native
//! `/ws`, the Engine.IO WebSocket transport, an `[[endpoints]]` relay), two
//! `Origin` headers on a handshake, and malformed HTTP requests to the API and
//! the Engine.IO polling endpoint. Every case, with its answer, is listed in
//! `docs/bad-input.md`.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use roomcast::config::EndpointConfig;
use support::{config, start, RawClient, TestServer, STEP};

/// `limits.max_message_bytes` and `socketio.max_payload_bytes` in these tests.
const MAX_MESSAGE: usize = 4096;

/// One WebSocket frame with the first header byte `b0` (FIN, RSV, opcode)
/// as given, masked or not.
fn frame(b0: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut f = vec![b0];
    let len = payload.len();
    if len < 126 {
        f.push(mask_bit | len as u8);
    } else if len < 65536 {
        f.push(mask_bit | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(mask_bit | 127);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if masked {
        let mask = [7u8, 1, 9, 3];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

/// Every frame-level violation tried, the bytes that carry it and the close
/// code the server must answer with.
fn violations() -> Vec<(&'static str, Vec<u8>, u16)> {
    let big = vec![b'a'; MAX_MESSAGE + 1];
    vec![
        (
            "invalid UTF-8 in a text frame",
            frame(0x81, true, &[b'4', 0xff, 0xfe]),
            1007,
        ),
        (
            "invalid UTF-8 across two fragments",
            [frame(0x01, true, &[b'4', 0xc3]), frame(0x80, true, &[0x28])].concat(),
            1007,
        ),
        ("RSV1 set on a text frame", frame(0xC1, true, b"4x"), 1002),
        ("RSV2 and RSV3 set on a ping", frame(0xB9, true, b""), 1002),
        (
            "unmasked client text frame",
            frame(0x81, false, b"4x"),
            1002,
        ),
        ("fragmented ping (FIN clear)", frame(0x09, true, b"p"), 1002),
        (
            "ping with a 126-byte payload",
            frame(0x89, true, &[0u8; 126]),
            1002,
        ),
        ("reserved data opcode 0x3", frame(0x83, true, b"x"), 1002),
        ("reserved control opcode 0xB", frame(0x8B, true, b"x"), 1002),
        (
            "continuation without a start",
            frame(0x80, true, b"x"),
            1002,
        ),
        (
            "new text frame inside a fragmented message",
            [frame(0x01, true, b"4a"), frame(0x81, true, b"4b")].concat(),
            1002,
        ),
        (
            "one frame over the message limit",
            frame(0x81, true, &big),
            1009,
        ),
        (
            "fragments adding up over the message limit",
            [
                frame(0x01, true, &big[..MAX_MESSAGE / 2 + 1]),
                frame(0x80, true, &big[..MAX_MESSAGE / 2 + 1]),
            ]
            .concat(),
            1009,
        ),
    ]
}

fn edge_config() -> roomcast::Config {
    let mut c = config();
    c.limits.max_message_bytes = MAX_MESSAGE;
    c.socketio.max_payload_bytes = MAX_MESSAGE;
    c.endpoints = vec![EndpointConfig::relay("/room/{room}/")];
    c
}

/// Sends `bytes` on an open raw WebSocket and returns the close code the
/// server answered with (`None`: the TCP connection dropped without one).
async fn close_code(mut raw: RawClient, bytes: &[u8]) -> Option<u16> {
    raw.stream.write_all(bytes).await.unwrap();
    raw.read_until_close().await.2
}

/// Publishes to `room` through the HTTP API and returns the number delivered.
async fn publish(srv: &TestServer, room: &str, n: usize) -> Value {
    let (status, body) = srv
        .post(
            "/api/publish",
            json!({"room": room, "event": "tick", "data": n}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Each violation on native `/ws`, on the Engine.IO WebSocket transport and
/// on a relay endpoint closes that connection with its code (1007, 1002 or
/// 1009) instead of dropping TCP, and a native client in the same room
/// keeps receiving publications after each one.
#[tokio::test]
async fn frame_violations_close_with_their_code() {
    let srv = start(edge_config()).await;
    let mut witness = srv.user("witness").await;
    witness.join("lobby").await;
    let surfaces = [
        "/ws",
        "/socket.io/?EIO=4&transport=websocket",
        "/room/lobby/",
    ];
    let mut n = 0;
    for path in surfaces {
        for (what, bytes, want) in violations() {
            let raw = RawClient::connect(srv.addr, path).await;
            let got = close_code(raw, &bytes).await;
            assert_eq!(got, Some(want), "{path}: {what}");
            n += 1;
            publish(&srv, "lobby", n).await;
            loop {
                let m = witness.recv_type("message").await;
                if m["data"] == n {
                    break;
                }
            }
        }
    }
    srv.stop().await;
}

/// The server still serves a new client after a burst of violations: the
/// connection count returns to the witness alone.
#[tokio::test]
async fn violations_leave_no_connection_behind() {
    let srv = start(edge_config()).await;
    for (_, bytes, _) in violations() {
        let raw = RawClient::connect(srv.addr, "/ws").await;
        close_code(raw, &bytes).await;
    }
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let (_, stats) = srv.get("/api/stats").await;
        if stats["connections"] == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections left: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = srv.user("after").await;
    c.join("lobby").await;
    srv.stop().await;
}

/// One raw HTTP/1.1 request; returns the status, the lower-cased head and
/// the body (read by its Content-Length, chunks, or to the end).
async fn raw_http(addr: SocketAddr, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let read = async {
        loop {
            if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&out[..end]).to_lowercase();
                let body = &out[end + 4..];
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse::<usize>().unwrap());
                let done = match len {
                    Some(n) => body.len() >= n,
                    None if head.contains("transfer-encoding: chunked") => {
                        body.ends_with(b"0\r\n\r\n")
                    }
                    None => false,
                };
                if done {
                    return;
                }
            }
            let mut chunk = [0u8; 8192];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(STEP, read)
        .await
        .expect("the server answered in time");
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(&out)));
    let head = String::from_utf8_lossy(&out[..end]).to_lowercase();
    let status = head[9..12].parse().unwrap();
    let mut body = out[end + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, head, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 4 + n..];
    }
    out
}

fn upgrade(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// Two `Origin` headers on a handshake are refused with 403
/// `origin_not_allowed`, equal or not, with or without an allow-list; one
/// allowed Origin still upgrades.
#[tokio::test]
async fn two_origin_headers_are_refused() {
    for allowed in [vec![], vec!["https://app.example".to_owned()]] {
        let mut c = edge_config();
        c.auth.allowed_origins = allowed.clone();
        let srv = start(c).await;
        let two_differ = "Origin: https://app.example\r\nOrigin: https://evil.example\r\n";
        let two_equal = "Origin: https://app.example\r\nOrigin: https://app.example\r\n";
        for origins in [two_differ, two_equal] {
            let polling = format!(
                "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{origins}\r\n"
            );
            for req in [
                upgrade("/ws", origins),
                upgrade("/socket.io/?EIO=4&transport=websocket", origins),
                polling.into_bytes(),
            ] {
                let (status, _, body) = raw_http(srv.addr, &req).await;
                let what = String::from_utf8_lossy(&req[..40]).to_string();
                assert_eq!(status, 403, "{allowed:?} {what}");
                let v: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(v["error"]["code"], "origin_not_allowed", "{what}");
            }
        }
        let one = upgrade("/ws", "Origin: https://app.example\r\n");
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(&one).await.unwrap();
        let mut head = [0u8; 12];
        tokio::time::timeout(STEP, s.read_exact(&mut head))
            .await
            .expect("an answer in time")
            .unwrap();
        assert_eq!(&head, b"HTTP/1.1 101", "{allowed:?}");
        srv.stop().await;
    }
}

/// A raw request: method, target, extra header lines, body.
fn req(method: &str, target: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n{headers}\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// Opens an Engine.IO polling session over raw HTTP and returns its sid.
async fn polling_sid(addr: SocketAddr) -> String {
    let (status, _, body) = raw_http(
        addr,
        &req("GET", "/socket.io/?EIO=4&transport=polling", "", b""),
    )
    .await;
    assert_eq!(status, 200);
    let open: Value = serde_json::from_slice(&body[1..]).unwrap();
    open["sid"].as_str().unwrap().to_owned()
}

const JSON: &str = "Content-Type: application/json\r\n";
const TEXT: &str = "Content-Type: text/plain;charset=UTF-8\r\n";

/// Malformed requests to the HTTP API and the Engine.IO polling endpoint,
/// sent over raw TCP: each gets its documented 4xx status and a JSON error
/// body with its code, never a 5xx or plain text, and the server keeps
/// serving afterwards.
#[tokio::test]
async fn malformed_http_requests_get_json_4xx() {
    let mut c = edge_config();
    c.api.max_body_bytes = 1024;
    let srv = start(c).await;
    let sid = polling_sid(srv.addr).await;
    let sio = |q: &str| format!("/socket.io/?EIO=4&transport=polling{q}");
    let with_sid = sio(&format!("&sid={sid}"));
    let fresh_sid = sio(&format!("&sid={}", polling_sid(srv.addr).await));
    let big = vec![b'x'; 2048];
    let huge_poll = vec![b'4'; MAX_MESSAGE * 2];
    let pub_ok = br#"{"room":"lobby","event":"e","data":1}"#;
    // (what, request, status, error code)
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("GET on a POST endpoint", req("GET", "/api/publish", "", b""), 405, "method_not_allowed"),
        ("DELETE on a GET endpoint", req("DELETE", "/api/rooms", "", b""), 405, "method_not_allowed"),
        ("PUT on publish", req("PUT", "/api/publish", JSON, pub_ok), 405, "method_not_allowed"),
        ("unknown API path", req("GET", "/api/nope", "", b""), 404, "not_found"),
        ("publish without a body", req("POST", "/api/publish", JSON, b""), 400, "bad_request"),
        ("publish with broken JSON", req("POST", "/api/publish", JSON, b"{\"room\":"), 400, "bad_request"),
        ("publish with a JSON array", req("POST", "/api/publish", JSON, b"[1,2]"), 400, "bad_request"),
        ("publish with a mistyped field", req("POST", "/api/publish", JSON, br#"{"room":5}"#), 400, "bad_request"),
        ("publish with invalid UTF-8", req("POST", "/api/publish", JSON, b"{\"room\":\"\xff\xfe\"}"), 400, "bad_request"),
        // docs/http-api.md: Content-Type is not checked, the body must be JSON.
        ("publish as text/plain", req("POST", "/api/publish", TEXT, pub_ok), 200, ""),
        ("publish without Content-Type", req("POST", "/api/publish", "", pub_ok), 200, ""),
        ("publish over api.max_body_bytes", req("POST", "/api/publish", JSON, &big), 413, "body_too_large"),
        ("users with a non-number limit", req("GET", "/api/users?limit=abc", "", b""), 400, "bad_request"),
        ("presence with bad percent-encoding", req("GET", "/api/presence/%ZZ", "", b""), 400, "invalid_room"),
        ("history of a non-UTF-8 room", req("GET", "/api/history/%FF%FE", "", b""), 400, "bad_request"),
        ("query with bad percent-encoding", req("GET", "/api/users?limit=%ZZ", "", b""), 400, "bad_request"),
        ("Authorization not UTF-8", b"GET /api/rooms HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer \xff\r\n\r\n".to_vec(), 200, ""),
        ("polling: EIO=3", req("GET", "/socket.io/?EIO=3&transport=polling", "", b""), 400, ""),
        ("polling: EIO=abc", req("GET", "/socket.io/?EIO=abc&transport=polling", "", b""), 400, ""),
        ("polling: no EIO", req("GET", "/socket.io/?transport=polling", "", b""), 400, ""),
        ("polling: unknown transport", req("GET", "/socket.io/?EIO=4&transport=pigeon", "", b""), 400, ""),
        ("polling: no transport", req("GET", "/socket.io/?EIO=4", "", b""), 400, ""),
        ("polling: unknown sid", req("GET", &sio("&sid=nope"), "", b""), 400, ""),
        ("polling: empty sid", req("GET", &sio("&sid="), "", b""), 400, ""),
        ("polling: bad percent-encoding", req("GET", &sio("&sid=%ZZ"), "", b""), 400, ""),
        ("polling: POST without sid", req("POST", &sio(""), TEXT, b"4hi"), 400, ""),
        ("polling: PUT", req("PUT", &with_sid, TEXT, b"4hi"), 400, ""),
        ("polling: websocket without upgrade", req("GET", "/socket.io/?EIO=4&transport=websocket", "", b""), 400, ""),
        ("polling: invalid UTF-8 body", req("POST", &with_sid, TEXT, b"4\xff\xfe"), 400, ""),
        ("polling: POST over max_payload", req("POST", &fresh_sid, TEXT, &huge_poll), 413, ""),
        ("native /ws without upgrade headers", req("GET", "/ws", "", b""), 400, "bad_request"),
        ("endpoint without upgrade headers", req("GET", "/room/lobby/", "", b""), 400, "bad_request"),
        ("endpoint with a non-UTF-8 room", upgrade("/room/%FF%FE/", ""), 400, "bad_request"),
        ("endpoint with two token parameters", upgrade("/room/lobby/?token=a&token=b", ""), 400, "bad_request"),
        ("native /ws with two token parameters", upgrade("/ws?token=a&token=b", ""), 400, "bad_request"),
        ("native /ws with Sec-WebSocket-Version 8", String::from_utf8(upgrade("/ws", "")).unwrap().replace("Version: 13", "Version: 8").into_bytes(), 400, "bad_request"),
    ];
    let (mut report, mut wrong) = (String::new(), Vec::new());
    for (what, request, status, code) in cases {
        let (got, head, body) = raw_http(srv.addr, &request).await;
        let text = String::from_utf8_lossy(&body).to_string();
        report.push_str(&format!("| {what} | {got} | `{text}` |\n"));
        let json: Option<Value> = serde_json::from_str(&text).ok();
        let shape_ok = match &json {
            _ if got < 400 => true,
            Some(v) if !code.is_empty() => v["error"]["code"] == code,
            Some(v) => v["message"].is_string() || v["error"].is_object(),
            None => false,
        };
        if got != status || !shape_ok || (got >= 400 && !head.contains("application/json")) {
            wrong.push(format!("{what}: want {status} {code}, got {head}\n{text}"));
        }
    }
    println!("{report}");
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
    publish(&srv, "lobby", 1).await;
    srv.stop().await;
}
