//! What the hub keeps of one local connection: its protocol and outbox,
//! its user, rooms, session and public data, and what a join that reads
//! history holds back for it.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use crate::{ConnId, Frame, Outbox, Protocol, StreamPosition};

/// What the hub knows of one local connection; shared by its task and the indexes.
pub(crate) struct ConnState {
    pub(super) id: ConnId,
    pub(super) protocol: Arc<dyn Protocol>,
    pub(super) outbox: Arc<Outbox>,
    /// False when the outbox belongs to a transport shared by several connections
    /// (Socket.IO namespaces over one Engine.IO session): closing this
    /// connection then leaves the outbox open.
    pub(super) owns_outbox: bool,
    /// Set while a join of a room with history holds the room's live
    /// publications back (see [`Hub::join_with_history`]); checked on every delivery.
    pub(super) holding: AtomicBool,
    /// What is held back. Its own lock: deliveries take it inside a room's
    /// index lock, which joins take inside `meta`.
    pub(super) held: Mutex<Holding>,
    pub(super) meta: Mutex<ConnMeta>,
    /// Told when the rooms or the session data change.
    pub(super) changed: tokio::sync::Notify,
}

#[derive(Default)]
pub(super) struct Holding {
    pub(super) rooms: Vec<String>,
    pub(super) held: Vec<Held>,
    pub(super) bytes: usize,
    /// After a join of a room with history: the room, its epoch and the top
    /// the join read. A publication up to that top arriving late (from
    /// Redis, after the read) was replayed or is older than the join, and is
    /// dropped; the first one past it ends the filter.
    pub(super) filters: Vec<(String, Arc<str>, u64)>,
}

impl Holding {
    pub(super) fn idle(&self) -> bool {
        self.rooms.is_empty() && self.filters.is_empty()
    }
}

/// A live publication held back while the connection's join reads history.
pub(super) struct Held {
    pub(super) room: String,
    pub(super) position: StreamPosition,
    pub(super) frame: Frame,
}

#[derive(Default)]
pub(super) struct ConnMeta {
    pub(super) user: Option<Arc<str>>,
    pub(super) rooms: Vec<String>,
    pub(super) session: Map<String, Value>,
    /// Public data (JSON text), passed to the presence store.
    pub(super) info: Option<Arc<str>>,
    pub(super) closed: bool,
    /// Where the connection joined each room with history (the stream's top
    /// at that moment): it has every publication after it.
    pub(super) marks: HashMap<String, StreamPosition>,
}

impl ConnState {
    pub(super) fn new(
        id: ConnId,
        protocol: Arc<dyn Protocol>,
        outbox: Arc<Outbox>,
        owns_outbox: bool,
        user: Option<Arc<str>>,
    ) -> ConnState {
        ConnState {
            id,
            protocol,
            outbox,
            owns_outbox,
            holding: AtomicBool::new(false),
            held: Mutex::new(Holding::default()),
            changed: tokio::sync::Notify::new(),
            meta: Mutex::new(ConnMeta {
                user,
                ..Default::default()
            }),
        }
    }

    pub(super) fn meta(&self) -> std::sync::MutexGuard<'_, ConnMeta> {
        self.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn held(&self) -> std::sync::MutexGuard<'_, Holding> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A local connection, as the HTTP API shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ConnInfo {
    /// The connection id.
    pub conn: String,
    /// Its user.
    pub user: Option<String>,
    /// The node it is on.
    pub node: String,
    /// The rooms it is in, sorted.
    pub rooms: Vec<String>,
    /// Its session data, when the connection is on this node.
    pub session: Option<Map<String, Value>>,
    /// Public data about it (a token's `info` claim), when it is on this node.
    pub info: Option<Value>,
}
