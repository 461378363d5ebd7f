//! The behaviours checked by the official Engine.IO and Socket.IO protocol
//! test suites (socketio/engine.io-protocol and socketio/socket.io-protocol),
//! re-expressed as Rust integration tests against servers started in-process:
//!
//! - an Engine.IO echo server at `/engine.io/` (the reference server of the
//!   engine.io-protocol suite, as in `examples/engineio_echo.rs`);
//! - the Socket.IO conformance server at `/socket.io/` (as in
//!   `examples/socketio_conformance.rs`).
//!
//! Both use pingInterval 300 ms, pingTimeout 200 ms and maxPayload 1 000 000,
//! like the suites expect. Tests prefixed `eio_` target the echo server, those
//! prefixed `sio_` the Socket.IO server (whose suite repeats the Engine.IO
//! checks at `/socket.io/`). Timing cases wait for what can be observed (the
//! server closing the socket, a poll answered 400) under a bounded deadline.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::{serve, Sio, STEP};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;

use roomcast_core::{Hub, HubConfig};
use roomcast_socketio::engineio::{
    CloseReason, Cors, EngineConfig, EngineHandler, EngineIo, Incoming, Session,
};
use roomcast_socketio::socketio::{SocketIo, SocketIoConfig};

const PING_INTERVAL: Duration = Duration::from_millis(300);
const PING_TIMEOUT: Duration = Duration::from_millis(200);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
const MAX_PAYLOAD: usize = 1_000_000;
/// The bound on anything that is about time (a ping timeout, the connect timeout).
const EXPIRY_DEADLINE: Duration = Duration::from_secs(4);

const EIO_PATH: &str = "/engine.io/";
const SIO_PATH: &str = "/socket.io/";

// ---------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------

fn engine_config() -> EngineConfig {
    EngineConfig {
        ping_interval: PING_INTERVAL,
        ping_timeout: PING_TIMEOUT,
        max_payload: MAX_PAYLOAD,
        cors: Cors::Any,
        ..EngineConfig::default()
    }
}

/// Echoes every message, text or binary, to its sender.
struct Echo;

impl EngineHandler for Echo {
    fn on_open(&self, _: &Arc<Session>) {}

    fn on_message(&self, session: &Arc<Session>, message: Incoming) {
        let _ = match message {
            Incoming::Text(text) => session.send_text(&text),
            Incoming::Binary(data) => session.send_binary(data),
        };
    }

    fn on_close(&self, _: &Arc<Session>, _: &CloseReason) {}
}

/// A server running for the duration of a test; it keeps what it serves alive.
struct Server {
    addr: SocketAddr,
    path: &'static str,
    _engine: Option<Arc<EngineIo>>,
    _io: Option<SocketIo>,
}

impl Server {
    fn http(&self) -> Http {
        Http {
            client: reqwest::Client::builder().timeout(STEP).build().unwrap(),
            base: format!("http://{}{}", self.addr, self.path),
        }
    }

    fn ws_url(&self, query: &str) -> String {
        format!("ws://{}{}?{query}", self.addr, self.path)
    }
}

/// The engine.io-protocol reference server: Engine.IO alone, echoing.
async fn echo_server() -> Server {
    let eio = EngineIo::new(engine_config(), Arc::new(Echo));
    let app: axum::Router = eio.router(EIO_PATH);
    Server {
        addr: serve(app).await,
        path: EIO_PATH,
        _engine: Some(eio),
        _io: None,
    }
}

/// The socket.io-protocol reference server: on `/` it emits `auth` with the
/// handshake payload, answers `message` with `message-back` and acknowledges
/// `message-with-ack` with the same arguments; on `/custom` it emits `auth`.
async fn conformance_server() -> Server {
    let io = SocketIo::new(
        Hub::new(HubConfig::default()),
        SocketIoConfig {
            engine: engine_config(),
            connect_timeout: CONNECT_TIMEOUT,
            recovery: None,
        },
    );
    io.ns("/", |socket, auth| async move {
        socket.emit("auth", &auth).ok();
        socket.on("message", |socket, payload, _| async move {
            socket.emit_payload("message-back", payload).ok();
        });
        socket.on("message-with-ack", |_, payload, ack| async move {
            if let Some(ack) = ack {
                ack.send(payload).ok();
            }
        });
        Ok(())
    });
    io.ns("/custom", |socket, auth| async move {
        socket.emit("auth", &auth).ok();
        Ok(())
    });
    let app: axum::Router = io.router(SIO_PATH);
    Server {
        addr: serve(app).await,
        path: SIO_PATH,
        _engine: None,
        _io: Some(io),
    }
}

// ---------------------------------------------------------------------------
// HTTP long-polling client
// ---------------------------------------------------------------------------

struct Http {
    client: reqwest::Client,
    /// `http://addr/engine.io/`
    base: String,
}

impl Http {
    async fn request(
        &self,
        method: reqwest::Method,
        query: &str,
        body: Option<&str>,
    ) -> (u16, String) {
        let mut req = self
            .client
            .request(method, format!("{}?{query}", self.base));
        if let Some(body) = body {
            req = req.body(body.to_owned());
        }
        let resp = req.send().await.expect("an HTTP answer in time");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("a body in time"))
    }

    async fn get(&self, query: &str) -> (u16, String) {
        self.request(reqwest::Method::GET, query, None).await
    }

    /// A long-polling GET on session `sid`.
    async fn poll(&self, sid: &str) -> (u16, String) {
        self.get(&format!("EIO=4&transport=polling&sid={sid}"))
            .await
    }

    /// A long-polling POST of `body` on session `sid`.
    async fn push(&self, sid: &str, body: &str) -> (u16, String) {
        self.request(
            reqwest::Method::POST,
            &format!("EIO=4&transport=polling&sid={sid}"),
            Some(body),
        )
        .await
    }

    /// Opens a polling session; returns its id and the open packet's data.
    async fn handshake(&self) -> (String, Value) {
        let (status, body) = self.get("EIO=4&transport=polling").await;
        assert_eq!(status, 200, "handshake answered {status}: {body}");
        let open: Value = serde_json::from_str(
            body.strip_prefix('0')
                .unwrap_or_else(|| panic!("an open packet, got {body:?}")),
        )
        .unwrap();
        (open["sid"].as_str().unwrap().to_owned(), open)
    }
}

/// An Engine.IO error answer: HTTP 400 with `{"code":code,"message":message}`.
fn assert_error(answer: &(u16, String), code: u64, message: &str) {
    let (status, body) = answer;
    assert_eq!(*status, 400, "expected HTTP 400, got {status}: {body}");
    let value: Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("a JSON error body, got {body:?}"));
    assert_eq!(value, json!({"code": code, "message": message}));
}

/// The open packet's data as both suites expect it.
fn assert_open_packet(open: &Value, upgrades: Value) {
    let keys: BTreeSet<&str> = open
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "sid",
            "upgrades",
            "pingInterval",
            "pingTimeout",
            "maxPayload"
        ])
    );
    assert!(open["sid"].is_string(), "sid: {}", open["sid"]);
    assert_eq!(open["upgrades"], upgrades);
    assert_eq!(open["pingInterval"], json!(300));
    assert_eq!(open["pingTimeout"], json!(200));
    assert_eq!(open["maxPayload"], json!(1_000_000));
}

/// Polls `sid` without ever answering a ping until the server reports the
/// session unknown; each answer before that may only be the ping itself or the
/// close packet ending a poll that was pending when the session expired.
async fn poll_until_session_expires(http: &Http, sid: &str) {
    let deadline = Instant::now() + EXPIRY_DEADLINE;
    let mut pinged = false;
    loop {
        assert!(
            Instant::now() < deadline,
            "session {sid} still alive after {EXPIRY_DEADLINE:?} without a pong"
        );
        let answer = http.poll(sid).await;
        if answer.0 == 400 {
            assert_error(&answer, 1, "Session ID unknown");
            assert!(pinged, "the session expired without being pinged");
            return;
        }
        assert_eq!(answer.0, 200, "poll answered {answer:?}");
        match answer.1.as_str() {
            "2" => pinged = true,
            "1" => {}
            other => panic!("expected a ping or a close packet, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// WebSocket helpers
// ---------------------------------------------------------------------------

/// A WebSocket handshake to `url` must not yield a session: either it is
/// refused with HTTP 400 (the error body naming `code`), or the socket is
/// closed before any Engine.IO packet.
async fn assert_ws_refused(url: &str, code: u64, message: &str) {
    match tokio::time::timeout(STEP, tokio_tungstenite::connect_async(url))
        .await
        .expect("a WebSocket handshake answer in time")
    {
        Err(tungstenite::Error::Http(resp)) => {
            let body = String::from_utf8(resp.body().clone().unwrap_or_default()).unwrap();
            assert_error(&(resp.status().as_u16(), body), code, message);
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok((ws, _)) => {
            let mut c = Sio {
                ws,
                sid: String::new(),
                auto_pong: false,
            };
            let first = c.recv().await;
            assert!(
                first.starts_with("close") || first == "closed",
                "{url}: expected the socket to be closed, got {first:?}"
            );
        }
    }
}

/// A WebSocket to `url` without waiting for any packet.
async fn ws_connect(url: &str, auto_pong: bool) -> Sio {
    let (ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(url))
        .await
        .expect("a WebSocket handshake in time")
        .unwrap_or_else(|e| panic!("WebSocket to {url}: {e}"));
    Sio {
        ws,
        sid: String::new(),
        auto_pong,
    }
}

/// A new WebSocket session (the open packet read and checked).
async fn ws_session(server: &Server, auto_pong: bool) -> Sio {
    let mut c = ws_connect(&server.ws_url("EIO=4&transport=websocket"), auto_pong).await;
    let open = c.recv().await;
    let open: Value = serde_json::from_str(
        open.strip_prefix('0')
            .unwrap_or_else(|| panic!("an open packet, got {open:?}")),
    )
    .unwrap();
    c.sid = open["sid"].as_str().unwrap().to_owned();
    c
}

/// The next frame that is not a noop: once the upgrade is over, a noop that
/// was meant for the last poll may still come (clients ignore noops).
async fn recv_skipping_noop(c: &mut Sio) -> String {
    loop {
        let frame = c.recv().await;
        if frame != "6" {
            return frame;
        }
    }
}

/// Waits until the server closes the WebSocket (not counting pings).
async fn assert_ws_closed_by_server(c: &mut Sio) {
    // `closed` reads frames (each within STEP) until the close or the end of
    // the stream; anything else than a ping before that is unexpected here.
    loop {
        let frame = c.recv().await;
        if frame.starts_with("close") || frame == "closed" {
            return;
        }
        assert_eq!(frame, "2", "expected the socket to be closed");
    }
}

/// A Socket.IO connection to the main namespace (`40` answered, `auth` received).
async fn sio_connected(server: &Server) -> Sio {
    let mut c = ws_session(server, true).await;
    c.send("40").await;
    let connect = c.recv().await;
    assert!(connect.starts_with("40{"), "CONNECT answered {connect:?}");
    assert_eq!(c.recv().await, r#"42["auth",{}]"#);
    c
}

/// A Socket.IO CONNECT answer (`40<nsp,>{"sid":...}`) carrying only a string sid.
fn assert_connect_answer(frame: &str, prefix: &str) {
    let body = frame
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("expected {prefix}..., got {frame:?}"));
    let handshake: Value = serde_json::from_str(body).unwrap();
    let keys: Vec<&String> = handshake.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["sid"]);
    assert!(handshake["sid"].is_string());
}

// ---------------------------------------------------------------------------
// Shared Engine.IO checks (both suites run them, at their own path)
// ---------------------------------------------------------------------------

async fn check_polling_handshake(server: &Server) {
    let (_, open) = server.http().handshake().await;
    assert_open_packet(&open, json!(["websocket"]));
}

async fn check_polling_handshake_errors(server: &Server) {
    let http = server.http();
    // 'EIO' missing or not a supported version.
    assert_error(
        &http.get("transport=polling").await,
        5,
        "Unsupported protocol version",
    );
    assert_error(
        &http.get("EIO=abc&transport=polling").await,
        5,
        "Unsupported protocol version",
    );
    // 'transport' missing or unknown.
    assert_error(&http.get("EIO=4").await, 0, "Transport unknown");
    assert_error(
        &http.get("EIO=4&transport=abc").await,
        0,
        "Transport unknown",
    );
    // A handshake must be a GET.
    for method in [reqwest::Method::POST, reqwest::Method::PUT] {
        assert_error(
            &http.request(method, "EIO=4&transport=polling", None).await,
            2,
            "Bad handshake method",
        );
    }
}

async fn check_ws_handshake(server: &Server) {
    let mut c = ws_connect(&server.ws_url("EIO=4&transport=websocket"), true).await;
    let open = c.recv().await;
    let open: Value = serde_json::from_str(
        open.strip_prefix('0')
            .unwrap_or_else(|| panic!("an open packet, got {open:?}")),
    )
    .unwrap();
    assert_open_packet(&open, json!([]));
}

async fn check_ws_handshake_errors(server: &Server) {
    assert_ws_refused(
        &server.ws_url("transport=websocket"),
        5,
        "Unsupported protocol version",
    )
    .await;
    assert_ws_refused(
        &server.ws_url("EIO=abc&transport=websocket"),
        5,
        "Unsupported protocol version",
    )
    .await;
    assert_ws_refused(&server.ws_url("EIO=4"), 0, "Transport unknown").await;
    assert_ws_refused(
        &server.ws_url("EIO=4&transport=abc"),
        0,
        "Transport unknown",
    )
    .await;
}

async fn check_polling_ping_pong(server: &Server) {
    let http = server.http();
    let (sid, _) = http.handshake().await;
    for round in 0..3 {
        let (status, body) = http.poll(&sid).await;
        assert_eq!((status, body.as_str()), (200, "2"), "ping #{round}");
        let (status, body) = http.push(&sid, "3").await;
        assert_eq!((status, body.as_str()), (200, "ok"), "pong #{round}");
    }
}

async fn check_polling_ping_timeout(server: &Server) {
    let http = server.http();
    let (sid, _) = http.handshake().await;
    poll_until_session_expires(&http, &sid).await;
}

async fn check_ws_ping_pong(server: &Server) {
    let mut c = ws_session(server, false).await;
    for _ in 0..3 {
        assert_eq!(c.recv().await, "2");
        c.send("3").await;
    }
}

async fn check_ws_ping_timeout(server: &Server) {
    let started = Instant::now();
    let mut c = ws_session(server, false).await;
    // The ping comes, is not answered, and the server closes the socket.
    assert_eq!(c.recv().await, "2");
    c.closed().await;
    assert!(started.elapsed() < EXPIRY_DEADLINE);
}

async fn check_polling_close(server: &Server) {
    let http = server.http();
    let (sid, _) = http.handshake().await;
    let (poll, push) = tokio::join!(http.poll(&sid), http.push(&sid, "1"));
    assert_eq!(push.0, 200, "close packet POST answered {push:?}");
    assert_eq!(poll, (200, "6".to_owned()));
    assert_error(&http.poll(&sid).await, 1, "Session ID unknown");
}

async fn check_ws_close(server: &Server) {
    let mut c = ws_session(server, true).await;
    c.send("1").await;
    assert_ws_closed_by_server(&mut c).await;
}

/// What to check once a session has moved to WebSocket.
#[derive(Clone, Copy)]
enum Live {
    /// The echo server echoes a message.
    Echo,
    /// The Socket.IO server accepts a CONNECT.
    SocketIo,
}

async fn check_live(c: &mut Sio, live: Live) {
    match live {
        Live::Echo => {
            c.send("4hello").await;
            assert_eq!(recv_skipping_noop(c).await, "4hello");
        }
        Live::SocketIo => {
            c.send("40").await;
            assert_connect_answer(&recv_skipping_noop(c).await, "40");
            assert_eq!(c.recv().await, r#"42["auth",{}]"#);
        }
    }
}

async fn check_upgrade(server: &Server, live: Live) {
    let http = server.http();
    let (sid, _) = http.handshake().await;
    let mut c = ws_connect(
        &server.ws_url(&format!("EIO=4&transport=websocket&sid={sid}")),
        true,
    )
    .await;
    c.send("2probe").await;
    assert_eq!(c.recv().await, "3probe");
    // The poll still pending is ended with a noop.
    assert_eq!(http.poll(&sid).await, (200, "6".to_owned()));
    c.send("5").await;
    check_live(&mut c, live).await;
}

async fn check_polling_refused_after_upgrade(server: &Server, live: Live) {
    let http = server.http();
    let (sid, _) = http.handshake().await;
    let mut c = ws_connect(
        &server.ws_url(&format!("EIO=4&transport=websocket&sid={sid}")),
        true,
    )
    .await;
    c.send("2probe").await;
    c.send("5").await;
    assert_error(&http.poll(&sid).await, 3, "Bad request");
    assert_eq!(c.recv().await, "3probe");
    check_live(&mut c, live).await;
}

async fn check_second_ws_refused_after_upgrade(server: &Server, live: Live) {
    let http = server.http();
    let (sid, _) = http.handshake().await;
    let url = server.ws_url(&format!("EIO=4&transport=websocket&sid={sid}"));
    let mut c = ws_connect(&url, true).await;
    c.send("2probe").await;
    c.send("5").await;
    match tokio::time::timeout(STEP, tokio_tungstenite::connect_async(&url))
        .await
        .expect("a WebSocket handshake answer in time")
    {
        Err(tungstenite::Error::Http(resp)) => {
            assert!(resp.status().is_client_error(), "{:?}", resp.status())
        }
        Err(e) => panic!("expected the second WebSocket refused or closed, got {e}"),
        Ok((ws, _)) => {
            let mut second = Sio {
                ws,
                sid: sid.clone(),
                auto_pong: false,
            };
            let first = second.recv().await;
            assert!(
                first.starts_with("close") || first == "closed",
                "the second WebSocket got {first:?}"
            );
        }
    }
    assert_eq!(c.recv().await, "3probe");
    check_live(&mut c, live).await;
}

// ---------------------------------------------------------------------------
// engine.io-protocol suite (echo server at /engine.io/)
// ---------------------------------------------------------------------------

/// handshake › HTTP long-polling › successfully opens a session
#[tokio::test]
async fn eio_polling_handshake_opens_a_session() {
    check_polling_handshake(&echo_server().await).await;
}

/// handshake › HTTP long-polling › fails with an invalid 'EIO' query parameter,
/// fails with an invalid 'transport' query parameter, fails with an invalid request method
#[tokio::test]
async fn eio_polling_handshake_rejects_bad_version_transport_and_method() {
    check_polling_handshake_errors(&echo_server().await).await;
}

/// handshake › WebSocket › successfully opens a session
#[tokio::test]
async fn eio_ws_handshake_opens_a_session() {
    check_ws_handshake(&echo_server().await).await;
}

/// handshake › WebSocket › fails with an invalid 'EIO' query parameter,
/// fails with an invalid 'transport' query parameter
#[tokio::test]
async fn eio_ws_handshake_rejects_bad_version_and_transport() {
    check_ws_handshake_errors(&echo_server().await).await;
}

/// message › HTTP long-polling › sends and receives a payload containing one
/// plain text packet / several plain text packets / plain text and binary packets
#[tokio::test]
async fn eio_polling_payloads_are_echoed() {
    let server = echo_server().await;
    let http = server.http();
    for payload in [
        "4hello",
        "4test1\x1e4test2\x1e4test3",
        "4hello\x1ebAQIDBA==",
    ] {
        let (sid, _) = http.handshake().await;
        assert_eq!(
            http.push(&sid, payload).await,
            (200, "ok".to_owned()),
            "POST {payload:?}"
        );
        assert_eq!(
            http.poll(&sid).await,
            (200, payload.to_owned()),
            "echo of {payload:?}"
        );
    }
}

/// message › HTTP long-polling › closes the session upon invalid packet format
#[tokio::test]
async fn eio_polling_invalid_packet_closes_the_session() {
    let server = echo_server().await;
    let http = server.http();
    let (sid, _) = http.handshake().await;
    // The suite tolerates the POST being cut off; reqwest would then panic in
    // `request`, so send it by hand and accept either a 400 or a broken answer.
    let answer = http
        .client
        .post(format!("{}?EIO=4&transport=polling&sid={sid}", http.base))
        .body("abc")
        .send()
        .await;
    if let Ok(resp) = answer {
        assert_eq!(resp.status().as_u16(), 400);
    }
    assert_error(&http.poll(&sid).await, 1, "Session ID unknown");
}

/// message › HTTP long-polling › closes the session upon duplicate poll requests
#[tokio::test]
async fn eio_polling_duplicate_poll_closes_the_session() {
    let server = echo_server().await;
    let http = server.http();
    let (sid, _) = http.handshake().await;
    // Two concurrent polls: whichever the server sees second is refused and
    // ends the session, and the first one is released with a close packet.
    let (a, b) = tokio::join!(http.poll(&sid), http.poll(&sid));
    let (released, refused) = if a.0 == 200 { (a, b) } else { (b, a) };
    assert_eq!(released, (200, "1".to_owned()), "the pending poll");
    assert!(
        refused.0 == 400 || refused.0 == 500,
        "the duplicate poll: {refused:?}"
    );
    assert_error(&http.poll(&sid).await, 1, "Session ID unknown");
}

/// message › WebSocket › sends and receives a plain text packet,
/// sends and receives a binary packet
#[tokio::test]
async fn eio_ws_text_and_binary_are_echoed() {
    let server = echo_server().await;
    let mut c = ws_session(&server, true).await;
    c.send("4hello").await;
    assert_eq!(c.recv().await, "4hello");
    let mut c = ws_session(&server, true).await;
    c.send_binary(&[1, 2, 3, 4]).await;
    assert_eq!(c.recv().await, "bin:01020304");
}

/// message › WebSocket › closes the session upon invalid packet format
#[tokio::test]
async fn eio_ws_invalid_packet_closes_the_session() {
    let server = echo_server().await;
    let mut c = ws_session(&server, true).await;
    c.send("abc").await;
    assert_ws_closed_by_server(&mut c).await;
}

/// heartbeat › HTTP long-polling › sends ping/pong packets
#[tokio::test]
async fn eio_polling_ping_pong() {
    check_polling_ping_pong(&echo_server().await).await;
}

/// heartbeat › HTTP long-polling › closes the session upon ping timeout
#[tokio::test]
async fn eio_polling_ping_timeout_closes_the_session() {
    check_polling_ping_timeout(&echo_server().await).await;
}

/// heartbeat › WebSocket › sends ping/pong packets
#[tokio::test]
async fn eio_ws_ping_pong() {
    check_ws_ping_pong(&echo_server().await).await;
}

/// heartbeat › WebSocket › closes the session upon ping timeout
#[tokio::test]
async fn eio_ws_ping_timeout_closes_the_session() {
    check_ws_ping_timeout(&echo_server().await).await;
}

/// close › HTTP long-polling › forcefully closes the session
#[tokio::test]
async fn eio_polling_close_packet_ends_the_session() {
    check_polling_close(&echo_server().await).await;
}

/// close › WebSocket › forcefully closes the session
#[tokio::test]
async fn eio_ws_close_packet_ends_the_session() {
    check_ws_close(&echo_server().await).await;
}

/// upgrade › successfully upgrades from HTTP long-polling to WebSocket
#[tokio::test]
async fn eio_upgrade_from_polling_to_websocket() {
    check_upgrade(&echo_server().await, Live::Echo).await;
}

/// upgrade › ignores HTTP requests with same sid after upgrade
#[tokio::test]
async fn eio_upgrade_then_polling_is_refused() {
    check_polling_refused_after_upgrade(&echo_server().await, Live::Echo).await;
}

/// upgrade › ignores WebSocket connection with same sid after upgrade
#[tokio::test]
async fn eio_upgrade_then_second_websocket_is_refused() {
    check_second_ws_refused_after_upgrade(&echo_server().await, Live::Echo).await;
}

// ---------------------------------------------------------------------------
// socket.io-protocol suite, "Engine.IO protocol" part (at /socket.io/)
// ---------------------------------------------------------------------------

/// Engine.IO › handshake › HTTP long-polling › should successfully open a session
#[tokio::test]
async fn sio_polling_handshake_opens_a_session() {
    check_polling_handshake(&conformance_server().await).await;
}

/// Engine.IO › handshake › HTTP long-polling › should fail with an invalid 'EIO'
/// query parameter, ... invalid 'transport' query parameter, ... invalid request method
#[tokio::test]
async fn sio_polling_handshake_rejects_bad_version_transport_and_method() {
    check_polling_handshake_errors(&conformance_server().await).await;
}

/// Engine.IO › handshake › WebSocket › should successfully open a session
#[tokio::test]
async fn sio_ws_handshake_opens_a_session() {
    check_ws_handshake(&conformance_server().await).await;
}

/// Engine.IO › handshake › WebSocket › should fail with an invalid 'EIO' query
/// parameter, ... invalid 'transport' query parameter
#[tokio::test]
async fn sio_ws_handshake_rejects_bad_version_and_transport() {
    check_ws_handshake_errors(&conformance_server().await).await;
}

/// Engine.IO › heartbeat › HTTP long-polling › should send ping/pong packets
#[tokio::test]
async fn sio_polling_ping_pong() {
    check_polling_ping_pong(&conformance_server().await).await;
}

/// Engine.IO › heartbeat › HTTP long-polling › should close the session upon ping timeout
#[tokio::test]
async fn sio_polling_ping_timeout_closes_the_session() {
    check_polling_ping_timeout(&conformance_server().await).await;
}

/// Engine.IO › heartbeat › WebSocket › should send ping/pong packets
#[tokio::test]
async fn sio_ws_ping_pong() {
    check_ws_ping_pong(&conformance_server().await).await;
}

/// Engine.IO › heartbeat › WebSocket › should close the session upon ping timeout
#[tokio::test]
async fn sio_ws_ping_timeout_closes_the_session() {
    check_ws_ping_timeout(&conformance_server().await).await;
}

/// Engine.IO › close › HTTP long-polling › should forcefully close the session
#[tokio::test]
async fn sio_polling_close_packet_ends_the_session() {
    check_polling_close(&conformance_server().await).await;
}

/// Engine.IO › close › WebSocket › should forcefully close the session
#[tokio::test]
async fn sio_ws_close_packet_ends_the_session() {
    check_ws_close(&conformance_server().await).await;
}

/// Engine.IO › upgrade › should successfully upgrade from HTTP long-polling to WebSocket
#[tokio::test]
async fn sio_upgrade_from_polling_to_websocket() {
    check_upgrade(&conformance_server().await, Live::SocketIo).await;
}

/// Engine.IO › upgrade › should ignore HTTP requests with same sid after upgrade
#[tokio::test]
async fn sio_upgrade_then_polling_is_refused() {
    check_polling_refused_after_upgrade(&conformance_server().await, Live::SocketIo).await;
}

/// Engine.IO › upgrade › should ignore WebSocket connection with same sid after upgrade
#[tokio::test]
async fn sio_upgrade_then_second_websocket_is_refused() {
    check_second_ws_refused_after_upgrade(&conformance_server().await, Live::SocketIo).await;
}

// ---------------------------------------------------------------------------
// socket.io-protocol suite, "Socket.IO protocol" part
// ---------------------------------------------------------------------------

/// Socket.IO › connect › should allow connection to the main namespace,
/// ... with a payload, ... to a custom namespace, ... to a custom namespace with a payload
#[tokio::test]
async fn sio_connect_to_main_and_custom_namespaces_with_and_without_auth() {
    let server = conformance_server().await;
    for (connect, answer_prefix, auth_event) in [
        ("40", "40", r#"42["auth",{}]"#),
        (
            r#"40{"token":"123"}"#,
            "40",
            r#"42["auth",{"token":"123"}]"#,
        ),
        ("40/custom,", "40/custom,", r#"42/custom,["auth",{}]"#),
        (
            r#"40/custom,{"token":"abc"}"#,
            "40/custom,",
            r#"42/custom,["auth",{"token":"abc"}]"#,
        ),
    ] {
        let mut c = ws_session(&server, true).await;
        c.send(connect).await;
        assert_connect_answer(&c.recv().await, answer_prefix);
        assert_eq!(c.recv().await, auth_event, "after {connect}");
    }
}

/// Socket.IO › connect › should disallow connection to an unknown namespace
#[tokio::test]
async fn sio_connect_to_unknown_namespace_is_refused() {
    let server = conformance_server().await;
    let mut c = ws_session(&server, true).await;
    c.send("40/random").await;
    assert_eq!(
        c.recv().await,
        r#"44/random,{"message":"Invalid namespace"}"#
    );
}

/// Socket.IO › connect › should disallow connection with an invalid handshake
#[tokio::test]
async fn sio_invalid_handshake_closes_the_connection() {
    let server = conformance_server().await;
    let mut c = ws_session(&server, true).await;
    c.send("4abc").await;
    assert_ws_closed_by_server(&mut c).await;
}

/// Socket.IO › connect › should close the connection if no handshake is received
#[tokio::test]
async fn sio_no_handshake_closes_the_connection_after_the_connect_timeout() {
    let server = conformance_server().await;
    // Pings are answered, so only the missing CONNECT can end the session.
    let mut c = ws_session(&server, true).await;
    let opened = Instant::now();
    assert_ws_closed_by_server(&mut c).await;
    let waited = opened.elapsed();
    assert!(
        waited >= CONNECT_TIMEOUT - Duration::from_millis(200),
        "closed after {waited:?}, before the connect timeout"
    );
    assert!(waited < EXPIRY_DEADLINE, "closed after {waited:?}");
}

/// Socket.IO › disconnect › should disconnect from the main namespace
#[tokio::test]
async fn sio_disconnect_from_main_namespace_keeps_the_session() {
    let server = conformance_server().await;
    let mut c = sio_connected(&server).await;
    c.auto_pong = false;
    c.send("41").await;
    // Nothing answers the DISCONNECT; the Engine.IO session goes on pinging.
    assert_eq!(c.recv().await, "2");
}

/// Socket.IO › disconnect › should connect then disconnect from a custom namespace
#[tokio::test]
async fn sio_connect_then_disconnect_custom_namespace_keeps_main() {
    let server = conformance_server().await;
    let mut c = sio_connected(&server).await;
    c.auto_pong = false;
    assert_eq!(c.recv().await, "2");
    c.send("3").await;
    c.auto_pong = true;
    c.send("40/custom").await;
    assert_connect_answer(&c.recv().await, "40/custom,");
    assert_eq!(c.recv().await, r#"42/custom,["auth",{}]"#);
    c.send("41/custom").await;
    c.send(r#"42["message","message to main namespace"]"#).await;
    assert_eq!(
        c.recv().await,
        r#"42["message-back","message to main namespace"]"#
    );
}

/// Socket.IO › message › should send a plain-text packet,
/// should send a plain-text packet with an ack
#[tokio::test]
async fn sio_plain_text_event_and_ack() {
    let server = conformance_server().await;
    let mut c = sio_connected(&server).await;
    c.send(r#"42["message",1,"2",{"3":[true]}]"#).await;
    assert_eq!(c.recv().await, r#"42["message-back",1,"2",{"3":[true]}]"#);
    c.send(r#"42456["message-with-ack",1,"2",{"3":[false]}]"#)
        .await;
    assert_eq!(c.recv().await, r#"43456[1,"2",{"3":[false]}]"#);
}

/// Socket.IO › message › should send a packet with binary attachments,
/// should send a packet with binary attachments and an ack
#[tokio::test]
async fn sio_binary_event_and_binary_ack() {
    let server = conformance_server().await;
    let mut c = sio_connected(&server).await;
    c.send(r#"452-["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#)
        .await;
    c.send_binary(&[1, 2, 3]).await;
    c.send_binary(&[4, 5, 6]).await;
    assert_eq!(
        c.recv().await,
        r#"452-["message-back",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#
    );
    assert_eq!(c.recv().await, "bin:010203");
    assert_eq!(c.recv().await, "bin:040506");

    c.send(
        r#"452-789["message-with-ack",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#,
    )
    .await;
    c.send_binary(&[1, 2, 3]).await;
    c.send_binary(&[4, 5, 6]).await;
    assert_eq!(
        c.recv().await,
        r#"462-789[{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#
    );
    assert_eq!(c.recv().await, "bin:010203");
    assert_eq!(c.recv().await, "bin:040506");
}

/// Socket.IO › message › should close the connection upon invalid format
/// (unknown packet type), (invalid payload format), (invalid ack id)
#[tokio::test]
async fn sio_invalid_packets_close_the_connection() {
    let server = conformance_server().await;
    for bad in [
        "4abc",
        "42{}",
        r#"42abc["message-with-ack",1,"2",{"3":[false]}]"#,
    ] {
        let mut c = sio_connected(&server).await;
        c.send(bad).await;
        assert_ws_closed_by_server(&mut c).await;
    }
}
