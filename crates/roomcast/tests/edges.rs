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
