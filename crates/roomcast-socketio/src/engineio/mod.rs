//! Engine.IO v4: sessions over HTTP long-polling and WebSocket, the
//! polling → WebSocket upgrade, and the server-driven heartbeat.
//!
//! A session's outgoing packets live in a roomcast [`Outbox`]: text packets
//! as `Frame::Text("<type><data>")`, binary messages as `Frame::Binary`.
//! Whichever transport is current drains it: a pending long-polling GET (all
//! queued packets batched into one payload) or the WebSocket task (one frame
//! per packet, one flush per batch). The layer above (Socket.IO, or the echo
//! example) sees messages through [`EngineHandler`].
//!
//! Engine.IO is the lower layer: nothing here knows Socket.IO.
//!
//! # Layout
//!
//! - `config`: [`EngineConfig`] and [`Cors`].
//! - `handler`: what the layer above implements and sees ([`EngineHandler`],
//!   [`Incoming`], [`CloseReason`]).
//! - `session`: one [`Session`] and its transport state.
//! - `server`: [`EngineIo`], its sessions, the heartbeat, received packets;
//!   [`SessionForwarder`] for sessions another process owns.
//! - `http`: the single route (CORS, query, error answers, admission).
//! - `polling`, `websocket`: the two transports and the upgrade.
//! - [`packet`]: the packet/payload codec.
//!
//! [`Outbox`]: roomcast_core::Outbox

mod config;
mod handler;
mod http;
pub mod packet;
mod polling;
mod server;
mod session;
mod websocket;

pub use config::{Cors, EngineConfig};
pub use handler::{CloseReason, EngineHandler, Incoming};
pub use server::{EngineIo, SessionForwarder};
pub(crate) use session::owned_headers;
pub(crate) use session::random_sid;
pub use session::Session;
pub use websocket::ws_read_error;
