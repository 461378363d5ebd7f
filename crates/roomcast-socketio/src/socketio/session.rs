//! One Engine.IO session seen from Socket.IO: its sockets (one per
//! namespace), the bounded queue of received messages and the task that
//! decodes them in order, reassembles binary packets and dispatches them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;

use roomcast_core::{Frame, PushError};

use crate::engineio::{CloseReason, EngineHandler, Incoming, Session};

use super::connect::connect;
use super::packet::{self, Kind, Packet};
use super::server::Inner;
use super::{AckSender, Payload, Socket};

/// Per Engine.IO session: its sockets, the queue its driver task reads, and a
/// binary packet waiting for its attachments.
pub(super) struct SessionState {
    tx: mpsc::UnboundedSender<Queued>,
    /// The weight of the packets waiting in `tx` (see [`weight`]); bounded by
    /// [`SessionState::max_queued`].
    queued: AtomicUsize,
    max_queued: usize,
    /// CONNECTs refused on this session so far.
    pub(super) refused: AtomicU32,
    pub(super) sockets: Mutex<HashMap<String, Socket>>,
}

/// What the session's task handles, in order.
enum Queued {
    /// A message and its weight.
    Packet(Incoming, usize),
    /// The Engine.IO session closed, for this reason: after the packets
    /// before it (a client's DISCONNECT then its transport close are a
    /// namespace disconnect, not a lost transport).
    Closed(String),
}

/// What a waiting packet costs: its bytes plus the bookkeeping of one queue
/// entry, so that a flood of tiny packets counts as much as it weighs.
fn weight(message: &Incoming) -> usize {
    let len = match message {
        Incoming::Text(t) => t.len(),
        Incoming::Binary(b) => b.len(),
    };
    len + 64
}

/// Packets may wait for the session's task up to this many times the
/// Engine.IO max payload (weighed with [`weight`]); more close the session.
const QUEUED_PAYLOADS: usize = 4;

/// Refused CONNECTs a session may make; the next one closes it.
pub const MAX_REFUSED_CONNECTS: u32 = 5;

pub(super) struct Handler(pub(super) Weak<Inner>);

pub(super) fn state_of(session: &Session) -> Option<Arc<SessionState>> {
    session.ext.get()?.clone().downcast::<SessionState>().ok()
}

impl EngineHandler for Handler {
    fn on_open(&self, session: &Arc<Session>) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(SessionState {
            tx,
            queued: AtomicUsize::new(0),
            max_queued: QUEUED_PAYLOADS * inner.config.engine.max_payload.max(1),
            refused: AtomicU32::new(0),
            sockets: Mutex::new(HashMap::new()),
        });
        let _ = session.ext.set(state.clone());
        tokio::spawn(drive(inner, session.clone(), state, rx));
    }

    fn on_message(&self, session: &Arc<Session>, message: Incoming) {
        let Some(state) = state_of(session) else {
            return;
        };
        if session.is_closed() {
            return;
        }
        let w = weight(&message);
        if state.queued.fetch_add(w, Ordering::AcqRel) + w > state.max_queued {
            // The client sends faster than its packets are handled: refuse to
            // buffer without bound.
            if let Some(inner) = self.0.upgrade() {
                tracing::info!(sid = %session.sid, "closing a Socket.IO session: too many packets waiting");
                close_session(&inner, session, "too many packets waiting");
            }
            return;
        }
        let _ = state.tx.send(Queued::Packet(message, w));
    }

    fn farewell(&self, session: &Arc<Session>) -> Vec<Frame> {
        let Some(state) = state_of(session) else {
            return Vec::new();
        };
        let sockets = state.sockets.lock().unwrap_or_else(|e| e.into_inner());
        sockets
            .keys()
            .map(|nsp| {
                Frame::text(format!(
                    "4{}",
                    Packet::simple(Kind::Disconnect, nsp, None).encode()
                ))
            })
            .collect()
    }

    fn on_close(&self, session: &Arc<Session>, reason: &CloseReason) {
        let Some(state) = state_of(session) else {
            return;
        };
        let reason = reason.as_str().to_owned();
        // The session's task closes the sockets once it has handled what came before.
        if let Err(mpsc::error::SendError(Queued::Closed(reason))) =
            state.tx.send(Queued::Closed(reason))
        {
            for s in drain_sockets(&state) {
                let reason = reason.clone();
                tokio::spawn(async move { s.closed(reason).await });
            }
        }
    }
}

fn drain_sockets(state: &SessionState) -> Vec<Socket> {
    state
        .sockets
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
        .map(|(_, s)| s)
        .collect()
}

/// The per-session task: decodes packets in order and dispatches them; once
/// the session closed, handles only the DISCONNECTs that came before the
/// close, then closes the remaining sockets.
async fn drive(
    inner: Arc<Inner>,
    session: Arc<Session>,
    state: Arc<SessionState>,
    rx: mpsc::UnboundedReceiver<Queued>,
) {
    let reason = handle_packets(&inner, &session, &state, rx).await;
    for s in drain_sockets(&state) {
        s.closed(reason.clone()).await;
    }
}

/// Why the session closed, as Socket.IO names it.
fn close_reason(session: &Session) -> String {
    session
        .close_reason
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map_or("transport close", |r| r.as_str())
        .to_owned()
}

/// Handles the session's packets until it closes; returns why it closed.
async fn handle_packets(
    inner: &Arc<Inner>,
    session: &Arc<Session>,
    state: &Arc<SessionState>,
    mut rx: mpsc::UnboundedReceiver<Queued>,
) -> String {
    let deadline = tokio::time::Instant::now() + inner.config.connect_timeout;
    let mut pending: Option<(Packet, Vec<Bytes>)> = None;
    // The connect timeout applies until the first namespace is joined; a client
    // that later leaves every namespace keeps its session, as with Node.
    let mut ever_connected = false;
    loop {
        ever_connected = ever_connected
            || !state
                .sockets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty();
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = tokio::time::sleep_until(deadline), if !ever_connected && pending.is_none() && !session.is_closed() => {
                if state.sockets.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
                    close_session(inner, session, "connect timeout");
                    return close_reason(session);
                }
                continue;
            }
        };
        let (msg, w) = match msg {
            Some(Queued::Packet(msg, w)) => (msg, w),
            Some(Queued::Closed(reason)) => return reason,
            None => return close_reason(session),
        };
        state.queued.fetch_sub(w, Ordering::AcqRel);
        if session.is_closed() {
            // What the client said before it went: only a namespace disconnect matters now.
            if let Incoming::Text(text) = &msg {
                if let Ok(p) = Packet::decode(text) {
                    if p.kind == Kind::Disconnect {
                        dispatch(inner, session, state, p, Vec::new()).await;
                    }
                }
            }
            continue;
        }
        let ready = match (msg, pending.take()) {
            (Incoming::Text(text), None) => match Packet::decode(&text) {
                Ok(p) if p.kind.is_binary() && p.attachments > 0 => {
                    if !p
                        .data
                        .as_ref()
                        .is_some_and(|d| packet::placeholders_valid(d, p.attachments))
                    {
                        close_session(inner, session, "invalid placeholders");
                        return close_reason(session);
                    }
                    pending = Some((p, Vec::new()));
                    None
                }
                Ok(p) => Some((p, Vec::new())),
                Err(e) => {
                    close_session(inner, session, &e.to_string());
                    return close_reason(session);
                }
            },
            (Incoming::Binary(b), Some((p, mut bins))) => {
                bins.push(b);
                if bins.len() == p.attachments {
                    Some((p, bins))
                } else {
                    pending = Some((p, bins));
                    None
                }
            }
            (Incoming::Text(_), Some(_)) | (Incoming::Binary(_), None) => {
                close_session(inner, session, "unexpected binary or missing attachment");
                return close_reason(session);
            }
        };
        if let Some((p, bins)) = ready {
            dispatch(inner, session, state, p, bins).await;
        }
    }
}

pub(super) fn close_session(inner: &Inner, session: &Arc<Session>, why: &str) {
    if let Some(engine) = inner.engine() {
        engine.close(session, CloseReason::ProtocolError(why.to_owned()));
    }
}

pub(super) fn push_packet(
    session: &Session,
    p: &Packet,
    binary: &[Bytes],
) -> Result<(), PushError> {
    let mut frames = Vec::with_capacity(1 + binary.len());
    frames.push(Frame::text(format!("4{}", p.encode())));
    frames.extend(binary.iter().cloned().map(Frame::Binary));
    session.outbox().push_all(frames)
}

async fn dispatch(
    inner: &Arc<Inner>,
    session: &Arc<Session>,
    state: &Arc<SessionState>,
    p: Packet,
    bins: Vec<Bytes>,
) {
    let existing = state
        .sockets
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&p.nsp)
        .cloned();
    match p.kind {
        Kind::Connect => {
            if existing.is_some() {
                return;
            }
            if state.refused.load(Ordering::Acquire) >= MAX_REFUSED_CONNECTS {
                tracing::info!(sid = %session.sid, "closing a Socket.IO session: too many refused CONNECTs");
                close_session(inner, session, "too many refused CONNECTs");
                return;
            }
            connect(
                inner,
                session,
                state,
                &p.nsp,
                p.data.unwrap_or_else(|| Value::Object(Default::default())),
            )
            .await;
        }
        Kind::Disconnect => {
            let removed = state
                .sockets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&p.nsp);
            if let Some(s) = removed {
                s.closed("client namespace disconnect".to_owned()).await;
            }
        }
        Kind::Event | Kind::BinaryEvent => {
            let Some(socket) = existing else { return };
            let mut args = match p.data {
                Some(Value::Array(a)) => a,
                _ => return,
            };
            let name = match args.remove(0) {
                Value::String(s) => s,
                other => other.to_string(),
            };
            let ack = p.id.map(|id| AckSender {
                socket: socket.clone(),
                id,
            });
            socket
                .dispatch_event(name, Payload { args, binary: bins }, ack)
                .await;
        }
        Kind::Ack | Kind::BinaryAck => {
            let Some(socket) = existing else { return };
            let (Some(id), Some(Value::Array(args))) = (p.id, p.data) else {
                return;
            };
            let waiter = socket
                .0
                .acks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            if let Some(tx) = waiter {
                let _ = tx.send(Payload { args, binary: bins });
            }
        }
        Kind::ConnectError => close_session(inner, session, "CONNECT_ERROR from a client"),
    }
}
