//! What a client connection may do: room rules (`join`, `publish`), client
//! `send`/`broadcast`, the message rate limit, and applying an [`Identity`]
//! to a connection (per-user cap, grants, expiry). The command layer asks it
//! before acting; the HTTP API and Rust code are
//! not bound by it. Per-connection state is in `client.rs`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use roomcast_core::room::{JoinRule, PublishRule, RoomRules};
use roomcast_core::{Connection, Disconnect};

use crate::auth::Identity;
use crate::backend::Backend;
use crate::codes::{Code, Refusal};
use crate::config::Config;
use crate::metrics::ServerMetrics;

mod client;
pub(crate) use client::{ClientState, Rate};

/// The policy of one server.
pub(crate) struct Access {
    rules: RoomRules,
    send: bool,
    broadcast: bool,
    anonymous: bool,
    rate: u32,
    burst: u32,
    max_per_user: usize,
    /// Admissions of one user are serialised (by shard) while the per-user
    /// cap is checked, so that concurrent connects cannot all pass it.
    admitting: [tokio::sync::Mutex<()>; 32],
    pub backend: Option<Arc<Backend>>,
    pub metrics: Arc<ServerMetrics>,
}

impl Access {
    pub(crate) fn new(
        config: &Config,
        backend: Option<Arc<Backend>>,
        metrics: Arc<ServerMetrics>,
    ) -> Access {
        Access {
            rules: RoomRules::new(config.rooms.clone()),
            send: config.client.send.allows(config.auth.mode),
            broadcast: config.client.broadcast.allows(config.auth.mode),
            anonymous: config.auth.allows_anonymous(),
            rate: config.limits.message_rate,
            burst: config.limits.message_burst.max(1),
            max_per_user: config.limits.max_connections_per_user,
            admitting: std::array::from_fn(|_| tokio::sync::Mutex::new(())),
            backend,
            metrics,
        }
    }

    /// Whether connections without a user may act.
    pub(crate) fn anonymous(&self) -> bool {
        self.anonymous
    }

    fn denied(&self, action: &'static str, d: Refusal) -> Refusal {
        self.metrics.denied(action);
        tracing::debug!(action, code = %d.code, message = %d.message, "client action refused");
        d
    }

    /// Counts one client message against the rate limit.
    pub(crate) fn rate(&self, state: &ClientState) -> Rate {
        if self.rate == 0 {
            return Rate::Ok;
        }
        if state.rate_closed.load(Ordering::Relaxed) {
            return Rate::Closing;
        }
        let ok = {
            let mut b = state.bucket.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let refill = now.duration_since(b.last).as_secs_f64() * self.rate as f64;
            b.tokens = (b.tokens + refill).min(self.burst as f64);
            b.last = now;
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                true
            } else {
                false
            }
        };
        if ok {
            state.strikes.store(0, Ordering::Relaxed);
            return Rate::Ok;
        }
        self.metrics.rate_limited("message");
        let strikes = state.strikes.fetch_add(1, Ordering::Relaxed) + 1;
        if strikes == 1 {
            tracing::info!(
                transport = state.transport,
                "a connection went over the message rate limit"
            );
        }
        if strikes >= self.burst {
            if state.rate_closed.swap(true, Ordering::Relaxed) {
                return Rate::Closing;
            }
            tracing::info!("closing a connection that kept sending over the message rate limit");
            Rate::Close
        } else {
            Rate::Refuse
        }
    }

    /// Applies credentials' identity to a fresh connection: user, the
    /// per-user limit, session data, granted rooms, expiry. Returns the rooms
    /// to join with [`join_granted`](Access::join_granted), once the client
    /// has been told who it is.
    pub(crate) async fn admit(
        &self,
        conn: &Connection,
        state: &ClientState,
        identity: Identity,
    ) -> Result<Vec<String>, Disconnect> {
        if let Some(info) = &identity.info {
            // Before authenticating, so presence carries it.
            conn.set_info(info);
        }
        if let Some(user) = &identity.user {
            // Held until the user is bound: the count and the binding are one step.
            let _admitting = self
                .under_user_cap(conn.hub(), user)
                .await
                .map_err(|()| Disconnect::TOO_MANY_CONNECTIONS)?;
            conn.authenticate(user)
                .await
                .map_err(|e| Disconnect::custom(Disconnect::AUTH_FAILED.code, e.to_string()))?;
        } else if !self.anonymous {
            return Err(Disconnect::custom(
                Disconnect::AUTH_FAILED.code,
                "anonymous connections are not allowed",
            ));
        }
        if !identity.session.is_empty() {
            state
                .merge_server_session(conn, identity.session)
                .map_err(|e| Disconnect::custom(Disconnect::AUTH_FAILED.code, e.to_string()))?;
        }
        state
            .expires_at
            .store(identity.expires_at.unwrap_or(0), Ordering::Relaxed);
        state.granted().extend(identity.rooms.iter().cloned());
        // `connect` is posted before the joins it causes.
        self.webhook("connect", conn, None, None);
        Ok(identity.rooms)
    }

    /// Checks `limits.max_connections_per_user` for one more connection of
    /// `user`; `Err` when it has that many. Hold the guard until the
    /// connection is bound: the count and the binding are one step.
    pub(crate) async fn under_user_cap(
        &self,
        hub: &roomcast_core::Hub,
        user: &str,
    ) -> Result<Option<tokio::sync::MutexGuard<'_, ()>>, ()> {
        if self.max_per_user == 0 {
            return Ok(None);
        }
        let guard = self.admitting[shard_of(user, self.admitting.len())]
            .lock()
            .await;
        let open = hub
            .user_presence(user)
            .await
            .map(|p| p.connections.len())
            .unwrap_or(0);
        if open >= self.max_per_user {
            self.metrics.denied("connect");
            tracing::info!(%user, open, "refused: too many connections for this user");
            return Err(());
        }
        Ok(Some(guard))
    }

    /// Joins the rooms the credentials listed; those that cannot be joined
    /// are skipped, with one log line for them all.
    pub(crate) async fn join_granted(&self, conn: &Connection, rooms: &[String]) {
        let mut skipped = 0;
        let mut first = None;
        for (i, room) in rooms.iter().enumerate() {
            match conn.join(room).await {
                Ok(true) => self.webhook("join", conn, Some(room), None),
                Ok(false) => {}
                Err(e) => {
                    let full = matches!(e, roomcast_core::error::JoinError::TooManyRooms { .. });
                    // At the room limit, the rest cannot be joined either.
                    skipped += if full { rooms.len() - i } else { 1 };
                    first.get_or_insert((room.clone(), e));
                    if full {
                        break;
                    }
                }
            }
        }
        if let Some((room, error)) = first {
            tracing::warn!(skipped, %room, %error, "rooms the credentials list were not joined");
        }
    }

    /// A fresh token for a connection: same user, new expiry and grants.
    pub(crate) fn refresh(
        &self,
        conn: &Connection,
        state: &ClientState,
        identity: Identity,
    ) -> Result<Option<u64>, Refusal> {
        if identity.user.as_deref() != conn.user().as_deref() {
            return Err(Refusal::new(
                Code::AUTH_FAILED,
                "a refreshed token must name the connection's user",
            ));
        }
        state
            .expires_at
            .store(identity.expires_at.unwrap_or(0), Ordering::Relaxed);
        state.granted().extend(identity.rooms);
        if let Some(info) = &identity.info {
            conn.set_info(info);
        }
        Ok(identity.expires_at)
    }

    fn acting(&self, conn: &Connection) -> Result<(), Refusal> {
        if !self.anonymous && conn.user().is_none() {
            return Err(Refusal::new(
                Code::UNAUTHENTICATED,
                "authenticate first with {\"type\":\"auth\",...}",
            ));
        }
        Ok(())
    }

    /// Whether the connection may join `room` from the client side.
    pub(crate) async fn may_join(
        &self,
        conn: &Connection,
        state: &ClientState,
        room: &str,
    ) -> Result<(), Refusal> {
        self.acting(conn).map_err(|d| self.denied("join", d))?;
        let user = conn.user();
        let rule = self.rules.for_room_as(room, user.as_deref());
        let refuse = |why: &str| {
            Err(self.denied(
                "join",
                Refusal::new(Code::FORBIDDEN, format!("may not join `{room}`: {why}")),
            ))
        };
        match own_join(rule.join, user.is_some(), state, room) {
            Some(Ok(())) => Ok(()),
            Some(Err(why)) => refuse(why),
            None => {
                let Some(backend) = self.backend.as_ref().filter(|b| b.handles_subscribe()) else {
                    return refuse("no subscribe proxy is configured");
                };
                let caller = state.caller(conn, user.as_deref());
                backend
                    .subscribe(&caller, &conn.session(), room)
                    .await
                    .map_err(|e| {
                        self.denied("join", Refusal::passed_on(e.code(), e.client_message()))
                    })
            }
        }
    }

    /// Whether the connection may ask who is in `room`: when it is a member, or
    /// when the room's rule would let it join by itself without asking the
    /// backend (`anyone`, `authenticated`, a granted `claim`). Whether the room
    /// shows presence at all (`presence = false`) is the hub's check.
    pub(crate) fn may_see_presence(
        &self,
        conn: &Connection,
        state: &ClientState,
        room: &str,
    ) -> Result<(), Refusal> {
        self.acting(conn).map_err(|d| self.denied("presence", d))?;
        if conn.rooms().iter().any(|r| r == room) {
            return Ok(());
        }
        let user = conn.user();
        let join = self.rules.for_room_as(room, user.as_deref()).join;
        if let Some(Ok(())) = own_join(join, user.is_some(), state, room) {
            return Ok(());
        }
        Err(self.denied(
            "presence",
            Refusal::new(
                Code::FORBIDDEN,
                format!("may not see who is in `{room}`: join it first"),
            ),
        ))
    }

    /// Whether the connection may publish to `room` from the client side.
    pub(crate) fn may_publish(&self, conn: &Connection, room: &str) -> Result<(), Refusal> {
        self.acting(conn).map_err(|d| self.denied("publish", d))?;
        let user = conn.user();
        match self.rules.for_room_as(room, user.as_deref()).publish {
            PublishRule::Anyone => Ok(()),
            PublishRule::Members if conn.rooms().iter().any(|r| r == room) => Ok(()),
            PublishRule::Members => Err(self.denied(
                "publish",
                Refusal::new(
                    Code::FORBIDDEN,
                    format!("may not publish to `{room}`: join it first"),
                ),
            )),
            PublishRule::None => Err(self.denied(
                "publish",
                Refusal::new(
                    Code::FORBIDDEN,
                    format!("may not publish to `{room}`: only the server publishes there"),
                ),
            )),
        }
    }

    /// Whether clients may send to a user.
    pub(crate) fn may_send(&self, conn: &Connection) -> Result<(), Refusal> {
        self.acting(conn).map_err(|d| self.denied("send", d))?;
        if !self.send {
            return Err(self.denied(
                "send",
                Refusal::new(
                    Code::FORBIDDEN,
                    "clients may not send to users (client.send; allowed by default in open mode only)",
                ),
            ));
        }
        Ok(())
    }

    /// Whether clients may broadcast.
    pub(crate) fn may_broadcast(&self, conn: &Connection) -> Result<(), Refusal> {
        self.acting(conn).map_err(|d| self.denied("broadcast", d))?;
        if !self.broadcast {
            return Err(self.denied(
                "broadcast",
                Refusal::new(
                    Code::FORBIDDEN,
                    "clients may not broadcast (client.broadcast; allowed by default in open mode only)",
                ),
            ));
        }
        Ok(())
    }

    /// Whether the client may merge `data` into its session data: not over a
    /// key the server side set.
    pub(crate) fn may_set_session(
        &self,
        conn: &Connection,
        state: &ClientState,
        data: &serde_json::Map<String, Value>,
    ) -> Result<(), Refusal> {
        self.acting(conn).map_err(|d| self.denied("session", d))?;
        let owned = state.server_keys();
        if let Some(k) = data.keys().find(|k| owned.contains(*k)) {
            return Err(self.denied(
                "session",
                Refusal::new(
                    Code::FORBIDDEN,
                    format!("session key `{k}` is set by the server"),
                ),
            ));
        }
        Ok(())
    }

    /// Whether a connection may do things that need no rule.
    pub(crate) fn may_act(&self, conn: &Connection) -> Result<(), Refusal> {
        self.acting(conn)
    }

    /// Posts a webhook event when webhooks are on.
    pub(crate) fn webhook(
        &self,
        kind: &'static str,
        conn: &Connection,
        room: Option<&str>,
        reason: Option<&str>,
    ) {
        if let Some(b) = &self.backend {
            b.webhook(kind, conn.id(), conn.user().as_deref(), room, reason);
        }
    }
}

/// What a join rule says of a connection joining `room` by itself: allowed,
/// refused (why), or `None` when the backend decides (`proxy`).
fn own_join(
    join: JoinRule,
    authenticated: bool,
    state: &ClientState,
    room: &str,
) -> Option<Result<(), &'static str>> {
    Some(match join {
        JoinRule::Anyone => Ok(()),
        JoinRule::Authenticated if authenticated => Ok(()),
        JoinRule::Authenticated => Err("authenticated users only"),
        JoinRule::Claim if state.granted().contains(room) => Ok(()),
        JoinRule::Claim => Err("the room is not granted to this connection"),
        JoinRule::None => Err("rooms of this kind are joined by the server only"),
        JoinRule::Proxy => return None,
    })
}

fn shard_of(user: &str, shards: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    user.hash(&mut h);
    h.finish() as usize % shards
}
