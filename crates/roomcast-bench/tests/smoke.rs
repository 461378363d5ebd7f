//! The load generator against a real roomcast on 127.0.0.1: every scenario
//! runs briefly and reports complete, well-formed results, on one node and on
//! a two-node cluster over a real redis-server. (Speed is measured by
//! scripts/bench, never asserted here.)

use std::process::Command;

use roomcast_redis::testing::RedisServer;
use serde_json::Value;

/// A roomcast node on a free port: alone, or on the Redis at `broker`.
async fn node(broker: Option<&str>) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
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

fn bench(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_roomcast-bench"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_and_loses_nothing() {
    let (addr, _stop) = node(None).await;
    let addr = addr.to_string();
    let pid = std::process::id().to_string();
    let r = tokio::task::spawn_blocking({
        let (addr, pid) = (addr.clone(), pid.clone());
        move || {
            bench(&[
                "idle",
                "--addr",
                &addr,
                "--pid",
                &pid,
                "--clients",
                "50",
                "--hold",
                "0.1",
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(r["scenario"], "idle");
    assert!(r["rss_after_kb"].as_u64().unwrap() > 0);
    for protocol in ["native", "socketio"] {
        let r = tokio::task::spawn_blocking({
            let addr = addr.clone();
            move || {
                bench(&[
                    "fanout",
                    "--addr",
                    &addr,
                    "--protocol",
                    protocol,
                    "--clients",
                    "50",
                    "--messages",
                    "20",
                ])
            }
        })
        .await
        .unwrap();
        assert_eq!(
            (
                r["expected"].as_u64(),
                r["delivered"].as_u64(),
                r["lost"].as_u64()
            ),
            (Some(1000), Some(1000), Some(0)),
            "{r}"
        );
        assert!(r["latency_ms"]["p99"].as_f64().is_some(), "{r}");
        assert!(r["out_of_order"].as_u64().is_some(), "{r}");
    }
    let r = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || {
            bench(&[
                "rooms",
                "--addr",
                &addr,
                "--rooms",
                "5",
                "--members",
                "4",
                "--interval-ms",
                "100",
                "--duration",
                "0.5",
            ])
        }
    })
    .await
    .unwrap();
    assert!(r["sent"].as_u64().unwrap() > 0);
    assert_eq!(r["lost"], 0, "{r}");
    let r = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || {
            bench(&[
                "churn",
                "--addr",
                &addr,
                "--clients",
                "20",
                "--rate",
                "50",
                "--duration",
                "0.5",
                "--cycles",
                "20",
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(r["lost"], 0, "{r}");
    assert!(r["churn_cycles"].as_u64().unwrap() > 0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_spreads_over_a_cluster_and_counts_per_node() {
    let redis = RedisServer::start();
    let (a, _stop_a) = node(Some(&redis.url())).await;
    let (b, _stop_b) = node(Some(&redis.url())).await;
    let addrs = format!("{a},{b}");
    for (protocol, publish_on) in [("native", "1"), ("socketio", "2")] {
        let r = tokio::task::spawn_blocking({
            let addrs = addrs.clone();
            move || {
                bench(&[
                    "fanout",
                    "--addr",
                    &addrs,
                    "--protocol",
                    protocol,
                    "--publish-on",
                    publish_on,
                    "--clients",
                    "21",
                    "--messages",
                    "10",
                    "--drain",
                    "10",
                ])
            }
        })
        .await
        .unwrap();
        assert_eq!(r["targets"], 2, "{r}");
        assert!(r["out_of_order"].as_u64().is_some(), "{r}");
        assert_eq!(
            (r["expected"].as_u64(), r["lost"].as_u64()),
            (Some(210), Some(0)),
            "{r}"
        );
        let publisher = if publish_on == "1" { a } else { b };
        assert_eq!(r["publish_on"], publisher.to_string(), "{r}");
        let per: Vec<_> = r["per_target"].as_array().unwrap().iter().collect();
        assert_eq!(per.len(), 2, "{r}");
        for (t, (addr, subscribers)) in per.iter().zip([(a, 11), (b, 10)]) {
            assert_eq!(t["addr"], addr.to_string(), "{r}");
            assert_eq!(t["subscribers"], subscribers, "{r}");
            assert_eq!(t["delivered"], subscribers * 10, "{r}");
            assert!(t["latency_ms"]["p99"].as_f64().is_some(), "{r}");
        }
    }
}

#[test]
fn refuses_non_loopback_targets() {
    let out = Command::new(env!("CARGO_BIN_EXE_roomcast-bench"))
        .args(["idle", "--addr", "10.1.2.3:80", "--clients", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
    // Every target of a cluster is checked, not only the first.
    let out = Command::new(env!("CARGO_BIN_EXE_roomcast-bench"))
        .args([
            "fanout",
            "--addr",
            "127.0.0.1:9,10.1.2.3:80",
            "--clients",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("10.1.2.3:80"));
}
