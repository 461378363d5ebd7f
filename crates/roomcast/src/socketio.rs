//! Socket.IO clients of the standalone server: connect with an auth payload
//! (`{"user": ...}` in open mode, `{"token": ...}`), optional built-in events
//! for rooms and publishing, and a clear error for every other event (the
//! backend owns business logic; it reaches clients through the HTTP API).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use roomcast_core::{Hub, Publication, Target};
use roomcast_socketio::engineio::{Cors, EngineConfig};
use roomcast_socketio::socketio::{
    AckSender, ConnectRefusal, Payload, Socket, SocketIo, SocketIoConfig,
};

use crate::auth::{Authenticator, Credentials};
use crate::config::Config;

/// Builds the Socket.IO server of a roomcast configuration.
pub(crate) fn build(config: &Config, hub: &Hub, auth: Arc<dyn Authenticator>) -> SocketIo {
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
        },
    );
    let prefix = Arc::new(s.event_prefix.clone());
    if s.builtin_events {
        io.presence_events(Some(&format!("{prefix}presence")));
    }
    let rules = Arc::new(Rules {
        anonymous: config.auth.anonymous,
        builtin: s.builtin_events,
        prefix: s.event_prefix.clone(),
        auth,
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
    anonymous: bool,
    builtin: bool,
    prefix: String,
    auth: Arc<dyn Authenticator>,
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

impl Rules {
    async fn connect(self: Arc<Self>, socket: Socket, auth: Value) -> Result<(), ConnectRefusal> {
        let str_of = |k: &str| auth.get(k).and_then(Value::as_str).map(str::to_owned);
        let credentials = match (str_of("token"), str_of("user")) {
            (Some(t), _) => Some(Credentials::Token(t)),
            (None, Some(u)) => Some(Credentials::User(u)),
            (None, None) => None,
        };
        match credentials {
            Some(c) => {
                let identity = self
                    .auth
                    .authenticate(c)
                    .await
                    .map_err(|e| refusal("auth_failed", e.0))?;
                socket
                    .authenticate(&identity.user)
                    .await
                    .map_err(|e| refusal("auth_failed", e.to_string()))?;
            }
            None if !self.anonymous => return Err(refusal(
                "unauthenticated",
                "authentication required: connect with auth {\"user\": ...} or {\"token\": ...}",
            )),
            None => {}
        }
        let rules = self.clone();
        socket.on_any(move |socket, event, payload, ack| {
            let rules = rules.clone();
            async move { rules.event(socket, event, payload, ack).await }
        });
        Ok(())
    }

    async fn event(&self, socket: Socket, event: String, payload: Payload, ack: Option<AckSender>) {
        let reply = match event.strip_prefix(&self.prefix).filter(|_| self.builtin) {
            Some(builtin) => self.builtin(&socket, builtin, payload.first()).await,
            None => error_ack(
                "no_handler",
                format!(
                    "roomcast has no handler for event `{event}`: client events go to your backend through the event proxy when configured{}",
                    if self.builtin { String::new() } else { "; built-in room events are off (socketio.builtin_events)".to_owned() }
                ),
            ),
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

    async fn builtin(&self, socket: &Socket, name: &str, arg: &Value) -> Payload {
        let field = |k: &str| arg.get(k).and_then(Value::as_str).map(str::to_owned);
        let Some(room) = field("room") else {
            return error_ack("bad_request", "missing field `room`");
        };
        match name {
            "join" => match socket.join(&room).await {
                Ok(joined) => Payload::json(&json!({"room": room, "joined": joined})),
                Err(e) => error_ack("join_failed", e),
            },
            "leave" => match socket.leave(&room).await {
                Ok(left) => Payload::json(&json!({"room": room, "left": left})),
                Err(e) => error_ack("leave_failed", e),
            },
            "publish" => {
                let Some(event) = field("event") else {
                    return error_ack("bad_request", "missing field `event`");
                };
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
            "presence" => match self.hub.room_presence(&room).await {
                Ok(p) => Payload::json(
                    &json!({"room": room, "connections": p.connections, "users": p.users, "anonymous": p.anonymous}),
                ),
                Err(e) => error_ack("presence_failed", e),
            },
            other => error_ack(
                "unknown_builtin",
                format!("unknown built-in event `{}{other}`", self.prefix),
            ),
        }
    }
}
