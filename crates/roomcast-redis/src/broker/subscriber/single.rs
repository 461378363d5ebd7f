//! The subscriber on a single Redis server: classic pub/sub on one connection.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use roomcast_core::broker::BrokerError;
use tokio::sync::mpsc;

use super::{attached, changes, dispatch, fixed_channels, settle, subscribe_emitters, Changes};
use crate::broker::SubRequest;
use crate::Shared;

/// Subscribes to `channels` in chunks, so that thousands of rooms do not make one huge command.
async fn subscribe_all(
    sink: &mut redis::aio::PubSubSink,
    channels: &[String],
    subscribe: bool,
) -> redis::RedisResult<()> {
    for chunk in channels.chunks(500) {
        if subscribe {
            sink.subscribe(chunk).await?;
        } else {
            sink.unsubscribe(chunk).await?;
        }
    }
    Ok(())
}

pub(super) async fn run(
    shared: Arc<Shared>,
    client: redis::Client,
    mut requests: mpsc::UnboundedReceiver<SubRequest>,
) {
    let Some((node, sink)) = attached(&shared).await else {
        return;
    };
    let prefix = shared.config.prefix.clone();
    let fixed = fixed_channels(&shared, node);
    let mut wanted: HashSet<String> = HashSet::new();
    let mut backoff = Duration::from_millis(100);
    let ping_every = Duration::from_secs(1).max(shared.config.heartbeat / 2);
    loop {
        let connect =
            tokio::time::timeout(shared.config.command_timeout, client.get_async_pubsub());
        let pubsub = tokio::select! {
            r = connect => match r {
                Ok(Ok(p)) => Some(p),
                Ok(Err(e)) => { shared.failed(&e); None }
                Err(_) => { shared.failed(&"connect timed out"); None }
            },
            _ = shared.stop.cancelled() => return,
        };
        let Some(pubsub) = pubsub else {
            // Commands fail fast from now on instead of waiting for Redis.
            shared.outage.store(true, Ordering::Release);
            // Keep track of what the hub needs while Redis is away.
            let until = tokio::time::Instant::now() + backoff;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    Some(req) = requests.recv() => {
                        if let Some(topic) = &req.topic {
                            settle(&*sink, &prefix, topic, &mut wanted);
                        }
                        let _ = req.done.send(Err(BrokerError::unavailable("redis unavailable")));
                    }
                    _ = shared.stop.cancelled() => return,
                }
            }
            backoff = (backoff * 2).min(shared.config.max_backoff);
            continue;
        };
        let (mut psink, mut stream) = pubsub.split();
        let mut all: Vec<String> = fixed.clone();
        all.extend(wanted.iter().cloned());
        let mut ready = subscribe_all(&mut psink, &all, true).await;
        if ready.is_ok() {
            ready = subscribe_emitters(&shared, &mut psink).await;
        }
        if let Err(e) = ready {
            shared.failed(&e);
            tracing::warn!(error = %e, "redis subscribe failed; reconnecting");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shared.stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(shared.config.max_backoff);
            continue;
        }
        backoff = Duration::from_millis(100);
        shared.metrics.reconnects.fetch_add(1, Ordering::Relaxed);
        shared.set_connected(true);
        shared.outage.store(false, Ordering::Release);
        *shared.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        shared.reconnected.notify_one();
        tracing::info!(channels = all.len(), "redis subscriber connected");
        let mut ping = tokio::time::interval(ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let reason = loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => dispatch(&shared, node, &*sink, msg.get_channel_name(), msg.get_payload_bytes()),
                    None => break "connection closed".to_owned(),
                },
                Some(req) = requests.recv() => {
                    let (batch, Changes { add, drop, emitters }) =
                        changes(req, &mut requests, &*sink, &prefix, &mut wanted);
                    let mut r = subscribe_all(&mut psink, &add, true).await;
                    if r.is_ok() {
                        r = subscribe_all(&mut psink, &drop, false).await;
                    }
                    if emitters && r.is_ok() {
                        r = subscribe_emitters(&shared, &mut psink).await;
                    }
                    let failed = r.as_ref().err().map(|e| e.to_string());
                    for req in batch {
                        let _ = req.done.send(match &failed {
                            None => Ok(()),
                            Some(e) => Err(BrokerError::failed(e.clone())),
                        });
                    }
                    if let Some(e) = failed {
                        break e;
                    }
                }
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(shared.config.command_timeout, psink.ping::<redis::Value>()).await;
                    match pong {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => break e.to_string(),
                        Err(_) => break "ping timed out".to_owned(),
                    }
                }
                _ = shared.stop.cancelled() => return,
            }
        };
        shared.set_connected(false);
        shared.outage.store(true, Ordering::Release);
        shared.failed(&reason);
        tracing::warn!(%reason, "redis subscriber lost its connection; local delivery goes on, reconnecting");
    }
}
