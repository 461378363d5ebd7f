//! WebSocket plumbing shared by the native endpoint (`/ws`) and the
//! URL-per-room endpoints: taking a place before the upgrade, the upgrade's
//! buffer and size limits, batched writes that give up on a slow consumer, and
//! what a read error means.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use axum::extract::WebSocketUpgrade;
use axum::http::StatusCode;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};

use roomcast_core::admission::Slot;
use roomcast_core::error::ConnectError;
use roomcast_core::{Connection, Disconnect, Frame};

use crate::auth::Credentials;
use crate::codes::Code;
use crate::command::Commands;
use crate::config::AuthMode;
use crate::http::refuse;

/// Takes a place for a WebSocket before its upgrade, so that a full or
/// draining server answers with an exact HTTP 503.
pub(crate) fn admit(commands: &Commands) -> Result<Slot, Box<Response>> {
    match commands.hub.admit() {
        Ok(slot) => Ok(slot),
        Err(ConnectError::ShuttingDown) => Err(Box::new(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::SHUTTING_DOWN,
            "server shutting down",
        ))),
        Err(_) => {
            commands.metrics.disconnect(Disconnect::SERVER_FULL.code);
            Err(Box::new(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                Code::SERVER_FULL,
                "server full: try another node or later",
            )))
        }
    }
}

/// A handshake axum's extractors refused (not a WebSocket upgrade, a query
/// or path that does not decode): the JSON error body with `bad_request`
/// and the rejection's status and text, instead of axum's plain text.
pub(crate) fn bad_handshake(status: StatusCode, text: &str) -> Response {
    refuse(status, Code::BAD_REQUEST, text)
}

/// The upgrade with the configured buffers and message size limit.
pub(crate) fn configure(ws: WebSocketUpgrade, commands: &Commands) -> WebSocketUpgrade {
    let c = &commands.config;
    let max_message = c.limits.max_message_bytes;
    ws.read_buffer_size(c.websocket.read_buffer_bytes)
        .write_buffer_size(c.websocket.write_buffer_bytes)
        .max_message_size(max_message)
        .max_frame_size(max_message)
}

/// The close code for a connection the hub could not open.
pub(crate) fn connect_failed(err: &ConnectError) -> Disconnect {
    match err {
        ConnectError::ServerFull { .. } => Disconnect::SERVER_FULL,
        ConnectError::ShuttingDown => Disconnect::SHUTDOWN,
        ConnectError::Presence(_) => Disconnect::INTERNAL,
    }
}

/// What a read error means (close 1009, 1007, 1002, or none for a client
/// gone away): the one mapping every WebSocket front end uses.
pub(crate) fn read_error(e: &axum::Error) -> Option<Disconnect> {
    roomcast_socketio::engineio::ws_read_error(e)
}

pub(crate) fn to_message(frame: Frame) -> Message {
    match frame {
        // Text frames are built from `String`s, so this never falls back.
        Frame::Text(b) => Message::Text(Utf8Bytes::try_from(b).unwrap_or_default()),
        Frame::Binary(b) => Message::Binary(b),
    }
}

/// Writes the batch with one flush. Gives up when the client cannot take it:
/// its queue overflowed meanwhile, or the write took longer than `limit`.
pub(crate) async fn write_batch(
    conn: &Connection,
    socket: &mut WebSocket,
    batch: &mut Vec<Frame>,
    limit: Duration,
) -> Result<(), Option<Disconnect>> {
    let write = async {
        for frame in batch.drain(..) {
            socket.feed(to_message(frame)).await?;
        }
        socket.flush().await
    };
    tokio::select! {
        r = tokio::time::timeout(limit, write) => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(None),
            Err(_) => Err(Some(Disconnect::SLOW)),
        },
        _ = overflowed(conn) => Err(Some(Disconnect::SLOW)),
    }
}

/// Resolves when the connection's outbox overflowed (a slow consumer).
async fn overflowed(conn: &Connection) {
    loop {
        if conn.outbox().closed().await == Disconnect::SLOW {
            return;
        }
        // Closed for another reason: the queued frames still go out.
        std::future::pending::<()>().await;
    }
}

/// The credentials a WebSocket presents at its upgrade: a token (`?token=`
/// or `Authorization`), the handshake itself in proxy mode, or none.
pub(crate) fn credentials(commands: &Commands, token: Option<String>) -> Option<Credentials> {
    match token {
        Some(t) => Some(Credentials::Token(t)),
        None if commands.config.auth.mode == AuthMode::Proxy => Some(Credentials::Handshake),
        None => None,
    }
}

/// How long a closing handshake may take before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Sends `goodbye` (the native `disconnect` frame; endpoints send none) and a
/// close frame with the code, then gives the client a moment to answer.
pub(crate) async fn close(socket: &mut WebSocket, d: &Disconnect, goodbye: Option<Frame>) {
    let closing = async {
        if let Some(frame) = goodbye {
            socket.feed(to_message(frame)).await?;
        }
        socket
            .send(Message::Close(Some(CloseFrame {
                code: d.code,
                reason: Utf8Bytes::from(d.reason.as_ref()),
            })))
            .await?;
        // Wait for the client's close frame (or anything) so the close is clean.
        while let Some(Ok(m)) = socket.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
        Ok::<_, axum::Error>(())
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, closing).await;
}

/// Ends a served connection: closes with `reason` (or, when the client
/// closed, sends our half of the handshake), sends the `disconnect` webhook
/// and removes the connection from the hub.
pub(crate) async fn finish(
    commands: &Commands,
    conn: Connection,
    mut socket: WebSocket,
    reason: Option<Disconnect>,
    goodbye: impl FnOnce(&Disconnect) -> Option<Frame>,
) {
    let why = match &reason {
        Some(d) => d.reason.to_string(),
        None => "client closed".to_owned(),
    };
    if let Some(d) = reason {
        commands.metrics.disconnect(d.code);
        close(&mut socket, &d, goodbye(&d)).await;
    } else {
        let _ = tokio::time::timeout(CLOSE_GRACE, socket.flush()).await;
    }
    // Posted once presence no longer has the connection, so that a backend
    // asking whether the user is still online gets the answer after this.
    conn.close().await;
    commands
        .access
        .webhook("disconnect", &conn, None, Some(&why));
}
