//! Real Redis for tests: a `redis-server` child process on a free loopback
//! port, with persistence off (or an append-only file in a directory of its
//! own), killed when dropped; or a Redis Cluster of several such processes.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process; see the module docs.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    /// The directory of its append-only file, when persistence is on.
    aof_dir: Option<std::path::PathBuf>,
}

fn binary() -> String {
    std::env::var("ROOMCAST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

/// How often a server is started on another port when its port was taken
/// between the moment it was found free and the server's bind.
const ATTEMPTS: usize = 5;

/// How long a started server has to answer PING.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// Whether a Redis server answers PING at `url` within a second (whatever
/// holds the port may accept and never answer).
fn ping(url: &str) -> bool {
    let limit = Duration::from_secs(1);
    redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(limit))
        .and_then(|mut c| {
            c.set_read_timeout(Some(limit))?;
            redis::cmd("PING").query::<String>(&mut c)
        })
        .is_ok()
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING; if the
    /// child exits first (its port was taken meanwhile), another port is tried.
    ///
    /// Panics with a hint when `redis-server` is not installed
    /// (`apt-get install redis-server`, or set `ROOMCAST_REDIS_SERVER`).
    pub fn start() -> RedisServer {
        RedisServer::start_on(|| free_port(u16::MAX), &[])
    }

    /// Starts a server that writes every command to an append-only file
    /// (`appendfsync always`) in a directory of its own: [`RedisServer::restart`]
    /// after a [`RedisServer::kill`] then finds the data it had. The directory
    /// is removed when the server is dropped.
    pub fn start_persistent() -> RedisServer {
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            let port = free_port(u16::MAX);
            let dir = std::env::temp_dir()
                .join(format!("roomcast-redis-aof-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("a temporary directory");
            let mut server = RedisServer {
                port,
                child: None,
                aof_dir: Some(dir),
            };
            match server.spawn_with(&[]) {
                Ok(()) => return server,
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start in {ATTEMPTS} attempts: {last}");
    }

    /// Starts a server with `extra` arguments on a port from `port`, retrying
    /// with a fresh port when the child exits before answering.
    fn start_on(port: impl Fn() -> u16, extra: &[&str]) -> RedisServer {
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            let mut server = RedisServer {
                port: port(),
                child: None,
                aof_dir: None,
            };
            let args: Vec<String> = extra
                .iter()
                .map(|a| a.replace("{port}", &server.port.to_string()))
                .collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            match server.spawn_with(&args) {
                Ok(()) => return server,
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start in {ATTEMPTS} attempts: {last}");
    }

    fn spawn(&mut self) {
        if let Err(e) = self.spawn_with(&[]) {
            panic!("{e}");
        }
    }

    /// Starts the child on `self.port`; an error when it exits or does not
    /// answer in time (the child is then killed).
    fn spawn_with(&mut self, extra: &[&str]) -> Result<(), String> {
        let (appendonly, dir) = match &self.aof_dir {
            Some(d) => ("yes", d.clone()),
            None => ("no", std::env::temp_dir()),
        };
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
                appendonly,
                "--appendfsync",
                "always",
                "--dir",
                &dir.to_string_lossy(),
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
        let r = self.wait_ready();
        if r.is_err() {
            self.kill();
        }
        r
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if ping(&self.url()) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "redis-server on port {} exited ({status}) before answering",
                        self.port
                    ));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "redis-server on port {} did not answer within {READY_WITHIN:?}",
                    self.port
                ));
            }
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

    /// Starts it again on the same port: empty, or with the data of its
    /// append-only file when it was started with [`RedisServer::start_persistent`].
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(d) = &self.aof_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A loopback port that was free a moment ago, at most `max`.
fn free_port(max: u16) -> u16 {
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("no free port")
            .port();
        if port <= max {
            return port;
        }
    }
    panic!("no free port at most {max}");
}

/// A Redis Cluster node also listens on its port + 10000 (the cluster bus).
const CLUSTER_BUS_OFFSET: u16 = 10_000;

/// A free port whose cluster bus port is free and exists too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port(u16::MAX - CLUSTER_BUS_OFFSET);
        if TcpListener::bind(("127.0.0.1", port + CLUSTER_BUS_OFFSET)).is_ok() {
            return port;
        }
    }
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
            free_port(u16::MAX)
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let mut nodes = Vec::new();
        for _ in 0..n.max(3) {
            let conf = dir.join("nodes-{port}.conf");
            nodes.push(RedisServer::start_on(
                free_cluster_port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf.to_string_lossy(),
                ],
            ));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn a_taken_port_is_noticed_and_another_one_tried() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let tries = Cell::new(0);
        let server = RedisServer::start_on(
            || {
                tries.set(tries.get() + 1);
                if tries.get() == 1 {
                    taken_port
                } else {
                    free_port(u16::MAX)
                }
            },
            &[],
        );
        assert_eq!(tries.get(), 2);
        assert_ne!(server.port(), taken_port);
    }

    #[test]
    fn cluster_ports_leave_room_for_the_bus() {
        for _ in 0..50 {
            assert!(free_cluster_port() <= u16::MAX - CLUSTER_BUS_OFFSET);
        }
    }
}
