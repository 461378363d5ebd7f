//! The server: wires the hub, the command layer and the front ends (native
//! WebSocket, Socket.IO, HTTP API) into axum routes, and `run` serves them
//! with a graceful drain. Nothing here handles a request itself.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::response::Html;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use roomcast_core::idempotency::{IdempotencyStore, MemoryIdempotency};
use roomcast_core::{Disconnect, Hub};

use crate::access::Access;
use crate::auth::{Authenticator, ConnectProxy, StandardAuthenticator};
use crate::backend::Backend;
use crate::command::Commands;
use crate::guard::{Guard, IpLimiter};
use crate::metrics::ServerMetrics;
use crate::native::NativeProtocol;
use crate::Config;

struct Inner {
    commands: Arc<Commands>,
    native: Arc<crate::native::Endpoint>,
    endpoints: Vec<Arc<crate::endpoint::Endpoint>>,
    guard: Arc<Guard>,
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
            .field("hub", &self.inner.commands.hub)
            .finish_non_exhaustive()
    }
}

/// The server could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The Redis broker could not be set up.
    #[cfg(feature = "redis")]
    #[error(transparent)]
    Redis(#[from] roomcast_redis::StartError),
    /// `broker.url` is set, but this build has no Redis client (the crate's
    /// `redis` feature is off).
    #[cfg(not(feature = "redis"))]
    #[error("broker.url is set, but roomcast was built without its `redis` feature")]
    NoRedis,
    /// The JWT keys could not be loaded.
    #[error(transparent)]
    Jwt(#[from] crate::auth::KeyError),
    /// The Channels bridge could not be set up.
    #[error(transparent)]
    Channels(#[from] crate::channels::ChannelsStartError),
}

impl Server {
    /// A server built from `config`: an in-memory hub, or one on the Redis
    /// broker of `config.broker` (then it must be called inside a Tokio runtime).
    ///
    /// # Panics
    /// If the Redis URL does not parse; [`Config::validate`] checks it, and
    /// [`try_new`](Server::try_new) returns the error instead.
    pub fn new(config: Config) -> Server {
        Server::try_new(config).expect("invalid broker configuration")
    }

    /// Like [`new`](Server::new), returning configuration errors.
    pub fn try_new(config: Config) -> Result<Server, StartError> {
        let channels = crate::channels::layer(&config)?;
        let mut idempotency: Option<Arc<dyn IdempotencyStore>> = None;
        let hub = if config.broker.url.is_empty() {
            let (broker, history) = crate::channels::wrap(
                channels.as_ref(),
                Arc::new(roomcast_core::broker::MemoryBroker::new()),
                Arc::new(roomcast_core::history::MemoryHistory::with_meta_ttl(
                    Duration::from_secs(config.history.meta_ttl),
                )),
            );
            Hub::with_stores(
                config.hub_config(),
                broker,
                Arc::new(roomcast_core::presence::MemoryPresence::new()),
                history,
            )
        } else {
            let (hub, store) = redis_hub(&config, channels.as_ref())?;
            idempotency = Some(store);
            hub
        };
        if let Some(layer) = &channels {
            crate::channels::attach(layer, &hub);
        }
        let clustered = !config.broker.url.is_empty();
        let server = Server::build(config, hub, None, channels, idempotency)?;
        if let (true, Some(io)) = (clustered, server.socketio()) {
            let c = &server.config().socketio;
            let timeout = Duration::from_millis(c.ping_interval_ms + c.ping_timeout_ms + 10_000);
            let forwarder =
                crate::forward::Forwarder::new(server.hub().clone(), timeout, c.max_payload_bytes);
            io.engine()
                .set_forwarder(&server.hub().node().to_string(), Arc::new(forwarder));
        }
        Ok(server)
    }

    /// A server around an existing hub (for example one with a Redis broker).
    /// The hub's own limits apply; `config` sets everything else.
    ///
    /// # Panics
    /// If the JWT keys of `config.auth.jwt` cannot be loaded;
    /// [`try_with_hub`](Server::try_with_hub) returns the error instead.
    pub fn with_hub(config: Config, hub: Hub) -> Server {
        Server::try_with_hub(config, hub).expect("invalid auth.jwt configuration")
    }

    /// Like [`with_hub`](Server::with_hub), returning configuration errors.
    pub fn try_with_hub(config: Config, hub: Hub) -> Result<Server, StartError> {
        Server::build(config, hub, None, None, None)
    }

    /// A server around `hub` whose connections are authenticated by `auth`
    /// instead of the [`StandardAuthenticator`] of `config.auth`. Room rules,
    /// limits and the backend proxies of `config` still apply; `auth.mode`
    /// only decides what credentials reach `auth` (in `proxy` mode also an
    /// auth payload, or the handshake alone).
    pub fn with_authenticator(
        config: Config,
        hub: Hub,
        auth: Arc<dyn Authenticator>,
    ) -> Result<Server, StartError> {
        Server::build(config, hub, Some(auth), None, None)
    }

    fn build(
        config: Config,
        hub: Hub,
        auth: Option<Arc<dyn Authenticator>>,
        channels: Option<crate::channels::Layer>,
        idempotency: Option<Arc<dyn IdempotencyStore>>,
    ) -> Result<Server, StartError> {
        let p = &config.proxy;
        let backend = [&p.connect_url, &p.subscribe_url, &p.rpc_url, &p.webhook_url]
            .iter()
            .any(|u| !u.is_empty())
            .then(|| Backend::new(p, hub.node().to_string()))
            .or_else(|| {
                (!p.rpc_routes.is_empty()).then(|| Backend::new(p, hub.node().to_string()))
            });
        if let (Some(b), false) = (&backend, p.webhook_url.is_empty()) {
            hub.on_reaped(Arc::new(crate::backend::ReapedWebhooks(b.clone())));
        }
        let auth: Arc<dyn Authenticator> = match auth {
            Some(a) => a,
            None => {
                let proxy = backend.clone().map(|b| b as Arc<dyn ConnectProxy>);
                Arc::new(StandardAuthenticator::new(&config.auth, proxy)?)
            }
        };
        let metrics = Arc::new(ServerMetrics::default());
        let access = Access::new(&config, backend.clone(), metrics.clone());
        let config = Arc::new(config);
        let commands = Arc::new(Commands {
            hub,
            config: config.clone(),
            auth,
            access,
            backend,
            metrics: metrics.clone(),
            channels,
            idempotency: idempotency.unwrap_or_else(|| Arc::new(MemoryIdempotency::new())),
        });
        let socketio = config
            .socketio
            .enabled
            .then(|| crate::socketio::build(commands.clone()));
        let tasks = TaskTracker::new();
        Ok(Server {
            inner: Arc::new(Inner {
                native: Arc::new(crate::native::Endpoint {
                    commands: commands.clone(),
                    protocol: Arc::new(NativeProtocol),
                    tasks: tasks.clone(),
                }),
                endpoints: config
                    .endpoints
                    .iter()
                    .map(|c| {
                        Arc::new(crate::endpoint::Endpoint {
                            config: c.clone(),
                            commands: commands.clone(),
                            protocol: Arc::new(crate::endpoint::EndpointProtocol),
                            tasks: tasks.clone(),
                        })
                    })
                    .collect(),
                guard: Arc::new(Guard {
                    ip_limiter: IpLimiter::new(
                        config.limits.connection_rate_per_ip,
                        config.limits.connection_burst_per_ip,
                    ),
                    config,
                    metrics,
                }),
                commands,
                socketio,
                tasks,
            }),
        })
    }

    /// Tells the cluster where this node serves HTTP: `broker.advertise`, or
    /// the listener's address when it is a specific one.
    fn advertise(&self, listener: &TcpListener) {
        let configured = &self.config().broker.advertise;
        if !configured.is_empty() {
            self.hub().advertise(configured);
        } else if let Ok(addr) = listener.local_addr() {
            if addr.ip().is_unspecified() {
                if !self.config().broker.url.is_empty() {
                    tracing::warn!(%addr, "listening on every interface: set broker.advertise so other nodes can forward long-polling requests here");
                }
            } else {
                self.hub().advertise(&addr.to_string());
            }
        }
    }

    /// The hub: publish, join, presence and more, from Rust code.
    pub fn hub(&self) -> &Hub {
        &self.inner.commands.hub
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &Config {
        &self.inner.commands.config
    }

    /// Counters of the protocol and API layers.
    pub fn metrics(&self) -> &ServerMetrics {
        &self.inner.commands.metrics
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
            .route(
                "/ws",
                get(crate::native::upgrade).with_state(self.inner.native.clone()),
            )
            .merge(crate::api::routes(self.inner.commands.clone()));
        if let Some(io) = &self.inner.socketio {
            router = router.merge(io.router(&self.config().socketio.path));
        }
        for e in &self.inner.endpoints {
            router = router.route(
                &e.config.path,
                get(crate::endpoint::upgrade).with_state(e.clone()),
            );
        }
        router.layer(axum::middleware::from_fn_with_state(
            self.inner.guard.clone(),
            crate::guard::handshake,
        ))
    }

    /// Serves `router` (usually [`Server::router`], possibly merged into an
    /// application's routes) on `listener` until `shutdown` resolves, then
    /// [drains](Server::drain) with the listener still open: load balancers see
    /// `/healthz` answer 503 `shutting_down` and new connections get 503,
    /// while every client is closed with code 4000. Once the drain is over the
    /// listener closes, HTTP exchanges still open get a moment to finish, and
    /// `run` returns.
    pub async fn run(
        &self,
        listener: TcpListener,
        router: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.advertise(&listener);
        let drained = tokio_util::sync::CancellationToken::new();
        let (server, done) = (self.clone(), drained.clone());
        let stop_accepting = async move {
            shutdown.await;
            server.drain().await;
            done.cancel();
        };
        let serving = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop_accepting);
        tokio::select! {
            r = serving => r?,
            // A request that does not end (a client sending a body forever)
            // does not hold the process once the drain is over.
            _ = async {
                drained.cancelled().await;
                tokio::time::sleep(HTTP_GRACE).await;
            } => tracing::warn!("HTTP requests still open after the drain; exiting"),
        }
        Ok(())
    }

    /// Starts the shutdown: refuses new connections (HTTP 503 `shutting_down`,
    /// `/healthz` too), closes every connection with code 4000, and waits up
    /// to `shutdown.drain_ms` for their tasks to finish, and at least
    /// `shutdown.linger_ms` since the start. Returns whether every connection
    /// finished.
    pub async fn drain(&self) -> bool {
        let started = tokio::time::Instant::now();
        let n = self.hub().shutdown(Disconnect::SHUTDOWN);
        tracing::info!(connections = n, "shutting down: closing client connections");
        if let Some(io) = self.socketio() {
            io.engine().close_polling_sessions();
        }
        self.inner.tasks.close();
        let c = &self.config().shutdown;
        let deadline = started + Duration::from_millis(c.drain_ms);
        let finished = async {
            self.inner.tasks.wait().await;
            if let Some(io) = self.socketio() {
                io.engine()
                    .drain(deadline.saturating_duration_since(tokio::time::Instant::now()))
                    .await;
            }
        };
        let done = tokio::time::timeout_at(deadline, finished).await.is_ok();
        if !done {
            tracing::warn!(
                left = self.hub().local_connections(),
                "drain time over; exiting with connections still open"
            );
        }
        tokio::time::sleep_until(started + Duration::from_millis(c.linger_ms)).await;
        if let Some(layer) = &self.inner.commands.channels {
            crate::channels::stop(layer);
        }
        done
    }
}

/// A hub on the Redis broker, presence and history of `config.broker`, with
/// the emitter bridges it names.
#[cfg(feature = "redis")]
fn redis_hub(
    config: &Config,
    channels: Option<&crate::channels::Layer>,
) -> Result<(Hub, Arc<dyn IdempotencyStore>), StartError> {
    let b = &config.broker;
    let mut rc = roomcast_redis::RedisConfig::new(&b.url);
    rc.prefix = b.prefix.clone();
    rc.cluster = b.cluster;
    rc.heartbeat = Duration::from_millis(b.heartbeat_ms);
    rc.node_ttl = Duration::from_millis(b.node_ttl_ms);
    rc.history_meta_ttl = Duration::from_secs(config.history.meta_ttl);
    let redis = roomcast_redis::Redis::start(rc)?;
    let (broker, history) = crate::channels::wrap(
        channels,
        Arc::new(redis.broker()),
        Arc::new(redis.history()),
    );
    let hub = Hub::with_stores(
        config.hub_config(),
        broker,
        Arc::new(redis.presence()),
        history,
    );
    let emitters = b.emitter_list().unwrap_or_default();
    if !emitters.is_empty() {
        let on = |name: &str, value: &String| emitters.contains(&name).then(|| value.clone());
        redis.enable_emitters(
            &hub,
            roomcast_redis::emitter::EmitterConfig {
                python_socketio: on("python-socketio", &b.python_socketio_channel),
                socket_io: on("socket.io", &b.socket_io_prefix),
                limits: Default::default(),
            },
        );
    }
    tracing::info!(url = %b.url, node = %hub.node(), emitters = %b.emitters, "using the redis broker");
    Ok((hub, Arc::new(redis.idempotency())))
}

#[cfg(not(feature = "redis"))]
fn redis_hub(
    _config: &Config,
    _channels: Option<&crate::channels::Layer>,
) -> Result<(Hub, Arc<dyn IdempotencyStore>), StartError> {
    Err(StartError::NoRedis)
}

/// How long HTTP exchanges may go on once the drain is over.
const HTTP_GRACE: Duration = Duration::from_secs(1);

async fn chat_page() -> Html<&'static str> {
    Html(include_str!("../static/index.html"))
}
