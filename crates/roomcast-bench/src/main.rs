//! `roomcast-bench`: a load generator for roomcast and the servers it is
//! compared with. It speaks roomcast's native protocol, Socket.IO (WebSocket
//! transport, `join`/`publish` events) and plain WebSocket group chat, targets
//! loopback addresses only, spreads its source addresses over 127.x.y.z, is
//! bounded in connections and time, and prints one JSON line of results.
//!
//! Several `--addr` (repeated or comma-separated) measure a cluster: the
//! connections go round-robin over the nodes, the fanout publisher is on the
//! first (or `--publish-on`), and the results are given in total and per node.
//!
//! Scenarios:
//! - `idle`: N connections held open; server RSS before and after, per-connection memory, connect rate.
//! - `fanout`: one room with N subscribers and a publisher; deliveries/s, publish→receive
//!   latency percentiles, lost messages, messages a subscriber got out of publish order.
//! - `rooms`: many small rooms whose members publish now and then (the chat-app shape).
//! - `churn`: connect/join/disconnect cycles while a fanout runs.
//! - `soak`: many connections for a long time with presence, publishing and
//!   churn; samples the server's memory, files and threads every minute and
//!   checks every delivery (see `soak.rs`).

mod client;
mod rpc;
mod soak;
mod stats;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;

use client::{Conn, Protocol, Target};
use stats::{cpu_seconds, rss_total_kb, Recorder};

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
    /// Client events through the server's event proxy to a backend this
    /// generator serves, against the same backend called directly.
    Rpc(rpc::RpcArgs),
    /// Many connections for a long time: presence, steady publishing, churn;
    /// samples the server every minute and checks every delivery.
    Soak(soak::SoakArgs),
}

#[derive(Args, Clone)]
struct Common {
    /// Server address, on 127.0.0.0/8 or ::1. Several (repeated or comma-separated)
    /// are the nodes of a cluster: connection i goes to node i mod N.
    #[arg(
        long = "addr",
        visible_alias = "target",
        value_name = "ADDR",
        value_delimiter = ',',
        default_value = "127.0.0.1:8700"
    )]
    addrs: Vec<SocketAddr>,
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
    /// Server process id, to read its RSS from /proc; with several (repeated or
    /// comma-separated) the RSS figures are their sum.
    #[arg(long = "pid", value_name = "PID", value_delimiter = ',')]
    pids: Vec<u32>,
    /// New connections per second while connecting (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    connect_rate: u32,
    /// Connections opened at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// A label for the server, copied into the output.
    #[arg(long, default_value = "")]
    label: String,
    /// A connection token every connection presents (`?token=` for native,
    /// the Socket.IO CONNECT auth `{"token": ...}`).
    #[arg(long)]
    token: Option<String>,
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
    /// The node (1 = the first `--addr`) the publisher connects to.
    #[arg(long, default_value_t = 1)]
    publish_on: usize,
    /// This share of the subscribers (in %, spread evenly over them) never
    /// read their socket: they join, then keep the TCP connection open and
    /// stop polling it. They expect nothing; the server's /metrics tell how
    /// many it closed as slow consumers (4001).
    #[arg(long, default_value_t = 0.0)]
    slow_percent: f64,
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
    /// With several nodes: every member of room r on node r mod N (by
    /// default the members of each room go round-robin over the nodes).
    #[arg(long)]
    whole_rooms: bool,
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
    /// One target per `--addr`, in order.
    fn targets(&self) -> Vec<Arc<Target>> {
        (0..self.addrs.len())
            .map(|node| Arc::new(self.target(node)))
            .collect()
    }

    fn target(&self, node: usize) -> Target {
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
            addr: self.addrs[node],
            path,
            protocol,
            node,
            token: self.token.clone(),
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

/// Every target must be on loopback, and `--publish-on` must name one of them.
fn check_targets(addrs: &[SocketAddr], publish_on: usize) -> Result<(), String> {
    if addrs.is_empty() {
        return Err("no --addr given".into());
    }
    addrs.iter().try_for_each(loopback_only)?;
    if publish_on == 0 || publish_on > addrs.len() {
        return Err(format!(
            "--publish-on {publish_on}: there are {} targets (1..={})",
            addrs.len(),
            addrs.len()
        ));
    }
    Ok(())
}

/// Connections per node when `n` connections numbered from `first_index`
/// go round-robin over `nodes` nodes (connection i to node i mod `nodes`).
fn spread(first_index: usize, n: usize, nodes: usize) -> Vec<usize> {
    let mut per_node = vec![0; nodes];
    for i in first_index..first_index + n {
        per_node[i % nodes] += 1;
    }
    per_node
}

/// Opens `n` connections (joined to `room`, if any) at the configured pace,
/// connection i to node i mod the number of targets.
async fn open_many(
    common: &Common,
    targets: &[Arc<Target>],
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
        let index = first_index + i;
        let (target, room) = (targets[index % targets.len()].clone(), room.clone());
        handles.push(tokio::spawn(async move {
            let c = Conn::open(&target, index).await;
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
    let targets = a.common.targets();
    let before = rss_total_kb(&a.common.pids);
    let (conns, connect_s) = open_many(&a.common, &targets, a.clients, 0, None, None).await?;
    tokio::time::sleep(Duration::from_secs_f64(a.hold)).await;
    let after = rss_total_kb(&a.common.pids);
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
        if a.rate > 0.0 {
            // The sink holds a fed message back until the next feed or a flush:
            // without this, every paced message would leave one interval late.
            publisher.flush().await?;
        }
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

/// Whether subscriber `i` of `clients` is one of the `slow` that never read:
/// every (clients / slow)-th, so they are spread evenly over the subscribers
/// (and over the nodes of a cluster).
fn is_slow(i: usize, clients: usize, slow: usize) -> bool {
    slow > 0 && i % (clients / slow).max(1) == 0 && i / (clients / slow).max(1) < slow
}

/// How many of `clients` subscribers `--slow-percent` makes slow.
fn slow_count(clients: usize, percent: f64) -> usize {
    ((clients as f64 * percent / 100.0).round() as usize).min(clients)
}

/// The server counters that tell how slow consumers were closed, summed over the targets.
async fn slow_counters(targets: &[Arc<Target>]) -> Result<[f64; 4], String> {
    let http = reqwest::Client::new();
    let mut scrapes = Vec::new();
    for t in targets {
        scrapes.push(stats::scrape(&http, t.addr).await?);
    }
    Ok([
        stats::sum_of(&scrapes, "roomcast_slow_consumer_disconnects_total"),
        stats::sum_of(&scrapes, "roomcast_disconnects_total{code=\"4001\"}"),
        stats::sum_of(&scrapes, "roomcast_disconnects_total{code=\"4002\"}"),
        stats::sum_of(&scrapes, "roomcast_connections_closed_total"),
    ])
}

async fn fanout(a: FanoutArgs, churn: Option<f64>) -> Result<serde_json::Value, String> {
    let targets = a.common.targets();
    let rec = Arc::new(Recorder::new(targets.len()));
    let rss_before = rss_total_kb(&a.common.pids);
    let slow = slow_count(a.clients, a.slow_percent);
    let counters_before = if slow > 0 {
        Some(slow_counters(&targets).await?)
    } else {
        None
    };
    let (mut subs, connect_s) = open_many(
        &a.common,
        &targets,
        a.clients,
        0,
        Some("bench".into()),
        None,
    )
    .await?;
    for (i, c) in subs.iter_mut().enumerate() {
        if !is_slow(i, a.clients, slow) {
            c.start_receiving(rec.clone());
        }
    }
    let publish_on = targets[a.publish_on - 1].clone();
    let mut publisher = Conn::open(&publish_on, a.clients + 1).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let cycles = Arc::new(AtomicU64::new(0));
    let churner = churn.map(|rate| {
        let (targets, stop, cycles) = (targets.clone(), stop.clone(), cycles.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let at = started + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
                let index = 1_000_000 + (i as usize % 500_000);
                let (target, cycles) = (targets[index % targets.len()].clone(), cycles.clone());
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
    let readers = a.clients - slow;
    let expected = sent * readers as u64;
    wait_for(&rec, expected, a.drain).await;
    stop.store(true, Ordering::Relaxed);
    if let Some(c) = churner {
        let _ = c.await;
    }
    let cpu = cpu_seconds() - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    let rss_after = rss_total_kb(&a.common.pids);
    let delivered = rec.delivered();
    let active = rec.active_seconds();
    // Read while the slow subscribers are still connected.
    let counters_after = match counters_before {
        Some(_) => Some(slow_counters(&targets).await?),
        None => None,
    };
    drop(subs);
    let mut readers_per_node = vec![0usize; targets.len()];
    for i in (0..a.clients).filter(|&i| !is_slow(i, a.clients, slow)) {
        readers_per_node[i % targets.len()] += 1;
    }
    let per_node: Vec<serde_json::Value> = readers_per_node
        .into_iter()
        .enumerate()
        .map(|(node, subscribers)| {
            let (expected, delivered) = (sent * subscribers as u64, rec.delivered_by(node));
            json!({
                "addr": targets[node].addr.to_string(),
                "subscribers": subscribers,
                "expected": expected,
                "delivered": delivered,
                "lost": expected.saturating_sub(delivered),
                "latency_ms": rec.latency_json_of(node),
            })
        })
        .collect();
    let mut out = json!({
        "scenario": if churn.is_some() { "churn" } else { "fanout" },
        "clients": a.clients,
        "slow_subscribers": slow,
        "connect_seconds": connect_s,
        "rate": a.rate,
        "size": a.size,
        "sent": sent,
        "publish_seconds": publish_s,
        "expected": expected,
        "delivered": delivered,
        "lost": expected.saturating_sub(delivered),
        "out_of_order": rec.out_of_order(),
        "deliveries_per_sec": delivered as f64 / active.max(1e-9),
        "latency_ms": rec.latency_json(),
        "client_cpu_pct": 100.0 * cpu / wall,
        "rss_before_kb": rss_before,
        "rss_after_kb": rss_after,
        "publish_on": publish_on.addr.to_string(),
    });
    if targets.len() > 1 {
        out["per_target"] = json!(per_node);
    }
    if let (Some(b), Some(af)) = (counters_before, counters_after) {
        let d = |k: usize| (af[k] - b[k]).max(0.0) as u64;
        out["slow"] = json!({
            "subscribers": slow,
            "readers": readers,
            "closed_slow_consumer": d(0),
            "closed_4001": d(1),
            "closed_4002": d(2),
            "connections_closed": d(3),
        });
    }
    if churn.is_some() {
        out["churn_cycles"] = json!(cycles.load(Ordering::Relaxed));
        out["churn_cycles_per_sec"] = json!(cycles.load(Ordering::Relaxed) as f64 / wall);
    }
    Ok(out)
}

async fn rooms(a: RoomsArgs) -> Result<serde_json::Value, String> {
    let targets = a.common.targets();
    let rec = Arc::new(Recorder::new(targets.len()));
    let mut members: Vec<(usize, Conn)> = Vec::new();
    let started = Instant::now();
    let n = targets.len();
    for r in 0..a.rooms {
        let on = if a.whole_rooms {
            &targets[r % n..r % n + 1]
        } else {
            &targets[..]
        };
        let (conns, _) = open_many(
            &a.common,
            on,
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
    let rss = rss_total_kb(&a.common.pids);
    drop(conns);
    let members_per_node = if a.whole_rooms {
        spread(0, a.rooms, n)
            .iter()
            .map(|r| r * a.members)
            .collect()
    } else {
        spread(0, a.rooms * a.members, n)
    };
    let per_node: Vec<serde_json::Value> = members_per_node
        .into_iter()
        .enumerate()
        .map(|(node, members)| {
            json!({
                "addr": targets[node].addr.to_string(),
                "members": members,
                "delivered": rec.delivered_by(node),
                "latency_ms": rec.latency_json_of(node),
            })
        })
        .collect();
    let mut out = json!({
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
        "whole_rooms": a.whole_rooms,
    });
    if targets.len() > 1 {
        out["per_target"] = json!(per_node);
    }
    Ok(out)
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let common = match &cli.scenario {
        Scenario::Idle(a) => a.common.clone(),
        Scenario::Fanout(a) => a.common.clone(),
        Scenario::Rooms(a) => a.common.clone(),
        Scenario::Churn(a) => a.fanout.common.clone(),
        Scenario::Rpc(a) => a.common.clone(),
        Scenario::Soak(a) => a.common.clone(),
    };
    let publish_on = match &cli.scenario {
        Scenario::Fanout(a) => a.publish_on,
        Scenario::Churn(a) => a.fanout.publish_on,
        _ => 1,
    };
    let backend_ok = match &cli.scenario {
        Scenario::Rpc(a) => loopback_only(&a.backend),
        _ => Ok(()),
    };
    if let Err(e) = check_targets(&common.addrs, publish_on).and(backend_ok) {
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
        Scenario::Rpc(a) => rpc::run(a).await,
        Scenario::Soak(a) => soak::run(a).await,
    };
    match result {
        Ok(mut v) => {
            v["protocol"] = json!(common.protocol_name());
            v["label"] = json!(common.label);
            v["addr"] = json!(common.addrs[0].to_string());
            v["addrs"] = json!(common
                .addrs
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>());
            v["targets"] = json!(common.addrs.len());
            println!("{v}");
            // A soak that found a problem says so in its exit status too.
            if v["pass"] == json!(false) {
                std::process::exit(3);
            }
        }
        Err(e) => {
            eprintln!("roomcast-bench: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_round_robin_over_the_nodes() {
        assert_eq!(spread(0, 7, 3), vec![3, 2, 2]);
        assert_eq!(spread(0, 5, 1), vec![5]);
        // The members of room 1 of 4 members each are connections 4..8.
        assert_eq!(spread(4, 4, 3), vec![1, 2, 1]);
    }

    #[test]
    fn slow_subscribers_are_spread_and_counted_exactly() {
        for (clients, percent) in [(10_000, 1.0), (21, 10.0), (7, 50.0), (5, 100.0), (50, 0.0)] {
            let slow = slow_count(clients, percent);
            let picked: Vec<usize> = (0..clients)
                .filter(|&i| is_slow(i, clients, slow))
                .collect();
            assert_eq!(picked.len(), slow, "{clients} {percent}");
        }
        assert_eq!(slow_count(10_000, 1.0), 100);
        assert!(is_slow(0, 10_000, 100) && is_slow(100, 10_000, 100));
        assert!(!is_slow(1, 10_000, 100) && !is_slow(10_000, 10_000, 100));
    }

    #[test]
    fn every_target_is_checked() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:2".parse().unwrap();
        let far: SocketAddr = "10.0.0.1:3".parse().unwrap();
        assert!(check_targets(&[a, b], 2).is_ok());
        assert!(check_targets(&[a, far], 1)
            .unwrap_err()
            .contains("loopback"));
        assert!(check_targets(&[a, b], 3)
            .unwrap_err()
            .contains("--publish-on"));
        assert!(check_targets(&[a], 0).is_err());
    }

    #[test]
    fn targets_may_be_repeated_or_comma_separated() {
        let cli = Cli::try_parse_from([
            "roomcast-bench",
            "fanout",
            "--addr",
            "127.0.0.1:1,127.0.0.1:2",
            "--target",
            "127.0.0.1:3",
            "--pid",
            "10,11",
        ])
        .unwrap();
        let Scenario::Fanout(a) = cli.scenario else {
            panic!("not fanout")
        };
        assert_eq!(a.common.addrs.len(), 3);
        assert_eq!(a.common.pids, vec![10, 11]);
        assert_eq!(a.publish_on, 1);
    }
}
