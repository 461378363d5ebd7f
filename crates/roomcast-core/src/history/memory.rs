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

impl State {
    /// The stream of `room`, unless it was idle for `meta_ttl` or more: a
    /// forgotten stream is removed here, whenever a sweep would have come.
    fn live(&mut self, room: &str, now: Instant, meta_ttl: Duration) -> Option<&mut Stream> {
        let stale = self
            .rooms
            .get(room)
            .is_some_and(|s| now.saturating_duration_since(s.touched) >= meta_ttl);
        if stale {
            self.rooms.remove(room);
        }
        self.rooms.get_mut(room)
    }

    /// Every `SWEEP_EVERY` operations that may add a stream or a session,
    /// drops the idle ones, so rooms opened once and never used again do not
    /// stay for ever.
    fn count_and_sweep(&mut self, now: Instant, meta_ttl: Duration) {
        self.since_sweep += 1;
        if self.since_sweep >= SWEEP_EVERY {
            self.since_sweep = 0;
            self.rooms
                .retain(|_, s| now.saturating_duration_since(s.touched) < meta_ttl);
            self.sessions.retain(|_, (until, _)| *until > now);
        }
    }

    /// The stream of `room`, a new one if it had none or it was forgotten.
    fn stream(&mut self, room: &str, now: Instant, meta_ttl: Duration) -> &mut Stream {
        if self.live(room, now, meta_ttl).is_none() {
            self.rooms.insert(room.to_owned(), Stream::new(now));
        }
        self.rooms.get_mut(room).expect("just inserted")
    }
}

/// How often (in publications, opens and kept sessions) idle streams are looked for.
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
        st.count_and_sweep(now, self.meta_ttl);
        st.seq += 1;
        let seq = st.seq;
        let stream = st.stream(room, now, self.meta_ttl);
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
        let page = match state.live(room, now, self.meta_ttl) {
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
        let mut state = self.lock();
        state.count_and_sweep(now, self.meta_ttl);
        let top = state.stream(room, now, self.meta_ttl).top();
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
        let now = Instant::now();
        let mut state = self.lock();
        state.count_and_sweep(now, self.meta_ttl);
        state.sessions.insert(key.to_owned(), (now + ttl, record));
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

    /// A stream idle for `meta_ttl` is forgotten when it is next read or
    /// opened, not only at a sweep (which a quiet node may never reach): a
    /// client resuming from it is told it was not recovered, in a new epoch.
    #[tokio::test]
    async fn an_idle_stream_is_forgotten_after_meta_ttl() {
        let store = MemoryHistory::with_meta_ttl(Duration::from_millis(300));
        let limits = HistoryLimits {
            size: 10,
            ttl: Duration::from_secs(60),
        };
        let first = store.open("r", &limits).await.unwrap();
        let p = Publication::json(Target::Room("r".into()), "e", &1).unwrap();
        let published = store.publish(NodeId(1), p, &limits).await.unwrap();
        let since = Since::Offset {
            offset: 0,
            epoch: published.position.epoch.to_string(),
        };
        assert!(store.read("r", &since, 10, &limits).await.unwrap().complete);
        std::thread::sleep(Duration::from_millis(400));
        let page = store.read("r", &since, 10, &limits).await.unwrap();
        assert!(!page.complete, "the stream was forgotten");
        let again = store.open("r", &limits).await.unwrap();
        assert_ne!(again.epoch, first.epoch, "a new stream, in a new epoch");
    }

    #[tokio::test]
    async fn passes_the_shared_suite() {
        let store = Arc::new(MemoryHistory::new());
        suite::run("mem", || store.clone(), |_, _, _| async {}).await;
    }
}
