//! roomcast's server: the native WebSocket protocol, the HTTP server API,
//! Prometheus metrics and a chat page, on axum, around the
//! [`roomcast_core::Hub`].
//!
//! # Layout
//!
//! Leaves first; each module imports only those above it in this list.
//!
//! - [`config`]: [`Config`], whose `Default` is the documented default.
//! - [`codes`]: the table of client-visible error codes and `Refusal`.
//! - `http.rs`: the peer-address header, JSON error answers, bearer tokens.
//! - [`metrics`]: counters and the Prometheus rendering.
//! - [`auth`]: the authentication seam ([`auth::Authenticator`]): open, token
//!   (JWT, `auth/jwt.rs`) and proxy modes; [`auth::ConnectProxy`] is the
//!   backend's part in proxy mode.
//! - [`backend`]: the backend over HTTP: connect, subscribe and event proxies, webhooks.
//! - `channels.rs`: the Django Channels bridge (`[channels]`) as the server
//!   uses it: started around the node's backends, connection channel names,
//!   the messages of endpoints in channel mode.
//! - `access/`: what a client may do (room rules, client send/broadcast,
//!   rate limit, the per-user cap); `access/client.rs` is its per-connection state.
//! - `wsio.rs`: WebSocket plumbing the native and URL-per-room endpoints share
//!   (admission before the upgrade, limits, batched writes, read errors).
//! - `command.rs`: the command layer. Every client command and the API's
//!   publish and presence go through it: checked once, executed once.
//! - Front ends, which decode into the command layer and encode its results:
//!   [`native`] (the codec; `native/socket.rs` runs one task per connection),
//!   `socketio.rs` (Socket.IO clients of the standalone server, on
//!   [`roomcast_socketio`]), `endpoint.rs` (URL-per-room WebSockets,
//!   `[[endpoints]]`), `api.rs` (`/api/*`, `/healthz`, `/metrics`).
//! - `guard.rs`: origin allow-list and per-IP connection rate, before a handshake.
//! - `forward.rs`: forwards Engine.IO long-polling requests to the node that
//!   holds the session (with the Redis broker).
//! - [`Server`] (`server.rs`): only wiring: builds the above from a
//!   [`Config`]; [`Server::router`] gives every route, [`Server::run`] serves
//!   them with a graceful drain.
//!
//! # Features
//!
//! - `redis` (default): the Redis broker, presence and history stores and the
//!   emitter bridges, used when `broker.url` is set. With
//!   `default-features = false` the crate does not compile the Redis client and
//!   a configured `broker.url` is a [`StartError`].
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
mod channels;
pub mod codes;
mod command;
pub mod config;
mod endpoint;
mod forward;
mod guard;
mod http;
pub mod metrics;
pub mod native;
mod server;
mod socketio;
mod wsio;

pub use api::ApiError;
pub use channels::ChannelsStartError;
pub use config::Config;
pub use endpoint::RELAY_EVENT;
pub use roomcast_core;
pub use roomcast_socketio;
pub use server::{Server, StartError};
