//! Delivery counting, latency histograms, and process measurements.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::Notify;

const SHARDS: usize = 32;

/// Counts deliveries and records publish→receive latency, from many tasks.
pub struct Recorder {
    epoch: Instant,
    shards: Vec<Mutex<Histogram<u64>>>,
    delivered: AtomicU64,
    started_ns: AtomicU64,
    last_ns: AtomicU64,
    progress: Notify,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            epoch: Instant::now(),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Histogram::new_with_bounds(1, 300_000_000, 3).expect("valid bounds"))
                })
                .collect(),
            delivered: AtomicU64::new(0),
            started_ns: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            progress: Notify::new(),
        }
    }

    /// Nanoseconds since the recorder was made: the timestamp put in each message.
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The moment publishing starts; deliveries/s are counted from here.
    pub fn mark_start(&self) {
        self.started_ns.store(self.now_ns(), Ordering::Relaxed);
    }

    /// Records a batch of latencies (µs) seen by one connection.
    pub fn record(&self, shard: usize, latencies_us: &[u64]) {
        if latencies_us.is_empty() {
            return;
        }
        {
            let mut h = self.shards[shard % SHARDS]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for &l in latencies_us {
                h.saturating_record(l.max(1));
            }
        }
        self.delivered
            .fetch_add(latencies_us.len() as u64, Ordering::Relaxed);
        self.last_ns.fetch_max(self.now_ns(), Ordering::Relaxed);
        self.progress.notify_waiters();
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Waits for more deliveries, at most `max`.
    pub async fn wait_progress(&self, max: Duration) {
        let _ = tokio::time::timeout(max, self.progress.notified()).await;
    }

    /// Seconds from the first publish to the last delivery.
    pub fn active_seconds(&self) -> f64 {
        let start = self.started_ns.load(Ordering::Relaxed);
        let last = self.last_ns.load(Ordering::Relaxed);
        last.saturating_sub(start) as f64 / 1e9
    }

    pub fn latency_json(&self) -> serde_json::Value {
        let mut all = Histogram::<u64>::new_with_bounds(1, 300_000_000, 3).expect("valid bounds");
        for s in &self.shards {
            let _ = all.add(&*s.lock().unwrap_or_else(|e| e.into_inner()));
        }
        if all.is_empty() {
            return serde_json::Value::Null;
        }
        let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
        json!({
            "p50": ms(0.50), "p90": ms(0.90), "p99": ms(0.99), "p999": ms(0.999),
            "max": all.max() as f64 / 1000.0, "mean": all.mean() / 1000.0,
        })
    }
}

/// Resident memory of a process, in KiB (0 if it cannot be read).
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system) this process has used, in seconds.
pub fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat; here (after pid and comm) at 11 and 12.
    (ticks(11) + ticks(12)) / 100.0
}
