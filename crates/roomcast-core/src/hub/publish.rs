//! Publishing: validated, delivered here and handed to the broker, or for a
//! room with history handed to the history store, which gives the
//! publication its position and delivers it in stream order.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::broker::BrokerError;
use crate::error::PublishError;
use crate::history::{HistoryError, Published};
use crate::room::validate_room_name;
use crate::{BoxFuture, Envelope, Payload, Publication, Target};

use super::{valid_event, Hub};

/// The broker's confirmation that an envelope is on its way to the other nodes.
pub(super) type Confirmation<'a> = BoxFuture<'a, Result<(), BrokerError>>;

/// A publication on its way: delivered here and handed to the broker, or
/// handed to the history store.
pub(super) enum Started<'a> {
    Sent(usize, Option<Confirmation<'a>>),
    Stored(BoxFuture<'a, Result<Published, HistoryError>>),
}

impl Hub {
    /// Sends a publication to its target on every node. Returns how many local
    /// connections it reached.
    ///
    /// A publication to a room with history goes through the history store,
    /// which gives it its position and delivers it in stream order, this
    /// node included. In a Redis cluster this node's members get it back
    /// from Redis: `publish` returns once that copy was queued here (so a
    /// publisher's answer comes after its own copy), or after
    /// [`ECHO_WAIT`](echo::ECHO_WAIT) if it never comes (counting 0).
    pub async fn publish(&self, publication: Publication) -> Result<usize, PublishError> {
        // Registered before the store has it, so that its delivery cannot come first.
        let echo = match &publication.target {
            Target::Room(room) if self.inner.config.rooms.history_for(room).is_some() => {
                self.expect_echo(room)
            }
            _ => None,
        };
        match self.publish_start(publication)? {
            Started::Sent(delivered, None) => Ok(delivered),
            Started::Sent(delivered, Some(sent)) => {
                sent.await
                    .map_err(|source| PublishError::Broker { delivered, source })?;
                Ok(delivered)
            }
            Started::Stored(stored) => {
                let published = self.stored(stored.await)?;
                match echo {
                    Some(echo) => Ok(echo.delivered(&published.position).await),
                    None => Ok(published.delivered),
                }
            }
        }
    }

    pub(super) fn stored(
        &self,
        r: Result<Published, HistoryError>,
    ) -> Result<Published, PublishError> {
        r.map_err(|e| {
            self.backend_error(&e);
            PublishError::History(e)
        })
    }

    /// Like [`publish`](Hub::publish), but returns once the publication is
    /// delivered locally and handed to the broker, without waiting for the
    /// broker to confirm it is on its way to the other nodes. The order of
    /// publications is the same; an error comes back only when the broker
    /// refuses at once (a known outage), later failures are logged and counted
    /// by the broker. For clients that asked for no acknowledgement.
    pub fn publish_detached(&self, publication: Publication) -> Result<usize, PublishError> {
        // Poll once: an immediate refusal is reported, anything else is left to run.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match self.publish_start(publication)? {
            Started::Sent(delivered, None) => Ok(delivered),
            Started::Sent(delivered, Some(mut sent)) => {
                if let std::task::Poll::Ready(Err(source)) = sent.as_mut().poll(&mut cx) {
                    return Err(PublishError::Broker { delivered, source });
                }
                Ok(delivered)
            }
            Started::Stored(mut stored) => match stored.as_mut().poll(&mut cx) {
                std::task::Poll::Ready(r) => Ok(self.stored(r)?.delivered),
                std::task::Poll::Pending => {
                    // It has its place in the stream's order already; the
                    // store counts a later failure.
                    Ok(0)
                }
            },
        }
    }

    /// Validates, delivers locally and hands the publication to the broker
    /// (or, for a room with history, to the history store, which does both).
    pub(super) fn publish_start(
        &self,
        publication: Publication,
    ) -> Result<Started<'_>, PublishError> {
        if !valid_event(&publication.event) {
            return Err(PublishError::InvalidEvent);
        }
        let mut history = None;
        if let Target::Room(room) = &publication.target {
            validate_room_name(room, self.inner.config.max_room_name_bytes)?;
            history = self.inner.config.rooms.history_for(room);
        }
        self.inner
            .metrics
            .publications
            .fetch_add(1, Ordering::Relaxed);
        if let Some(limits) = history {
            let stored = self
                .inner
                .history
                .publish(self.inner.node, publication, &limits);
            return Ok(Started::Stored(stored));
        }
        let local_only =
            matches!(publication.target, Target::Conn(c) if c.node() == self.inner.node);
        let payload = Payload::Publication(Arc::new(publication));
        let delivered = self.deliver_local(&payload);
        if local_only {
            return Ok(Started::Sent(delivered, None));
        }
        Ok(Started::Sent(delivered, Some(self.to_other_nodes(payload))))
    }

    /// Hands an envelope to the broker now (its place in this node's order is
    /// fixed by this call); the future is the broker's confirmation.
    pub(super) fn to_other_nodes(&self, payload: Payload) -> Confirmation<'_> {
        let env = Envelope {
            origin: self.inner.node,
            payload,
        };
        let sent = self.inner.broker.publish(env);
        Box::pin(async move {
            let r = sent.await;
            if let Err(e) = &r {
                self.inner
                    .metrics
                    .backend_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "broker publish failed");
            }
            r
        })
    }
}
