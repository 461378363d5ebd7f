//! The bridge to `RedisChannelLayer` (channels_redis.core): groups are sorted
//! sets of channel names, channels are sorted sets of messages.
//!
//! - The node's channels all live in one key, `<prefix>specific.roomcast-<node>!`,
//!   which one task empties with `BZPOPMIN` (then `ZPOPMIN` in batches, so a
//!   burst is taken as fast as it comes and stays under the layer's capacity).
//! - Group membership: `ZADD <prefix>:group:<room> <now> <room channel>`
//!   while the node has members, refreshed every [`refresh`](super::ChannelsConfig)
//!   interval, `ZREM` after the last member left.
//! - Sending: a script that prunes expired messages, checks the capacity and
//!   adds the message, as channels_redis's own `send` and `group_send` do.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rmpv::Value;
use tokio::sync::mpsc;

use super::message::{self, Addressee, LayerMessage};
use super::{pause, Out, State, Sync};

/// Adds a message to a channel key unless it is at capacity: 1 if added.
const SEND: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, tonumber(ARGV[2]) - tonumber(ARGV[3]))
if redis.call('ZCOUNT', KEYS[1], '-inf', '+inf') >= tonumber(ARGV[4]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
";

/// How long one `BZPOPMIN` blocks.
const BLOCK: Duration = Duration::from_secs(2);

/// Messages taken per `ZPOPMIN` after a `BZPOPMIN`.
const BATCH: usize = 128;

pub(super) fn start(
    state: Arc<State>,
    sync: mpsc::UnboundedReceiver<Sync>,
    out: mpsc::Receiver<Out>,
) {
    let c = &state.config;
    let manager = |timeout: Duration| {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(c.command_timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(5));
        redis::aio::ConnectionManager::new_lazy_with_config(state.client.clone(), config)
    };
    let (commands, blocking) = match (
        manager(c.command_timeout),
        manager(BLOCK + c.command_timeout),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            state.failed(&e);
            tracing::error!(error = %e, "channels layer: cannot connect");
            return;
        }
    };
    tokio::spawn(membership(state.clone(), commands.clone(), sync));
    tokio::spawn(sender(state.clone(), commands, out));
    tokio::spawn(receiver(state, blocking));
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn group_key(state: &State, group: &str) -> String {
    format!("{}:group:{group}", state.config.prefix)
}

/// The key a channel's messages are kept in: the prefix and the channel's
/// name up to and including its `!`.
fn channel_key(state: &State, channel: &str) -> String {
    let non_local = match channel.find('!') {
        Some(i) => &channel[..=i],
        None => channel,
    };
    format!("{}{non_local}", state.config.prefix)
}

/// Keeps the node's group memberships in line with its rooms. While the
/// layer is down, requests only update what is wanted (a join does not wait
/// for Redis); the next retry writes it all.
async fn membership(
    state: Arc<State>,
    mut conn: redis::aio::ConnectionManager,
    mut requests: mpsc::UnboundedReceiver<Sync>,
) {
    let Some(&node) = state.node.get() else {
        return;
    };
    let expiry = state.config.group_expiry.as_secs().max(1) as i64;
    // Groups the node is in, and groups it left but could not tell Redis yet.
    let mut wanted: HashSet<String> = HashSet::new();
    let mut left: HashSet<String> = HashSet::new();
    let mut refresh = tokio::time::interval(state.config.refresh());
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    let mut dirty = false;
    let add = |pipe: &mut redis::Pipeline, room: &str, t: f64| {
        let key = group_key(&state, room);
        pipe.zadd(&key, message::room_channel(node, room), t)
            .ignore()
            .expire(&key, expiry)
            .ignore();
    };
    let remove = |pipe: &mut redis::Pipeline, room: &str| {
        pipe.zrem(group_key(&state, room), message::room_channel(node, room))
            .ignore();
    };
    loop {
        tokio::select! {
            Some(req) = requests.recv() => {
                let mut pipe = redis::pipe();
                if state.wants(&req.room) {
                    left.remove(&req.room);
                    wanted.insert(req.room.clone());
                    add(&mut pipe, &req.room, now());
                } else if wanted.remove(&req.room) {
                    left.insert(req.room.clone());
                    remove(&mut pipe, &req.room);
                }
                if !state.connected.load(Ordering::Acquire) {
                    dirty = true;
                } else if let Err(e) = pipe.query_async::<()>(&mut conn).await {
                    state.failed(&e);
                    tracing::warn!(error = %e, room = %req.room, "channels layer: group membership not updated; retrying");
                    dirty = true;
                } else {
                    left.remove(&req.room);
                }
                let _ = req.done.send(());
            }
            _ = refresh.tick() => dirty = true,
            _ = retry.tick(), if dirty && state.connected.load(Ordering::Acquire) => {
                // Rooms the hub no longer has (a request that raced) are left too.
                let gone: Vec<String> = wanted.iter().filter(|r| !state.wants(r)).cloned().collect();
                for room in gone {
                    wanted.remove(&room);
                    left.insert(room);
                }
                let mut pipe = redis::pipe();
                let t = now();
                for room in &wanted {
                    add(&mut pipe, room, t);
                }
                for room in &left {
                    remove(&mut pipe, room);
                }
                match pipe.query_async::<()>(&mut conn).await {
                    Ok(()) => {
                        dirty = false;
                        left.clear();
                    }
                    Err(e) => state.failed(&e),
                }
            }
            _ = state.stop.cancelled() => break,
        }
    }
    // Leave every group, so that Django stops sending to this node's key.
    let mut pipe = redis::pipe();
    for room in wanted.iter().chain(&left) {
        remove(&mut pipe, room);
    }
    let _ = tokio::time::timeout(
        state.config.command_timeout,
        pipe.query_async::<()>(&mut conn),
    )
    .await;
}

/// Sends what the node puts on the layer, in order.
async fn sender(
    state: Arc<State>,
    mut conn: redis::aio::ConnectionManager,
    mut out: mpsc::Receiver<Out>,
) {
    let script = redis::Script::new(SEND);
    let c = &state.config;
    let group_expiry = c.group_expiry.as_secs_f64();
    let expiry = c.expiry.as_secs().max(1);
    loop {
        let msg = tokio::select! {
            m = out.recv() => match m { Some(m) => m, None => return },
            _ = state.stop.cancelled() => return,
        };
        // (channel key, message) pairs to add.
        let batch: Vec<(String, Vec<u8>)> = match msg {
            Out::Channel(channel, mut m) => {
                if channel.contains('!') {
                    m.set("__asgi_channel__", Value::from(channel.as_str()));
                }
                vec![(
                    channel_key(&state, &channel),
                    m.encode(c.format, c.random_prefix()),
                )]
            }
            Out::Group(group, m) => {
                let key = group_key(&state, &group);
                let members: Result<((), Vec<String>), _> = redis::pipe()
                    .zrembyscore(&key, 0, now() - group_expiry)
                    .zrange(&key, 0, -1)
                    .query_async(&mut conn)
                    .await;
                let members = match members {
                    Ok(((), m)) => m,
                    Err(e) => {
                        state.failed(&e);
                        state.counts.failed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                // One message per channel key, naming its members, as channels_redis does.
                let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for name in members {
                    if !message::is_roomcast_channel(&name) {
                        keys.entry(channel_key(&state, &name))
                            .or_default()
                            .push(name);
                    }
                }
                keys.into_iter()
                    .map(|(key, names)| {
                        let mut m = m.clone();
                        m.set(
                            "__asgi_channel__",
                            Value::Array(names.into_iter().map(Value::from).collect()),
                        );
                        (key, m.encode(c.format, c.random_prefix()))
                    })
                    .collect()
            }
        };
        for (key, bytes) in batch {
            let added: Result<i64, _> = script
                .key(&key)
                .arg(bytes)
                .arg(now())
                .arg(expiry)
                .arg(c.capacity)
                .invoke_async(&mut conn)
                .await;
            match added {
                Ok(1) => state.counts.sent.fetch_add(1, Ordering::Relaxed),
                Ok(_) => {
                    tracing::info!(
                        key,
                        "channels layer: channel over capacity; message dropped"
                    );
                    state.counts.full.fetch_add(1, Ordering::Relaxed)
                }
                Err(e) => {
                    state.failed(&e);
                    state.counts.failed.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
    }
}

/// Empties the node's channel key and delivers each message.
async fn receiver(state: Arc<State>, mut conn: redis::aio::ConnectionManager) {
    let Some(&node) = state.node.get() else {
        return;
    };
    let key = channel_key(&state, &format!("specific.{}!", message::node_prefix(node)));
    let mut backoff = Duration::from_millis(100);
    loop {
        // Up as soon as Redis answers, not after the first block times out.
        if !state.connected.load(Ordering::Acquire) {
            let pong: Result<(), _> = redis::cmd("PING").query_async(&mut conn).await;
            if pong.is_ok() {
                state.counts.reconnects.fetch_add(1, Ordering::Relaxed);
                state.set_connected(true);
                tracing::info!(key, "channels layer connected");
            }
        }
        let mut bzpopmin = redis::cmd("BZPOPMIN");
        bzpopmin.arg(&key).arg(BLOCK.as_secs_f64());
        let popped: Result<Option<(String, Vec<u8>, f64)>, _> = tokio::select! {
            r = bzpopmin.query_async(&mut conn) => r,
            _ = state.stop.cancelled() => return,
        };
        let first = match popped {
            Ok(first) => {
                if !state.connected.load(Ordering::Acquire) {
                    state.counts.reconnects.fetch_add(1, Ordering::Relaxed);
                    state.set_connected(true);
                }
                backoff = Duration::from_millis(100);
                first
            }
            Err(e) => {
                state.failed(&e);
                if state.connected.swap(false, Ordering::AcqRel) {
                    state.up.send_replace(false);
                    tracing::warn!(error = %e, "channels layer: connection lost; reconnecting");
                }
                if !pause(&state, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let Some((_, bytes, _)) = first else { continue };
        handle(&state, node, &bytes);
        // Then whatever else is waiting, in batches.
        loop {
            let more: Result<Vec<(Vec<u8>, f64)>, _> = redis::cmd("ZPOPMIN")
                .arg(&key)
                .arg(BATCH)
                .query_async(&mut conn)
                .await;
            let Ok(more) = more else { break };
            let n = more.len();
            for (bytes, _) in more {
                handle(&state, node, &bytes);
            }
            if n < BATCH {
                break;
            }
        }
    }
}

fn handle(state: &State, node: roomcast_core::NodeId, bytes: &[u8]) {
    let c = &state.config;
    let mut m = match LayerMessage::decode(bytes, c.format, c.random_prefix(), c.max_message_bytes)
    {
        Ok(m) => m,
        Err(e) => {
            state.counts.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "channels layer: malformed message; ignored");
            return;
        }
    };
    let names = match m.take("__asgi_channel__") {
        Some(Value::String(s)) => s.into_str().into_iter().collect(),
        Some(Value::Array(a)) => a
            .into_iter()
            .filter_map(|v| match v {
                Value::String(s) => s.into_str(),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let addressees: Vec<Addressee> = names
        .iter()
        .filter_map(|n| message::addressee(node, n))
        .collect();
    state.deliver(m, &addressees);
}
