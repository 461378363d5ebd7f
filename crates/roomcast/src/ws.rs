//! One task per native WebSocket connection: it reads client commands, writes
//! what the connection's outbox hands out (in batches, one flush per batch),
//! pings on the heartbeat, and closes with a documented code.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::time::{sleep_until, Instant};

use roomcast_core::error::{AuthError, JoinError, LeaveError, PublishError, QueryError};
use roomcast_core::{Connection, Disconnect, Frame, Publication, Target};

use crate::auth::Credentials;
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
    code: &'static str,
    message: String,
}

impl Refusal {
    fn new(code: &'static str, message: impl ToString) -> Refusal {
        Refusal {
            code,
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
            PublishError::Broker { .. } => "backend_unavailable",
        };
        Refusal::new(code, e)
    }
}

impl From<QueryError> for Refusal {
    fn from(e: QueryError) -> Self {
        let code = match e {
            QueryError::InvalidRoom(_) => "invalid_room",
            QueryError::Forbidden => "forbidden",
            QueryError::Presence(_) => "backend_unavailable",
        };
        Refusal::new(code, e)
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
pub(crate) async fn serve(server: Server, mut socket: WebSocket, token: Option<String>) {
    let s = server.inner();
    let conn = match s.hub.connect(s.protocol.clone(), None).await {
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
    if let Some(token) = token {
        if let Err(refusal) = authenticate(&server, &conn, Credentials::Token(token)).await {
            let d = Disconnect::custom(Disconnect::AUTH_FAILED.code, refusal.message);
            s.metrics.disconnect(d.code);
            close_with(&mut socket, &d).await;
            conn.close().await;
            return;
        }
    }
    let welcome = json!({
        "type": "welcome",
        "conn": conn.id().to_string(),
        "node": s.hub.node().to_string(),
        "user": conn.user().as_deref(),
        "heartbeat_ms": s.config.heartbeat.interval_ms,
        "protocol": 1,
    });
    let _ = conn.send_frame(Frame::text(welcome.to_string()));
    let mut task = Task {
        server: server.clone(),
        conn,
        socket,
        batch: Vec::with_capacity(16),
    };
    let reason = task.run().await;
    let Task {
        conn, mut socket, ..
    } = task;
    if let Some(d) = reason {
        s.metrics.disconnect(d.code);
        close_with(&mut socket, &d).await;
    } else {
        // The client closed: send our half of the closing handshake.
        let _ = tokio::time::timeout(CLOSE_GRACE, socket.flush()).await;
    }
    conn.close().await;
}

async fn authenticate(
    server: &Server,
    conn: &Connection,
    credentials: Credentials,
) -> Result<String, Refusal> {
    let identity = server
        .inner()
        .auth
        .authenticate(credentials)
        .await
        .map_err(|e| Refusal::new("auth_failed", e))?;
    conn.authenticate(&identity.user).await?;
    Ok(identity.user)
}

struct Task {
    server: Server,
    conn: Connection,
    socket: WebSocket,
    batch: Vec<Frame>,
}

enum Inbound {
    Continue,
    ClientClosed,
    Close(Disconnect),
}

impl Task {
    /// Returns the reason to give the client, or `None` if the client went away.
    async fn run(&mut self) -> Option<Disconnect> {
        let s = self.server.inner();
        let heartbeat = s.config.heartbeat.interval();
        let silence = s.config.heartbeat.silence_limit();
        let mut last_seen = Instant::now();
        let mut next_ping = Instant::now() + heartbeat;
        let auth_deadline = (!s.config.auth.anonymous)
            .then(|| Instant::now() + Duration::from_millis(s.config.auth.timeout_ms));
        loop {
            let awaiting_auth = auth_deadline.filter(|_| self.conn.user().is_none());
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
                    return Some(Disconnect::AUTH_TIMEOUT);
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
        match msg {
            Message::Text(text) => {
                s.metrics.count_in(text.len());
                self.command(text.as_str()).await
            }
            Message::Binary(b) => {
                s.metrics.count_in(b.len());
                self.refuse(
                    None,
                    Refusal::new(
                        "binary_not_supported",
                        "the native protocol takes JSON text frames only",
                    ),
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
        self.reply(native::encode_error(id, r.code, &r.message));
    }

    async fn command(&mut self, text: &str) -> Inbound {
        let Request { id, command } = match native::decode(text) {
            Ok(r) => r,
            Err(e) => {
                self.refuse(e.id, Refusal::new(e.code, e.message));
                return Inbound::Continue;
            }
        };
        match self.execute(command, id.is_some()).await {
            Ok(Some(fields)) => {
                if let Some(id) = id {
                    self.reply(native::encode_ack(id, fields));
                }
            }
            Ok(None) => {
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

    /// Runs a command; `Ok(Some(fields))` is acknowledged with those fields.
    ///
    /// A publication the client wants acknowledged (`acked`) is answered once
    /// the broker confirmed it is on its way to the other nodes; one without an
    /// `id` is only handed over, so that a client publishing a stream is not
    /// held up by a round trip per message. Both keep their order.
    async fn execute(
        &mut self,
        command: ClientCommand,
        acked: bool,
    ) -> Result<Option<serde_json::Value>, Refusal> {
        let s = self.server.inner();
        let conn = &self.conn;
        let needs_user = !s.config.auth.anonymous
            && conn.user().is_none()
            && !matches!(command, ClientCommand::Auth { .. } | ClientCommand::Ping);
        if needs_user {
            return Err(Refusal::new(
                "unauthenticated",
                "authenticate first with {\"type\":\"auth\",...}",
            ));
        }
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
        Ok(Some(match command {
            ClientCommand::Auth { token, user } => {
                let credentials = match (token, user) {
                    (Some(t), _) => Credentials::Token(t),
                    (None, Some(u)) => Credentials::User(u),
                    (None, None) => unreachable!("decode requires one"),
                };
                let user = authenticate(&self.server, conn, credentials).await?;
                json!({ "user": user })
            }
            ClientCommand::Join { room } => {
                let joined = conn.join(&room).await?;
                json!({ "room": room, "joined": joined })
            }
            ClientCommand::Leave { room } => {
                let left = conn.leave(&room).await?;
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
                let p = s.hub.room_presence(&room).await?;
                json!({ "room": room, "connections": p.connections, "users": p.users, "anonymous": p.anonymous })
            }
            ClientCommand::Session { data } => {
                conn.merge_session(data)
                    .map_err(|e| Refusal::new("session_too_large", e))?;
                json!({ "session": conn.session() })
            }
            ClientCommand::Ping => return Ok(None),
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
