//! Cluster-wide presence in Redis.
//!
//! Every change is one Lua script (`presence.lua`), so "first connection of a
//! user in a room" and "last one left" are decided atomically across nodes.
//! Each node heartbeats into a sorted set; a node that misses its heartbeats
//! for the TTL is dead, and whichever node notices first removes its entries
//! (and sends the leave events they imply).
//!
//! The store also keeps a mirror of what this node registered. While Redis is
//! away, changes land in the mirror and answers come from it (so joins keep
//! working and presence events are decided from this node's view); once Redis
//! is back, the node writes its whole mirror again. The same happens when the
//! node finds itself missing from Redis (Redis restarted empty, or the other
//! nodes reaped it during a partition).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use futures_util::StreamExt;
use roomcast_core::broker::Health;
use roomcast_core::presence::{
    ConnPresence, JoinOutcome, LeaveOutcome, Member, NodeInfo, PresenceError, PresenceStats,
    PresenceStore, ReapListener, Reaped, RoomPresence, RoomSummary, UserCount, UserPresence,
    UsersPage,
};
use roomcast_core::{BoxFuture, ConnId, Envelope, NodeId, Payload, PresenceEvent, PresenceKind};

use crate::{wire, Shared};

static SCRIPT: &str = include_str!("presence.lua");

#[derive(Default)]
struct RoomCount {
    conns: usize,
    users: HashMap<Arc<str>, usize>,
}

struct MirrorConn {
    node: NodeId,
    user: Option<Arc<str>>,
    info: Option<Arc<str>>,
    rooms: Vec<String>,
}

/// What this node registered: its connections and their rooms.
#[derive(Default)]
struct Mirror {
    conns: HashMap<ConnId, MirrorConn>,
    rooms: HashMap<String, RoomCount>,
    /// While a replay runs: the connections changed since its snapshot (their
    /// own writes may have reached Redis before the replay's older ones).
    changed: Option<std::collections::HashSet<ConnId>>,
}

impl Mirror {
    fn touch(&mut self, conn: ConnId) {
        if let Some(c) = &mut self.changed {
            c.insert(conn);
        }
    }

    /// The script op that writes `id` to Redis as the mirror has it now.
    fn sync_args(&self, id: ConnId) -> Vec<String> {
        let Some(c) = self.conns.get(&id) else {
            return vec!["disconnect".to_owned(), id.to_string()];
        };
        let mut args = vec![
            "sync".to_owned(),
            id.to_string(),
            c.node.to_string(),
            c.user.as_deref().unwrap_or("").to_owned(),
            c.info.as_deref().unwrap_or("").to_owned(),
        ];
        args.extend(c.rooms.iter().cloned());
        args
    }

    fn join(&mut self, room: &str, m: &Member) -> JoinOutcome {
        self.touch(m.conn);
        let conn = self.conns.entry(m.conn).or_insert_with(|| MirrorConn {
            node: m.node,
            user: m.user.clone(),
            info: m.info.clone(),
            rooms: Vec::new(),
        });
        let count = self.rooms.entry(room.to_owned()).or_default();
        if conn.rooms.iter().any(|r| r == room) {
            return JoinOutcome {
                added: false,
                first_for_user: false,
                connections: count.conns,
            };
        }
        conn.rooms.push(room.to_owned());
        count.conns += 1;
        let first_for_user = match &conn.user {
            Some(u) => {
                let n = count.users.entry(u.clone()).or_default();
                *n += 1;
                *n == 1
            }
            None => false,
        };
        JoinOutcome {
            added: true,
            first_for_user,
            connections: count.conns,
        }
    }

    fn leave(&mut self, room: &str, conn: ConnId) -> LeaveOutcome {
        self.touch(conn);
        let Some(c) = self.conns.get_mut(&conn) else {
            return LeaveOutcome {
                removed: false,
                last_for_user: false,
            };
        };
        let before = c.rooms.len();
        c.rooms.retain(|r| r != room);
        if c.rooms.len() == before {
            return LeaveOutcome {
                removed: false,
                last_for_user: false,
            };
        }
        let mut last_for_user = false;
        if let Some(count) = self.rooms.get_mut(room) {
            count.conns -= 1;
            if let Some(u) = &c.user {
                if let Some(n) = count.users.get_mut(u) {
                    *n -= 1;
                    if *n == 0 {
                        count.users.remove(u);
                        last_for_user = true;
                    }
                }
            }
            if count.conns == 0 {
                self.rooms.remove(room);
            }
        }
        LeaveOutcome {
            removed: true,
            last_for_user,
        }
    }
}

/// The presence store's state, shared with its heartbeat task.
pub(crate) struct State {
    shared: Arc<Shared>,
    script: redis::Script,
    mirror: Mutex<Mirror>,
    /// A write failed: Redis is behind the mirror until the next replay.
    dirty: AtomicBool,
    /// Where this node serves HTTP, published with its heartbeat.
    address: Mutex<Option<String>>,
    /// Told of the connections this node reaps.
    reap_listener: OnceLock<Arc<dyn ReapListener>>,
}

fn perr(e: impl std::fmt::Display) -> PresenceError {
    PresenceError::failed(e.to_string())
}

impl State {
    pub(crate) fn start(shared: Arc<Shared>) -> Arc<State> {
        let state = Arc::new(State {
            shared,
            script: redis::Script::new(SCRIPT),
            mirror: Mutex::new(Mirror::default()),
            dirty: AtomicBool::new(false),
            address: Mutex::new(None),
            reap_listener: OnceLock::new(),
        });
        tokio::spawn(heartbeat(Arc::downgrade(&state), state.shared.clone()));
        state
    }

    fn mirror(&self) -> std::sync::MutexGuard<'_, Mirror> {
        self.mirror.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one op of the script.
    async fn op<T: redis::FromRedisValue>(&self, args: &[&str]) -> Result<T, PresenceError> {
        let mut conn = self.shared.conn().map_err(PresenceError::unavailable)?;
        let mut inv = self.script.prepare_invoke();
        // The key only routes the script to the shard holding presence (in a cluster).
        inv.key(self.shared.key("nodes"));
        inv.arg(self.shared.key_prefix());
        for a in args {
            inv.arg(*a);
        }
        inv.invoke_async(&mut conn).await.map_err(|e| {
            self.shared.failed(&e);
            perr(e)
        })
    }

    /// A write: the mirror first, then Redis; on failure the mirror's answer
    /// stands and the node replays later.
    async fn write<T: redis::FromRedisValue>(&self, args: &[&str]) -> Option<T> {
        match self.op(args).await {
            Ok(v) => Some(v),
            Err(_) => {
                self.dirty.store(true, Ordering::Release);
                None
            }
        }
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &mut redis::Cmd,
    ) -> Result<T, PresenceError> {
        let mut conn = self.shared.conn().map_err(PresenceError::unavailable)?;
        cmd.query_async(&mut conn).await.map_err(|e| {
            self.shared.failed(&e);
            perr(e)
        })
    }

    async fn pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, PresenceError> {
        let mut conn = self.shared.conn().map_err(PresenceError::unavailable)?;
        pipe.query_async(&mut conn).await.map_err(|e| {
            self.shared.failed(&e);
            perr(e)
        })
    }

    /// Writes the whole mirror into Redis again, and removes this node's
    /// entries the mirror no longer has.
    async fn replay(&self, node: NodeId) -> Result<usize, PresenceError> {
        let registered: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(self.shared.key(&format!("node:{node}:conns"))))
            .await?;
        let (stale, current): (Vec<String>, Vec<Vec<String>>) = {
            let mut m = self.mirror();
            m.changed = Some(Default::default());
            let stale = registered
                .into_iter()
                .filter(|c| {
                    c.parse::<ConnId>()
                        .map_or(true, |id| !m.conns.contains_key(&id))
                })
                .collect();
            let current = m.conns.keys().map(|id| m.sync_args(*id)).collect();
            (stale, current)
        };
        let n = current.len();
        let ops = stale
            .into_iter()
            .map(|c| vec!["disconnect".to_owned(), c])
            .chain(current)
            .collect();
        let mut result = self.run_all(ops).await;
        // A connection that changed meanwhile may have had its own write
        // undone by the snapshot's older one: write it again as it is now,
        // until a round finds nothing changed.
        for _ in 0..8 {
            if result.is_err() {
                break;
            }
            let again: Vec<Vec<String>> = {
                let mut m = self.mirror();
                let changed = m.changed.replace(Default::default()).unwrap_or_default();
                changed.into_iter().map(|id| m.sync_args(id)).collect()
            };
            if again.is_empty() {
                break;
            }
            result = self.run_all(again).await;
        }
        let settled = self.mirror().changed.take().is_some_and(|c| c.is_empty());
        result?;
        if !settled {
            return Err(PresenceError::unavailable(
                "presence kept changing during a replay",
            ));
        }
        Ok(n)
    }

    /// Runs script ops, 64 at a time.
    async fn run_all(&self, ops: Vec<Vec<String>>) -> Result<(), PresenceError> {
        let results: Vec<Result<redis::Value, PresenceError>> = futures_util::stream::iter(ops)
            .map(|args| async move {
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                self.op::<redis::Value>(&refs).await
            })
            .buffer_unordered(64)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok(())
    }

    /// One heartbeat: registers the node, replays if Redis lost it, reaps dead nodes.
    async fn beat(&self, node: NodeId) -> Result<(), PresenceError> {
        let info = serde_json::json!({
            "connections": self.mirror().conns.len(),
            "address": *self.address.lock().unwrap_or_else(|p| p.into_inner()),
        })
        .to_string();
        let ttl = self.shared.config.node_ttl.as_millis().to_string();
        let out: Vec<String> = match self
            .op(&["heartbeat", &node.to_string(), &info, &ttl])
            .await
        {
            Ok(out) => out,
            Err(e) => {
                // The command may still run, late (a stalled link delivers it
                // after the timeout): if the others reaped this node meanwhile,
                // that late heartbeat registers it again and its answer, "you
                // were missing", is lost. Replay at the next beat that succeeds.
                self.dirty.store(true, Ordering::Release);
                return Err(e);
            }
        };
        let registered = out.first().is_some_and(|v| v == "1");
        if !registered || self.dirty.swap(false, Ordering::AcqRel) {
            match self.replay(node).await {
                Ok(n) => {
                    tracing::info!(connections = n, "registered this node's presence in redis")
                }
                Err(e) => {
                    self.dirty.store(true, Ordering::Release);
                    return Err(e);
                }
            }
        }
        for dead in out.iter().skip(1) {
            if *dead != node.to_string() {
                self.reap(dead, &ttl).await?;
            }
        }
        Ok(())
    }

    /// Removes a dead node's entries, announces the leaves they imply and
    /// tells the reap listener which connections went.
    async fn reap(&self, dead: &str, ttl: &str) -> Result<(), PresenceError> {
        let mut total = 0usize;
        loop {
            // SPOP hands each connection to one reaping node only.
            let (done, gone, events): (i64, Vec<String>, Vec<String>) =
                self.op(&["reap", dead, ttl, "500"]).await?;
            total += gone.len() / 2;
            for ev in events.chunks_exact(3) {
                self.announce_leave(&ev[0], &ev[1], &ev[2]).await;
            }
            let reaped: Vec<Reaped> = gone
                .chunks_exact(2)
                .filter_map(|c| {
                    Some(Reaped {
                        conn: c[0].parse().ok()?,
                        user: (!c[1].is_empty()).then(|| Arc::from(c[1].as_str())),
                        node: dead.to_owned(),
                    })
                })
                .collect();
            if let (false, Some(l)) = (reaped.is_empty(), self.reap_listener.get()) {
                l.reaped(reaped);
            }
            if done == 1 {
                break;
            }
        }
        if total > 0 {
            self.shared
                .metrics
                .reaped
                .fetch_add(total as u64, Ordering::Relaxed);
            tracing::warn!(
                node = dead,
                connections = total,
                "removed the presence of a dead node"
            );
        }
        Ok(())
    }

    async fn announce_leave(&self, conn: &str, room: &str, user: &str) {
        let (Ok(conn), Some(sink), Some(node)) = (
            conn.parse::<ConnId>(),
            self.shared.sink.get(),
            self.shared.node.get(),
        ) else {
            return;
        };
        let env = Envelope {
            origin: *node,
            payload: Payload::Presence(PresenceEvent {
                room: room.to_owned(),
                kind: PresenceKind::Leave,
                user: Arc::from(user),
                conn,
            }),
        };
        let channel = self.shared.channel(&format!("room:{room}"));
        let bytes = wire::encode(&env);
        sink.receive(env);
        if let Ok(mut c) = self.shared.conn() {
            let r: redis::RedisResult<i64> = redis::cmd(self.shared.publish_cmd())
                .arg(channel)
                .arg(bytes)
                .query_async(&mut c)
                .await;
            if let Err(e) = r {
                self.shared.failed(&e);
            }
        }
    }
}

async fn heartbeat(state: std::sync::Weak<State>, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.config.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.reconnected.notified() => {}
            _ = shared.stop.cancelled() => return,
        }
        let Some(state) = state.upgrade() else { return };
        let Some(node) = shared.node.get().copied() else {
            continue;
        };
        if !shared.connected.load(Ordering::Acquire) {
            continue;
        }
        if let Err(e) = state.beat(node).await {
            tracing::warn!(error = %e, "presence heartbeat failed");
        }
    }
}

/// Presence kept in Redis, shared by every node; see the module docs.
pub struct RedisPresence {
    state: Arc<State>,
}

impl RedisPresence {
    pub(crate) fn new(state: Arc<State>) -> RedisPresence {
        RedisPresence { state }
    }
}

fn user_arg(u: &Option<Arc<str>>) -> &str {
    u.as_deref().unwrap_or("")
}

impl PresenceStore for RedisPresence {
    fn connect(&self, member: &Member) -> BoxFuture<'_, Result<(), PresenceError>> {
        let member = member.clone();
        Box::pin(async move {
            {
                let mut m = self.state.mirror();
                m.touch(member.conn);
                let c = m.conns.entry(member.conn).or_insert_with(|| MirrorConn {
                    node: member.node,
                    user: None,
                    info: None,
                    rooms: Vec::new(),
                });
                c.user = member.user.clone();
                c.info = member.info.clone();
            }
            let _: Option<i64> = self
                .state
                .write(&[
                    "connect",
                    &member.conn.to_string(),
                    &member.node.to_string(),
                    user_arg(&member.user),
                    member.info.as_deref().unwrap_or(""),
                ])
                .await;
            Ok(())
        })
    }

    fn disconnect(&self, conn: ConnId) -> BoxFuture<'_, Result<(), PresenceError>> {
        Box::pin(async move {
            {
                let mut m = self.state.mirror();
                let rooms = m
                    .conns
                    .get(&conn)
                    .map(|c| c.rooms.clone())
                    .unwrap_or_default();
                for r in rooms {
                    m.leave(&r, conn);
                }
                m.touch(conn);
                m.conns.remove(&conn);
            }
            let _: Option<redis::Value> =
                self.state.write(&["disconnect", &conn.to_string()]).await;
            Ok(())
        })
    }

    fn join(
        &self,
        room: &str,
        member: &Member,
    ) -> BoxFuture<'_, Result<JoinOutcome, PresenceError>> {
        let (room, member) = (room.to_owned(), member.clone());
        Box::pin(async move {
            let local = self.state.mirror().join(&room, &member);
            let remote: Option<(i64, i64, i64)> = self
                .state
                .write(&[
                    "join",
                    &room,
                    &member.conn.to_string(),
                    user_arg(&member.user),
                ])
                .await;
            Ok(match remote {
                Some((added, first, n)) => JoinOutcome {
                    added: added == 1,
                    first_for_user: first == 1,
                    connections: n.max(0) as usize,
                },
                None => local,
            })
        })
    }

    fn leave(
        &self,
        room: &str,
        conn: ConnId,
    ) -> BoxFuture<'_, Result<LeaveOutcome, PresenceError>> {
        let room = room.to_owned();
        Box::pin(async move {
            let local = self.state.mirror().leave(&room, conn);
            let remote: Option<(i64, i64)> =
                self.state.write(&["leave", &room, &conn.to_string()]).await;
            Ok(match remote {
                Some((removed, last)) => LeaveOutcome {
                    removed: removed == 1,
                    last_for_user: last == 1,
                },
                None => local,
            })
        })
    }

    fn room(&self, room: &str) -> BoxFuture<'_, Result<RoomPresence, PresenceError>> {
        let key = self.state.shared.key(&format!("room:{room}"));
        Box::pin(async move {
            let members: HashMap<String, String> =
                self.state.query(redis::cmd("HGETALL").arg(key)).await?;
            // Per user: how many connections, and one of them (for its info).
            let mut users: HashMap<&str, (usize, &str)> = HashMap::new();
            let mut anonymous = 0;
            for (c, u) in &members {
                if u.is_empty() {
                    anonymous += 1;
                } else {
                    users.entry(u).or_insert((0, c)).0 += 1;
                }
            }
            let mut infos: HashMap<&str, serde_json::Value> = HashMap::new();
            if !users.is_empty() {
                let conns: Vec<&str> = users.values().map(|(_, c)| *c).collect();
                let found: Vec<Option<String>> = self
                    .state
                    .query(
                        redis::cmd("HMGET")
                            .arg(self.state.shared.key("conn_info"))
                            .arg(&conns),
                    )
                    .await?;
                for (c, info) in conns.into_iter().zip(found) {
                    if let Some(v) = info.and_then(|i| serde_json::from_str(&i).ok()) {
                        infos.insert(c, v);
                    }
                }
            }
            let mut users: Vec<UserCount> = users
                .into_iter()
                .map(|(u, (n, c))| UserCount {
                    user: Arc::from(u),
                    connections: n,
                    info: infos.remove(c),
                })
                .collect();
            users.sort_by(|a, b| a.user.cmp(&b.user));
            Ok(RoomPresence {
                connections: members.len(),
                users,
                anonymous,
            })
        })
    }

    fn rooms(&self) -> BoxFuture<'_, Result<Vec<RoomSummary>, PresenceError>> {
        Box::pin(async move {
            let counts: HashMap<String, i64> = self
                .state
                .query(redis::cmd("HGETALL").arg(self.state.shared.key("rooms")))
                .await?;
            let mut rooms: Vec<(String, i64)> =
                counts.into_iter().filter(|(_, n)| *n > 0).collect();
            rooms.sort();
            let mut pipe = redis::pipe();
            for (r, _) in &rooms {
                pipe.cmd("HLEN")
                    .arg(self.state.shared.key(&format!("room:{r}:users")));
            }
            let users: Vec<usize> = if rooms.is_empty() {
                Vec::new()
            } else {
                self.state.pipe(&pipe).await?
            };
            Ok(rooms
                .into_iter()
                .zip(users)
                .map(|((room, n), users)| RoomSummary {
                    room,
                    connections: n as usize,
                    users,
                })
                .collect())
        })
    }

    fn user(&self, user: &str) -> BoxFuture<'_, Result<UserPresence, PresenceError>> {
        let key = self.state.shared.key(&format!("user:{user}"));
        Box::pin(async move {
            let mut conns: Vec<String> = self.state.query(redis::cmd("SMEMBERS").arg(key)).await?;
            conns.sort();
            Ok(UserPresence {
                online: !conns.is_empty(),
                connections: conns,
            })
        })
    }

    fn users(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> BoxFuture<'_, Result<UsersPage, PresenceError>> {
        let after = after.map(str::to_owned);
        Box::pin(async move {
            let s = &self.state.shared;
            // P:users holds every online user with a connection count; a page
            // is cut from it sorted, so the cursor is a user id.
            let counts: HashMap<String, i64> = self
                .state
                .query(redis::cmd("HGETALL").arg(s.key("users")))
                .await?;
            let mut page: Vec<(String, i64)> = counts
                .into_iter()
                .filter(|(u, n)| *n > 0 && after.as_deref().is_none_or(|a| u.as_str() > a))
                .collect();
            page.sort();
            let more = page.len() > limit;
            page.truncate(limit);
            // The info of one connection of each user.
            let mut pipe = redis::pipe();
            for (u, _) in &page {
                pipe.cmd("SRANDMEMBER").arg(s.key(&format!("user:{u}")));
            }
            let conns: Vec<Option<String>> = if page.is_empty() {
                Vec::new()
            } else {
                self.state.pipe(&pipe).await?
            };
            let known: Vec<&str> = conns.iter().flatten().map(String::as_str).collect();
            let infos: Vec<Option<String>> = if known.is_empty() {
                Vec::new()
            } else {
                self.state
                    .query(redis::cmd("HMGET").arg(s.key("conn_info")).arg(&known))
                    .await?
            };
            let mut infos = known.into_iter().zip(infos).collect::<HashMap<_, _>>();
            let users: Vec<UserCount> = page
                .iter()
                .zip(&conns)
                .map(|((u, n), c)| UserCount {
                    user: Arc::from(u.as_str()),
                    connections: *n as usize,
                    info: c
                        .as_deref()
                        .and_then(|c| infos.remove(c).flatten())
                        .and_then(|i| serde_json::from_str(&i).ok()),
                })
                .collect();
            let next = if more {
                users.last().map(|u| u.user.to_string())
            } else {
                None
            };
            Ok(UsersPage { users, next })
        })
    }

    fn connection(
        &self,
        conn: ConnId,
    ) -> BoxFuture<'_, Result<Option<ConnPresence>, PresenceError>> {
        Box::pin(async move {
            let s = &self.state.shared;
            let id = conn.to_string();
            let mut pipe = redis::pipe();
            pipe.cmd("HGET").arg(s.key("conn_node")).arg(&id);
            pipe.cmd("HGET").arg(s.key("conn_user")).arg(&id);
            pipe.cmd("SMEMBERS").arg(s.key(&format!("conn:{id}:rooms")));
            let (node, user, mut rooms): (Option<String>, Option<String>, Vec<String>) =
                self.state.pipe(&pipe).await?;
            let Some(node) = node else {
                return Ok(None);
            };
            rooms.sort();
            Ok(Some(ConnPresence {
                user: user.filter(|u| !u.is_empty()).map(Arc::from),
                node: NodeId(u32::from_str_radix(&node, 16).map_err(perr)?),
                rooms,
            }))
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<PresenceStats, PresenceError>> {
        Box::pin(async move {
            let s = &self.state.shared;
            let mut pipe = redis::pipe();
            pipe.cmd("HLEN").arg(s.key("conn_node"));
            pipe.cmd("HLEN").arg(s.key("users"));
            pipe.cmd("HLEN").arg(s.key("rooms"));
            let (connections, users, rooms): (usize, usize, usize) = self.state.pipe(&pipe).await?;
            Ok(PresenceStats {
                connections,
                users,
                rooms,
            })
        })
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, PresenceError>> {
        Box::pin(async move {
            let out: Vec<String> = self.state.op(&["nodes"]).await?;
            let now: u64 = out.first().and_then(|v| v.parse().ok()).unwrap_or(0);
            Ok(out
                .get(1..)
                .unwrap_or_default()
                .chunks_exact(3)
                .map(|c| {
                    let info: serde_json::Value = serde_json::from_str(&c[2]).unwrap_or_default();
                    NodeInfo {
                        node: c[0].clone(),
                        last_seen_ms: now.saturating_sub(c[1].parse::<f64>().unwrap_or(0.0) as u64),
                        connections: info["connections"].as_u64().unwrap_or(0) as usize,
                        address: info["address"].as_str().map(str::to_owned),
                    }
                })
                .collect())
        })
    }

    fn advertise(&self, address: &str) {
        *self.state.address.lock().unwrap_or_else(|p| p.into_inner()) = Some(address.to_owned());
        // Publish it now rather than at the next heartbeat.
        self.state.shared.reconnected.notify_one();
    }

    fn on_reaped(&self, listener: Arc<dyn ReapListener>) {
        let _ = self.state.reap_listener.set(listener);
    }

    fn health(&self) -> Health {
        if self.state.shared.connected.load(Ordering::Acquire) {
            Health::Ok
        } else {
            Health::Degraded("redis: presence unavailable".into())
        }
    }
}
