//! Socket.IO v5 over Engine.IO v4 for roomcast.
//!
//! # Layout
//!
//! - [`engineio`]: sessions over HTTP long-polling and WebSocket, the upgrade,
//!   the heartbeat; `engineio::packet` is the packet/payload codec.
//! - [`socketio`]: namespaces, sockets, events and acks (both ways), binary
//!   attachments; `socketio::packet` is the packet codec. Every socket is a
//!   roomcast hub connection, so Socket.IO and native clients share rooms,
//!   users and presence.

#![warn(missing_docs)]

pub mod engineio;
pub mod socketio;
