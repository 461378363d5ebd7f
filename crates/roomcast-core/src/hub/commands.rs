//! Server-side commands (join, leave, close a room, disconnect, bind) addressed to
//! a connection or a user: applied to this node's connections and sent to
//! the nodes that may hold others.

use std::sync::Arc;

use crate::error::{AuthError, BindError, ClusterCommandError};
use crate::room::validate_room_name;
use crate::{Command, ConnId, Disconnect, Payload, Who};

use super::state::ConnState;
use super::{valid_user, Hub};

impl Hub {
    /// Applies a server-side command to local connections; returns how many it affected.
    pub(super) async fn apply_locally(&self, cmd: &Command) -> usize {
        match cmd {
            Command::Join { who, room } => {
                let mut n = 0;
                for c in self.local_conns(who) {
                    if self.join_room(&c, room, true).await.is_ok() {
                        n += 1;
                    }
                }
                n
            }
            Command::Leave { who, room } => {
                let mut n = 0;
                for c in self.local_conns(who) {
                    if matches!(self.leave_room(&c, room, true).await, Ok(true)) {
                        n += 1;
                    }
                }
                n
            }
            Command::CloseRoom { room } => {
                let members: Vec<Arc<ConnState>> = self
                    .inner
                    .rooms
                    .read(room.as_str(), |m| {
                        m.get(room.as_str()).map(|m| m.values().cloned().collect())
                    })
                    .unwrap_or_default();
                let mut n = 0;
                for c in members {
                    if matches!(self.leave_room(&c, room, true).await, Ok(true)) {
                        n += 1;
                    }
                }
                n
            }
            Command::Disconnect { who, reason } => self
                .local_conns(who)
                .iter()
                .filter(|c| c.outbox.close(reason.clone()))
                .count(),
            Command::Bind { conn, user } => {
                let mut n = 0;
                for c in self.local_conns(&Who::Conn(*conn)) {
                    match self.bind_user(&c, user).await {
                        Ok(true) => n += 1,
                        Ok(false) => {}
                        Err(e) => {
                            tracing::info!(conn = %conn, %user, error = %e, "bind not applied")
                        }
                    }
                }
                n
            }
        }
    }

    /// Runs a server-side command here and on every other node that may hold its
    /// connections. Returns how many local connections it affected.
    pub(super) async fn run_command(
        &self,
        cmd: Command,
    ) -> Result<usize, crate::broker::BrokerError> {
        let n = self.apply_locally(&cmd).await;
        let local_only = match &cmd {
            Command::Join { who, .. }
            | Command::Leave { who, .. }
            | Command::Disconnect { who, .. } => {
                matches!(who, Who::Conn(c) if c.node() == self.inner.node)
            }
            Command::CloseRoom { .. } => false,
            Command::Bind { conn, .. } => conn.node() == self.inner.node,
        };
        if !local_only {
            self.to_other_nodes(Payload::Command(cmd)).await?;
        }
        Ok(n)
    }

    /// Puts every connection of `who` into `room`, on every node; they are told
    /// with a membership notice. Returns how many local connections joined.
    pub async fn join(&self, who: Who, room: &str) -> Result<usize, ClusterCommandError> {
        validate_room_name(room, self.inner.config.max_room_name_bytes)?;
        self.run_command(Command::Join {
            who,
            room: room.to_owned(),
        })
        .await
        .map_err(ClusterCommandError::Broker)
    }

    /// Takes every connection of `who` out of `room`, on every node.
    pub async fn leave(&self, who: Who, room: &str) -> Result<usize, ClusterCommandError> {
        validate_room_name(room, self.inner.config.max_room_name_bytes)?;
        self.run_command(Command::Leave {
            who,
            room: room.to_owned(),
        })
        .await
        .map_err(ClusterCommandError::Broker)
    }

    /// Takes every member out of `room`, on every node; they are told with a
    /// membership notice. Returns how many local connections left.
    pub async fn close_room(&self, room: &str) -> Result<usize, ClusterCommandError> {
        validate_room_name(room, self.inner.config.max_room_name_bytes)?;
        self.run_command(Command::CloseRoom {
            room: room.to_owned(),
        })
        .await
        .map_err(ClusterCommandError::Broker)
    }

    /// Disconnects every connection of `who`, on every node, with `reason`.
    pub async fn disconnect(
        &self,
        who: Who,
        reason: Disconnect,
    ) -> Result<usize, crate::broker::BrokerError> {
        self.run_command(Command::Disconnect { who, reason }).await
    }

    /// Binds `user` to the connection `conn`, which has none yet, on whichever
    /// node holds it. Here the answer is exact; a connection of another node
    /// is sent the command, and `Forwarded` says so.
    pub async fn bind(&self, conn: ConnId, user: &str) -> Result<BindOutcome, BindError> {
        if !valid_user(user) {
            return Err(BindError::Auth(AuthError::InvalidUser));
        }
        if conn.node() == self.inner.node {
            let Some(c) = self.local_conns(&Who::Conn(conn)).into_iter().next() else {
                return Err(BindError::NotFound);
            };
            return match self.bind_user(&c, user).await {
                Ok(true) => Ok(BindOutcome::Bound),
                Ok(false) => Ok(BindOutcome::Already),
                Err(e) => Err(BindError::Auth(e)),
            };
        }
        self.to_other_nodes(Payload::Command(Command::Bind {
            conn,
            user: user.to_owned(),
        }))
        .await
        .map_err(BindError::Broker)?;
        Ok(BindOutcome::Forwarded)
    }
}

/// What [`Hub::bind`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindOutcome {
    /// The connection is now the user's.
    Bound,
    /// It was the user's already.
    Already,
    /// The connection is on another node, which was sent the command.
    Forwarded,
}
