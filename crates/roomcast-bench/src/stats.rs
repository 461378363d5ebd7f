//! Delivery counting, latency histograms, and process measurements.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::Notify;

const SHARDS: usize = 32;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 300_000_000, 3).expect("valid bounds")
}

/// Counts deliveries and records publish→receive latency, from many tasks,
/// in total and per group (the target a connection is on).
pub struct Recorder {
    epoch: Instant,
    /// `SHARDS` histograms per group, group-major.
    shards: Vec<Mutex<Histogram<u64>>>,
    delivered: AtomicU64,
    delivered_by_group: Vec<AtomicU64>,
    out_of_order: AtomicU64,
    started_ns: AtomicU64,
    last_ns: AtomicU64,
    progress: Notify,
}

impl Recorder {
    /// A recorder for connections in `groups` groups (at least one).
    pub fn new(groups: usize) -> Recorder {
        let groups = groups.max(1);
        Recorder {
            epoch: Instant::now(),
            shards: (0..SHARDS * groups)
                .map(|_| Mutex::new(histogram()))
                .collect(),
            delivered: AtomicU64::new(0),
            delivered_by_group: (0..groups).map(|_| AtomicU64::new(0)).collect(),
            out_of_order: AtomicU64::new(0),
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

    /// Records a batch of latencies (µs) seen by one connection of `group`.
    pub fn record(&self, group: usize, shard: usize, latencies_us: &[u64]) {
        if latencies_us.is_empty() {
            return;
        }
        let group = group % self.delivered_by_group.len();
        {
            let mut h = self.shards[group * SHARDS + shard % SHARDS]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for &l in latencies_us {
                h.saturating_record(l.max(1));
            }
        }
        let n = latencies_us.len() as u64;
        self.delivered.fetch_add(n, Ordering::Relaxed);
        self.delivered_by_group[group].fetch_add(n, Ordering::Relaxed);
        self.last_ns.fetch_max(self.now_ns(), Ordering::Relaxed);
        self.progress.notify_waiters();
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    pub fn delivered_by(&self, group: usize) -> u64 {
        self.delivered_by_group[group].load(Ordering::Relaxed)
    }

    /// A connection received a message whose sequence number is not above the
    /// highest it had seen (meaningful when one publisher numbers them).
    pub fn record_out_of_order(&self) {
        self.out_of_order.fetch_add(1, Ordering::Relaxed);
    }

    pub fn out_of_order(&self) -> u64 {
        self.out_of_order.load(Ordering::Relaxed)
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

    /// Latency percentiles in ms over every group.
    pub fn latency_json(&self) -> serde_json::Value {
        percentiles(&self.shards)
    }

    /// Latency percentiles in ms over one group.
    pub fn latency_json_of(&self, group: usize) -> serde_json::Value {
        percentiles(&self.shards[group * SHARDS..(group + 1) * SHARDS])
    }
}

fn percentiles(shards: &[Mutex<Histogram<u64>>]) -> serde_json::Value {
    let mut all = histogram();
    for s in shards {
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

/// Resident memory of the processes together, in KiB (`None` without any).
pub fn rss_total_kb(pids: &[u32]) -> Option<u64> {
    (!pids.is_empty()).then(|| pids.iter().map(|&p| rss_kb(p)).sum())
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

/// Samples of a server's `/metrics` page: `name` or `name{labels}` → value.
pub type Samples = std::collections::BTreeMap<String, f64>;

/// Reads `http://<addr>/metrics` (Prometheus text), within 10 s.
pub async fn scrape(http: &reqwest::Client, addr: std::net::SocketAddr) -> Result<Samples, String> {
    let body = http
        .get(format!("http://{addr}/metrics"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("GET http://{addr}/metrics: {e}"))?
        .text()
        .await
        .map_err(|e| format!("GET http://{addr}/metrics: {e}"))?;
    Ok(parse_samples(&body))
}

/// Parses the Prometheus text format's sample lines (comments are skipped).
pub fn parse_samples(body: &str) -> Samples {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.trim().to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The sum of one sample over several scrapes (0 where it is missing).
pub fn sum_of(scrapes: &[Samples], name: &str) -> f64 {
    scrapes
        .iter()
        .map(|s| s.get(name).copied().unwrap_or(0.0))
        .sum()
}

/// A process's thread count (`Threads:` in /proc/<pid>/status; 0 if unreadable).
pub fn threads(pid: u32) -> u64 {
    status_field(pid, "Threads:")
}

/// How many files a process has open (entries of /proc/<pid>/fd; 0 if unreadable).
pub fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The least-squares slope of `y` over `x` (`None` with fewer than two
/// distinct `x`).
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_text_is_parsed() {
        let s = parse_samples(
            "# HELP a x\n# TYPE a counter\na 3\nroomcast_disconnects_total{code=\"4001\"} 7\n",
        );
        assert_eq!(s.get("a"), Some(&3.0));
        assert_eq!(
            s.get("roomcast_disconnects_total{code=\"4001\"}"),
            Some(&7.0)
        );
        assert_eq!(sum_of(&[s.clone(), s], "a"), 6.0);
    }

    #[test]
    fn slope_is_least_squares() {
        assert_eq!(slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]), Some(2.0));
        assert_eq!(slope(&[(1.0, 1.0)]), None);
        assert_eq!(slope(&[(1.0, 1.0), (1.0, 2.0)]), None);
        let s = slope(&[(0.0, 0.0), (1.0, 1.0), (2.0, 1.0), (3.0, 2.0)]).unwrap();
        assert!((s - 0.6).abs() < 1e-9, "{s}");
    }
}
