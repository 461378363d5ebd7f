//! Socket.IO clients of the standalone server: connect with an auth payload
//! (`{"user": ...}` in open mode, `{"token": ...}`, or anything for the
//! connect proxy), optional built-in events for rooms and publishing, and
//! every other event handed to the backend's event proxy when one is set.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use roomcast_core::{Connection, Disconnect, Publication, Target, Who};
use roomcast_socketio::engineio::{Cors, EngineConfig};
use roomcast_socketio::socketio::{
    AckSender, ConnectRefusal, Payload, Socket, SocketIo, SocketIoConfig,
};

use crate::access::{ClientState, Rate};
use crate::auth::{Credentials, Handshake};
use crate::codes::{Code, Refusal};
use crate::command::{Actor, Client, CommandError, Commands};
use crate::config::AuthMode;

/// Builds the Socket.IO server of a roomcast configuration.
pub(crate) fn build(commands: Arc<Commands>) -> SocketIo {
    let config = commands.config.clone();
    let hub = &commands.hub;
    let s = &config.socketio;
    let cors = if s.cors_origins.iter().any(|o| o == "*") {
        Cors::Any
    } else if s.cors_origins.is_empty() {
        Cors::Off
    } else {
        Cors::Origins(s.cors_origins.clone())
    };
    let io = SocketIo::new(
        hub.clone(),
        SocketIoConfig {
            engine: EngineConfig {
                ping_interval: Duration::from_millis(s.ping_interval_ms),
                ping_timeout: Duration::from_millis(s.ping_timeout_ms),
                max_payload: s.max_payload_bytes,
                max_queue_bytes: config.limits.max_queue_bytes,
                cors,
                ..EngineConfig::default()
            },
            connect_timeout: Duration::from_millis(s.connect_timeout_ms),
            recovery: (s.recovery_ms > 0).then(|| Duration::from_millis(s.recovery_ms)),
        },
    );
    if s.builtin_events {
        io.presence_events(Some(&format!("{}presence", s.event_prefix)));
    }
    let rules = Arc::new(Rules {
        proxy: config.auth.mode == AuthMode::Proxy,
        builtin: s.builtin_events,
        prefix: s.event_prefix.clone(),
        cmd: commands.clone(),
    });
    for ns in &s.namespaces {
        let rules = rules.clone();
        io.ns(ns, move |socket, auth| {
            let rules = rules.clone();
            async move { rules.connect(socket, auth).await }
        });
    }
    io
}

/// The Socket.IO front end of one server: decodes events into calls of the
/// command layer and encodes their results as acks.
struct Rules {
    proxy: bool,
    builtin: bool,
    prefix: String,
    cmd: Arc<Commands>,
}

fn refusal(code: Code, message: impl Into<String>) -> ConnectRefusal {
    ConnectRefusal {
        message: message.into(),
        data: Some(json!({ "code": code.as_str() })),
    }
}

fn error_ack(code: &str, message: impl ToString) -> Payload {
    Payload::json(&json!({"error": {"code": code, "message": message.to_string()}}))
}

fn refused(r: Refusal) -> Payload {
    error_ack(&r.code, r.message)
}

/// A command's error as an ack. What the hub could not do is `failed`
/// (`join_failed`, ...: the built-in events' own codes).
fn command_error(e: CommandError, failed: Code) -> Payload {
    match e {
        CommandError::Refused(r) => refused(r),
        CommandError::Hub(e) => error_ack(failed.as_str(), e),
    }
}

/// The close code's name, for a refused CONNECT.
fn refusal_of(d: &Disconnect) -> ConnectRefusal {
    let code = match d.code {
        4004 => Code::BACKEND_UNAVAILABLE,
        4504 => Code::TOKEN_EXPIRED,
        4505 => Code::TOO_MANY_CONNECTIONS,
        _ => Code::AUTH_FAILED,
    };
    refusal(code, d.reason.to_string())
}

impl Rules {
    async fn connect(self: Arc<Self>, socket: Socket, auth: Value) -> Result<(), ConnectRefusal> {
        let conn = socket
            .connection()
            .ok_or_else(|| refusal(Code::CLOSED, "the connection closed"))?;
        let cmd = &self.cmd;
        let state = Arc::new(ClientState::new(
            &cmd.access,
            "socketio",
            Some(socket.ns().to_owned()),
            socket.headers(),
        ));
        let bearer =
            crate::http::bearer(socket.headers()).map(|t| Credentials::Token(t.to_owned()));
        let credentials = Credentials::from_payload(&auth, self.proxy).or(bearer);
        match credentials {
            Some(credentials) => {
                let handshake = Handshake::new(
                    conn.id(),
                    "socketio",
                    Some(socket.ns().to_owned()),
                    socket.headers(),
                );
                let client = Client {
                    conn: &conn,
                    state: &state,
                };
                let rooms = cmd
                    .connect(client, credentials, &handshake)
                    .await
                    .map_err(|d| refusal_of(&d))?;
                cmd.join_granted(client, &rooms).await;
            }
            None if !cmd.access.anonymous() => {
                cmd.metrics.auth_failure("refused");
                return Err(refusal(
                    Code::UNAUTHENTICATED,
                    "authentication required: connect with auth {\"token\": ...}",
                ));
            }
            None => cmd.access.webhook("connect", &conn, None, None),
        }
        if let Some(wait) = state.expires_in() {
            tokio::spawn(expire(self.cmd.clone(), conn.id(), state.clone(), wait));
        }
        let rules = self.clone();
        let st = state.clone();
        let state = state.clone();
        socket.on_any(move |socket, event, payload, ack| {
            let (rules, state) = (rules.clone(), st.clone());
            async move { rules.event(socket, &state, event, payload, ack).await }
        });
        let cmd = self.cmd.clone();
        let id = conn.id();
        socket.on_disconnect(move |socket, reason| {
            let cmd = cmd.clone();
            state.closed.cancel();
            async move {
                // Its user now (it may have been bound since it connected), and
                // posted once presence no longer has it: a backend asking
                // roomcast whether the user is still online gets the answer
                // that follows this disconnect. Closing twice does nothing.
                let user = socket.user();
                if let Some(conn) = socket.connection() {
                    conn.close().await;
                }
                if let Some(b) = &cmd.backend {
                    b.webhook("disconnect", id, user.as_deref(), None, Some(&reason));
                }
            }
        });
        Ok(())
    }

    async fn event(
        &self,
        socket: Socket,
        state: &ClientState,
        event: String,
        payload: Payload,
        ack: Option<AckSender>,
    ) {
        let Some(conn) = socket.connection() else {
            return;
        };
        let reply = match self.cmd.access.rate(state) {
            Rate::Ok => self.dispatch(&socket, &conn, state, &event, payload).await,
            Rate::Refuse => refused(Refusal::new(
                Code::RATE_LIMITED,
                "too many messages: slow down (limits.message_rate)",
            )),
            Rate::Closing => return,
            Rate::Close => {
                self.cmd.metrics.disconnect(Disconnect::RATE_LIMITED.code);
                let _ = self
                    .cmd
                    .hub
                    .disconnect(Who::Conn(conn.id()), Disconnect::RATE_LIMITED)
                    .await;
                return;
            }
        };
        match ack {
            Some(ack) => {
                let _ = ack.send(reply);
            }
            None if reply.first().get("error").is_some() => {
                let mut detail = reply.first().clone();
                detail["event"] = Value::String(event);
                let _ = socket.emit(&format!("{}error", self.prefix), &detail);
            }
            None => {}
        }
    }

    async fn dispatch(
        &self,
        socket: &Socket,
        conn: &Connection,
        state: &ClientState,
        event: &str,
        payload: Payload,
    ) -> Payload {
        let c = Client { conn, state };
        if let Some(name) = event.strip_prefix(&self.prefix) {
            if name == "refresh" {
                return self.refresh(c, payload.first()).await;
            }
            if self.builtin {
                return self.builtin(socket, c, name, payload.first()).await;
            }
        }
        if !self.cmd.handles_rpc() {
            return error_ack(
                Code::NO_HANDLER.as_str(),
                format!(
                    "roomcast has no handler for event `{event}`: client events go to your backend through the event proxy (proxy.rpc_url){}",
                    if self.builtin { String::new() } else { "; built-in room events are off (socketio.builtin_events)".to_owned() }
                ),
            );
        }
        match self.cmd.rpc(c, event, payload.first().clone(), None).await {
            Ok(result) => Payload::json(&result),
            Err(e) => refused(e.into()),
        }
    }

    async fn refresh(&self, c: Client<'_>, arg: &Value) -> Payload {
        let Some(token) = arg.get("token").and_then(Value::as_str) else {
            return error_ack(Code::BAD_REQUEST.as_str(), "missing field `token`");
        };
        match self.cmd.refresh(c, token.to_owned()).await {
            Ok(expires_at) => Payload::json(&json!({"expires_at": expires_at})),
            Err(e) => refused(e.into()),
        }
    }

    async fn builtin(&self, socket: &Socket, c: Client<'_>, name: &str, arg: &Value) -> Payload {
        let field = |k: &str| arg.get(k).and_then(Value::as_str).map(str::to_owned);
        let Some(room) = field("room") else {
            return error_ack(Code::BAD_REQUEST.as_str(), "missing field `room`");
        };
        let cmd = &self.cmd;
        match name {
            "join" => match cmd.join(c, &room, None).await {
                Ok(joined) => Payload::json(&json!({"room": room, "joined": joined})),
                Err(e) => command_error(e, Code::JOIN_FAILED),
            },
            "leave" => match cmd.leave(c, &room).await {
                Ok(left) => Payload::json(&json!({"room": room, "left": left})),
                Err(e) => command_error(e, Code::LEAVE_FAILED),
            },
            "publish" => {
                let Some(event) = field("event") else {
                    return error_ack(Code::BAD_REQUEST.as_str(), "missing field `event`");
                };
                let data = arg.get("data").cloned().unwrap_or(Value::Null);
                let mut p = match Publication::json(Target::Room(room), event, &data) {
                    Ok(p) => p,
                    Err(e) => return error_ack(Code::BAD_REQUEST.as_str(), e),
                };
                if arg.get("exclude_self") == Some(&Value::Bool(true)) {
                    p.exclude = Some(socket.conn_id());
                }
                match cmd.publish(Actor::Client(c), p, true).await {
                    Ok(n) => Payload::json(&json!({"delivered": n})),
                    Err(e) => command_error(e, Code::PUBLISH_FAILED),
                }
            }
            "presence" => match cmd.presence(Actor::Client(c), &room).await {
                Ok(p) => Payload::json(
                    &json!({"room": room, "connections": p.connections, "users": p.users, "anonymous": p.anonymous}),
                ),
                Err(e) => command_error(e, Code::PRESENCE_FAILED),
            },
            other => error_ack(
                Code::UNKNOWN_BUILTIN.as_str(),
                format!("unknown built-in event `{}{other}`", self.prefix),
            ),
        }
    }
}

/// Disconnects a Socket.IO connection whose credentials expired without a refresh.
async fn expire(
    cmd: Arc<Commands>,
    conn: roomcast_core::ConnId,
    state: Arc<ClientState>,
    mut wait: Duration,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = state.closed.cancelled() => return,
        }
        match state.expires_in() {
            Some(d) if d.is_zero() => break,
            Some(d) => wait = d,
            None => return,
        }
    }
    cmd.metrics.auth_failure("expired");
    cmd.metrics.disconnect(Disconnect::TOKEN_EXPIRED.code);
    let _ = cmd
        .hub
        .disconnect(Who::Conn(conn), Disconnect::TOKEN_EXPIRED)
        .await;
}
