//! The `rpc` scenario: client events through the server's event proxy.
//!
//! The generator serves the backend itself (`POST /rpc` answers
//! `{"result": <data>}`), on `--backend`. Two phases, each for `--duration`
//! seconds with `--clients` callers, each caller keeping one request in flight:
//!
//! 1. **direct**: the callers POST the same JSON straight to the backend (HTTP
//!    keep-alive), the baseline of what the backend and loopback HTTP cost;
//! 2. **proxied**: the callers are WebSocket connections to the server, which
//!    must run with `proxy.rpc_url = http://<backend>/rpc`; each sends an event
//!    and waits for its ack.
//!
//! The result reports both, and proxied ÷ direct.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::Json;
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::stats::cpu_seconds;
use crate::Common;

#[derive(Args, Clone)]
pub struct RpcArgs {
    #[command(flatten)]
    pub common: Common,
    /// Callers (connections), each with one event in flight.
    #[arg(long, default_value_t = 50)]
    pub clients: usize,
    /// Seconds per phase.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Where this generator serves the backend (loopback only).
    #[arg(long, default_value = "127.0.0.1:8099")]
    pub backend: SocketAddr,
    /// The event name sent.
    #[arg(long, default_value = "bench.echo")]
    pub event: String,
}

/// Requests the backend answered.
static ANSWERED: AtomicU64 = AtomicU64::new(0);

async fn echo(Json(body): Json<Value>) -> Json<Value> {
    ANSWERED.fetch_add(1, Ordering::Relaxed);
    Json(json!({"result": body.get("data").cloned().unwrap_or(Value::Null)}))
}

/// Round trips and their latencies (µs) of one phase.
struct Phase {
    calls: u64,
    errors: u64,
    first_error: Option<String>,
    seconds: f64,
    hist: Histogram<u64>,
}

impl Phase {
    fn json(&self) -> Value {
        let q = |p: f64| self.hist.value_at_quantile(p) as f64 / 1000.0;
        json!({
            "calls": self.calls,
            "errors": self.errors,
            "first_error": self.first_error,
            "calls_per_sec": self.calls as f64 / self.seconds.max(1e-9),
            "latency_ms": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": self.hist.max() as f64 / 1000.0},
        })
    }
}

fn merge(parts: Vec<(u64, u64, Option<String>, Histogram<u64>)>, seconds: f64) -> Phase {
    let mut hist = Histogram::<u64>::new(3).expect("3 significant figures is valid");
    let (mut calls, mut errors, mut first_error) = (0, 0, None);
    for (c, e, fe, h) in parts {
        calls += c;
        errors += e;
        first_error = first_error.or(fe);
        let _ = hist.add(h);
    }
    Phase {
        calls,
        errors,
        first_error,
        seconds,
        hist,
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new(3).expect("3 significant figures is valid")
}

async fn direct(a: &RpcArgs) -> Phase {
    let http = reqwest::Client::new();
    let url = format!("http://{}/rpc", a.backend);
    let deadline = Instant::now() + Duration::from_secs_f64(a.duration);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..a.clients {
        let (http, url, event) = (http.clone(), url.clone(), a.event.clone());
        tasks.push(tokio::spawn(async move {
            let (mut calls, mut errors, mut first, mut h) = (0u64, 0u64, None, histogram());
            let mut n = 0u64;
            while Instant::now() < deadline {
                let body = json!({"event": event, "data": {"n": n, "c": i}, "conn": "0", "user": null, "session": {}, "rooms": []});
                let t = Instant::now();
                match http.post(&url).json(&body).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        let _ = h.record(t.elapsed().as_micros() as u64);
                        calls += 1;
                    }
                    Ok(r) => {
                        errors += 1;
                        first.get_or_insert(format!("HTTP {}", r.status()));
                    }
                    Err(e) => {
                        errors += 1;
                        first.get_or_insert(e.to_string());
                    }
                }
                n += 1;
            }
            (calls, errors, first, h)
        }));
    }
    let mut parts = Vec::new();
    for t in tasks {
        if let Ok(p) = t.await {
            parts.push(p);
        }
    }
    merge(parts, started.elapsed().as_secs_f64())
}

async fn proxied(a: &RpcArgs) -> Result<(Phase, f64), String> {
    let targets = a.common.targets();
    let (conns, connect_s) =
        crate::open_many(&a.common, &targets, a.clients, 0, None, None).await?;
    let deadline = Instant::now() + Duration::from_secs_f64(a.duration);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut c) in conns.into_iter().enumerate() {
        let event = a.event.clone();
        tasks.push(tokio::spawn(async move {
            let (mut calls, mut errors, mut first, mut h) = (0u64, 0u64, None, histogram());
            let mut n = 1u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                match c.rpc(n, &event, &format!(r#"{{"n":{n},"c":{i}}}"#)).await {
                    Ok(()) => {
                        let _ = h.record(t.elapsed().as_micros() as u64);
                        calls += 1;
                    }
                    Err(e) => {
                        errors += 1;
                        first.get_or_insert(e);
                        break;
                    }
                }
                n += 1;
            }
            (calls, errors, first, h)
        }));
    }
    let mut parts = Vec::new();
    for t in tasks {
        if let Ok(p) = t.await {
            parts.push(p);
        }
    }
    Ok((merge(parts, started.elapsed().as_secs_f64()), connect_s))
}

pub async fn run(a: RpcArgs) -> Result<Value, String> {
    let listener = tokio::net::TcpListener::bind(a.backend)
        .await
        .map_err(|e| format!("backend on {}: {e}", a.backend))?;
    let app = axum::Router::new().route("/rpc", post(echo));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let d = direct(&a).await;
    let answered_direct = ANSWERED.load(Ordering::Relaxed);
    let (p, connect_s) = proxied(&a).await?;
    let answered = ANSWERED.load(Ordering::Relaxed) - answered_direct;
    let cpu = cpu_seconds() - cpu0;
    server.abort();
    Ok(json!({
        "scenario": "rpc",
        "clients": a.clients,
        "duration": a.duration,
        "connect_seconds": connect_s,
        "direct": d.json(),
        "proxied": p.json(),
        "backend_answered_proxied": answered,
        "proxied_over_direct": p.calls as f64 / p.seconds.max(1e-9) / (d.calls as f64 / d.seconds.max(1e-9)).max(1e-9),
        "client_cpu_pct": 100.0 * cpu / t0.elapsed().as_secs_f64(),
    }))
}
