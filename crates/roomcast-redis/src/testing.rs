//! Real Redis for tests: a `redis-server` child process on a free loopback
//! port, with persistence off, killed when dropped; or a Redis Cluster of
//! several such processes.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process; see the module docs.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

fn binary() -> String {
    std::env::var("ROOMCAST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    ///
    /// Panics with a hint when `redis-server` is not installed
    /// (`apt-get install redis-server`, or set `ROOMCAST_REDIS_SERVER`).
    pub fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("no free port")
            .port();
        let mut server = RedisServer { port, child: None };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        self.spawn_with(&[]);
    }

    fn spawn_with(&mut self, extra: &[&str]) {
        let child = Command::new(binary())
            .args(extra)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &std::env::temp_dir().to_string_lossy(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}): install redis-server (apt-get install redis-server) \
                     or set ROOMCAST_REDIS_SERVER",
                    binary()
                )
            });
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = redis::Client::open(self.url())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if ok.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer within 10 s",
                self.port
            );
            // Polling a process's readiness: there is no event to await.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// How many connections subscribe to `channel` (`PUBSUB NUMSUB`); 0 when
    /// the server does not answer.
    pub fn subscribers(&self, channel: &str) -> usize {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| {
                redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg(channel)
                    .query::<(String, usize)>(&mut c)
            })
            .map_or(0, |(_, n)| n)
    }

    /// Kills the server (SIGKILL: no goodbye to clients, data lost).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again, empty, on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("no free port")
        .port()
}

/// A Redis Cluster of `redis-server` child processes (masters only, no
/// replicas), made with `redis-cli --cluster create`.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    /// Starts `n` (at least 3) masters and waits until the cluster is ok.
    pub fn start(n: usize) -> RedisCluster {
        let dir = std::env::temp_dir().join(format!(
            "roomcast-redis-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let mut nodes = Vec::new();
        for _ in 0..n.max(3) {
            let mut s = RedisServer {
                port: free_port(),
                child: None,
            };
            let conf = dir.join(format!("nodes-{}.conf", s.port));
            s.spawn_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &conf.to_string_lossy(),
            ]);
            nodes.push(s);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli (package redis-tools) runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes, dir };
        cluster.wait_ok();
        cluster
    }

    fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for s in &self.nodes {
            loop {
                let info = redis::Client::open(s.url())
                    .and_then(|c| c.get_connection())
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c))
                    .unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the redis cluster did not become ok"
                );
                // Polling the cluster's state: there is no event to await.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The seed URLs, comma-separated (what `broker.url` takes with `broker.cluster`).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|s| s.url())
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for s in &mut self.nodes {
            s.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
