//! A bridge to Django Channels' Redis layer (channels_redis), in both
//! directions, so that Django code calling `channel_layer.group_send` reaches
//! roomcast's clients and Channels consumers still running elsewhere see what
//! roomcast's clients publish.
//!
//! - **Groups**: a room and the Channels group of the same name are one. A
//!   node is a member of a group while it has members in the room: with the
//!   core layer it registers `specific.roomcast-<node>!room.<room>` in the
//!   group's sorted set (refreshed long before `group_expiry`), with the
//!   pub/sub layer it subscribes to the group's channel. Room names that are
//!   not valid group names are not bridged.
//! - **Connections**: each has a channel, `specific.roomcast-<node>!<conn>`
//!   ([`conn_channel`]), so Django can `send` to it and `group_add` it.
//! - **In**: what arrives is delivered to this node's members of the room, or
//!   to the connection, never through the broker: every node with members is
//!   itself a member of the group. See [`message`] for the mapping.
//! - **Out** (`publish_to_groups`): room publications made on this node are
//!   sent to the group's members that are not roomcast's
//!   ([`ChannelsBroker`], [`ChannelsHistory`] wrap the node's backends).
//! - **Channels** (endpoints in channel mode): [`Channels::send`] puts a
//!   message on a named channel for a Django worker (`runworker`).
//!
//! `core_layer.rs` speaks to `RedisChannelLayer` (sorted sets), and
//! `pubsub_layer.rs` to `RedisPubSubChannelLayer` (PUBLISH/SUBSCRIBE).

mod core_layer;
pub mod message;
mod pubsub_layer;
mod wrap;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use roomcast_core::broker::{EnvelopeSink, Health, MetricSample};
use roomcast_core::{Hub, NodeId, Publication, Selection, Target, WeakHub};
use tokio::sync::{mpsc, oneshot};

pub use message::{conn_channel, Format, LayerMessage, MessageError};
pub use wrap::{ChannelsBroker, ChannelsHistory};

use message::{Action, Addressee};

/// Which channels_redis layer the Django side uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LayerKind {
    /// `channels_redis.core.RedisChannelLayer`.
    #[default]
    Core,
    /// `channels_redis.pubsub.RedisPubSubChannelLayer`.
    Pubsub,
}

/// Settings of the bridge; [`ChannelsConfig::new`] gives the defaults of channels_redis.
#[derive(Debug, Clone)]
pub struct ChannelsConfig {
    /// The Redis server of the layer (`hosts` on the Django side; one host).
    pub url: String,
    /// Which layer.
    pub layer: LayerKind,
    /// The layer's `prefix`. Default `asgi`.
    pub prefix: String,
    /// The layer's `serializer_format`. Default msgpack.
    pub format: Format,
    /// Whether room publications made here go to the group's other members.
    pub publish_to_groups: bool,
    /// The layer's `expiry`: how long a message waits in a channel. Default 60 s.
    pub expiry: Duration,
    /// The layer's `group_expiry`. Default 1 day.
    pub group_expiry: Duration,
    /// The layer's `capacity` for the channels roomcast sends to. Default 100.
    pub capacity: usize,
    /// `type` of outgoing messages per room template (`chat_{room}`); rooms
    /// that match none use `roomcast.message`.
    pub group_types: Vec<(String, String)>,
    /// The largest message accepted from the layer. Default 1 MiB.
    pub max_message_bytes: usize,
    /// How long one Redis command may take. Default 2 s.
    pub command_timeout: Duration,
}

impl ChannelsConfig {
    /// The defaults, with `url`.
    pub fn new(url: impl Into<String>) -> ChannelsConfig {
        ChannelsConfig {
            url: url.into(),
            layer: LayerKind::Core,
            prefix: "asgi".into(),
            format: Format::Msgpack,
            publish_to_groups: false,
            expiry: Duration::from_secs(60),
            group_expiry: Duration::from_secs(86_400),
            capacity: 100,
            group_types: Vec::new(),
            max_message_bytes: 1 << 20,
            command_timeout: Duration::from_secs(2),
        }
    }

    /// The `type` outgoing messages of `room` carry.
    pub fn group_type(&self, room: &str) -> &str {
        for (template, kind) in &self.group_types {
            let (pre, post) = template.split_once("{room}").unwrap_or((template, ""));
            if room.len() > pre.len() + post.len() && room.starts_with(pre) && room.ends_with(post)
            {
                return kind;
            }
        }
        DEFAULT_TYPE
    }

    /// Random bytes in front of each message (the core layer's 12).
    pub(crate) fn random_prefix(&self) -> usize {
        match self.layer {
            LayerKind::Core => 12,
            LayerKind::Pubsub => 0,
        }
    }

    /// How often group memberships are refreshed: well before `group_expiry`,
    /// and at least every 30 s, so that a Redis that lost its data gets them back.
    fn refresh(&self) -> Duration {
        (self.group_expiry / 3).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }
}

/// `type` of outgoing messages when no template matches.
pub const DEFAULT_TYPE: &str = "roomcast.message";

/// The field the pub/sub layer's outgoing messages carry (the node), so that
/// no roomcast node takes them back in.
pub(crate) const ORIGIN_FIELD: &str = "__roomcast__";

/// Messages queued for the layer before more are dropped (and counted).
const OUT_QUEUE: usize = 10_000;

/// The bridge could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ChannelsError {
    /// The URL does not parse.
    #[error("invalid channels url: {0}")]
    Url(#[source] redis::RedisError),
}

/// A message for the layer.
pub(crate) enum Out {
    /// To the group's members that are not roomcast's.
    Group(String, LayerMessage),
    /// To one channel.
    Channel(String, LayerMessage),
}

/// A request to bring a room's group membership in line with the hub.
pub(crate) struct Sync {
    pub(crate) room: String,
    pub(crate) done: oneshot::Sender<()>,
}

#[derive(Default)]
pub(crate) struct Counts {
    pub(crate) delivered: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) unaddressed: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) full: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) reconnects: AtomicU64,
}

pub(crate) struct State {
    pub(crate) config: ChannelsConfig,
    pub(crate) client: redis::Client,
    pub(crate) hub: OnceLock<WeakHub>,
    pub(crate) node: OnceLock<NodeId>,
    pub(crate) sink: OnceLock<Arc<dyn EnvelopeSink>>,
    pub(crate) counts: Counts,
    pub(crate) connected: AtomicBool,
    pub(crate) up: tokio::sync::watch::Sender<bool>,
    pub(crate) last_error: Mutex<Option<String>>,
    pub(crate) stop: tokio_util::sync::CancellationToken,
    sync_tx: mpsc::UnboundedSender<Sync>,
    out_tx: mpsc::Sender<Out>,
    /// Taken by [`Channels::attach`], which starts the tasks.
    receivers: Mutex<Option<(mpsc::UnboundedReceiver<Sync>, mpsc::Receiver<Out>)>>,
}

impl State {
    pub(crate) fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Release);
        self.up.send_replace(up);
        if up {
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    pub(crate) fn failed(&self, e: &dyn std::fmt::Display) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
    }

    /// Whether the node should be in `room`'s group now.
    pub(crate) fn wants(&self, room: &str) -> bool {
        message::valid_group(room) && self.sink.get().is_some_and(|s| s.has_room(room))
    }

    /// Delivers a message to the addressees (channel names) of this node it names.
    pub(crate) fn deliver(&self, msg: LayerMessage, addressees: &[Addressee]) {
        let Some(hub) = self.hub.get().and_then(WeakHub::upgrade) else {
            return;
        };
        if addressees.is_empty() {
            self.counts.unaddressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut rooms = Vec::new();
        let mut conns = Vec::new();
        for a in addressees {
            match a {
                Addressee::Room(r) => rooms.push(r.clone()),
                Addressee::Conn(c) => conns.push(*c),
            }
        }
        // A connection in one of the rooms gets the message once.
        for room in &rooms {
            if let Some(Action::Deliver(p)) =
                message::incoming(msg.clone(), Target::Room(room.clone()))
            {
                let selection = Selection {
                    rooms: vec![room.clone()],
                    ..Selection::default()
                };
                hub.publish_selected(&selection, p);
            }
        }
        for conn in conns {
            let selection = Selection {
                rooms: vec![conn.to_string()],
                except: rooms.clone(),
                ..Selection::default()
            };
            match message::incoming(msg.clone(), Target::Conn(conn)) {
                Some(Action::Deliver(p)) => {
                    hub.publish_selected(&selection, p);
                }
                Some(Action::Close(reason)) => {
                    hub.disconnect_selected(&selection, reason);
                }
                None => {}
            }
        }
        self.counts.delivered.fetch_add(1, Ordering::Relaxed);
    }

    /// Queues an outgoing message; counts it when the queue is full.
    pub(crate) fn queue(&self, out: Out) {
        if self.out_tx.try_send(out).is_err() {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("channels layer queue full; message dropped");
        }
    }

    /// A room publication made on this node, for the group's other members.
    pub(crate) fn published(&self, p: &Publication) {
        if !self.config.publish_to_groups {
            return;
        }
        let Target::Room(room) = &p.target else {
            return;
        };
        if !message::valid_group(room) {
            return;
        }
        let mut m = message::outgoing(p, self.config.group_type(room));
        if self.config.layer == LayerKind::Pubsub {
            let node = self.node.get().map(|n| n.to_string()).unwrap_or_default();
            m.set(ORIGIN_FIELD, node.into());
        }
        self.queue(Out::Group(room.clone(), m));
    }

    /// Asks the layer task to settle `room`'s membership; resolves when it has.
    pub(crate) async fn sync(&self, room: &str) {
        if !message::valid_group(room) {
            return;
        }
        let (done, rx) = oneshot::channel();
        if self
            .sync_tx
            .send(Sync {
                room: room.to_owned(),
                done,
            })
            .is_ok()
        {
            let _ = rx.await;
        }
    }
}

/// The bridge of one node; cheap to clone. See the module docs.
#[derive(Clone)]
pub struct Channels {
    state: Arc<State>,
}

impl std::fmt::Debug for Channels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channels")
            .field("url", &self.state.config.url)
            .field("layer", &self.state.config.layer)
            .finish_non_exhaustive()
    }
}

impl Channels {
    /// Sets the bridge up; nothing runs before [`attach`](Channels::attach).
    pub fn new(config: ChannelsConfig) -> Result<Channels, ChannelsError> {
        let client = redis::Client::open(config.url.as_str()).map_err(ChannelsError::Url)?;
        let (sync_tx, sync_rx) = mpsc::unbounded_channel();
        let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
        Ok(Channels {
            state: Arc::new(State {
                config,
                client,
                hub: OnceLock::new(),
                node: OnceLock::new(),
                sink: OnceLock::new(),
                counts: Counts::default(),
                connected: AtomicBool::new(false),
                up: tokio::sync::watch::Sender::new(false),
                last_error: Mutex::new(Some("not connected yet".into())),
                stop: tokio_util::sync::CancellationToken::new(),
                sync_tx,
                out_tx,
                receivers: Mutex::new(Some((sync_rx, out_rx))),
            }),
        })
    }

    /// The settings.
    pub fn config(&self) -> &ChannelsConfig {
        &self.state.config
    }

    /// Wraps a broker: room subscriptions become group memberships, and (with
    /// `publish_to_groups`) room publications go to the group too.
    pub fn broker(&self, inner: Arc<dyn roomcast_core::broker::Broker>) -> ChannelsBroker {
        ChannelsBroker::new(inner, self.state.clone())
    }

    /// Wraps a history store, so that publications to rooms with history go
    /// to the group too (with `publish_to_groups`).
    pub fn history(&self, inner: Arc<dyn roomcast_core::history::HistoryStore>) -> ChannelsHistory {
        ChannelsHistory::new(inner, self.state.clone())
    }

    /// Starts the bridge for `hub`, whose broker is one of
    /// [`broker`](Channels::broker)'s. Must be called inside a Tokio runtime; once.
    pub fn attach(&self, hub: &Hub) {
        let s = &self.state;
        let _ = s.hub.set(hub.downgrade());
        let _ = s.node.set(hub.node());
        let Some((sync_rx, out_rx)) = s.receivers.lock().unwrap_or_else(|p| p.into_inner()).take()
        else {
            return;
        };
        match s.config.layer {
            LayerKind::Core => core_layer::start(s.clone(), sync_rx, out_rx),
            LayerKind::Pubsub => pubsub_layer::start(s.clone(), sync_rx, out_rx),
        }
    }

    /// Puts `message` on `channel` (for a Django worker). Queued; a full
    /// channel or queue drops it and counts it.
    pub fn send(&self, channel: &str, message: LayerMessage) {
        self.state.queue(Out::Channel(channel.to_owned(), message));
    }

    /// Resolves once the bridge's connection to the layer is up.
    pub async fn connected(&self) {
        let mut rx = self.state.up.subscribe();
        let _ = rx.wait_for(|up| *up).await;
    }

    /// Stops the bridge's tasks; the core layer's group memberships are removed first.
    pub fn stop(&self) {
        self.state.stop.cancel();
    }

    /// How the bridge is doing.
    pub fn health(&self) -> Health {
        health(&self.state)
    }
}

pub(crate) fn health(s: &State) -> Health {
    if s.connected.load(Ordering::Acquire) {
        Health::Ok
    } else {
        let why = s
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default();
        Health::Degraded(format!("channels layer: {why}"))
    }
}

pub(crate) fn metrics(s: &State) -> Vec<MetricSample> {
    let c = &s.counts;
    let mut out = vec![
        MetricSample {
            name: "roomcast_channels_connected",
            kind: "gauge",
            help: "1 while the node's connection to the Channels layer is up.",
            labels: String::new(),
            value: s.connected.load(Ordering::Acquire) as u64,
        },
        MetricSample {
            name: "roomcast_channels_reconnects_total",
            kind: "counter",
            help: "Successful (re)connections to the Channels layer.",
            labels: String::new(),
            value: c.reconnects.load(Ordering::Relaxed),
        },
    ];
    for (direction, result, n) in [
        ("in", "delivered", &c.delivered),
        ("in", "malformed", &c.malformed),
        ("in", "unaddressed", &c.unaddressed),
        ("out", "sent", &c.sent),
        ("out", "full", &c.full),
        ("out", "failed", &c.failed),
        ("out", "dropped", &c.dropped),
    ] {
        out.push(MetricSample {
            name: "roomcast_channels_messages_total",
            kind: "counter",
            help: "Messages between this node and the Channels layer, by direction and result.",
            labels: format!("direction=\"{direction}\",result=\"{result}\""),
            value: n.load(Ordering::Relaxed),
        });
    }
    out
}

/// Waits `d`, or returns false when the bridge stops first.
pub(crate) async fn pause(s: &State, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = s.stop.cancelled() => false,
    }
}
