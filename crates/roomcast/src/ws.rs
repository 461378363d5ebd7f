//! One task per native WebSocket connection: it reads client commands, writes
//! what the connection's outbox hands out (in batches, one flush per batch),
//! pings on the heartbeat, and closes with a documented code.

use std::borrow::Cow;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::time::{sleep_until, Instant};

use roomcast_core::error::{AuthError, JoinError, LeaveError, PublishError, QueryError};
use roomcast_core::history::Since;
use roomcast_core::{Connection, Disconnect, Frame, Publication, Recovery, Target};

use std::sync::Arc;

use axum::http::HeaderMap;

use crate::access::{Access, ClientState, Denied, Rate};
use crate::auth::{AuthFailure, Credentials};
use crate::native::{self, ClientCommand, Request};
use crate::Server;

/// How long a closing handshake may take before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

fn to_message(frame: Frame) -> Message {
    match frame {
        // Text frames are built from `String`s, so this never falls back.
        Frame::Text(b) => Message::Text(Utf8Bytes::try_from(b).unwrap_or_default()),
        Frame::Binary(b) => Message::Binary(b),
    }
}

/// Sends the `disconnect` frame and a close frame with the same code, then
/// gives the client a moment to answer.
async fn close_with(socket: &mut WebSocket, d: &Disconnect) {
    let goodbye = async {
        socket
            .feed(to_message(native::encode_disconnect(d)))
            .await?;
        socket
            .send(Message::Close(Some(CloseFrame {
                code: d.code,
                reason: Utf8Bytes::from(d.reason.as_ref()),
            })))
            .await?;
        // Wait for the client's close frame (or anything) so the close is clean.
        while let Some(Ok(m)) = socket.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
        Ok::<_, axum::Error>(())
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, goodbye).await;
}

/// An error reply for a failed command.
struct Refusal {
    code: Cow<'static, str>,
    message: String,
}

impl Refusal {
    fn new(code: &'static str, message: impl ToString) -> Refusal {
        Refusal {
            code: Cow::Borrowed(code),
            message: message.to_string(),
        }
    }
}

impl From<JoinError> for Refusal {
    fn from(e: JoinError) -> Self {
        let code = match e {
            JoinError::InvalidRoom(_) => "invalid_room",
            JoinError::TooManyRooms { .. } => "too_many_rooms",
            JoinError::RoomFull { .. } => "room_full",
            JoinError::Closed => "closed",
            JoinError::Presence(_) => "backend_unavailable",
        };
        Refusal::new(code, e)
    }
}

impl From<LeaveError> for Refusal {
    fn from(e: LeaveError) -> Self {
        let code = match e {
            LeaveError::InvalidRoom(_) => "invalid_room",
            LeaveError::Presence(_) => "backend_unavailable",
        };
        Refusal::new(code, e)
    }
}

impl From<PublishError> for Refusal {
    fn from(e: PublishError) -> Self {
        let code = match e {
            PublishError::InvalidRoom(_) => "invalid_room",
            PublishError::InvalidEvent => "invalid_event",
            PublishError::Broker { .. } | PublishError::History(_) => "backend_unavailable",
        };
        Refusal::new(code, e)
    }
}

impl From<QueryError> for Refusal {
    fn from(e: QueryError) -> Self {
        let code = match e {
            QueryError::InvalidRoom(_) => "invalid_room",
            QueryError::Forbidden => "forbidden",
            QueryError::NoHistory => "no_history",
            QueryError::Presence(_) | QueryError::History(_) => "backend_unavailable",
        };
        Refusal::new(code, e)
    }
}

impl From<Denied> for Refusal {
    fn from(d: Denied) -> Self {
        Refusal {
            code: Cow::Owned(d.code),
            message: d.message,
        }
    }
}

impl From<AuthError> for Refusal {
    fn from(e: AuthError) -> Self {
        let code = match e {
            AuthError::AlreadyAuthenticated => "already_authenticated",
            AuthError::AfterJoin => "auth_after_join",
            AuthError::InvalidUser => "invalid_user",
            AuthError::Closed => "closed",
            AuthError::Presence(_) => "backend_unavailable",
        };
        Refusal::new(code, e)
    }
}

/// Serves one upgraded native WebSocket until it closes.
pub(crate) async fn serve(
    server: Server,
    mut socket: WebSocket,
    slot: roomcast_core::admission::Slot,
    token: Option<String>,
    headers: HeaderMap,
) {
    let s = server.inner();
    let conn = match s.hub.connect_admitted(s.protocol.clone(), None, slot).await {
        Ok(c) => c,
        Err(e) => {
            let d = match e {
                roomcast_core::error::ConnectError::ServerFull { .. } => Disconnect::SERVER_FULL,
                roomcast_core::error::ConnectError::ShuttingDown => Disconnect::SHUTDOWN,
                roomcast_core::error::ConnectError::Presence(_) => Disconnect::INTERNAL,
            };
            s.metrics.disconnect(d.code);
            close_with(&mut socket, &d).await;
            return;
        }
    };
    let state = Arc::new(ClientState::new(&s.access, "websocket", None, &headers));
    let proxy = s.config.auth.mode == crate::config::AuthMode::Proxy;
    let credentials = match token {
        Some(t) => Some(Credentials::Token(t)),
        None if proxy => Some(Credentials::Handshake),
        None => None,
    };
    if credentials.is_none() {
        s.access.webhook("connect", &conn, None, None);
    }
    let mut rooms = Vec::new();
    if let Some(credentials) = credentials {
        let handshake = Access::handshake(&conn, "websocket", None, &headers);
        let admitted = match s.auth.authenticate(credentials, &handshake).await {
            Ok(identity) => s.access.admit(&conn, &state, identity).await,
            Err(f) => {
                s.metrics.auth_failure(f.reason());
                Err(f.disconnect())
            }
        };
        match admitted {
            Ok(r) => rooms = r,
            Err(d) => {
                tracing::info!(code = d.code, reason = %d.reason, "connection refused at the handshake");
                s.metrics.disconnect(d.code);
                close_with(&mut socket, &d).await;
                conn.close().await;
                return;
            }
        }
    }
    let welcome = json!({
        "type": "welcome",
        "conn": conn.id().to_string(),
        "node": s.hub.node().to_string(),
        "user": conn.user().as_deref(),
        "heartbeat_ms": s.config.heartbeat.interval_ms,
        "expires_at": state.expires_at(),
        "protocol": 1,
    });
    let _ = conn.send_frame(Frame::text(welcome.to_string()));
    // After the welcome, so that it stays the first frame.
    s.access.join_granted(&conn, &rooms).await;
    let mut task = Task {
        server: server.clone(),
        conn,
        state,
        socket,
        batch: Vec::with_capacity(16),
    };
    let reason = task.run().await;
    let Task {
        conn, mut socket, ..
    } = task;
    let why = match &reason {
        Some(d) => d.reason.to_string(),
        None => "client closed".to_owned(),
    };
    if let Some(d) = reason {
        s.metrics.disconnect(d.code);
        close_with(&mut socket, &d).await;
    } else {
        // The client closed: send our half of the closing handshake.
        let _ = tokio::time::timeout(CLOSE_GRACE, socket.flush()).await;
    }
    s.access.webhook("disconnect", &conn, None, Some(&why));
    conn.close().await;
}

/// Checks credentials presented after the handshake and applies them.
/// `Ok(None)`: the connection is being closed instead (the per-user cap), so
/// there is no ack.
async fn authenticate(
    server: &Server,
    conn: &Connection,
    state: &ClientState,
    credentials: Credentials,
) -> Result<Option<serde_json::Value>, Refusal> {
    let s = server.inner();
    if matches!(&credentials, Credentials::User(u) if !roomcast_core::valid_user(u)) {
        return Err(AuthError::InvalidUser.into());
    }
    if conn.user().is_some() {
        return Err(AuthError::AlreadyAuthenticated.into());
    }
    if !conn.rooms().is_empty() {
        return Err(AuthError::AfterJoin.into());
    }
    let handshake = Access::handshake(conn, "websocket", None, &state.forwarded);
    let identity = s
        .auth
        .authenticate(credentials, &handshake)
        .await
        .map_err(|f| refuse_auth(server, f))?;
    let rooms = match s.access.admit(conn, state, identity).await {
        Ok(rooms) => rooms,
        // The per-user cap closes the connection however it became the user
        // (documented as close code 4505); the disconnect frame is the answer.
        Err(d) if d == Disconnect::TOO_MANY_CONNECTIONS => {
            conn.outbox().close(d);
            return Ok(None);
        }
        Err(d) => return Err(Refusal::new("auth_failed", d.reason)),
    };
    s.access.join_granted(conn, &rooms).await;
    Ok(Some(
        json!({ "user": conn.user().as_deref(), "expires_at": state.expires_at() }),
    ))
}

fn refuse_auth(server: &Server, f: AuthFailure) -> Refusal {
    server.inner().metrics.auth_failure(f.reason());
    Refusal::new(f.code(), f)
}

struct Task {
    server: Server,
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
        let server = self.server.clone();
        let s = server.inner();
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
                    match self.inbound(msg).await {
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
        let Task {
            conn,
            socket,
            batch,
            ..
        } = self;
        let write = async {
            for frame in batch.drain(..) {
                socket.feed(to_message(frame)).await?;
            }
            socket.flush().await
        };
        tokio::select! {
            r = tokio::time::timeout(limit, write) => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(None),
                Err(_) => Err(Some(Disconnect::SLOW)),
            },
            _ = overflowed(conn) => Err(Some(Disconnect::SLOW)),
        }
    }

    async fn inbound(&mut self, msg: Option<Result<Message, axum::Error>>) -> Inbound {
        let s = self.server.inner();
        let msg = match msg {
            None => return Inbound::ClientClosed,
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                let text = e.to_string();
                // tungstenite reports an oversize message or frame as a capacity error.
                if text.contains("Space limit exceeded")
                    || text.contains("too long")
                    || text.contains("too big")
                {
                    return Inbound::Close(Disconnect::MESSAGE_TOO_BIG);
                }
                return Inbound::ClientClosed;
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
                "rate_limited",
                "too many messages: slow down (limits.message_rate)",
            )
        };
        match msg {
            Message::Text(text) => {
                s.metrics.count_in(text.len());
                if refused {
                    let id = native::request_id(text.as_str());
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
                            "binary_not_supported",
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
        self.server
            .inner()
            .metrics
            .client_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.reply(native::encode_error(id, &r.code, &r.message));
    }

    async fn command(&mut self, text: &str) -> Inbound {
        let Request { id, command } = match native::decode(text) {
            Ok(r) => r,
            Err(e) => {
                self.refuse(e.id, Refusal::new(e.code, e.message));
                return Inbound::Continue;
            }
        };
        if let ClientCommand::Join { room, since } = command {
            if let Err(r) = self.join(id, room, since).await {
                self.refuse(id, r);
            }
            return Inbound::Continue;
        }
        match self.execute(command, id.is_some()).await {
            Ok(Reply::Ack(fields)) => {
                if let Some(id) = id {
                    self.reply(native::encode_ack(id, fields));
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
        &mut self,
        id: Option<u64>,
        room: String,
        since: Option<Since>,
    ) -> Result<(), Refusal> {
        let s = self.server.inner();
        let conn = &self.conn;
        s.access.may_join(conn, &self.state, &room).await?;
        let asked = since.is_some();
        let reply = |r: &Recovery| {
            let id = id?;
            let mut fields = json!({ "room": r.room, "joined": r.joined });
            if let Some(p) = &r.position {
                fields["offset"] = p.offset.into();
                fields["epoch"] = (*p.epoch).into();
            }
            if asked {
                fields["recovered"] = r.recovered.into();
            }
            Some(native::encode_ack(id, fields))
        };
        let r = conn
            .join_since(&room, since.unwrap_or(Since::Latest), reply)
            .await?;
        if r.joined {
            s.access.webhook("join", conn, Some(&room), None);
        }
        Ok(())
    }

    /// Runs a command; `Ok(Reply::Ack(fields))` is acknowledged with those fields.
    ///
    /// A publication the client wants acknowledged (`acked`) is answered once
    /// the broker confirmed it is on its way to the other nodes; one without an
    /// `id` is only handed over, so that a client publishing a stream is not
    /// held up by a round trip per message. Both keep their order.
    async fn execute(&mut self, command: ClientCommand, acked: bool) -> Result<Reply, Refusal> {
        let s = self.server.inner();
        let access = &s.access;
        let conn = &self.conn;
        let state = &self.state;
        let publish = |target: Target, event: String, data, exclude: bool| async move {
            let mut p = Publication::new(target, event, data);
            if exclude {
                p.exclude = Some(conn.id());
            }
            if acked {
                conn.publish(p).await
            } else {
                conn.publish_detached(p)
            }
        };
        Ok(Reply::Ack(match command {
            ClientCommand::Auth { token, user, data } => {
                let mode = s.config.auth.mode;
                let proxy = mode == crate::config::AuthMode::Proxy;
                if (&token, &user, &data) == (&None, &None, &None) {
                    use crate::config::AuthMode;
                    return Err(Refusal::new(
                        "bad_request",
                        match mode {
                            AuthMode::Open => "missing field `user` (or `token`)",
                            AuthMode::Token => "missing field `token`",
                            AuthMode::Proxy => "missing field `data` (or `token`)",
                        },
                    ));
                }
                let credentials = match (token, user, data) {
                    (Some(t), _, _) => Credentials::Token(t),
                    (None, _, Some(d)) if proxy => Credentials::Data(d),
                    (None, Some(u), _) => Credentials::User(u),
                    (None, None, _) => {
                        return Err(Refusal::new(
                            "auth_failed",
                            "an auth payload (`data`) is for proxy mode; present a `token`",
                        ))
                    }
                };
                match authenticate(&self.server, conn, state, credentials).await? {
                    Some(ack) => ack,
                    None => return Ok(Reply::Nothing),
                }
            }
            ClientCommand::Refresh { token } => {
                if conn.user().is_none() {
                    return Err(Refusal::new(
                        "unauthenticated",
                        "refresh is for authenticated connections; use auth",
                    ));
                }
                let handshake = Access::handshake(conn, "websocket", None, &state.forwarded);
                let identity = s
                    .auth
                    .authenticate(Credentials::Token(token), &handshake)
                    .await
                    .map_err(|f| refuse_auth(&self.server, f))?;
                let expires_at = access.refresh(conn, state, identity)?;
                json!({ "user": conn.user().as_deref(), "expires_at": expires_at })
            }
            ClientCommand::Rpc { event, data } => {
                access.may_act(conn)?;
                let Some(backend) = access.backend.as_ref().filter(|b| b.handles_events()) else {
                    return Err(Refusal::new(
                        "no_handler",
                        format!("no backend handles `{event}`: set proxy.rpc_url"),
                    ));
                };
                let user = conn.user();
                let caller = state.caller(conn, user.as_deref());
                let answer = backend
                    .rpc(&caller, &conn.session(), &conn.rooms(), &event, data)
                    .await
                    .ok_or_else(|| {
                        Refusal::new("no_handler", format!("no backend route takes `{event}`"))
                    })?
                    .map_err(|e| Refusal::from(Denied::new(&e.code(), e.client_message())))?;
                access.apply(conn, state, answer.actions).await?;
                json!({ "result": answer.result })
            }
            ClientCommand::Join { .. } => unreachable!("joins are answered by `join`"),
            ClientCommand::Leave { room } => {
                access.may_act(conn)?;
                let left = conn.leave(&room).await?;
                if left {
                    access.webhook("leave", conn, Some(&room), None);
                }
                json!({ "room": room, "left": left })
            }
            ClientCommand::Publish {
                room,
                event,
                data,
                exclude_self,
            } => {
                roomcast_core::room::validate_room_name(&room, s.hub.config().max_room_name_bytes)
                    .map_err(|e| Refusal::new("invalid_room", e))?;
                access.may_publish(conn, &room)?;
                let n = publish(Target::Room(room), event, data, exclude_self).await?;
                json!({ "delivered": n })
            }
            ClientCommand::Send { user, event, data } => {
                access.may_send(conn)?;
                let n = publish(Target::User(user), event, data, false).await?;
                json!({ "delivered": n })
            }
            ClientCommand::Broadcast { event, data } => {
                access.may_broadcast(conn)?;
                let n = publish(Target::All, event, data, false).await?;
                json!({ "delivered": n })
            }
            ClientCommand::Presence { room } => {
                roomcast_core::room::validate_room_name(&room, s.hub.config().max_room_name_bytes)
                    .map_err(|e| Refusal::new("invalid_room", e))?;
                access.may_see_presence(conn, state, &room)?;
                let p = s.hub.room_presence(&room).await?;
                json!({ "room": room, "connections": p.connections, "users": p.users, "anonymous": p.anonymous })
            }
            ClientCommand::Session { data } => {
                access.may_set_session(conn, state, &data)?;
                conn.merge_session(data)
                    .map_err(|e| Refusal::new("session_too_large", e))?;
                json!({ "session": conn.session() })
            }
            ClientCommand::Ping => return Ok(Reply::Pong),
        }))
    }
}

/// Resolves when the connection's queue overflowed (it is being closed as slow).
async fn overflowed(conn: &Connection) {
    loop {
        if conn.outbox().closed().await == Disconnect::SLOW {
            return;
        }
        // Closed for another reason: the queued frames still go out.
        std::future::pending::<()>().await;
    }
}
