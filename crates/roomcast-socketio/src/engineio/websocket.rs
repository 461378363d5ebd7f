//! The WebSocket transport: a session opened on it or upgraded to it (the
//! probe exchange), and the task that writes queued frames and reads packets.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use axum::http::HeaderMap;
use futures_util::{SinkExt, StreamExt};

use roomcast_core::admission::Slot;
use roomcast_core::{Disconnect, Frame};

use super::packet::Packet;
use super::{CloseReason, EngineIo, Session};

impl EngineIo {
    /// Serves a WebSocket: a new session, or the upgrade of a polling one.
    pub(super) async fn websocket(
        self: Arc<Self>,
        mut ws: WebSocket,
        upgrade_of: Result<Arc<Session>, Slot>,
        headers: HeaderMap,
    ) {
        let session = match upgrade_of {
            Err(slot) => self.open_session(&headers, true, slot),
            Ok(session) => match self.upgrade(&mut ws, &session).await {
                Ok(()) => session,
                Err(()) => {
                    session.state().upgrading = false;
                    let _ = ws.close().await;
                    return;
                }
            },
        };
        // The request's headers share its read buffer: gone before the session's life.
        drop(headers);
        let mut reason = self.ws_loop(&mut ws, &session).await;
        let closed_elsewhere = reason.is_none();
        if closed_elsewhere {
            // Closed while handling a packet (client close, ping from the client,
            // an invalid Socket.IO packet...) or by the layer above: still say why.
            reason = session
                .close_reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
        }
        if let Some(CloseReason::Server(d)) = &reason {
            if !d.reconnect() {
                for f in self.handler.farewell(&session) {
                    if let Frame::Text(b) = f {
                        let _ = ws
                            .feed(Message::Text(Utf8Bytes::try_from(b).unwrap_or_default()))
                            .await;
                    }
                }
            }
        }
        if let Some(reason) = reason {
            let code = match &reason {
                CloseReason::Server(d) => d.code,
                CloseReason::PingTimeout => Disconnect::HEARTBEAT_TIMEOUT.code,
                CloseReason::ProtocolError(m) if *m == Disconnect::INVALID_UTF8.reason => 1007,
                CloseReason::ProtocolError(_) => 1002,
                CloseReason::MessageTooBig => 1009,
                _ => 1000,
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let _ = ws
                    .send(Message::Close(Some(CloseFrame {
                        code,
                        reason: Utf8Bytes::from(reason.as_str()),
                    })))
                    .await;
            })
            .await;
            self.close(&session, reason);
        }
    }

    /// The probe exchange; on success the session is on WebSocket.
    async fn upgrade(&self, ws: &mut WebSocket, session: &Arc<Session>) -> Result<(), ()> {
        let exchange = async {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.as_str() == "2probe" => {}
                _ => return Err(()),
            }
            ws.send(Message::text("3probe")).await.map_err(|_| ())?;
            // Free a pending poll with a noop so the client can send `5`; check
            // again every 100 ms, as the client's last poll may still be on its way.
            let mut noop_sent = false;
            let mut check = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    m = ws.next() => return match m {
                        Some(Ok(Message::Text(t))) if t.as_str() == "5" => Ok(()),
                        _ => Err(()),
                    },
                    _ = check.tick() => {
                        let pending = session.state().polling_get;
                        if pending && !noop_sent {
                            let _ = session.outbox.push(Frame::text("6".to_owned()));
                        }
                        noop_sent = pending;
                    }
                }
            }
        };
        tokio::select! {
            r = tokio::time::timeout(self.config.upgrade_timeout, exchange) => r.map_err(|_| ())??,
            _ = session.closed.cancelled() => return Err(()),
        }
        let mut st = session.state();
        st.websocket = true;
        st.upgrading = false;
        drop(st);
        session.upgraded.cancel();
        Ok(())
    }

    /// Returns the reason to close with, or `None` if the session was closed elsewhere.
    async fn ws_loop(&self, ws: &mut WebSocket, session: &Arc<Session>) -> Option<CloseReason> {
        let mut batch = Vec::new();
        let write_limit = self.config.ping_interval + self.config.ping_timeout;
        loop {
            tokio::select! {
                biased;
                _ = session.closed.cancelled() => return None,
                closing = session.outbox.next_batch(&mut batch) => {
                    if !batch.is_empty() {
                        let write = async {
                            for f in batch.drain(..) {
                                let m = match f {
                                    Frame::Text(b) => Message::Text(Utf8Bytes::try_from(b).unwrap_or_default()),
                                    Frame::Binary(b) => Message::Binary(b),
                                };
                                ws.feed(m).await?;
                            }
                            ws.flush().await
                        };
                        match tokio::time::timeout(write_limit, write).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => return Some(CloseReason::TransportClose),
                            Err(_) => return Some(CloseReason::Server(Disconnect::SLOW)),
                        }
                    }
                    if let Some(d) = closing {
                        return Some(CloseReason::Server(d));
                    }
                }
                msg = ws.next() => {
                    let packet = match msg {
                        Some(Err(e)) => return Some(read_error(e)),
                        None | Some(Ok(Message::Close(_))) => return Some(CloseReason::TransportClose),
                        Some(Ok(Message::Text(t))) => match Packet::decode(t.as_str()) {
                            Ok(p) => p,
                            Err(e) => return Some(CloseReason::ProtocolError(e.to_string())),
                        },
                        Some(Ok(Message::Binary(b))) => Packet::Binary(b),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    };
                    if !self.receive(session, packet) {
                        return None;
                    }
                }
            }
        }
    }
}

/// What a WebSocket read error means, for every WebSocket front end (this
/// transport, roomcast's native `/ws` and its endpoints): an oversize message
/// or frame is 1009 (tungstenite's capacity error), invalid UTF-8 1007, a
/// framing violation (reserved bits, an unmasked frame, a fragmented or
/// oversize control frame, an unknown opcode, a stray continuation) 1002;
/// anything else is a client gone away, which gets no close frame.
pub fn ws_read_error(e: &axum::Error) -> Option<Disconnect> {
    use tungstenite::error::ProtocolError as P;
    let inner = std::error::Error::source(e)?.downcast_ref::<tungstenite::Error>()?;
    match inner {
        tungstenite::Error::Capacity(_) => Some(Disconnect::MESSAGE_TOO_BIG),
        tungstenite::Error::Utf8(_) => Some(Disconnect::INVALID_UTF8),
        tungstenite::Error::Protocol(
            P::ResetWithoutClosingHandshake | P::ReceivedAfterClosing | P::SendAfterClosing,
        ) => None,
        tungstenite::Error::Protocol(_) => Some(Disconnect::WS_PROTOCOL),
        _ => None,
    }
}

/// The session's close reason for a read error (see [`ws_read_error`]).
fn read_error(e: axum::Error) -> CloseReason {
    match ws_read_error(&e) {
        Some(d) if d.code == Disconnect::MESSAGE_TOO_BIG.code => CloseReason::MessageTooBig,
        Some(d) => CloseReason::ProtocolError(d.reason.into_owned()),
        None => CloseReason::TransportClose,
    }
}
