//! Delivery to local connections: a payload is encoded once per protocol
//! ([`EncodeCache`]) and the shared bytes are queued for every matching
//! connection; one [`Tally`] per delivery updates the metrics. [`Receiver`]
//! takes envelopes from the broker and the history store.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::broker::EnvelopeSink;
use crate::{ConnId, Envelope, Frame, Payload, Protocol, PushError, Target};

use super::config::HubMetrics;
use super::recovery::{hold, Hold};
use super::state::ConnState;
use super::{Hub, Inner};

/// Receives envelopes from other nodes without keeping the hub alive.
pub(super) struct Receiver(pub(super) std::sync::Weak<Inner>);

impl EnvelopeSink for Receiver {
    fn receive(&self, envelope: Envelope) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        let hub = Hub { inner };
        match envelope.payload {
            Payload::Command(cmd) => {
                // Joins and leaves touch the presence store, which may be remote.
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        hub.apply_locally(&cmd).await;
                    });
                }
            }
            payload => {
                let n = hub.deliver_local(&payload);
                if envelope.origin == hub.inner.node {
                    hub.echoed(&payload, n);
                }
            }
        }
    }

    fn deliver(&self, envelope: Envelope) -> usize {
        match envelope.payload {
            Payload::Command(_) => {
                self.receive(envelope);
                0
            }
            payload => self.0.upgrade().map_or(0, |inner| {
                let hub = Hub { inner };
                let n = hub.deliver_local(&payload);
                if envelope.origin == hub.inner.node {
                    hub.echoed(&payload, n);
                }
                n
            }),
        }
    }

    fn has_room(&self, room: &str) -> bool {
        self.0
            .upgrade()
            .is_some_and(|inner| inner.rooms.read(room, |m| m.contains_key(room)))
    }

    fn has_user(&self, user: &str) -> bool {
        self.0
            .upgrade()
            .is_some_and(|inner| inner.users.read(user, |m| m.contains_key(user)))
    }
}

/// One frame per protocol for one delivery.
pub(super) struct EncodeCache<'a> {
    pub(super) payload: &'a Payload,
    pub(super) frames: Vec<(usize, Option<Frame>)>,
}

impl<'a> EncodeCache<'a> {
    pub(super) fn new(payload: &'a Payload) -> Self {
        EncodeCache {
            payload,
            frames: Vec::with_capacity(2),
        }
    }

    pub(super) fn frame(&mut self, protocol: &Arc<dyn Protocol>) -> Option<Frame> {
        let key = Arc::as_ptr(protocol) as *const () as usize;
        if let Some((_, f)) = self.frames.iter().find(|(k, _)| *k == key) {
            return f.clone();
        }
        let f = match self.payload {
            Payload::Publication(p) => Some(protocol.encode_publication(p)),
            Payload::Presence(e) => protocol.encode_presence(e),
            Payload::Command(_) => None,
        };
        self.frames.push((key, f.clone()));
        f
    }
}

/// Counts one delivery's frames, added to the metrics once at the end.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) frames: u64,
    pub(super) bytes: u64,
    pub(super) slow: u64,
}

impl Tally {
    pub(super) fn push(&mut self, conn: &ConnState, frame: Frame) -> bool {
        let len = frame.len() as u64;
        match conn.outbox.push(frame) {
            Ok(()) => {
                self.frames += 1;
                self.bytes += len;
                true
            }
            Err(PushError::Overflow) => {
                self.slow += 1;
                false
            }
            Err(PushError::Closed) => false,
        }
    }

    pub(super) fn record(self, m: &HubMetrics) {
        m.messages_out.fetch_add(self.frames, Ordering::Relaxed);
        m.bytes_out.fetch_add(self.bytes, Ordering::Relaxed);
        if self.slow > 0 {
            m.slow_consumer_disconnects
                .fetch_add(self.slow, Ordering::Relaxed);
        }
    }
}

impl Hub {
    /// Queues a payload for every matching local connection, encoding it once per protocol.
    pub(super) fn deliver_local(&self, payload: &Payload) -> usize {
        let inner = &self.inner;
        let mut cache = EncodeCache::new(payload);
        let mut tally = Tally::default();
        let mut delivered = 0;
        // A positioned room publication may be held back for a connection
        // whose join of the room is reading history.
        let positioned = match payload {
            Payload::Publication(p) => match (&p.target, &p.position) {
                (Target::Room(room), Some(pos)) => Some((room.as_str(), pos)),
                _ => None,
            },
            _ => None,
        };
        let mut offer = |c: &ConnState, exclude: Option<ConnId>| {
            if Some(c.id) == exclude {
                return;
            }
            if let Some(frame) = cache.frame(&c.protocol) {
                if let Some((room, pos)) = positioned {
                    if c.holding.load(Ordering::Acquire) {
                        match hold(c, room, pos, &frame) {
                            Hold::Pass => {}
                            Hold::Taken => return,
                            Hold::Overflow => {
                                tally.slow += 1;
                                return;
                            }
                        }
                    }
                }
                if tally.push(c, frame) {
                    delivered += 1;
                }
            }
        };
        match payload {
            Payload::Publication(p) => match &p.target {
                Target::Room(room) => inner.rooms.read(room.as_str(), |m| {
                    if let Some(members) = m.get(room.as_str()) {
                        members.values().for_each(|c| offer(c, p.exclude));
                    }
                }),
                Target::User(user) => inner.users.read(user.as_str(), |m| {
                    if let Some(list) = m.get(user.as_str()) {
                        list.iter().for_each(|c| offer(c, p.exclude));
                    }
                }),
                Target::Conn(id) => inner.conns.read(id, |m| {
                    if let Some(c) = m.get(id) {
                        offer(c, p.exclude);
                    }
                }),
                Target::All => inner
                    .conns
                    .for_each_shard(|m| m.values().for_each(|c| offer(c, p.exclude))),
            },
            Payload::Presence(e) => inner.rooms.read(e.room.as_str(), |m| {
                if let Some(members) = m.get(e.room.as_str()) {
                    members.values().for_each(|c| offer(c, None));
                }
            }),
            Payload::Command(_) => {}
        }
        tally.record(&inner.metrics);
        delivered
    }
}
