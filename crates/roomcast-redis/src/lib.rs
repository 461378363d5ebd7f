//! Redis backends for roomcast clusters: a [`Broker`](roomcast_core::broker::Broker)
//! that routes envelopes over Redis pub/sub, a
//! [`PresenceStore`](roomcast_core::presence::PresenceStore) kept in Redis
//! hashes and sets, and bridges that let existing Socket.IO emitters
//! (python-socketio's `RedisManager`, Node's `@socket.io/redis-emitter`)
//! publish to roomcast clients unchanged.
//!
//! # Layout
//!
//! - [`Redis`]: the shared client. One subscriber connection (a task that
//!   reconnects with backoff and resubscribes) and one multiplexed command
//!   connection serve both backends.
//! - [`RedisBroker`] (`broker/`): channel per room, per user, per node, plus
//!   one for broadcasts; a node subscribes only to what its connections need.
//!   `broker/publisher.rs` pipelines what the node sends; `broker/subscriber/`
//!   owns the subscriber connection, on one server (`single.rs`) or a Redis
//!   Cluster with sharded pub/sub (`redis_cluster.rs`).
//! - [`RedisHistory`] (`history.rs`): room streams (Redis streams) appended
//!   and published by one script, so every node sees them in stream order;
//!   Socket.IO recovery sessions.
//! - [`RedisPresence`] (`presence.rs`): cluster-wide presence kept by Lua
//!   scripts; node heartbeats with a TTL, and reaping of dead nodes' entries.
//! - `wire.rs`: the envelope encoding between nodes.
//! - [`emitter`]: the emitter bridges and their decoders.
//! - [`channels`]: the bridge to Django Channels' Redis layer (channels_redis).
//!
//! ```no_run
//! # async fn f() {
//! use std::sync::Arc;
//! use roomcast_core::{Hub, HubConfig};
//! use roomcast_redis::{Redis, RedisConfig};
//!
//! let redis = Redis::start(RedisConfig::new("redis://127.0.0.1:6379/0")).unwrap();
//! let hub = Hub::with_backends(HubConfig::default(), Arc::new(redis.broker()), Arc::new(redis.presence()));
//! # }
//! ```

#![warn(missing_docs)]

mod broker;
pub mod channels;
pub mod emitter;
mod history;
mod idempotency;
mod presence;
#[cfg(feature = "testing")]
pub mod testing;
mod wire;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use roomcast_core::broker::EnvelopeSink;
use roomcast_core::NodeId;

pub use broker::RedisBroker;
pub use history::RedisHistory;
pub use idempotency::RedisIdempotency;
pub use presence::RedisPresence;

/// Settings of the Redis backends. [`RedisConfig::new`] gives the documented defaults.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db`.
    pub url: String,
    /// Prefix of every key and channel roomcast uses. Default `roomcast`.
    pub prefix: String,
    /// How often a node refreshes its heartbeat. Default 2 s.
    pub heartbeat: Duration,
    /// A node whose heartbeat is older than this is dead: its presence entries
    /// are removed by the other nodes. Default 10 s.
    pub node_ttl: Duration,
    /// How long one Redis command may take before it counts as failed. Default 2 s.
    pub command_timeout: Duration,
    /// The longest wait between reconnect attempts. Default 5 s.
    pub max_backoff: Duration,
    /// `url` names a Redis Cluster (comma-separated seed URLs): envelopes use
    /// sharded pub/sub (SPUBLISH/SSUBSCRIBE), presence keys share one hash slot.
    /// Default false: one Redis server.
    pub cluster: bool,
    /// How long a room's history position (epoch, top offset) outlives its
    /// last publication. Default 1 day.
    pub history_meta_ttl: Duration,
}

impl RedisConfig {
    /// The defaults, with `url`.
    pub fn new(url: impl Into<String>) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            prefix: "roomcast".into(),
            heartbeat: Duration::from_secs(2),
            node_ttl: Duration::from_secs(10),
            command_timeout: Duration::from_secs(2),
            max_backoff: Duration::from_secs(5),
            cluster: false,
            history_meta_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// Envelopes a node queues for Redis before publishing fails with "queue full".
const OUTGOING_QUEUE: usize = 65_536;

/// The Redis backends could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The URL does not parse.
    #[error("invalid redis url: {0}")]
    Url(#[source] redis::RedisError),
}

/// Counters of the Redis backends, exported as metrics.
#[derive(Debug, Default)]
pub(crate) struct RedisMetrics {
    pub(crate) reconnects: AtomicU64,
    pub(crate) published: AtomicU64,
    pub(crate) unsent: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) reaped: AtomicU64,
}

/// The command connection: to one server, or to a cluster (routed by key).
#[derive(Clone)]
pub(crate) enum Commands {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Commands {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Commands::Single(c) => c.req_packed_command(cmd),
            Commands::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Commands::Single(c) => c.req_packed_commands(cmd, offset, count),
            Commands::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Single(c) => c.get_db(),
            Commands::Cluster(c) => c.get_db(),
        }
    }
}

/// How the node reaches Redis.
pub(crate) enum Topology {
    /// One server: a dedicated subscriber connection, a managed command connection.
    Single(redis::Client),
    /// A cluster: one connection (per shard, inside the client) for commands
    /// and sharded subscriptions; pushes arrive on the receiver.
    Cluster(
        Box<redis::cluster::ClusterClient>,
        Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>>>,
    ),
}

/// State shared by the broker, the presence store and the subscriber task.
pub(crate) struct Shared {
    pub(crate) config: RedisConfig,
    pub(crate) topology: Topology,
    /// Set at the start (one server) or once the cluster answered.
    pub(crate) commands: OnceLock<Commands>,
    /// Whether the subscriber connection is up; change it with [`Shared::set_connected`].
    pub(crate) connected: AtomicBool,
    /// The same, for waiters.
    pub(crate) up: tokio::sync::watch::Sender<bool>,
    /// The connection was up and went down: commands fail fast until it is
    /// back. (Before the first connection they are tried, so that a node
    /// starting together with Redis does not refuse its first requests.)
    pub(crate) outage: AtomicBool,
    /// Why the last connection attempt failed, for `/healthz`.
    pub(crate) last_error: Mutex<Option<String>>,
    pub(crate) node: OnceLock<NodeId>,
    pub(crate) sink: OnceLock<Arc<dyn EnvelopeSink>>,
    pub(crate) attached: tokio::sync::Notify,
    /// Wakes the presence store after a reconnect: it re-registers the node.
    pub(crate) reconnected: tokio::sync::Notify,
    pub(crate) metrics: RedisMetrics,
    pub(crate) emitters: OnceLock<emitter::Bridge>,
    pub(crate) stop: tokio_util::sync::CancellationToken,
    /// Envelopes for other nodes (channel, bytes), for the publisher task.
    pub(crate) outgoing: tokio::sync::mpsc::Sender<broker::Outgoing>,
    /// Subscription changes, for the subscriber task.
    pub(crate) requests: tokio::sync::mpsc::UnboundedSender<broker::SubRequest>,
}

impl Shared {
    /// Records whether the subscriber is up; returns what it was.
    pub(crate) fn set_connected(&self, up: bool) -> bool {
        let was = self.connected.swap(up, Ordering::AcqRel);
        self.up.send_replace(up);
        was
    }

    /// A presence key. In a cluster every key carries the hash tag `{prefix}`,
    /// so that the presence scripts find all of them on one shard.
    pub(crate) fn key(&self, rest: &str) -> String {
        if self.config.cluster {
            format!("{{{}}}:{rest}", self.config.prefix)
        } else {
            format!("{}:{rest}", self.config.prefix)
        }
    }

    /// The prefix of presence keys, for the scripts.
    pub(crate) fn key_prefix(&self) -> String {
        self.key("").trim_end_matches(':').to_owned()
    }

    /// A pub/sub channel (never hash-tagged: sharded channels spread over the shards).
    pub(crate) fn channel(&self, rest: &str) -> String {
        format!("{}:{rest}", self.config.prefix)
    }

    /// `PUBLISH`, or `SPUBLISH` in a cluster.
    pub(crate) fn publish_cmd(&self) -> &'static str {
        if self.config.cluster {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    pub(crate) fn failed(&self, e: &dyn std::fmt::Display) {
        self.metrics.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
    }

    /// The command connection, or an error at once while Redis is unreachable.
    pub(crate) fn conn(&self) -> Result<Commands, String> {
        if self.outage.load(Ordering::Acquire) {
            return Err("redis unavailable".to_owned());
        }
        self.commands
            .get()
            .cloned()
            .ok_or_else(|| "redis not connected yet".to_owned())
    }
}

/// A handle on the Redis backends of one node; cheap to clone. Dropping every
/// handle (and the hub holding the backends) stops the background tasks.
#[derive(Clone)]
pub struct Redis {
    shared: Arc<Shared>,
    presence: Arc<presence::State>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("url", &self.shared.config.url)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// Starts the backends: the subscriber task connects (and keeps
    /// reconnecting) in the background, so a node starts even while Redis is
    /// down and reports itself degraded until it connects. Must be called
    /// inside a Tokio runtime.
    pub fn start(config: RedisConfig) -> Result<Redis, StartError> {
        let commands = OnceLock::new();
        let topology = if config.cluster {
            let (push, rx) = tokio::sync::mpsc::unbounded_channel();
            let seeds: Vec<&str> = config.url.split(',').map(str::trim).collect();
            let client = redis::cluster::ClusterClientBuilder::new(seeds)
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(push)
                .connection_timeout(config.command_timeout)
                .response_timeout(config.command_timeout)
                .retries(1)
                .build()
                .map_err(StartError::Url)?;
            Topology::Cluster(Box::new(client), Mutex::new(Some(rx)))
        } else {
            let client = redis::Client::open(config.url.as_str()).map_err(StartError::Url)?;
            let manager_config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(config.command_timeout))
                .set_response_timeout(Some(config.command_timeout))
                .set_number_of_retries(1)
                .set_max_delay(config.max_backoff);
            let manager =
                redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
                    .map_err(StartError::Url)?;
            let _ = commands.set(Commands::Single(manager));
            Topology::Single(client)
        };
        let (requests, rx) = tokio::sync::mpsc::unbounded_channel();
        let (outgoing, outgoing_rx) = tokio::sync::mpsc::channel(OUTGOING_QUEUE);
        let shared = Arc::new(Shared {
            config,
            topology,
            commands,
            connected: AtomicBool::new(false),
            up: tokio::sync::watch::Sender::new(false),
            outage: AtomicBool::new(false),
            last_error: Mutex::new(Some("not connected yet".into())),
            node: OnceLock::new(),
            sink: OnceLock::new(),
            attached: tokio::sync::Notify::new(),
            reconnected: tokio::sync::Notify::new(),
            metrics: RedisMetrics::default(),
            emitters: OnceLock::new(),
            stop: tokio_util::sync::CancellationToken::new(),
            requests,
            outgoing,
        });
        tokio::spawn(broker::publisher(shared.clone(), outgoing_rx));
        tokio::spawn(broker::subscriber(shared.clone(), rx));
        let presence = presence::State::start(shared.clone());
        Ok(Redis { shared, presence })
    }

    /// The broker, for [`Hub::with_backends`](roomcast_core::Hub::with_backends).
    pub fn broker(&self) -> RedisBroker {
        RedisBroker::new(self.shared.clone())
    }

    /// The history store, for [`Hub::with_stores`](roomcast_core::Hub::with_stores):
    /// room streams in Redis, shared by every node (a single Redis server only).
    pub fn history(&self) -> RedisHistory {
        RedisHistory::new(self.shared.clone(), self.shared.config.history_meta_ttl)
    }

    /// The idempotency store: keys of the HTTP API's publishes, shared by every node.
    pub fn idempotency(&self) -> RedisIdempotency {
        RedisIdempotency::new(self.shared.clone())
    }

    /// The presence store, for [`Hub::with_backends`](roomcast_core::Hub::with_backends).
    pub fn presence(&self) -> RedisPresence {
        RedisPresence::new(self.presence.clone())
    }

    /// Turns on the Socket.IO emitter bridges: messages on their channels are
    /// applied to `hub`'s local connections. Call once, before or after the
    /// first connection to Redis.
    pub fn enable_emitters(&self, hub: &roomcast_core::Hub, config: emitter::EmitterConfig) {
        let bridge = emitter::Bridge::new(hub.downgrade(), config);
        if self.shared.emitters.set(bridge).is_ok() {
            // The subscriber may be connected already: have it subscribe now.
            let (done, _) = tokio::sync::oneshot::channel();
            let _ = self
                .shared
                .requests
                .send(broker::SubRequest { topic: None, done });
        }
    }

    /// Resolves once the subscriber connection is up (at once if it is).
    pub async fn connected(&self) {
        let mut rx = self.shared.up.subscribe();
        let _ = rx.wait_for(|up| *up).await;
    }

    /// Whether the subscriber connection is up.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// Stops the background tasks (the hub's shutdown does not: a draining
    /// node keeps its cluster links until it exits).
    pub fn stop(&self) {
        self.shared.stop.cancel();
    }
}
