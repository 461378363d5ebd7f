//! roomcast's server: the native WebSocket protocol, the HTTP server API,
//! Prometheus metrics and a chat page, on axum, around the
//! [`roomcast_core::Hub`].
//!
//! # Layout
//!
//! - [`Server`] (`server.rs`): owns the hub; [`Server::router`] gives every
//!   route, [`Server::run`] serves them with a graceful drain.
//! - `ws.rs`: one task per native WebSocket connection (read, batched writes,
//!   heartbeat, close codes).
//! - [`native`]: the native protocol's codec, pure functions over JSON text.
//! - `api.rs`: the `/api/*` routes, `/healthz`, `/metrics`.
//! - `socketio.rs`: Socket.IO clients of the standalone server (auth payload,
//!   built-in room events), on [`roomcast_socketio`].
//! - [`auth`]: the authentication seam: open, token (JWT, `jwt.rs`) and proxy modes.
//! - `access.rs`: what a client may do (room rules, client send/broadcast,
//!   rate limit, expiry); `guard.rs`: origin allow-list and per-IP connection rate.
//! - [`backend`]: the backend over HTTP: connect, subscribe and event proxies, webhooks.
//! - [`config`]: [`Config`], whose `Default` is the documented default.
//! - [`metrics`]: counters and the Prometheus rendering.
//!
//! # Example
//!
//! Embed roomcast in an axum application and publish from Rust code:
//!
//! ```no_run
//! use roomcast::{Config, Server};
//! use roomcast_core::{Publication, Target};
//!
//! # async fn demo() -> std::io::Result<()> {
//! let server = Server::new(Config::default());
//! let app = axum::Router::new()
//!     .route("/hello", axum::routing::get(|| async { "hello" }))
//!     .merge(server.router());
//!
//! let hub = server.hub().clone();
//! tokio::spawn(async move {
//!     let p = Publication::json(Target::Room("news".into()), "tick", &1).unwrap();
//!     hub.publish(p).await.unwrap();
//! });
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8700").await?;
//! server.run(listener, app, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

#![warn(missing_docs)]

mod access;
mod api;
pub mod auth;
pub mod backend;
pub mod codes;
mod command;
pub mod config;
mod forward;
mod guard;
mod http;
pub mod metrics;
pub mod native;
mod server;
mod socketio;

pub use api::ApiError;
pub use config::Config;
pub use roomcast_core;
pub use roomcast_socketio;
pub use server::{Server, StartError};
