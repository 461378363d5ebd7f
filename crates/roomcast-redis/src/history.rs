//! Room history in Redis, shared by every node.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<prefix>:history:<room>` | stream | one entry per publication, id `<offset>-0`, fields `g` (sequence number), `t` (Redis time, ms), `p` (the envelope) |
//! | `<prefix>:history-meta:<room>` | hash | `e` epoch, `o` top offset, `s` top sequence number, `d` sequence number of the newest entry trimmed |
//! | `<prefix>:history-seq` | string | the store-wide sequence counter |
//! | `<prefix>:recovery:<key>` | string | a Socket.IO recovery session, with its ttl |
//!
//! One script appends the entry and publishes the positioned envelope on the
//! room's channel, atomically: every node's subscriber connection receives a
//! room's publications in offset order, and all of them in sequence order,
//! the publishing node included (it does not deliver them itself).
//!
//! The stream expires `ttl` after its last publication, the hash `meta_ttl`
//! after it; a stream whose hash is gone starts again at offset 1 in a new
//! epoch. A Redis restart keeps what Redis persisted (RDB/AOF); without
//! persistence, or after `FLUSHALL`, every stream starts a new epoch and
//! resuming clients are told they were not recovered.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use roomcast_core::broker::{EnvelopeSink, Health};
use roomcast_core::history::{
    new_epoch, HistoryError, HistoryLimits, HistoryPage, HistoryStore, Published, Since,
};
use roomcast_core::{BoxFuture, Envelope, NodeId, Payload, Publication, StreamPosition, Target};
use tokio::sync::oneshot;

use crate::broker::{Outgoing, Reply};
use crate::{wire, Shared};

/// Appends, publishes and returns `{offset, epoch, seq}`.
///
/// KEYS: stream, meta, sequence counter. ARGV: size, ttl ms, meta ttl ms,
/// epoch for a new stream, channel, envelope JSON.
pub(crate) const APPEND: &str = r#"
local seq = redis.call('INCR', KEYS[3])
local epoch = redis.call('HGET', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[4]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'e', epoch, 'o', 0, 'd', 0)
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  -- The entries expired: the newest one lost is the last top.
  redis.call('HSET', KEYS[2], 'd', redis.call('HGET', KEYS[2], 's') or 0)
end
local offset = redis.call('HINCRBY', KEYS[2], 'o', 1)
redis.call('HSET', KEYS[2], 's', seq)
local size = tonumber(ARGV[1])
local len = redis.call('XLEN', KEYS[1])
if len >= size then
  local old = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', len - size + 1)
  local newest = old[#old]
  redis.call('HSET', KEYS[2], 'd', newest[2][2])
  redis.call('XTRIM', KEYS[1], 'MAXLEN', size - 1)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', KEYS[1], offset .. '-0', 'g', seq, 't', now, 'p', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local msg = '{"offset":' .. offset .. ',"epoch":"' .. epoch .. '","seq":' .. seq .. ',' .. string.sub(ARGV[6], 2)
redis.call('PUBLISH', ARGV[5], msg)
return {offset, epoch, seq}
"#;

/// Returns `{epoch|false, top, top seq, dropped seq, now ms, entries}`, an
/// entry being `{offset, seq, time ms, envelope}`.
///
/// KEYS: stream, meta. ARGV: first offset to return (0: all), count.
const READ: &str = r#"
local m = redis.call('HMGET', KEYS[2], 'e', 'o', 's', 'd')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if not m[1] then
  return {false, 0, 0, 0, now, {}}
end
local from = '-'
if tonumber(ARGV[1]) > 0 then from = ARGV[1] .. '-0' end
local raw = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', ARGV[2])
local out = {}
for i, e in ipairs(raw) do
  local f = {}
  for j = 1, #e[2], 2 do f[e[2][j]] = e[2][j + 1] end
  out[i] = {tonumber(string.match(e[1], '^(%d+)')), tonumber(f['g']), tonumber(f['t']), f['p']}
end
return {m[1], tonumber(m[2]), tonumber(m[3]), tonumber(m[4] or '0'), now, out}
"#;

/// Returns the stream's `{epoch, top, top seq}`, creating it at offset 0 in
/// epoch ARGV[1] (kept ARGV[2] ms) when there is none.
///
/// KEYS: meta.
const OPEN: &str = r#"
local m = redis.call('HMGET', KEYS[1], 'e', 'o', 's')
if not m[1] then
  redis.call('HSET', KEYS[1], 'e', ARGV[1], 'o', 0, 's', 0, 'd', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {ARGV[1], 0, 0}
end
return {m[1], tonumber(m[2] or '0'), tonumber(m[3] or '0')}
"#;

type Entry = (u64, u64, u64, Vec<u8>);
type Read = (Option<String>, u64, u64, u64, u64, Vec<Entry>);

/// Room history in Redis; see the module docs. Get one with [`Redis::history`](crate::Redis::history).
pub struct RedisHistory {
    shared: Arc<Shared>,
    meta_ttl: Duration,
}

impl RedisHistory {
    pub(crate) fn new(shared: Arc<Shared>, meta_ttl: Duration) -> RedisHistory {
        RedisHistory { shared, meta_ttl }
    }

    fn stream_key(&self, room: &str) -> String {
        self.shared.key(&format!("history:{room}"))
    }

    fn meta_key(&self, room: &str) -> String {
        self.shared.key(&format!("history-meta:{room}"))
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> HistoryError {
        self.shared.failed(&e);
        HistoryError::failed(format!("redis: {e}"))
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, HistoryError> {
        let mut conn = self.shared.conn().map_err(HistoryError::unavailable)?;
        cmd.query_async(&mut conn)
            .await
            .map_err(|e| self.unavailable(e))
    }
}

/// Milliseconds, at least 1 (Redis refuses a zero expiry).
fn ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

impl HistoryStore for RedisHistory {
    fn attach(&self, node: NodeId, sink: Arc<dyn EnvelopeSink>) {
        // The broker's subscriber delivers the positioned envelopes; a hub
        // attaches its broker with the same sink.
        let _ = self.shared.node.set(node);
        let _ = self.shared.sink.set(sink);
        self.shared.attached.notify_one();
    }

    fn publish(
        &self,
        origin: NodeId,
        publication: Publication,
        limits: &HistoryLimits,
    ) -> BoxFuture<'_, Result<Published, HistoryError>> {
        let fail = |why: &'static str| -> BoxFuture<'_, Result<Published, HistoryError>> {
            Box::pin(std::future::ready(Err(HistoryError::unavailable(why))))
        };
        if self.shared.config.cluster {
            return fail("history needs a single Redis server, not a Redis Cluster");
        }
        if self.shared.outage.load(Ordering::Acquire) {
            return fail("redis unavailable");
        }
        let Target::Room(room) = &publication.target else {
            return fail("only room publications have history");
        };
        let room = room.clone();
        let envelope = Envelope {
            origin,
            payload: Payload::Publication(Arc::new(publication)),
        };
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(APPEND)
            .arg(3)
            .arg(self.stream_key(&room))
            .arg(self.meta_key(&room))
            .arg(self.shared.key("history-seq"))
            .arg(limits.size.max(1))
            .arg(ms(limits.ttl))
            .arg(ms(self.meta_ttl.max(limits.ttl)))
            .arg(new_epoch())
            .arg(self.shared.channel(&format!("room:{room}")))
            .arg(wire::encode(&envelope));
        let (done, reply) = oneshot::channel();
        // Through the publisher's queue: in this node's order with its other envelopes.
        if let Err(e) = self.shared.outgoing.try_send(Outgoing::script(cmd, done)) {
            let why = match e {
                tokio::sync::mpsc::error::TrySendError::Full(_) => "redis publish queue full",
                tokio::sync::mpsc::error::TrySendError::Closed(_) => "redis publisher stopped",
            };
            return fail(why);
        }
        Box::pin(async move {
            let value = match reply.await {
                Ok(Reply::Value(Ok(v))) => v,
                Ok(Reply::Value(Err(e))) => return Err(HistoryError::failed(e)),
                _ => return Err(HistoryError::unavailable("redis publisher stopped")),
            };
            let (offset, epoch, seq): (u64, String, u64) =
                redis::FromRedisValue::from_redis_value(value).map_err(|e| self.unavailable(e))?;
            Ok(Published {
                position: StreamPosition {
                    offset,
                    epoch: Arc::from(epoch),
                    seq,
                },
                delivered: 0,
            })
        })
    }

    fn read(
        &self,
        room: &str,
        since: &Since,
        limit: usize,
        limits: &HistoryLimits,
    ) -> BoxFuture<'_, Result<HistoryPage, HistoryError>> {
        let (from, count) = match since {
            Since::Latest => (1, 0),
            // Everything: entries past their ttl may not be trimmed yet.
            Since::Oldest => (0, limits.size.max(1)),
            Since::Offset { offset, .. } => (offset + 1, limit.max(1)),
            Since::Seq { .. } => (0, limits.size.max(1)),
        };
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(READ)
            .arg(2)
            .arg(self.stream_key(room))
            .arg(self.meta_key(room))
            .arg(from)
            .arg(count.max(1));
        let since = since.clone();
        let (ttl, limit) = (ms(limits.ttl), limit);
        Box::pin(async move {
            let (epoch, top, top_seq, dropped, now, entries): Read = self.query(cmd).await?;
            let Some(epoch) = epoch else {
                return Ok(HistoryPage {
                    position: None,
                    publications: Vec::new(),
                    complete: matches!(
                        since,
                        Since::Latest | Since::Oldest | Since::Seq { epoch: None, .. }
                    ),
                });
            };
            let epoch: Arc<str> = Arc::from(epoch);
            let mut page = HistoryPage {
                position: Some(StreamPosition {
                    offset: top,
                    epoch: epoch.clone(),
                    seq: top_seq,
                }),
                publications: Vec::new(),
                complete: false,
            };
            let live = |e: &&Entry| e.2 + ttl > now;
            match &since {
                Since::Latest => page.complete = true,
                Since::Oldest => {
                    page.complete = true;
                    page.publications = decode(&entries, &epoch, limit, |e| live(&e))?;
                }
                Since::Offset { offset, epoch: e } => {
                    if **e != *epoch || *offset > top {
                        return Ok(page);
                    }
                    if *offset == top {
                        page.complete = true;
                        return Ok(page);
                    }
                    // The next entry must be there, unexpired.
                    match entries.first() {
                        Some(first) if first.0 == offset + 1 && live(&first) => {}
                        _ => return Ok(page),
                    }
                    page.complete = true;
                    page.publications = decode(&entries, &epoch, limit, |_| true)?;
                }
                Since::Seq { seq, epoch: e } => {
                    if e.as_deref().is_some_and(|e| *e != *epoch) {
                        return Ok(page);
                    }
                    if top_seq <= *seq {
                        page.complete = true;
                        return Ok(page);
                    }
                    // The newest entry lost (trimmed, expired, or the whole
                    // stream expired) must be one the reader had.
                    let expired = entries.iter().take_while(|e| !live(e)).last();
                    let lost = match (expired, entries.iter().find(|e| live(e))) {
                        (_, None) => top_seq,
                        (Some(x), Some(_)) => x.1.max(dropped),
                        (None, Some(first)) if first.0 == 1 => 0,
                        (None, Some(_)) => dropped,
                    };
                    if lost > *seq {
                        return Ok(page);
                    }
                    page.complete = true;
                    page.publications = decode(&entries, &epoch, usize::MAX, |e| e.1 > *seq)?;
                }
            }
            Ok(page)
        })
    }

    fn open(
        &self,
        room: &str,
        limits: &HistoryLimits,
    ) -> BoxFuture<'_, Result<StreamPosition, HistoryError>> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(OPEN)
            .arg(1)
            .arg(self.meta_key(room))
            .arg(new_epoch())
            .arg(ms(self.meta_ttl.max(limits.ttl)));
        Box::pin(async move {
            let (epoch, offset, seq): (String, u64, u64) = self.query(cmd).await?;
            Ok(StreamPosition {
                offset,
                epoch: Arc::from(epoch),
                seq,
            })
        })
    }

    fn remove(&self, room: &str) -> BoxFuture<'_, Result<(), HistoryError>> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.stream_key(room)).arg(self.meta_key(room));
        Box::pin(async move { self.query::<()>(cmd).await })
    }

    fn keep_session(
        &self,
        key: &str,
        record: String,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), HistoryError>> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.shared.key(&format!("recovery:{key}")))
            .arg(record)
            .arg("PX")
            .arg(ms(ttl));
        Box::pin(async move { self.query::<()>(cmd).await })
    }

    fn take_session(&self, key: &str) -> BoxFuture<'_, Result<Option<String>, HistoryError>> {
        let mut cmd = redis::cmd("GETDEL");
        cmd.arg(self.shared.key(&format!("recovery:{key}")));
        Box::pin(async move { self.query(cmd).await })
    }

    fn health(&self) -> Health {
        if self.shared.connected.load(Ordering::Acquire) {
            Health::Ok
        } else {
            Health::Degraded("redis: history unavailable".into())
        }
    }
}

/// The entries `pick` keeps, as positioned publications, at most `limit`.
fn decode(
    entries: &[Entry],
    epoch: &Arc<str>,
    limit: usize,
    pick: impl Fn(&Entry) -> bool,
) -> Result<Vec<Arc<Publication>>, HistoryError> {
    let mut out = Vec::new();
    for e in entries.iter().filter(|e| pick(e)).take(limit) {
        let env = wire::decode(&e.3)
            .map_err(|err| HistoryError::failed(format!("malformed history entry: {err}")))?;
        let Payload::Publication(p) = env.payload else {
            return Err(HistoryError::unavailable(
                "history entry is not a publication",
            ));
        };
        let mut p = Arc::unwrap_or_clone(p);
        p.position = Some(StreamPosition {
            offset: e.0,
            epoch: epoch.clone(),
            seq: e.1,
        });
        out.push(Arc::new(p));
    }
    Ok(out)
}
