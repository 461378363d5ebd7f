//! The roomcast hub: connections, rooms, users, presence and delivery, with no
//! network dependencies. Protocols (the native JSON protocol, Socket.IO) and
//! backends (Redis) plug into it through small traits.
//!
//! # Layout
//!
//! - [`Hub`] (`hub/`, one child module per concern): the local index of connections, rooms and users;
//!   join/leave, publish, server-side commands, presence queries, shutdown.
//! - [`admission`]: the node's places for client connections
//!   (`max_connections`), one count for every transport.
//! - [`Connection`]: one open connection, owned by its protocol task.
//! - [`Selection`] (`hub/select.rs`): actions on the local connections a
//!   namespace/room/except selection picks, for messages that every node
//!   applies to its own connections (Socket.IO emitters on Redis).
//! - [`Outbox`] (`outbox.rs`): a connection's byte-bounded outgoing queue; a
//!   client that cannot keep up is disconnected, never waited on.
//! - [`Protocol`] (`protocol.rs`): how a wire format encodes what the hub sends;
//!   a delivery is encoded once per protocol and the bytes are shared.
//! - [`broker`]: the cross-node seam ([`Broker`](broker::Broker)) and
//!   [`MemoryBroker`](broker::MemoryBroker), with the shared test suite.
//! - [`presence`]: the presence seam ([`PresenceStore`](presence::PresenceStore))
//!   and [`MemoryPresence`](presence::MemoryPresence), with the shared test suite.
//! - [`history`]: the history seam ([`HistoryStore`](history::HistoryStore))
//!   and [`MemoryHistory`](history::MemoryHistory), with the shared test
//!   suite: bounded room streams, delivery in stream order, recovery reads.
//! - [`Publication`], [`Envelope`] (`message.rs`): protocol-neutral messages;
//!   a publication has a slot for its history position.
//! - [`Disconnect`] (`disconnect.rs`): the close-code table.
//! - [`room`]: room names and per-pattern room rules.
//!
//! # Example
//!
//! A protocol encodes; the hub delivers to whoever is in the room.
//!
//! ```
//! use std::sync::Arc;
//! use roomcast_core::{Frame, Hub, HubConfig, PresenceEvent, Protocol, Publication, Target};
//!
//! struct EventNames;
//! impl Protocol for EventNames {
//!     fn encode_publication(&self, p: &Publication) -> Frame {
//!         Frame::text(format!("{} {}", p.event, p.data.get()))
//!     }
//!     fn encode_presence(&self, _: &PresenceEvent) -> Option<Frame> { None }
//!     fn encode_membership(&self, _: &str, _: bool) -> Option<Frame> { None }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let hub = Hub::new(HubConfig::default());
//! let conn = hub.connect(Arc::new(EventNames), Some("alice")).await.unwrap();
//! conn.join("lobby").await.unwrap();
//!
//! let p = Publication::json(Target::Room("lobby".into()), "chat", &"hi").unwrap();
//! assert_eq!(hub.publish(p).await.unwrap(), 1);
//!
//! let mut batch = Vec::new();
//! conn.outbox().next_batch(&mut batch).await;
//! assert_eq!(batch[0].as_text(), Some(r#"chat "hi""#));
//! conn.close().await;
//! # });
//! ```

#![warn(missing_docs)]

pub mod admission;
pub mod broker;
mod disconnect;
pub mod error;
mod frame;
pub mod history;
mod hub;
mod id;
pub mod idempotency;
mod message;
mod outbox;
pub mod presence;
mod protocol;
pub mod room;

use std::future::Future;
use std::pin::Pin;

pub use disconnect::Disconnect;
pub use frame::Frame;
pub use hub::{
    valid_user, BindOutcome, ConnInfo, Connection, Hub, HubConfig, HubMetrics, Recovery, Selection,
    WeakHub,
};
pub use id::{ConnId, NodeId, ParseConnIdError};
pub use message::{
    json_depth_within, Command, Envelope, Payload, PresenceEvent, PresenceKind, Publication,
    Relayed, RelayedFrame, Route, Sender, StreamPosition, Target, Who, MAX_JSON_DEPTH, RELAY_EVENT,
};
pub use outbox::{Outbox, PushError};
pub use protocol::Protocol;

/// A boxed, sendable future: what the seam traits return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
