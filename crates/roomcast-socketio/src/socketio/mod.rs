//! Socket.IO v5: namespaces, sockets, events, acks both ways and binary
//! attachments, on top of [`engineio`](crate::engineio) and the roomcast hub.
//!
//! Every socket (one per namespace an Engine.IO session connects to) is a hub
//! [`Connection`] writing into the session's outbox, so room emits reach
//! Socket.IO and native clients alike, each encoded once per protocol.
//!
//! # Layout
//!
//! - `server`: [`SocketIo`], the registry and builder, and emits from outside
//!   a socket; `config`: [`SocketIoConfig`].
//! - `namespace`: registered and dynamic namespaces and their handlers.
//! - `session`: an Engine.IO session's sockets and the task that decodes and
//!   dispatches its packets in order.
//! - `connect`: a CONNECT, from the namespace's handler to the reply.
//! - `recovery`: connection-state recovery (the record, keeping it, restoring).
//! - `socket`: the [`Socket`] API and [`AckSender`].
//! - `encode`: how hub publications look to a namespace's clients.
//! - `payload`: [`Payload`]; `error`: [`EmitError`], [`AckError`],
//!   [`ConnectRefusal`].
//! - [`packet`]: the packet codec.
//!
//! [`Connection`]: roomcast_core::Connection

mod config;
mod connect;
mod encode;
mod error;
mod namespace;
pub mod packet;
mod payload;
mod recovery;
mod server;
mod session;
mod socket;

pub use config::SocketIoConfig;
pub use error::{AckError, ConnectRefusal, EmitError};
pub use payload::Payload;
pub use server::SocketIo;
pub use session::MAX_REFUSED_CONNECTS;
pub use socket::{AckSender, Socket};
