//! The load generator against a real roomcast on 127.0.0.1: every scenario
//! runs briefly and reports complete, well-formed results, on one node and on
//! a two-node cluster over a real redis-server. (Speed is measured by
//! scripts/bench, never asserted here.)

use std::process::Command;

use roomcast_redis::testing::RedisServer;

mod common;

use common::{bench, idle, node, node_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_and_loses_nothing() {
    let (addr, _stop) = node(None).await;
    let addr = addr.to_string();
    let r = idle(&addr, "native", 50, "0.1").await;
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
        // One publisher through one server: every subscriber sees publish order.
        assert_eq!(r["out_of_order"].as_u64(), Some(0), "{r}");
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
    assert_eq!(r["lost"].as_u64(), Some(0), "{r}");
    assert_eq!(r["delivered"], r["expected"], "{r}");
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
    assert_eq!(r["out_of_order"].as_u64(), Some(0), "{r}");
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
        // Order is kept across the cluster too (one publisher, one Redis channel).
        assert_eq!(r["out_of_order"].as_u64(), Some(0), "{r}");
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

/// `--slow-percent`: the chosen subscribers never read, the server closes
/// them as slow consumers (counted from its /metrics), and the others still
/// get every message in order. Paced (1,000 messages of 1 KB a second, 8 MB
/// per subscriber in all) so that readers keep up with a 256 KiB queue while
/// the slow ones overflow it: on loopback the kernel first takes about 4 MB
/// of a never-read connection into its send buffer (tcp_wmem max), measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscribers_are_closed_and_the_others_lose_nothing() {
    let (addr, _stop) = node_with(None, |c| c.limits.max_queue_bytes = 256 << 10).await;
    let addr = addr.to_string();
    let r = tokio::task::spawn_blocking(move || {
        bench(&[
            "fanout",
            "--addr",
            &addr,
            "--clients",
            "20",
            "--slow-percent",
            "10",
            "--rate",
            "1000",
            "--duration",
            "20",
            "--messages",
            "8000",
            "--size",
            "1000",
            "--drain",
            "20",
        ])
    })
    .await
    .unwrap();
    assert_eq!(r["slow"]["subscribers"], 2, "{r}");
    assert_eq!(r["slow"]["readers"], 18, "{r}");
    assert_eq!(r["slow"]["closed_slow_consumer"], 2, "{r}");
    assert_eq!(r["slow"]["closed_4001"], 2, "{r}");
    assert_eq!(
        (
            r["expected"].as_u64(),
            r["delivered"].as_u64(),
            r["lost"].as_u64()
        ),
        (Some(18 * 8000), Some(18 * 8000), Some(0)),
        "{r}"
    );
    assert_eq!(r["out_of_order"].as_u64(), Some(0), "{r}");
}

/// A short soak: presence rooms, publishing and churn; every delivery is
/// checked (staying and churned connections), and the figures and the
/// markdown table come out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_checks_every_delivery() {
    let (addr, _stop) = node(None).await;
    let addr = addr.to_string();
    let pid = std::process::id().to_string();
    let md = std::env::temp_dir().join(format!("roomcast-soak-smoke-{}.md", std::process::id()));
    let md_arg = md.to_str().unwrap().to_owned();
    let r = tokio::task::spawn_blocking(move || {
        bench(&[
            "soak",
            "--addr",
            &addr,
            "--pid",
            &pid,
            "--connections",
            "200",
            "--rooms",
            "20",
            "--rate",
            "40",
            "--churn",
            "20",
            "--duration",
            "4s",
            "--sample",
            "1s",
            "--window",
            "2s",
            "--markdown",
            &md_arg,
        ])
    })
    .await
    .unwrap();
    assert_eq!(r["pass"], true, "{r}");
    assert_eq!(r["connections"], 200, "{r}");
    assert_eq!(r["publishers"], 1, "{r}");
    assert!(r["published"].as_u64().unwrap() > 100, "{r}");
    for who in ["stayers", "churned"] {
        let f = &r[who];
        assert!(f["expected"].as_u64().unwrap() > 0, "{who}: {r}");
        assert_eq!(f["received"], f["expected"], "{who}: {r}");
        assert_eq!(
            (
                f["lost"].as_u64(),
                f["duplicates"].as_u64(),
                f["out_of_order"].as_u64()
            ),
            (Some(0), Some(0), Some(0)),
            "{who}: {r}"
        );
    }
    assert!(r["churned"]["connections"].as_u64().unwrap() > 20, "{r}");
    assert_eq!(r["unexpected_closes"], 0, "{r}");
    assert!(r["rss_last_kb"].as_u64().unwrap() > 0, "{r}");
    assert!(r["windows"].as_array().unwrap().len() >= 2, "{r}");
    let text = std::fs::read_to_string(&md).unwrap();
    let _ = std::fs::remove_file(&md);
    assert!(
        text.contains("| t (m:ss) |") && text.contains("**PASS"),
        "{text}"
    );
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
