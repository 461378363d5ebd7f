//! The command layer: every action a client or the HTTP API asks for, checked
//! against the access rules once and executed once, whatever protocol it came
//! in on. Front ends (the native protocol, Socket.IO's built-in events, the
//! HTTP API) decode their input into calls of [`Commands`] and encode what it
//! returns; none of them checks a rule or calls the hub for these actions
//! itself.
//!
//! Results are typed; failures are a [`CommandError`]: refused by a rule, a
//! limit or the backend ([`CommandError::Refused`]), or not done by the hub
//! ([`CommandError::Hub`]), which front ends may name differently (Socket.IO's
//! built-in events answer `join_failed`, ...).

use std::sync::Arc;

use serde_json::{Map, Value};

use roomcast_core::error::BindError;
use roomcast_core::error::{AuthError, JoinError, LeaveError, PublishError, QueryError};
use roomcast_core::history::Since;
use roomcast_core::presence::RoomPresence;
use roomcast_core::{
    BindOutcome, ConnId, Connection, Disconnect, Frame, Hub, Publication, Recovery, Target, Who,
};

use crate::access::{Access, ClientState};
use crate::auth::{AuthFailure, Authenticator, Credentials, Handshake};
use crate::backend::{Action, Backend};
use crate::codes::{Code, Refusal};
use crate::config::Config;
use crate::metrics::ServerMetrics;

/// The command layer of one server, and what its front ends share.
pub(crate) struct Commands {
    pub hub: Hub,
    pub config: Arc<Config>,
    pub auth: Arc<dyn Authenticator>,
    pub access: Access,
    pub backend: Option<Arc<Backend>>,
    pub metrics: Arc<ServerMetrics>,
    /// The bridge to Django Channels' layer, with `[channels]`.
    pub channels: Option<crate::channels::Layer>,
    /// The HTTP API's idempotency keys (shared by the cluster on Redis).
    pub idempotency: Arc<dyn roomcast_core::idempotency::IdempotencyStore>,
}

/// The client connection a command comes from.
#[derive(Clone, Copy)]
pub(crate) struct Client<'a> {
    pub conn: &'a Connection,
    pub state: &'a ClientState,
}

/// Who asks: a client (bound by the access rules, and the sender of what it
/// publishes) or the server side (the HTTP API, bound by none).
#[derive(Clone, Copy)]
pub(crate) enum Actor<'a> {
    Client(Client<'a>),
    Server,
}

/// A hub operation that failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HubError {
    #[error(transparent)]
    Join(#[from] JoinError),
    #[error(transparent)]
    Leave(#[from] LeaveError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// Why a command was not carried out.
#[derive(Debug)]
pub(crate) enum CommandError {
    /// A rule, a limit, the credentials or the backend refused it.
    Refused(Refusal),
    /// The hub could not do it.
    Hub(HubError),
}

impl<E: Into<HubError>> From<E> for CommandError {
    fn from(e: E) -> Self {
        CommandError::Hub(e.into())
    }
}

impl From<Refusal> for CommandError {
    fn from(r: Refusal) -> Self {
        CommandError::Refused(r)
    }
}

impl From<HubError> for Refusal {
    fn from(e: HubError) -> Self {
        match e {
            HubError::Join(e) => e.into(),
            HubError::Leave(e) => e.into(),
            HubError::Publish(e) => e.into(),
            HubError::Query(e) => e.into(),
            HubError::Auth(e) => e.into(),
        }
    }
}

impl From<CommandError> for Refusal {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Refused(r) => r,
            CommandError::Hub(e) => e.into(),
        }
    }
}

/// Why a user was not bound to a connection ([`Commands::bind`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum BindFailure {
    #[error("user id must be 1 to 200 bytes without control characters")]
    InvalidUser,
    #[error("no open connection {0}")]
    NoConnection(ConnId),
    #[error("the connection is another user's: a connection is bound once")]
    OtherUser,
    #[error("the user has limits.max_connections_per_user connections already")]
    TooManyConnections,
    #[error("the connection is closing")]
    Closed,
    #[error("{0}")]
    Unavailable(String),
}

impl BindFailure {
    /// Its client-visible code.
    pub(crate) fn code(&self) -> Code {
        match self {
            BindFailure::InvalidUser => Code::INVALID_USER,
            BindFailure::NoConnection(_) => Code::NO_CONNECTION,
            BindFailure::OtherUser => Code::ALREADY_BOUND,
            BindFailure::TooManyConnections => Code::TOO_MANY_CONNECTIONS,
            BindFailure::Closed => Code::CLOSED,
            BindFailure::Unavailable(_) => Code::BACKEND_UNAVAILABLE,
        }
    }
}

impl From<BindFailure> for Refusal {
    fn from(f: BindFailure) -> Self {
        Refusal::new(f.code(), f)
    }
}

/// What a successful `auth` did.
pub(crate) enum Bound {
    /// The connection is the user now (`None`: anonymous, as the credentials said).
    As {
        user: Option<String>,
        expires_at: Option<u64>,
    },
    /// The per-user cap closes the connection (4505) instead.
    Closing,
}

impl Commands {
    fn handshake(c: Client<'_>) -> Handshake {
        Handshake::new(
            c.conn.id(),
            c.state.transport,
            c.state.namespace.clone(),
            &c.state.forwarded,
        )
    }

    /// Checks credentials, counting a failure.
    async fn authenticate(
        &self,
        credentials: Credentials,
        handshake: &Handshake,
    ) -> Result<crate::auth::Identity, AuthFailure> {
        self.auth
            .authenticate(credentials, handshake)
            .await
            .inspect_err(|f| self.metrics.auth_failure(f.reason()))
    }

    /// Admits a fresh connection with what it presented at its handshake:
    /// checks the credentials and applies their identity (user, per-user cap,
    /// session, grants, expiry). Returns the rooms to join with
    /// [`join_granted`](Commands::join_granted) once the client was told who
    /// it is; a refusal is the close the client gets.
    pub(crate) async fn connect(
        &self,
        c: Client<'_>,
        credentials: Credentials,
        handshake: &Handshake,
    ) -> Result<Vec<String>, Disconnect> {
        let identity = self
            .authenticate(credentials, handshake)
            .await
            .map_err(|f| f.disconnect())?;
        self.access.admit(c.conn, c.state, identity).await
    }

    /// Binds `user` to the connection `conn`, on whichever node it is: a
    /// backend's `bind` action for its calling connection, or `POST /api/bind`.
    /// The connection must have no user or this one; the per-user cap
    /// applies. A `connect` webhook with the user follows, as for a late `auth`.
    pub(crate) async fn bind(&self, conn: ConnId, user: &str) -> Result<BindOutcome, BindFailure> {
        if !roomcast_core::valid_user(user) {
            return Err(BindFailure::InvalidUser);
        }
        let unavailable = |e: &dyn std::fmt::Display| BindFailure::Unavailable(e.to_string());
        let info = self
            .hub
            .connection_info(conn)
            .await
            .map_err(|e| unavailable(&e))?
            .ok_or(BindFailure::NoConnection(conn))?;
        match info.user.as_deref() {
            Some(u) if u == user => return Ok(BindOutcome::Already),
            Some(_) => return Err(BindFailure::OtherUser),
            None => {}
        }
        let _admitting = self
            .access
            .under_user_cap(&self.hub, user)
            .await
            .map_err(|()| BindFailure::TooManyConnections)?;
        let outcome = self.hub.bind(conn, user).await.map_err(|e| match e {
            BindError::NotFound => BindFailure::NoConnection(conn),
            BindError::Auth(AuthError::AlreadyAuthenticated) => BindFailure::OtherUser,
            BindError::Auth(AuthError::InvalidUser) => BindFailure::InvalidUser,
            BindError::Auth(AuthError::Closed) => BindFailure::Closed,
            e => unavailable(&e),
        })?;
        if outcome != BindOutcome::Already {
            if let Some(b) = &self.backend {
                b.webhook("connect", conn, Some(user), None, None);
            }
        }
        Ok(outcome)
    }

    /// Joins the rooms an identity granted; those that cannot be joined are
    /// skipped (and logged).
    pub(crate) async fn join_granted(&self, c: Client<'_>, rooms: &[String]) {
        self.access.join_granted(c.conn, rooms).await
    }

    /// `auth`: credentials presented after the handshake.
    pub(crate) async fn auth(
        &self,
        c: Client<'_>,
        credentials: Credentials,
    ) -> Result<Bound, CommandError> {
        if matches!(&credentials, Credentials::User(u) if !roomcast_core::valid_user(u)) {
            return Err(AuthError::InvalidUser.into());
        }
        if c.conn.user().is_some() {
            return Err(AuthError::AlreadyAuthenticated.into());
        }
        if !c.conn.rooms().is_empty() {
            return Err(AuthError::AfterJoin.into());
        }
        let identity = self
            .authenticate(credentials, &Self::handshake(c))
            .await
            .map_err(auth_refusal)?;
        let rooms = match self.access.admit(c.conn, c.state, identity).await {
            Ok(rooms) => rooms,
            // The per-user cap closes the connection however it became the
            // user (close code 4505); the disconnect frame is the answer.
            Err(d) if d == Disconnect::TOO_MANY_CONNECTIONS => {
                c.conn.outbox().close(d);
                return Ok(Bound::Closing);
            }
            Err(d) => return Err(Refusal::new(Code::AUTH_FAILED, d.reason).into()),
        };
        self.access.join_granted(c.conn, &rooms).await;
        Ok(Bound::As {
            user: c.conn.user().map(|u| u.to_string()),
            expires_at: c.state.expires_at(),
        })
    }

    /// `refresh`: a fresh token for the same user; returns the new expiry.
    pub(crate) async fn refresh(
        &self,
        c: Client<'_>,
        token: String,
    ) -> Result<Option<u64>, CommandError> {
        if c.conn.user().is_none() {
            return Err(Refusal::new(
                Code::UNAUTHENTICATED,
                "refresh is for authenticated connections; authenticate first",
            )
            .into());
        }
        let identity = self
            .authenticate(Credentials::Token(token), &Self::handshake(c))
            .await
            .map_err(auth_refusal)?;
        Ok(self.access.refresh(c.conn, c.state, identity)?)
    }

    /// `join`: the room's join rule, then the join; returns whether the
    /// connection was added. With `recovery` (the
    /// native protocol) the join resumes from a position in a room with
    /// history, and `reply` builds the answer that goes before the replay.
    pub(crate) async fn join(
        &self,
        c: Client<'_>,
        room: &str,
        recovery: Option<(Since, ReplyFn<'_>)>,
    ) -> Result<bool, CommandError> {
        self.access.may_join(c.conn, c.state, room).await?;
        let joined = match recovery {
            Some((since, reply)) => c.conn.join_since(room, since, reply).await?.joined,
            None => c.conn.join(room).await?,
        };
        if joined {
            self.access.webhook("join", c.conn, Some(room), None);
        }
        Ok(joined)
    }

    /// `leave`: returns whether the connection was a member.
    pub(crate) async fn leave(&self, c: Client<'_>, room: &str) -> Result<bool, CommandError> {
        self.access.may_act(c.conn)?;
        let left = c.conn.leave(room).await?;
        if left {
            self.access.webhook("leave", c.conn, Some(room), None);
        }
        Ok(left)
    }

    /// `publish`, `send` and `broadcast`: a client is held to the room's
    /// publish rule (or `client.send` / `client.broadcast`) and is the
    /// sender; the server side is not. Returns the connections reached on
    /// this node. With `wait` false (a native publish without an id) the
    /// publication is handed over without waiting for the broker.
    pub(crate) async fn publish(
        &self,
        by: Actor<'_>,
        p: Publication,
        wait: bool,
    ) -> Result<usize, CommandError> {
        let Actor::Client(c) = by else {
            return Ok(self.hub.publish(p).await?);
        };
        match &p.target {
            Target::Room(room) => {
                roomcast_core::room::validate_room_name(
                    room,
                    self.hub.config().max_room_name_bytes,
                )
                .map_err(PublishError::from)?;
                self.access.may_publish(c.conn, room)?;
            }
            Target::User(_) => self.access.may_send(c.conn)?,
            Target::All => self.access.may_broadcast(c.conn)?,
            Target::Conn(_) => {
                return Err(
                    Refusal::new(Code::FORBIDDEN, "clients may not send to a connection").into(),
                )
            }
        }
        Ok(if wait {
            c.conn.publish(p).await?
        } else {
            c.conn.publish_detached(p)?
        })
    }

    /// `presence`: who is in a room. A client must be a member, or one the
    /// room's rule lets join by itself.
    pub(crate) async fn presence(
        &self,
        by: Actor<'_>,
        room: &str,
    ) -> Result<RoomPresence, CommandError> {
        if let Actor::Client(c) = by {
            roomcast_core::room::validate_room_name(room, self.hub.config().max_room_name_bytes)
                .map_err(QueryError::from)?;
            self.access.may_see_presence(c.conn, c.state, room)?;
        }
        Ok(self.hub.room_presence(room).await?)
    }

    /// `session`: merges into the connection's session data (not over keys
    /// the server side set); returns the whole session data.
    pub(crate) fn session(
        &self,
        c: Client<'_>,
        data: Map<String, Value>,
    ) -> Result<Map<String, Value>, CommandError> {
        self.access.may_set_session(c.conn, c.state, &data)?;
        c.conn
            .merge_session(data)
            .map_err(|e| Refusal::new(Code::SESSION_TOO_LARGE, e))?;
        Ok(c.conn.session())
    }

    /// Whether an event proxy is configured (`proxy.rpc_url` or routes).
    pub(crate) fn handles_rpc(&self) -> bool {
        self.backend.as_ref().is_some_and(|b| b.handles_events())
    }

    /// `rpc`: hands a client event to the backend's event proxy, applies the
    /// actions it answers with, and returns its result. At most
    /// [`RPC_PER_CONNECTION`](crate::access::RPC_PER_CONNECTION) calls of one
    /// connection wait for the backend at once.
    pub(crate) async fn rpc(
        &self,
        c: Client<'_>,
        event: &str,
        data: Value,
        room: Option<&str>,
    ) -> Result<Value, CommandError> {
        self.access.may_act(c.conn)?;
        let Some(backend) = self.backend.as_ref().filter(|b| b.handles_events()) else {
            return Err(Refusal::new(
                Code::NO_HANDLER,
                format!("no backend handles `{event}`: set proxy.rpc_url"),
            )
            .into());
        };
        let Ok(_slot) = c.state.rpc_slots.try_acquire() else {
            return Err(Refusal::new(
                Code::TOO_MANY_REQUESTS,
                "too many events waiting for the backend on this connection",
            )
            .into());
        };
        let user = c.conn.user();
        let caller = c.state.caller(c.conn, user.as_deref());
        let answer = backend
            .rpc(
                &caller,
                &c.conn.session(),
                &c.conn.rooms(),
                room,
                event,
                data,
            )
            .await
            .ok_or_else(|| {
                Refusal::new(
                    Code::NO_HANDLER,
                    format!("no backend route takes `{event}`"),
                )
            })?
            .map_err(|e| Refusal::passed_on(e.code(), e.client_message()))?;
        self.apply(c, answer.actions).await?;
        Ok(answer.result)
    }

    /// Runs the backend's actions for the calling connection, in order.
    async fn apply(&self, c: Client<'_>, actions: Vec<Action>) -> Result<(), Refusal> {
        let conn = c.conn;
        let publication = |target: Target, event: String, data: &Value, exclude: bool| {
            Publication::json(target, event, data)
                .map(|mut p| {
                    if exclude {
                        p.exclude = Some(conn.id());
                    }
                    p
                })
                .map_err(|e| Refusal::new(Code::BACKEND_ERROR, e))
        };
        for action in actions {
            let r = match action {
                Action::Publish {
                    room,
                    event,
                    data,
                    exclude_self,
                } => {
                    let p = publication(Target::Room(room), event, &data, exclude_self)?;
                    conn.publish(p).await.map(drop).map_err(|e| e.to_string())
                }
                Action::Send { user, event, data } => {
                    let p = publication(Target::User(user), event, &data, false)?;
                    conn.publish(p).await.map(drop).map_err(|e| e.to_string())
                }
                Action::Broadcast { event, data } => {
                    let p = publication(Target::All, event, &data, false)?;
                    conn.publish(p).await.map(drop).map_err(|e| e.to_string())
                }
                Action::Join { room } => match conn.join(&room).await {
                    Ok(added) => {
                        if added {
                            self.access.webhook("join", conn, Some(&room), None);
                        }
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                },
                Action::Leave { room } => match conn.leave(&room).await {
                    Ok(removed) => {
                        if removed {
                            self.access.webhook("leave", conn, Some(&room), None);
                        }
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                },
                Action::Bind { user } => {
                    // Its own code (already_bound, too_many_connections), not action_failed.
                    self.bind(conn.id(), &user).await?;
                    Ok(())
                }
                Action::Session { data } => c
                    .state
                    .merge_server_session(conn, data)
                    .map_err(|e| e.to_string()),
                Action::Disconnect { code, reason } => {
                    let code = code.filter(|c| (4000..5000).contains(c)).unwrap_or(4500);
                    let d = Disconnect::custom(
                        code,
                        reason.unwrap_or_else(|| Disconnect::BY_SERVER.reason.to_string()),
                    );
                    let _ = self.hub.disconnect(Who::Conn(conn.id()), d).await;
                    Ok(())
                }
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, "a backend action failed");
                return Err(Refusal::new(Code::ACTION_FAILED, e));
            }
        }
        Ok(())
    }
}

/// Builds the answer that goes to a joining client before its replay.
pub(crate) type ReplyFn<'a> = Box<dyn FnOnce(&Recovery) -> Option<Frame> + Send + 'a>;

fn auth_refusal(f: AuthFailure) -> Refusal {
    Refusal::new(f.code(), f)
}
