//! The node's broker and history store, wrapped: room subscriptions become
//! group memberships, and room publications made here also go to the group.

use std::sync::Arc;
use std::time::Duration;

use roomcast_core::broker::{Broker, BrokerError, EnvelopeSink, Health, MetricSample};
use roomcast_core::history::{
    HistoryError, HistoryLimits, HistoryPage, HistoryStore, Published, Since,
};
use roomcast_core::{BoxFuture, Envelope, NodeId, Payload, Publication, StreamPosition};

use super::State;

/// A broker that also keeps the node's Channels group memberships; see
/// [`Channels::broker`](super::Channels::broker).
pub struct ChannelsBroker {
    inner: Arc<dyn Broker>,
    state: Arc<State>,
}

impl ChannelsBroker {
    pub(crate) fn new(inner: Arc<dyn Broker>, state: Arc<State>) -> ChannelsBroker {
        ChannelsBroker { inner, state }
    }
}

impl Broker for ChannelsBroker {
    fn attach(&self, node: NodeId, sink: Arc<dyn EnvelopeSink>) {
        let _ = self.state.sink.set(sink.clone());
        self.inner.attach(node, sink);
    }

    fn publish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), BrokerError>> {
        // Only the node a publication was made on hands it to its broker.
        if let Payload::Publication(p) = &envelope.payload {
            self.state.published(p);
        }
        self.inner.publish(envelope)
    }

    /// The broker's subscription first, then the group's: a `group_send`
    /// after the join has returned reaches the new member.
    fn subscribe_room(&self, node: NodeId, room: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        let room = room.to_owned();
        Box::pin(async move {
            let r = self.inner.subscribe_room(node, &room).await;
            self.state.sync(&room).await;
            r
        })
    }

    fn unsubscribe_room(&self, node: NodeId, room: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        let room = room.to_owned();
        Box::pin(async move {
            let r = self.inner.unsubscribe_room(node, &room).await;
            self.state.sync(&room).await;
            r
        })
    }

    fn subscribe_user(&self, node: NodeId, user: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.inner.subscribe_user(node, user)
    }

    fn unsubscribe_user(&self, node: NodeId, user: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.inner.unsubscribe_user(node, user)
    }

    fn health(&self) -> Health {
        match (self.inner.health(), super::health(&self.state)) {
            (Health::Ok, h) => h,
            (h, _) => h,
        }
    }

    fn metrics(&self) -> Vec<MetricSample> {
        let mut out = self.inner.metrics();
        out.extend(super::metrics(&self.state));
        out
    }
}

/// A history store whose room publications also go to the Channels group;
/// see [`Channels::history`](super::Channels::history).
pub struct ChannelsHistory {
    inner: Arc<dyn HistoryStore>,
    state: Arc<State>,
}

impl ChannelsHistory {
    pub(crate) fn new(inner: Arc<dyn HistoryStore>, state: Arc<State>) -> ChannelsHistory {
        ChannelsHistory { inner, state }
    }
}

impl HistoryStore for ChannelsHistory {
    fn attach(&self, node: NodeId, sink: Arc<dyn EnvelopeSink>) {
        self.inner.attach(node, sink);
    }

    fn publish(
        &self,
        origin: NodeId,
        publication: Publication,
        limits: &HistoryLimits,
    ) -> BoxFuture<'_, Result<Published, HistoryError>> {
        self.state.published(&publication);
        self.inner.publish(origin, publication, limits)
    }

    fn read(
        &self,
        room: &str,
        since: &Since,
        limit: usize,
        limits: &HistoryLimits,
    ) -> BoxFuture<'_, Result<HistoryPage, HistoryError>> {
        self.inner.read(room, since, limit, limits)
    }

    fn open(
        &self,
        room: &str,
        limits: &HistoryLimits,
    ) -> BoxFuture<'_, Result<StreamPosition, HistoryError>> {
        self.inner.open(room, limits)
    }

    fn remove(&self, room: &str) -> BoxFuture<'_, Result<(), HistoryError>> {
        self.inner.remove(room)
    }

    fn keep_session(
        &self,
        key: &str,
        record: String,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), HistoryError>> {
        self.inner.keep_session(key, record, ttl)
    }

    fn take_session(&self, key: &str) -> BoxFuture<'_, Result<Option<String>, HistoryError>> {
        self.inner.take_session(key)
    }

    fn health(&self) -> Health {
        self.inner.health()
    }
}
