//! Socket.IO long-polling without sticky sessions: a node that receives a
//! polling request for a session another node owns forwards it there.
//!
//! Engine.IO session ids start with the owning node's id; nodes publish the
//! address they serve HTTP on with their presence heartbeat. The forwarded
//! request carries `x-roomcast-forwarded`, and a forwarded request is never
//! forwarded again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use roomcast_core::{BoxFuture, Hub};
use roomcast_socketio::engineio::SessionForwarder;

const FORWARDED: &str = "x-roomcast-forwarded";

/// How long a node's address is trusted before it is looked up again.
const ADDRESS_TTL: Duration = Duration::from_secs(5);

/// Headers that describe one hop, not the request.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "upgrade"
            | "host"
            | "content-length"
            | "proxy-connection"
    )
}

struct Inner {
    hub: Hub,
    client: reqwest::Client,
    max_body: usize,
    addresses: Mutex<HashMap<String, (String, Instant)>>,
}

/// The [`SessionForwarder`] of a cluster node.
#[derive(Clone)]
pub(crate) struct Forwarder(Arc<Inner>);

impl Forwarder {
    /// `timeout` bounds a forwarded request; a long poll lasts up to the ping interval.
    pub(crate) fn new(hub: Hub, timeout: Duration, max_body: usize) -> Forwarder {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default();
        Forwarder(Arc::new(Inner {
            hub,
            client,
            max_body,
            addresses: Mutex::new(HashMap::new()),
        }))
    }

    async fn address(&self, node: &str) -> Option<String> {
        if let Some((addr, at)) = self
            .0
            .addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
        {
            if at.elapsed() < ADDRESS_TTL {
                return Some(addr.clone());
            }
        }
        let nodes = self.0.hub.nodes().await.ok()?;
        let mut map = self.0.addresses.lock().unwrap_or_else(|e| e.into_inner());
        map.clear();
        for n in nodes {
            if let Some(a) = n.address {
                map.insert(n.node, (a, Instant::now()));
            }
        }
        map.get(node).map(|(a, _)| a.clone())
    }

    async fn proxy(self, address: String, req: Request) -> Response {
        let (parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let body = match axum::body::to_bytes(body, self.0.max_body).await {
            Ok(b) => b,
            Err(_) => return StatusCode::PAYLOAD_TOO_LARGE.into_response(),
        };
        let mut out = self
            .0
            .client
            .request(parts.method, format!("http://{address}{path}"))
            .header(FORWARDED, "1")
            .body(body);
        for (name, value) in &parts.headers {
            if !hop_by_hop(name) {
                out = out.header(name, value);
            }
        }
        match out.send().await {
            Ok(resp) => {
                let mut builder = Response::builder().status(resp.status());
                for (name, value) in resp.headers() {
                    if !hop_by_hop(name) {
                        builder = builder.header(name, value);
                    }
                }
                builder
                    .body(Body::from_stream(resp.bytes_stream()))
                    .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
            }
            Err(e) => {
                tracing::warn!(%address, error = %e, "forwarding a long-polling request failed");
                (
                    StatusCode::BAD_GATEWAY,
                    [(header::CONTENT_TYPE, "application/json")],
                    r#"{"code":1,"message":"Session ID unknown"}"#,
                )
                    .into_response()
            }
        }
    }
}

impl SessionForwarder for Forwarder {
    fn forward(&self, sid: &str, req: Request) -> BoxFuture<'static, Result<Response, Request>> {
        let me = self.0.hub.node().to_string();
        let node = sid.get(..8).unwrap_or("").to_owned();
        let this = self.clone();
        Box::pin(async move {
            if node.len() != 8 || node == me || req.headers().contains_key(FORWARDED) {
                return Err(req);
            }
            match this.address(&node).await {
                Some(address) => Ok(this.proxy(address, req).await),
                None => Err(req),
            }
        })
    }
}
