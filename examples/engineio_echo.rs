//! Engine.IO on its own at `/engine.io/`, echoing every message to its sender:
//! the reference server of the official engine.io-protocol test suite.
//!
//! Run: `cargo run -p roomcast-examples --bin engineio_echo -- --port 3000`

use std::sync::Arc;
mod args;

use std::time::Duration;

use roomcast_socketio::engineio::{
    CloseReason, Cors, EngineConfig, EngineHandler, EngineIo, Incoming, Session,
};

struct Echo;

impl EngineHandler for Echo {
    fn on_open(&self, _: &Arc<Session>) {}

    fn on_message(&self, session: &Arc<Session>, message: Incoming) {
        let _ = match message {
            Incoming::Text(t) => session.send_text(&t),
            Incoming::Binary(b) => session.send_binary(b),
        };
    }

    fn on_close(&self, _: &Arc<Session>, _: &CloseReason) {}
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let config = EngineConfig {
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
        max_payload: 1_000_000,
        cors: Cors::Any,
        ..EngineConfig::default()
    };
    let eio = EngineIo::new(config, Arc::new(Echo));
    let app: axum::Router = eio.router("/engine.io/");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args::port(3000))).await?;
    println!(
        "engineio_echo listening on http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, app).await
}
