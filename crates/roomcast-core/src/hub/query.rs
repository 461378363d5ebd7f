//! Questions about the cluster: presence, history reads, nodes, health,
//! totals, one connection.

use std::sync::Arc;

use crate::broker::{Health, MetricSample};
use crate::error::QueryError;
use crate::history::{HistoryPage, HistoryStore, Since};
use crate::presence::{PresenceStats, RoomPresence, RoomSummary, UserPresence};
use crate::room::validate_room_name;
use crate::ConnId;

use super::state::ConnInfo;
use super::Hub;

impl Hub {
    /// A room's history after `since`, at most `limit` publications.
    pub async fn history(
        &self,
        room: &str,
        since: &Since,
        limit: usize,
    ) -> Result<HistoryPage, QueryError> {
        validate_room_name(room, self.inner.config.max_room_name_bytes)?;
        let limits = self
            .inner
            .config
            .rooms
            .history_for(room)
            .ok_or(QueryError::NoHistory)?;
        Ok(self
            .inner
            .history
            .read(room, since, limit.min(limits.size), &limits)
            .await?)
    }

    /// Removes a room's history; its next publication starts a new epoch.
    pub async fn remove_history(&self, room: &str) -> Result<(), QueryError> {
        validate_room_name(room, self.inner.config.max_room_name_bytes)?;
        Ok(self.inner.history.remove(room).await?)
    }

    /// The history store (it also keeps Socket.IO recovery sessions).
    pub fn history_store(&self) -> &Arc<dyn HistoryStore> {
        &self.inner.history
    }

    /// Who is in a room, on every node.
    pub async fn room_presence(&self, room: &str) -> Result<RoomPresence, QueryError> {
        validate_room_name(room, self.inner.config.max_room_name_bytes)?;
        if !self.inner.config.rooms.for_room(room).presence {
            return Err(QueryError::Forbidden);
        }
        Ok(self.inner.presence.room(room).await?)
    }

    /// Every room with members, on every node.
    pub async fn rooms(&self) -> Result<Vec<RoomSummary>, QueryError> {
        Ok(self.inner.presence.rooms().await?)
    }

    /// Where a user is connected, on every node.
    pub async fn user_presence(&self, user: &str) -> Result<UserPresence, QueryError> {
        Ok(self.inner.presence.user(user).await?)
    }

    /// Online users of the cluster, sorted by id, a page at a time: at most
    /// `limit` after the user id `after`.
    pub async fn users(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<crate::presence::UsersPage, QueryError> {
        Ok(self.inner.presence.users(after, limit).await?)
    }

    /// The live nodes of the cluster, as the presence store knows them.
    pub async fn nodes(&self) -> Result<Vec<crate::presence::NodeInfo>, QueryError> {
        Ok(self.inner.presence.nodes().await?)
    }

    /// Tells the other nodes of the cluster where this node serves HTTP (`host:port`).
    pub fn advertise(&self, address: &str) {
        self.inner.presence.advertise(address);
    }

    /// Tells `listener` of connections of dead nodes that this node removes
    /// from cluster presence (see [`PresenceStore::on_reaped`](crate::presence::PresenceStore::on_reaped)).
    pub fn on_reaped(&self, listener: Arc<dyn crate::presence::ReapListener>) {
        self.inner.presence.on_reaped(listener);
    }

    /// How the broker and the presence store are doing; the first problem wins.
    pub fn backend_health(&self) -> Health {
        match self.inner.broker.health() {
            Health::Ok => match self.inner.presence.health() {
                Health::Ok => self.inner.history.health(),
                bad => bad,
            },
            bad => bad,
        }
    }

    /// The broker's own metrics.
    pub fn backend_metrics(&self) -> Vec<MetricSample> {
        self.inner.broker.metrics()
    }

    /// Totals, on every node.
    pub async fn stats(&self) -> Result<PresenceStats, QueryError> {
        Ok(self.inner.presence.stats().await?)
    }

    /// One connection: from this node with its session data, else from presence.
    pub async fn connection_info(&self, conn: ConnId) -> Result<Option<ConnInfo>, QueryError> {
        let local = self.inner.conns.read(&conn, |m| m.get(&conn).cloned());
        if let Some(c) = local {
            let meta = c.meta();
            if !meta.closed {
                let mut rooms = meta.rooms.clone();
                rooms.sort();
                return Ok(Some(ConnInfo {
                    conn: conn.to_string(),
                    user: meta.user.as_deref().map(str::to_owned),
                    node: self.inner.node.to_string(),
                    rooms,
                    session: Some(meta.session.clone()),
                    info: meta
                        .info
                        .as_deref()
                        .and_then(|i| serde_json::from_str(i).ok()),
                }));
            }
        }
        Ok(self
            .inner
            .presence
            .connection(conn)
            .await?
            .map(|p| ConnInfo {
                conn: conn.to_string(),
                user: p.user.as_deref().map(str::to_owned),
                node: p.node.to_string(),
                rooms: p.rooms,
                session: None,
                info: None,
            }))
    }
}
