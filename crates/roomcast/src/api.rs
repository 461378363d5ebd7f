//! The HTTP server API under `/api/`: publish, membership, disconnect, presence
//! and stats, for any backend. `docs/http-api.md` is the reference.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use roomcast_core::error::{ClusterCommandError, JoinError, LeaveError, PublishError, QueryError};
use roomcast_core::history::Since;
use roomcast_core::idempotency::{Claim, IdempotencyError};
use roomcast_core::room::RoomNameError;
use roomcast_core::{BindOutcome, ConnId, Disconnect, Publication, Target, Who};

use crate::codes::Code;
use crate::command::{Actor, BindFailure, CommandError, Commands, HubError};
use crate::config::ApiScope;

/// The state of the API routes: the command layer.
type Api = State<Arc<Commands>>;

/// An API failure: an HTTP status and a JSON body
/// `{"error":{"code":"...","message":"...","field":"..."}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable, machine-readable code.
    pub code: Code,
    /// What went wrong.
    pub message: String,
    /// The request field at fault, if one is.
    pub field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: Code, message: impl ToString) -> ApiError {
        ApiError {
            status,
            code,
            message: message.to_string(),
            field: None,
        }
    }

    fn field(code: Code, field: &str, message: impl ToString) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.to_string(),
            field: Some(field.to_owned()),
        }
    }

    fn missing(field: &str) -> ApiError {
        ApiError::field(Code::BAD_REQUEST, field, format!("missing field `{field}`"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code.as_str(), "message": self.message, "field": self.field}});
        (self.status, Json(body)).into_response()
    }
}

fn room_error(field: &str, e: RoomNameError) -> ApiError {
    ApiError::field(Code::INVALID_ROOM, field, e)
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::InvalidRoom(e) => room_error("room", e),
            PublishError::InvalidEvent => ApiError::field(Code::INVALID_EVENT, "event", e),
            PublishError::Broker { .. } | PublishError::History(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Code::BACKEND_UNAVAILABLE,
                e,
            ),
        }
    }
}

impl From<JoinError> for ApiError {
    fn from(e: JoinError) -> Self {
        match e {
            JoinError::InvalidRoom(e) => room_error("room", e),
            e => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Code::BACKEND_UNAVAILABLE,
                e,
            ),
        }
    }
}

impl From<LeaveError> for ApiError {
    fn from(e: LeaveError) -> Self {
        match e {
            LeaveError::InvalidRoom(e) => room_error("room", e),
            e => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Code::BACKEND_UNAVAILABLE,
                e,
            ),
        }
    }
}

impl From<ClusterCommandError> for ApiError {
    fn from(e: ClusterCommandError) -> Self {
        match e {
            ClusterCommandError::InvalidRoom(e) => room_error("room", e),
            ClusterCommandError::Broker(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Code::BACKEND_UNAVAILABLE,
                e,
            ),
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::InvalidRoom(e) => room_error("room", e),
            QueryError::Forbidden => ApiError::new(StatusCode::FORBIDDEN, Code::FORBIDDEN, e),
            QueryError::NoHistory => ApiError::new(StatusCode::NOT_FOUND, Code::NO_HISTORY, e),
            QueryError::Presence(_) | QueryError::History(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Code::BACKEND_UNAVAILABLE,
                e,
            ),
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Hub(HubError::Publish(e)) => e.into(),
            CommandError::Hub(HubError::Join(e)) => e.into(),
            CommandError::Hub(HubError::Leave(e)) => e.into(),
            CommandError::Hub(HubError::Query(e)) => e.into(),
            CommandError::Hub(e @ HubError::Auth(_)) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Code::BACKEND_UNAVAILABLE,
                e,
            ),
            // The API is bound by no access rule; nothing refuses it today.
            CommandError::Refused(r) => {
                ApiError::new(StatusCode::FORBIDDEN, Code::FORBIDDEN, r.message)
            }
        }
    }
}

/// Parses a JSON body, naming the field at fault.
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            Code::BAD_REQUEST,
            "body must be a JSON object",
        ));
    }
    if !roomcast_core::json_depth_within(bytes, roomcast_core::MAX_JSON_DEPTH) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            Code::BAD_REQUEST,
            format!(
                "body nests JSON deeper than {} levels",
                roomcast_core::MAX_JSON_DEPTH
            ),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if !inner.is_data() {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                Code::BAD_REQUEST,
                format!("body is not valid JSON: {inner}"),
            );
        }
        let msg = inner.to_string();
        // serde names an unknown field in its message; lift it into `field`.
        if let Some(rest) = msg.strip_prefix("unknown field `") {
            let name = rest.split('`').next().unwrap_or_default();
            return ApiError::field(Code::BAD_REQUEST, name, msg.clone());
        }
        if path == "." {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                Code::BAD_REQUEST,
                format!("body must be a JSON object: {msg}"),
            )
        } else {
            ApiError::field(Code::BAD_REQUEST, &path, format!("field `{path}`: {msg}"))
        }
    })
}

/// A JSON request body; failures become [`ApiError`]s (400, or 413 when too large).
struct Body<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            let code = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Code::BODY_TOO_LARGE
            } else {
                Code::BAD_REQUEST
            };
            ApiError::new(e.status(), code, e.body_text())
        })?;
        body(&bytes).map(Body)
    }
}

fn required<T>(field: &str, v: Option<T>) -> Result<T, ApiError> {
    v.ok_or_else(|| ApiError::missing(field))
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).expect("null is JSON")
}

fn parse_conn(field: &str, s: &str) -> Result<ConnId, ApiError> {
    s.parse()
        .map_err(|e| ApiError::field(Code::INVALID_CONN, field, e))
}

/// `user` or `conn`, exactly one.
fn who(user: Option<String>, conn: Option<String>) -> Result<Who, ApiError> {
    match (user, conn) {
        (Some(u), None) => Ok(Who::User(u)),
        (None, Some(c)) => Ok(Who::Conn(parse_conn("conn", &c)?)),
        (Some(_), Some(_)) => Err(ApiError::field(
            Code::BAD_REQUEST,
            "conn",
            "give `user` or `conn`, not both",
        )),
        (None, None) => Err(ApiError::field(
            Code::BAD_REQUEST,
            "user",
            "missing field `user` (or `conn`)",
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    room: Option<String>,
    event: Option<String>,
    data: Option<Box<RawValue>>,
    exclude_conn: Option<String>,
    idempotency_key: Option<String>,
}

async fn publish(State(s): Api, Body(b): Body<PublishBody>) -> Result<Response, ApiError> {
    let mut p = Publication::new(
        Target::Room(required("room", b.room)?),
        required("event", b.event)?,
        b.data.unwrap_or_else(null),
    );
    if let Some(c) = b.exclude_conn {
        p.exclude = Some(parse_conn("exclude_conn", &c)?);
    }
    deliver(&s, p, b.idempotency_key).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastBody {
    event: Option<String>,
    data: Option<Box<RawValue>>,
    idempotency_key: Option<String>,
}

async fn broadcast(State(s): Api, Body(b): Body<BroadcastBody>) -> Result<Response, ApiError> {
    let p = Publication::new(
        Target::All,
        required("event", b.event)?,
        b.data.unwrap_or_else(null),
    );
    deliver(&s, p, b.idempotency_key).await
}

/// The longest idempotency key, in bytes.
const MAX_IDEMPOTENCY_KEY: usize = 200;

/// The header on an answer that a repeat of an idempotent request got.
const REPLAYED: &str = "idempotent-replayed";

/// Publishes and answers with the number of local connections reached.
///
/// With an idempotency key, only the first request of the key within
/// `api.idempotency_window_ms` publishes; its repeats (on any node) get its
/// answer with `Idempotent-Replayed: true`. A repeat while the first is
/// still being carried out is 409 `idempotency_in_progress`, and the same
/// key on another request 422 `idempotency_key_reused`.
async fn deliver(s: &Commands, p: Publication, key: Option<String>) -> Result<Response, ApiError> {
    let Some(key) = key else {
        let n = s.publish(Actor::Server, p, true).await?;
        return Ok(Json(json!({ "delivered": n })).into_response());
    };
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || key.chars().any(char::is_control) {
        return Err(ApiError::field(
            Code::BAD_REQUEST,
            "idempotency_key",
            format!("idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} bytes without control characters"),
        ));
    }
    let fingerprint = fingerprint(&p);
    let window = std::time::Duration::from_millis(s.config.api.idempotency_window_ms.max(1));
    let store = &s.idempotency;
    let unavailable = |e: IdempotencyError| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::BACKEND_UNAVAILABLE,
            e,
        )
    };
    match store
        .claim(&key, &fingerprint, window)
        .await
        .map_err(unavailable)?
    {
        Claim::New => {}
        Claim::Done(answer) => {
            let body: Value = serde_json::from_str(&answer).unwrap_or(Value::Null);
            return Ok(([(REPLAYED, "true")], Json(body)).into_response());
        }
        Claim::Pending => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                Code::IDEMPOTENCY_IN_PROGRESS,
                "a request with this idempotency_key is being carried out: retry later",
            ))
        }
        Claim::Mismatch => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                Code::IDEMPOTENCY_KEY_REUSED,
                "this idempotency_key was used for a different request",
            ))
        }
    }
    match s.publish(Actor::Server, p, true).await {
        Ok(n) => {
            let body = json!({ "delivered": n });
            if let Err(e) = store
                .complete(&key, &fingerprint, &body.to_string(), window)
                .await
            {
                tracing::warn!(error = %e, "an idempotent publish's answer was not recorded");
            }
            Ok(Json(body).into_response())
        }
        Err(e) => {
            // Not published: a retry with the key may run.
            let _ = store.release(&key).await;
            Err(e.into())
        }
    }
}

/// A stable digest of what a publication asks for (FNV-1a, 64 bits), so
/// that every node, of any version, computes the same for the same request.
fn fingerprint(p: &Publication) -> String {
    let target = match &p.target {
        Target::Room(r) => format!("room\0{r}"),
        Target::User(u) => format!("user\0{u}"),
        Target::Conn(c) => format!("conn\0{c}"),
        Target::All => "all".to_owned(),
    };
    let exclude = p.exclude.map(|c| c.to_string()).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [target.as_str(), &p.event, p.data.get(), &exclude] {
        for b in part.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    user: Option<String>,
    conn: Option<String>,
    event: Option<String>,
    data: Option<Box<RawValue>>,
    idempotency_key: Option<String>,
}

async fn send(State(s): Api, Body(b): Body<SendBody>) -> Result<Response, ApiError> {
    let target = match who(b.user, b.conn)? {
        Who::User(u) => Target::User(u),
        Who::Conn(c) => Target::Conn(c),
    };
    let p = Publication::new(
        target,
        required("event", b.event)?,
        b.data.unwrap_or_else(null),
    );
    deliver(&s, p, b.idempotency_key).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MembershipBody {
    user: Option<String>,
    conn: Option<String>,
    room: Option<String>,
}

async fn join(State(s): Api, Body(b): Body<MembershipBody>) -> Result<Json<Value>, ApiError> {
    let who = who(b.user, b.conn)?;
    let n = s.hub.join(who, &required("room", b.room)?).await?;
    Ok(Json(json!({ "joined": n })))
}

async fn leave(State(s): Api, Body(b): Body<MembershipBody>) -> Result<Json<Value>, ApiError> {
    let who = who(b.user, b.conn)?;
    let n = s.hub.leave(who, &required("room", b.room)?).await?;
    Ok(Json(json!({ "left": n })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomBody {
    room: Option<String>,
}

async fn close_room(State(s): Api, Body(b): Body<RoomBody>) -> Result<Json<Value>, ApiError> {
    let n = s.hub.close_room(&required("room", b.room)?).await?;
    Ok(Json(json!({ "left": n })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    user: Option<String>,
    conn: Option<String>,
    code: Option<u16>,
    reason: Option<String>,
}

async fn disconnect(State(s): Api, Body(b): Body<DisconnectBody>) -> Result<Json<Value>, ApiError> {
    let who = who(b.user, b.conn)?;
    let code = b.code.unwrap_or(Disconnect::BY_SERVER.code);
    if !(4000..=4999).contains(&code) {
        return Err(ApiError::field(
            Code::BAD_REQUEST,
            "code",
            "code must be between 4000 and 4999",
        ));
    }
    let reason = Disconnect::custom(
        code,
        b.reason
            .unwrap_or_else(|| Disconnect::BY_SERVER.reason.into_owned()),
    );
    let n = s.hub.disconnect(who, reason).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::BACKEND_UNAVAILABLE,
            e,
        )
    })?;
    Ok(Json(json!({ "disconnected": n })))
}

async fn presence(State(s): Api, Path(room): Path<String>) -> Result<Json<Value>, ApiError> {
    let p = s.presence(Actor::Server, &room).await?;
    Ok(Json(json!({
        "room": room,
        "connections": p.connections,
        "users": p.users,
        "anonymous": p.anonymous,
    })))
}

/// The most publications one history read answers with.
const MAX_HISTORY_LIMIT: u64 = 1000;

/// `GET /api/history/{room}?since=N&epoch=E&limit=L`: what the room's history
/// holds after offset `since` (default: all of it), oldest first.
async fn history(
    State(s): Api,
    Path(room): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let (mut since, mut epoch, mut limit) = (None, None, 100usize);
    for pair in query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = |field: &str| {
            value.parse::<u64>().map_err(|_| {
                ApiError::field(
                    Code::BAD_REQUEST,
                    field,
                    format!("{field} must be a non-negative integer"),
                )
            })
        };
        match key {
            "since" => since = Some(number("since")?),
            "limit" => {
                limit = match number("limit")? {
                    n @ 1..=MAX_HISTORY_LIMIT => n as usize,
                    _ => {
                        return Err(ApiError::field(
                            Code::BAD_REQUEST,
                            "limit",
                            format!("limit must be between 1 and {MAX_HISTORY_LIMIT}"),
                        ))
                    }
                }
            }
            "epoch" => epoch = Some(value.to_owned()),
            other => {
                return Err(ApiError::field(
                    Code::BAD_REQUEST,
                    other,
                    format!("unknown query parameter `{other}` (known: since, epoch, limit)"),
                ))
            }
        }
    }
    let hub = &s.hub;
    let top = hub.history(&room, &Since::Latest, 0).await?.position;
    let Some(top) = top else {
        return Ok(Json(json!({
            "room": room, "epoch": null, "offset": 0, "complete": true, "publications": [],
        })));
    };
    let since = match since {
        Some(offset) => Since::Offset {
            offset,
            epoch: epoch.unwrap_or_else(|| top.epoch.to_string()),
        },
        None if epoch.as_deref().is_some_and(|e| *e != *top.epoch) => Since::Offset {
            offset: 0,
            epoch: epoch.unwrap_or_default(),
        },
        None => Since::Oldest,
    };
    let page = hub.history(&room, &since, limit).await?;
    let publications: Vec<Value> = page
        .publications
        .iter()
        .map(|p| {
            let mut m = crate::native::message_fields(p);
            m.remove("type");
            Value::Object(m)
        })
        .collect();
    Ok(Json(json!({
        "room": room,
        "epoch": page.position.as_ref().map(|p| &*p.epoch),
        "offset": page.position.as_ref().map_or(0, |p| p.offset),
        "complete": page.complete,
        "publications": publications,
    })))
}

/// `DELETE /api/history/{room}`: forget the room's history; its next
/// publication starts a new epoch (clients resuming are told `recovered: false`).
async fn delete_history(State(s): Api, Path(room): Path<String>) -> Result<Json<Value>, ApiError> {
    s.hub.remove_history(&room).await?;
    Ok(Json(json!({ "room": room, "removed": true })))
}

async fn rooms(State(s): Api) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "rooms": s.hub.rooms().await? })))
}

async fn user(State(s): Api, Path(user): Path<String>) -> Result<Json<Value>, ApiError> {
    let p = s.hub.user_presence(&user).await?;
    Ok(Json(
        json!({ "user": user, "online": p.online, "connections": p.connections }),
    ))
}

/// The most users one `GET /api/users` page holds.
const MAX_USERS_LIMIT: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /api/users?limit=L&cursor=C`: online users of the cluster, sorted by
/// id, `limit` (default 100) at a time; `next_cursor` asks for the next page.
async fn users(State(s): Api, Query(q): Query<UsersQuery>) -> Result<Json<Value>, ApiError> {
    let limit = match q.limit.as_deref().map(str::parse::<usize>) {
        None => 100,
        Some(Ok(n @ 1..=MAX_USERS_LIMIT)) => n,
        Some(_) => {
            return Err(ApiError::field(
                Code::BAD_REQUEST,
                "limit",
                format!("limit must be between 1 and {MAX_USERS_LIMIT}"),
            ))
        }
    };
    let cursor = q.cursor.filter(|c| !c.is_empty());
    let page = s.hub.users(cursor.as_deref(), limit).await?;
    Ok(Json(
        json!({ "users": page.users, "next_cursor": page.next }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BindBody {
    conn: Option<String>,
    user: Option<String>,
}

/// `POST /api/bind`: an anonymous connection becomes the user's.
async fn bind(State(s): Api, Body(b): Body<BindBody>) -> Result<Json<Value>, ApiError> {
    let conn = parse_conn("conn", &required("conn", b.conn)?)?;
    let user = required("user", b.user)?;
    let outcome = s.bind(conn, &user).await.map_err(|f| {
        let status = match f {
            BindFailure::InvalidUser => {
                return ApiError::field(f.code(), "user", f);
            }
            BindFailure::NoConnection(_) => StatusCode::NOT_FOUND,
            BindFailure::OtherUser | BindFailure::TooManyConnections | BindFailure::Closed => {
                StatusCode::CONFLICT
            }
            BindFailure::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, f.code(), f)
    })?;
    Ok(Json(json!({
        "conn": conn.to_string(),
        "user": user,
        "bound": outcome != BindOutcome::Already,
    })))
}

async fn connection(State(s): Api, Path(conn): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = parse_conn("conn", &conn)?;
    Ok(Json(match s.hub.connection_info(id).await? {
        Some(info) => {
            let mut v = serde_json::to_value(info).unwrap_or_default();
            v["online"] = true.into();
            if s.channels.is_some() {
                v["channel"] = crate::channels::conn_channel(id).into();
            }
            v
        }
        None => json!({ "conn": conn, "online": false }),
    }))
}

async fn stats(State(s): Api) -> Result<Json<Value>, ApiError> {
    let hub = &s.hub;
    let t = hub.stats().await?;
    let mut nodes = hub.nodes().await?;
    // Other nodes' counts are their last heartbeat's; this node's is current.
    let this = hub.node().to_string();
    for n in nodes.iter_mut().filter(|n| n.node == this) {
        n.connections = hub.local_connections();
    }
    if nodes.is_empty() {
        nodes.push(roomcast_core::presence::NodeInfo {
            node: hub.node().to_string(),
            connections: hub.local_connections(),
            last_seen_ms: 0,
            address: None,
        });
    }
    Ok(Json(json!({
        "connections": t.connections,
        "users": t.users,
        "rooms": t.rooms,
        "node": {
            "id": hub.node().to_string(),
            "connections": hub.local_connections(),
            "rooms": hub.local_rooms(),
        },
        "nodes": nodes,
    })))
}

async fn healthz(State(s): Api) -> Response {
    if s.hub.is_shutting_down() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting_down"})),
        )
            .into_response();
    }
    match s.hub.backend_health() {
        roomcast_core::broker::Health::Ok => Json(json!({"status": "ok"})).into_response(),
        // Local delivery still works: a degraded node keeps serving, so the
        // answer is 200 and load balancers keep it; monitoring reads the body.
        roomcast_core::broker::Health::Degraded(why) => {
            Json(json!({"status": "degraded", "reason": why})).into_response()
        }
    }
}

async fn metrics(State(s): Api) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render_with(&s.hub, &s.metrics, s.backend.as_deref().map(|b| &b.metrics)),
    )
        .into_response()
}

/// Compares without leaking where the first difference is.
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The routes a `publish`-scoped key may call (below `/api`).
const PUBLISH_ROUTES: [&str; 3] = ["/publish", "/broadcast", "/send"];

/// Counts requests and errors, and checks the API key and its scope.
async fn guard(State(s): Api, req: Request, next: Next) -> Response {
    let m = &s.metrics;
    m.api_requests.fetch_add(1, Ordering::Relaxed);
    let api = &s.config.api;
    if api.requires_key() {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let admin = !api.key.is_empty() && same_key(given.as_bytes(), api.key.as_bytes());
        // Every key is compared, so the time taken does not say which matched.
        let scope = api
            .keys
            .iter()
            .filter(|k| same_key(given.as_bytes(), k.key.as_bytes()))
            .fold(None, |best, k| match (best, k.scope) {
                (Some(ApiScope::Admin), _) | (_, ApiScope::Admin) => Some(ApiScope::Admin),
                _ => Some(ApiScope::Publish),
            });
        let scope = if admin { Some(ApiScope::Admin) } else { scope };
        let refusal = match scope {
            None => Some((
                "wrong_key",
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    Code::UNAUTHORIZED,
                    "missing or wrong API key: send `Authorization: Bearer <key>`",
                ),
            )),
            Some(ApiScope::Publish) if !PUBLISH_ROUTES.contains(&req.uri().path()) => Some((
                "scope",
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    Code::INSUFFICIENT_SCOPE,
                    "this key may only publish: /api/publish, /api/broadcast, /api/send",
                ),
            )),
            Some(_) => None,
        };
        if let Some((reason, e)) = refusal {
            m.api_errors.fetch_add(1, Ordering::Relaxed);
            m.api_denied(reason);
            tracing::info!(path = %req.uri().path(), reason, "API request refused");
            return e.into_response();
        }
    }
    let method = req.method().clone();
    let resp = next.run(req).await;
    let status = resp.status();
    if status.is_client_error() || status.is_server_error() {
        m.api_errors.fetch_add(1, Ordering::Relaxed);
        return json_error(resp, &method).await;
    }
    resp
}

/// Gives an error answer that axum made itself (a 405, a path that does not
/// decode, ...) the JSON error body every `/api/` error has; keeps its headers
/// (`Allow`). Answers that are JSON already pass unchanged.
async fn json_error(resp: Response, method: &axum::http::Method) -> Response {
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let status = parts.status;
    let (code, message) = match status {
        // axum adds the Allow header after this layer, so the message
        // points at it rather than repeating it.
        StatusCode::METHOD_NOT_ALLOWED => (
            Code::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed here (the Allow header lists what is)"),
        ),
        StatusCode::NOT_FOUND => (Code::NOT_FOUND, "no such API endpoint".to_owned()),
        StatusCode::PAYLOAD_TOO_LARGE => (Code::BODY_TOO_LARGE, text),
        s if s.is_server_error() => (Code::INTERNAL_ERROR, "internal error".to_owned()),
        _ => (Code::BAD_REQUEST, text),
    };
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        message
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut out = ApiError::new(status, code, message).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        Code::NOT_FOUND,
        "no such API endpoint",
    )
}

/// The `/api/*` routes, `/healthz` and `/metrics`.
pub(crate) fn routes(s: Arc<Commands>) -> Router {
    let api = Router::new()
        .route("/publish", post(publish))
        .route("/broadcast", post(broadcast))
        .route("/send", post(send))
        .route("/join", post(join))
        .route("/leave", post(leave))
        .route("/close_room", post(close_room))
        .route("/disconnect", post(disconnect))
        .route("/presence/{room}", get(presence))
        .route("/history/{room}", get(history).delete(delete_history))
        .route("/rooms", get(rooms))
        .route("/bind", post(bind))
        .route("/users", get(users))
        .route("/users/{user}", get(user))
        .route("/connections/{conn}", get(connection))
        .route("/stats", get(stats))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(
            s.config.api.max_body_bytes,
        ))
        .layer(axum::middleware::from_fn_with_state(s.clone(), guard));
    Router::new()
        .nest("/api", api)
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(s)
}
