//! Per-connection state the policy keeps: grants, server-owned session keys,
//! expiry, the message-rate bucket and the backend-call slots.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use serde_json::Value;

use roomcast_core::Connection;

use crate::backend::Caller;

use super::Access;

/// A token bucket: `rate` per second, up to `burst` saved.
#[derive(Debug)]
pub(super) struct Bucket {
    pub(super) tokens: f64,
    pub(super) last: Instant,
}

/// Per-connection state the policy needs.
#[derive(Debug)]
pub(crate) struct ClientState {
    pub transport: &'static str,
    pub namespace: Option<String>,
    /// Handshake headers forwarded to the backend on each call.
    pub forwarded: HeaderMap,
    pub(super) granted: Mutex<HashSet<String>>,
    /// Session keys the server side set (connect answer, backend actions):
    /// the client's own `session` command may not change them.
    pub(super) server_keys: Mutex<HashSet<String>>,
    /// Seconds since the epoch; 0 when the credentials do not expire.
    pub(super) expires_at: AtomicU64,
    pub(super) bucket: Mutex<Bucket>,
    /// Messages refused in a row for the rate limit.
    pub(super) strikes: AtomicU32,
    /// The rate limit closed the connection; what is still queued is dropped.
    pub(super) rate_closed: AtomicBool,
    /// Backend calls (event proxy) this connection may have in flight.
    pub rpc_slots: tokio::sync::Semaphore,
    /// Cancelled when the connection closes (ends its expiry timer).
    pub closed: tokio_util::sync::CancellationToken,
}

/// Event-proxy calls one connection may have in flight; more are refused
/// with `too_many_requests` (a native connection runs one command at a time anyway).
pub(crate) const RPC_PER_CONNECTION: usize = 8;

/// Whether a message may go on under the rate limit.
pub(crate) enum Rate {
    Ok,
    /// Refuse this one.
    Refuse,
    /// Refused too many in a row: close the connection (4005).
    Close,
    /// Already told to close: drop the message without an answer.
    Closing,
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ClientState {
    pub(crate) fn new(
        access: &Access,
        transport: &'static str,
        namespace: Option<String>,
        headers: &HeaderMap,
    ) -> ClientState {
        ClientState {
            transport,
            namespace,
            forwarded: access
                .backend
                .as_ref()
                .map(|b| b.forwarded(headers))
                .unwrap_or_default(),
            granted: Mutex::new(HashSet::new()),
            server_keys: Mutex::new(HashSet::new()),
            expires_at: AtomicU64::new(0),
            bucket: Mutex::new(Bucket {
                tokens: access.burst as f64,
                last: Instant::now(),
            }),
            strikes: AtomicU32::new(0),
            rate_closed: AtomicBool::new(false),
            rpc_slots: tokio::sync::Semaphore::new(RPC_PER_CONNECTION),
            closed: tokio_util::sync::CancellationToken::new(),
        }
    }

    pub(super) fn granted(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.granted.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn server_keys(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.server_keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Session data set by the server side: its keys become the server's.
    pub(crate) fn merge_server_session(
        &self,
        conn: &Connection,
        data: serde_json::Map<String, Value>,
    ) -> Result<(), roomcast_core::error::SessionError> {
        self.server_keys().extend(data.keys().cloned());
        conn.merge_session(data)
    }

    /// When the credentials expire (seconds since the epoch).
    pub(crate) fn expires_at(&self) -> Option<u64> {
        Some(self.expires_at.load(Ordering::Relaxed)).filter(|&t| t > 0)
    }

    /// How long until the credentials expire; `None` when they do not.
    pub(crate) fn expires_in(&self) -> Option<std::time::Duration> {
        self.expires_at()
            .map(|t| std::time::Duration::from_secs(t.saturating_sub(now_s())))
    }

    pub(crate) fn caller<'a>(&'a self, conn: &'a Connection, user: Option<&'a str>) -> Caller<'a> {
        Caller {
            conn: conn.id(),
            user,
            transport: self.transport,
            namespace: self.namespace.as_deref(),
            forwarded: &self.forwarded,
        }
    }
}
