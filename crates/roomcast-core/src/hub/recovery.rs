//! Joins that read a room's history: live publications are held back while
//! the stream is read, then the reply, the missed publications and the held
//! ones newer than what was read go out back to back; a late copy of what
//! was replayed is filtered out.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::error::JoinError;
use crate::history::{HistoryError, HistoryLimits, HistoryPage, Since};
use crate::room::validate_room_name;
use crate::{Disconnect, Frame, Publication, PushError, StreamPosition};

use super::state::{ConnState, Held, Holding};
use super::Hub;

/// What [`hold`] did with a live publication.
pub(super) enum Hold {
    /// Nothing: deliver it.
    Pass,
    /// Held back, or dropped as a late copy of what the join replayed.
    Taken,
    /// Held back past the queue limit: the connection is closed as slow.
    Overflow,
}

/// Holds a live publication back if the connection is reading `room`'s
/// history, or drops it if the join already replayed it.
pub(super) fn hold(c: &ConnState, room: &str, position: &StreamPosition, frame: &Frame) -> Hold {
    let mut h = c.held();
    if !h.rooms.iter().any(|r| r == room) {
        let Some(i) = h.filters.iter().position(|f| f.0 == room) else {
            return Hold::Pass;
        };
        let (_, epoch, top) = &h.filters[i];
        if **epoch == *position.epoch && position.offset <= *top {
            return Hold::Taken;
        }
        h.filters.swap_remove(i);
        if h.idle() {
            c.holding.store(false, Ordering::Release);
        }
        return Hold::Pass;
    }
    h.bytes += frame.len();
    if h.bytes > c.outbox.limit() {
        drop(h);
        c.outbox.close(Disconnect::SLOW);
        return Hold::Overflow;
    }
    h.held.push(Held {
        room: room.to_owned(),
        position: position.clone(),
        frame: frame.clone(),
    });
    Hold::Taken
}

/// Stops holding `rooms` back; returns the frames held for them that `keep` keeps.
pub(super) fn release(
    meta: &mut Holding,
    c: &ConnState,
    rooms: &[&str],
    keep: impl Fn(&Held) -> bool,
) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut rest = Vec::new();
    for h in std::mem::take(&mut meta.held) {
        if rooms.contains(&h.room.as_str()) {
            if keep(&h) {
                out.push(h.frame);
            }
        } else {
            rest.push(h);
        }
    }
    meta.bytes = rest.iter().map(|h| h.frame.len()).sum();
    meta.held = rest;
    meta.rooms.retain(|r| !rooms.contains(&r.as_str()));
    if meta.idle() {
        c.holding.store(false, Ordering::Release);
    }
    out
}

/// Builds the frames that go to a connection before what its joins replay.
pub(super) type ReplyFn<'a> = Box<dyn FnOnce(&[Recovery]) -> Vec<Frame> + Send + 'a>;

/// What a join of a room found in its history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The room.
    pub room: String,
    /// Whether the connection joined (false: it was in the room already).
    pub joined: bool,
    /// Whether the room keeps history.
    pub history: bool,
    /// The stream's top when the connection joined: it gets every publication
    /// after it. `None` for a room without history, one nothing was published
    /// to yet, or when the history store could not be read.
    pub position: Option<StreamPosition>,
    /// Every publication after the requested start was replayed (for a join
    /// that asked for none, whether the position is known). When false
    /// nothing was replayed: the client should reload what it shows.
    pub recovered: bool,
}

impl Hub {
    /// Joins rooms, replaying history where `Since` asks for it.
    ///
    /// Live publications of the rooms with history are held back while their
    /// streams are read (after the join, so nothing falls between); then the
    /// `reply` frames, the missed publications (in sequence order) and the
    /// held ones newer than what was read go to the outbox back to back. The
    /// connection ends up with every publication after the position it is
    /// told, once, in order.
    pub(super) async fn join_with_history(
        &self,
        c: &Arc<ConnState>,
        requests: Vec<(String, Since)>,
        by_server: bool,
        reply: Option<ReplyFn<'_>>,
    ) -> Result<Vec<Recovery>, JoinError> {
        let inner = &self.inner;
        for (room, _) in &requests {
            validate_room_name(room, inner.config.max_room_name_bytes)?;
        }
        let plan: Vec<(String, Since, Option<HistoryLimits>)> = requests
            .into_iter()
            .map(|(room, since)| {
                let limits = inner.config.rooms.history_for(&room);
                (room, since, limits)
            })
            .collect();
        let held: Vec<&str> = plan
            .iter()
            .filter(|(_, _, l)| l.is_some())
            .map(|(r, _, _)| r.as_str())
            .collect();
        if !held.is_empty() {
            if c.meta().closed {
                return Err(JoinError::Closed);
            }
            c.held().rooms.extend(held.iter().map(|r| (*r).to_owned()));
            c.holding.store(true, Ordering::Release);
        }
        // A room the connection is in already: it got the live publications
        // after its mark, so only what came before the mark is replayed.
        let before: HashMap<String, Option<u64>> = {
            let meta = c.meta();
            plan.iter()
                .filter(|(room, _, _)| meta.rooms.iter().any(|r| r == room))
                .map(|(room, _, _)| (room.clone(), meta.marks.get(room).map(|m| m.seq)))
                .collect()
        };
        let mut joined = Vec::with_capacity(plan.len());
        for (room, _, _) in &plan {
            match self.add_member(c, room, by_server).await {
                Ok(j) => joined.push(j),
                Err(e) => {
                    // Rooms joined so far keep what was held for them.
                    let mut h = c.held();
                    let frames = release(&mut h, c, &held, |_| true);
                    let _ = c.outbox.push_all(frames);
                    return Err(e);
                }
            }
        }
        let mut pages: Vec<Option<Result<HistoryPage, HistoryError>>> =
            Vec::with_capacity(plan.len());
        for (room, since, limits) in &plan {
            pages.push(match limits {
                Some(l) => Some(self.read_or_open(room, since, l).await),
                None => None,
            });
        }
        let mut recoveries = Vec::with_capacity(plan.len());
        let mut replay: Vec<Arc<Publication>> = Vec::new();
        for (((room, since, limits), joined), page) in plan.iter().zip(joined).zip(pages) {
            let (position, recovered) = match page {
                None => (None, matches!(since, Since::Latest)),
                Some(Ok(page)) => {
                    if page.complete {
                        let cutoff = before.get(room).map(|m| m.unwrap_or(0));
                        replay.extend(page.publications.into_iter().filter(|p| {
                            cutoff
                                .is_none_or(|cut| p.position.as_ref().is_some_and(|s| s.seq <= cut))
                        }));
                    }
                    (page.position, page.complete)
                }
                Some(Err(e)) => {
                    self.backend_error(&e);
                    (None, false)
                }
            };
            recoveries.push(Recovery {
                room: room.clone(),
                joined,
                history: limits.is_some(),
                position,
                recovered,
            });
        }
        replay.sort_by_key(|p| p.position.as_ref().map_or(0, |s| s.seq));
        let m = &inner.metrics;
        for ((_, since, _), r) in plan.iter().zip(&recoveries) {
            if *since != Since::Latest {
                let counter = if r.recovered {
                    &m.recoveries
                } else {
                    &m.recoveries_failed
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
        m.replayed.fetch_add(replay.len() as u64, Ordering::Relaxed);
        {
            let mut meta = c.meta();
            for r in recoveries.iter().filter(|r| !before.contains_key(&r.room)) {
                if let Some(p) = &r.position {
                    meta.marks.insert(r.room.clone(), p.clone());
                }
            }
        }
        let mut h = c.held();
        let mut out = match reply {
            Some(reply) => reply(&recoveries),
            None => Vec::new(),
        };
        out.extend(
            replay
                .iter()
                .filter(|p| p.exclude != Some(c.id))
                .map(|p| c.protocol.encode_publication(p)),
        );
        let newer = |h: &Held| match recoveries
            .iter()
            .find(|r| r.room == h.room && !before.contains_key(&r.room))
        {
            Some(Recovery {
                position: Some(top),
                ..
            }) => h.position.epoch != top.epoch || h.position.offset > top.offset,
            _ => true,
        };
        out.extend(release(&mut h, c, &held, newer));
        for r in recoveries.iter().filter(|r| !before.contains_key(&r.room)) {
            if let Some(p) = &r.position {
                h.filters.retain(|f| f.0 != r.room);
                h.filters.push((r.room.clone(), p.epoch.clone(), p.offset));
                c.holding.store(true, Ordering::Release);
            }
        }
        if c.outbox.push_all(out) == Err(PushError::Overflow) {
            inner
                .metrics
                .slow_consumer_disconnects
                .fetch_add(1, Ordering::Relaxed);
        }
        drop(h);
        Ok(recoveries)
    }

    /// Reads a joining connection's history page. The room's stream is
    /// opened if it has none, so that the page always has a position to
    /// resume from (offset 0 of a new epoch before the first publication).
    pub(super) async fn read_or_open(
        &self,
        room: &str,
        since: &Since,
        limits: &HistoryLimits,
    ) -> Result<HistoryPage, HistoryError> {
        let history = &self.inner.history;
        if *since == Since::Latest {
            return Ok(HistoryPage {
                position: Some(history.open(room, limits).await?),
                publications: Vec::new(),
                complete: true,
            });
        }
        let mut page = history.read(room, since, limits.size, limits).await?;
        if page.position.is_some() {
            return Ok(page);
        }
        let opened = history.open(room, limits).await?;
        if opened.offset > 0 {
            // Published to between the read and the open: read what is there now.
            return history.read(room, since, limits.size, limits).await;
        }
        page.position = Some(opened);
        Ok(page)
    }
}
