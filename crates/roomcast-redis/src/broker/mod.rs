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

use std::sync::atomic::Ordering;
use std::sync::Arc;

use roomcast_core::broker::{Broker, BrokerError, EnvelopeSink, Health, MetricSample};
use roomcast_core::{BoxFuture, Envelope, NodeId, Route};
use tokio::sync::{mpsc, oneshot};

use crate::{wire, Shared};

mod publisher;
mod subscriber;

pub(crate) use publisher::{publisher, Outgoing, Reply};
pub(crate) use subscriber::subscriber;

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
            sent.map_err(|_| BrokerError::unavailable("redis subscriber stopped"))?;
            rx.await
                .map_err(|_| BrokerError::unavailable("redis subscriber stopped"))?
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
            return Box::pin(std::future::ready(Err(BrokerError::unavailable(
                "redis unavailable",
            ))));
        }
        let (done, sent) = oneshot::channel();
        let queued = self.shared.outgoing.try_send(Outgoing::publish(
            self.channel(envelope.route()),
            wire::encode(&envelope),
            done,
        ));
        if let Err(e) = queued {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "redis publish queue full",
                mpsc::error::TrySendError::Closed(_) => "redis publisher stopped",
            };
            return Box::pin(std::future::ready(Err(BrokerError::unavailable(why))));
        }
        Box::pin(async move {
            match sent.await {
                Ok(Reply::Sent(r)) => r.map_err(BrokerError::failed),
                _ => Err(BrokerError::unavailable("redis publisher stopped")),
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
