//! Connection-state recovery: the record a socket that may come back is
//! recovered from (kept in the history store under its private id), keeping
//! it while the socket is connected, and restoring a socket from it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use roomcast_core::history::Since;

use super::server::Inner;
use super::Socket;

/// What a Socket.IO client that may come back is recovered from, kept in the
/// history store under its private id (`pid`).
#[derive(Debug, Serialize, serde::Deserialize)]
pub(super) struct Record {
    pub(super) sid: String,
    nsp: String,
    pub(super) user: Option<String>,
    data: serde_json::Map<String, Value>,
    rooms: Vec<RoomMark>,
}

/// A room of a [`Record`], and where the socket joined its history stream.
#[derive(Debug, Serialize, serde::Deserialize)]
struct RoomMark {
    room: String,
    #[serde(default)]
    epoch: Option<String>,
    #[serde(default)]
    seq: Option<u64>,
}

/// Disconnect reasons after which a client may recover, as with Node.
pub(super) const RECOVERABLE: [&str; 4] = [
    "transport close",
    "transport error",
    "ping timeout",
    "server shutting down",
];

/// Takes `pid` and `offset` out of a CONNECT payload (they are not the
/// application's: the pid is the client's secret).
pub(super) fn take_resume(auth: &mut Value) -> Option<(String, Option<String>)> {
    let obj = auth.as_object_mut()?;
    let pid = obj.remove("pid");
    let offset = obj.remove("offset");
    let pid = pid?.as_str()?.to_owned();
    Some((pid, offset.and_then(|o| o.as_str().map(str::to_owned))))
}

/// The stored record under `pid` for namespace `nsp`, if it is still kept.
pub(super) async fn restore(inner: &Inner, pid: &str, nsp: &str) -> Option<Record> {
    match inner.hub.history_store().take_session(pid).await {
        Ok(Some(text)) => serde_json::from_str::<Record>(&text)
            .ok()
            .filter(|r| r.nsp == nsp),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read a Socket.IO recovery session; connecting afresh");
            None
        }
    }
}

/// Keeps the socket's recovery record in the history store while it is
/// connected (so that it survives this node), rewritten whenever its rooms or
/// data change and refreshed before it expires.
pub(super) async fn keep_recoverable(socket: Socket, window: Duration) {
    let period = (window / 2).max(Duration::from_millis(500));
    let Some(conn) = socket.conn() else { return };
    loop {
        if socket.0.gone.is_cancelled() {
            return;
        }
        socket.save(window + period).await;
        tokio::select! {
            _ = conn.changed() => {}
            _ = tokio::time::sleep(period) => {}
            _ = socket.0.gone.cancelled() => return,
        }
    }
}

impl Socket {
    /// Restores a recovered socket's data and rooms, and replays what it
    /// missed (after sequence number `client`) after the CONNECT reply.
    /// False if some room's missed events were gone.
    pub(super) async fn recover(&self, record: Record, client: u64) -> bool {
        let Some(conn) = self.conn() else {
            return false;
        };
        let hub = self.hub();
        let rooms: Vec<(String, Since)> = record
            .rooms
            .into_iter()
            .map(|m| {
                let since = if hub.config().rooms.history_for(&m.room).is_some() {
                    Since::Seq {
                        seq: client.max(m.seq.unwrap_or(0)),
                        epoch: m.epoch,
                    }
                } else {
                    Since::Latest
                };
                (m.room, since)
            })
            .collect();
        let _ = conn.merge_session(record.data);
        self.0.recovered.store(true, Ordering::Release);
        let me = self.clone();
        let done = conn.rejoin(rooms, move |_| me.connect_frames()).await;
        match done {
            Ok(r) => r.iter().all(|r| !r.history || r.recovered),
            Err(e) => {
                tracing::info!(error = %e, "a recovered socket could not rejoin its rooms");
                false
            }
        }
    }

    /// The socket's recovery record, from its connection.
    fn record(&self) -> Option<String> {
        let conn = self.conn()?;
        let marks = conn.marks();
        let record = Record {
            sid: self.0.id.clone(),
            nsp: self.0.nsp.clone(),
            user: conn.user().as_deref().map(str::to_owned),
            data: conn.session(),
            rooms: conn
                .rooms()
                .into_iter()
                .map(|room| {
                    let mark = marks.get(&room);
                    RoomMark {
                        epoch: mark.map(|m| m.epoch.to_string()),
                        seq: mark.map(|m| m.seq),
                        room,
                    }
                })
                .collect(),
        };
        serde_json::to_string(&record).ok()
    }

    /// Writes the recovery record, to be kept for `ttl`.
    pub(super) async fn save(&self, ttl: Duration) {
        let (Some(pid), Some(record)) = (&self.0.pid, self.record()) else {
            return;
        };
        if let Err(e) = self
            .hub()
            .history_store()
            .keep_session(pid, record, ttl)
            .await
        {
            // Every socket would say so during an outage, which the store reports itself.
            tracing::debug!(error = %e, "cannot keep a Socket.IO recovery session");
        }
    }
}
