//! Socket.IO clients of the standalone server: connect with an auth payload
//! (`{"user": ...}` in open mode, `{"token": ...}`, or anything for the
//! connect proxy), optional built-in events for rooms and publishing, and
//! every other event handed to the backend's event proxy when one is set.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use roomcast_core::{Connection, Disconnect, Hub, Publication, Target, Who};
use roomcast_socketio::engineio::{Cors, EngineConfig};
use roomcast_socketio::socketio::{
    AckSender, ConnectRefusal, Payload, Socket, SocketIo, SocketIoConfig,
};

use crate::access::{credentials_of, Access, ClientState, Denied, Rate};
use crate::auth::{Authenticator, Credentials};
use crate::config::{AuthMode, Config};

/// Builds the Socket.IO server of a roomcast configuration.
pub(crate) fn build(
    config: &Config,
    hub: &Hub,
    auth: Arc<dyn Authenticator>,
    access: Arc<Access>,
) -> SocketIo {
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
        auth,
        access,
        hub: hub.clone(),
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

struct Rules {
    proxy: bool,
    builtin: bool,
    prefix: String,
    auth: Arc<dyn Authenticator>,
    access: Arc<Access>,
    hub: Hub,
}

fn refusal(code: &str, message: impl Into<String>) -> ConnectRefusal {
    ConnectRefusal {
        message: message.into(),
        data: Some(json!({ "code": code })),
    }
}

fn error_ack(code: &str, message: impl ToString) -> Payload {
    Payload::json(&json!({"error": {"code": code, "message": message.to_string()}}))
}

fn denied(d: Denied) -> Payload {
    error_ack(&d.code, d.message)
}

/// The close code's name, for a refused CONNECT.
fn refusal_of(d: &Disconnect) -> ConnectRefusal {
    let code = match d.code {
        4004 => "backend_unavailable",
        4504 => "token_expired",
        4505 => "too_many_connections",
        _ => "auth_failed",
    };
    refusal(code, d.reason.to_string())
}

impl Rules {
    async fn connect(self: Arc<Self>, socket: Socket, auth: Value) -> Result<(), ConnectRefusal> {
        let conn = socket
            .connection()
            .ok_or_else(|| refusal("closed", "the connection closed"))?;
        let state = Arc::new(ClientState::new(
            &self.access,
            "socketio",
            Some(socket.ns().to_owned()),
            socket.headers(),
        ));
        let bearer = socket
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| Credentials::Token(t.to_owned()));
        let credentials = credentials_of(&auth, self.proxy).or(bearer);
        let m = &self.access.metrics;
        match credentials {
            Some(c) => {
                let handshake = Access::handshake(
                    &conn,
                    "socketio",
                    Some(socket.ns().to_owned()),
                    socket.headers(),
                );
                let identity = self.auth.authenticate(c, &handshake).await.map_err(|f| {
                    m.auth_failure(f.reason());
                    refusal_of(&f.disconnect())
                })?;
                let rooms = self
                    .access
                    .admit(&conn, &state, identity)
                    .await
                    .map_err(|d| refusal_of(&d))?;
                self.access.join_granted(&conn, &rooms).await;
            }
            None if !self.access.anonymous() => {
                m.auth_failure("refused");
                return Err(refusal(
                    "unauthenticated",
                    "authentication required: connect with auth {\"token\": ...}",
                ));
            }
            None => self.access.webhook("connect", &conn, None, None),
        }
        if let Some(wait) = state.expires_in() {
            tokio::spawn(expire(
                self.hub.clone(),
                self.access.clone(),
                conn.id(),
                state.clone(),
                wait,
            ));
        }
        let rules = self.clone();
        let st = state.clone();
        let state = state.clone();
        socket.on_any(move |socket, event, payload, ack| {
            let (rules, state) = (rules.clone(), st.clone());
            async move { rules.event(socket, &state, event, payload, ack).await }
        });
        let access = self.access.clone();
        let id = conn.id();
        let user = conn.user();
        socket.on_disconnect(move |_socket, reason| {
            let access = access.clone();
            let user = user.clone();
            state.closed.cancel();
            async move {
                if let Some(b) = &access.backend {
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
        let reply = match self.access.rate(state) {
            Rate::Ok => self.dispatch(&socket, &conn, state, &event, payload).await,
            Rate::Refuse => error_ack(
                "rate_limited",
                "too many messages: slow down (limits.message_rate)",
            ),
            Rate::Closing => return,
            Rate::Close => {
                self.access
                    .metrics
                    .disconnect(Disconnect::RATE_LIMITED.code);
                let _ = self
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
        if let Some(name) = event.strip_prefix(&self.prefix) {
            if name == "refresh" {
                return self.refresh(conn, state, payload.first()).await;
            }
            if self.builtin {
                return self
                    .builtin(socket, conn, state, name, payload.first())
                    .await;
            }
        }
        let backend = self.access.backend.as_ref().filter(|b| b.handles_events());
        let Some(backend) = backend else {
            return error_ack(
                "no_handler",
                format!(
                    "roomcast has no handler for event `{event}`: client events go to your backend through the event proxy (proxy.rpc_url){}",
                    if self.builtin { String::new() } else { "; built-in room events are off (socketio.builtin_events)".to_owned() }
                ),
            );
        };
        if let Err(d) = self.access.may_act(conn) {
            return denied(d);
        }
        let Ok(_slot) = state.rpc_slots.try_acquire() else {
            return error_ack(
                "too_many_requests",
                "too many events waiting for the backend on this connection",
            );
        };
        let user = conn.user();
        let caller = state.caller(conn, user.as_deref());
        let data = payload.first().clone();
        match backend
            .rpc(&caller, &conn.session(), &conn.rooms(), event, data)
            .await
        {
            None => error_ack("no_handler", format!("no backend route takes `{event}`")),
            Some(Err(e)) => error_ack(&e.code(), e.client_message()),
            Some(Ok(answer)) => match self.access.apply(conn, state, answer.actions).await {
                Ok(()) => Payload::json(&answer.result),
                Err(d) => denied(d),
            },
        }
    }

    async fn refresh(&self, conn: &Connection, state: &ClientState, arg: &Value) -> Payload {
        let Some(token) = arg.get("token").and_then(Value::as_str) else {
            return error_ack("bad_request", "missing field `token`");
        };
        if conn.user().is_none() {
            return error_ack(
                "unauthenticated",
                "refresh is for authenticated connections",
            );
        }
        let handshake =
            Access::handshake(conn, "socketio", state.namespace.clone(), &state.forwarded);
        match self
            .auth
            .authenticate(Credentials::Token(token.to_owned()), &handshake)
            .await
        {
            Err(f) => {
                self.access.metrics.auth_failure(f.reason());
                error_ack(f.code(), f)
            }
            Ok(identity) => match self.access.refresh(conn, state, identity) {
                Ok(expires_at) => Payload::json(&json!({"expires_at": expires_at})),
                Err(d) => denied(d),
            },
        }
    }

    async fn builtin(
        &self,
        socket: &Socket,
        conn: &Connection,
        state: &ClientState,
        name: &str,
        arg: &Value,
    ) -> Payload {
        let field = |k: &str| arg.get(k).and_then(Value::as_str).map(str::to_owned);
        let Some(room) = field("room") else {
            return error_ack("bad_request", "missing field `room`");
        };
        let access = &self.access;
        match name {
            "join" => {
                if let Err(d) = access.may_join(conn, state, &room).await {
                    return denied(d);
                }
                match socket.join(&room).await {
                    Ok(joined) => {
                        if joined {
                            access.webhook("join", conn, Some(&room), None);
                        }
                        Payload::json(&json!({"room": room, "joined": joined}))
                    }
                    Err(e) => error_ack("join_failed", e),
                }
            }
            "leave" => match socket.leave(&room).await {
                Ok(left) => {
                    if left {
                        access.webhook("leave", conn, Some(&room), None);
                    }
                    Payload::json(&json!({"room": room, "left": left}))
                }
                Err(e) => error_ack("leave_failed", e),
            },
            "publish" => {
                let Some(event) = field("event") else {
                    return error_ack("bad_request", "missing field `event`");
                };
                if let Err(e) = roomcast_core::room::validate_room_name(
                    &room,
                    self.hub.config().max_room_name_bytes,
                ) {
                    return error_ack("publish_failed", e);
                }
                if let Err(d) = access.may_publish(conn, &room) {
                    return denied(d);
                }
                let data = arg.get("data").cloned().unwrap_or(Value::Null);
                let mut p = match Publication::json(Target::Room(room), event, &data) {
                    Ok(p) => p,
                    Err(e) => return error_ack("bad_request", e),
                };
                p.from = Some(roomcast_core::Sender {
                    conn: socket.conn_id(),
                    user: socket.user(),
                });
                if arg.get("exclude_self") == Some(&Value::Bool(true)) {
                    p.exclude = Some(socket.conn_id());
                }
                match self.hub.publish(p).await {
                    Ok(n) => Payload::json(&json!({"delivered": n})),
                    Err(e) => error_ack("publish_failed", e),
                }
            }
            "presence" => {
                if let Err(d) = access.may_see_presence(conn, state, &room) {
                    return denied(d);
                }
                match self.hub.room_presence(&room).await {
                    Ok(p) => Payload::json(
                        &json!({"room": room, "connections": p.connections, "users": p.users, "anonymous": p.anonymous}),
                    ),
                    Err(e) => error_ack("presence_failed", e),
                }
            }
            other => error_ack(
                "unknown_builtin",
                format!("unknown built-in event `{}{other}`", self.prefix),
            ),
        }
    }
}

/// Disconnects a Socket.IO connection whose credentials expired without a refresh.
async fn expire(
    hub: Hub,
    access: Arc<Access>,
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
    access.metrics.auth_failure("expired");
    access.metrics.disconnect(Disconnect::TOKEN_EXPIRED.code);
    let _ = hub
        .disconnect(Who::Conn(conn), Disconnect::TOKEN_EXPIRED)
        .await;
}
