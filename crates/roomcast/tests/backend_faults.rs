//! Backend proxy faults: the connect proxy (`auth.mode = "proxy"`), the
//! subscribe proxy (a rule with `join = "proxy"`) and the event proxy
//! (`proxy.rpc_url`) against a backend that hangs, answers just under or over
//! `proxy.timeout_ms`, answers 5xx, refuses connections (port closed) or
//! closes the connection mid-request. Each fault gets its documented answer
//! (docs/security.md), `proxy.max_in_flight` bounds the requests the backend
//! sees at once, `proxy.retries` retries a refused connection, and a client
//! in the same room that does not use the backend keeps receiving.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use roomcast::config::AuthMode;
use roomcast_core::room::{JoinRule, RoomRule};
use support::{bounded, config, start, Client, TestServer};

/// `proxy.timeout_ms` in these tests: generous, so that only a fault reaches it.
const TIMEOUT_MS: u64 = 1_500;

/// How the fake backend treats every request.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Reads the request and never answers (until roomcast gives up).
    Hang,
    /// Answers 200 with the right body after this many milliseconds.
    Delay(u64),
    /// Answers 500.
    Status500,
    /// Reads the request headers, then closes the connection.
    CloseMidRequest,
}

/// A backend over raw TCP that counts the requests it holds at once.
struct FakeBackend {
    addr: SocketAddr,
    peak: Arc<AtomicUsize>,
    seen: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// Decrements the in-flight count when a request is done, however it ends.
struct Held(Arc<AtomicUsize>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FakeBackend {
    async fn start(fault: Fault) -> FakeBackend {
        FakeBackend::after_ok(0, fault).await
    }

    /// Answers the first `ok_first` requests at once, then has `fault`.
    async fn after_ok(ok_first: usize, fault: Fault) -> FakeBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        FakeBackend::on(listener, ok_first, fault)
    }

    fn on(listener: TcpListener, ok_first: usize, fault: Fault) -> FakeBackend {
        let addr = listener.local_addr().unwrap();
        let (in_flight, peak, seen): (Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicUsize>) =
            Default::default();
        let (i, p, n) = (Arc::clone(&in_flight), Arc::clone(&peak), Arc::clone(&seen));
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let (i, p, n) = (i.clone(), p.clone(), n.clone());
                tokio::spawn(serve(s, ok_first, fault, i, p, n));
            }
        });
        FakeBackend {
            addr,
            peak,
            seen,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut s: TcpStream,
    ok_first: usize,
    fault: Fault,
    in_flight: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    seen: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_end, body_len) = loop {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (end + 4, len);
        }
    };
    let path = String::from_utf8_lossy(&buf[..head_end])
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_owned();
    let fault = if seen.fetch_add(1, Ordering::SeqCst) < ok_first {
        Fault::Delay(0)
    } else {
        fault
    };
    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    peak.fetch_max(now, Ordering::SeqCst);
    let _held = Held(in_flight);
    if let Fault::CloseMidRequest = fault {
        return;
    }
    while buf.len() < head_end + body_len {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let (status, body) = match fault {
        Fault::Hang => {
            // Until roomcast closes the connection.
            while let Ok(n) = s.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
            }
            return;
        }
        Fault::Delay(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let body = match path.as_str() {
                "/connect" => json!({"user": "proxied"}),
                "/rpc" => json!({"result": {"ok": true}}),
                _ => json!({}),
            };
            ("200 OK", body.to_string())
        }
        Fault::Status500 => ("500 Internal Server Error", "{}".to_owned()),
        Fault::CloseMidRequest => unreachable!(),
    };
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(answer.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// A URL on 127.0.0.1 whose port refuses connections (bound, then closed).
fn refused_url(path: &str) -> (u16, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    (port, format!("http://127.0.0.1:{port}/{path}"))
}

fn proxy_config() -> roomcast::Config {
    let mut c = config();
    c.proxy.secret = "proxy-secret".into();
    c.proxy.timeout_ms = TIMEOUT_MS;
    c
}

/// The faults tried on every proxy, with a name for failure messages.
/// `None` is the refused connection.
fn faults() -> Vec<(&'static str, Option<Fault>)> {
    vec![
        ("hang", Some(Fault::Hang)),
        (
            "just over timeout_ms",
            Some(Fault::Delay(TIMEOUT_MS + 1_000)),
        ),
        ("5xx", Some(Fault::Status500)),
        ("closed mid-request", Some(Fault::CloseMidRequest)),
        ("connection refused", None),
    ]
}

/// Starts the backend for `fault` (answering the first `ok_first` requests
/// well) and returns its URL (a refused one when `fault` is `None`) and the
/// backend to keep alive.
async fn backend_for(
    ok_first: usize,
    fault: Option<Fault>,
    path: &str,
) -> (String, Option<FakeBackend>) {
    match fault {
        Some(f) => {
            let b = FakeBackend::after_ok(ok_first, f).await;
            (b.url(path), Some(b))
        }
        None => (refused_url(path).1, None),
    }
}

/// Publishes `n` to `room` over the HTTP API and waits until `witness` has it.
async fn witness_receives(srv: &TestServer, witness: &mut Client, room: &str, n: u64) {
    let (status, body) = srv
        .post(
            "/api/publish",
            json!({"room": room, "event": "tick", "data": n}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    bounded("the witness's publication", async {
        loop {
            if witness.recv_type("message").await["data"] == n {
                return;
            }
        }
    })
    .await;
}

/// Reads `c`'s frames until the ack or error with `id`.
async fn answer(c: &mut Client, id: u64) -> Value {
    bounded("the rpc answer", async {
        loop {
            let f = c.recv().await;
            if f["id"] == id && (f["type"] == "ack" || f["type"] == "error") {
                return f;
            }
        }
    })
    .await
}

/// The event proxy: every fault answers the caller with `backend_timeout`
/// (no answer within `timeout_ms`) or `backend_error` (5xx, a dropped
/// connection, a refused one); an answer just under the timeout is the ack.
/// While each call is outstanding, a witness in the caller's room keeps
/// receiving publications.
#[tokio::test]
async fn rpc_proxy_faults() {
    let mut cases = faults();
    cases.push(("just under timeout_ms", Some(Fault::Delay(TIMEOUT_MS / 5))));
    for (what, fault) in cases {
        let (url, _backend) = backend_for(0, fault, "rpc").await;
        let mut c = proxy_config();
        c.proxy.rpc_url = url;
        c.proxy.retries = 0;
        let srv = start(c).await;
        let mut witness = srv.user("witness").await;
        witness.join("lobby").await;
        let mut caller = srv.user("caller").await;
        caller.join("lobby").await;
        caller
            .send(json!({"type": "rpc", "event": "slow", "data": {}, "id": 77}))
            .await;
        witness_receives(&srv, &mut witness, "lobby", 1).await;
        let a = answer(&mut caller, 77).await;
        let want = match fault {
            Some(Fault::Hang) => "backend_timeout",
            Some(Fault::Delay(ms)) if ms > TIMEOUT_MS => "backend_timeout",
            Some(Fault::Delay(_)) => "",
            _ => "backend_error",
        };
        if want.is_empty() {
            assert_eq!(a["type"], "ack", "{what}: {a}");
            assert_eq!(a["result"]["ok"], true, "{what}: {a}");
        } else {
            assert_eq!(a["type"], "error", "{what}: {a}");
            assert_eq!(a["code"], want, "{what}: {a}");
        }
        // The caller's connection is still usable.
        caller.join("after").await;
        witness_receives(&srv, &mut witness, "lobby", 2).await;
        srv.stop().await;
    }
}

/// The connect proxy: every fault closes the handshake with 4004 (a
/// reconnect may work); an answer just under the timeout lets the client
/// in. A client already in the room (let in by the backend's first,
/// good answer) keeps receiving meanwhile.
#[tokio::test]
async fn connect_proxy_faults() {
    let mut cases = faults();
    cases.push(("just under timeout_ms", Some(Fault::Delay(TIMEOUT_MS / 5))));
    for (what, fault) in cases {
        let (url, _backend) = backend_for(1, fault, "connect").await;
        let mut c = proxy_config();
        c.auth.mode = AuthMode::Proxy;
        c.proxy.connect_url = url;
        c.proxy.retries = 0;
        let srv = start(c).await;
        // With a refused connection nobody gets in: no witness then.
        let mut witness = match fault {
            Some(_) => {
                let mut w = srv.client().await;
                w.welcome().await;
                w.join("lobby").await;
                Some(w)
            }
            None => None,
        };
        let client = Client::connect(srv.addr, "/ws").await;
        if let Some(w) = witness.as_mut() {
            witness_receives(&srv, w, "lobby", 1).await;
        }
        match fault {
            Some(Fault::Delay(ms)) if ms < TIMEOUT_MS => {
                let mut client = client;
                let w = client.welcome().await;
                assert_eq!(w["user"], "proxied", "{what}: {w}");
            }
            _ => {
                let closed = client.closed().await;
                assert_eq!(closed.code, Some(4004), "{what}: {closed:?}");
            }
        }
        if let Some(w) = witness.as_mut() {
            witness_receives(&srv, w, "lobby", 2).await;
        }
        srv.stop().await;
    }
}

/// The subscribe proxy: a join of a `join = "proxy"` room answers
/// `backend_timeout` when the backend does not answer in time and an error
/// for a 5xx, a dropped or a refused connection; a good answer just under
/// the timeout lets the client in. A witness in another room keeps receiving.
#[tokio::test]
async fn subscribe_proxy_faults() {
    let mut cases = faults();
    cases.push(("just under timeout_ms", Some(Fault::Delay(TIMEOUT_MS / 5))));
    for (what, fault) in cases {
        let (url, _backend) = backend_for(0, fault, "subscribe").await;
        let mut c = proxy_config();
        c.proxy.subscribe_url = url;
        c.proxy.retries = 0;
        c.rooms = vec![RoomRule {
            join: JoinRule::Proxy,
            ..RoomRule::default_for("gated:*")
        }];
        let srv = start(c).await;
        let mut witness = srv.user("witness").await;
        witness.join("lobby").await;
        let mut joiner = srv.user("joiner").await;
        joiner
            .send(json!({"type": "join", "room": "gated:1", "id": 77}))
            .await;
        witness_receives(&srv, &mut witness, "lobby", 1).await;
        let a = answer(&mut joiner, 77).await;
        match fault {
            Some(Fault::Delay(ms)) if ms < TIMEOUT_MS => {
                assert_eq!(a["type"], "ack", "{what}: {a}")
            }
            Some(Fault::Hang | Fault::Delay(_)) => {
                assert_eq!(a["code"], "backend_timeout", "{what}: {a}")
            }
            _ => assert_eq!(a["code"], "backend_error", "{what}: {a}"),
        }
        joiner.join("lobby").await;
        witness_receives(&srv, &mut witness, "lobby", 2).await;
        srv.stop().await;
    }
}

/// `proxy.max_in_flight = 2`: eight clients call the event proxy at once;
/// the backend never holds more than two requests, and (with a timeout long
/// enough for four rounds) every call is answered.
#[tokio::test]
async fn max_in_flight_bounds_backend_requests() {
    let backend = FakeBackend::start(Fault::Delay(300)).await;
    let mut c = proxy_config();
    c.proxy.rpc_url = backend.url("rpc");
    c.proxy.max_in_flight = 2;
    c.proxy.timeout_ms = 10_000;
    let srv = start(c).await;
    let mut callers = Vec::new();
    for i in 0..8 {
        callers.push(srv.user(&format!("c{i}")).await);
    }
    for c in callers.iter_mut() {
        c.send(json!({"type": "rpc", "event": "e", "data": {}, "id": 5}))
            .await;
    }
    for c in callers.iter_mut() {
        let a = answer(c, 5).await;
        assert_eq!(a["type"], "ack", "{a}");
    }
    assert_eq!(backend.seen.load(Ordering::SeqCst), 8);
    let peak = backend.peak.load(Ordering::SeqCst);
    assert!(peak <= 2, "the backend held {peak} requests at once");
    assert_eq!(peak, 2, "the calls did overlap");
    srv.stop().await;
}

/// `proxy.retries` on a refused connection: with `retries = 0` a call to a
/// closed port fails with `backend_error`; with `retries = 6` (backoff
/// from 50 ms, doubling: 3 s in all) the same call succeeds once a backend
/// comes up on that port while roomcast is still retrying, and the backend
/// sees the call once.
#[tokio::test]
async fn refused_rpc_is_retried() {
    for retries in [0, 6] {
        // Bound but not listening: connections are refused, and the port
        // stays ours until the backend listens on it.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = socket.local_addr().unwrap().port();
        let mut c = proxy_config();
        c.proxy.rpc_url = format!("http://127.0.0.1:{port}/rpc");
        c.proxy.retries = retries;
        let srv = start(c).await;
        let mut caller = srv.user("caller").await;
        caller
            .send(json!({"type": "rpc", "event": "e", "data": {}, "id": 9}))
            .await;
        let backend = if retries > 0 {
            // Let the first attempts be refused, then open the port.
            tokio::time::sleep(Duration::from_millis(200)).await;
            Some(FakeBackend::on(
                socket.listen(128).unwrap(),
                0,
                Fault::Delay(0),
            ))
        } else {
            None
        };
        let a = answer(&mut caller, 9).await;
        match &backend {
            None => assert_eq!(a["code"], "backend_error", "{a}"),
            Some(b) => {
                assert_eq!(a["type"], "ack", "{a}");
                assert_eq!(b.seen.load(Ordering::SeqCst), 1);
            }
        }
        srv.stop().await;
    }
}
