//! Bridges for existing Socket.IO emitters that publish into Redis:
//! python-socketio's `RedisManager`/`AsyncRedisManager` (write-only) and
//! Node's `@socket.io/redis-emitter`.
//!
//! Every node subscribes to the emitters' channels and applies each message
//! to its own connections, in the order received, by one task per node: an
//! emitter's `enter_room` followed by an emit to that room reaches the socket.
//! Socket.IO sockets are selected by namespace, room and socket id (a socket's
//! id is its roomcast connection id); native clients count as members of the
//! default namespace `/`. Malformed and unsupported messages are logged and
//! counted, never applied.

pub mod decode;

use std::sync::atomic::{AtomicU64, Ordering};

use roomcast_core::broker::MetricSample;
use roomcast_core::{Disconnect, Publication, Selection, Target, WeakHub};
use tokio::sync::mpsc;

use decode::{DecodeError, EmitterCommand, Limits, Selector};

/// Which emitter formats a node accepts, and on which channels.
#[derive(Debug, Clone, Default)]
pub struct EmitterConfig {
    /// python-socketio's channel (its default is `socketio`); `None`: off.
    pub python_socketio: Option<String>,
    /// The Node emitter's key prefix (its default is `socket.io`); `None`: off.
    pub socket_io: Option<String>,
    /// Caps on decoded messages.
    pub limits: Limits,
}

/// How many emitter messages a node queues before it drops them (and counts the drops).
const QUEUE: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Python,
    NodeBroadcast,
    NodeRequest,
}

impl Source {
    fn emitter(self) -> &'static str {
        match self {
            Source::Python => "python-socketio",
            Source::NodeBroadcast | Source::NodeRequest => "socket.io",
        }
    }
}

#[derive(Default)]
struct Counts {
    applied: AtomicU64,
    malformed: AtomicU64,
    unsupported: AtomicU64,
    dropped: AtomicU64,
}

struct Message {
    source: Source,
    namespace: String,
    bytes: Vec<u8>,
}

/// The bridges of one node: classifies messages by channel and hands them to
/// the task that applies them.
pub(crate) struct Bridge {
    config: EmitterConfig,
    tx: mpsc::Sender<Message>,
    counts: std::sync::Arc<[Counts; 2]>,
}

impl Bridge {
    pub(crate) fn new(hub: WeakHub, config: EmitterConfig) -> Bridge {
        let (tx, rx) = mpsc::channel(QUEUE);
        let counts = std::sync::Arc::new([Counts::default(), Counts::default()]);
        tokio::spawn(apply_loop(hub, rx, config.limits, counts.clone()));
        Bridge { config, tx, counts }
    }

    /// The enabled emitters' channels (classic pub/sub: emitters PUBLISH), and
    /// channel patterns.
    pub(crate) fn channels(&self) -> (Vec<String>, Vec<String>) {
        let channels = self.config.python_socketio.iter().cloned().collect();
        let patterns = match &self.config.socket_io {
            Some(p) => vec![format!("{p}#*"), format!("{p}-request#*")],
            None => Vec::new(),
        };
        (channels, patterns)
    }

    fn classify(&self, channel: &str) -> Option<(Source, String)> {
        if self.config.python_socketio.as_deref() == Some(channel) {
            return Some((Source::Python, String::new()));
        }
        let prefix = self.config.socket_io.as_deref()?;
        let rest = channel.strip_prefix(prefix)?;
        let (source, rest) = if let Some(r) = rest.strip_prefix("-request#") {
            (Source::NodeRequest, r)
        } else if let Some(r) = rest.strip_prefix('#') {
            (Source::NodeBroadcast, r)
        } else {
            return None;
        };
        // `<nsp>#` or `<nsp>#<room>#`: the namespace runs to the first `#`.
        let nsp = rest.split('#').next().unwrap_or("/");
        Some((source, nsp.to_owned()))
    }

    /// A message on one of the emitter channels; queued for the apply task.
    pub(crate) fn handle(&self, channel: &str, bytes: &[u8]) {
        let Some((source, namespace)) = self.classify(channel) else {
            return;
        };
        let msg = Message {
            source,
            namespace,
            bytes: bytes.to_vec(),
        };
        if self.tx.try_send(msg).is_err() {
            self.counts[slot(source)]
                .dropped
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(channel, "emitter queue full; message dropped");
        }
    }

    pub(crate) fn metrics(&self) -> Vec<MetricSample> {
        let mut out = Vec::new();
        for (source, counts) in [Source::Python, Source::NodeBroadcast]
            .into_iter()
            .zip(self.counts.iter())
        {
            for (result, n) in [
                ("applied", &counts.applied),
                ("malformed", &counts.malformed),
                ("unsupported", &counts.unsupported),
                ("dropped", &counts.dropped),
            ] {
                out.push(MetricSample {
                    name: "roomcast_emitter_messages_total",
                    kind: "counter",
                    help: "Messages from Socket.IO emitters on Redis, by emitter and result.",
                    labels: format!("emitter=\"{}\",result=\"{result}\"", source.emitter()),
                    value: n.load(Ordering::Relaxed),
                });
            }
        }
        out
    }
}

fn slot(source: Source) -> usize {
    match source {
        Source::Python => 0,
        Source::NodeBroadcast | Source::NodeRequest => 1,
    }
}

async fn apply_loop(
    hub: WeakHub,
    mut rx: mpsc::Receiver<Message>,
    limits: Limits,
    counts: std::sync::Arc<[Counts; 2]>,
) {
    while let Some(msg) = rx.recv().await {
        let Some(hub) = hub.upgrade() else { return };
        let counts = &counts[slot(msg.source)];
        let decoded = match msg.source {
            Source::Python => decode::python_socketio(&msg.bytes, &limits),
            Source::NodeBroadcast => decode::node_broadcast(&msg.bytes, &limits),
            Source::NodeRequest => decode::node_request(&msg.bytes, &msg.namespace, &limits),
        };
        let emitter = msg.source.emitter();
        match decoded {
            Ok(cmd) => match apply(&hub, cmd).await {
                Ok(n) => {
                    counts.applied.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(emitter, connections = n, "applied an emitter message");
                }
                Err(e) => {
                    counts.unsupported.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(emitter, error = %e, "emitter message refused; ignored");
                }
            },
            Err(DecodeError::Unsupported(what)) => {
                counts.unsupported.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(emitter, what, "emitter message not supported; ignored");
            }
            Err(e) => {
                counts.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(emitter, error = %e, "malformed emitter message; ignored");
            }
        }
    }
}

fn selection(s: Selector) -> Selection {
    Selection {
        namespace: Some(s.namespace),
        rooms: s.rooms,
        except: s.except,
    }
}

/// Refuses room names roomcast does not accept (rather than silently reaching nobody).
fn check_rooms<'a>(
    hub: &roomcast_core::Hub,
    rooms: impl IntoIterator<Item = &'a String>,
) -> Result<(), String> {
    let max = hub.config().max_room_name_bytes;
    for room in rooms {
        roomcast_core::room::validate_room_name(room, max)
            .map_err(|e| format!("room {room:?}: {e}"))?;
    }
    Ok(())
}

/// Applies one command to the hub's local connections; returns how many it
/// touched. An error means the command was refused and changed nothing.
async fn apply(hub: &roomcast_core::Hub, cmd: EmitterCommand) -> Result<usize, String> {
    match &cmd {
        EmitterCommand::Emit { selector, .. } | EmitterCommand::Disconnect { selector, .. } => {
            check_rooms(hub, selector.rooms.iter().chain(&selector.except))?
        }
        EmitterCommand::Join { selector, rooms } | EmitterCommand::Leave { selector, rooms } => {
            check_rooms(
                hub,
                selector.rooms.iter().chain(&selector.except).chain(rooms),
            )?
        }
        EmitterCommand::CloseRoom { room, .. } => check_rooms(hub, [room])?,
        EmitterCommand::ServerSideEmit { .. } => {}
    }
    Ok(match cmd {
        EmitterCommand::Emit {
            selector,
            event,
            mut args,
        } => {
            if event.is_empty() || event.len() > 200 {
                return Err("event name must be 1 to 200 bytes".into());
            }
            let spread = args.len() != 1;
            let value = if spread {
                serde_json::Value::Array(args)
            } else {
                args.pop().unwrap_or_default()
            };
            let data = serde_json::value::to_raw_value(&value).map_err(|e| e.to_string())?;
            // The selection picks the recipients; the target is what their
            // frames say: the room of an emit to one room, as for any room
            // publication (an emit to several rooms names none).
            let target = match selector.rooms.as_slice() {
                [room] => Target::Room(room.clone()),
                _ => Target::All,
            };
            let mut p = Publication::new(target, event, data);
            p.spread = spread;
            hub.publish_selected(&selection(selector), p)
        }
        EmitterCommand::Join { selector, rooms } => {
            hub.join_selected(&selection(selector), &rooms).await
        }
        EmitterCommand::Leave { selector, rooms } => {
            hub.leave_selected(&selection(selector), &rooms).await
        }
        EmitterCommand::Disconnect { selector, .. } => {
            hub.disconnect_selected(&selection(selector), Disconnect::BY_SERVER)
        }
        EmitterCommand::CloseRoom { namespace, room } => {
            // The room's members of that namespace leave it.
            let selection = Selection {
                namespace: Some(namespace),
                rooms: vec![room.clone()],
                except: Vec::new(),
            };
            hub.leave_selected(&selection, &[room]).await
        }
        EmitterCommand::ServerSideEmit { namespace, args } => {
            tracing::info!(%namespace, args = args.len(), "serverSideEmit from an emitter; roomcast has no server-side handlers for it");
            0
        }
    })
}
