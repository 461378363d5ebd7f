//! The Socket.IO server: its settings, namespace registry and hub, the
//! Engine.IO server underneath, and emits made from outside a socket.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};

use serde::Serialize;
use serde_json::Value;

use roomcast_core::error::PublishError;
use roomcast_core::{Hub, Publication, Target};

use crate::engineio::EngineIo;

use super::namespace::{AcceptFn, ConnectFn, Namespace};
use super::session::Handler;
use super::{ConnectRefusal, Socket, SocketIoConfig};

pub(super) struct Inner {
    pub(super) hub: Hub,
    pub(super) config: SocketIoConfig,
    pub(super) namespaces: RwLock<HashMap<String, Arc<Namespace>>>,
    pub(super) dynamic: RwLock<Vec<(Arc<AcceptFn>, Arc<ConnectFn>)>>,
    pub(super) presence_event: RwLock<Option<String>>,
    pub(super) engine: std::sync::OnceLock<Weak<EngineIo>>,
}

/// A Socket.IO server on a roomcast hub. Cheap to clone.
#[derive(Clone)]
pub struct SocketIo {
    inner: Arc<Inner>,
    engine: Arc<EngineIo>,
}

impl std::fmt::Debug for SocketIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketIo").finish_non_exhaustive()
    }
}

impl SocketIo {
    /// A Socket.IO server delivering through `hub`. Register namespaces with
    /// [`ns`](SocketIo::ns), then mount [`router`](SocketIo::router).
    pub fn new(hub: Hub, config: SocketIoConfig) -> SocketIo {
        let inner = Arc::new(Inner {
            hub,
            config: config.clone(),
            namespaces: RwLock::new(HashMap::new()),
            dynamic: RwLock::new(Vec::new()),
            presence_event: RwLock::new(None),
            engine: std::sync::OnceLock::new(),
        });
        // Sessions count against the hub's max_connections, with every other transport.
        let admission = inner.hub.admission().clone();
        let engine = EngineIo::with_admission(
            config.engine,
            Arc::new(Handler(Arc::downgrade(&inner))),
            admission,
        );
        let _ = inner.engine.set(Arc::downgrade(&engine));
        SocketIo { inner, engine }
    }

    /// The hub.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// The Engine.IO server underneath.
    pub fn engine(&self) -> &Arc<EngineIo> {
        &self.engine
    }

    /// The routes, at `path` (usually `/socket.io/`).
    pub fn router<S: Clone + Send + Sync + 'static>(&self, path: &str) -> axum::Router<S> {
        self.engine.router(path)
    }

    /// Registers a namespace. `on_connect` runs for every socket that connects,
    /// with the CONNECT auth payload (or null); returning `Err` refuses the
    /// connection with CONNECT_ERROR. Emits made inside it reach the client
    /// after the CONNECT reply.
    pub fn ns<F, Fut>(&self, name: &str, on_connect: F)
    where
        F: Fn(Socket, Value) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), ConnectRefusal>> + Send + 'static,
    {
        let f: Arc<ConnectFn> = Arc::new(move |s, a| Box::pin(on_connect(s, a)));
        let ns = self.inner.namespace(name, f);
        self.inner
            .namespaces
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), ns);
    }

    /// Accepts any namespace for which `accept` returns true (dynamic
    /// namespaces), with the same kind of handler as [`ns`](SocketIo::ns).
    pub fn dynamic_ns<A, F, Fut>(&self, accept: A, on_connect: F)
    where
        A: Fn(&str) -> bool + Send + Sync + 'static,
        F: Fn(Socket, Value) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), ConnectRefusal>> + Send + 'static,
    {
        let f: Arc<ConnectFn> = Arc::new(move |s, a| Box::pin(on_connect(s, a)));
        self.inner
            .dynamic
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push((Arc::new(accept), f));
    }

    /// Shows presence join/leave events to Socket.IO clients as events with this name.
    pub fn presence_events(&self, event: Option<&str>) {
        *self
            .inner
            .presence_event
            .write()
            .unwrap_or_else(|e| e.into_inner()) = event.map(str::to_owned);
    }

    /// Emits to every member of a room (Socket.IO and native clients) on every
    /// node, with one JSON argument; binary attachments are not carried through rooms.
    pub async fn emit_to_room<T: Serialize>(
        &self,
        room: &str,
        event: &str,
        data: &T,
    ) -> Result<usize, PublishError> {
        let p = publication(room_target(room), event, data)?;
        self.inner.hub.publish(p).await
    }

    /// Emits to every connection on every node.
    pub async fn emit_all<T: Serialize>(
        &self,
        event: &str,
        data: &T,
    ) -> Result<usize, PublishError> {
        let p = publication(Target::All, event, data)?;
        self.inner.hub.publish(p).await
    }
}

pub(super) fn publication<T: Serialize>(
    target: Target,
    event: &str,
    data: &T,
) -> Result<Publication, PublishError> {
    Publication::json(target, event, data).map_err(|_| PublishError::InvalidEvent)
}

impl Inner {
    pub(super) fn engine(&self) -> Option<Arc<EngineIo>> {
        self.engine.get().and_then(Weak::upgrade)
    }
}

/// Where an emit "to a room" goes: as in Socket.IO, a socket id is a room
/// holding just that socket (on whichever node it is).
pub(super) fn room_target(room: &str) -> Target {
    match room.parse::<roomcast_core::ConnId>() {
        Ok(id) => Target::Conn(id),
        Err(_) => Target::Room(room.to_owned()),
    }
}
