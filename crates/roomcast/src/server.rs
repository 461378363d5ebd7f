//! The server: the hub behind axum routes, and `run` to serve it with a graceful drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use roomcast_core::{Disconnect, Hub};

use crate::auth::{self, Authenticator};
use crate::metrics::ServerMetrics;
use crate::native::NativeProtocol;
use crate::Config;

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) hub: Hub,
    pub(crate) protocol: Arc<NativeProtocol>,
    pub(crate) auth: Arc<dyn Authenticator>,
    pub(crate) metrics: ServerMetrics,
    socketio: Option<roomcast_socketio::socketio::SocketIo>,
    tasks: TaskTracker,
}

/// A roomcast server: a [`Hub`], the native WebSocket endpoint, the HTTP API,
/// metrics and the chat page. Cheap to clone.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("hub", &self.inner.hub)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server with an in-memory hub built from `config`.
    pub fn new(config: Config) -> Server {
        let hub = Hub::new(config.hub_config());
        Server::with_hub(config, hub)
    }

    /// A server around an existing hub (for example one with a Redis broker).
    /// The hub's own limits apply; `config` sets everything else.
    pub fn with_hub(config: Config, hub: Hub) -> Server {
        let auth = auth::from_config(&config.auth);
        let socketio = config
            .socketio
            .enabled
            .then(|| crate::socketio::build(&config, &hub, auth.clone()));
        Server {
            inner: Arc::new(Inner {
                auth,
                socketio,
                config,
                hub,
                protocol: Arc::new(NativeProtocol),
                metrics: ServerMetrics::default(),
                tasks: TaskTracker::new(),
            }),
        }
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// The hub: publish, join, presence and more, from Rust code.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Counters of the protocol and API layers.
    pub fn metrics(&self) -> &ServerMetrics {
        &self.inner.metrics
    }

    /// The Socket.IO server (when `socketio.enabled`): register more
    /// namespaces and handlers on it from Rust code.
    pub fn socketio(&self) -> Option<&roomcast_socketio::socketio::SocketIo> {
        self.inner.socketio.as_ref()
    }

    /// Every route: `/` (chat page), `/ws`, `/socket.io/`, `/api/*`, `/healthz`,
    /// `/metrics`. Merge it into an application's own router, or serve it with
    /// [`run`](Server::run).
    pub fn router(&self) -> Router {
        let mut router = Router::new()
            .route("/", get(chat_page))
            .route("/ws", get(ws_upgrade))
            .merge(crate::api::routes(self));
        if let Some(io) = &self.inner.socketio {
            router = router.merge(io.router(&self.inner.config.socketio.path));
        }
        router.with_state(self.clone())
    }

    /// Serves `router` (usually [`Server::router`], possibly merged into an
    /// application's routes) on `listener` until `shutdown` resolves; then stops
    /// accepting, closes every client with code 4000 and waits up to
    /// `shutdown.drain_ms` for them to finish.
    pub async fn run(
        &self,
        listener: TcpListener,
        router: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let hub = self.hub().clone();
        let signalled = async move {
            shutdown.await;
            let n = hub.shutdown(Disconnect::SHUTDOWN);
            tracing::info!(connections = n, "shutting down: closing client connections");
        };
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(signalled)
        .await?;
        self.drain().await;
        Ok(())
    }

    /// Closes every connection (code 4000) and waits up to `shutdown.drain_ms`
    /// for their tasks to finish. Returns whether all did.
    pub async fn drain(&self) -> bool {
        self.hub().shutdown(Disconnect::SHUTDOWN);
        self.inner.tasks.close();
        let drain = Duration::from_millis(self.inner.config.shutdown.drain_ms);
        let done = tokio::time::timeout(drain, self.inner.tasks.wait())
            .await
            .is_ok();
        if !done {
            tracing::warn!(
                left = self.inner.tasks.len(),
                "drain time over; exiting with connections still open"
            );
        }
        done
    }
}

#[derive(Deserialize)]
struct WsQuery {
    token: Option<String>,
}

async fn ws_upgrade(
    State(s): State<Server>,
    Query(q): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let hub = s.hub();
    if hub.is_shutting_down() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "server shutting down",
        );
    }
    let max = s.inner.config.limits.max_connections;
    if max > 0 && hub.local_connections() >= max {
        s.inner.metrics.disconnect(Disconnect::SERVER_FULL.code);
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_full",
            "server full: try another node or later",
        );
    }
    let token = q.token.or_else(|| {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned)
    });
    let c = &s.inner.config;
    let max_message = c.limits.max_message_bytes;
    let tasks = s.inner.tasks.clone();
    ws.read_buffer_size(c.websocket.read_buffer_bytes)
        .write_buffer_size(c.websocket.write_buffer_bytes)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| tasks.track_future(crate::ws::serve(s, socket, token)))
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"error": {"code": code, "message": message, "field": null}})),
    )
        .into_response()
}

async fn chat_page() -> Html<&'static str> {
    Html(include_str!("../static/index.html"))
}
