//! URL-per-room WebSocket endpoints (`[[endpoints]]`), for pages written for
//! Django Channels: `new WebSocket("ws://host/ws/chat/lobby/")`. The path names
//! the room; the connection joins it on connect. In relay mode every frame it
//! sends goes to every member of the room, the sender included; in rpc mode it
//! goes to the event proxy, whose result comes back to the sender. Endpoint
//! clients speak no protocol of roomcast's: they get the frames of the room,
//! WebSocket pings, and a close code. Everything else (authentication, the
//! origin check, limits, join rules, presence, webhooks) is the same as for
//! `/ws`, through the command layer. See `docs/channels.md`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket};
use axum::extract::{Path, Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use tokio::time::{sleep_until, Instant};
use tokio_util::task::TaskTracker;

use roomcast_core::admission::Slot;
use roomcast_core::{
    Connection, Disconnect, Frame, PresenceEvent, Protocol, Publication, RelayedFrame, Target,
};

use crate::access::{ClientState, Rate};
use crate::auth::Handshake;
use crate::codes::Code;
use crate::command::{Actor, Client, CommandError, Commands};
use crate::config::{EndpointConfig, EndpointMode};
use crate::http::{bearer, refuse};

pub use roomcast_core::RELAY_EVENT;

/// What endpoint members get: a relayed frame as it was sent; any other
/// publication as the JSON of its `data`. No presence or membership frames.
#[derive(Debug, Default)]
pub(crate) struct EndpointProtocol;

impl Protocol for EndpointProtocol {
    fn encode_publication(&self, p: &Publication) -> Frame {
        match p.relayed_frame() {
            None => Frame::text(p.data.get().to_owned()),
            Some(RelayedFrame::Text(text)) => Frame::text(text),
            Some(RelayedFrame::Binary(bytes)) => Frame::Binary(bytes.into()),
        }
    }

    fn encode_presence(&self, _: &PresenceEvent) -> Option<Frame> {
        None
    }

    fn encode_membership(&self, _: &str, _: bool) -> Option<Frame> {
        None
    }
}

/// The publication a client's frame on a relay endpoint becomes: event
/// [`RELAY_EVENT`], `data` the JSON text as sent, or a string (the text, or
/// for a binary frame its bytes in base64).
pub(crate) fn relayed(room: &str, message: Message) -> Option<Publication> {
    let target = Target::Room(room.to_owned());
    match message {
        Message::Text(text) => Some(Publication::relayed_text(target, text.as_str())),
        Message::Binary(b) => Some(Publication::relayed_binary(target, &b)),
        _ => None,
    }
}

/// The room of a path segment under an endpoint's `room` template.
pub(crate) fn room_for(template: &str, segment: &str) -> String {
    template.replace("{room}", segment)
}

/// One configured endpoint: what its upgrade handler needs.
pub(crate) struct Endpoint {
    pub config: EndpointConfig,
    pub commands: Arc<Commands>,
    pub protocol: Arc<EndpointProtocol>,
    pub tasks: TaskTracker,
}

#[derive(Deserialize)]
pub(crate) struct EndpointQuery {
    token: Option<String>,
}

/// `GET <endpoint path>`: takes a place, then upgrades.
pub(crate) async fn upgrade(
    State(e): State<Arc<Endpoint>>,
    segment: Result<Path<String>, PathRejection>,
    q: Result<Query<EndpointQuery>, QueryRejection>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let bad = |status, text: String| crate::wsio::bad_handshake(status, &text);
    let segment = match segment {
        Ok(Path(s)) => s,
        Err(e) => return bad(e.status(), e.body_text()),
    };
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return bad(e.status(), e.body_text()),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => return bad(e.status(), e.body_text()),
    };
    let room = room_for(&e.config.room, &segment);
    if let Err(err) =
        roomcast_core::room::validate_room_name(&room, e.commands.hub.config().max_room_name_bytes)
    {
        return refuse(StatusCode::NOT_FOUND, Code::INVALID_ROOM, &err.to_string());
    }
    // The place is taken before the upgrade, so the answer is exact.
    let slot = match crate::wsio::admit(&e.commands) {
        Ok(slot) => slot,
        Err(refused) => return *refused,
    };
    let token = q.token.or_else(|| bearer(&headers).map(str::to_owned));
    // Only channel mode tells anyone the path.
    let path = match e.config.mode {
        EndpointMode::Channel => e.config.path.replace("{room}", &segment),
        _ => String::new(),
    };
    let tasks = e.tasks.clone();
    crate::wsio::configure(ws, &e.commands).on_upgrade(move |socket| {
        tasks.track_future(serve(e, socket, slot, room, path, token, headers))
    })
}

/// Serves one upgraded endpoint connection until it closes.
async fn serve(
    e: Arc<Endpoint>,
    mut socket: WebSocket,
    slot: Slot,
    room: String,
    path: String,
    token: Option<String>,
    headers: HeaderMap,
) {
    let cmd = e.commands.clone();
    let conn = match cmd
        .hub
        .connect_admitted(e.protocol.clone(), None, slot)
        .await
    {
        Ok(c) => c,
        Err(err) => {
            let d = crate::wsio::connect_failed(&err);
            cmd.metrics.disconnect(d.code);
            crate::wsio::close(&mut socket, &d, None).await;
            return;
        }
    };
    let state = Arc::new(ClientState::new(&cmd.access, "endpoint", None, &headers));
    let client = Client {
        conn: &conn,
        state: &state,
    };
    let credentials = crate::wsio::credentials(&cmd, token);
    let refused = match credentials {
        // An endpoint client cannot authenticate later: it speaks no protocol.
        None if !cmd.access.anonymous() => {
            cmd.metrics.auth_failure("missing");
            Err(Disconnect::AUTH_FAILED)
        }
        None => {
            cmd.access.webhook("connect", &conn, None, None);
            Ok(Vec::new())
        }
        Some(credentials) => {
            let handshake = Handshake::new(conn.id(), "endpoint", None, &headers);
            cmd.connect(client, credentials, &handshake).await
        }
    };
    let granted = match refused {
        Ok(rooms) => rooms,
        Err(d) => {
            tracing::info!(code = d.code, reason = %d.reason, "endpoint connection refused at the handshake");
            cmd.metrics.disconnect(d.code);
            crate::wsio::close(&mut socket, &d, None).await;
            conn.close().await;
            return;
        }
    };
    // The handshake's headers share the request's read buffer (16 KiB).
    drop(headers);
    cmd.join_granted(client, &granted).await;
    if let Err(err) = cmd.join(client, &room, None).await {
        let d = join_refused(&err);
        tracing::info!(%room, error = ?err, "endpoint connection refused its room");
        cmd.metrics.disconnect(d.code);
        crate::wsio::close(&mut socket, &d, None).await;
        conn.close().await;
        cmd.access
            .webhook("disconnect", &conn, None, Some("join refused"));
        return;
    }
    let mut task = Task {
        cmd: cmd.clone(),
        conn,
        state,
        socket,
        room,
        endpoint: e.clone(),
        batch: Vec::new(),
        path,
        client_close: None,
    };
    task.tell_worker(crate::channels::Event::Connect);
    let reason = task.run().await;
    // The client's own close code, else ours, else an abnormal end.
    let code = task
        .client_close
        .or(reason.as_ref().map(|d| d.code))
        .unwrap_or(1006);
    task.tell_worker(crate::channels::Event::Disconnect(code));
    let Task { conn, socket, .. } = task;
    crate::wsio::finish(&cmd, conn, socket, reason, |_| None).await;
}

/// The close code for a refused join: 4506, or 4004 when the subscribe proxy
/// could not be asked.
fn join_refused(err: &CommandError) -> Disconnect {
    match err {
        CommandError::Refused(r) if r.code == Code::BACKEND_UNAVAILABLE.as_str() => {
            Disconnect::AUTH_UNAVAILABLE
        }
        _ => Disconnect::JOIN_REFUSED,
    }
}

struct Task {
    cmd: Arc<Commands>,
    conn: Connection,
    state: Arc<ClientState>,
    socket: WebSocket,
    room: String,
    /// Its endpoint: the mode and, in channel mode, the worker's channel.
    endpoint: Arc<Endpoint>,
    batch: Vec<Frame>,
    /// The request path (`/ws/chat/lobby/`), in channel mode.
    path: String,
    /// The code of the client's close frame.
    client_close: Option<u16>,
}

impl Task {
    /// In channel mode, sends `event` to the worker's channel.
    fn tell_worker(&self, event: crate::channels::Event<'_>) {
        if self.endpoint.config.mode != EndpointMode::Channel {
            return;
        }
        if let Some(layer) = &self.cmd.channels {
            let route = crate::channels::Route {
                channel: &self.endpoint.config.channel,
                room: &self.room,
                path: &self.path,
            };
            crate::channels::send(layer, &route, &self.conn, event);
        }
    }

    /// Returns the reason to give the client, or `None` if the client went away.
    async fn run(&mut self) -> Option<Disconnect> {
        let s = self.cmd.clone();
        let heartbeat = s.config.heartbeat.interval();
        let silence = s.config.heartbeat.silence_limit();
        let mut last_seen = Instant::now();
        let mut next_ping = Instant::now() + heartbeat;
        loop {
            let expiry = self
                .state
                .expires_in()
                .and_then(|d| Instant::now().checked_add(d));
            tokio::select! {
                biased;
                closing = self.conn.outbox().next_batch(&mut self.batch) => {
                    if !self.batch.is_empty() {
                        if let Err(d) = self.write_batch(silence).await {
                            return d;
                        }
                    }
                    if let Some(d) = closing {
                        return Some(d);
                    }
                }
                msg = self.socket.next() => {
                    last_seen = Instant::now();
                    match self.inbound(msg).await {
                        Ok(()) => {}
                        Err(d) => return d,
                    }
                }
                _ = sleep_until(next_ping) => {
                    if last_seen.elapsed() >= silence {
                        return Some(Disconnect::HEARTBEAT_TIMEOUT);
                    }
                    next_ping = Instant::now() + heartbeat;
                    if self.socket.send(Message::Ping(bytes::Bytes::new())).await.is_err() {
                        return None;
                    }
                }
                _ = sleep_until(expiry.unwrap_or_else(Instant::now)), if expiry.is_some() => {
                    if self.state.expires_in().is_some_and(|d| d.is_zero()) {
                        s.metrics.auth_failure("expired");
                        return Some(Disconnect::TOKEN_EXPIRED);
                    }
                }
            }
        }
    }

    async fn write_batch(&mut self, limit: Duration) -> Result<(), Option<Disconnect>> {
        crate::wsio::write_batch(&self.conn, &mut self.socket, &mut self.batch, limit).await
    }

    /// A frame from the client: relayed to the room, or the reason to close.
    async fn inbound(
        &mut self,
        msg: Option<Result<Message, axum::Error>>,
    ) -> Result<(), Option<Disconnect>> {
        let s = self.cmd.clone();
        let msg = match msg {
            None => return Err(None),
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(crate::wsio::read_error(&e)),
        };
        match &msg {
            Message::Text(_) | Message::Binary(_) | Message::Ping(_) => {
                match s.access.rate(&self.state) {
                    Rate::Ok => {}
                    // No error frame exists on an endpoint: the frame is dropped
                    // and counted; a client that keeps on is closed.
                    Rate::Refuse => {
                        s.metrics
                            .client_errors
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return Ok(());
                    }
                    Rate::Close | Rate::Closing => return Err(Some(Disconnect::RATE_LIMITED)),
                }
            }
            Message::Close(frame) => {
                self.client_close = frame.as_ref().map(|f| f.code);
                return Err(None);
            }
            Message::Pong(_) => return Ok(()),
        }
        let len = match &msg {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
            _ => return Ok(()),
        };
        s.metrics.count_in(len);
        if self.endpoint.config.mode == EndpointMode::Channel {
            match &msg {
                Message::Text(t) => self.tell_worker(crate::channels::Event::Text(t.as_str())),
                Message::Binary(b) => self.tell_worker(crate::channels::Event::Binary(b)),
                _ => {}
            }
            return Ok(());
        }
        let Some(p) = relayed(&self.room, msg) else {
            return Ok(());
        };
        let client = Client {
            conn: &self.conn,
            state: &self.state,
        };
        match self.endpoint.config.mode {
            // The command layer checks the room's publish rule and sends it
            // detached, like a native publish without id.
            EndpointMode::Relay => {
                if let Err(err) = s.publish(Actor::Client(client), p, false).await {
                    s.metrics
                        .client_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(room = %self.room, error = ?err, "endpoint frame not relayed");
                }
            }
            EndpointMode::Rpc => {
                let data = serde_json::from_str(p.data.get()).unwrap_or_default();
                match s.rpc(client, RELAY_EVENT, data, Some(&self.room)).await {
                    Ok(Value::Null) => {}
                    Ok(Value::String(text)) => {
                        let _ = self.conn.send_frame(Frame::text(text));
                    }
                    Ok(result) => {
                        let _ = self.conn.send_frame(Frame::text(result.to_string()));
                    }
                    Err(err) => {
                        s.metrics
                            .client_errors
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::debug!(room = %self.room, error = ?err, "endpoint frame refused by the event proxy");
                    }
                }
            }
            // Sent to the worker above.
            EndpointMode::Channel => {}
        }
        Ok(())
    }
}
