//! Socket.IO peer (contract A) built on socketioxide + axum.
//!
//! Usage: peer-socketioxide PORT   (or --port PORT)

use std::io::Write;

use axum::serve::ListenerExt;
use serde::Deserialize;
use serde_json::{json, Value};
use socketioxide::{
    extract::{AckSender, Data, SocketRef},
    handler::ConnectHandler,
    SocketIo,
};

#[derive(Deserialize)]
struct Join {
    room: String,
}

#[derive(Deserialize)]
struct Publish {
    room: String,
    event: String,
    data: Value,
}

fn port_from_args() -> u16 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let raw = match args.as_slice() {
        [flag, port, ..] if flag == "--port" => port.as_str(),
        [port, ..] => port.as_str(),
        [] => "3000",
    };
    raw.parse().expect("port must be a number")
}

/// Registers the event handlers in a connect middleware, which socketioxide
/// runs before it answers CONNECT: a `join` sent right after connecting then
/// always finds its handler (handlers registered in the connect handler itself
/// race with the client's first events, which socketioxide then drops).
async fn register(socket: SocketRef) -> Result<(), std::convert::Infallible> {
    socket.on("join", async |s: SocketRef, Data(msg): Data<Join>, ack: AckSender| {
        s.join(msg.room);
        ack.send(&json!({ "ok": true })).ok();
    });
    socket.on(
        "publish",
        async |io: SocketIo, Data(msg): Data<Publish>, ack: AckSender| {
            io.to(msg.room).emit(&msg.event, &msg.data).await.ok();
            ack.send(&json!({ "ok": true })).ok();
        },
    );
    Ok(())
}

#[tokio::main]
async fn main() {
    let port = port_from_args();

    // Default configuration, except the contract's 1 MB message limit (socket.io's
    // maxHttpBufferSize default, applied to both transports): socketioxide defaults
    // to 100 kB per polling request and 64 MiB per WebSocket message.
    let (layer, io) = SocketIo::builder()
        .max_payload(1_000_000)
        .ws_max_message_size(1_000_000)
        .build_layer();
    io.ns("/", (async || {}).with(register));

    let app = axum::Router::new().layer(layer);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    // Like Node's http server and Python's asyncio/uvloop, disable Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        tcp.set_nodelay(true).ok();
    });

    println!("ready on {addr}");
    std::io::stdout().flush().ok();

    axum::serve(listener, app).await.expect("server error");
}
