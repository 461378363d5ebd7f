//! One task per native WebSocket connection: it reads client commands, writes
//! what the connection's outbox hands out (in batches, one flush per batch),
//! pings on the heartbeat, and closes with a documented code. Commands are
//! decoded here and carried out by the command layer.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket};
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::time::{sleep_until, Instant};
use tokio_util::task::TaskTracker;

use roomcast_core::history::Since;
use roomcast_core::{Connection, Disconnect, Frame, Publication, Recovery, Target};

use crate::access::{ClientState, Rate};
use crate::auth::{Credentials, Handshake};
use crate::codes::{Code, Refusal};
use crate::command::{Actor, Bound, Client, Commands};
use crate::config::AuthMode;
use crate::http::bearer;

use super::{ClientCommand, NativeProtocol, Request};

/// What the native endpoint needs: the command layer, the codec, and the
/// tracker the drain waits on.
pub(crate) struct Endpoint {
    pub commands: Arc<Commands>,
    pub protocol: Arc<NativeProtocol>,
    pub tasks: TaskTracker,
}

#[derive(Deserialize)]
pub(crate) struct WsQuery {
    token: Option<String>,
}

/// `GET /ws`: takes a place (one count with Engine.IO sessions), then upgrades.
pub(crate) async fn upgrade(
    State(e): State<Arc<Endpoint>>,
    q: Result<Query<WsQuery>, QueryRejection>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => return crate::wsio::bad_handshake(e.status(), &e.body_text()),
    };
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return crate::wsio::bad_handshake(e.status(), &e.body_text()),
    };
    // The place is taken before the upgrade, so the answer is exact.
    let slot = match crate::wsio::admit(&e.commands) {
        Ok(slot) => slot,
        Err(refused) => return *refused,
    };
    let token = q.token.or_else(|| bearer(&headers).map(str::to_owned));
    let tasks = e.tasks.clone();
    crate::wsio::configure(ws, &e.commands)
        .on_upgrade(move |socket| tasks.track_future(serve(e, socket, slot, token, headers)))
}

/// Serves one upgraded native WebSocket until it closes.
async fn serve(
    e: Arc<Endpoint>,
    mut socket: WebSocket,
    slot: roomcast_core::admission::Slot,
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
            crate::wsio::close(&mut socket, &d, Some(super::encode_disconnect(&d))).await;
            return;
        }
    };
    let state = Arc::new(ClientState::new(&cmd.access, "websocket", None, &headers));
    let client = Client {
        conn: &conn,
        state: &state,
    };
    let credentials = crate::wsio::credentials(&cmd, token);
    let mut rooms = Vec::new();
    match credentials {
        None => cmd.access.webhook("connect", &conn, None, None),
        Some(credentials) => {
            let handshake = Handshake::new(conn.id(), "websocket", None, &headers);
            // Boxed: it runs once, and its state would otherwise stay in every connection's task.
            match Box::pin(cmd.connect(client, credentials, &handshake)).await {
                Ok(r) => rooms = r,
                Err(d) => {
                    tracing::info!(code = d.code, reason = %d.reason, "connection refused at the handshake");
                    cmd.metrics.disconnect(d.code);
                    crate::wsio::close(&mut socket, &d, Some(super::encode_disconnect(&d))).await;
                    conn.close().await;
                    return;
                }
            }
        }
    }
    // The handshake's headers share the request's read buffer (16 KiB): drop
    // them now rather than at the end of the connection.
    drop(headers);
    let welcome = json!({
        "type": "welcome",
        "conn": conn.id().to_string(),
        "node": cmd.hub.node().to_string(),
        "user": conn.user().as_deref(),
        "heartbeat_ms": cmd.config.heartbeat.interval_ms,
        "expires_at": state.expires_at(),
        "protocol": 1,
    });
    let _ = conn.send_frame(Frame::text(welcome.to_string()));
    // After the welcome, so that it stays the first frame.
    cmd.join_granted(client, &rooms).await;
    let mut task = Task {
        cmd: cmd.clone(),
        conn,
        state,
        socket,
        batch: Vec::new(),
    };
    let reason = task.run().await;
    let Task { conn, socket, .. } = task;
    crate::wsio::finish(&cmd, conn, socket, reason, |d| {
        Some(super::encode_disconnect(d))
    })
    .await;
}

struct Task {
    cmd: Arc<Commands>,
    conn: Connection,
    state: Arc<ClientState>,
    socket: WebSocket,
    batch: Vec<Frame>,
}

/// What a command that succeeded is answered with.
enum Reply {
    /// An ack with these fields (when the command has an id).
    Ack(serde_json::Value),
    /// A pong, with or without an id.
    Pong,
    /// Nothing: the connection is being closed with its own code.
    Nothing,
}

enum Inbound {
    Continue,
    ClientClosed,
    Close(Disconnect),
}

impl Task {
    /// Returns the reason to give the client, or `None` if the client went away.
    async fn run(&mut self) -> Option<Disconnect> {
        let s = self.cmd.clone();
        let heartbeat = s.config.heartbeat.interval();
        let silence = s.config.heartbeat.silence_limit();
        let mut last_seen = Instant::now();
        let mut next_ping = Instant::now() + heartbeat;
        let auth_deadline = (!s.access.anonymous())
            .then(|| Instant::now() + Duration::from_millis(s.config.auth.timeout_ms));
        loop {
            let awaiting_auth = auth_deadline.filter(|_| self.conn.user().is_none());
            // An expiry too far away to represent never comes.
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
                    // Boxed: handling a command (auth, backend calls...) takes
                    // far more state than waiting does, and an idle
                    // connection would otherwise carry it all the time.
                    match Box::pin(self.inbound(msg)).await {
                        Inbound::Continue => {}
                        Inbound::ClientClosed => return None,
                        Inbound::Close(d) => return Some(d),
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
                _ = sleep_until(awaiting_auth.unwrap_or_else(Instant::now)), if awaiting_auth.is_some() => {
                    s.metrics.auth_failure("timeout");
                    return Some(Disconnect::AUTH_TIMEOUT);
                }
                _ = sleep_until(expiry.unwrap_or_else(Instant::now)), if expiry.is_some() => {
                    // A refresh may have moved the expiry while this slept.
                    if self.state.expires_in().is_some_and(|d| d.is_zero()) {
                        s.metrics.auth_failure("expired");
                        return Some(Disconnect::TOKEN_EXPIRED);
                    }
                }
            }
        }
    }

    /// Writes the batch with one flush. Gives up when the client cannot take it:
    /// its queue overflowed meanwhile, or the write took longer than `limit`.
    async fn write_batch(&mut self, limit: Duration) -> Result<(), Option<Disconnect>> {
        crate::wsio::write_batch(&self.conn, &mut self.socket, &mut self.batch, limit).await
    }

    async fn inbound(&mut self, msg: Option<Result<Message, axum::Error>>) -> Inbound {
        let s = self.cmd.clone();
        let msg = match msg {
            None => return Inbound::ClientClosed,
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                return match crate::wsio::read_error(&e) {
                    Some(d) => Inbound::Close(d),
                    None => Inbound::ClientClosed,
                }
            }
        };
        // Every frame a client chooses to send counts: text, binary and pings
        // (each of which costs a pong).
        let refused = match &msg {
            Message::Text(_) | Message::Binary(_) | Message::Ping(_) => {
                match s.access.rate(&self.state) {
                    Rate::Ok => false,
                    Rate::Refuse => true,
                    Rate::Close | Rate::Closing => return Inbound::Close(Disconnect::RATE_LIMITED),
                }
            }
            Message::Pong(_) | Message::Close(_) => false,
        };
        let rate_limited = || {
            Refusal::new(
                Code::RATE_LIMITED,
                "too many messages: slow down (limits.message_rate)",
            )
        };
        match msg {
            Message::Text(text) => {
                s.metrics.count_in(text.len());
                if refused {
                    let id = super::request_id(text.as_str());
                    self.refuse(id, rate_limited());
                    return Inbound::Continue;
                }
                self.command(text.as_str()).await
            }
            Message::Binary(b) => {
                s.metrics.count_in(b.len());
                self.refuse(
                    None,
                    if refused {
                        rate_limited()
                    } else {
                        Refusal::new(
                            Code::BINARY_NOT_SUPPORTED,
                            "the native protocol takes JSON text frames only",
                        )
                    },
                );
                Inbound::Continue
            }
            Message::Ping(_) | Message::Pong(_) => Inbound::Continue,
            Message::Close(_) => Inbound::ClientClosed,
        }
    }

    fn reply(&self, frame: Frame) {
        let _ = self.conn.send_frame(frame);
    }

    fn refuse(&self, id: Option<u64>, r: Refusal) {
        self.cmd
            .metrics
            .client_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.reply(super::encode_error(id, &r.code, &r.message));
    }

    async fn command(&mut self, text: &str) -> Inbound {
        let Request { id, command } = match super::decode(text) {
            Ok(r) => r,
            Err(e) => {
                self.refuse(e.id, Refusal::new(e.code, e.message));
                return Inbound::Continue;
            }
        };
        match self.execute(command, id).await {
            Ok(Reply::Ack(fields)) => {
                if let Some(id) = id {
                    self.reply(super::encode_ack(id, fields));
                }
            }
            Ok(Reply::Nothing) => {}
            Ok(Reply::Pong) => {
                // `ping`: always answered.
                let mut pong = json!({"type": "pong"});
                if let Some(id) = id {
                    pong["id"] = id.into();
                }
                self.reply(Frame::text(pong.to_string()));
            }
            Err(r) => self.refuse(id, r),
        }
        Inbound::Continue
    }

    /// Joins a room. In a room with history the ack carries the position
    /// the client is at (`offset`, `epoch`) and, when it asked to resume
    /// (`since`), whether it got everything it missed (`recovered`); the ack
    /// goes before the missed publications, which go before live ones.
    async fn join(
        cmd: &Commands,
        c: Client<'_>,
        id: Option<u64>,
        room: String,
        since: Option<Since>,
    ) -> Result<(), Refusal> {
        let asked = since.is_some();
        let reply = move |r: &Recovery| {
            let id = id?;
            let mut fields = json!({ "room": r.room, "joined": r.joined });
            if let Some(p) = &r.position {
                fields["offset"] = p.offset.into();
                fields["epoch"] = (*p.epoch).into();
            }
            if asked {
                fields["recovered"] = r.recovered.into();
            }
            Some(super::encode_ack(id, fields))
        };
        let recovery = Some((since.unwrap_or(Since::Latest), Box::new(reply) as _));
        cmd.join(c, &room, recovery).await?;
        Ok(())
    }

    /// Runs a command; `Ok(Reply::Ack(fields))` is acknowledged with those fields.
    ///
    /// A publication the client wants acknowledged (`acked`) is answered once
    /// the broker confirmed it is on its way to the other nodes; one without an
    /// `id` is only handed over, so that a client publishing a stream is not
    /// held up by a round trip per message. Both keep their order.
    async fn execute(&mut self, command: ClientCommand, id: Option<u64>) -> Result<Reply, Refusal> {
        let acked = id.is_some();
        let cmd = self.cmd.clone();
        let c = Client {
            conn: &self.conn,
            state: &self.state,
        };
        let publish = |target: Target, event: String, data, exclude: bool| {
            let mut p = Publication::new(target, event, data);
            if exclude {
                p.exclude = Some(c.conn.id());
            }
            let cmd = &cmd;
            async move { cmd.publish(Actor::Client(c), p, acked).await }
        };
        Ok(Reply::Ack(match command {
            ClientCommand::Auth { token, user, data } => {
                let mode = cmd.config.auth.mode;
                if (&token, &user, &data) == (&None, &None, &None) {
                    return Err(Refusal::new(
                        Code::BAD_REQUEST,
                        match mode {
                            AuthMode::Open => "missing field `user` (or `token`)",
                            AuthMode::Token => "missing field `token`",
                            AuthMode::Proxy => "missing field `data` (or `token`)",
                        },
                    ));
                }
                let credentials = match (token, user, data) {
                    (Some(t), _, _) => Credentials::Token(t),
                    (None, _, Some(d)) if mode == AuthMode::Proxy => Credentials::Data(d),
                    (None, Some(u), _) => Credentials::User(u),
                    (None, None, _) => {
                        return Err(Refusal::new(
                            Code::AUTH_FAILED,
                            "an auth payload (`data`) is for proxy mode; present a `token`",
                        ))
                    }
                };
                match cmd.auth(c, credentials).await? {
                    Bound::As { user, expires_at } => {
                        json!({ "user": user, "expires_at": expires_at })
                    }
                    Bound::Closing => return Ok(Reply::Nothing),
                }
            }
            ClientCommand::Refresh { token } => {
                let expires_at = cmd.refresh(c, token).await?;
                json!({ "user": c.conn.user().as_deref(), "expires_at": expires_at })
            }
            ClientCommand::Rpc { event, data } => {
                json!({ "result": cmd.rpc(c, &event, data, None).await? })
            }
            ClientCommand::Join { room, since } => {
                // Answered by `join` itself, before any replay.
                Task::join(&cmd, c, id, room, since).await?;
                return Ok(Reply::Nothing);
            }
            ClientCommand::Leave { room } => {
                let left = cmd.leave(c, &room).await?;
                json!({ "room": room, "left": left })
            }
            ClientCommand::Publish {
                room,
                event,
                data,
                exclude_self,
            } => {
                let n = publish(Target::Room(room), event, data, exclude_self).await?;
                json!({ "delivered": n })
            }
            ClientCommand::Send { user, event, data } => {
                let n = publish(Target::User(user), event, data, false).await?;
                json!({ "delivered": n })
            }
            ClientCommand::Broadcast { event, data } => {
                let n = publish(Target::All, event, data, false).await?;
                json!({ "delivered": n })
            }
            ClientCommand::Presence { room } => {
                let p = cmd.presence(Actor::Client(c), &room).await?;
                json!({ "room": room, "connections": p.connections, "users": p.users, "anonymous": p.anonymous })
            }
            ClientCommand::Session { data } => {
                json!({ "session": cmd.session(c, data)? })
            }
            ClientCommand::Ping => return Ok(Reply::Pong),
        }))
    }
}
