//! A CONNECT: finding the namespace, recovering a socket that comes back,
//! making the socket and its hub connection, the namespace's handler, and
//! the CONNECT reply or CONNECT_ERROR.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use roomcast_core::Frame;

use crate::engineio::Session;

use super::packet::{Kind, Packet};
use super::recovery::{keep_recoverable, restore, take_resume};
use super::server::Inner;
use super::session::{close_session, push_packet, SessionState};
use super::socket::SocketInner;
use super::Socket;

pub(super) async fn connect(
    inner: &Arc<Inner>,
    session: &Arc<Session>,
    state: &Arc<SessionState>,
    nsp: &str,
    mut auth: Value,
) {
    let Some(ns) = inner.find_namespace(nsp) else {
        let refusal = Packet::simple(
            Kind::ConnectError,
            nsp,
            Some(serde_json::json!({"message": "Invalid namespace"})),
        );
        let _ = push_packet(session, &refusal, &[]);
        return;
    };
    let resume = take_resume(&mut auth);
    let window = inner.config.recovery;
    let mut restored = None;
    if let (Some(_), Some((pid, offset))) = (window, &resume) {
        // The client's offset is the last one it got (none if it got none);
        // one that is not ours (an event's own string argument) tells nothing.
        let client = match offset {
            None => Some(0),
            Some(o) => o.parse::<u64>().ok(),
        };
        if let Some(client) = client {
            restored = restore(inner, pid, nsp)
                .await
                .map(|r| (pid.clone(), client, r));
        }
    }
    let conn = match inner
        .hub
        .connect_shared(ns.protocol.clone(), None, session.outbox().clone())
        .await
    {
        Ok(c) => c,
        Err(e) => {
            let refusal = Packet::simple(
                Kind::ConnectError,
                nsp,
                Some(serde_json::json!({"message": e.to_string()})),
            );
            let _ = push_packet(session, &refusal, &[]);
            return;
        }
    };
    // The socket id is the hub connection id, so that emitters and the HTTP
    // API that name a socket reach it on whichever node it is; a recovered
    // socket keeps the id it had.
    let id = match &restored {
        Some((_, _, r)) => r.sid.clone(),
        None => conn.id().to_string(),
    };
    let pid = window.map(|_| match &restored {
        Some((pid, _, _)) => pid.clone(),
        None => crate::engineio::random_sid(),
    });
    let socket = Socket(Arc::new(SocketInner {
        id,
        nsp: ns.name.clone(),
        hub_conn_id: conn.id(),
        conn: Mutex::new(Some(Arc::new(conn))),
        session: session.clone(),
        io: inner.clone(),
        handlers: Mutex::new(HashMap::new()),
        fallback: Mutex::new(None),
        on_disconnect: Mutex::new(Vec::new()),
        acks: Mutex::new(HashMap::new()),
        next_ack: AtomicU64::new(0),
        connected: AtomicBool::new(false),
        early: Mutex::new(Vec::new()),
        pid,
        recovered: AtomicBool::new(false),
        gone: tokio_util::sync::CancellationToken::new(),
        keeper: Mutex::new(None),
    }));
    let on_connect = ns.on_connect.clone();
    match on_connect(socket.clone(), auth).await {
        Ok(()) => {
            state
                .sockets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(nsp.to_owned(), socket.clone());
            if let Some((_, client, record)) = restored {
                // Another user, or some of what it missed is gone (and part
                // of it may have been sent): have it connect afresh, its pid
                // is used up.
                let same_user = record.user.as_deref() == socket.user().as_deref();
                if !same_user || !socket.recover(record, client).await {
                    tracing::info!(sid = %session.sid, same_user, "closing a Socket.IO session: its recovery failed");
                    close_session(inner, session, "recovery failed");
                    return;
                }
            } else {
                let frames = socket.connect_frames();
                if session.outbox().push_all(frames).is_err() {
                    socket.closed("transport close".to_owned()).await;
                    return;
                }
            }
            if let Some(window) = window {
                let keeper = tokio::spawn(keep_recoverable(socket.clone(), window));
                *socket.0.keeper.lock().unwrap_or_else(|e| e.into_inner()) = Some(keeper);
            }
        }
        Err(refusal) => {
            state.refused.fetch_add(1, Ordering::AcqRel);
            let mut data = serde_json::json!({"message": refusal.message});
            if let Some(d) = refusal.data {
                data["data"] = d;
            }
            let _ = push_packet(
                session,
                &Packet::simple(Kind::ConnectError, nsp, Some(data)),
                &[],
            );
            socket.release().await;
        }
    }
}

impl Socket {
    /// The CONNECT reply (with the pid when recovery is on) and what the
    /// connect handler emitted; marks the socket connected.
    pub(super) fn connect_frames(&self) -> Vec<Frame> {
        let mut data = serde_json::json!({"sid": self.0.id});
        if let Some(pid) = &self.0.pid {
            data["pid"] = pid.as_str().into();
        }
        let reply = Packet::simple(Kind::Connect, &self.0.nsp, Some(data));
        let mut frames = vec![Frame::text(format!("4{}", reply.encode()))];
        frames.append(&mut self.0.early.lock().unwrap_or_else(|e| e.into_inner()));
        self.0.connected.store(true, Ordering::Release);
        // Emits that raced the flag are in `early` too.
        frames.append(&mut self.0.early.lock().unwrap_or_else(|e| e.into_inner()));
        frames
    }
}
