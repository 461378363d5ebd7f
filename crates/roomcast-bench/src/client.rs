//! One benchmark connection in one of three protocols.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::stats::Recorder;

/// The wire protocol and how to join and publish in it.
pub enum Protocol {
    /// roomcast's native JSON protocol.
    Native,
    /// Socket.IO v5 over Engine.IO v4 WebSocket, with join/publish events.
    SocketIo { join: String, publish: String },
    /// Plain WebSocket group chat: every frame goes to every other client.
    Plain,
}

/// One server to connect to; a cluster is several.
pub struct Target {
    pub addr: SocketAddr,
    pub path: String,
    pub protocol: Protocol,
    /// Its position among the targets: deliveries are also counted per target.
    pub node: usize,
    /// A connection token: `?token=` (native) or the CONNECT auth (Socket.IO).
    pub token: Option<String>,
}

type Ws = WebSocketStream<TcpStream>;
/// The reading half of a connection.
pub type Reader = SplitStream<Ws>;
/// The writing half of a connection, shared between tasks.
pub type Writer = Arc<Mutex<SplitSink<Ws, Message>>>;

pub struct Conn {
    target: Arc<Target>,
    sink: Arc<Mutex<SplitSink<Ws, Message>>>,
    stream: Option<SplitStream<Ws>>,
    index: usize,
    pad: String,
}

/// A distinct loopback source address per connection index, so that repeated
/// runs do not exhaust the ephemeral ports of one address pair.
fn source(index: usize, v6: bool) -> Option<IpAddr> {
    if v6 {
        return None;
    }
    let i = index % 12_000_000;
    Some(IpAddr::V4(Ipv4Addr::new(
        127,
        1 + (i / 62_500 % 250) as u8,
        (i / 250 % 250) as u8,
        (i % 250 + 1) as u8,
    )))
}

/// The number after `"<key>":` in a frame.
fn number(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits: &str = &text[at..];
    let end = digits.bytes().take_while(u8::is_ascii_digit).count();
    digits[..end].parse().ok()
}

/// The publish timestamp in a frame.
pub fn timestamp(text: &str) -> Option<u64> {
    number(text, "\"t\":")
}

/// The publisher's sequence number in a frame.
pub fn sequence(text: &str) -> Option<u64> {
    number(text, "\"s\":")
}

impl Conn {
    pub async fn open(target: &Arc<Target>, index: usize) -> Result<Conn, String> {
        let socket = if target.addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| e.to_string())?;
        if let Some(ip) = source(index, target.addr.is_ipv6()) {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| format!("bind {ip}: {e}"))?;
        }
        let tcp = socket
            .connect(target.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", target.addr))?;
        let _ = tcp.set_nodelay(true);
        let query = match (&target.protocol, &target.token) {
            (Protocol::SocketIo { .. }, _) => "?EIO=4&transport=websocket".to_owned(),
            (Protocol::Native, Some(t)) => format!("?token={t}"),
            _ => String::new(),
        };
        let url = format!("ws://{}{}{}", target.addr, target.path, query);
        let config = WebSocketConfig::default()
            .read_buffer_size(16 << 10)
            .write_buffer_size(0);
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
            .await
            .map_err(|e| format!("websocket handshake: {e}"))?;
        match &target.protocol {
            Protocol::Native => {
                let welcome = next_text(&mut ws).await?;
                if !welcome.contains(r#""type":"welcome""#) {
                    return Err(format!("expected the welcome frame, got {welcome}"));
                }
            }
            Protocol::SocketIo { .. } => {
                let open = next_text(&mut ws).await?;
                if !open.starts_with('0') {
                    return Err(format!("expected an Engine.IO open packet, got {open}"));
                }
                let connect = match &target.token {
                    Some(t) => format!(r#"40{{"token":"{t}"}}"#),
                    None => "40".to_owned(),
                };
                ws.send(Message::text(connect))
                    .await
                    .map_err(|e| e.to_string())?;
                loop {
                    let t = next_text(&mut ws).await?;
                    if t.starts_with("40") {
                        break;
                    }
                    if t.starts_with("44") {
                        return Err(format!("connect refused: {t}"));
                    }
                }
            }
            Protocol::Plain => {}
        }
        let (sink, stream) = ws.split();
        Ok(Conn {
            target: target.clone(),
            sink: Arc::new(Mutex::new(sink)),
            stream: Some(stream),
            index,
            pad: String::new(),
        })
    }

    /// Names the connection's user (native protocol, open mode) and waits for
    /// the acknowledgement. Must come before the first join.
    pub async fn auth(&mut self, user: &str) -> Result<(), String> {
        if !matches!(self.target.protocol, Protocol::Native) {
            return Err("auth by user id is a native-protocol command".into());
        }
        self.sink
            .lock()
            .await
            .send(Message::text(format!(
                r#"{{"type":"auth","user":"{user}","id":2}}"#
            )))
            .await
            .map_err(|e| e.to_string())?;
        let stream = self.stream.as_mut().ok_or("already receiving")?;
        loop {
            let m = stream
                .next()
                .await
                .ok_or("closed while authenticating")?
                .map_err(|e| e.to_string())?;
            let Message::Text(t) = m else { continue };
            let t = t.as_str();
            if t.contains(r#""type":"ack""#) {
                return Ok(());
            }
            if t.contains(r#""type":"error""#) {
                return Err(format!("auth refused: {t}"));
            }
        }
    }

    /// Hands over both halves, for a caller that reads the connection itself.
    /// `None` if it is already being read.
    pub fn into_parts(mut self) -> Option<(Reader, Writer)> {
        let stream = self.stream.take()?;
        Some((stream, self.sink))
    }

    /// Joins a room and waits for the server's acknowledgement.
    pub async fn join(&mut self, room: &str) -> Result<(), String> {
        let frame = match &self.target.protocol {
            Protocol::Native => format!(r#"{{"type":"join","room":"{room}","id":1}}"#),
            Protocol::SocketIo { join, .. } => format!(r#"421["{join}",{{"room":"{room}"}}]"#),
            Protocol::Plain => return Ok(()),
        };
        self.sink
            .lock()
            .await
            .send(Message::text(frame))
            .await
            .map_err(|e| e.to_string())?;
        let stream = self.stream.as_mut().ok_or("already receiving")?;
        loop {
            let m = stream
                .next()
                .await
                .ok_or("closed while joining")?
                .map_err(|e| e.to_string())?;
            let Message::Text(t) = m else { continue };
            let t = t.as_str();
            match &self.target.protocol {
                Protocol::Native if t.contains(r#""type":"ack""#) => return Ok(()),
                Protocol::Native if t.contains(r#""type":"error""#) => {
                    return Err(format!("join refused: {t}"))
                }
                Protocol::SocketIo { .. } if t.starts_with("431") => return Ok(()),
                Protocol::SocketIo { .. } if t == "2" => {
                    self.sink
                        .lock()
                        .await
                        .send(Message::text("3"))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                _ => {}
            }
        }
    }

    /// Queues one publish (call `flush` to send what was queued).
    pub async fn publish(
        &mut self,
        room: &str,
        seq: u64,
        t_ns: u64,
        size: usize,
    ) -> Result<(), String> {
        if self.pad.len() + 40 < size {
            self.pad = "x".repeat(size.saturating_sub(40));
        }
        let data = format!(r#"{{"t":{},"s":{seq},"p":"{}"}}"#, t_ns, self.pad);
        let frame = match &self.target.protocol {
            Protocol::Native => {
                format!(r#"{{"type":"publish","room":"{room}","event":"b","data":{data}}}"#)
            }
            Protocol::SocketIo { publish, .. } => {
                format!(r#"42["{publish}",{{"room":"{room}","event":"b","data":{data}}}]"#)
            }
            Protocol::Plain => data,
        };
        self.sink
            .lock()
            .await
            .feed(Message::text(frame))
            .await
            .map_err(|e| e.to_string())
    }

    pub async fn flush(&mut self) -> Result<(), String> {
        self.sink
            .lock()
            .await
            .flush()
            .await
            .map_err(|e| e.to_string())
    }

    /// Sends one event to the backend through the server and waits for its
    /// ack (native `rpc`, or a Socket.IO event with an ack id).
    pub async fn rpc(&mut self, id: u64, event: &str, data: &str) -> Result<(), String> {
        let frame = match &self.target.protocol {
            Protocol::Native => {
                format!(r#"{{"type":"rpc","id":{id},"event":"{event}","data":{data}}}"#)
            }
            Protocol::SocketIo { .. } => format!(r#"42{id}["{event}",{data}]"#),
            Protocol::Plain => return Err("plain WebSocket has no acks".into()),
        };
        self.sink
            .lock()
            .await
            .send(Message::text(frame))
            .await
            .map_err(|e| e.to_string())?;
        let native_ack = format!(r#""id":{id},"#);
        let sio_ack = format!("43{id}[");
        let stream = self.stream.as_mut().ok_or("already receiving")?;
        loop {
            let m = stream
                .next()
                .await
                .ok_or("closed while waiting for an ack")?
                .map_err(|e| e.to_string())?;
            let Message::Text(t) = m else { continue };
            let t = t.as_str();
            match &self.target.protocol {
                Protocol::Native if t.contains(r#""type":"error""#) => {
                    return Err(format!("rpc refused: {t}"))
                }
                Protocol::Native if t.contains(r#""type":"ack""#) && t.contains(&native_ack) => {
                    return Ok(())
                }
                Protocol::SocketIo { .. } if t.starts_with(&sio_ack) => {
                    return if t.contains(r#""error""#) {
                        Err(format!("rpc refused: {t}"))
                    } else {
                        Ok(())
                    };
                }
                Protocol::SocketIo { .. } if t == "2" => {
                    self.sink
                        .lock()
                        .await
                        .send(Message::text("3"))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                _ => {}
            }
        }
    }

    /// Starts a task that reads this connection, records each delivery's
    /// latency, and answers Socket.IO pings.
    pub fn start_receiving(&mut self, rec: Arc<Recorder>) {
        let Some(mut stream) = self.stream.take() else {
            return;
        };
        let sink = self.sink.clone();
        let socketio = matches!(self.target.protocol, Protocol::SocketIo { .. });
        let (node, shard) = (self.target.node, self.index);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(64);
            let mut pong = false;
            // The highest sequence number seen so far on this connection.
            let mut last = None;
            let mut take = |m: Message, batch: &mut Vec<u64>, pong: &mut bool| {
                if let Message::Text(t) = &m {
                    let t = t.as_str();
                    if socketio && t == "2" {
                        *pong = true;
                    } else if let Some(sent) = timestamp(t) {
                        batch.push(rec.now_ns().saturating_sub(sent) / 1000);
                        let seq = sequence(t);
                        if seq.is_some() && seq <= last {
                            rec.record_out_of_order();
                        }
                        last = last.max(seq);
                    }
                }
            };
            while let Some(Ok(m)) = stream.next().await {
                take(m, &mut batch, &mut pong);
                // Take whatever else is already buffered, then record once.
                while let Some(Some(Ok(m))) = futures_util::FutureExt::now_or_never(stream.next()) {
                    take(m, &mut batch, &mut pong);
                }
                if pong {
                    let _ = sink.lock().await.send(Message::text("3")).await;
                    pong = false;
                }
                rec.record(node, shard, &batch);
                batch.clear();
            }
        });
    }
}

async fn next_text(ws: &mut Ws) -> Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(f))) => return Err(format!("closed by the server: {f:?}")),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("closed by the server".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_found_in_every_protocol() {
        assert_eq!(
            timestamp(
                r#"{"type":"message","room":"bench","event":"b","data":{"t":123,"s":1,"p":"x"},"from":null}"#
            ),
            Some(123)
        );
        assert_eq!(timestamp(r#"42["b",{"t":456,"s":2,"p":"x"}]"#), Some(456));
        assert_eq!(timestamp(r#"{"t":789,"s":0,"p":""}"#), Some(789));
        assert_eq!(timestamp(r#"{"type":"ack","id":1}"#), None);
        assert_eq!(sequence(r#"42["b",{"t":456,"s":2,"p":"x"}]"#), Some(2));
        assert_eq!(sequence(r#"42["b",{"p":"x","s":7,"t":456}]"#), Some(7));
    }

    #[test]
    fn source_addresses_stay_on_loopback_and_differ() {
        let a = source(0, false).unwrap();
        let b = source(1, false).unwrap();
        let c = source(70_000, false).unwrap();
        assert_ne!(a, b);
        assert_ne!(a, c);
        for ip in [a, b, c] {
            assert!(ip.is_loopback(), "{ip}");
        }
    }
}
