//! roomcast embedded in an axum application, with handlers written in Rust.
//!
//! - `GET /` and `/ws`, `/api/*`: roomcast's own routes (chat page, native
//!   WebSocket protocol, HTTP API);
//! - `POST /orders/{id}/ship`: an application route that publishes to the
//!   order's room from Rust code;
//! - a ticker that publishes the server time to the `clock` room every second,
//!   stopped with the server.
//!
//! Run: `cargo run -p roomcast-examples --bin embed -- 127.0.0.1:8700`
//! (the address defaults to 127.0.0.1:8700; port 0 picks a free one).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;

use roomcast::roomcast_core::{Hub, Publication, Target};
use roomcast::{Config, Server};

async fn ship(State(hub): State<Hub>, Path(id): Path<u64>) -> Json<serde_json::Value> {
    let p = Publication::json(
        Target::Room(format!("order:{id}")),
        "status",
        &json!({"order": id, "status": "shipped"}),
    )
    .expect("plain JSON");
    let delivered = hub.publish(p).await.unwrap_or(0);
    Json(json!({"order": id, "notified": delivered}))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8700".into());
    let server = Server::new(Config::default());
    let hub = server.hub().clone();

    let app = Router::new()
        .route("/orders/{id}/ship", post(ship))
        .with_state(hub.clone())
        .merge(server.router());

    // A timer tied to the server's lifetime: it ends when the hub shuts down.
    hub.every(Duration::from_secs(1), |hub| async move {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if let Ok(p) = Publication::json(Target::Room("clock".into()), "tick", &now) {
            let _ = hub.publish(p).await;
        }
    });

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "embed example listening on http://{}",
        listener.local_addr()?
    );
    server
        .run(listener, app, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
