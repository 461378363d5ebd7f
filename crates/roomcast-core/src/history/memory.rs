//! The in-process history store: streams in memory, for one node (or for
//! several hubs of one process that share it).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, RwLock};
use std::time::Instant;

use super::*;
use crate::{Envelope, Payload, Target};

struct Entry {
    at: Instant,
    publication: Arc<Publication>,
}

impl Entry {
    fn position(&self) -> &StreamPosition {
        self.publication
            .position
            .as_ref()
            .expect("stored publications are positioned")
    }
}

struct Stream {
    epoch: Arc<str>,
    top: u64,
    top_seq: u64,
    /// The sequence number of the newest entry dropped (trimmed or expired); 0 if none.
    dropped_seq: u64,
    entries: VecDeque<Entry>,
    touched: Instant,
}

impl Stream {
    fn new(now: Instant) -> Stream {
        Stream {
            epoch: Arc::from(new_epoch()),
            top: 0,
            top_seq: 0,
            dropped_seq: 0,
            entries: VecDeque::new(),
            touched: now,
        }
    }

    /// Drops entries past the size or older than the ttl.
    fn prune(&mut self, now: Instant, limits: &HistoryLimits) {
        while let Some(front) = self.entries.front() {
            let old = now.saturating_duration_since(front.at) >= limits.ttl;
            if !old && self.entries.len() <= limits.size {
                break;
            }
            self.dropped_seq = front.position().seq;
            self.entries.pop_front();
        }
    }

    fn top(&self) -> StreamPosition {
        StreamPosition {
            offset: self.top,
            epoch: self.epoch.clone(),
            seq: self.top_seq,
        }
    }

    fn read(&self, since: &Since, limit: usize) -> HistoryPage {
        let mut page = HistoryPage {
            position: Some(self.top()),
            publications: Vec::new(),
            complete: false,
        };
        let after = |pick: &dyn Fn(&Entry) -> bool| -> Vec<Arc<Publication>> {
            self.entries
                .iter()
                .filter(|e| pick(e))
                .take(limit)
                .map(|e| e.publication.clone())
                .collect()
        };
        match since {
            Since::Latest => page.complete = true,
            Since::Oldest => {
                page.complete = true;
                page.publications = after(&|_| true);
            }
            Since::Offset { offset, epoch } => {
                if **epoch != *self.epoch || *offset > self.top {
                    return page;
                }
                let first = self
                    .entries
                    .front()
                    .map_or(self.top + 1, |e| e.position().offset);
                if first > offset + 1 {
                    return page;
                }
                page.complete = true;
                page.publications = after(&|e| e.position().offset > *offset);
            }
            Since::Seq { seq, epoch } => {
                if epoch.as_deref().is_some_and(|e| *e != *self.epoch) {
                    return page;
                }
                if self.top_seq <= *seq {
                    page.complete = true;
                    return page;
                }
                if self.dropped_seq > *seq {
                    return page;
                }
                page.complete = true;
                page.publications = after(&|e| e.position().seq > *seq);
            }
        }
        page
    }
}

#[derive(Default)]
struct State {
    seq: u64,
    rooms: HashMap<String, Stream>,
    sessions: HashMap<String, (Instant, String)>,
    /// Publications since the last sweep of idle streams.
    since_sweep: usize,
}

/// How often (in publications) idle streams are looked for.
const SWEEP_EVERY: usize = 4096;

/// Streams in memory; see the module docs.
pub struct MemoryHistory {
    state: Mutex<State>,
    sinks: RwLock<Vec<(NodeId, Arc<dyn EnvelopeSink>)>>,
    meta_ttl: Duration,
}

impl Default for MemoryHistory {
    fn default() -> Self {
        MemoryHistory::new()
    }
}

impl MemoryHistory {
    /// An empty store that forgets a stream (its epoch and top offset) a day
    /// after its last publication.
    pub fn new() -> MemoryHistory {
        MemoryHistory::with_meta_ttl(Duration::from_secs(24 * 3600))
    }

    /// An empty store that forgets a stream `meta_ttl` after its last publication.
    pub fn with_meta_ttl(meta_ttl: Duration) -> MemoryHistory {
        MemoryHistory {
            state: Mutex::new(State::default()),
            sinks: RwLock::new(Vec::new()),
            meta_ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends and delivers under one lock, so that every sink sees the
    /// sequence order.
    fn append(
        &self,
        origin: NodeId,
        mut publication: Publication,
        limits: &HistoryLimits,
    ) -> Result<Published, HistoryError> {
        let Target::Room(room) = &publication.target else {
            return Err(HistoryError::NotARoom);
        };
        let now = Instant::now();
        let mut state = self.lock();
        let st = &mut *state;
        st.since_sweep += 1;
        if st.since_sweep >= SWEEP_EVERY {
            st.since_sweep = 0;
            let ttl = self.meta_ttl;
            st.rooms
                .retain(|_, s| now.saturating_duration_since(s.touched) < ttl);
            st.sessions.retain(|_, (until, _)| *until > now);
        }
        st.seq += 1;
        let seq = st.seq;
        let stream = st
            .rooms
            .entry(room.clone())
            .or_insert_with(|| Stream::new(now));
        stream.top += 1;
        stream.top_seq = seq;
        stream.touched = now;
        let position = StreamPosition {
            offset: stream.top,
            epoch: stream.epoch.clone(),
            seq,
        };
        publication.position = Some(position.clone());
        let publication = Arc::new(publication);
        stream.entries.push_back(Entry {
            at: now,
            publication: publication.clone(),
        });
        stream.prune(now, limits);
        let mut delivered = 0;
        for (node, sink) in self.sinks.read().unwrap_or_else(|e| e.into_inner()).iter() {
            let n = sink.deliver(Envelope {
                origin,
                payload: Payload::Publication(publication.clone()),
            });
            if *node == origin {
                delivered = n;
            }
        }
        Ok(Published {
            position,
            delivered,
        })
    }
}

impl HistoryStore for MemoryHistory {
    fn attach(&self, node: NodeId, sink: Arc<dyn EnvelopeSink>) {
        self.sinks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push((node, sink));
    }

    fn publish(
        &self,
        origin: NodeId,
        publication: Publication,
        limits: &HistoryLimits,
    ) -> BoxFuture<'_, Result<Published, HistoryError>> {
        let r = self.append(origin, publication, limits);
        Box::pin(std::future::ready(r))
    }

    fn read(
        &self,
        room: &str,
        since: &Since,
        limit: usize,
        limits: &HistoryLimits,
    ) -> BoxFuture<'_, Result<HistoryPage, HistoryError>> {
        let now = Instant::now();
        let mut state = self.lock();
        let page = match state.rooms.get_mut(room) {
            Some(stream) => {
                stream.prune(now, limits);
                stream.read(since, limit)
            }
            None => HistoryPage {
                position: None,
                publications: Vec::new(),
                complete: matches!(
                    since,
                    Since::Latest | Since::Oldest | Since::Seq { epoch: None, .. }
                ),
            },
        };
        Box::pin(std::future::ready(Ok(page)))
    }

    fn open(
        &self,
        room: &str,
        _limits: &HistoryLimits,
    ) -> BoxFuture<'_, Result<StreamPosition, HistoryError>> {
        let now = Instant::now();
        let top = self
            .lock()
            .rooms
            .entry(room.to_owned())
            .or_insert_with(|| Stream::new(now))
            .top();
        Box::pin(std::future::ready(Ok(top)))
    }

    fn remove(&self, room: &str) -> BoxFuture<'_, Result<(), HistoryError>> {
        self.lock().rooms.remove(room);
        Box::pin(std::future::ready(Ok(())))
    }

    fn keep_session(
        &self,
        key: &str,
        record: String,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), HistoryError>> {
        let until = Instant::now() + ttl;
        self.lock().sessions.insert(key.to_owned(), (until, record));
        Box::pin(std::future::ready(Ok(())))
    }

    fn take_session(&self, key: &str) -> BoxFuture<'_, Result<Option<String>, HistoryError>> {
        let now = Instant::now();
        let record = self
            .lock()
            .sessions
            .remove(key)
            .filter(|(until, _)| *until > now)
            .map(|(_, r)| r);
        Box::pin(std::future::ready(Ok(record)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_the_shared_suite() {
        let store = Arc::new(MemoryHistory::new());
        suite::run("mem", || store.clone(), |_, _, _| async {}).await;
    }
}
