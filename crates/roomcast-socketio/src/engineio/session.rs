//! One Engine.IO session: its outgoing queue, the state of its transports,
//! its heartbeat deadline.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Bytes;
use axum::http::HeaderMap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use roomcast_core::admission::Slot;
use roomcast_core::{Frame, Outbox, PushError};

use super::CloseReason;

#[derive(Debug, Default)]
pub(super) struct TransportState {
    pub(super) websocket: bool,
    /// The client sent a close packet over polling: the next poll gets the
    /// queued noop, then the session ends.
    pub(super) closing: bool,
    pub(super) upgrading: bool,
    pub(super) polling_get: bool,
    pub(super) polling_post: bool,
}

/// One Engine.IO session.
pub struct Session {
    /// The session id.
    pub sid: String,
    pub(super) outbox: Arc<Outbox>,
    pub(super) state: Mutex<TransportState>,
    pub(super) pong: Notify,
    /// When the session expires unless a pong comes first: the next ping's
    /// schedule plus `ping_timeout`, set from the schedule (handshake, last pong)
    /// and not from when the heartbeat task gets to run. Every request checks
    /// it (`now >= deadline` is expired), so a busy machine cannot keep a
    /// timed-out session alive.
    pub(super) pong_deadline: Mutex<Option<tokio::time::Instant>>,
    /// Cancelled when the session moves to WebSocket: a poll still pending then gets 400.
    pub(super) upgraded: CancellationToken,
    pub(super) closed: CancellationToken,
    pub(super) close_once: AtomicBool,
    pub(crate) close_reason: Mutex<Option<CloseReason>>,
    /// The layer above's per-session state.
    pub ext: OnceLock<Arc<dyn std::any::Any + Send + Sync>>,
    /// The handshake request's headers.
    pub headers: HeaderMap,
    /// The place the session holds, freed when it closes.
    pub(super) slot: Mutex<Option<Slot>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("sid", &self.sid)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The session's outgoing queue (shared with the hub connections on it).
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Queues a text message (`4<text>`).
    pub fn send_text(&self, text: &str) -> Result<(), PushError> {
        self.outbox.push(Frame::text(format!("4{text}")))
    }

    /// Queues a binary message.
    pub fn send_binary(&self, data: Bytes) -> Result<(), PushError> {
        self.outbox.push(Frame::Binary(data))
    }

    /// Whether the session is over.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Whether the session runs on WebSocket (from the start or after an upgrade).
    pub fn is_websocket(&self) -> bool {
        self.state().websocket
    }

    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, TransportState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) fn random_sid() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 15];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: fall back to hashing state (ids stay unique, not secret).
        let h = std::collections::hash_map::RandomState::new();
        for (i, b) in bytes.iter_mut().enumerate() {
            *b =
                (std::hash::BuildHasher::hash_one(&h, (i, std::time::Instant::now())) & 0xff) as u8;
        }
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A copy of `headers` that owns its bytes. Parsed header values share the
/// HTTP connection's whole read buffer (16 KiB), so keeping them for a
/// session's life would keep that buffer too.
pub(crate) fn owned_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if let Ok(mut v) = axum::http::HeaderValue::from_bytes(value.as_bytes()) {
            v.set_sensitive(value.is_sensitive());
            out.append(name.clone(), v);
        }
    }
    out
}
