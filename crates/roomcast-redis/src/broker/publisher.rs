//! The publisher task: one per node, it sends envelopes and history appends
//! to Redis in pipelined batches, in the order they were queued.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::Shared;

/// One envelope (or history append) waiting for the publisher task.
pub(crate) struct Outgoing {
    what: What,
    /// Told how it went.
    done: oneshot::Sender<Reply>,
}

enum What {
    /// PUBLISH an envelope on a channel.
    Publish { channel: String, bytes: Vec<u8> },
    /// Run a script that appends to a room's history and publishes.
    Script(redis::Cmd),
}

/// How an [`Outgoing`] went.
pub(crate) enum Reply {
    /// Its batch was sent (or not).
    Sent(Result<(), String>),
    /// The script's answer.
    Value(Result<redis::Value, String>),
}

impl Outgoing {
    /// An envelope to PUBLISH on `channel`, answered once its batch went out.
    pub(crate) fn publish(
        channel: String,
        bytes: Vec<u8>,
        done: oneshot::Sender<Reply>,
    ) -> Outgoing {
        Outgoing {
            what: What::Publish { channel, bytes },
            done,
        }
    }

    /// A history append, answered with the script's value.
    pub(crate) fn script(cmd: redis::Cmd, done: oneshot::Sender<Reply>) -> Outgoing {
        Outgoing {
            what: What::Script(cmd),
            done,
        }
    }
}

/// The most envelopes one pipelined batch carries.
const PUBLISH_BATCH: usize = 1024;

/// The publisher task: sends queued envelopes to Redis in pipelined batches, in order.
pub(crate) async fn publisher(shared: Arc<Shared>, mut outgoing: mpsc::Receiver<Outgoing>) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    loop {
        tokio::select! {
            n = outgoing.recv_many(&mut batch, PUBLISH_BATCH) => if n == 0 { return },
            _ = shared.stop.cancelled() => return,
        }
        let n = batch.len() as u64;
        if shared.commands.get().is_none() {
            // A cluster node's first connection is still being made: give it
            // the command timeout before counting this batch as unsent.
            let mut up = shared.up.subscribe();
            let _ = tokio::time::timeout(shared.config.command_timeout, up.wait_for(|u| *u)).await;
        }
        let sent = match shared.conn() {
            Ok(conn) => send(&shared, conn, &batch).await,
            Err(e) => Err(e),
        };
        let mut values = match &sent {
            Ok(v) => v.clone().into_iter(),
            Err(_) => Vec::new().into_iter(),
        };
        let sent = sent.map(|_| ());
        for item in batch.drain(..) {
            let reply = match item.what {
                What::Publish { .. } => Reply::Sent(sent.clone()),
                What::Script(_) => Reply::Value(match &sent {
                    Ok(()) => values
                        .next()
                        .ok_or_else(|| "redis gave no answer".to_owned()),
                    Err(e) => Err(e.clone()),
                }),
            };
            let _ = item.done.send(reply);
        }
        match sent {
            Ok(()) => {
                shared.metrics.published.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                shared.failed(&e);
                shared.metrics.unsent.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(envelopes = n, error = %e, "could not send envelopes to the other nodes");
            }
        }
    }
}

/// Sends a batch: one pipeline to a single server; in a cluster, where one
/// pipeline cannot span hash slots, one command per envelope, all in flight
/// at once (each shard's connection keeps them in order per channel).
/// Returns the scripts' answers, in order.
async fn send(
    shared: &Shared,
    mut conn: crate::Commands,
    batch: &[Outgoing],
) -> Result<Vec<redis::Value>, String> {
    let cmd = shared.publish_cmd();
    if !shared.config.cluster {
        let mut pipe = redis::pipe();
        for item in batch {
            match &item.what {
                What::Publish { channel, bytes } => {
                    pipe.cmd(cmd).arg(channel).arg(bytes).ignore();
                }
                What::Script(script) => {
                    pipe.add_command(script.clone());
                }
            }
        }
        return pipe
            .query_async::<Vec<redis::Value>>(&mut conn)
            .await
            .map_err(|e| e.to_string());
    }
    let sends = batch.iter().filter_map(|item| match &item.what {
        What::Publish { channel, bytes } => {
            let mut conn = conn.clone();
            Some(async move {
                redis::cmd(cmd)
                    .arg(channel)
                    .arg(bytes)
                    .query_async::<()>(&mut conn)
                    .await
            })
        }
        // History refuses to start in a cluster.
        What::Script(_) => None,
    });
    let results = futures_util::future::join_all(sends).await;
    match results.into_iter().find_map(Result::err) {
        Some(e) => Err(e.to_string()),
        None => Ok(Vec::new()),
    }
}
