//! Checks before a client handshake reaches the native or Socket.IO endpoint:
//! the browser `Origin` allow-list and the per-IP connection rate.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use std::sync::Arc;

use crate::codes::Code;
use crate::config::Config;
use crate::http::{refuse, PEER_HEADER};
use crate::metrics::ServerMetrics;

/// What the handshake checks need.
pub(crate) struct Guard {
    pub config: Arc<Config>,
    pub metrics: Arc<ServerMetrics>,
    pub ip_limiter: IpLimiter,
}

/// Per-IP token buckets for new connections.
#[derive(Debug)]
pub(crate) struct IpLimiter {
    rate: u32,
    burst: u32,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

/// Entries kept before idle ones are swept.
const SWEEP_AT: usize = 65_536;

impl IpLimiter {
    pub(crate) fn new(rate: u32, burst: u32) -> IpLimiter {
        IpLimiter {
            rate,
            burst: burst.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` may open one more connection now.
    pub(crate) fn allow(&self, ip: IpAddr) -> bool {
        if self.rate == 0 {
            return true;
        }
        let now = Instant::now();
        let (rate, burst) = (self.rate as f64, self.burst as f64);
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= SWEEP_AT {
            // A bucket refilled to the brim carries no information.
            map.retain(|_, (tokens, last)| {
                *tokens + now.duration_since(*last).as_secs_f64() * rate < burst
            });
        }
        let (tokens, last) = map.entry(ip).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    allowed.is_empty()
        || allowed
            .iter()
            .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

/// Middleware on every route: records the peer address, and refuses client
/// handshakes from origins not allowed (403) or over the per-IP rate (429).
pub(crate) async fn handshake(
    State(s): State<Arc<Guard>>,
    mut req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    req.headers_mut().remove(PEER_HEADER);
    if let Some(p) = peer {
        if let Ok(v) = HeaderValue::from_str(&p.to_string()) {
            req.headers_mut().insert(PEER_HEADER, v);
        }
    }
    let c = &s.config;
    let path = req.uri().path();
    let native = path == "/ws";
    let sio = c.socketio.enabled && path.starts_with(c.socketio.path.trim_end_matches('/'));
    if !native && !sio {
        return next.run(req).await;
    }
    // A browser sends one Origin. Two (equal or not) would leave "which one
    // did the allow-list check" to chance, so they are refused whether or not
    // `auth.allowed_origins` is set.
    if req
        .headers()
        .get_all(header::ORIGIN)
        .iter()
        .nth(1)
        .is_some()
    {
        s.metrics.origin_rejected();
        tracing::info!(?peer, "handshake refused: more than one Origin header");
        return refuse(
            StatusCode::FORBIDDEN,
            Code::ORIGIN_NOT_ALLOWED,
            "more than one Origin header",
        );
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !origin_allowed(&c.auth.allowed_origins, origin) {
            s.metrics.origin_rejected();
            tracing::info!(%origin, ?peer, "handshake refused: origin not allowed");
            return refuse(
                StatusCode::FORBIDDEN,
                Code::ORIGIN_NOT_ALLOWED,
                "this origin may not connect (auth.allowed_origins)",
            );
        }
    }
    // A new connection: the native upgrade, or an Engine.IO handshake (no sid).
    let new_session = native
        || !req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .any(|kv| kv.starts_with("sid="));
    if new_session && req.method() != axum::http::Method::OPTIONS {
        if let Some(p) = peer {
            if !s.ip_limiter.allow(p.ip()) {
                s.metrics.rate_limited("connection");
                tracing::info!(ip = %p.ip(), "handshake refused: connection rate per IP");
                let mut r = refuse(
                    StatusCode::TOO_MANY_REQUESTS,
                    Code::RATE_LIMITED,
                    "too many new connections from this address (limits.connection_rate_per_ip)",
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return r;
            }
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_and_refuse() {
        let l = IpLimiter::new(1, 3);
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        assert!(l.allow(ip) && l.allow(ip) && l.allow(ip));
        assert!(!l.allow(ip));
        assert!(l.allow("127.0.0.10".parse().unwrap()));
        assert!(IpLimiter::new(0, 1).allow(ip));
    }

    #[test]
    fn origins() {
        let allowed = vec!["https://app.example".to_owned()];
        assert!(origin_allowed(&allowed, "https://app.example"));
        assert!(origin_allowed(&allowed, "HTTPS://APP.EXAMPLE"));
        assert!(!origin_allowed(&allowed, "https://evil.example"));
        assert!(!origin_allowed(&allowed, "https://app.example.evil"));
        assert!(origin_allowed(&[], "https://anything"));
    }
}
