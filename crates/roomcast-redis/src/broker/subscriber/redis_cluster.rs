//! The subscriber of a node on a Redis Cluster: sharded pub/sub.
//!
//! Room, user and node channels are SSUBSCRIBEd, so each lives on the shard
//! owning its hash slot and a message is not forwarded to every shard (as
//! classic pub/sub does in a cluster). The cluster client keeps one
//! connection per shard, routes each subscription to its shard, resubscribes
//! after reconnecting, and hands every message to one receiver. Emitters
//! publish with classic PUBLISH, which a cluster delivers everywhere, so their
//! channels are plain subscriptions.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use roomcast_core::broker::BrokerError;
use roomcast_core::BoxFuture;
use tokio::sync::mpsc;

use super as broker;
use crate::broker::SubRequest;
use crate::{Commands, Shared};

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

async fn shard_subscribe(
    conn: &mut ClusterConnection,
    channels: &[String],
    on: bool,
) -> redis::RedisResult<()> {
    // One command per channel: channels of one command must share a slot.
    for ch in channels {
        if on {
            conn.ssubscribe(ch).await?;
        } else {
            conn.sunsubscribe(ch).await?;
        }
    }
    Ok(())
}

impl broker::Subscriber for ClusterConnection {
    fn subscribe_to<'a>(
        &'a mut self,
        channel: &'a str,
        pattern: bool,
    ) -> BoxFuture<'a, redis::RedisResult<()>> {
        if pattern {
            Box::pin(self.psubscribe(channel))
        } else {
            Box::pin(self.subscribe(channel))
        }
    }
}

/// Subscribes to everything the node needs; on success the node is up.
async fn subscribe_everything(
    shared: &Shared,
    conn: &mut ClusterConnection,
    fixed: &[String],
    wanted: &HashSet<String>,
) -> redis::RedisResult<()> {
    let mut all = fixed.to_vec();
    all.extend(wanted.iter().cloned());
    shard_subscribe(conn, &all, true).await?;
    broker::subscribe_emitters(shared, conn).await
}

fn set_up(shared: &Shared, up: bool, why: &str) {
    let was = shared.set_connected(up);
    shared.outage.store(!up, Ordering::Release);
    if up && !was {
        shared.metrics.reconnects.fetch_add(1, Ordering::Relaxed);
        *shared.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        shared.reconnected.notify_one();
        tracing::info!("redis cluster connected");
    } else if !up && was {
        shared.failed(&why);
        tracing::warn!(
            reason = why,
            "lost the redis cluster; local delivery goes on, reconnecting"
        );
    }
}

pub(crate) async fn subscriber(
    shared: Arc<Shared>,
    client: redis::cluster::ClusterClient,
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    mut requests: mpsc::UnboundedReceiver<SubRequest>,
) {
    let Some((node, sink)) = broker::attached(&shared).await else {
        return;
    };
    let prefix = shared.config.prefix.clone();
    let fixed = broker::fixed_channels(&shared, node);
    let mut wanted: HashSet<String> = HashSet::new();
    let mut backoff = Duration::from_millis(100);
    let timeout = shared.config.command_timeout;

    // Connect, answering subscription requests with errors meanwhile.
    let mut conn = loop {
        let why = match tokio::time::timeout(timeout, client.get_async_connection()).await {
            Ok(Ok(conn)) => break conn,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connect timed out".to_owned(),
        };
        shared.failed(&why);
        shared.outage.store(true, Ordering::Release);
        let until = tokio::time::Instant::now() + backoff;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                Some(req) = requests.recv() => {
                    if let Some(topic) = &req.topic {
                        broker::settle(&*sink, &prefix, topic, &mut wanted);
                    }
                    let _ = req.done.send(Err(BrokerError::unavailable("redis unavailable")));
                }
                _ = shared.stop.cancelled() => return,
            }
        }
        backoff = (backoff * 2).min(shared.config.max_backoff);
    };
    let _ = shared.commands.set(Commands::Cluster(conn.clone()));

    let mut ping = tokio::time::interval(Duration::from_secs(1).max(shared.config.heartbeat / 2));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Subscriptions are (re)made whenever the node comes up.
    let mut pending_resubscribe = true;
    loop {
        if pending_resubscribe {
            match subscribe_everything(&shared, &mut conn, &fixed, &wanted).await {
                Ok(()) => {
                    pending_resubscribe = false;
                    set_up(&shared, true, "");
                }
                Err(e) => set_up(&shared, false, &e.to_string()),
            }
        }
        tokio::select! {
            Some(push) = pushes.recv() => match push.kind {
                PushKind::Message | PushKind::SMessage => {
                    if let (Some(ch), Some(payload)) = (push.data.first().and_then(bytes), push.data.get(1).and_then(bytes)) {
                        broker::dispatch(&shared, node, &*sink, &String::from_utf8_lossy(ch), payload);
                    }
                }
                PushKind::PMessage => {
                    if let (Some(ch), Some(payload)) = (push.data.get(1).and_then(bytes), push.data.get(2).and_then(bytes)) {
                        broker::dispatch(&shared, node, &*sink, &String::from_utf8_lossy(ch), payload);
                    }
                }
                PushKind::Disconnection => {
                    set_up(&shared, false, "a shard connection closed");
                    pending_resubscribe = true;
                }
                _ => {}
            },
            Some(req) = requests.recv() => {
                let (batch, broker::Changes { add, drop, emitters }) =
                    broker::changes(req, &mut requests, &*sink, &prefix, &mut wanted);
                let r = if shared.connected.load(Ordering::Acquire) {
                    let mut r = shard_subscribe(&mut conn, &add, true).await;
                    if r.is_ok() {
                        r = shard_subscribe(&mut conn, &drop, false).await;
                    }
                    if emitters && r.is_ok() {
                        r = broker::subscribe_emitters(&shared, &mut conn).await;
                    }
                    r.map_err(|e| e.to_string())
                } else {
                    Err("redis unavailable".to_owned())
                };
                if let Err(e) = &r {
                    set_up(&shared, false, e);
                    pending_resubscribe = true;
                }
                for req in batch {
                    let _ = req.done.send(r.clone().map_err(BrokerError::failed));
                }
            }
            _ = ping.tick() => {
                let pong = tokio::time::timeout(timeout, redis::cmd("PING").query_async::<Value>(&mut conn)).await;
                match pong {
                    Ok(Ok(_)) => {
                        if !shared.connected.load(Ordering::Acquire) {
                            pending_resubscribe = true;
                        }
                    }
                    Ok(Err(e)) => {
                        set_up(&shared, false, &e.to_string());
                        pending_resubscribe = true;
                    }
                    Err(_) => {
                        set_up(&shared, false, "ping timed out");
                        pending_resubscribe = true;
                    }
                }
            }
            _ = shared.stop.cancelled() => return,
        }
    }
}
