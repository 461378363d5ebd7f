//! A minimal Engine.IO/Socket.IO client speaking raw packets, for tests: it
//! shows exactly what is on the wire.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// Serves `app` on a free loopback port.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// How long any single expected packet may take.
pub const STEP: Duration = Duration::from_secs(5);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A Socket.IO client on the WebSocket transport.
pub struct Sio {
    pub ws: Ws,
    pub sid: String,
    /// Answer server pings automatically.
    pub auto_pong: bool,
}

impl Sio {
    /// Opens an Engine.IO session on WebSocket at `path` (e.g. `/socket.io/`).
    pub async fn open(addr: SocketAddr, path: &str) -> (Sio, Value) {
        Sio::open_with(addr, path, &[]).await
    }

    /// Opens a session whose handshake carries extra headers (cookies, `Authorization`).
    pub async fn open_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (Sio, Value) {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{addr}{path}?EIO=4&transport=websocket")
            .into_client_request()
            .unwrap();
        for (k, v) in headers {
            req.headers_mut().append(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let mut c = Sio {
            ws,
            sid: String::new(),
            auto_pong: true,
        };
        let open = c.recv().await;
        let handshake: Value =
            serde_json::from_str(open.strip_prefix('0').expect("an open packet")).unwrap();
        (c, handshake)
    }

    /// Opens a session and connects to `nsp` with `auth`; returns the client
    /// and the server's answer to CONNECT without the leading `4`
    /// (`0{"sid":...}` or `4{error}`).
    pub async fn connect(addr: SocketAddr, nsp: &str, auth: Value) -> (Sio, String) {
        Sio::connect_with(addr, nsp, auth, &[]).await
    }

    /// [`connect`](Sio::connect) with extra handshake headers.
    pub async fn connect_with(
        addr: SocketAddr,
        nsp: &str,
        auth: Value,
        headers: &[(&str, &str)],
    ) -> (Sio, String) {
        let (mut c, _) = Sio::open_with(addr, "/socket.io/", headers).await;
        let prefix = if nsp == "/" {
            String::new()
        } else {
            format!("{nsp},")
        };
        c.send(&format!("40{prefix}{auth}")).await;
        let answer = c.recv_sio().await;
        if let Some(body) = answer.strip_prefix('0') {
            let body = body.strip_prefix(&prefix).unwrap_or(body);
            c.sid = serde_json::from_str::<Value>(body).unwrap()["sid"]
                .as_str()
                .unwrap()
                .to_owned();
        }
        (c, answer)
    }

    pub async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    pub async fn send_binary(&mut self, data: &[u8]) {
        self.ws.send(Message::binary(data.to_vec())).await.unwrap();
    }

    /// The next frame: text as is, binary as `bin:<hex>`, a close as `close:<code>`.
    pub async fn recv(&mut self) -> String {
        loop {
            let m = tokio::time::timeout(STEP, self.ws.next())
                .await
                .expect("a packet in time");
            match m {
                Some(Ok(Message::Text(t))) if t.as_str() == "2" && self.auto_pong => {
                    self.send("3").await
                }
                Some(Ok(Message::Text(t))) => return t.as_str().to_owned(),
                Some(Ok(Message::Binary(b))) => {
                    return format!(
                        "bin:{}",
                        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
                    )
                }
                Some(Ok(Message::Close(f))) => {
                    return format!("close:{}", f.map(|f| u16::from(f.code)).unwrap_or(0))
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return "closed".to_owned(),
            }
        }
    }

    /// The next Socket.IO packet (an Engine.IO message without its `4`), or the
    /// binary/close marker.
    pub async fn recv_sio(&mut self) -> String {
        loop {
            let p = self.recv().await;
            if let Some(sio) = p.strip_prefix('4') {
                return sio.to_owned();
            }
            if p.starts_with("close") || p.starts_with("bin:") {
                return p;
            }
        }
    }

    /// The next EVENT as (name, first argument).
    pub async fn event(&mut self) -> (String, Value) {
        let p = self.recv_sio().await;
        let body = p
            .strip_prefix('2')
            .unwrap_or_else(|| panic!("expected an event, got {p}"));
        let body = if body.starts_with('/') {
            &body[body.find(',').unwrap() + 1..]
        } else {
            body
        };
        let args: Vec<Value> = serde_json::from_str(body).unwrap();
        (
            args[0].as_str().unwrap().to_owned(),
            args.get(1).cloned().unwrap_or(Value::Null),
        )
    }

    /// Waits for the server to close the connection; returns the close code (0 if none).
    pub async fn closed(&mut self) -> u16 {
        loop {
            let p = self.recv().await;
            if let Some(code) = p.strip_prefix("close:") {
                return code.parse().unwrap_or(0);
            }
            if p == "closed" {
                return 0;
            }
        }
    }
}
