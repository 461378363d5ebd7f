//! The Engine.IO server: its sessions, opening and closing them, the
//! heartbeat, and the packets every transport hands it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use axum::extract::Request;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use roomcast_core::admission::{Admission, Slot};
use roomcast_core::{Disconnect, Frame, Outbox};

use super::http::serve;
use super::packet::Packet;
use super::session::{random_sid, TransportState};
use super::{CloseReason, EngineConfig, EngineHandler, Incoming, Session};

/// Serves requests for sessions that another process owns: a node of a
/// cluster forwards a long-polling request to the node holding the session,
/// so a load balancer needs no sticky sessions.
pub trait SessionForwarder: Send + Sync + 'static {
    /// `sid` is not a session of this server. Returns the owner's response,
    /// or gives the request back when no other process owns the session.
    fn forward(
        &self,
        sid: &str,
        request: Request,
    ) -> roomcast_core::BoxFuture<'static, Result<Response, Request>>;
}

pub(super) struct Forwarding {
    pub(super) sid_prefix: String,
    pub(super) forwarder: Arc<dyn SessionForwarder>,
}

/// An Engine.IO server: its sessions and the route that serves them.
pub struct EngineIo {
    pub(super) me: Weak<EngineIo>,
    pub(super) config: EngineConfig,
    pub(super) sessions: RwLock<HashMap<String, Arc<Session>>>,
    pub(super) admission: Arc<Admission>,
    pub(super) handler: Arc<dyn EngineHandler>,
    pub(super) tasks: TaskTracker,
    pub(super) forwarding: OnceLock<Forwarding>,
}

impl std::fmt::Debug for EngineIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineIo")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl EngineIo {
    /// An Engine.IO server that hands sessions to `handler`, at most
    /// `config.max_sessions` at once.
    pub fn new(config: EngineConfig, handler: Arc<dyn EngineHandler>) -> Arc<EngineIo> {
        let admission = Admission::new(config.max_sessions);
        EngineIo::with_admission(config, handler, admission)
    }

    /// An Engine.IO server whose sessions each take a place of `admission`
    /// (shared with other transports, such as a hub's); a handshake that gets
    /// none is answered 503 (`server_full`, or `shutting_down` once the
    /// admission is closed). `config.max_sessions` is not used.
    pub fn with_admission(
        config: EngineConfig,
        handler: Arc<dyn EngineHandler>,
        admission: Arc<Admission>,
    ) -> Arc<EngineIo> {
        Arc::new_cyclic(|me| EngineIo {
            me: me.clone(),
            config,
            admission,
            sessions: RwLock::new(HashMap::new()),
            handler,
            tasks: TaskTracker::new(),
            forwarding: std::sync::OnceLock::new(),
        })
    }

    /// Starts every new session id with `sid_prefix` (which names this
    /// process to the others) and hands requests for unknown sessions to
    /// `forwarder`. Call once, before serving; later calls are ignored.
    pub fn set_forwarder(&self, sid_prefix: &str, forwarder: Arc<dyn SessionForwarder>) {
        let _ = self.forwarding.set(Forwarding {
            sid_prefix: sid_prefix.to_owned(),
            forwarder,
        });
    }

    fn self_ref(&self) -> Arc<EngineIo> {
        self.me
            .upgrade()
            .expect("an EngineIo is only used through its Arc")
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Open sessions.
    pub fn session_count(&self) -> usize {
        self.sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// A session by id.
    pub fn session(&self, sid: &str) -> Option<Arc<Session>> {
        self.sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(sid)
            .cloned()
    }

    /// The route serving Engine.IO at `path` (e.g. `/engine.io/`, `/socket.io/`),
    /// with and without the trailing slash.
    pub fn router<S: Clone + Send + Sync + 'static>(self: &Arc<Self>, path: &str) -> Router<S> {
        let trimmed = path.trim_end_matches('/');
        let route = any(serve).with_state(self.clone());
        Router::new()
            .route(&format!("{trimmed}/"), route.clone())
            .route(trimmed, route)
    }

    /// Waits up to `drain` for WebSocket tasks to finish (after the hub's
    /// shutdown closed every outbox); returns whether all did.
    pub async fn drain(&self, drain: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(drain, self.tasks.wait()).await.is_ok()
    }

    /// After the hub closed every outbox: ends polling sessions now (a pending
    /// poll gets a close packet; WebSocket sessions close themselves with the
    /// outbox's code).
    pub fn close_polling_sessions(&self) {
        let sessions: Vec<Arc<Session>> = self
            .sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for s in sessions {
            let polling = {
                let st = s.state();
                !st.websocket && !st.upgrading && !st.polling_get
            };
            if polling {
                self.close(&s, CloseReason::Server(Disconnect::SHUTDOWN));
            }
        }
    }

    /// Closes a session (idempotent).
    pub fn close(&self, session: &Arc<Session>, reason: CloseReason) {
        if session.close_once.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::debug!(sid = %session.sid, ?reason, "engine.io session closed");
        *session
            .close_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(reason.clone());
        self.sessions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&session.sid);
        drop(
            session
                .slot
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        session.closed.cancel();
        self.handler.on_close(session, &reason);
    }

    pub(super) fn open_session(
        self: &Arc<Self>,
        headers: &HeaderMap,
        websocket: bool,
        slot: Slot,
    ) -> Arc<Session> {
        let headers = super::owned_headers(headers);
        let prefix = self.forwarding.get().map_or("", |f| f.sid_prefix.as_str());
        let session = Arc::new(Session {
            sid: format!("{prefix}{}", random_sid()),
            outbox: Arc::new(Outbox::new(self.config.max_queue_bytes)),
            state: Mutex::new(TransportState {
                websocket,
                ..Default::default()
            }),
            pong: Notify::new(),
            // The schedule of the first ping: expired if no pong by then.
            pong_deadline: Mutex::new(Some(
                tokio::time::Instant::now() + self.config.ping_interval + self.config.ping_timeout,
            )),
            upgraded: CancellationToken::new(),
            closed: CancellationToken::new(),
            close_once: AtomicBool::new(false),
            close_reason: Mutex::new(None),
            ext: OnceLock::new(),
            headers,
            slot: Mutex::new(Some(slot)),
        });
        self.sessions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(session.sid.clone(), session.clone());
        let open = serde_json::json!({
            "sid": session.sid,
            "upgrades": if websocket { vec![] } else { vec!["websocket"] },
            "pingInterval": self.config.ping_interval.as_millis() as u64,
            "pingTimeout": self.config.ping_timeout.as_millis() as u64,
            "maxPayload": self.config.max_payload,
        });
        let _ = session.outbox.push(Frame::text(format!("0{open}")));
        self.handler.on_open(&session);
        let (eio, s) = (self.clone(), session.clone());
        self.tasks.spawn(async move { eio.heartbeat(s).await });
        session
    }

    /// Pings every interval; closes the session when a pong does not come in time.
    async fn heartbeat(self: Arc<Self>, session: Arc<Session>) {
        let mut next_ping = tokio::time::Instant::now() + self.config.ping_interval;
        loop {
            tokio::select! {
                _ = session.closed.cancelled() => return,
                _ = tokio::time::sleep_until(next_ping) => {}
            }
            if session.outbox.is_closed() {
                // A transport that is not draining (polling client between polls)
                // will not notice; end it here.
                self.close(&session, CloseReason::Server(Disconnect::SHUTDOWN));
                return;
            }
            let waiting = session.pong.notified();
            tokio::pin!(waiting);
            waiting.as_mut().enable();
            let deadline = next_ping + self.config.ping_timeout;
            *session
                .pong_deadline
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(deadline);
            if session.outbox.push(Frame::text("2".to_owned())).is_err() {
                self.close(&session, CloseReason::Server(Disconnect::SLOW));
                return;
            }
            // Biased: a pong that arrived before the deadline counts even when
            // this task gets to run after it.
            tokio::select! {
                biased;
                _ = session.closed.cancelled() => return,
                _ = &mut waiting => {}
                _ = tokio::time::sleep_until(deadline) => {
                    self.close(&session, CloseReason::PingTimeout);
                    return;
                }
            }
            next_ping = tokio::time::Instant::now() + self.config.ping_interval;
            *session
                .pong_deadline
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(next_ping + self.config.ping_timeout);
        }
    }

    /// Closes the session if its pong is overdue; returns whether it is still open.
    pub(super) fn check_pong(&self, session: &Arc<Session>) -> bool {
        let overdue = session
            .pong_deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|d| tokio::time::Instant::now() >= d);
        if overdue {
            self.close(session, CloseReason::PingTimeout);
        }
        !overdue && !session.is_closed()
    }

    /// Handles one decoded packet from the client. Returns false if the session was closed.
    pub(super) fn receive(&self, session: &Arc<Session>, packet: Packet) -> bool {
        match packet {
            Packet::Pong(_) => {
                // The next ping is due one interval from now at the earliest;
                // the heartbeat task moves the deadline later if it runs late.
                *session
                    .pong_deadline
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(
                    tokio::time::Instant::now()
                        + self.config.ping_interval
                        + self.config.ping_timeout,
                );
                session.pong.notify_one();
            }
            Packet::Message(text) => self.handler.on_message(session, Incoming::Text(text)),
            Packet::Binary(data) => self.handler.on_message(session, Incoming::Binary(data)),
            Packet::Close => {
                if session.is_websocket() {
                    self.close(session, CloseReason::ClientClose);
                    return false;
                }
                // A pending (or the next) poll is answered with a noop, then the
                // session ends; if no poll comes, it ends after ping_timeout.
                session.state().closing = true;
                let _ = session.outbox.push(Frame::text("6".to_owned()));
                let (eio, s) = (self.self_ref(), session.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = s.closed.cancelled() => {}
                        _ = tokio::time::sleep(eio.config.ping_timeout) => eio.close(&s, CloseReason::ClientClose),
                    }
                });
                return false;
            }
            Packet::Ping(_) => {
                self.close(
                    session,
                    CloseReason::ProtocolError("ping from the client".into()),
                );
                return false;
            }
            Packet::Open(_) | Packet::Upgrade | Packet::Noop => {
                self.close(
                    session,
                    CloseReason::ProtocolError("unexpected packet".into()),
                );
                return false;
            }
        }
        !session.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Quiet;
    impl EngineHandler for Quiet {
        fn on_open(&self, _: &Arc<Session>) {}
        fn on_message(&self, _: &Arc<Session>, _: Incoming) {}
        fn on_close(&self, _: &Arc<Session>, _: &CloseReason) {}
    }

    /// A request that arrives after pingInterval + pingTimeout finds the
    /// session expired even when the heartbeat task has not run at all (a
    /// busy machine): the deadline is set from the schedule when the session
    /// opens, not when the task gets to send its ping. On a current-thread
    /// runtime that never yields, the heartbeat task cannot run; blocking the
    /// thread stands for the busy machine.
    #[tokio::test(flavor = "current_thread")]
    async fn expiry_is_judged_when_a_request_arrives() {
        let config = EngineConfig {
            ping_interval: Duration::from_millis(200),
            ping_timeout: Duration::from_millis(200),
            ..EngineConfig::default()
        };
        let eio = EngineIo::new(config, Arc::new(Quiet));
        let slot = eio.admission.admit().unwrap();
        let session = eio.open_session(&HeaderMap::new(), false, slot);
        assert!(eio.check_pong(&session), "a fresh session is open");
        std::thread::sleep(Duration::from_millis(450));
        assert!(
            !eio.check_pong(&session),
            "past pingInterval + pingTimeout without a pong, the session is expired"
        );
        assert!(session.is_closed());
    }

    /// A pong moves the deadline one interval plus one timeout ahead of it.
    /// (Timings with 120 ms of slack for a thread that oversleeps.)
    #[tokio::test(flavor = "current_thread")]
    async fn a_pong_moves_the_deadline() {
        let config = EngineConfig {
            ping_interval: Duration::from_millis(100),
            ping_timeout: Duration::from_millis(100),
            ..EngineConfig::default()
        };
        let eio = EngineIo::new(config, Arc::new(Quiet));
        let slot = eio.admission.admit().unwrap();
        let session = eio.open_session(&HeaderMap::new(), false, slot);
        std::thread::sleep(Duration::from_millis(150));
        assert!(eio.receive(&session, Packet::Pong(String::new())));
        std::thread::sleep(Duration::from_millis(80));
        assert!(
            eio.check_pong(&session),
            "past the first deadline (200 ms) but 80 ms after a pong (200 ms allowed)"
        );
        // And the pong set a deadline (it used to clear it): 200 ms after it,
        // with no pong since, the session is expired.
        std::thread::sleep(Duration::from_millis(150));
        assert!(
            !eio.check_pong(&session),
            "expired 200 ms after the last pong"
        );
    }
}
