//! `soak`: many connections for a long time, with presence, steady publishing
//! and connection churn, sampling the server every `--sample` (default one
//! minute) and checking that every connection got exactly what it had to.
//!
//! Shape: `--connections` subscriber connections, two per user; the users are
//! spread contiguously over `--rooms` rooms (both connections of a user in
//! its room; rooms keep their default rule, so presence and join/leave events
//! are on). One publisher connection per 100 rooms is a member of them and
//! publishes `--rate` publications per second round-robin over the rooms
//! (`exclude_self`, so publishers receive only presence events). Every
//! `--churn-percent`-th user is in the churn pool: `--churn` times a second one
//! of the pool's connections (round-robin) is closed and a new one of the same
//! user joins the same room, so the total stays constant. The others stay the
//! whole run.
//!
//! Accounting: each room's publications carry a sequence number, assigned
//! before the publication is sent by the room's one publisher. A connection
//! reads the room's counter `from` right after its join ack: every publication
//! numbered `from` or above was sent after the server had made it a member, so
//! it must arrive (lower ones may, and count as neither). A churned connection,
//! before it closes, takes the counter `upto` and waits (at most 10 s) for
//! everything in `[from, upto)`; what is missing then is lost. A staying
//! connection is checked at each sample against the counters of `lag` seconds
//! earlier, and at the end against the final counters once delivery has
//! drained. Sequence numbers also reveal duplicates and reordering.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{sequence, timestamp, Conn, Reader, Target, Writer};
use crate::stats;
use crate::Common;

/// Rooms one publisher connection serves (the server's default
/// `limits.max_rooms_per_connection`).
const ROOMS_PER_PUBLISHER: usize = 100;
/// Longest a connection may take to open, authenticate and join.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a closing connection waits for what it still expects.
const RETIRE_WAIT: Duration = Duration::from_secs(10);
/// Longest the end of the run waits for the last deliveries.
const DRAIN: Duration = Duration::from_secs(15);
const SHARDS: usize = 16;
/// Samples (after the first) needed to judge the RSS slope.
const RSS_MIN_POINTS: usize = 4;
/// RSS growth (fitted slope, % of the mean RSS per hour) that fails the soak.
const RSS_MAX_GROWTH_PCT_PER_HOUR: f64 = 10.0;

#[derive(Args)]
pub(crate) struct SoakArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Subscriber connections (two per user); the publishers come on top.
    #[arg(long, default_value_t = 15_000)]
    connections: usize,
    /// Rooms; the users are spread over them contiguously.
    #[arg(long, default_value_t = 1500)]
    rooms: usize,
    /// Publications per second over all rooms (round-robin).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Churn per second: this many connections closed and as many opened.
    #[arg(long, default_value_t = 50.0)]
    churn: f64,
    /// Share of users (in %, every k-th) whose connections churn.
    #[arg(long, default_value_t = 20.0)]
    churn_percent: f64,
    /// How long to publish and churn: `30m`, `2m`, `90s`, `1h` (a bare number is seconds).
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    duration: Duration,
    /// Time between samples.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    sample: Duration,
    /// Length of the summary windows at the end.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    window: Duration,
    /// Approximate payload size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Also write the results as a markdown table to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

/// `30m`, `90s`, `1h`, `500ms`, or seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit in {s:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// What one connection received of its room's numbered publications.
#[derive(Default)]
struct Seen {
    /// Bit k: publication `from + k` arrived.
    bits: Vec<u64>,
    last: Option<u64>,
    /// Publications numbered below `from` (allowed, not expected).
    early: u64,
    duplicates: u64,
    out_of_order: u64,
}

impl Seen {
    fn add(&mut self, from: u64, seq: u64) {
        if self.last.is_some_and(|l| seq < l) {
            self.out_of_order += 1;
        }
        self.last = self.last.max(Some(seq));
        if seq < from {
            self.early += 1;
            return;
        }
        let k = (seq - from) as usize;
        if self.bits.len() <= k / 64 {
            self.bits.resize(k / 64 + 1, 0);
        }
        let bit = 1u64 << (k % 64);
        if self.bits[k / 64] & bit != 0 {
            self.duplicates += 1;
        }
        self.bits[k / 64] |= bit;
    }

    /// How many of the first `n` expected publications arrived.
    fn count_below(&self, n: u64) -> u64 {
        let n = n as usize;
        let full = n / 64;
        let mut c: u64 = self
            .bits
            .iter()
            .take(full)
            .map(|w| w.count_ones() as u64)
            .sum();
        if n % 64 != 0 {
            if let Some(w) = self.bits.get(full) {
                c += (w & ((1u64 << (n % 64)) - 1)).count_ones() as u64;
            }
        }
        c
    }
}

/// One subscriber connection's state, shared with its reader task.
struct Track {
    room: usize,
    from: u64,
    seen: Mutex<Seen>,
    /// Set before this side closes: the end of the stream is then expected.
    closing: AtomicBool,
}

impl Track {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Live {
    track: Arc<Track>,
    writer: Writer,
    reader: JoinHandle<()>,
}

/// Counters and latency for the whole run.
struct Shared {
    epoch: Instant,
    /// Per room: publications numbered so far.
    counters: Vec<AtomicU64>,
    /// Latency (µs) of deliveries since the last sample.
    window: Vec<Mutex<Histogram<u64>>>,
    received: AtomicU64,
    published: AtomicU64,
    publish_errors: AtomicU64,
    connect_errors: AtomicU64,
    /// Connections (subscribers or publishers) the server ended while this side did not close them.
    unexpected_closes: AtomicU64,
    close_reasons: Mutex<Vec<String>>,
    churn_cycles: AtomicU64,
    churn_skipped: AtomicU64,
    /// Churned connections after they closed: expected, received, duplicates, out of order.
    retired: [AtomicU64; 4],
    retired_conns: AtomicU64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn record(&self, shard: usize, us: u64) {
        self.window[shard % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .saturating_record(us.max(1));
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    /// The latencies since the last call.
    fn take_window(&self) -> Histogram<u64> {
        let mut all = histogram();
        for s in &self.window {
            let mut h = s.lock().unwrap_or_else(|e| e.into_inner());
            let _ = all.add(&*h);
            h.reset();
        }
        all
    }

    fn unexpected(&self, why: String) {
        self.unexpected_closes.fetch_add(1, Ordering::Relaxed);
        let mut r = self.close_reasons.lock().unwrap_or_else(|e| e.into_inner());
        if r.len() < 10 {
            r.push(why);
        }
    }

    fn snapshot(&self) -> Vec<u64> {
        self.counters
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect()
    }
}

/// Reads one connection until it ends: numbered publications go to `track`
/// (when there is one) and the latency histogram.
fn spawn_reader(
    mut stream: Reader,
    track: Arc<Track>,
    shared: Arc<Shared>,
    shard: usize,
    counted: bool,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let why = loop {
            match stream.next().await {
                Some(Ok(Message::Text(t))) if counted => {
                    let t = t.as_str();
                    if let (Some(sent), Some(seq)) = (timestamp(t), sequence(t)) {
                        shared.record(shard, shared.now_ns().saturating_sub(sent) / 1000);
                        track.seen().add(track.from, seq);
                    }
                }
                Some(Ok(Message::Close(f))) => break format!("closed by the server: {f:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => break e.to_string(),
                None => break "stream ended".into(),
            }
        };
        if !track.closing.load(Ordering::SeqCst) {
            shared.unexpected(why);
        }
    })
}

/// Opens a connection for `user`, authenticates, joins `rooms`, and starts reading it.
async fn open_member(
    target: &Arc<Target>,
    index: usize,
    user: &str,
    rooms: &[usize],
    shared: &Arc<Shared>,
    counted: bool,
) -> Result<Live, String> {
    let opening = async {
        let mut c = Conn::open(target, index).await?;
        c.auth(user).await?;
        for &r in rooms {
            c.join(&room_name(r)).await?;
        }
        let from = shared.counters[rooms[0]].load(Ordering::SeqCst);
        let (reader, writer) = c.into_parts().ok_or("already being read")?;
        let track = Arc::new(Track {
            room: rooms[0],
            from,
            seen: Mutex::new(Seen::default()),
            closing: AtomicBool::new(false),
        });
        let reader = spawn_reader(reader, track.clone(), shared.clone(), index, counted);
        Ok(Live {
            track,
            writer,
            reader,
        })
    };
    tokio::time::timeout(OPEN_TIMEOUT, opening)
        .await
        .map_err(|_| format!("connection {index} not open and joined within {OPEN_TIMEOUT:?}"))?
}

fn room_name(r: usize) -> String {
    format!("soak-{r}")
}

/// Closes a connection this side chose to close: sends a close frame, waits
/// (bounded) for the reader to see the end, then stops it.
async fn close(live: Live) {
    live.track.closing.store(true, Ordering::SeqCst);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = live.writer.lock().await.send(Message::Close(None)).await;
    })
    .await;
    let abort = live.reader.abort_handle();
    if tokio::time::timeout(Duration::from_secs(5), live.reader)
        .await
        .is_err()
    {
        abort.abort();
    }
}

/// A churned connection's end: waits (bounded) for every publication it
/// expects, adds its figures to the run's, and closes it.
async fn retire(live: Live, shared: Arc<Shared>) {
    let t = &live.track;
    let upto = shared.counters[t.room].load(Ordering::SeqCst);
    let need = upto.saturating_sub(t.from);
    let deadline = Instant::now() + RETIRE_WAIT;
    while t.seen().count_below(need) < need && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    {
        let s = t.seen();
        let r = &shared.retired;
        r[0].fetch_add(need, Ordering::Relaxed);
        r[1].fetch_add(s.count_below(need), Ordering::Relaxed);
        r[2].fetch_add(s.duplicates, Ordering::Relaxed);
        r[3].fetch_add(s.out_of_order, Ordering::Relaxed);
    }
    shared.retired_conns.fetch_add(1, Ordering::Relaxed);
    close(live).await;
}

/// One subscriber connection's place: who it is and what holds it now.
struct Slot {
    user: usize,
    room: usize,
    churns: bool,
    live: Mutex<Option<Live>>,
    busy: AtomicBool,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Figures over the staying connections: expected, received, duplicates, out of order.
fn check_stayers(slots: &[Arc<Slot>], counters: &[u64]) -> [u64; 4] {
    let mut f = [0u64; 4];
    for slot in slots.iter().filter(|s| !s.churns) {
        let g = slot.lock();
        let Some(live) = g.as_ref() else { continue };
        let t = &live.track;
        let need = counters[t.room].saturating_sub(t.from);
        let s = t.seen();
        f[0] += need;
        f[1] += s.count_below(need);
        f[2] += s.duplicates;
        f[3] += s.out_of_order;
    }
    f
}

/// A server process's figures at one moment (summed over the pids).
#[derive(Clone, Copy, Default)]
struct Proc {
    rss_kb: u64,
    fds: u64,
    threads: u64,
    alive: bool,
}

fn proc_figures(pids: &[u32]) -> Option<Proc> {
    if pids.is_empty() {
        return None;
    }
    let alive = pids.iter().all(|&p| {
        std::fs::read_to_string(format!("/proc/{p}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
            .unwrap_or(false)
    });
    Some(Proc {
        rss_kb: stats::rss_total_kb(pids).unwrap_or(0),
        fds: pids.iter().map(|&p| stats::open_fds(p)).sum(),
        threads: pids.iter().map(|&p| stats::threads(p)).sum(),
        alive,
    })
}

/// One row of the per-sample table.
struct Row {
    at_s: f64,
    proc: Option<Proc>,
    server_conns: Option<f64>,
    slow_closed: Option<f64>,
    published: u64,
    received: u64,
    hist: Histogram<u64>,
    stay: [u64; 4],
    retired: [u64; 4],
    churn_cycles: u64,
}

fn ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0)
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

fn fmt_opt(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

const HEADER: &str = "| t (m:ss) | server RSS (MB) | fds | threads | server conns | pubs | deliveries | p50 ms | p99 ms | stayers expected | received | lost | churned conns expected | lost | dup | out of order | churn cycles | slow-consumer closes |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|";

impl Row {
    fn markdown(&self) -> String {
        let p = self.proc;
        format!(
            "| {}:{:02} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.at_s.round() as u64 / 60,
            self.at_s.round() as u64 % 60,
            p.map_or("-".into(), |p| format!("{:.1}", p.rss_kb as f64 / 1024.0)),
            fmt_opt(p.map(|p| p.fds)),
            fmt_opt(p.map(|p| p.threads)),
            fmt_opt(self.server_conns.map(|v| v as u64)),
            self.published,
            self.received,
            fmt_ms(ms(&self.hist, 0.5)),
            fmt_ms(ms(&self.hist, 0.99)),
            self.stay[0],
            self.stay[1],
            self.stay[0].saturating_sub(self.stay[1]),
            self.retired[0],
            self.retired[0].saturating_sub(self.retired[1]),
            self.stay[2] + self.retired[2],
            self.stay[3] + self.retired[3],
            self.churn_cycles,
            fmt_opt(self.slow_closed.map(|v| v as u64)),
        )
    }
}

/// Server-side counters, summed over the targets (`None` if a scrape failed).
async fn server_counters(http: &reqwest::Client, targets: &[Arc<Target>]) -> Option<(f64, f64)> {
    let mut scrapes = Vec::new();
    for t in targets {
        scrapes.push(stats::scrape(http, t.addr).await.ok()?);
    }
    Some((
        stats::sum_of(&scrapes, "roomcast_connections"),
        stats::sum_of(&scrapes, "roomcast_slow_consumer_disconnects_total"),
    ))
}

/// Users `0..users` over `rooms` rooms, contiguously: user u in room u·rooms/users.
fn room_of(user: usize, users: usize, rooms: usize) -> usize {
    user * rooms / users.max(1)
}

/// Every k-th user (k = 100 / percent) is in the churn pool.
fn churns(user: usize, percent: f64) -> bool {
    percent > 0.0 && user % ((100.0 / percent).round() as usize).max(1) == 0
}

pub(crate) async fn run(a: SoakArgs) -> Result<serde_json::Value, String> {
    if a.connections < 2 || a.rooms == 0 || a.rooms > a.connections / 2 {
        return Err("need --connections >= 2 and 1 <= --rooms <= connections / 2".into());
    }
    if a.rate <= 0.0 || a.churn < 0.0 || a.sample.is_zero() || a.window.is_zero() {
        return Err("--rate, --sample and --window must be above 0".into());
    }
    let targets = a.common.targets();
    let users = a.connections / 2;
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        counters: (0..a.rooms).map(|_| AtomicU64::new(0)).collect(),
        window: (0..SHARDS).map(|_| Mutex::new(histogram())).collect(),
        received: AtomicU64::new(0),
        published: AtomicU64::new(0),
        publish_errors: AtomicU64::new(0),
        connect_errors: AtomicU64::new(0),
        unexpected_closes: AtomicU64::new(0),
        close_reasons: Mutex::new(Vec::new()),
        churn_cycles: AtomicU64::new(0),
        churn_skipped: AtomicU64::new(0),
        retired: Default::default(),
        retired_conns: AtomicU64::new(0),
    });
    let slots: Vec<Arc<Slot>> = (0..users * 2)
        .map(|i| {
            let user = i / 2;
            Arc::new(Slot {
                user,
                room: room_of(user, users, a.rooms),
                churns: churns(user, a.churn_percent),
                live: Mutex::new(None),
                busy: AtomicBool::new(false),
            })
        })
        .collect();
    let pool: Vec<Arc<Slot>> = slots.iter().filter(|s| s.churns).cloned().collect();
    if a.churn > 0.0 && pool.is_empty() {
        return Err("--churn needs a churn pool (--churn-percent above 0)".into());
    }

    // Connect: publishers first (one per 100 rooms), then every subscriber.
    let connect_started = Instant::now();
    let mut publishers = Vec::new();
    for (k, rooms) in (0..a.rooms)
        .collect::<Vec<_>>()
        .chunks(ROOMS_PER_PUBLISHER)
        .enumerate()
    {
        let index = users * 2 + k;
        let target = &targets[index % targets.len()];
        let live = open_member(
            target,
            index,
            &format!("soak-publisher-{k}"),
            rooms,
            &shared,
            false,
        )
        .await?;
        publishers.push(live);
    }
    let sem = Arc::new(tokio::sync::Semaphore::new(
        a.common.connect_concurrency.max(1),
    ));
    let mut opening = Vec::new();
    for (i, slot) in slots.iter().enumerate() {
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let (target, slot, shared) = (
            targets[i % targets.len()].clone(),
            slot.clone(),
            shared.clone(),
        );
        opening.push(tokio::spawn(async move {
            let live = open_member(
                &target,
                i,
                &format!("u{}", slot.user),
                &[slot.room],
                &shared,
                true,
            )
            .await;
            drop(permit);
            live.map(|l| *slot.lock() = Some(l))
        }));
    }
    for o in opening {
        o.await.map_err(|e| e.to_string())??;
    }
    let connect_s = connect_started.elapsed().as_secs_f64();
    eprintln!(
        "soak: {} subscriber connections ({} users, {} in the churn pool) and {} publishers in {} rooms, connected in {connect_s:.1} s",
        slots.len(),
        users,
        pool.len(),
        publishers.len(),
        a.rooms
    );

    let http = reqwest::Client::new();
    let t0 = Instant::now();
    let end = t0 + a.duration;
    let stop = Arc::new(AtomicBool::new(false));

    // Publishing: publication i goes to room i mod rooms, from that room's publisher.
    let writers: Vec<Writer> = publishers.iter().map(|p| p.writer.clone()).collect();
    let publisher = {
        let (shared, rate, rooms, size) = (shared.clone(), a.rate, a.rooms, a.size);
        tokio::spawn(async move {
            let pad = "x".repeat(size.saturating_sub(40));
            let mut i = 0u64;
            loop {
                let at = t0 + Duration::from_secs_f64(i as f64 / rate);
                if at >= end {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                let room = (i % rooms as u64) as usize;
                let seq = shared.counters[room].fetch_add(1, Ordering::SeqCst);
                let frame = format!(
                    r#"{{"type":"publish","room":"{}","event":"b","exclude_self":true,"data":{{"t":{},"s":{seq},"p":"{pad}"}}}}"#,
                    room_name(room),
                    shared.now_ns()
                );
                let w = &writers[room / ROOMS_PER_PUBLISHER];
                match w.lock().await.send(Message::text(frame)).await {
                    Ok(()) => shared.published.fetch_add(1, Ordering::Relaxed),
                    Err(_) => shared.publish_errors.fetch_add(1, Ordering::Relaxed),
                };
                i += 1;
            }
        })
    };

    // Churn: every 1/churn s the next pool connection is replaced.
    let churner = (a.churn > 0.0).then(|| {
        let (shared, stop, targets, pool) =
            (shared.clone(), stop.clone(), targets.clone(), pool.clone());
        let (rate, base) = (a.churn, users * 2 + publishers.len());
        tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            let mut i = 0usize;
            loop {
                let at = t0 + Duration::from_secs_f64(i as f64 / rate);
                if at >= end || stop.load(Ordering::Relaxed) {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                let slot = pool[i % pool.len()].clone();
                let index = base + i;
                i += 1;
                if slot.busy.swap(true, Ordering::SeqCst) {
                    shared.churn_skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let (shared, target) = (shared.clone(), targets[index % targets.len()].clone());
                tasks.spawn(async move {
                    let old = slot.lock().take();
                    let (user, rooms) = (format!("u{}", slot.user), [slot.room]);
                    let (new, ()) = tokio::join!(
                        open_member(&target, index, &user, &rooms, &shared, true),
                        async {
                            if let Some(old) = old {
                                retire(old, shared.clone()).await;
                            }
                        }
                    );
                    match new {
                        Ok(l) => *slot.lock() = Some(l),
                        Err(_) => {
                            shared.connect_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    shared.churn_cycles.fetch_add(1, Ordering::Relaxed);
                    slot.busy.store(false, Ordering::SeqCst);
                });
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        })
    });

    // Sampling.
    let lag = (a.sample / 4).min(Duration::from_secs(5));
    let pids = &a.common.pids;
    let mut rows: Vec<Row> = Vec::new();
    let (conns0, slow0) = server_counters(&http, &targets).await.unzip();
    let baseline = proc_figures(pids);
    eprintln!(
        "soak: before publishing: server RSS {} KB, fds {}, threads {}, server connections {}",
        fmt_opt(baseline.map(|p| p.rss_kb)),
        fmt_opt(baseline.map(|p| p.fds)),
        fmt_opt(baseline.map(|p| p.threads)),
        fmt_opt(conns0.map(|v| v as u64))
    );
    eprintln!("{HEADER}");
    let mut last_pub = 0;
    let mut last_recv = 0;
    let mut k = 1u32;
    let mut server_died = false;
    loop {
        let at = (t0 + a.sample * k).min(end);
        let last = at >= end;
        let counters = if last {
            // Let the last publications and closes finish, then wait (bounded)
            // until every staying connection has all it expects.
            tokio::time::sleep_until(at.into()).await;
            let _ = publisher_done(&publisher).await;
            stop.store(true, Ordering::Relaxed);
            let fin = shared.snapshot();
            let deadline = Instant::now() + DRAIN;
            while Instant::now() < deadline {
                let f = check_stayers(&slots, &fin);
                if f[1] >= f[0] {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            fin
        } else {
            tokio::time::sleep_until((at - lag).into()).await;
            let snap = shared.snapshot();
            tokio::time::sleep_until(at.into()).await;
            snap
        };
        let proc = proc_figures(pids);
        let (server_conns, slow_closed) = server_counters(&http, &targets).await.unzip();
        let published = shared.published.load(Ordering::Relaxed);
        let received = shared.received.load(Ordering::Relaxed);
        let r = &shared.retired;
        let row = Row {
            at_s: at.duration_since(t0).as_secs_f64(),
            proc,
            server_conns,
            slow_closed,
            published: published - last_pub,
            received: received - last_recv,
            hist: shared.take_window(),
            stay: check_stayers(&slots, &counters),
            retired: [0, 1, 2, 3].map(|i| r[i].load(Ordering::Relaxed)),
            churn_cycles: shared.churn_cycles.load(Ordering::Relaxed),
        };
        (last_pub, last_recv) = (published, received);
        eprintln!("{}", row.markdown());
        server_died |= proc.is_some_and(|p| !p.alive);
        rows.push(row);
        if last || server_died {
            break;
        }
        k += 1;
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(c) = churner {
        let _ = tokio::time::timeout(Duration::from_secs(30), c).await;
    }
    // The pool's connections still open are checked as if they were churned now.
    let closing: Vec<_> = pool
        .iter()
        .filter_map(|slot| slot.lock().take())
        .map(|l| tokio::spawn(retire(l, shared.clone())))
        .collect();
    for c in closing {
        let _ = c.await;
    }
    let wall = t0.elapsed();

    // Summary.
    let final_row = rows.last().ok_or("no samples")?;
    let stay = final_row.stay;
    let retired = [0, 1, 2, 3].map(|i| shared.retired[i].load(Ordering::Relaxed));
    let mut windows = Vec::new();
    let mut merged = histogram();
    let mut w_end = a.window;
    for (i, row) in rows.iter().enumerate() {
        let _ = merged.add(&row.hist);
        let t = Duration::from_secs_f64(row.at_s);
        if t >= w_end || i + 1 == rows.len() {
            windows.push((w_end.saturating_sub(a.window), t, merged.clone()));
            merged.reset();
            while w_end <= t {
                w_end += a.window;
            }
        }
    }
    // The first sample is the warm-up (buffers and allocator pools fill as
    // traffic starts): the slope is fitted from the second on, and judged
    // only with at least RSS_MIN_POINTS of them.
    let rss_points: Vec<(f64, f64)> = rows
        .iter()
        .skip(1)
        .filter_map(|r| r.proc.map(|p| (r.at_s / 60.0, p.rss_kb as f64)))
        .collect();
    let slope = stats::slope(&rss_points);
    let mean_rss = rss_points.iter().map(|p| p.1).sum::<f64>() / rss_points.len().max(1) as f64;
    let growth_per_hour_pct = slope
        .filter(|_| rss_points.len() >= RSS_MIN_POINTS)
        .map(|s| 100.0 * s * 60.0 / mean_rss.max(1.0));
    let unexpected = shared.unexpected_closes.load(Ordering::Relaxed);
    let connect_errors = shared.connect_errors.load(Ordering::Relaxed);
    let publish_errors = shared.publish_errors.load(Ordering::Relaxed);
    let slow_closed = match (slow0, final_row.slow_closed) {
        (Some(a), Some(b)) => Some((b - a).max(0.0) as u64),
        _ => None,
    };
    let mut problems = Vec::new();
    let stay_lost = stay[0].saturating_sub(stay[1]);
    let retired_lost = retired[0].saturating_sub(retired[1]);
    if stay_lost > 0 {
        problems.push(format!(
            "{stay_lost} deliveries lost by staying connections"
        ));
    }
    if retired_lost > 0 {
        problems.push(format!(
            "{retired_lost} deliveries lost by churned connections before they closed"
        ));
    }
    let dups = stay[2] + retired[2];
    let ooo = stay[3] + retired[3];
    if dups > 0 {
        problems.push(format!("{dups} duplicate deliveries"));
    }
    if ooo > 0 {
        problems.push(format!("{ooo} deliveries out of order"));
    }
    if unexpected > 0 {
        problems.push(format!("{unexpected} connections closed by the server"));
    }
    if connect_errors > 0 {
        problems.push(format!("{connect_errors} churn connections failed to open"));
    }
    if publish_errors > 0 {
        problems.push(format!("{publish_errors} publications could not be sent"));
    }
    if server_died {
        problems.push("the server process exited".into());
    }
    if slow_closed.is_some_and(|n| n > 0) {
        problems.push(format!("{} slow-consumer closes", slow_closed.unwrap_or(0)));
    }
    if growth_per_hour_pct.is_some_and(|g| g > RSS_MAX_GROWTH_PCT_PER_HOUR) {
        problems.push(format!(
            "RSS grows {:.0} KB/min ({:.1}% of its mean per hour)",
            slope.unwrap_or(0.0),
            growth_per_hour_pct.unwrap_or(0.0)
        ));
    }
    let pass = problems.is_empty();
    let verdict = if pass {
        format!(
            "PASS: {} min, {} deliveries checked on staying connections and {} on churned ones, none lost, duplicated or reordered; RSS slope {} KB/min ({})",
            fmt_1(wall.as_secs_f64() / 60.0),
            stay[0],
            retired[0],
            slope.map_or("-".into(), fmt_1),
            growth_per_hour_pct.map_or(
                format!("too few samples to judge: fewer than {RSS_MIN_POINTS} after the first"),
                |g| format!("{g:.1}% of the mean RSS per hour, limit {RSS_MAX_GROWTH_PCT_PER_HOUR}%")
            )
        )
    } else {
        format!("FAIL: {}", problems.join("; "))
    };

    let mut md = String::new();
    let mut tail = String::new();
    md.push_str(&format!(
        "Soak: {} subscriber connections ({} users × 2, {} in the churn pool) + {} publishers, {} rooms (presence on), {} publications/s of ~{} bytes, churn {}/s closes + {}/s connects, {} min; protocol {}; sampled every {} s (the staying connections' expectations lag {} s).\n\n",
        slots.len(), users, pool.len(), publishers.len(), a.rooms, a.rate, a.size, a.churn, a.churn,
        fmt_1(a.duration.as_secs_f64() / 60.0), a.common.protocol_name(), a.sample.as_secs_f64(), lag.as_secs_f64()
    ));
    md.push_str(&format!(
        "Before publishing: server RSS {} KB, {} fds, {} threads; connecting took {connect_s:.1} s.\n\n{HEADER}\n",
        fmt_opt(baseline.map(|p| p.rss_kb)),
        fmt_opt(baseline.map(|p| p.fds)),
        fmt_opt(baseline.map(|p| p.threads))
    ));
    for r in &rows {
        md.push_str(&r.markdown());
        md.push('\n');
    }
    tail.push_str(
        "\n| window (min) | deliveries | p50 ms | p99 ms | p99.9 ms | max ms |\n|---|---:|---:|---:|---:|---:|\n",
    );
    let mut windows_json = Vec::new();
    for (from, to, h) in &windows {
        tail.push_str(&format!(
            "| {}–{} | {} | {} | {} | {} | {} |\n",
            fmt_1(from.as_secs_f64() / 60.0),
            fmt_1(to.as_secs_f64() / 60.0),
            h.len(),
            fmt_ms(ms(h, 0.5)),
            fmt_ms(ms(h, 0.99)),
            fmt_ms(ms(h, 0.999)),
            fmt_ms((!h.is_empty()).then(|| h.max() as f64 / 1000.0)),
        ));
        windows_json.push(json!({
            "from_min": from.as_secs_f64() / 60.0, "to_min": to.as_secs_f64() / 60.0,
            "deliveries": h.len(), "p50_ms": ms(h, 0.5), "p99_ms": ms(h, 0.99), "p999_ms": ms(h, 0.999),
        }));
    }
    tail.push_str(&format!(
        "\nRSS slope (least squares over the samples after the first): {} KB/min. Churn: {} cycles ({} skipped: the slot was still being replaced), {} churned connections checked. Slow-consumer closes: {}. Connections the server closed: {}.\n\n**{verdict}**\n",
        slope.map_or("-".into(), fmt_1),
        shared.churn_cycles.load(Ordering::Relaxed),
        shared.churn_skipped.load(Ordering::Relaxed),
        shared.retired_conns.load(Ordering::Relaxed),
        fmt_opt(slow_closed),
        unexpected,
    ));
    eprintln!("{tail}");
    md.push_str(&tail);
    if let Some(path) = &a.markdown {
        std::fs::write(path, &md).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    for p in publishers {
        p.track.closing.store(true, Ordering::SeqCst);
        p.reader.abort();
    }
    for s in &slots {
        if let Some(l) = s.lock().take() {
            l.track.closing.store(true, Ordering::SeqCst);
            l.reader.abort();
        }
    }
    let reasons = shared
        .close_reasons
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(json!({
        "scenario": "soak",
        "connections": slots.len(),
        "users": users,
        "churn_pool": pool.len(),
        "publishers": publishers_len(a.rooms),
        "rooms": a.rooms,
        "rate": a.rate,
        "churn": a.churn,
        "duration_s": a.duration.as_secs_f64(),
        "wall_s": wall.as_secs_f64(),
        "connect_seconds": connect_s,
        "published": shared.published.load(Ordering::Relaxed),
        "received": shared.received.load(Ordering::Relaxed),
        "stayers": {"expected": stay[0], "received": stay[1], "lost": stay_lost, "duplicates": stay[2], "out_of_order": stay[3]},
        "churned": {"connections": shared.retired_conns.load(Ordering::Relaxed), "expected": retired[0], "received": retired[1], "lost": retired_lost, "duplicates": retired[2], "out_of_order": retired[3]},
        "lost": stay_lost + retired_lost,
        "duplicates": dups,
        "out_of_order": ooo,
        "churn_cycles": shared.churn_cycles.load(Ordering::Relaxed),
        "churn_skipped": shared.churn_skipped.load(Ordering::Relaxed),
        "connect_errors": connect_errors,
        "publish_errors": publish_errors,
        "unexpected_closes": unexpected,
        "close_reasons": reasons,
        "slow_consumer_closes": slow_closed,
        "rss_first_kb": rows.first().and_then(|r| r.proc).map(|p| p.rss_kb),
        "rss_last_kb": final_row.proc.map(|p| p.rss_kb),
        "rss_slope_kb_per_min": slope,
        "fds_last": final_row.proc.map(|p| p.fds),
        "threads_last": final_row.proc.map(|p| p.threads),
        "windows": windows_json,
        "pass": pass,
        "verdict": verdict,
    }))
}

fn publishers_len(rooms: usize) -> usize {
    rooms.div_ceil(ROOMS_PER_PUBLISHER)
}

fn fmt_1(v: f64) -> String {
    format!("{v:.1}")
}

/// Waits (bounded) for the publishing task, which stops by itself at the end.
async fn publisher_done(p: &JoinHandle<()>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.is_finished()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("m").is_err());
    }

    /// The accounting counts only publications at or above `from`, and tells
    /// losses, duplicates and reordering apart.
    #[test]
    fn seen_counts_the_expected_window() {
        let mut s = Seen::default();
        for seq in [3, 5, 6, 7, 70, 71] {
            s.add(5, seq);
        }
        assert_eq!(s.early, 1);
        // 5, 6, 7 of the first three; 70 and 71 are bits 65 and 66.
        assert_eq!(s.count_below(3), 3);
        assert_eq!(s.count_below(66), 4);
        assert_eq!(s.count_below(67), 5);
        assert_eq!(s.count_below(100), 5);
        assert_eq!((s.duplicates, s.out_of_order), (0, 0));
        s.add(5, 6);
        assert_eq!((s.duplicates, s.out_of_order), (1, 1));
        assert_eq!(s.count_below(100), 5);
    }

    #[test]
    fn users_spread_over_rooms_and_one_in_five_churns() {
        let (users, rooms) = (7500, 1500);
        let mut per_room = vec![0; rooms];
        let mut churners = vec![0; rooms];
        for u in 0..users {
            per_room[room_of(u, users, rooms)] += 1;
            if churns(u, 20.0) {
                churners[room_of(u, users, rooms)] += 1;
            }
        }
        assert!(per_room.iter().all(|&n| n == 5));
        assert!(churners.iter().all(|&n| n == 1));
        assert!(!churns(3, 0.0));
        assert_eq!(publishers_len(1500), 15);
        assert_eq!(publishers_len(301), 4);
    }
}
