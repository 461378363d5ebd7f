//! The long-polling transport: a GET takes every queued packet as one
//! payload, a POST brings the client's packets.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use roomcast_core::{Disconnect, Frame};

use super::http::EioError;
use super::packet::{self, Encoded};
use super::{CloseReason, EngineIo, Session};

impl EngineIo {
    pub(super) async fn poll(
        self: Arc<Self>,
        session: Arc<Session>,
        cors: Option<HeaderMap>,
    ) -> Response {
        {
            let mut st = session.state();
            if st.websocket {
                drop(st);
                return EioError::BadRequest.response(cors);
            }
            if st.polling_get {
                drop(st);
                // A second concurrent poll: the first gets a close packet.
                self.close(
                    &session,
                    CloseReason::ProtocolError("duplicate poll".into()),
                );
                return EioError::BadRequest.response(cors);
            }
            st.polling_get = true;
        }
        let mut batch = Vec::new();
        let body = tokio::select! {
            biased;
            _ = session.upgraded.cancelled() => {
                session.state().polling_get = false;
                return EioError::BadRequest.response(cors);
            }
            reason = session.outbox.next_batch(&mut batch) => {
                if batch.is_empty() {
                    let reason = reason.unwrap_or(Disconnect::SHUTDOWN);
                    let mut last = if reason.reconnect() { Vec::new() } else { self.handler.farewell(&session) };
                    last.push(Frame::text("1".to_owned()));
                    self.close(&session, CloseReason::Server(reason));
                    packet::encode_payload(last.iter().map(|f| match f {
                        Frame::Text(b) => Encoded::Text(std::str::from_utf8(b).unwrap_or("6")),
                        Frame::Binary(b) => Encoded::Binary(b),
                    }))
                } else {
                    packet::encode_payload(batch.iter().map(|f| match f {
                        Frame::Text(b) => Encoded::Text(std::str::from_utf8(b).unwrap_or("6")),
                        Frame::Binary(b) => Encoded::Binary(b),
                    }))
                }
            }
            _ = session.closed.cancelled() => "1".to_owned(),
        };
        let closing = {
            let mut st = session.state();
            st.polling_get = false;
            st.closing
        };
        if closing {
            self.close(&session, CloseReason::ClientClose);
        }
        let mut resp = (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=UTF-8")],
            body,
        )
            .into_response();
        if let Some(h) = cors {
            resp.headers_mut().extend(h);
        }
        resp
    }

    pub(super) fn post(
        &self,
        session: &Arc<Session>,
        body: &Bytes,
        cors: Option<HeaderMap>,
    ) -> Response {
        {
            let mut st = session.state();
            if st.websocket || st.polling_post {
                drop(st);
                self.close(
                    session,
                    CloseReason::ProtocolError("concurrent or late post".into()),
                );
                return EioError::BadRequest.response(cors);
            }
            st.polling_post = true;
        }
        let result = match std::str::from_utf8(body).ok().map(packet::decode_payload) {
            Some(Ok(packets)) => {
                for p in packets {
                    if !self.receive(session, p) {
                        break;
                    }
                }
                Ok(())
            }
            _ => Err(()),
        };
        session.state().polling_post = false;
        if result.is_err() {
            self.close(session, CloseReason::ProtocolError("bad payload".into()));
            return EioError::BadRequest.response(cors);
        }
        let mut resp =
            (StatusCode::OK, [(header::CONTENT_TYPE, "text/html")], "ok").into_response();
        if let Some(h) = cors {
            resp.headers_mut().extend(h);
        }
        resp
    }
}
