//! The bridge to `RedisPubSubChannelLayer` (channels_redis.pubsub): a group
//! is the Redis channel `<prefix>__group__<group>`, a channel is the Redis
//! channel of its own name, and nothing is kept while nobody listens.
//!
//! One task owns the subscriber connection: it subscribes to the groups of
//! the node's rooms and to the pattern `specific.roomcast-<node>!*` (the
//! node's connections), and resubscribes after a reconnect. Outgoing group
//! messages carry `__roomcast__` (the node), and no node takes such a
//! message back in: roomcast's own members got it through the broker.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::message::{self, Addressee, LayerMessage};
use super::{pause, Out, State, Sync, ORIGIN_FIELD};

pub(super) fn start(
    state: Arc<State>,
    sync: mpsc::UnboundedReceiver<Sync>,
    out: mpsc::Receiver<Out>,
) {
    let c = &state.config;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(c.command_timeout))
        .set_response_timeout(Some(c.command_timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(5));
    match redis::aio::ConnectionManager::new_lazy_with_config(state.client.clone(), config) {
        Ok(conn) => {
            tokio::spawn(sender(state.clone(), conn, out));
        }
        Err(e) => {
            state.failed(&e);
            tracing::error!(error = %e, "channels layer: cannot connect");
            return;
        }
    }
    tokio::spawn(subscriber(state, sync));
}

fn group_channel(state: &State, room: &str) -> String {
    format!("{}__group__{room}", state.config.prefix)
}

async fn sender(
    state: Arc<State>,
    mut conn: redis::aio::ConnectionManager,
    mut out: mpsc::Receiver<Out>,
) {
    let format = state.config.format;
    loop {
        let msg = tokio::select! {
            m = out.recv() => match m { Some(m) => m, None => return },
            _ = state.stop.cancelled() => return,
        };
        let (channel, bytes, group) = match msg {
            Out::Group(room, m) => (group_channel(&state, &room), m.encode(format, 0), true),
            Out::Channel(channel, m) => (channel, m.encode(format, 0), false),
        };
        let r: Result<i64, _> = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(bytes)
            .query_async(&mut conn)
            .await;
        match r {
            Ok(0) if !group => {
                tracing::warn!(
                    channel,
                    "channels layer: nobody listens on the channel; message lost"
                );
                state.counts.failed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {
                state.counts.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                state.failed(&e);
                state.counts.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn subscriber(state: Arc<State>, mut requests: mpsc::UnboundedReceiver<Sync>) {
    let Some(&node) = state.node.get() else {
        return;
    };
    let conns = format!("specific.{}!*", message::node_prefix(node));
    let group_prefix = group_channel(&state, "");
    let mut wanted: HashSet<String> = HashSet::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        let connect = tokio::time::timeout(
            state.config.command_timeout,
            state.client.get_async_pubsub(),
        );
        let pubsub = tokio::select! {
            r = connect => match r {
                Ok(Ok(p)) => Some(p),
                Ok(Err(e)) => { state.failed(&e); None }
                Err(_) => { state.failed(&"connect timed out"); None }
            },
            _ = state.stop.cancelled() => return,
        };
        let Some(pubsub) = pubsub else {
            // Keep track of what the hub needs while Redis is away.
            let until = tokio::time::Instant::now() + backoff;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    Some(req) = requests.recv() => {
                        if state.wants(&req.room) {
                            wanted.insert(req.room);
                        } else {
                            wanted.remove(&req.room);
                        }
                        let _ = req.done.send(());
                    }
                    _ = state.stop.cancelled() => return,
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        };
        let (mut sink, mut stream) = pubsub.split();
        wanted.retain(|room| state.wants(room));
        let channels: Vec<String> = wanted.iter().map(|r| group_channel(&state, r)).collect();
        let mut ready = sink.psubscribe(&conns).await;
        for chunk in channels.chunks(500) {
            if ready.is_ok() {
                ready = sink.subscribe(chunk).await;
            }
        }
        if let Err(e) = ready {
            state.failed(&e);
            if !pause(&state, backoff).await {
                return;
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        backoff = Duration::from_millis(100);
        state.counts.reconnects.fetch_add(1, Ordering::Relaxed);
        state.set_connected(true);
        tracing::info!(groups = wanted.len(), "channels layer (pub/sub) connected");
        let mut ping = tokio::time::interval(Duration::from_secs(2));
        let reason = loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => {
                        let channel = msg.get_channel_name();
                        let addressee = match channel.strip_prefix(&group_prefix) {
                            Some(room) if wanted.contains(room) => Some(Addressee::Room(room.to_owned())),
                            Some(_) => None,
                            None => message::addressee(node, channel),
                        };
                        handle(&state, addressee, msg.get_payload_bytes());
                    }
                    None => break "connection closed".to_owned(),
                },
                Some(req) = requests.recv() => {
                    let channel = group_channel(&state, &req.room);
                    let r = if state.wants(&req.room) {
                        if wanted.insert(req.room.clone()) { sink.subscribe(&channel).await } else { Ok(()) }
                    } else if wanted.remove(&req.room) {
                        sink.unsubscribe(&channel).await
                    } else {
                        Ok(())
                    };
                    let _ = req.done.send(());
                    if let Err(e) = r {
                        break e.to_string();
                    }
                }
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(state.config.command_timeout, sink.ping::<redis::Value>()).await;
                    match pong {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => break e.to_string(),
                        Err(_) => break "ping timed out".to_owned(),
                    }
                }
                _ = state.stop.cancelled() => return,
            }
        };
        state.set_connected(false);
        state.failed(&reason);
        tracing::warn!(%reason, "channels layer (pub/sub) lost its connection; reconnecting");
    }
}

fn handle(state: &State, addressee: Option<Addressee>, bytes: &[u8]) {
    let c = &state.config;
    let m = match LayerMessage::decode(bytes, c.format, 0, c.max_message_bytes) {
        Ok(m) => m,
        Err(e) => {
            state.counts.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "channels layer: malformed message; ignored");
            return;
        }
    };
    if m.get(ORIGIN_FIELD).is_some() {
        // A roomcast node's own publication: its members have it already.
        return;
    }
    let addressees: Vec<Addressee> = addressee.into_iter().collect();
    state.deliver(m, &addressees);
}
