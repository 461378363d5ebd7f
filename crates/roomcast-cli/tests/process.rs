//! The `roomcast` process under signals and next to a real redis-server:
//! SIGINT drains like SIGTERM, the drain ends after `shutdown.drain_ms` even
//! when a client never closes, the Redis counters (`roomcast_redis_unsent_total`,
//! `roomcast_redis_malformed_total`, `roomcast_backend_errors_total`) count
//! what they say, and `broker.advertise` is the address other nodes use to
//! forward long-polling requests.

#[path = "common/spawn.rs"]
mod spawn;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use roomcast_redis::testing::RedisServer;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// The bound on any one wait for something the process does.
const WAIT: Duration = Duration::from_secs(20);

struct Node {
    child: tokio::process::Child,
    addr: String,
}

impl Node {
    /// Starts `roomcast serve` on a free port with `env`, waiting for its
    /// "listening on" line.
    async fn start(env: &[(&str, &str)]) -> Node {
        let (child, addr) = spawn::serve(&[], env, "PROCESS_LOG").await;
        Node { child, addr }
    }

    /// A node on `redis` with fast heartbeats.
    async fn on_redis(redis: &RedisServer, env: &[(&str, &str)]) -> Node {
        let url = redis.url();
        let mut all = vec![
            ("ROOMCAST_BROKER_URL", url.as_str()),
            ("ROOMCAST_BROKER_HEARTBEAT_MS", "250"),
            ("ROOMCAST_BROKER_NODE_TTL_MS", "2500"),
        ];
        all.extend_from_slice(env);
        let node = Node::start(&all).await;
        node.until_metric("roomcast_redis_connected", |v| v == 1.0)
            .await;
        node
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("still running").to_string();
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    }

    async fn exit(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("roomcast exited in time")
            .unwrap()
    }

    async fn api(&self, path: &str, body: Value) -> Value {
        let r = reqwest::Client::new()
            .post(format!("http://{}/api/{path}", self.addr))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// One sample of `/metrics` (0 when absent; the metric's family must be there).
    async fn metric(&self, sample: &str) -> f64 {
        let page = reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let name = sample.split('{').next().unwrap();
        assert!(
            page.contains(&format!("# TYPE {name} ")),
            "no metric {name}:\n{page}"
        );
        page.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// Polls a metric until `ok` holds, failing after `WAIT`.
    async fn until_metric(&self, sample: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = self.metric(sample).await;
            if ok(v) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{sample} stayed at {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A native client with its welcome read.
async fn native(node: &Node) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", node.addr))
        .await
        .unwrap();
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    ws
}

/// The next text frame as JSON, within `WAIT`.
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("no error");
        if let Message::Text(t) = m {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

/// Sends a command and returns its ack, skipping other frames.
async fn call(ws: &mut Ws, mut cmd: Value) -> Value {
    use futures_util::SinkExt;
    cmd["id"] = json!(1);
    ws.send(Message::text(cmd.to_string())).await.unwrap();
    loop {
        let f = next_json(ws).await;
        if f["id"] == 1 {
            assert_eq!(f["type"], "ack", "{cmd} answered {f}");
            return f;
        }
    }
}

/// Reads until the close; returns the disconnect frame and the close code.
async fn closed(ws: &mut Ws) -> (Option<Value>, Option<u16>) {
    let mut disconnect = None;
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Text(t))) => {
                disconnect = Some(serde_json::from_str(t.as_str()).unwrap())
            }
            Some(Ok(Message::Close(f))) => return (disconnect, f.map(|f| u16::from(f.code))),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return (disconnect, None),
        }
    }
}

/// `redis-cli -p PORT args...`; its stdout.
fn redis_cli(redis: &RedisServer, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &redis.port().to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli runs");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

// ---------------------------------------------------------------- signals

/// SIGINT (Ctrl-C) drains like SIGTERM: the client gets the disconnect frame
/// and close code 4000, and the process exits with status 0.
#[tokio::test]
async fn sigint_drains_like_sigterm() {
    let mut node = Node::start(&[("ROOMCAST_SHUTDOWN_DRAIN_MS", "5000")]).await;
    let mut ws = native(&node).await;
    node.signal("-INT");
    let (disconnect, code) = closed(&mut ws).await;
    assert_eq!(code, Some(4000));
    assert_eq!(disconnect.expect("a disconnect frame")["code"], 4000);
    drop(ws);
    let status = node.exit().await;
    assert!(status.success(), "{status:?}");
}

/// `shutdown.drain_ms`: a connection that cannot finish does not hold the
/// process. The client reads nothing, with a tiny receive buffer, while 10 MiB
/// of publications are queued for it, so the server's writes (and its close
/// frame) are stuck behind a full TCP window for as long as the write timeout
/// allows (a minute here). During the drain `/healthz` says 503 and the
/// connection is still open; once the drain expires the process exits 0.
#[tokio::test]
async fn the_drain_ends_after_drain_ms_when_a_client_never_finishes() {
    let mut node = Node::start(&[
        ("ROOMCAST_SHUTDOWN_DRAIN_MS", "4000"),
        ("ROOMCAST_HEARTBEAT_INTERVAL_MS", "30000"),
        ("ROOMCAST_HEARTBEAT_TIMEOUT_MS", "30000"),
        ("ROOMCAST_LIMITS_MAX_QUEUE_BYTES", "67108864"),
    ])
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = socket.connect(node.addr.parse().unwrap()).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        node.addr
    );
    stuck.write_all(req.as_bytes()).await.unwrap();
    // The 101 answer and the welcome frame (unmasked text, under 64 KiB).
    let mut got = Vec::new();
    let welcome: Value = tokio::time::timeout(WAIT, async {
        loop {
            let mut chunk = [0u8; 1024];
            let n = stuck.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed during the upgrade");
            got.extend_from_slice(&chunk[..n]);
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                assert!(got.starts_with(b"HTTP/1.1 101"));
                let frame = &got[end + 4..];
                let (len, at) = match frame.get(1) {
                    Some(126) if frame.len() >= 4 => {
                        (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4)
                    }
                    Some(&n) if n < 126 => (n as usize, 2),
                    _ => continue,
                };
                if frame.len() >= at + len {
                    return serde_json::from_slice(&frame[at..at + len]).unwrap();
                }
            }
        }
    })
    .await
    .expect("the upgrade and the welcome");
    let conn = welcome["conn"].as_str().expect("a conn id").to_owned();
    node.api("join", json!({"conn": conn, "room": "d"})).await;
    let chunk = "x".repeat(256 * 1024);
    for _ in 0..40 {
        node.api("publish", json!({"room": "d", "event": "e", "data": chunk}))
            .await;
    }
    node.signal("-TERM");
    // Draining (once the server has taken the signal), with the stuck
    // connection still open.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let health = reqwest::get(format!("http://{}/healthz", node.addr))
            .await
            .expect("the listener stays up during the drain");
        if health.status() == 503 {
            break;
        }
        assert_eq!(health.status(), 200);
        assert!(
            tokio::time::Instant::now() < deadline,
            "/healthz never said 503 after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(node.metric("roomcast_connections").await, 1.0);
    let status = node.exit().await;
    assert!(status.success(), "{status:?}");
    drop(stuck);
}

// ---------------------------------------------------------------- Redis counters

/// `roomcast_redis_malformed_total`: a message that is no envelope, published
/// on a room channel the node subscribes to, is counted and ignored; the node
/// keeps delivering real publications.
#[tokio::test]
async fn garbage_on_a_room_channel_is_counted_as_malformed() {
    let redis = RedisServer::start();
    let node = Node::on_redis(&redis, &[]).await;
    let mut ws = native(&node).await;
    call(&mut ws, json!({"type": "join", "room": "g"})).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while redis.subscribers("roomcast:room:g") == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never subscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = node.metric("roomcast_redis_malformed_total").await;
    for garbage in [
        "garbage",
        "",
        "{\"not\":\"an envelope\"}",
        "\u{1}\u{2}\u{3}",
    ] {
        redis_cli(&redis, &["PUBLISH", "roomcast:room:g", garbage]);
    }
    node.until_metric("roomcast_redis_malformed_total", |v| v >= before + 4.0)
        .await;
    node.api(
        "publish",
        json!({"room": "g", "event": "e", "data": {"still": "works"}}),
    )
    .await;
    let m = next_json(&mut ws).await;
    assert_eq!(
        (&m["type"], &m["data"]),
        (&json!("message"), &json!({"still": "works"})),
        "{m}"
    );
}

/// `roomcast_redis_unsent_total` and `roomcast_backend_errors_total`: when
/// Redis refuses the node's PUBLISH (an ACL without it), the envelopes it
/// accepted for other nodes are counted as unsent and the failure as a
/// backend error; with Redis killed, publications are backend errors too,
/// and local members still get them.
#[tokio::test]
async fn publications_redis_cannot_take_are_counted() {
    let mut redis = RedisServer::start();
    let node = Node::on_redis(&redis, &[]).await;
    let mut ws = native(&node).await;
    call(&mut ws, json!({"type": "join", "room": "u"})).await;
    let unsent = node.metric("roomcast_redis_unsent_total").await;
    let errors = node.metric("roomcast_backend_errors_total").await;
    assert_eq!(unsent, 0.0);

    assert_eq!(
        redis_cli(&redis, &["ACL", "SETUSER", "default", "-publish"]),
        "OK"
    );
    // An API publication is answered once its batch was sent (or failed).
    let publish = |n: u64| {
        let url = format!("http://{}/api/publish", node.addr);
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .json(&json!({"room": "u", "event": "e", "data": n}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let refused = |(status, body): (u16, Value)| {
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (503, Some("backend_unavailable")),
            "{body}"
        );
    };
    refused(publish(1).await);
    let unsent = node
        .until_metric("roomcast_redis_unsent_total", |v| v >= 1.0)
        .await;
    node.until_metric("roomcast_backend_errors_total", |v| v >= errors + 1.0)
        .await;
    // The local member got it all the same.
    assert_eq!(next_json(&mut ws).await["data"], 1);

    assert_eq!(
        redis_cli(&redis, &["ACL", "SETUSER", "default", "+publish"]),
        "OK"
    );
    let sent = node.metric("roomcast_redis_published_total").await;
    assert_eq!(publish(2).await.0, 200);
    assert!(node.metric("roomcast_redis_published_total").await > sent);
    assert_eq!(node.metric("roomcast_redis_unsent_total").await, unsent);
    assert_eq!(next_json(&mut ws).await["data"], 2);

    let errors = node.metric("roomcast_backend_errors_total").await;
    redis.kill();
    refused(publish(3).await);
    node.until_metric("roomcast_backend_errors_total", |v| v > errors)
        .await;
    assert_eq!(next_json(&mut ws).await["data"], 3);
}

// ---------------------------------------------------------------- advertise

/// A TCP relay on a port of its own to whatever address is set later;
/// counts the connections it relayed. Dropping the handle stops it and cuts
/// the connections it relayed.
struct Relay {
    addr: String,
    to: Arc<Mutex<Option<String>>>,
    relayed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start() -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let to: Arc<Mutex<Option<String>>> = Arc::default();
        let relayed = Arc::new(AtomicUsize::new(0));
        let (target, count) = (to.clone(), relayed.clone());
        let task = tokio::spawn(async move {
            // Aborting this task drops the set, and so every relayed connection.
            let mut relays = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let Some(to) = target.lock().unwrap().clone() else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                relays.spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        Relay {
            addr,
            to,
            relayed,
            task,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `broker.advertise`: node A advertises a relay's address instead of its
/// own; a long-polling request for A's session that reaches node B is
/// forwarded through that address (the relay sees it, the poll gets A's
/// answer). With the relay gone, B's forwarding fails (502) though A itself
/// is up: the advertised address, not the listen address, is what is used.
#[tokio::test]
async fn long_polling_is_forwarded_to_the_advertised_address() {
    let redis = RedisServer::start();
    let relay = Relay::start().await;
    let a = Node::on_redis(&redis, &[("ROOMCAST_BROKER_ADVERTISE", &relay.addr)]).await;
    *relay.to.lock().unwrap() = Some(a.addr.clone());
    let b = Node::on_redis(&redis, &[]).await;
    // B knows A by its advertised address.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stats: Value = reqwest::get(format!("http://{}/api/stats", b.addr))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let nodes = stats["nodes"].as_array().cloned().unwrap_or_default();
        if nodes.iter().any(|n| n["address"] == relay.addr.as_str()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "B never saw A's advertised address: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let http = reqwest::Client::new();
    let url = |node: &Node, sid: &str| {
        format!(
            "http://{}/socket.io/?EIO=4&transport=polling&sid={sid}",
            node.addr
        )
    };
    let open = http
        .get(format!(
            "http://{}/socket.io/?EIO=4&transport=polling",
            a.addr
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let handshake: Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
    let sid = handshake["sid"].as_str().unwrap().to_owned();

    // CONNECT through B: relayed to A.
    let r = http.post(url(&b, &sid)).body("40").send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap()),
        (200, "ok".to_owned())
    );
    assert!(
        relay.relayed.load(Ordering::SeqCst) >= 1,
        "not through the relay"
    );
    let reply = tokio::time::timeout(WAIT, http.get(url(&b, &sid)).send())
        .await
        .expect("the forwarded poll answered")
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(reply.starts_with("40{\"sid\""), "{reply}");

    // Without the relay, B cannot reach A at the address A advertises.
    drop(relay);
    let r = http.post(url(&b, &sid)).body("6").send().await.unwrap();
    assert_eq!(r.status(), 502);
    // A itself still has the session.
    let r = http.post(url(&a, &sid)).body("6").send().await.unwrap();
    assert_eq!(r.status(), 200);
}
