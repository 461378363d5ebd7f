//! The single route: CORS, the query, Engine.IO's error answers, admission
//! of new sessions, and the hand-off to a transport.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use roomcast_core::admission::AdmitError;

use super::{CloseReason, Cors, EngineIo};

/// Engine.IO error codes and their HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EioError {
    TransportUnknown,
    SessionUnknown,
    BadHandshakeMethod,
    BadRequest,
    Forbidden,
    UnsupportedVersion,
}

impl EioError {
    pub(super) fn response(self, cors: Option<HeaderMap>) -> Response {
        let (code, message) = match self {
            EioError::TransportUnknown => (0, "Transport unknown"),
            EioError::SessionUnknown => (1, "Session ID unknown"),
            EioError::BadHandshakeMethod => (2, "Bad handshake method"),
            EioError::BadRequest => (3, "Bad request"),
            EioError::Forbidden => (4, "Forbidden"),
            EioError::UnsupportedVersion => (5, "Unsupported protocol version"),
        };
        let status = if self == EioError::Forbidden {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::BAD_REQUEST
        };
        let body = serde_json::json!({"code": code, "message": message}).to_string();
        let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if let Some(h) = cors {
            resp.headers_mut().extend(h);
        }
        resp
    }
}

#[derive(Debug, Default)]
struct Query {
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
}

fn parse_query(q: Option<&str>) -> Query {
    let mut out = Query::default();
    for pair in q.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = v.to_owned();
        match k {
            "EIO" => out.eio = Some(v),
            "transport" => out.transport = Some(v),
            "sid" => out.sid = Some(v),
            _ => {}
        }
    }
    out
}

impl EngineIo {
    pub(super) fn cors_headers(&self, req: &HeaderMap) -> Option<HeaderMap> {
        let origin = req.get(header::ORIGIN)?;
        let allowed = match &self.config.cors {
            Cors::Off => false,
            Cors::Any => true,
            Cors::Origins(list) => origin.to_str().is_ok_and(|o| list.iter().any(|a| a == o)),
        };
        if !allowed {
            return None;
        }
        let mut h = HeaderMap::new();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        Some(h)
    }
}

/// The single route: handshake, polling GET/POST, WebSocket, CORS preflight.
pub(super) async fn serve(State(eio): State<Arc<EngineIo>>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    let cors = eio.cors_headers(&parts.headers);
    if parts.method == Method::OPTIONS {
        let mut resp = StatusCode::NO_CONTENT.into_response();
        if let Some(mut h) = cors {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, OPTIONS"),
            );
            if let Some(req_headers) = parts.headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
                h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, req_headers.clone());
            }
            resp.headers_mut().extend(h);
        }
        return resp;
    }
    if matches!(eio.config.cors, Cors::Origins(_))
        && parts.headers.contains_key(header::ORIGIN)
        && cors.is_none()
    {
        return EioError::Forbidden.response(None);
    }
    let q = parse_query(parts.uri.query());
    if q.eio.as_deref() != Some("4") {
        return EioError::UnsupportedVersion.response(cors);
    }
    let websocket = match q.transport.as_deref() {
        Some("polling") => false,
        Some("websocket") => true,
        _ => return EioError::TransportUnknown.response(cors),
    };
    let session = match &q.sid {
        None => None,
        Some(sid) => match eio.session(sid) {
            Some(s) if eio.check_pong(&s) => Some(s),
            Some(_) => return EioError::SessionUnknown.response(cors),
            None => {
                // Long-polling for a session another node owns. (A WebSocket
                // upgrade of such a session is refused: the client stays on
                // long-polling, which Engine.IO clients handle.)
                let Some(f) = eio.forwarding.get().filter(|_| !websocket) else {
                    return EioError::SessionUnknown.response(cors);
                };
                return match f
                    .forwarder
                    .forward(sid, Request::from_parts(parts, body))
                    .await
                {
                    Ok(resp) => resp,
                    Err(_) => EioError::SessionUnknown.response(cors),
                };
            }
        },
    };
    // A new session takes a place now: the answer says at once if there is none.
    let session = match session {
        Some(s) => Ok(s),
        None => match eio.admission.admit() {
            Ok(slot) => Err(slot),
            Err(e) => {
                let (code, message) = match e {
                    AdmitError::Full { .. } => {
                        ("server_full", "server full: try another node or later")
                    }
                    AdmitError::ShuttingDown => ("shutting_down", "server shutting down"),
                };
                let mut resp = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(serde_json::json!({"code": code, "message": message})),
                )
                    .into_response();
                if let Some(h) = cors {
                    resp.headers_mut().extend(h);
                }
                return resp;
            }
        },
    };
    if websocket {
        if parts.method != Method::GET {
            return EioError::BadHandshakeMethod.response(cors);
        }
        let mut duplicate = false;
        if let Ok(s) = &session {
            let mut st = s.state();
            if st.websocket || st.upgrading {
                duplicate = true;
            } else {
                st.upgrading = true;
            }
        }
        let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(u) => u,
            Err(e) => {
                if let (Ok(s), false) = (&session, duplicate) {
                    s.state().upgrading = false;
                }
                // axum's rejection is plain text: answer in Engine.IO's JSON shape.
                let body = serde_json::json!({"code": 3, "message": e.body_text()}).to_string();
                let mut resp = (
                    e.status(),
                    [(header::CONTENT_TYPE, "application/json")],
                    body,
                )
                    .into_response();
                if let Some(h) = cors {
                    resp.headers_mut().extend(h);
                }
                return resp;
            }
        };
        if duplicate {
            // A second WebSocket for a session that has one: open it, then close it.
            return upgrade.on_upgrade(|mut ws| async move {
                let _ = ws.send(Message::Close(None)).await;
            });
        }
        let headers = parts.headers.clone();
        let tasks = eio.tasks.clone();
        let max = eio.config.max_payload;
        return upgrade
            .read_buffer_size(1024)
            .write_buffer_size(64 << 10)
            .max_message_size(max)
            .max_frame_size(max)
            .on_upgrade(move |ws| tasks.track_future(eio.websocket(ws, session, headers)));
    }
    match (parts.method.clone(), session) {
        (Method::GET, Err(slot)) => {
            let session = eio.open_session(&parts.headers, false, slot);
            eio.poll(session, cors).await
        }
        (_, Err(_)) => EioError::BadHandshakeMethod.response(cors),
        (Method::GET, Ok(s)) => eio.poll(s, cors).await,
        (Method::POST, Ok(s)) => {
            let limit = eio.config.max_payload;
            match axum::body::to_bytes(body, limit).await {
                Ok(bytes) => eio.post(&s, &bytes, cors),
                Err(_) => {
                    eio.close(&s, CloseReason::ProtocolError("payload too large".into()));
                    let body = serde_json::json!({"code": 3, "message": "Payload too large"});
                    let mut resp =
                        (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(body)).into_response();
                    if let Some(h) = cors {
                        resp.headers_mut().extend(h);
                    }
                    resp
                }
            }
        }
        _ => EioError::BadRequest.response(cors),
    }
}
