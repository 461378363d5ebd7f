//! The shared broker and presence suites, run against a real redis-server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use roomcast_core::{broker, presence};
use roomcast_redis::testing::{RedisCluster, RedisServer};
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

fn cluster_config(url: &str, prefix: &str) -> RedisConfig {
    let mut c = config(url, prefix);
    c.cluster = true;
    c
}

#[tokio::test]
async fn redis_cluster_broker_passes_the_shared_suite() {
    let cluster = RedisCluster::start(3);
    let url = cluster.url();
    broker::suite::run(|| {
        Arc::new(
            Redis::start(cluster_config(&url, "suite"))
                .unwrap()
                .broker(),
        )
    })
    .await;
}

#[tokio::test]
async fn redis_cluster_presence_passes_the_shared_suite() {
    let cluster = RedisCluster::start(3);
    let url = cluster.url();
    let n = AtomicUsize::new(0);
    let mut stores = Vec::new();
    // One store per case of the shared suite.
    for _ in 0..5 {
        let prefix = format!("p{}", n.fetch_add(1, Ordering::Relaxed));
        let redis = Redis::start(cluster_config(&url, &prefix)).unwrap();
        // A cluster connection is made by the node's subscriber, once a hub attaches.
        let broker = redis.broker();
        roomcast_core::broker::Broker::attach(
            &broker,
            roomcast_core::NodeId(0x0100_0100 + stores.len() as u32),
            Arc::new(NoHub),
        );
        redis.connected().await;
        stores.push(redis.presence());
    }
    let stores = std::sync::Mutex::new(stores);
    presence::suite::run(|| stores.lock().unwrap().remove(0)).await;
}

/// A sink for a broker attached only so that its node connects.
struct NoHub;

impl roomcast_core::broker::EnvelopeSink for NoHub {
    fn receive(&self, _: roomcast_core::Envelope) {}
}

#[tokio::test]
async fn redis_history_passes_the_shared_suite() {
    use roomcast_core::broker::Broker;
    use roomcast_core::history;
    use roomcast_redis::RedisHistory;
    use std::sync::Mutex;

    let server = RedisServer::start();
    let url = server.url();
    // Each store's Redis handle, to subscribe its node the way a hub's joins do.
    let made: Mutex<Vec<(Arc<RedisHistory>, Redis)>> = Mutex::default();
    history::suite::run(
        "suite",
        || {
            let redis = Redis::start(config(&url, "hist")).unwrap();
            let store = Arc::new(redis.history());
            made.lock().unwrap().push((store.clone(), redis));
            store
        },
        |store, node, room| {
            let redis = made
                .lock()
                .unwrap()
                .iter()
                .find(|(s, _)| Arc::ptr_eq(s, &store))
                .map(|(_, r)| r.clone())
                .unwrap();
            async move {
                redis.connected().await;
                redis.broker().subscribe_room(node, &room).await.unwrap();
            }
        },
    )
    .await;
}

#[tokio::test]
async fn redis_idempotency_passes_the_shared_suite() {
    use roomcast_core::idempotency;
    use std::sync::Mutex;

    let server = RedisServer::start();
    let url = server.url();
    // One server: commands work from the start (no subscriber is needed).
    let mut handles = Vec::new();
    let mut stores = Vec::new();
    for i in 0..3 {
        let redis = Redis::start(config(&url, &format!("idem{i}"))).unwrap();
        stores.push(redis.idempotency());
        handles.push(redis);
    }
    let stores = Mutex::new(stores);
    idempotency::suite::run(|| stores.lock().unwrap().remove(0)).await;
}
