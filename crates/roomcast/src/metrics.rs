//! Counters of the server layer and the Prometheus text rendering of all metrics.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use roomcast_core::Hub;

/// Counters kept by the protocol and API layers.
#[derive(Debug, Default)]
pub struct ServerMetrics {
    /// Frames received from clients.
    pub messages_in: AtomicU64,
    /// Bytes received from clients.
    pub bytes_in: AtomicU64,
    /// Client frames answered with an `error` frame.
    pub client_errors: AtomicU64,
    /// HTTP API requests.
    pub api_requests: AtomicU64,
    /// HTTP API requests answered with a 4xx or 5xx status.
    pub api_errors: AtomicU64,
    /// Connections closed by the server, by close code.
    disconnects: Mutex<BTreeMap<u16, u64>>,
    /// Labelled security counters: `(metric, label) -> count`.
    security: Mutex<BTreeMap<(&'static str, String), u64>>,
}

impl ServerMetrics {
    /// Counts a message received from a client.
    pub fn count_in(&self, bytes: usize) {
        self.messages_in.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts a server-initiated close.
    pub fn disconnect(&self, code: u16) {
        *self
            .disconnects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(code)
            .or_default() += 1;
    }

    fn bump(&self, metric: &'static str, label: &str) {
        *self
            .security
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((metric, label.to_owned()))
            .or_default() += 1;
    }

    /// Counts a refused client action (`join`, `publish`, `presence`, `send`, `broadcast`, `connect`).
    pub fn denied(&self, action: &str) {
        self.bump("roomcast_permission_denied_total", action);
    }

    /// Counts something refused by a rate limit (`message`, `connection`).
    pub fn rate_limited(&self, kind: &str) {
        self.bump("roomcast_rate_limited_total", kind);
    }

    /// Counts a failed authentication (`refused`, `expired`, `unavailable`, `timeout`).
    pub fn auth_failure(&self, reason: &str) {
        self.bump("roomcast_auth_failures_total", reason);
    }

    /// Counts a handshake refused for its `Origin`.
    pub fn origin_rejected(&self) {
        self.bump("roomcast_origin_rejected_total", "");
    }

    /// Counts an API request refused for its key's scope or a missing key.
    pub fn api_denied(&self, reason: &str) {
        self.bump("roomcast_api_denied_total", reason);
    }

    /// A labelled security counter's value (tests and stats).
    pub fn security(&self, metric: &str, label: &str) -> u64 {
        self.security
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|((m, l), _)| *m == metric && l == label)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    }

    /// Server-initiated closes with `code` so far.
    pub fn disconnects(&self, code: u16) -> u64 {
        self.disconnects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&code)
            .copied()
            .unwrap_or(0)
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

const SECURITY: [(&str, &str, &str); 5] = [
    (
        "roomcast_permission_denied_total",
        "action",
        "Client actions refused by room rules or client settings, by action.",
    ),
    (
        "roomcast_rate_limited_total",
        "kind",
        "Messages and connections refused by a rate limit.",
    ),
    (
        "roomcast_auth_failures_total",
        "reason",
        "Failed client authentications, by reason.",
    ),
    (
        "roomcast_origin_rejected_total",
        "",
        "Handshakes refused because their Origin is not allowed.",
    ),
    (
        "roomcast_api_denied_total",
        "reason",
        "HTTP API requests refused for a missing or wrong key, or the key's scope.",
    ),
];

/// Renders every metric in the Prometheus text exposition format.
pub fn render(hub: &Hub, server: &ServerMetrics) -> String {
    render_with(hub, server, None)
}

/// [`render`], plus the backend proxy's counters when there is one.
pub fn render_with(hub: &Hub, server: &ServerMetrics, backend: Option<&BackendMetrics>) -> String {
    let h = hub.metrics();
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut out = String::with_capacity(2048);
    metric(
        &mut out,
        "roomcast_connections",
        "gauge",
        "Open client connections on this node.",
        hub.local_connections() as u64,
    );
    metric(
        &mut out,
        "roomcast_rooms",
        "gauge",
        "Rooms with members on this node.",
        hub.local_rooms() as u64,
    );
    metric(
        &mut out,
        "roomcast_connections_accepted_total",
        "counter",
        "Client connections accepted.",
        get(&h.connections_accepted),
    );
    metric(
        &mut out,
        "roomcast_connections_closed_total",
        "counter",
        "Client connections closed, for any reason.",
        get(&h.connections_closed),
    );
    metric(
        &mut out,
        "roomcast_messages_in_total",
        "counter",
        "WebSocket messages received from clients.",
        get(&server.messages_in),
    );
    metric(
        &mut out,
        "roomcast_bytes_in_total",
        "counter",
        "Bytes of WebSocket messages received from clients.",
        get(&server.bytes_in),
    );
    metric(
        &mut out,
        "roomcast_messages_out_total",
        "counter",
        "Frames queued for clients.",
        get(&h.messages_out),
    );
    metric(
        &mut out,
        "roomcast_bytes_out_total",
        "counter",
        "Bytes of frames queued for clients.",
        get(&h.bytes_out),
    );
    metric(
        &mut out,
        "roomcast_publications_total",
        "counter",
        "Publications sent from this node (clients, API, library).",
        get(&h.publications),
    );
    metric(
        &mut out,
        "roomcast_slow_consumer_disconnects_total",
        "counter",
        "Connections closed because their outgoing queue overflowed.",
        get(&h.slow_consumer_disconnects),
    );
    metric(
        &mut out,
        "roomcast_client_errors_total",
        "counter",
        "Client frames answered with an error frame.",
        get(&server.client_errors),
    );
    metric(
        &mut out,
        "roomcast_backend_errors_total",
        "counter",
        "Broker, presence and history store failures.",
        get(&h.backend_errors),
    );
    metric(
        &mut out,
        "roomcast_history_recoveries_total",
        "counter",
        "Joins that asked to resume from a position in a room's history and got everything after it.",
        get(&h.recoveries),
    );
    metric(
        &mut out,
        "roomcast_history_recoveries_failed_total",
        "counter",
        "Joins that asked to resume and were told they were not recovered.",
        get(&h.recoveries_failed),
    );
    metric(
        &mut out,
        "roomcast_history_replayed_total",
        "counter",
        "Publications replayed from history to resuming connections.",
        get(&h.replayed),
    );
    metric(
        &mut out,
        "roomcast_api_requests_total",
        "counter",
        "HTTP API requests.",
        get(&server.api_requests),
    );
    metric(
        &mut out,
        "roomcast_api_errors_total",
        "counter",
        "HTTP API requests answered with an error status.",
        get(&server.api_errors),
    );
    let _ = writeln!(out, "# HELP roomcast_disconnects_total Connections closed by the server, by close code.\n# TYPE roomcast_disconnects_total counter");
    for (code, n) in server
        .disconnects
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        let _ = writeln!(out, "roomcast_disconnects_total{{code=\"{code}\"}} {n}");
    }
    {
        let sec = server.security.lock().unwrap_or_else(|e| e.into_inner());
        for (name, label, help) in SECURITY {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let mut any = false;
            for ((m, l), n) in sec.iter() {
                if *m != name {
                    continue;
                }
                any = true;
                if label.is_empty() {
                    let _ = writeln!(out, "{name} {n}");
                } else {
                    let _ = writeln!(out, "{name}{{{label}=\"{l}\"}} {n}");
                }
            }
            if !any && label.is_empty() {
                let _ = writeln!(out, "{name} 0");
            }
        }
    }
    if let Some(b) = backend {
        let _ = writeln!(out, "# HELP roomcast_proxy_requests_total Backend proxy requests, by kind and result.\n# TYPE roomcast_proxy_requests_total counter");
        for (kind, result, n) in b.calls() {
            let _ = writeln!(
                out,
                "roomcast_proxy_requests_total{{kind=\"{kind}\",result=\"{result}\"}} {n}"
            );
        }
        let _ = writeln!(out, "# HELP roomcast_proxy_seconds_total Time spent in backend proxy requests, by kind.\n# TYPE roomcast_proxy_seconds_total counter");
        for (kind, secs) in b.seconds() {
            let _ = writeln!(
                out,
                "roomcast_proxy_seconds_total{{kind=\"{kind}\"}} {secs}"
            );
        }
        metric(
            &mut out,
            "roomcast_webhooks_dropped_total",
            "counter",
            "Webhook events dropped: queue full or retries exhausted.",
            get(&b.webhooks_dropped),
        );
    }
    let healthy = matches!(hub.backend_health(), roomcast_core::broker::Health::Ok);
    metric(
        &mut out,
        "roomcast_backend_up",
        "gauge",
        "1 while the broker and presence store are reachable (always 1 in memory).",
        healthy as u64,
    );
    // Backend metrics; samples of one name (with different labels) share one header.
    let mut last = "";
    for m in hub.backend_metrics() {
        if m.name != last {
            let _ = writeln!(
                out,
                "# HELP {} {}\n# TYPE {} {}",
                m.name, m.help, m.name, m.kind
            );
            last = m.name;
        }
        if m.labels.is_empty() {
            let _ = writeln!(out, "{} {}", m.name, m.value);
        } else {
            let _ = writeln!(out, "{}{{{}}} {}", m.name, m.labels, m.value);
        }
    }
    out
}

/// What a backend call was for (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// `proxy.connect_url`.
    Connect,
    /// `proxy.subscribe_url`.
    Subscribe,
    /// `proxy.rpc_url` and `proxy.rpc_routes`.
    Rpc,
    /// `proxy.webhook_url`.
    Webhook,
}

impl CallKind {
    /// Every kind, in metric order.
    pub const ALL: [CallKind; 4] = [
        CallKind::Connect,
        CallKind::Subscribe,
        CallKind::Rpc,
        CallKind::Webhook,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CallKind::Connect => "connect",
            CallKind::Subscribe => "subscribe",
            CallKind::Rpc => "rpc",
            CallKind::Webhook => "webhook",
        }
    }
}

/// How a backend call ended (a metric label).
pub const RESULTS: [&str; 4] = ["ok", "refused", "error", "timeout"];

/// Counters of backend calls.
#[derive(Debug, Default)]
pub struct BackendMetrics {
    calls: [[AtomicU64; 4]; 4],
    /// Total seconds spent in calls, per kind (microseconds).
    micros: [AtomicU64; 4],
    /// Webhook events dropped because the queue was full or retries ran out.
    pub webhooks_dropped: AtomicU64,
}

impl BackendMetrics {
    pub(crate) fn count(&self, kind: CallKind, result: usize, took: Duration) {
        self.calls[kind as usize][result].fetch_add(1, Ordering::Relaxed);
        self.micros[kind as usize].fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// `(kind, result, count)` for every pair.
    pub fn calls(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for k in CallKind::ALL {
            for (i, r) in RESULTS.iter().enumerate() {
                out.push((
                    k.as_str(),
                    *r,
                    self.calls[k as usize][i].load(Ordering::Relaxed),
                ));
            }
        }
        out
    }

    /// `(kind, seconds)`: time spent in calls of each kind.
    pub fn seconds(&self) -> Vec<(&'static str, f64)> {
        CallKind::ALL
            .iter()
            .map(|k| {
                (
                    k.as_str(),
                    self.micros[*k as usize].load(Ordering::Relaxed) as f64 / 1e6,
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric `/metrics` can show has a row in docs/http-api.md's table.
    #[test]
    fn every_metric_is_in_the_docs_table() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/http-api.md"
        ))
        .expect("docs/http-api.md exists");
        let table = doc
            .split("### `GET /metrics`")
            .nth(1)
            .and_then(|t| t.split("\n## ").next())
            .expect("the metrics section");
        let hub = Hub::new(roomcast_core::HubConfig::default());
        let server = ServerMetrics::default();
        server.denied("join");
        let text = render_with(&hub, &server, Some(&BackendMetrics::default()));
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(names.len() > 20, "{names:?}");
        for name in names {
            assert!(
                table.contains(&format!("`{name}")),
                "docs/http-api.md's metrics table lacks {name}"
            );
        }
    }
}
