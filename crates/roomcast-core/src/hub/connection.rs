//! [`Connection`]: one open connection, owned by the task that serves its
//! socket; what a protocol's connection task calls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use crate::admission::Slot;
use crate::error::{AuthError, JoinError, LeaveError, PublishError, SessionError};
use crate::history::Since;
use crate::presence::Member;
use crate::room::validate_room_name;
use crate::{ConnId, Disconnect, Frame, Outbox, Publication, PushError, StreamPosition};

use super::recovery::{Recovery, ReplyFn};
use super::state::ConnState;
use super::{valid_user, Hub};

/// One open connection, owned by the task that serves its socket.
///
/// Dropping it without [`close`](Connection::close) still removes it from the
/// hub (in a spawned task), so a panicking connection task leaks nothing.
pub struct Connection {
    pub(super) hub: Hub,
    pub(super) state: Arc<ConnState>,
    /// The place it holds (for connections that own their outbox).
    pub(super) slot: Mutex<Option<Slot>>,
    pub(super) done: AtomicBool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.state.id)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// The connection id.
    pub fn id(&self) -> ConnId {
        self.state.id
    }

    /// The hub it belongs to.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Its outgoing queue: write what it hands out, in order.
    pub fn outbox(&self) -> &Outbox {
        &self.state.outbox
    }

    /// Queues a frame for this connection alone (a reply).
    pub fn send_frame(&self, frame: Frame) -> Result<(), PushError> {
        let r = self.state.outbox.push(frame);
        if r == Err(PushError::Overflow) {
            self.hub
                .inner
                .metrics
                .slow_consumer_disconnects
                .fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Its user id, once it has one.
    pub fn user(&self) -> Option<Arc<str>> {
        self.state.meta().user.clone()
    }

    /// The rooms it is in.
    pub fn rooms(&self) -> Vec<String> {
        self.state.meta().rooms.clone()
    }

    pub(super) fn member(&self) -> Member {
        self.hub.member_of(&self.state)
    }

    /// Binds a user id to a connection that has none yet (open mode's `auth`,
    /// or a verified token's subject).
    pub async fn authenticate(&self, user: &str) -> Result<(), AuthError> {
        if !valid_user(user) {
            return Err(AuthError::InvalidUser);
        }
        let user: Arc<str> = Arc::from(user);
        let first = {
            let mut meta = self.state.meta();
            if meta.closed {
                return Err(AuthError::Closed);
            }
            if meta.user.is_some() {
                return Err(AuthError::AlreadyAuthenticated);
            }
            if !meta.rooms.is_empty() {
                return Err(AuthError::AfterJoin);
            }
            meta.user = Some(user.clone());
            self.hub.insert_user(&user, &self.state)
        };
        self.hub.subscribe_if_first(&user, first).await;
        self.hub.inner.presence.connect(&self.member()).await?;
        Ok(())
    }

    /// Binds a user to a connection that has none, also after it joined rooms
    /// (unlike [`authenticate`](Connection::authenticate)): presence, sends to
    /// the user and its rooms then count it as the user's. `Ok(false)`: it was
    /// that user's already; another user is [`AuthError::AlreadyAuthenticated`].
    pub async fn bind(&self, user: &str) -> Result<bool, AuthError> {
        self.hub.bind_user(&self.state, user).await
    }

    /// Joins a room. Returns false if the connection was in it already.
    pub async fn join(&self, room: &str) -> Result<bool, JoinError> {
        self.hub.join_room(&self.state, room, false).await
    }

    /// Joins a room and replays its history after `since`; `reply` builds
    /// the frame that goes to the client before the replay (an answer telling
    /// whether the recovery worked). Publications after the position in the
    /// returned [`Recovery`] follow live, without duplicates or gaps.
    pub async fn join_since(
        &self,
        room: &str,
        since: Since,
        reply: impl FnOnce(&Recovery) -> Option<Frame> + Send,
    ) -> Result<Recovery, JoinError> {
        let reply: ReplyFn<'_> =
            Box::new(move |r: &[Recovery]| r.first().and_then(reply).into_iter().collect());
        let mut r = self
            .hub
            .join_with_history(
                &self.state,
                vec![(room.to_owned(), since)],
                false,
                Some(reply),
            )
            .await?;
        Ok(r.remove(0))
    }

    /// Joins several rooms at once, replaying each one's history after its
    /// `Since`, all merged in sequence order; `reply` builds the frames that
    /// go before the replay. See [`join_since`](Connection::join_since).
    pub async fn rejoin(
        &self,
        rooms: Vec<(String, Since)>,
        reply: impl FnOnce(&[Recovery]) -> Vec<Frame> + Send,
    ) -> Result<Vec<Recovery>, JoinError> {
        self.hub
            .join_with_history(&self.state, rooms, false, Some(Box::new(reply)))
            .await
    }

    /// Resolves when the connection's rooms or session data changed since the
    /// last time it resolved (for code that keeps a copy of them somewhere).
    pub async fn changed(&self) {
        self.state.changed.notified().await
    }

    /// Where the connection joined each room with history (see [`Recovery::position`]).
    pub fn marks(&self) -> HashMap<String, StreamPosition> {
        self.state.meta().marks.clone()
    }

    /// Leaves a room. Returns false if the connection was not in it.
    pub async fn leave(&self, room: &str) -> Result<bool, LeaveError> {
        validate_room_name(room, self.hub.inner.config.max_room_name_bytes)?;
        self.hub.leave_room(&self.state, room, false).await
    }

    /// Publishes as this connection: the publication carries it as the sender.
    pub async fn publish(&self, publication: Publication) -> Result<usize, PublishError> {
        self.hub.publish(self.as_sender(publication)).await
    }

    /// [`Hub::publish_detached`] as this connection.
    pub fn publish_detached(&self, publication: Publication) -> Result<usize, PublishError> {
        self.hub.publish_detached(self.as_sender(publication))
    }

    pub(super) fn as_sender(&self, mut publication: Publication) -> Publication {
        publication.from = Some(crate::Sender {
            conn: self.state.id,
            user: self.user(),
        });
        publication
    }

    /// Merges `data` into the session data: each key is set, or removed when its value is null.
    pub fn merge_session(&self, data: Map<String, Value>) -> Result<(), SessionError> {
        let max = self.hub.inner.config.max_session_bytes;
        let mut meta = self.state.meta();
        let mut merged = meta.session.clone();
        for (k, v) in data {
            if v.is_null() {
                merged.remove(&k);
            } else {
                merged.insert(k, v);
            }
        }
        let size = serde_json::to_vec(&merged)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > max {
            return Err(SessionError::TooLarge { max });
        }
        meta.session = merged;
        self.state.changed.notify_one();
        Ok(())
    }

    /// The session data.
    pub fn session(&self) -> Map<String, Value> {
        self.state.meta().session.clone()
    }

    /// Sets the connection's public data (a token's `info` claim), shown by
    /// [`Hub::connection_info`] and, once the connection authenticates (call
    /// this first), in room presence next to its user.
    pub fn set_info(&self, info: &Value) {
        self.state.meta().info = Some(Arc::from(info.to_string()));
    }

    /// The connection's public data.
    pub fn info(&self) -> Option<Value> {
        let text = self.state.meta().info.clone()?;
        serde_json::from_str(&text).ok()
    }

    /// Removes the connection from every room, index and the presence store.
    /// Later calls do nothing.
    pub async fn close(&self) {
        if self.done.swap(true, Ordering::AcqRel) {
            return;
        }
        let slot = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        cleanup(self.hub.clone(), self.state.clone(), slot).await;
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if *self.done.get_mut() {
            return;
        }
        let (hub, state) = (self.hub.clone(), self.state.clone());
        let slot = self
            .slot
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(cleanup(hub, state, slot));
        }
    }
}

pub(super) async fn cleanup(hub: Hub, state: Arc<ConnState>, slot: Option<Slot>) {
    let inner = &hub.inner;
    let (user, rooms) = {
        let mut meta = state.meta();
        if meta.closed {
            return;
        }
        meta.closed = true;
        (meta.user.clone(), std::mem::take(&mut meta.rooms))
    };
    if state.owns_outbox {
        state.outbox.close(Disconnect::NORMAL);
    }
    inner.conns.write(&state.id, |m| m.remove(&state.id));
    if let Some(u) = &user {
        hub.unindex_user(u, state.id).await;
    }
    for room in rooms {
        let _ = hub.remove_member(state.id, &room, user.clone(), None).await;
    }
    if let Err(e) = inner.presence.disconnect(state.id).await {
        hub.backend_error(&e);
    }
    // The place is free before the connection count says so.
    drop(slot);
    inner.open.fetch_sub(1, Ordering::AcqRel);
    inner
        .metrics
        .connections_closed
        .fetch_add(1, Ordering::Relaxed);
}
