//! The classic Socket.IO chat demo on roomcast, with its page at `/` using the
//! stock socket.io-client.
//!
//! Events (client → server): `set_username {data}`, `my_event {data}` (reply to
//! self), `my_broadcast_event {data}` (to everyone, prefixed with the
//! username), `join {room}`, `leave {room}`, `close_room {room}`,
//! `my_room_event {room, data}`, `disconnect_request`. Every reply is a
//! `my_response` event with `{"data": "...", "count": N}`, N being how many
//! events this socket has sent; on connect the client gets
//! `my_response {"data": "Connected", "count": 0}`. Events sent with an ack
//! callback are acknowledged with `{"ok": true, "count": N}`.
//!
//! Run: `cargo run -p roomcast-examples --bin socketio_chat -- --port 5000`
//! (the page needs `npm ci` once, for `node_modules/socket.io-client`).

mod args;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use serde_json::{json, Value};

use roomcast::roomcast_core::{Hub, HubConfig};
use roomcast_socketio::socketio::{AckSender, Payload, Socket, SocketIo, SocketIoConfig};

fn text(payload: &Payload, key: &str) -> String {
    match payload.first().get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => String::new(),
    }
}

/// Per-socket state: the username and the event count.
struct Chat {
    count: AtomicU64,
    username: std::sync::Mutex<String>,
}

impl Chat {
    fn tick(&self) -> u64 {
        self.count.fetch_add(1, Ordering::Relaxed) + 1
    }
    fn name(&self) -> String {
        self.username
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn respond(socket: &Socket, data: String, count: u64) {
    let _ = socket.emit("my_response", &json!({"data": data, "count": count}));
}

fn ack(ack: Option<AckSender>, count: u64) {
    if let Some(a) = ack {
        let _ = a.send(Payload::json(&json!({"ok": true, "count": count})));
    }
}

fn rooms_line(socket: &Socket) -> String {
    let mut rooms = socket.rooms();
    rooms.sort();
    format!("In rooms: {}", rooms.join(", "))
}

/// Registers a handler that counts the event, runs `f` with the new count, then
/// acknowledges with `{"ok":true,"count":N}` if the client asked for an ack.
fn counted<F, Fut>(socket: &Socket, chat: &Arc<Chat>, event: &str, f: F)
where
    F: Fn(Socket, Arc<Chat>, Payload, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let chat = chat.clone();
    let f = Arc::new(f);
    socket.on(event, move |socket, p, a| {
        let (chat, f) = (chat.clone(), f.clone());
        async move {
            let n = chat.tick();
            f(socket, chat, p, n).await;
            ack(a, n);
        }
    });
}

fn register(io: SocketIo) {
    let io2 = io.clone();
    io.ns("/", move |socket, auth| {
        let io = io2.clone();
        async move {
            let name = auth
                .get("username")
                .and_then(Value::as_str)
                .unwrap_or("anonymous")
                .to_owned();
            let chat = Arc::new(Chat {
                count: AtomicU64::new(0),
                username: std::sync::Mutex::new(name),
            });
            respond(&socket, "Connected".into(), 0);

            counted(
                &socket,
                &chat,
                "set_username",
                |socket, c, p, n| async move {
                    *c.username.lock().unwrap_or_else(|e| e.into_inner()) = text(&p, "data");
                    respond(&socket, format!("Username set to {}", c.name()), n);
                },
            );
            counted(&socket, &chat, "my_event", |socket, _, p, n| async move {
                respond(&socket, text(&p, "data"), n);
            });
            counted(&socket, &chat, "my_broadcast_event", move |_, c, p, n| {
                let io = io.clone();
                async move {
                    let data = format!("{}: {}", c.name(), text(&p, "data"));
                    let _ = io
                        .emit_all("my_response", &json!({"data": data, "count": n}))
                        .await;
                }
            });
            counted(&socket, &chat, "join", |socket, _, p, n| async move {
                match socket.join(&text(&p, "room")).await {
                    Ok(_) => respond(&socket, rooms_line(&socket), n),
                    Err(e) => respond(&socket, format!("Cannot join: {e}"), n),
                }
            });
            counted(&socket, &chat, "leave", |socket, _, p, n| async move {
                let _ = socket.leave(&text(&p, "room")).await;
                respond(&socket, rooms_line(&socket), n);
            });
            counted(&socket, &chat, "close_room", |socket, _, p, n| async move {
                let room = text(&p, "room");
                let data = json!({"data": format!("Room {room} is closing."), "count": n});
                let _ = socket.within_room(&room, "my_response", &data).await;
                let _ = socket.close_room(&room).await;
            });
            counted(
                &socket,
                &chat,
                "my_room_event",
                |socket, c, p, n| async move {
                    let room = text(&p, "room");
                    let data =
                        json!({"data": format!("{}: {}", c.name(), text(&p, "data")), "count": n});
                    let _ = socket.within_room(&room, "my_response", &data).await;
                },
            );
            let c = chat.clone();
            socket.on("disconnect_request", move |socket, _, a| {
                let c = c.clone();
                async move {
                    let n = c.tick();
                    respond(&socket, "Disconnected!".into(), n);
                    ack(a, n);
                    socket.disconnect().await;
                }
            });
            socket.on("my_ping", |socket, _, a| async move {
                let _ = socket.emit_payload("my_pong", Payload::empty());
                if let Some(a) = a {
                    let _ = a.send(Payload::empty());
                }
            });
            // Binary round trip: echoes the attachments back.
            socket.on("my_binary", |socket, p, a| async move {
                match a {
                    Some(a) => {
                        let _ = a.send(p);
                    }
                    None => {
                        let _ = socket.emit_payload("my_binary", p);
                    }
                }
            });
            Ok(())
        }
    });
}

async fn client_js() -> impl IntoResponse {
    let path = std::env::var("SOCKETIO_CLIENT_JS").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../node_modules/socket.io-client/dist/socket.io.min.js"
        )
        .to_owned()
    });
    match std::fs::read(&path) {
        Ok(js) => ([(header::CONTENT_TYPE, "application/javascript")], js).into_response(),
        Err(_) => (
            StatusCode::NOT_FOUND,
            format!("{path} not found: run `npm ci` in the repository"),
        )
            .into_response(),
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port = args::port(5000);
    let io = SocketIo::new(Hub::new(HubConfig::default()), SocketIoConfig::default());
    register(io.clone());
    let app = axum::Router::new()
        .route(
            "/",
            get(|| async { Html(include_str!("static/socketio_chat.html")) }),
        )
        .route("/socket.io.min.js", get(client_js))
        .merge(io.router("/socket.io/"));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "socketio_chat listening on http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, app).await
}
