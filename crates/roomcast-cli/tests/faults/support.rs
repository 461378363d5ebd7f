//! The harness of `faults.rs`: nodes as child processes, native clients,
//! positions in a room's stream and the resume check, a TCP proxy that can
//! stall, and a webhook receiver.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

pub const WAIT: Duration = Duration::from_secs(10);

pub struct Node {
    pub child: tokio::process::Child,
    pub addr: String,
}

impl Node {
    /// Starts a node on the broker `redis` with heartbeats every 250 ms and
    /// nodes dead after 2.5 s (ten missed beats), plus `env`.
    pub async fn start(redis: &str, env: &[(&str, &str)]) -> Node {
        let mut all = vec![
            ("ROOMCAST_BROKER_HEARTBEAT_MS", "250"),
            ("ROOMCAST_BROKER_NODE_TTL_MS", "2500"),
        ];
        all.extend_from_slice(env);
        let (child, addr) = crate::spawn::serve(&["--broker", redis], &all, "FAULTS_LOG").await;
        Node { child, addr }
    }

    /// SIGKILL: the node cleans up nothing.
    pub async fn kill(&mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    /// Panics when the process has exited.
    pub fn assert_running(&mut self) {
        let status = self.child.try_wait().unwrap();
        assert!(status.is_none(), "node {} exited: {status:?}", self.addr);
    }

    /// GET `path`: status and JSON body, or `None` when the request failed or
    /// took more than 5 s.
    pub async fn get(&self, path: &str) -> Option<(u16, Value)> {
        let r = http()
            .get(format!("http://{}{path}", self.addr))
            .send()
            .await
            .ok()?;
        let status = r.status().as_u16();
        Some((status, r.json().await.ok()?))
    }

    pub async fn health(&self) -> String {
        match self.get("/healthz").await {
            Some((_, v)) => v["status"].as_str().unwrap_or("?").to_owned(),
            None => "no answer".into(),
        }
    }

    /// Polls `/healthz` until its status is `want`, failing after `within`.
    pub async fn until_health(&self, want: &str, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let h = self.health().await;
            if h == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "/healthz of {} never said {want} within {within:?}; last {h}",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of an unlabelled metric; panics when it is missing.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = http()
            .get(format!("http://{}/metrics", self.addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in {text}"))
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Client {
    pub ws: Ws,
    pub conn: String,
    pub next_id: u64,
    pub early: std::collections::VecDeque<Value>,
}

impl Client {
    pub async fn connect(addr: &str, user: &str) -> Client {
        let (ws, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
        )
        .await
        .expect("the upgrade in time")
        .unwrap();
        let mut c = Client {
            ws,
            conn: String::new(),
            next_id: 0,
            early: Default::default(),
        };
        let welcome = c.next("welcome").await;
        c.conn = welcome["conn"].as_str().unwrap().to_owned();
        c.call(json!({"type": "auth", "user": user})).await;
        c
    }

    pub async fn call(&mut self, cmd: Value) -> Value {
        let f = self.answer(cmd.clone()).await;
        assert_eq!(f["type"], "ack", "{cmd} answered {f}");
        f
    }

    /// Sends a command with an id and returns its answer (ack or error).
    pub async fn answer(&mut self, cmd: Value) -> Value {
        self.answer_within(cmd, WAIT)
            .await
            .expect("an answer in time")
    }

    /// As `answer`, `None` when no answer came within `within`.
    pub async fn answer_within(&mut self, mut cmd: Value, within: Duration) -> Option<Value> {
        self.next_id += 1;
        let id = self.next_id;
        cmd["id"] = json!(id);
        self.ws.send(Message::text(cmd.to_string())).await.unwrap();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let f = tokio::time::timeout_at(deadline, self.read()).await.ok()?;
            if f["id"] == json!(id) {
                return Some(f);
            }
            self.early.push_back(f);
        }
    }

    pub async fn read(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("the connection is open")
                .unwrap();
            if let Message::Text(t) = m {
                return serde_json::from_str(t.as_str()).unwrap();
            }
        }
    }

    pub async fn next(&mut self, kind: &str) -> Value {
        loop {
            let f = match self.early.pop_front() {
                Some(f) => f,
                None => self.read().await,
            };
            if f["type"] == kind {
                return f;
            }
        }
    }

    /// The next message of `room`, skipping other frames.
    pub async fn message_in(&mut self, room: &str) -> Value {
        loop {
            let m = self.next("message").await;
            if m["room"] == room {
                return m;
            }
        }
    }
}

/// A position in a room's stream, and the publisher's number of the last
/// message seen (`n` in its data).
#[derive(Clone, Debug)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
    pub n: u64,
}

pub fn position_of(ack: &Value) -> Position {
    Position {
        epoch: ack["epoch"].as_str().expect("an epoch").to_owned(),
        offset: ack["offset"].as_u64().expect("an offset"),
        n: 0,
    }
}

/// Joins `room` with `since` on a fresh connection and reads the replay:
/// `Some(top)` when recovered (after checking the replay is exactly the stream
/// after `since`: offsets contiguous, `n` increasing, every `must` number after
/// `since.n` there and nothing that is not in `may`, when given), `None` when not.
pub async fn resume(
    c: &mut Client,
    room: &str,
    since: &Position,
    must: &HashSet<u64>,
    may: Option<&HashSet<u64>>,
) -> (Value, Option<Position>, Vec<u64>) {
    let ack = c
        .call(json!({"type": "join", "room": room,
            "since": {"offset": since.offset, "epoch": since.epoch}}))
        .await;
    if ack["recovered"] != true {
        assert_eq!(ack["recovered"], false, "{ack}");
        return (ack, None, Vec::new());
    }
    let top = position_of(&ack);
    assert_eq!(top.epoch, since.epoch, "recovered in another epoch: {ack}");
    let mut got = Vec::new();
    let mut at = since.offset;
    while at < top.offset {
        let m = c.message_in(room).await;
        at += 1;
        assert_eq!(
            m["offset"], at,
            "replay after {since:?}: gap or duplicate at {m}"
        );
        assert_eq!(m["epoch"], since.epoch.as_str(), "{m}");
        got.push(m["data"]["n"].as_u64().unwrap());
    }
    assert!(
        got.windows(2).all(|w| w[0] < w[1]) && got.first().is_none_or(|&f| f > since.n),
        "replay after {since:?} out of order: {got:?}"
    );
    let got_set: HashSet<u64> = got.iter().copied().collect();
    let missing: Vec<u64> = must
        .iter()
        .copied()
        .filter(|n| *n > since.n && !got_set.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "replay after {since:?} lacks acknowledged publications {missing:?}"
    );
    let strays: Vec<u64> = got
        .iter()
        .copied()
        .filter(|n| !must.contains(n) && may.is_some_and(|may| !may.contains(n)))
        .collect();
    assert!(
        strays.is_empty(),
        "replay has unknown publications {strays:?}"
    );
    let n = got.last().copied().unwrap_or(since.n);
    (ack, Some(Position { n, ..top }), got)
}

/// A TCP proxy on 127.0.0.1 to `upstream`; while the switch is off it reads
/// nothing and writes nothing, but closes no socket.
pub struct StallProxy {
    pub addr: String,
    pub flowing: watch::Sender<bool>,
}

impl StallProxy {
    pub async fn start(upstream: u16) -> StallProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (flowing, rx) = watch::channel(true);
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let rx = rx.clone();
                tokio::spawn(async move {
                    let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    tokio::select! {
                        _ = pump(dr, uw, rx.clone()) => {}
                        _ = pump(ur, dw, rx) => {}
                    }
                });
            }
        });
        StallProxy { addr, flowing }
    }

    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    pub fn set(&self, on: bool) {
        self.flowing.send_replace(on);
    }
}

/// Copies `from` to `to`, holding still (before reading and before writing)
/// while the switch is off.
pub async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut flowing: watch::Receiver<bool>,
) {
    let mut buf = vec![0; 16 * 1024];
    loop {
        if flowing.wait_for(|f| *f).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if flowing.wait_for(|f| *f).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Polls `path` on `node` until `ok`, failing after `within`; returns how long it took.
pub async fn poll(
    node: &Node,
    path: &str,
    within: Duration,
    ok: impl Fn(&Option<(u16, Value)>) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let v = node.get(path).await;
        if ok(&v) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{path} on {} never satisfied the condition within {within:?}; last {v:?}",
            node.addr
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A raw HTTP/1.1 webhook receiver: every JSON body posted to it, answered 200.
pub async fn webhook_receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let g = g.clone();
            tokio::spawn(async move {
                let _ = serve_hooks(s, g).await;
            });
        }
    });
    (url, got)
}

pub async fn serve_hooks(mut s: TcpStream, got: Arc<Mutex<Vec<Value>>>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = vec![0; 16 * 1024];
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < end + len {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        if let Ok(v) = serde_json::from_slice(&buf[end..end + len]) {
            got.lock().unwrap().push(v);
        }
        buf.drain(..end + len);
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await?;
    }
}
