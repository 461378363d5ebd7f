//! The shared broker and presence suites, run against a real redis-server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use roomcast_core::{broker, presence};
use roomcast_redis::testing::RedisServer;
use roomcast_redis::{Redis, RedisConfig};

fn config(url: &str, prefix: &str) -> RedisConfig {
    let mut c = RedisConfig::new(url);
    c.prefix = prefix.to_owned();
    c
}

#[tokio::test]
async fn redis_broker_passes_the_shared_suite() {
    let server = RedisServer::start();
    let url = server.url();
    broker::suite::run(|| Arc::new(Redis::start(config(&url, "suite")).unwrap().broker())).await;
}

#[tokio::test]
async fn redis_presence_passes_the_shared_suite() {
    let server = RedisServer::start();
    let url = server.url();
    let n = AtomicUsize::new(0);
    presence::suite::run(|| {
        let prefix = format!("p{}", n.fetch_add(1, Ordering::Relaxed));
        Redis::start(config(&url, &prefix)).unwrap().presence()
    })
    .await;
}
