//! `roomcast-bench`: a load generator for roomcast and the servers it is
//! compared with. It speaks roomcast's native protocol, Socket.IO (WebSocket
//! transport, `join`/`publish` events) and plain WebSocket group chat, targets
//! loopback addresses only, spreads its source addresses over 127.x.y.z, is
//! bounded in connections and time, and prints one JSON line of results.
//!
//! Scenarios:
//! - `idle`: N connections held open; server RSS before and after, per-connection memory, connect rate.
//! - `fanout`: one room with N subscribers and a publisher; deliveries/s, publish→receive
//!   latency percentiles, lost messages.
//! - `rooms`: many small rooms whose members publish now and then (the chat-app shape).
//! - `churn`: connect/join/disconnect cycles while a fanout runs.

mod client;
mod stats;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;

use client::{Conn, Protocol, Target};
use stats::{cpu_seconds, rss_kb, Recorder};

#[derive(Parser)]
#[command(
    name = "roomcast-bench",
    about = "Load generator for roomcast and its peers (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Hold N connections open; report memory per connection and connect rate.
    Idle(IdleArgs),
    /// One room, N subscribers, one publisher.
    Fanout(FanoutArgs),
    /// Many small rooms whose members publish now and then.
    Rooms(RoomsArgs),
    /// Connect/join/disconnect cycles while a fanout runs.
    Churn(ChurnArgs),
}

#[derive(Args, Clone)]
struct Common {
    /// Server address (must be on 127.0.0.0/8 or ::1).
    #[arg(long, default_value = "127.0.0.1:8000")]
    addr: SocketAddr,
    /// Wire protocol.
    #[arg(long, value_enum, default_value = "native")]
    protocol: ProtocolArg,
    /// WebSocket path (default: /ws for native, /socket.io/ for socketio, / for plain).
    #[arg(long)]
    path: Option<String>,
    /// Socket.IO event used to join a room.
    #[arg(long, default_value = "join")]
    join_event: String,
    /// Socket.IO event used to publish to a room.
    #[arg(long, default_value = "publish")]
    publish_event: String,
    /// Server process id, to read its RSS from /proc.
    #[arg(long)]
    pid: Option<u32>,
    /// New connections per second while connecting (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    connect_rate: u32,
    /// Connections opened at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// A label for the server, copied into the output.
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProtocolArg {
    Native,
    Socketio,
    Plain,
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Connections.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Seconds to hold them after connecting.
    #[arg(long, default_value_t = 2.0)]
    hold: f64,
}

#[derive(Args, Clone)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    /// Subscribers in the room.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Publishes per second; 0 publishes `--messages` as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Messages to publish (with --rate 0), or the cap with a rate.
    #[arg(long, default_value_t = 100)]
    messages: u64,
    /// Seconds to publish for, with a rate.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Approximate payload size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Seconds to wait for deliveries after the last publish.
    #[arg(long, default_value_t = 30.0)]
    drain: f64,
}

#[derive(Args)]
struct RoomsArgs {
    #[command(flatten)]
    common: Common,
    /// Rooms.
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Members per room.
    #[arg(long, default_value_t = 10)]
    members: usize,
    /// Each member publishes once per this many milliseconds (with jitter).
    #[arg(long, default_value_t = 5000)]
    interval_ms: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Approximate payload size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Seconds to wait for deliveries after the last publish.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
}

#[derive(Args)]
struct ChurnArgs {
    #[command(flatten)]
    fanout: FanoutArgs,
    /// Connect/join/disconnect cycles per second.
    #[arg(long, default_value_t = 100.0)]
    cycles: f64,
}

impl Common {
    fn target(&self) -> Target {
        let protocol = match self.protocol {
            ProtocolArg::Native => Protocol::Native,
            ProtocolArg::Socketio => Protocol::SocketIo {
                join: self.join_event.clone(),
                publish: self.publish_event.clone(),
            },
            ProtocolArg::Plain => Protocol::Plain,
        };
        let path = self.path.clone().unwrap_or_else(|| {
            match self.protocol {
                ProtocolArg::Native => "/ws",
                ProtocolArg::Socketio => "/socket.io/",
                ProtocolArg::Plain => "/",
            }
            .to_owned()
        });
        Target {
            addr: self.addr,
            path,
            protocol,
        }
    }

    fn protocol_name(&self) -> &'static str {
        match self.protocol {
            ProtocolArg::Native => "native",
            ProtocolArg::Socketio => "socketio",
            ProtocolArg::Plain => "plain",
        }
    }
}

fn loopback_only(addr: &SocketAddr) -> Result<(), String> {
    let ok = match addr.ip() {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => v6.is_loopback(),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{addr} is not a loopback address: roomcast-bench only targets 127.0.0.0/8 and ::1"
        ))
    }
}

/// Opens `n` connections (joined to `room`, if any) at the configured pace.
async fn open_many(
    common: &Common,
    target: &Arc<Target>,
    n: usize,
    first_index: usize,
    room: Option<String>,
    rec: Option<Arc<Recorder>>,
) -> Result<(Vec<Conn>, f64), String> {
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(
        common.connect_concurrency.max(1),
    ));
    let mut handles = Vec::with_capacity(n);
    let pace = (common.connect_rate > 0)
        .then(|| Duration::from_secs_f64(1.0 / common.connect_rate as f64));
    for i in 0..n {
        if let Some(p) = pace {
            tokio::time::sleep_until(tokio::time::Instant::from_std(started + p * i as u32)).await;
        }
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let (target, room) = (target.clone(), room.clone());
        handles.push(tokio::spawn(async move {
            let c = Conn::open(&target, first_index + i).await;
            let c = match (c, room) {
                (Ok(mut c), Some(r)) => c.join(&r).await.map(|_| c),
                (c, _) => c,
            };
            drop(permit);
            c
        }));
    }
    let mut conns = Vec::with_capacity(n);
    for h in handles {
        let c = h.await.map_err(|e| e.to_string())??;
        conns.push(c);
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(rec) = rec {
        for c in &mut conns {
            c.start_receiving(rec.clone());
        }
    }
    Ok((conns, elapsed))
}

async fn idle(a: IdleArgs) -> Result<serde_json::Value, String> {
    let target = Arc::new(a.common.target());
    let before = a.common.pid.map(rss_kb);
    let (conns, connect_s) = open_many(&a.common, &target, a.clients, 0, None, None).await?;
    tokio::time::sleep(Duration::from_secs_f64(a.hold)).await;
    let after = a.common.pid.map(rss_kb);
    let per_conn = match (before, after) {
        (Some(b), Some(af)) => Some((af as f64 - b as f64) / a.clients as f64),
        _ => None,
    };
    drop(conns);
    Ok(json!({
        "scenario": "idle",
        "clients": a.clients,
        "connect_seconds": connect_s,
        "connect_rate": a.clients as f64 / connect_s,
        "rss_before_kb": before,
        "rss_after_kb": after,
        "rss_per_conn_kb": per_conn,
    }))
}

/// Publishes into `room` at a rate (or as fast as possible) and returns how many were sent.
async fn publish(
    publisher: &mut Conn,
    room: &str,
    a: &FanoutArgs,
    rec: &Recorder,
    stop: &AtomicBool,
) -> Result<u64, String> {
    let mut sent = 0;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(a.duration);
    while sent < a.messages && !stop.load(Ordering::Relaxed) {
        if a.rate > 0.0 {
            let at = started + Duration::from_secs_f64(sent as f64 / a.rate);
            if at > deadline {
                break;
            }
            tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
        }
        publisher.publish(room, sent, rec.now_ns(), a.size).await?;
        sent += 1;
    }
    publisher.flush().await?;
    Ok(sent)
}

async fn wait_for(rec: &Recorder, expected: u64, drain: f64) {
    let deadline = Instant::now() + Duration::from_secs_f64(drain);
    while rec.delivered() < expected && Instant::now() < deadline {
        rec.wait_progress(Duration::from_millis(100)).await;
    }
}

async fn fanout(a: FanoutArgs, churn: Option<f64>) -> Result<serde_json::Value, String> {
    let target = Arc::new(a.common.target());
    let rec = Arc::new(Recorder::new());
    let rss_before = a.common.pid.map(rss_kb);
    let (subs, connect_s) = open_many(
        &a.common,
        &target,
        a.clients,
        0,
        Some("bench".into()),
        Some(rec.clone()),
    )
    .await?;
    let mut publisher = Conn::open(&target, a.clients + 1).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let cycles = Arc::new(AtomicU64::new(0));
    let churner = churn.map(|rate| {
        let (target, stop, cycles) = (target.clone(), stop.clone(), cycles.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let at = started + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
                let (target, cycles) = (target.clone(), cycles.clone());
                let index = 1_000_000 + (i as usize % 500_000);
                tokio::spawn(async move {
                    if let Ok(mut c) = Conn::open(&target, index).await {
                        if c.join("bench").await.is_ok() {
                            cycles.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
                i += 1;
            }
        })
    });
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    rec.mark_start();
    let sent = publish(&mut publisher, "bench", &a, &rec, &stop).await?;
    let publish_s = t0.elapsed().as_secs_f64();
    let expected = sent * a.clients as u64;
    wait_for(&rec, expected, a.drain).await;
    stop.store(true, Ordering::Relaxed);
    if let Some(c) = churner {
        let _ = c.await;
    }
    let cpu = cpu_seconds() - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    let rss_after = a.common.pid.map(rss_kb);
    let delivered = rec.delivered();
    let active = rec.active_seconds();
    drop(subs);
    let mut out = json!({
        "scenario": if churn.is_some() { "churn" } else { "fanout" },
        "clients": a.clients,
        "connect_seconds": connect_s,
        "rate": a.rate,
        "size": a.size,
        "sent": sent,
        "publish_seconds": publish_s,
        "expected": expected,
        "delivered": delivered,
        "lost": expected.saturating_sub(delivered),
        "deliveries_per_sec": delivered as f64 / active.max(1e-9),
        "latency_ms": rec.latency_json(),
        "client_cpu_pct": 100.0 * cpu / wall,
        "rss_before_kb": rss_before,
        "rss_after_kb": rss_after,
    });
    if churn.is_some() {
        out["churn_cycles"] = json!(cycles.load(Ordering::Relaxed));
        out["churn_cycles_per_sec"] = json!(cycles.load(Ordering::Relaxed) as f64 / wall);
    }
    Ok(out)
}

async fn rooms(a: RoomsArgs) -> Result<serde_json::Value, String> {
    let target = Arc::new(a.common.target());
    let rec = Arc::new(Recorder::new());
    let mut members: Vec<(usize, Conn)> = Vec::new();
    let started = Instant::now();
    for r in 0..a.rooms {
        let (conns, _) = open_many(
            &a.common,
            &target,
            a.members,
            r * a.members,
            Some(format!("room-{r}")),
            Some(rec.clone()),
        )
        .await?;
        members.extend(conns.into_iter().map(|c| (r, c)));
    }
    let connect_s = started.elapsed().as_secs_f64();
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    rec.mark_start();
    let deadline = t0 + Duration::from_secs_f64(a.duration);
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let per_conn = Duration::from_millis(a.interval_ms.max(1));
    for (i, (room, mut c)) in members.into_iter().enumerate() {
        let (rec, sent, size) = (rec.clone(), sent.clone(), a.size);
        // Spread first publishes over one interval so members do not publish in lockstep.
        let offset = per_conn.mul_f64((i as f64 * 0.618_034) % 1.0);
        tasks.push(tokio::spawn(async move {
            let mut at = t0 + offset;
            let mut seq = 0;
            while at < deadline {
                tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
                if c.publish(&format!("room-{room}"), seq, rec.now_ns(), size)
                    .await
                    .is_err()
                {
                    break;
                }
                let _ = c.flush().await;
                sent.fetch_add(1, Ordering::Relaxed);
                seq += 1;
                at += per_conn;
            }
            c
        }));
    }
    let mut conns = Vec::new();
    for t in tasks {
        if let Ok(c) = t.await {
            conns.push(c);
        }
    }
    let sent = sent.load(Ordering::Relaxed);
    // Members receive their own publish too (native and Socket.IO room emits include the sender).
    let expected = sent * a.members as u64;
    wait_for(&rec, expected, a.drain).await;
    let cpu = cpu_seconds() - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    let delivered = rec.delivered();
    let rss = a.common.pid.map(rss_kb);
    drop(conns);
    Ok(json!({
        "scenario": "rooms",
        "rooms": a.rooms,
        "members": a.members,
        "clients": a.rooms * a.members,
        "connect_seconds": connect_s,
        "sent": sent,
        "expected": expected,
        "delivered": delivered,
        "lost": expected.saturating_sub(delivered),
        "deliveries_per_sec": delivered as f64 / rec.active_seconds().max(1e-9),
        "publishes_per_sec": sent as f64 / a.duration,
        "latency_ms": rec.latency_json(),
        "client_cpu_pct": 100.0 * cpu / wall,
        "rss_after_kb": rss,
    }))
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let common = match &cli.scenario {
        Scenario::Idle(a) => a.common.clone(),
        Scenario::Fanout(a) => a.common.clone(),
        Scenario::Rooms(a) => a.common.clone(),
        Scenario::Churn(a) => a.fanout.common.clone(),
    };
    if let Err(e) = loopback_only(&common.addr) {
        eprintln!("roomcast-bench: {e}");
        std::process::exit(2);
    }
    let result = match cli.scenario {
        Scenario::Idle(a) => idle(a).await,
        Scenario::Fanout(a) => fanout(a, None).await,
        Scenario::Rooms(a) => rooms(a).await,
        Scenario::Churn(a) => {
            let rate = a.cycles;
            fanout(a.fanout, Some(rate)).await
        }
    };
    match result {
        Ok(mut v) => {
            v["protocol"] = json!(common.protocol_name());
            v["label"] = json!(common.label);
            v["addr"] = json!(common.addr.to_string());
            println!("{v}");
        }
        Err(e) => {
            eprintln!("roomcast-bench: {e}");
            std::process::exit(1);
        }
    }
}
