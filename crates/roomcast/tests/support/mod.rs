//! Test helpers: a server on 127.0.0.1 port 0, a native WebSocket client, an
//! HTTP API client and a raw socket for frames a well-behaved client never sends.
#![allow(dead_code)]

pub mod backend;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

use roomcast::{Config, Server};

/// How long any single expected event may take before the test fails.
pub const STEP: Duration = Duration::from_secs(5);

/// The bound on a wait that reads any number of other frames before the one it
/// wants (each frame within `STEP`): it fails instead of running for ever when
/// frames keep coming but never the awaited one.
pub const LONGEST: Duration = Duration::from_secs(60);

/// Fails the test with `what` if `f` does not finish within `LONGEST`.
pub async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(LONGEST, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: nothing after {LONGEST:?}"),
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub server: Server,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    http: reqwest::Client,
}

/// A configuration for tests: small, quick limits are set by each test.
pub fn config() -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    c.shutdown.drain_ms = 2_000;
    c
}

pub async fn start(config: Config) -> TestServer {
    start_server(Server::new(config)).await
}

/// Serves an already built server on its configured (port 0) address.
pub async fn start_server(server: Server) -> TestServer {
    let listener = tokio::net::TcpListener::bind(server.config().listen)
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let s = server.clone();
    let task = tokio::spawn(async move {
        let router = s.router();
        s.run(listener, router, async {
            let _ = rx.await;
        })
        .await
    });
    TestServer {
        addr,
        server,
        stop: Some(tx),
        task: Some(task),
        http: reqwest::Client::new(),
    }
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr, "/ws").await
    }

    /// A client that authenticated as `user` (open mode), with its welcome read.
    pub async fn user(&self, user: &str) -> Client {
        let mut c = self.client().await;
        c.welcome().await;
        let ack = c.request(json!({"type": "auth", "user": user})).await;
        assert_eq!(ack["type"], "ack", "{ack}");
        c
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.post_with_key(path, body, None).await
    }

    pub async fn post_with_key(&self, path: &str, body: Value, key: Option<&str>) -> (u16, Value) {
        let mut req = self.http.post(self.url(path)).json(&body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_raw(&self, path: &str, body: &str) -> (u16, Value) {
        let resp = self
            .http
            .post(self.url(path))
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self.http.get(self.url(path)).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn http_delete(&self, path: &str) -> u16 {
        let resp = self.http.delete(self.url(path)).send().await.unwrap();
        resp.status().as_u16()
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let resp = self.http.get(self.url(path)).send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// The value of one sample of `/metrics`, e.g. `roomcast_joins_total` or
    /// `roomcast_disconnects_total{code="4001"}`. A labelled sample not seen
    /// yet reads 0, but the metric itself must be on the page (its `# TYPE`
    /// line): a renamed or missing metric fails the test instead of reading 0.
    pub async fn metric(&self, sample: &str) -> f64 {
        let (_, m) = self.get_text("/metrics").await;
        let name = sample.split('{').next().unwrap();
        let family = |n: &str| {
            m.lines().any(|l| {
                l.strip_prefix("# TYPE ")
                    .and_then(|r| r.split_whitespace().next())
                    == Some(n)
            })
        };
        // Histograms and summaries are typed by their base name.
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            family(name) || family(base),
            "no metric {name} on /metrics:\n{m}"
        );
        m.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }

    /// A native client connecting with extra handshake headers.
    pub async fn client_with(&self, path: &str, headers: &[(&str, &str)]) -> Client {
        match Client::try_connect(self.addr, path, headers).await {
            Ok(c) => c,
            Err((status, body)) => panic!("upgrade refused: {status} {body}"),
        }
    }

    /// Triggers graceful shutdown and waits for `run` to return.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("server stopped in time")
                .unwrap()
                .unwrap();
        }
    }
}

/// A long-polling Engine.IO session on the server's `/socket.io/`; every
/// request carries the same extra headers (cookies, as a browser's would).
pub struct Polling {
    http: reqwest::Client,
    /// The session's URL, `sid` included.
    pub url: String,
    headers: Vec<(String, String)>,
}

impl Polling {
    pub async fn open(srv: &TestServer, headers: &[(&str, &str)]) -> Polling {
        let mut p = Polling {
            http: reqwest::Client::new(),
            url: srv.url("/socket.io/?EIO=4&transport=polling"),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let (status, open) = p.poll().await;
        assert_eq!(status, 200, "{open}");
        let sid = serde_json::from_str::<Value>(&open[1..]).unwrap()["sid"]
            .as_str()
            .unwrap()
            .to_owned();
        p.url = format!("{}&sid={sid}", p.url);
        p
    }

    fn request(&self, method: reqwest::Method) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, &self.url);
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        req
    }

    /// POSTs a payload; returns the status and body.
    pub async fn post(&self, body: &str) -> (u16, String) {
        let r = self
            .request(reqwest::Method::POST)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// One long-polling GET, bounded by the step timeout.
    pub async fn poll(&self) -> (u16, String) {
        let r = tokio::time::timeout(STEP, self.request(reqwest::Method::GET).send())
            .await
            .expect("a poll answered in time")
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Polls until the session ends (a CLOSE packet, or an unknown session).
    pub async fn until_closed(&self) {
        bounded("the session ends", async {
            loop {
                let (status, body) = self.poll().await;
                if status != 200 || body.split('\x1e').any(|p| p == "1") {
                    return;
                }
            }
        })
        .await
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A native protocol client.
pub struct Client {
    ws: Ws,
    next_id: u64,
    /// Frames read while looking for something else, in order.
    pending: std::collections::VecDeque<Value>,
    pub conn: String,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq)]
pub struct Closed {
    pub disconnect: Option<Value>,
    pub code: Option<u16>,
}

impl Client {
    pub async fn connect(addr: SocketAddr, path: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}{path}"))
            .await
            .expect("websocket connects");
        Client {
            ws,
            next_id: 1,
            pending: Default::default(),
            conn: String::new(),
        }
    }

    /// Upgrades with extra headers; a refused upgrade gives its status and JSON body.
    pub async fn try_connect(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, (u16, Value)> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
        for (k, v) in headers {
            req.headers_mut().append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Ok(Client {
                ws,
                next_id: 1,
                pending: Default::default(),
                conn: String::new(),
            }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body = resp
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                Err((resp.status().as_u16(), body))
            }
            Err(e) => panic!("websocket handshake failed: {e}"),
        }
    }

    /// Frames read and kept while looking for something else.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    pub async fn welcome(&mut self) -> Value {
        let w = self.recv().await;
        assert_eq!(w["type"], "welcome", "{w}");
        self.conn = w["conn"].as_str().unwrap().to_owned();
        w
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
    }

    /// Sends the frames in one write: the server reads them together, so a
    /// test about rates does not depend on how the machine schedules the
    /// sender (a 1/s limit refills if two sends land a second apart).
    pub async fn send_batch(&mut self, frames: impl IntoIterator<Item = Message>) {
        for m in frames {
            self.ws.feed(m).await.unwrap();
        }
        self.ws.flush().await.unwrap();
    }

    /// The next JSON frame (pings are answered by the library and skipped).
    pub async fn recv(&mut self) -> Value {
        if let Some(v) = self.pending.pop_front() {
            return v;
        }
        self.recv_wire().await
    }

    async fn recv_wire(&mut self) -> Value {
        match self.recv_message().await {
            Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
            other => panic!("unexpected frame {other:?}"),
        }
    }

    /// The next frame as it came, text or binary (pings are answered by the
    /// library and skipped): for clients that speak no JSON protocol.
    pub async fn recv_message(&mut self) -> Message {
        loop {
            let m = tokio::time::timeout(STEP, self.ws.next())
                .await
                .expect("a frame within the step timeout")
                .expect("connection open")
                .expect("no websocket error");
            match m {
                Message::Ping(_) | Message::Pong(_) => continue,
                m => return m,
            }
        }
    }

    /// The next frame of `ty`; frames of other types are kept for later `recv`s.
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        if let Some(i) = self.pending.iter().position(|v| v["type"] == ty) {
            return self.pending.remove(i).unwrap();
        }
        let what = format!("a {ty} frame");
        bounded(&what, async {
            loop {
                let v = self.recv_wire().await;
                if v["type"] == ty {
                    return v;
                }
                self.pending.push_back(v);
            }
        })
        .await
    }

    /// Sends a command with a fresh id and returns its ack or error.
    pub async fn request(&mut self, mut v: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        v["id"] = id.into();
        self.send(v).await;
        bounded("the answer to a command", async {
            loop {
                if let Some(i) = self
                    .pending
                    .iter()
                    .position(|f| f["id"] == id && (f["type"] == "ack" || f["type"] == "error"))
                {
                    return self.pending.remove(i).unwrap();
                }
                let f = self.recv_wire().await;
                if f["id"] == id && (f["type"] == "ack" || f["type"] == "error") {
                    return f;
                }
                self.pending.push_back(f);
            }
        })
        .await
    }

    pub async fn join(&mut self, room: &str) {
        let ack = self.request(json!({"type": "join", "room": room})).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }

    /// Reads until the server closes; returns the disconnect frame and close code.
    pub async fn closed(mut self) -> Closed {
        let mut disconnect = self
            .pending
            .iter()
            .find(|v| v["type"] == "disconnect")
            .cloned();
        let deadline = tokio::time::Instant::now() + LONGEST;
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("close within the step timeout");
            match m {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["type"] == "disconnect" {
                        disconnect = Some(v);
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    return Closed {
                        disconnect,
                        code: frame.map(|f| u16::from(f.code)),
                    };
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    return Closed {
                        disconnect,
                        code: None,
                    }
                }
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Read until the server's close arrives.
        let deadline = tokio::time::Instant::now() + STEP;
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, self.ws.next()).await {}
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token for `claims`, signed with `secret`.
pub fn hs256(secret: &str, claims: &Value) -> String {
    sign(jsonwebtoken::Algorithm::HS256, secret.as_bytes(), claims)
}

/// A token signed with an HMAC algorithm and the raw `key` bytes.
pub fn sign(alg: jsonwebtoken::Algorithm, key: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(key),
    )
    .unwrap()
}

/// A WebSocket client over a bare TCP socket: it never answers pings and can
/// send any bytes. Server frames are unmasked; client frames must be masked.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr, path: &str) -> RawClient {
        RawClient::connect_with(TcpStream::connect(addr).await.unwrap(), addr, path).await
    }

    /// A client whose kernel receive buffer is small, so that it fills fast.
    pub async fn connect_small_buffer(addr: SocketAddr, path: &str) -> RawClient {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        RawClient::connect_with(socket.connect(addr).await.unwrap(), addr, path).await
    }

    async fn connect_with(mut stream: TcpStream, addr: SocketAddr, path: &str) -> RawClient {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "server closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                assert!(head.starts_with("HTTP/1.1 101"), "{head}");
                buf.drain(..end + 4);
                return RawClient { stream, buf };
            }
        }
    }

    /// Sends one masked frame with the given opcode and payload.
    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        let mut f = vec![0x80 | opcode];
        let len = payload.len();
        if len < 126 {
            f.push(0x80 | len as u8);
        } else if len < 65536 {
            f.push(0x80 | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mask = [1u8, 2, 3, 4];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&f).await.unwrap();
    }

    /// Reads frames until the server's close frame (or EOF); returns the
    /// opcodes seen, the text frames, and the close code.
    /// Fails after `STEP * 4` in all, however many frames keep arriving.
    pub async fn read_until_close(&mut self) -> (Vec<u8>, Vec<String>, Option<u16>) {
        let (mut ops, mut texts) = (Vec::new(), Vec::new());
        let deadline = tokio::time::Instant::now() + STEP * 4;
        loop {
            while let Some((op, payload, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                ops.push(op);
                match op {
                    0x1 => texts.push(String::from_utf8(payload).unwrap()),
                    0x8 => {
                        let code = (payload.len() >= 2)
                            .then(|| u16::from_be_bytes([payload[0], payload[1]]));
                        return (ops, texts, code);
                    }
                    _ => {}
                }
            }
            let mut chunk = [0u8; 4096];
            let n: usize = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .expect("the server closed in time")
                .unwrap_or_default();
            if n == 0 {
                return (ops, texts, None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn parse_frame(b: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if b.len() < 2 {
        return None;
    }
    let op = b[0] & 0x0f;
    let (len, mut at) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
        127 if b.len() >= 10 => (
            u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
            10,
        ),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if b[1] & 0x80 != 0 {
        at += 4;
    }
    if b.len() < at + len {
        return None;
    }
    Some((op, b[at..at + len].to_vec(), at + len))
}
