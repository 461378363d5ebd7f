//! What the bench's integration tests share: a roomcast node in this
//! process, and roomcast-bench runs with a deadline.

#![allow(dead_code)]

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A roomcast node on a free port: alone, or on the Redis at `broker`.
pub async fn node(
    broker: Option<&str>,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    node_with(broker, |_| {}).await
}

/// [`node`] with the configuration changed by `tweak` first.
pub async fn node_with(
    broker: Option<&str>,
    tweak: impl FnOnce(&mut roomcast::Config),
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let mut config = roomcast::Config::default();
    config.socketio.builtin_events = true;
    config.socketio.event_prefix = String::new();
    // As bench/roomcast.toml: the fanout publisher is not a member of the room.
    config.rooms = vec![roomcast::roomcast_core::room::RoomRule {
        publish: roomcast::roomcast_core::room::PublishRule::Anyone,
        ..roomcast::roomcast_core::room::RoomRule::default_for("bench")
    }];
    if let Some(url) = broker {
        config.broker.url = url.to_owned();
    }
    tweak(&mut config);
    let server = roomcast::Server::try_new(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let router = server.router();
        server
            .run(listener, router, async {
                let _ = rx.await;
            })
            .await
    });
    (addr, tx)
}

/// Longest one bench run may take here (each asks for well under 30 s).
const BENCH_DEADLINE: Duration = Duration::from_secs(120);

/// Runs roomcast-bench with `args` and returns its JSON line; the run is
/// killed, and the test fails saying so, if it has not ended within
/// [`BENCH_DEADLINE`].
pub fn bench(args: &[&str]) -> Value {
    let out = bench_output(args);
    assert!(
        out.status.success(),
        "roomcast-bench {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "roomcast-bench {args:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// [`bench`] without the checks: the process's exit status and output.
pub fn bench_output(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_roomcast-bench"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain both pipes on their own threads so that a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + BENCH_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "roomcast-bench {args:?} did not finish within {BENCH_DEADLINE:?} (killed); stderr: {}",
                String::from_utf8_lossy(&err_reader.join().unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

/// `roomcast-bench idle` against `addr` with this process's RSS: its JSON line.
pub async fn idle(addr: &str, protocol: &'static str, clients: usize, hold: &'static str) -> Value {
    let (addr, pid) = (addr.to_owned(), std::process::id().to_string());
    let clients = clients.to_string();
    tokio::task::spawn_blocking(move || {
        bench(&[
            "idle",
            "--addr",
            &addr,
            "--pid",
            &pid,
            "--protocol",
            protocol,
            "--clients",
            &clients,
            "--hold",
            hold,
        ])
    })
    .await
    .unwrap()
}

/// Runs `roomcast-bench idle` with 2,000 `protocol` connections against a node
/// in this process and fails if one costs `bound_kb` of RSS or more.
pub async fn idle_guard(protocol: &'static str, bound_kb: f64) {
    let (addr, _stop) = node(None).await;
    let r = idle(&addr.to_string(), protocol, 2000, "0.5").await;
    let kb = r["rss_per_conn_kb"].as_f64().expect("rss_per_conn_kb");
    eprintln!("idle guard: {protocol} {kb:.1} KB per connection (bound {bound_kb} KB)");
    assert!(
        kb < bound_kb,
        "an idle {protocol} connection costs {kb:.1} KB, over the guard's {bound_kb} KB: {r}"
    );
}
