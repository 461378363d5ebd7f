//! The Redis broker: envelopes travel on pub/sub channels named after what
//! they target, and a node subscribes only to the channels its connections
//! need.
//!
//! | channel | carries | subscribed by |
//! |---|---|---|
//! | `<prefix>:room:<room>` | room publications, presence events, room close | nodes with members in the room |
//! | `<prefix>:user:<user>` | user sends, join/leave/disconnect by user | nodes with connections of the user |
//! | `<prefix>:node:<node>` | anything for one connection | that node |
//! | `<prefix>:all` | broadcasts | every node |
//!
//! One task per node owns the subscriber connection. Subscription changes go
//! through it in order; it asks the hub whether it still needs a room or user
//! when it acts, so racing joins and leaves settle on the hub's current state.
//! After a reconnect it subscribes to everything again.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use roomcast_core::broker::{Broker, BrokerError, EnvelopeSink, Health, MetricSample};
use roomcast_core::{BoxFuture, Envelope, NodeId, Route};
use tokio::sync::{mpsc, oneshot};

use crate::{wire, Shared, Topology};

/// What a node may need to subscribe to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Topic {
    Room(String),
    User(String),
}

/// A request to bring one topic's subscription in line with the hub, or
/// (`None`) to subscribe to the emitter channels, turned on after the start.
pub(crate) struct SubRequest {
    pub(crate) topic: Option<Topic>,
    pub(crate) done: oneshot::Sender<Result<(), BrokerError>>,
}

/// Routes envelopes between nodes over Redis pub/sub; see the module docs.
pub struct RedisBroker {
    shared: Arc<Shared>,
}

impl RedisBroker {
    pub(crate) fn new(shared: Arc<Shared>) -> RedisBroker {
        RedisBroker { shared }
    }

    fn channel(&self, route: Route<'_>) -> String {
        let s = &self.shared;
        match route {
            Route::Room(r) => s.channel(&format!("room:{r}")),
            Route::User(u) => s.channel(&format!("user:{u}")),
            Route::Node(n) => s.channel(&format!("node:{n}")),
            Route::All => s.channel("all"),
        }
    }

    fn sync(&self, topic: Topic) -> BoxFuture<'_, Result<(), BrokerError>> {
        let (done, rx) = oneshot::channel();
        let sent = self.shared.requests.send(SubRequest {
            topic: Some(topic),
            done,
        });
        Box::pin(async move {
            sent.map_err(|_| BrokerError("redis subscriber stopped".into()))?;
            rx.await
                .map_err(|_| BrokerError("redis subscriber stopped".into()))?
        })
    }
}

pub(crate) fn topic_channel(prefix: &str, topic: &Topic) -> String {
    match topic {
        Topic::Room(r) => format!("{prefix}:room:{r}"),
        Topic::User(u) => format!("{prefix}:user:{u}"),
    }
}

impl Broker for RedisBroker {
    fn attach(&self, node: NodeId, sink: Arc<dyn EnvelopeSink>) {
        let _ = self.shared.node.set(node);
        let _ = self.shared.sink.set(sink);
        self.shared.attached.notify_one();
    }

    /// Queues the envelope for the node's publisher task, which sends queued
    /// envelopes to Redis in pipelined batches, in order; the future resolves
    /// when its batch was sent. An error comes back at once while Redis is
    /// known to be down or the queue is full. (Callers that do not wait see
    /// later failures in the log and in `roomcast_redis_unsent_total`.)
    fn publish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), BrokerError>> {
        if self.shared.outage.load(Ordering::Acquire) {
            return Box::pin(std::future::ready(Err(BrokerError(
                "redis unavailable".into(),
            ))));
        }
        let (done, sent) = oneshot::channel();
        let queued = self.shared.outgoing.try_send(Outgoing {
            what: What::Publish {
                channel: self.channel(envelope.route()),
                bytes: wire::encode(&envelope),
            },
            done,
        });
        if let Err(e) = queued {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "redis publish queue full",
                mpsc::error::TrySendError::Closed(_) => "redis publisher stopped",
            };
            return Box::pin(std::future::ready(Err(BrokerError(why.into()))));
        }
        Box::pin(async move {
            match sent.await {
                Ok(Reply::Sent(r)) => r.map_err(BrokerError),
                _ => Err(BrokerError("redis publisher stopped".into())),
            }
        })
    }

    fn subscribe_room(&self, _: NodeId, room: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.sync(Topic::Room(room.to_owned()))
    }

    fn unsubscribe_room(&self, _: NodeId, room: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.sync(Topic::Room(room.to_owned()))
    }

    fn subscribe_user(&self, _: NodeId, user: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.sync(Topic::User(user.to_owned()))
    }

    fn unsubscribe_user(&self, _: NodeId, user: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.sync(Topic::User(user.to_owned()))
    }

    fn health(&self) -> Health {
        if self.shared.connected.load(Ordering::Acquire) {
            Health::Ok
        } else {
            let why = self
                .shared
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_default();
            Health::Degraded(format!("redis: {why}"))
        }
    }

    fn metrics(&self) -> Vec<MetricSample> {
        let m = &self.shared.metrics;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let sample = |name, kind, help, value| MetricSample {
            name,
            kind,
            help,
            labels: String::new(),
            value,
        };
        let mut out = vec![
            sample(
                "roomcast_redis_connected",
                "gauge",
                "1 while the node's Redis subscriber connection is up.",
                self.shared.connected.load(Ordering::Acquire) as u64,
            ),
            sample(
                "roomcast_redis_reconnects_total",
                "counter",
                "Successful Redis (re)connections of the subscriber.",
                get(&m.reconnects),
            ),
            sample(
                "roomcast_redis_published_total",
                "counter",
                "Envelopes this node published to other nodes.",
                get(&m.published),
            ),
            sample(
                "roomcast_redis_unsent_total",
                "counter",
                "Envelopes accepted for other nodes that could not be sent to Redis.",
                get(&m.unsent),
            ),
            sample(
                "roomcast_redis_received_total",
                "counter",
                "Envelopes received from other nodes.",
                get(&m.received),
            ),
            sample(
                "roomcast_redis_errors_total",
                "counter",
                "Failed Redis commands and connection attempts.",
                get(&m.errors),
            ),
            sample(
                "roomcast_redis_malformed_total",
                "counter",
                "Messages on roomcast's own channels that did not decode.",
                get(&m.malformed),
            ),
            sample(
                "roomcast_redis_reaped_connections_total",
                "counter",
                "Presence entries of dead nodes removed by this node.",
                get(&m.reaped),
            ),
        ];
        if let Some(bridge) = self.shared.emitters.get() {
            out.extend(bridge.metrics());
        }
        out
    }
}

/// One envelope (or history append) waiting for the publisher task.
pub(crate) struct Outgoing {
    what: What,
    /// Told how it went.
    done: oneshot::Sender<Reply>,
}

pub(crate) enum What {
    /// PUBLISH an envelope on a channel.
    Publish { channel: String, bytes: Vec<u8> },
    /// Run a script that appends to a room's history and publishes.
    Script(redis::Cmd),
}

/// How an [`Outgoing`] went.
pub(crate) enum Reply {
    /// Its batch was sent (or not).
    Sent(Result<(), String>),
    /// The script's answer.
    Value(Result<redis::Value, String>),
}

impl Outgoing {
    /// A history append, answered with the script's value.
    pub(crate) fn script(cmd: redis::Cmd, done: oneshot::Sender<Reply>) -> Outgoing {
        Outgoing {
            what: What::Script(cmd),
            done,
        }
    }
}

/// The most envelopes one pipelined batch carries.
const PUBLISH_BATCH: usize = 1024;

/// The publisher task: sends queued envelopes to Redis in pipelined batches, in order.
pub(crate) async fn publisher(shared: Arc<Shared>, mut outgoing: mpsc::Receiver<Outgoing>) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    loop {
        tokio::select! {
            n = outgoing.recv_many(&mut batch, PUBLISH_BATCH) => if n == 0 { return },
            _ = shared.stop.cancelled() => return,
        }
        let n = batch.len() as u64;
        if shared.commands.get().is_none() {
            // A cluster node's first connection is still being made: give it
            // the command timeout before counting this batch as unsent.
            let mut up = shared.up.subscribe();
            let _ = tokio::time::timeout(shared.config.command_timeout, up.wait_for(|u| *u)).await;
        }
        let sent = match shared.conn() {
            Ok(conn) => send(&shared, conn, &batch).await,
            Err(e) => Err(e),
        };
        let mut values = match &sent {
            Ok(v) => v.clone().into_iter(),
            Err(_) => Vec::new().into_iter(),
        };
        let sent = sent.map(|_| ());
        for item in batch.drain(..) {
            let reply = match item.what {
                What::Publish { .. } => Reply::Sent(sent.clone()),
                What::Script(_) => Reply::Value(match &sent {
                    Ok(()) => values
                        .next()
                        .ok_or_else(|| "redis gave no answer".to_owned()),
                    Err(e) => Err(e.clone()),
                }),
            };
            let _ = item.done.send(reply);
        }
        match sent {
            Ok(()) => {
                shared.metrics.published.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                shared.failed(&e);
                shared.metrics.unsent.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(envelopes = n, error = %e, "could not send envelopes to the other nodes");
            }
        }
    }
}

/// Sends a batch: one pipeline to a single server; in a cluster, where one
/// pipeline cannot span hash slots, one command per envelope, all in flight
/// at once (each shard's connection keeps them in order per channel).
/// Returns the scripts' answers, in order.
async fn send(
    shared: &Shared,
    mut conn: crate::Commands,
    batch: &[Outgoing],
) -> Result<Vec<redis::Value>, String> {
    let cmd = shared.publish_cmd();
    if !shared.config.cluster {
        let mut pipe = redis::pipe();
        for item in batch {
            match &item.what {
                What::Publish { channel, bytes } => {
                    pipe.cmd(cmd).arg(channel).arg(bytes).ignore();
                }
                What::Script(script) => {
                    pipe.add_command(script.clone());
                }
            }
        }
        return pipe
            .query_async::<Vec<redis::Value>>(&mut conn)
            .await
            .map_err(|e| e.to_string());
    }
    let sends = batch.iter().filter_map(|item| match &item.what {
        What::Publish { channel, bytes } => {
            let mut conn = conn.clone();
            Some(async move {
                redis::cmd(cmd)
                    .arg(channel)
                    .arg(bytes)
                    .query_async::<()>(&mut conn)
                    .await
            })
        }
        // History refuses to start in a cluster.
        What::Script(_) => None,
    });
    let results = futures_util::future::join_all(sends).await;
    match results.into_iter().find_map(Result::err) {
        Some(e) => Err(e.to_string()),
        None => Ok(Vec::new()),
    }
}

/// Subscribes to `channels` in chunks, so that thousands of rooms do not make one huge command.
async fn subscribe_all(
    sink: &mut redis::aio::PubSubSink,
    channels: &[String],
    subscribe: bool,
) -> redis::RedisResult<()> {
    for chunk in channels.chunks(500) {
        if subscribe {
            sink.subscribe(chunk).await?;
        } else {
            sink.unsubscribe(chunk).await?;
        }
    }
    Ok(())
}

/// The subscriber task: connects, subscribes, hands envelopes to the hub and
/// emitter messages to the bridges, reconnects with backoff.
pub(crate) async fn subscriber(shared: Arc<Shared>, requests: mpsc::UnboundedReceiver<SubRequest>) {
    match &shared.topology {
        Topology::Single(client) => {
            let client = client.clone();
            single_subscriber(shared, client, requests).await
        }
        Topology::Cluster(client, pushes) => {
            let client = (**client).clone();
            let pushes = pushes.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(pushes) = pushes {
                crate::cluster::subscriber(shared, client, pushes, requests).await
            }
        }
    }
}

/// Waits for the hub to attach: the node channel needs its id.
pub(crate) async fn attached(shared: &Shared) -> Option<(NodeId, Arc<dyn EnvelopeSink>)> {
    loop {
        if let (Some(n), Some(s)) = (shared.node.get(), shared.sink.get()) {
            return Some((*n, s.clone()));
        }
        tokio::select! {
            _ = shared.attached.notified() => {}
            _ = shared.stop.cancelled() => return None,
        }
    }
}

/// The channels a node always listens on: broadcasts and its own.
pub(crate) fn fixed_channels(shared: &Shared, node: NodeId) -> Vec<String> {
    vec![
        shared.channel("all"),
        shared.channel(&format!("node:{node}")),
    ]
}

/// A connection that can subscribe to classic pub/sub channels and patterns.
pub(crate) trait Subscriber: Send {
    fn subscribe_to<'a>(
        &'a mut self,
        channel: &'a str,
        pattern: bool,
    ) -> BoxFuture<'a, redis::RedisResult<()>>;
}

impl Subscriber for redis::aio::PubSubSink {
    fn subscribe_to<'a>(
        &'a mut self,
        channel: &'a str,
        pattern: bool,
    ) -> BoxFuture<'a, redis::RedisResult<()>> {
        if pattern {
            Box::pin(self.psubscribe(channel))
        } else {
            Box::pin(self.subscribe(channel))
        }
    }
}

/// Subscribes to the emitters' channels, if emitters are on.
pub(crate) async fn subscribe_emitters(
    shared: &Shared,
    sink: &mut impl Subscriber,
) -> redis::RedisResult<()> {
    let Some(bridge) = shared.emitters.get() else {
        return Ok(());
    };
    let (channels, patterns) = bridge.channels();
    for c in &channels {
        sink.subscribe_to(c, false).await?;
    }
    for p in &patterns {
        sink.subscribe_to(p, true).await?;
    }
    Ok(())
}

/// What a batch of subscription requests changes.
pub(crate) struct Changes {
    pub(crate) add: Vec<String>,
    pub(crate) drop: Vec<String>,
    /// Subscribe to the emitter channels too.
    pub(crate) emitters: bool,
}

/// Takes `first` and every request already queued, settles each topic on
/// the hub's current state, and returns the batch (to answer) and the changes.
pub(crate) fn changes(
    first: SubRequest,
    requests: &mut mpsc::UnboundedReceiver<SubRequest>,
    sink: &dyn EnvelopeSink,
    prefix: &str,
    wanted: &mut HashSet<String>,
) -> (Vec<SubRequest>, Changes) {
    let mut batch = vec![first];
    while let Ok(more) = requests.try_recv() {
        batch.push(more);
    }
    let mut c = Changes {
        add: Vec::new(),
        drop: Vec::new(),
        emitters: false,
    };
    for req in &batch {
        let Some(topic) = &req.topic else {
            c.emitters = true;
            continue;
        };
        let ch = topic_channel(prefix, topic);
        let had = wanted.contains(&ch);
        let want = settle(sink, prefix, topic, wanted);
        if want && !had {
            c.add.push(ch);
        } else if !want && had {
            c.drop.push(ch);
        }
    }
    (batch, c)
}

async fn single_subscriber(
    shared: Arc<Shared>,
    client: redis::Client,
    mut requests: mpsc::UnboundedReceiver<SubRequest>,
) {
    let Some((node, sink)) = attached(&shared).await else {
        return;
    };
    let prefix = shared.config.prefix.clone();
    let fixed = fixed_channels(&shared, node);
    let mut wanted: HashSet<String> = HashSet::new();
    let mut backoff = Duration::from_millis(100);
    let ping_every = Duration::from_secs(1).max(shared.config.heartbeat / 2);
    loop {
        let connect =
            tokio::time::timeout(shared.config.command_timeout, client.get_async_pubsub());
        let pubsub = tokio::select! {
            r = connect => match r {
                Ok(Ok(p)) => Some(p),
                Ok(Err(e)) => { shared.failed(&e); None }
                Err(_) => { shared.failed(&"connect timed out"); None }
            },
            _ = shared.stop.cancelled() => return,
        };
        let Some(pubsub) = pubsub else {
            // Commands fail fast from now on instead of waiting for Redis.
            shared.outage.store(true, Ordering::Release);
            // Keep track of what the hub needs while Redis is away.
            let until = tokio::time::Instant::now() + backoff;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    Some(req) = requests.recv() => {
                        if let Some(topic) = &req.topic {
                            settle(&*sink, &prefix, topic, &mut wanted);
                        }
                        let _ = req.done.send(Err(BrokerError("redis unavailable".into())));
                    }
                    _ = shared.stop.cancelled() => return,
                }
            }
            backoff = (backoff * 2).min(shared.config.max_backoff);
            continue;
        };
        let (mut psink, mut stream) = pubsub.split();
        let mut all: Vec<String> = fixed.clone();
        all.extend(wanted.iter().cloned());
        let mut ready = subscribe_all(&mut psink, &all, true).await;
        if ready.is_ok() {
            ready = subscribe_emitters(&shared, &mut psink).await;
        }
        if let Err(e) = ready {
            shared.failed(&e);
            tracing::warn!(error = %e, "redis subscribe failed; reconnecting");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shared.stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(shared.config.max_backoff);
            continue;
        }
        backoff = Duration::from_millis(100);
        shared.metrics.reconnects.fetch_add(1, Ordering::Relaxed);
        shared.set_connected(true);
        shared.outage.store(false, Ordering::Release);
        *shared.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        shared.reconnected.notify_one();
        tracing::info!(channels = all.len(), "redis subscriber connected");
        let mut ping = tokio::time::interval(ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let reason = loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => dispatch(&shared, node, &*sink, msg.get_channel_name(), msg.get_payload_bytes()),
                    None => break "connection closed".to_owned(),
                },
                Some(req) = requests.recv() => {
                    let (batch, Changes { add, drop, emitters }) =
                        changes(req, &mut requests, &*sink, &prefix, &mut wanted);
                    let mut r = subscribe_all(&mut psink, &add, true).await;
                    if r.is_ok() {
                        r = subscribe_all(&mut psink, &drop, false).await;
                    }
                    if emitters && r.is_ok() {
                        r = subscribe_emitters(&shared, &mut psink).await;
                    }
                    let failed = r.as_ref().err().map(|e| e.to_string());
                    for req in batch {
                        let _ = req.done.send(match &failed {
                            None => Ok(()),
                            Some(e) => Err(BrokerError(e.clone())),
                        });
                    }
                    if let Some(e) = failed {
                        break e;
                    }
                }
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(shared.config.command_timeout, psink.ping::<redis::Value>()).await;
                    match pong {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => break e.to_string(),
                        Err(_) => break "ping timed out".to_owned(),
                    }
                }
                _ = shared.stop.cancelled() => return,
            }
        };
        shared.set_connected(false);
        shared.outage.store(true, Ordering::Release);
        shared.failed(&reason);
        tracing::warn!(%reason, "redis subscriber lost its connection; local delivery goes on, reconnecting");
    }
}

/// Records whether the hub needs `topic` now; returns that.
pub(crate) fn settle(
    sink: &dyn EnvelopeSink,
    prefix: &str,
    topic: &Topic,
    wanted: &mut HashSet<String>,
) -> bool {
    let want = match topic {
        Topic::Room(r) => sink.has_room(r),
        Topic::User(u) => sink.has_user(u),
    };
    let ch = topic_channel(prefix, topic);
    if want {
        wanted.insert(ch);
    } else {
        wanted.remove(&ch);
    }
    want
}

fn positioned(env: &Envelope) -> bool {
    matches!(&env.payload, roomcast_core::Payload::Publication(p) if p.position.is_some())
}

/// One message from Redis: an envelope from another node, or an emitter's.
pub(crate) fn dispatch(
    shared: &Shared,
    node: NodeId,
    sink: &dyn EnvelopeSink,
    channel: &str,
    payload: &[u8],
) {
    let own = channel
        .strip_prefix(shared.config.prefix.as_str())
        .is_some_and(|rest| rest.starts_with(':'));
    if !own {
        if let Some(bridge) = shared.emitters.get() {
            bridge.handle(channel, payload);
        }
        return;
    }
    match wire::decode(payload) {
        // A node's own envelopes come back only from the history script,
        // which delivers to every node, this one included.
        Ok(env) if env.origin == node && !positioned(&env) => {}
        Ok(env) => {
            shared.metrics.received.fetch_add(1, Ordering::Relaxed);
            sink.receive(env);
        }
        Err(e) => {
            shared.metrics.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%channel, error = %e, "malformed message on a roomcast channel");
        }
    }
}
