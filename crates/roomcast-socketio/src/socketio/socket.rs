//! The [`Socket`] API: a client's connection to one namespace, its event
//! handlers, emits and acks both ways, rooms and data, and disconnecting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;

use roomcast_core::error::{ClusterCommandError, JoinError, LeaveError, PublishError};
use roomcast_core::{BoxFuture, Connection, Frame, Hub, Publication, Target};

use crate::engineio::Session;

use super::namespace::{DisconnectFn, EventFn, FallbackFn};
use super::packet::{Kind, Packet};
use super::recovery::RECOVERABLE;
use super::server::{publication, room_target, Inner};
use super::session::{push_packet, state_of};
use super::{AckError, EmitError, Payload};

pub(super) struct SocketInner {
    pub(super) id: String,
    pub(super) nsp: String,
    pub(super) conn: Mutex<Option<Arc<Connection>>>,
    pub(super) hub_conn_id: roomcast_core::ConnId,
    pub(super) session: Arc<Session>,
    pub(super) io: Arc<Inner>,
    pub(super) handlers: Mutex<HashMap<String, Arc<EventFn>>>,
    pub(super) fallback: Mutex<Option<Arc<FallbackFn>>>,
    pub(super) on_disconnect: Mutex<Vec<Arc<DisconnectFn>>>,
    pub(super) acks: Mutex<HashMap<u64, oneshot::Sender<Payload>>>,
    pub(super) next_ack: AtomicU64,
    pub(super) connected: AtomicBool,
    /// Frames emitted by the connect handler, sent after the CONNECT reply.
    pub(super) early: Mutex<Vec<Frame>>,
    /// The private id a client recovers with, when recovery is on.
    pub(super) pid: Option<String>,
    pub(super) recovered: AtomicBool,
    /// Cancelled when the socket disconnects.
    pub(super) gone: tokio_util::sync::CancellationToken,
    /// The task keeping the recovery record, awaited before the last write.
    pub(super) keeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A client's connection to one namespace. Cheap to clone.
#[derive(Clone)]
pub struct Socket(pub(super) Arc<SocketInner>);

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("id", &self.0.id)
            .field("nsp", &self.0.nsp)
            .finish()
    }
}

/// Answers a client's event that asked for an ack.
#[derive(Debug, Clone)]
pub struct AckSender {
    pub(super) socket: Socket,
    pub(super) id: u64,
}

impl AckSender {
    /// Sends the ack with these arguments (and attachments).
    pub fn send(self, payload: Payload) -> Result<(), EmitError> {
        let p = Packet::ack(
            &self.socket.0.nsp,
            Value::Array(payload.args),
            self.id,
            payload.binary.len(),
        );
        self.socket.push(&p, &payload.binary)
    }
}

impl Socket {
    /// The socket id (sent to the client in the CONNECT reply).
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// The namespace.
    pub fn ns(&self) -> &str {
        &self.0.nsp
    }

    /// Whether this socket was recovered: the client reconnected within the
    /// recovery window and got its id, rooms, data and missed events back.
    pub fn recovered(&self) -> bool {
        self.0.recovered.load(Ordering::Acquire)
    }

    /// The hub connection id (what the HTTP API and native clients see).
    pub fn conn_id(&self) -> roomcast_core::ConnId {
        self.0.hub_conn_id
    }

    /// The handshake request's headers (cookies, user agent...).
    pub fn headers(&self) -> &axum::http::HeaderMap {
        &self.0.session.headers
    }

    /// The transport in use now: `"websocket"` or `"polling"`.
    pub fn transport(&self) -> &'static str {
        if self.0.session.is_websocket() {
            "websocket"
        } else {
            "polling"
        }
    }

    /// The user id the socket authenticated as.
    pub fn user(&self) -> Option<Arc<str>> {
        self.with_conn(|c| c.user()).flatten()
    }

    fn with_conn<T>(&self, f: impl FnOnce(&Connection) -> T) -> Option<T> {
        self.0
            .conn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_deref()
            .map(f)
    }

    pub(super) fn hub(&self) -> &Hub {
        &self.0.io.hub
    }

    /// Registers the handler of an event.
    pub fn on<F, Fut>(&self, event: &str, handler: F)
    where
        F: Fn(Socket, Payload, Option<AckSender>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let f: Arc<EventFn> = Arc::new(move |s, p, a| Box::pin(handler(s, p, a)));
        self.0
            .handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(event.to_owned(), f);
    }

    /// Registers the handler of events that have none of their own.
    pub fn on_any<F, Fut>(&self, handler: F)
    where
        F: Fn(Socket, String, Payload, Option<AckSender>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let f: Arc<FallbackFn> = Arc::new(move |s, e, p, a| Box::pin(handler(s, e, p, a)));
        *self.0.fallback.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    /// Registers a handler run when the socket disconnects, with the reason.
    pub fn on_disconnect<F, Fut>(&self, handler: F)
    where
        F: Fn(Socket, String) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let f: Arc<DisconnectFn> = Arc::new(move |s, r| Box::pin(handler(s, r)));
        self.0
            .on_disconnect
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(f);
    }

    pub(super) async fn dispatch_event(
        &self,
        event: String,
        payload: Payload,
        ack: Option<AckSender>,
    ) {
        let handler = self
            .0
            .handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&event)
            .cloned();
        let fut = match handler {
            Some(h) => h(self.clone(), payload, ack),
            None => {
                let fallback = self
                    .0
                    .fallback
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                match fallback {
                    Some(f) => f(self.clone(), event, payload, ack),
                    None => return,
                }
            }
        };
        run_handler(fut).await;
    }

    fn push(&self, p: &Packet, binary: &[Bytes]) -> Result<(), EmitError> {
        if !self.0.connected.load(Ordering::Acquire) {
            let mut early = self.0.early.lock().unwrap_or_else(|e| e.into_inner());
            if !self.0.connected.load(Ordering::Acquire) {
                early.push(Frame::text(format!("4{}", p.encode())));
                early.extend(binary.iter().cloned().map(Frame::Binary));
                return Ok(());
            }
        }
        push_packet(&self.0.session, p, binary).map_err(EmitError::from)
    }

    fn event_packet(&self, event: &str, payload: &Payload, id: Option<u64>) -> Packet {
        let mut args = Vec::with_capacity(payload.args.len() + 1);
        args.push(Value::String(event.to_owned()));
        args.extend(payload.args.iter().cloned());
        Packet::event(&self.0.nsp, Value::Array(args), id, payload.binary.len())
    }

    /// Emits an event with one JSON argument to this socket.
    pub fn emit<T: Serialize>(&self, event: &str, data: &T) -> Result<(), EmitError> {
        self.emit_payload(event, Payload::json(data))
    }

    /// Emits an event with any arguments and attachments to this socket.
    pub fn emit_payload(&self, event: &str, payload: Payload) -> Result<(), EmitError> {
        self.push(&self.event_packet(event, &payload, None), &payload.binary)
    }

    /// Emits and waits for the client's ack, at most `timeout`.
    pub async fn emit_with_ack(
        &self,
        event: &str,
        payload: Payload,
        timeout: Duration,
    ) -> Result<Payload, AckError> {
        let id = self.0.next_ack.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.0
            .acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        if let Err(e) = self.push(
            &self.event_packet(event, &payload, Some(id)),
            &payload.binary,
        ) {
            self.0
                .acks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return Err(e.into());
        }
        let result = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(AckError::Emit(EmitError::Disconnected)),
            Err(_) => Err(AckError::Timeout),
        };
        self.0
            .acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        result
    }

    /// The socket's hub connection, until it disconnects.
    pub fn connection(&self) -> Option<Arc<Connection>> {
        self.conn()
    }

    pub(super) fn conn(&self) -> Option<Arc<Connection>> {
        self.0
            .conn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Binds a user id (for presence, `/api/send` by user, ...). Must come
    /// before joining rooms; only once.
    pub async fn authenticate(&self, user: &str) -> Result<(), roomcast_core::error::AuthError> {
        let conn = self.conn().ok_or(roomcast_core::error::AuthError::Closed)?;
        conn.authenticate(user).await
    }

    /// Joins a room (shared with native clients and every node).
    pub async fn join(&self, room: &str) -> Result<bool, JoinError> {
        let conn = self.conn().ok_or(JoinError::Closed)?;
        conn.join(room).await
    }

    /// Leaves a room.
    pub async fn leave(&self, room: &str) -> Result<bool, LeaveError> {
        match self.conn() {
            Some(conn) => conn.leave(room).await,
            None => Ok(false),
        }
    }

    /// The rooms the socket is in.
    pub fn rooms(&self) -> Vec<String> {
        self.with_conn(|c| c.rooms()).unwrap_or_default()
    }

    /// Merges into the socket's session data (a key set to null is removed).
    pub fn set_data(
        &self,
        data: serde_json::Map<String, Value>,
    ) -> Result<(), roomcast_core::error::SessionError> {
        self.with_conn(|c| c.merge_session(data)).unwrap_or(Ok(()))
    }

    /// The socket's session data.
    pub fn data(&self) -> serde_json::Map<String, Value> {
        self.with_conn(|c| c.session()).unwrap_or_default()
    }

    /// Emits to a room's members except this socket, on every node.
    pub async fn to_room<T: Serialize>(
        &self,
        room: &str,
        event: &str,
        data: &T,
    ) -> Result<usize, PublishError> {
        let mut p = publication(room_target(room), event, data)?;
        p.exclude = Some(self.conn_id());
        self.publish_as_self(p).await
    }

    /// Emits to a room's members, this socket included.
    pub async fn within_room<T: Serialize>(
        &self,
        room: &str,
        event: &str,
        data: &T,
    ) -> Result<usize, PublishError> {
        let p = publication(room_target(room), event, data)?;
        self.publish_as_self(p).await
    }

    /// Emits to every connection except this socket.
    pub async fn broadcast<T: Serialize>(
        &self,
        event: &str,
        data: &T,
    ) -> Result<usize, PublishError> {
        let mut p = publication(Target::All, event, data)?;
        p.exclude = Some(self.conn_id());
        self.publish_as_self(p).await
    }

    async fn publish_as_self(&self, mut p: Publication) -> Result<usize, PublishError> {
        p.from = Some(roomcast_core::Sender {
            conn: self.conn_id(),
            user: self.user(),
        });
        self.hub().publish(p).await
    }

    /// Takes every member out of a room, on every node.
    pub async fn close_room(&self, room: &str) -> Result<usize, ClusterCommandError> {
        self.hub().close_room(room).await
    }

    /// Disconnects the socket from its namespace (the client gets DISCONNECT and
    /// does not reconnect by itself); the Engine.IO session stays open.
    pub async fn disconnect(&self) {
        let _ = push_packet(
            &self.0.session,
            &Packet::simple(Kind::Disconnect, &self.0.nsp, None),
            &[],
        );
        if let Some(state) = state_of(&self.0.session) {
            state
                .sockets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&self.0.nsp);
        }
        self.closed("server namespace disconnect".to_owned()).await;
    }

    /// Runs disconnect handlers once and removes the socket from the hub.
    pub(super) async fn closed(&self, reason: String) {
        if !self.0.gone.is_cancelled() {
            self.0.gone.cancel();
            // Its last write must not land after this one.
            let keeper = self
                .0
                .keeper
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(keeper) = keeper {
                let _ = keeper.await;
            }
            if let (Some(window), Some(pid)) = (self.0.io.config.recovery, &self.0.pid) {
                if RECOVERABLE.contains(&reason.as_str()) {
                    self.save(window).await;
                } else {
                    let _ = self.hub().history_store().take_session(pid).await;
                }
            }
        }
        let handlers = std::mem::take(
            &mut *self
                .0
                .on_disconnect
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for h in handlers {
            h(self.clone(), reason.clone()).await;
        }
        self.0
            .acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.release().await;
    }

    pub(super) async fn release(&self) {
        let conn = self.0.conn.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(conn) = conn {
            conn.close().await;
        }
    }
}

/// Runs a handler's synchronous part now (so emits keep the order of the
/// events that caused them), and the rest as its own task.
async fn run_handler(mut fut: BoxFuture<'static, ()>) {
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await;
    if first.is_pending() {
        tokio::spawn(fut);
    }
}
