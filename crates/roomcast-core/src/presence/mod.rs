//! Who is connected and who is in which room: the presence seam.
//!
//! The hub keeps its own index of local connections for delivery; the
//! presence store answers questions about the whole cluster (with the memory
//! store, the one node) and decides when a user's first connection joined a
//! room or their last one left it.

mod memory;

use std::sync::Arc;

use serde::Serialize;

pub use memory::MemoryPresence;

use crate::{BoxFuture, ConnId, NodeId};

/// The presence store could not be reached or answered nonsense.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PresenceError {
    /// The presence store cannot take the call now (an outage, a full queue, a stopped
    /// task); the reason says which.
    #[error("presence store unavailable: {0}")]
    Unavailable(std::borrow::Cow<'static, str>),
    /// A call to the presence store's backend failed or was answered with nonsense.
    #[error("presence store failed: {0}")]
    Failed(#[source] Arc<dyn std::error::Error + Send + Sync>),
}

impl PresenceError {
    /// [`PresenceError::Failed`] with `cause` as its source.
    pub fn failed(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> PresenceError {
        PresenceError::Failed(Arc::from(cause.into()))
    }

    /// [`PresenceError::Unavailable`] for `reason`.
    pub fn unavailable(reason: impl Into<std::borrow::Cow<'static, str>>) -> PresenceError {
        PresenceError::Unavailable(reason.into())
    }
}

/// A connection as the presence store sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The connection.
    pub conn: ConnId,
    /// Its user, if it authenticated as one.
    pub user: Option<Arc<str>>,
    /// The node it is connected to.
    pub node: NodeId,
    /// Public data about it (a token's `info` claim), as JSON text.
    pub info: Option<Arc<str>>,
}

/// What a join changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinOutcome {
    /// The member was not in the room before.
    pub added: bool,
    /// This is the user's first connection in the room.
    pub first_for_user: bool,
    /// Connections in the room after the join.
    pub connections: usize,
}

/// What a leave changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaveOutcome {
    /// The member was in the room.
    pub removed: bool,
    /// The user has no connection left in the room.
    pub last_for_user: bool,
}

/// One user in a room.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserCount {
    /// The user id.
    pub user: Arc<str>,
    /// How many of the user's connections are in the room.
    pub connections: usize,
    /// The `info` of one of those connections, when they have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

/// One page of the online users of the cluster ([`PresenceStore::users`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct UsersPage {
    /// Users sorted by id: their connection counts (all of them, cluster-wide)
    /// and the `info` of one of their connections.
    pub users: Vec<UserCount>,
    /// The last user id of this page when there are more: pass it as `after`.
    pub next: Option<String>,
}

/// Who is in a room.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct RoomPresence {
    /// Every connection in the room, with or without a user.
    pub connections: usize,
    /// The users in the room, sorted by id.
    pub users: Vec<UserCount>,
    /// Connections in the room that have no user.
    pub anonymous: usize,
}

/// One room, in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomSummary {
    /// The room name.
    pub room: String,
    /// Connections in the room.
    pub connections: usize,
    /// Distinct users in the room.
    pub users: usize,
}

/// Where a user is connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct UserPresence {
    /// Whether the user has any connection.
    pub online: bool,
    /// The user's connections.
    pub connections: Vec<String>,
}

/// A connection as the presence store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnPresence {
    /// Its user.
    pub user: Option<Arc<str>>,
    /// Its node.
    pub node: NodeId,
    /// The rooms it is in, sorted.
    pub rooms: Vec<String>,
}

/// Totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct PresenceStats {
    /// Open connections.
    pub connections: usize,
    /// Distinct users with at least one connection.
    pub users: usize,
    /// Rooms with at least one member.
    pub rooms: usize,
}

/// A node of the cluster, as the presence store last heard of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeInfo {
    /// The node id.
    pub node: String,
    /// Its open connections at its last heartbeat.
    pub connections: usize,
    /// Milliseconds since its last heartbeat.
    pub last_seen_ms: u64,
    /// Where other nodes reach its HTTP endpoints (`host:port`), if it said.
    pub address: Option<String>,
}

/// A connection that a cluster store removed because its node stopped
/// heartbeating (see [`PresenceStore::on_reaped`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaped {
    /// The connection.
    pub conn: ConnId,
    /// Its user, if it had one.
    pub user: Option<Arc<str>>,
    /// The node it was on.
    pub node: String,
}

/// Told of connections removed from presence because their node died.
///
/// Each removal is reported once, by the node that removed it, after the
/// store has forgotten it (so a presence query from the listener already
/// counts it out).
pub trait ReapListener: Send + Sync + 'static {
    /// `conns` were removed.
    fn reaped(&self, conns: Vec<Reaped>);
}

/// The presence seam; see the module docs.
pub trait PresenceStore: Send + Sync + 'static {
    /// A connection opened (or took a user id).
    fn connect(&self, member: &Member) -> BoxFuture<'_, Result<(), PresenceError>>;
    /// A connection closed; it leaves every room it was in.
    fn disconnect(&self, conn: ConnId) -> BoxFuture<'_, Result<(), PresenceError>>;
    /// A connection joined a room.
    fn join(
        &self,
        room: &str,
        member: &Member,
    ) -> BoxFuture<'_, Result<JoinOutcome, PresenceError>>;
    /// A connection left a room.
    fn leave(&self, room: &str, conn: ConnId)
        -> BoxFuture<'_, Result<LeaveOutcome, PresenceError>>;
    /// Who is in a room.
    fn room(&self, room: &str) -> BoxFuture<'_, Result<RoomPresence, PresenceError>>;
    /// Every room with members, sorted by name.
    fn rooms(&self) -> BoxFuture<'_, Result<Vec<RoomSummary>, PresenceError>>;
    /// Where a user is connected.
    fn user(&self, user: &str) -> BoxFuture<'_, Result<UserPresence, PresenceError>>;
    /// Online users (with a connection anywhere), sorted by id: at most
    /// `limit` of those whose id sorts after `after`.
    fn users(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> BoxFuture<'_, Result<UsersPage, PresenceError>>;
    /// One connection.
    fn connection(
        &self,
        conn: ConnId,
    ) -> BoxFuture<'_, Result<Option<ConnPresence>, PresenceError>>;
    /// Totals.
    fn stats(&self) -> BoxFuture<'_, Result<PresenceStats, PresenceError>>;
    /// The live nodes of the cluster; empty for a store that has only this node.
    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, PresenceError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    /// Tells the other nodes where this node's HTTP endpoints are (`host:port`).
    fn advertise(&self, address: &str) {
        let _ = address;
    }
    /// Whether the store is reachable.
    fn health(&self) -> crate::broker::Health {
        crate::broker::Health::Ok
    }
    /// Tells `listener` of the connections this node removes because their
    /// node died. A store with only this node never does.
    fn on_reaped(&self, listener: Arc<dyn ReapListener>) {
        let _ = listener;
    }
}

/// The shared test suite every [`PresenceStore`] implementation must pass.
///
/// `make` returns an empty store each time.
#[cfg(any(test, feature = "testing"))]
pub mod suite {
    use super::*;

    fn member(conn: u64, user: Option<&str>) -> Member {
        Member {
            conn: ConnId(conn),
            user: user.map(Arc::from),
            node: NodeId(0x0100_0001),
            info: None,
        }
    }

    /// Runs every case against stores made by `make`.
    pub async fn run<S: PresenceStore>(make: impl Fn() -> S) {
        first_and_last_connection_of_a_user(make()).await;
        disconnect_leaves_every_room(make()).await;
        anonymous_members_are_counted(make()).await;
        info_is_shown_per_user(make()).await;
        users_are_listed_in_pages(make()).await;
    }

    async fn users_are_listed_in_pages(s: impl PresenceStore) {
        let mut carol = member(4, Some("carol"));
        carol.info = Some(Arc::from(r#"{"name":"Carol"}"#));
        for m in [
            member(1, Some("bob")),
            member(2, Some("alice")),
            member(3, Some("alice")),
            carol,
            member(5, None),
        ] {
            s.connect(&m).await.unwrap();
        }
        let first = s.users(None, 2).await.unwrap();
        let listed = |p: &UsersPage| {
            p.users
                .iter()
                .map(|u| (u.user.to_string(), u.connections))
                .collect::<Vec<_>>()
        };
        assert_eq!(listed(&first), [("alice".into(), 2), ("bob".into(), 1)]);
        assert_eq!(first.next.as_deref(), Some("bob"));
        let second = s.users(first.next.as_deref(), 2).await.unwrap();
        assert_eq!(listed(&second), [("carol".into(), 1)]);
        assert_eq!(
            second.users[0].info,
            Some(serde_json::json!({"name": "Carol"}))
        );
        assert_eq!(second.next, None);
        // Gone when their last connection is.
        s.disconnect(ConnId(1)).await.unwrap();
        s.disconnect(ConnId(2)).await.unwrap();
        let all = s.users(None, 10).await.unwrap();
        assert_eq!(listed(&all), [("alice".into(), 1), ("carol".into(), 1)]);
    }

    async fn info_is_shown_per_user(s: impl PresenceStore) {
        let mut a = member(1, Some("alice"));
        a.info = Some(Arc::from(r#"{"name":"Alice","avatar":"/a.png"}"#));
        let b = member(2, Some("bob"));
        for m in [&a, &b] {
            s.connect(m).await.unwrap();
            s.join("r", m).await.unwrap();
        }
        let p = s.room("r").await.unwrap();
        assert_eq!(
            p.users
                .iter()
                .map(|u| (u.user.as_ref(), u.info.clone()))
                .collect::<Vec<_>>(),
            vec![
                (
                    "alice",
                    Some(serde_json::json!({"name":"Alice","avatar":"/a.png"}))
                ),
                ("bob", None)
            ]
        );
        // A connection id reused after a disconnect does not inherit the info.
        s.disconnect(a.conn).await.unwrap();
        let again = member(1, Some("alice"));
        s.connect(&again).await.unwrap();
        s.join("r", &again).await.unwrap();
        let p = s.room("r").await.unwrap();
        assert_eq!(p.users[0].info, None);
    }

    async fn first_and_last_connection_of_a_user(s: impl PresenceStore) {
        let (a1, a2, b) = (
            member(1, Some("alice")),
            member(2, Some("alice")),
            member(3, Some("bob")),
        );
        for m in [&a1, &a2, &b] {
            s.connect(m).await.unwrap();
        }
        let o = s.join("lobby", &a1).await.unwrap();
        assert!(o.added && o.first_for_user);
        assert_eq!(o.connections, 1);
        let o = s.join("lobby", &a2).await.unwrap();
        assert!(o.added && !o.first_for_user);
        let o = s.join("lobby", &a2).await.unwrap();
        assert!(
            !o.added && !o.first_for_user,
            "a second join changes nothing"
        );
        s.join("lobby", &b).await.unwrap();
        let p = s.room("lobby").await.unwrap();
        assert_eq!(p.connections, 3);
        assert_eq!(
            p.users,
            vec![
                UserCount {
                    user: "alice".into(),
                    connections: 2,
                    info: None,
                },
                UserCount {
                    user: "bob".into(),
                    connections: 1,
                    info: None,
                }
            ]
        );
        let o = s.leave("lobby", a1.conn).await.unwrap();
        assert!(o.removed && !o.last_for_user);
        let o = s.leave("lobby", a2.conn).await.unwrap();
        assert!(o.removed && o.last_for_user);
        let o = s.leave("lobby", a2.conn).await.unwrap();
        assert!(!o.removed && !o.last_for_user);
        assert_eq!(s.room("lobby").await.unwrap().connections, 1);
        let u = s.user("alice").await.unwrap();
        assert!(u.online);
        assert_eq!(u.connections.len(), 2);
        assert_eq!(
            s.stats().await.unwrap(),
            PresenceStats {
                connections: 3,
                users: 2,
                rooms: 1
            }
        );
    }

    async fn disconnect_leaves_every_room(s: impl PresenceStore) {
        let a = member(1, Some("alice"));
        s.connect(&a).await.unwrap();
        s.join("r1", &a).await.unwrap();
        s.join("r2", &a).await.unwrap();
        let c = s.connection(a.conn).await.unwrap().unwrap();
        assert_eq!(c.rooms, vec!["r1".to_string(), "r2".to_string()]);
        assert_eq!(s.rooms().await.unwrap().len(), 2);
        s.disconnect(a.conn).await.unwrap();
        assert_eq!(s.connection(a.conn).await.unwrap(), None);
        assert!(s.rooms().await.unwrap().is_empty());
        assert!(!s.user("alice").await.unwrap().online);
        assert_eq!(s.stats().await.unwrap(), PresenceStats::default());
    }

    async fn anonymous_members_are_counted(s: impl PresenceStore) {
        let (x, y) = (member(1, None), member(2, None));
        s.connect(&x).await.unwrap();
        s.connect(&y).await.unwrap();
        let o = s.join("r", &x).await.unwrap();
        assert!(o.added && !o.first_for_user);
        s.join("r", &y).await.unwrap();
        let p = s.room("r").await.unwrap();
        assert_eq!((p.connections, p.anonymous, p.users.len()), (2, 2, 0));
        let summary = s.rooms().await.unwrap();
        assert_eq!(summary[0].users, 0);
        assert_eq!(s.stats().await.unwrap().users, 0);
    }
}
