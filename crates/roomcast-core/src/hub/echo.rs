//! Waiting for this node's own copy of a publication to a room with history.
//!
//! A history store with a network (Redis) delivers a room's publications to
//! every node, the publishing one included, after it appended them; the
//! store's answer and the delivery come over different connections, in either
//! order. A publisher that is told "done" (a client's ack, the API's answer)
//! must hear it after its own copy was queued, so [`Hub::publish`] waits for
//! the delivery of the position the store gave, and counts what it reached.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::Hub;
use crate::{Payload, StreamPosition, Target};

/// How long a publisher waits for this node's copy; after it the answer goes
/// anyway (the store delivered nothing here, say while the node's subscriber
/// connection is being re-established), counting 0.
pub(super) const ECHO_WAIT: Duration = Duration::from_secs(5);

/// Deliveries remembered per room while publishers wait; older ones go first.
const REMEMBERED: usize = 256;

#[derive(Default)]
struct RoomEchoes {
    /// Publishers of the room waiting now.
    waiting: usize,
    /// This node's own publications delivered here meanwhile: (epoch, offset,
    /// connections reached).
    seen: VecDeque<(Arc<str>, u64, usize)>,
    notify: Arc<Notify>,
}

/// The rooms some publisher of this node waits in; see the module docs.
#[derive(Default)]
pub(super) struct Echoes {
    /// Publishers waiting in any room: deliveries skip the map when 0.
    waiting: AtomicUsize,
    rooms: Mutex<HashMap<String, RoomEchoes>>,
}

impl Echoes {
    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<String, RoomEchoes>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One publisher's wait, registered before its publication is handed to the
/// store so that no delivery can come before it.
pub(super) struct EchoWait<'a> {
    hub: &'a Hub,
    room: String,
    notify: Arc<Notify>,
}

impl Drop for EchoWait<'_> {
    fn drop(&mut self) {
        let echoes = &self.hub.inner.echoes;
        let mut rooms = echoes.rooms();
        if let Some(r) = rooms.get_mut(&self.room) {
            r.waiting -= 1;
            if r.waiting == 0 {
                rooms.remove(&self.room);
            }
        }
        echoes.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl EchoWait<'_> {
    /// Waits until this node delivered the publication at `position`;
    /// returns how many local connections it reached.
    pub(super) async fn delivered(&self, position: &StreamPosition) -> usize {
        let found = async {
            loop {
                let notified = self.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let Some(n) = self.take(position) {
                    return n;
                }
                notified.await;
            }
        };
        match tokio::time::timeout(ECHO_WAIT, found).await {
            Ok(n) => n,
            Err(_) => {
                tracing::debug!(room = %self.room, offset = position.offset, "this node's copy of a publication did not come back in time");
                0
            }
        }
    }

    fn take(&self, position: &StreamPosition) -> Option<usize> {
        let mut rooms = self.hub.inner.echoes.rooms();
        let seen = &mut rooms.get_mut(&self.room)?.seen;
        let i = seen
            .iter()
            .position(|(e, o, _)| *o == position.offset && **e == *position.epoch)?;
        seen.remove(i).map(|(_, _, n)| n)
    }
}

impl Hub {
    /// Registers a wait for this node's copy of a publication to `room`, when
    /// the node has members there (otherwise nothing comes back to wait for).
    pub(super) fn expect_echo(&self, room: &str) -> Option<EchoWait<'_>> {
        if !self.inner.rooms.read(room, |m| m.contains_key(room)) {
            return None;
        }
        let echoes = &self.inner.echoes;
        echoes.waiting.fetch_add(1, Ordering::AcqRel);
        let mut rooms = echoes.rooms();
        let r = rooms.entry(room.to_owned()).or_default();
        r.waiting += 1;
        Some(EchoWait {
            hub: self,
            room: room.to_owned(),
            notify: r.notify.clone(),
        })
    }

    /// Notes that this node's own `payload` reached `n` local connections,
    /// for a publisher waiting on it.
    pub(super) fn echoed(&self, payload: &Payload, n: usize) {
        let echoes = &self.inner.echoes;
        if echoes.waiting.load(Ordering::Acquire) == 0 {
            return;
        }
        let Payload::Publication(p) = payload else {
            return;
        };
        let (Target::Room(room), Some(pos)) = (&p.target, &p.position) else {
            return;
        };
        let mut rooms = echoes.rooms();
        let Some(r) = rooms.get_mut(room.as_str()) else {
            return;
        };
        if r.seen.len() == REMEMBERED {
            r.seen.pop_front();
        }
        r.seen.push_back((pos.epoch.clone(), pos.offset, n));
        r.notify.notify_waiters();
    }
}
