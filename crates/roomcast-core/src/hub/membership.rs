//! Room membership of one connection: joining (limits, the room's
//! `max_members`, the presence store, the room index and the node's
//! subscription), leaving, and the presence events they cause.

use std::sync::Arc;

use crate::error::{AuthError, JoinError, LeaveError};
use crate::history::Since;
use crate::room::validate_room_name;
use crate::{ConnId, Payload, PresenceEvent, PresenceKind};

use super::state::ConnState;
use super::{valid_user, Hub};

impl Hub {
    pub(super) async fn join_room(
        &self,
        c: &Arc<ConnState>,
        room: &str,
        by_server: bool,
    ) -> Result<bool, JoinError> {
        validate_room_name(room, self.inner.config.max_room_name_bytes)?;
        if self.inner.config.rooms.history_for(room).is_none() {
            return self.add_member(c, room, by_server).await;
        }
        let r = self
            .join_with_history(c, vec![(room.to_owned(), Since::Latest)], by_server, None)
            .await?;
        Ok(r.first().is_some_and(|r| r.joined))
    }

    /// Joins a room, the raw way: no history.
    pub(super) async fn add_member(
        &self,
        c: &Arc<ConnState>,
        room: &str,
        by_server: bool,
    ) -> Result<bool, JoinError> {
        let inner = &self.inner;
        let rule = inner.config.rooms.for_room(room);
        {
            let mut meta = c.meta();
            if meta.closed {
                return Err(JoinError::Closed);
            }
            if meta.rooms.iter().any(|r| r == room) {
                return Ok(false);
            }
            if meta.rooms.len() >= inner.config.max_rooms_per_connection {
                return Err(JoinError::TooManyRooms {
                    max: inner.config.max_rooms_per_connection,
                });
            }
            meta.rooms.push(room.to_owned());
        }
        let member = self.member_of(c);
        let undo = |c: &ConnState| c.meta().rooms.retain(|r| r != room);
        let outcome = match inner.presence.join(room, &member).await {
            Ok(o) => o,
            Err(e) => {
                undo(c);
                self.backend_error(&e);
                return Err(e.into());
            }
        };
        if rule.max_members > 0 && outcome.added && outcome.connections > rule.max_members {
            undo(c);
            let _ = inner.presence.leave(room, c.id).await;
            return Err(JoinError::RoomFull {
                max: rule.max_members,
            });
        }
        let first_local = {
            let meta = c.meta();
            if meta.closed {
                None
            } else {
                Some(inner.rooms.write(room, |m| {
                    let members = m.entry(room.to_owned()).or_default();
                    members.insert(c.id, c.clone());
                    members.len() == 1
                }))
            }
        };
        let Some(first_local) = first_local else {
            // Closed while the presence store answered: undo what it recorded.
            let _ = inner.presence.leave(room, c.id).await;
            return Err(JoinError::Closed);
        };
        if first_local {
            if let Err(e) = inner.broker.subscribe_room(inner.node, room).await {
                self.backend_error(&e);
            }
        }
        if by_server {
            if let Some(f) = c.protocol.encode_membership(room, true) {
                let _ = c.outbox.push(f);
            }
        }
        if outcome.first_for_user && rule.announces_members() {
            if let Some(user) = member.user {
                self.presence_event(room, PresenceKind::Join, user, c.id)
                    .await;
            }
        }
        c.changed.notify_one();
        Ok(true)
    }

    /// Returns whether the connection was in the room.
    pub(super) async fn leave_room(
        &self,
        c: &Arc<ConnState>,
        room: &str,
        by_server: bool,
    ) -> Result<bool, LeaveError> {
        let (user, was_in) = {
            let mut meta = c.meta();
            let before = meta.rooms.len();
            meta.rooms.retain(|r| r != room);
            meta.marks.remove(room);
            (meta.user.clone(), meta.rooms.len() != before)
        };
        if !was_in {
            return Ok(false);
        }
        self.remove_member(c.id, room, user, by_server.then_some(c))
            .await?;
        c.changed.notify_one();
        Ok(true)
    }

    /// Removes a connection from a room's local index and from presence, and
    /// sends the leave event if it was the user's last connection there.
    pub(super) async fn remove_member(
        &self,
        id: ConnId,
        room: &str,
        user: Option<Arc<str>>,
        notify: Option<&Arc<ConnState>>,
    ) -> Result<(), LeaveError> {
        let inner = &self.inner;
        let emptied = inner.rooms.write(room, |m| {
            let Some(members) = m.get_mut(room) else {
                return false;
            };
            members.remove(&id);
            if members.is_empty() {
                m.remove(room);
                return true;
            }
            false
        });
        if emptied {
            if let Err(e) = inner.broker.unsubscribe_room(inner.node, room).await {
                self.backend_error(&e);
            }
        }
        if let Some(c) = notify {
            if let Some(f) = c.protocol.encode_membership(room, false) {
                let _ = c.outbox.push(f);
            }
        }
        let outcome = inner.presence.leave(room, id).await.inspect_err(|e| {
            self.backend_error(e);
        })?;
        if outcome.last_for_user && inner.config.rooms.for_room(room).announces_members() {
            if let Some(user) = user {
                self.presence_event(room, PresenceKind::Leave, user, id)
                    .await;
            }
        }
        Ok(())
    }

    /// Binds `user` to a connection that has none, also after it joined rooms
    /// (a login event, `POST /api/bind`): the user index and the broker's user
    /// subscription, then presence, the connection's and each of its rooms',
    /// with the join event of the user's first connection in a room.
    /// `Ok(false)`: it was that user's already.
    pub(super) async fn bind_user(
        &self,
        c: &Arc<ConnState>,
        user: &str,
    ) -> Result<bool, AuthError> {
        if !valid_user(user) {
            return Err(AuthError::InvalidUser);
        }
        let user: Arc<str> = Arc::from(user);
        let (first, rooms) = {
            let mut meta = c.meta();
            if meta.closed {
                return Err(AuthError::Closed);
            }
            match &meta.user {
                Some(u) if **u == *user => return Ok(false),
                Some(_) => return Err(AuthError::AlreadyAuthenticated),
                None => {}
            }
            meta.user = Some(user.clone());
            (self.insert_user(&user, c), meta.rooms.clone())
        };
        self.subscribe_if_first(&user, first).await;
        let member = self.member_of(c);
        self.inner
            .presence
            .connect(&member)
            .await
            .inspect_err(|e| self.backend_error(e))?;
        for room in rooms {
            // Out as the anonymous member, in as the user's: a store may keep
            // room memberships across `connect` (Redis does).
            let presence = &self.inner.presence;
            presence
                .leave(&room, c.id)
                .await
                .inspect_err(|e| self.backend_error(e))?;
            let outcome = presence
                .join(&room, &member)
                .await
                .inspect_err(|e| self.backend_error(e))?;
            if outcome.first_for_user && self.inner.config.rooms.for_room(&room).announces_members()
            {
                self.presence_event(&room, PresenceKind::Join, user.clone(), c.id)
                    .await;
            }
        }
        c.changed.notify_one();
        Ok(true)
    }

    pub(super) async fn presence_event(
        &self,
        room: &str,
        kind: PresenceKind,
        user: Arc<str>,
        conn: ConnId,
    ) {
        let payload = Payload::Presence(PresenceEvent {
            room: room.to_owned(),
            kind,
            user,
            conn,
        });
        self.deliver_local(&payload);
        let _ = self.to_other_nodes(payload).await;
    }
}
