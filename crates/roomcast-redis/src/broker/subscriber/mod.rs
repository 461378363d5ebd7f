//! The subscriber task: one per node, it owns the subscriber connection,
//! brings subscriptions in line with the hub and hands what arrives to the
//! hub (envelopes) or to the emitter bridges. [`single`] serves one Redis
//! server, [`redis_cluster`] a Redis Cluster (sharded pub/sub); both use the
//! helpers here.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use roomcast_core::broker::EnvelopeSink;
use roomcast_core::{BoxFuture, Envelope, NodeId};
use tokio::sync::mpsc;

use super::{topic_channel, SubRequest, Topic};
use crate::{wire, Shared, Topology};

mod redis_cluster;
mod single;

/// The subscriber task: connects, subscribes, hands envelopes to the hub and
/// emitter messages to the bridges, reconnects with backoff.
pub(crate) async fn subscriber(shared: Arc<Shared>, requests: mpsc::UnboundedReceiver<SubRequest>) {
    match &shared.topology {
        Topology::Single(client) => {
            let client = client.clone();
            single::run(shared, client, requests).await
        }
        Topology::Cluster(client, pushes) => {
            let client = (**client).clone();
            let pushes = pushes.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(pushes) = pushes {
                redis_cluster::subscriber(shared, client, pushes, requests).await
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
