//! HTTP helpers every front end shares: the peer-address header, JSON error
//! answers and bearer tokens. A leaf: it imports only the code table.

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::codes::Code;

/// The header the server sets on every request to the peer's address (a
/// client's own value is replaced), for handshake descriptions.
pub(crate) const PEER_HEADER: &str = "x-roomcast-peer";

/// An HTTP refusal with the JSON error body
/// `{"error":{"code":...,"message":...,"field":null}}`.
pub(crate) fn refuse(status: StatusCode, code: Code, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"error": {"code": code.as_str(), "message": message, "field": null}})),
    )
        .into_response()
}

/// The token of an `Authorization: Bearer <token>` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// The peer address the server recorded in [`PEER_HEADER`].
pub(crate) fn peer(headers: &HeaderMap) -> Option<std::net::SocketAddr> {
    headers
        .get(PEER_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}
