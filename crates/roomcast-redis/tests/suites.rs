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

/// What one node's reap listener was told, and whether presence still listed
/// a reported connection at that moment.
#[derive(Default)]
struct Reports(std::sync::Mutex<Vec<presence::Reaped>>);

impl presence::ReapListener for Reports {
    fn reaped(&self, conns: Vec<presence::Reaped>) {
        self.0.lock().unwrap().extend(conns);
    }
}

/// Three nodes; the first stops heartbeating with three connections (two of
/// one user, one anonymous) in a room. The two survivors race to reap it:
/// together they report each connection exactly once, with its user and the
/// dead node, and presence no longer lists them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_connections_are_reported_once_by_the_survivors() {
    use presence::PresenceStore;
    use roomcast_core::{ConnId, NodeId};
    use std::time::{Duration, Instant};

    let server = RedisServer::start();
    let url = server.url();
    let mut nodes = Vec::new();
    for i in 0..3u32 {
        let mut c = config(&url, "reap");
        c.heartbeat = Duration::from_millis(50);
        c.node_ttl = Duration::from_millis(500);
        let redis = Redis::start(c).unwrap();
        let broker = redis.broker();
        roomcast_core::broker::Broker::attach(&broker, NodeId(0x0200_0000 + i), Arc::new(NoHub));
        redis.connected().await;
        let store = redis.presence();
        let reports = Arc::new(Reports::default());
        store.on_reaped(reports.clone());
        nodes.push((redis, broker, store, reports));
    }
    let member = |n: u64, user: Option<&str>| presence::Member {
        conn: ConnId(0x0200_0000_0000_0000 + n),
        user: user.map(Arc::from),
        node: NodeId(0x0200_0000),
        info: None,
    };
    let members = [
        member(1, Some("ada")),
        member(2, Some("ada")),
        member(3, None),
    ];
    for m in &members {
        nodes[0].2.connect(m).await.unwrap();
        nodes[0].2.join("r", m).await.unwrap();
    }
    assert_eq!(nodes[1].2.room("r").await.unwrap().connections, 3);

    nodes[0].0.stop();
    let deadline = Instant::now() + Duration::from_secs(20);
    let reported = loop {
        let mut all: Vec<(u64, Option<String>, String)> = nodes[1..]
            .iter()
            .flat_map(|n| n.3 .0.lock().unwrap().clone())
            .map(|r| (r.conn.0, r.user.map(|u| u.to_string()), r.node))
            .collect();
        all.sort();
        if all.len() >= 3 {
            break all;
        }
        assert!(Instant::now() < deadline, "reported so far: {all:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let dead = NodeId(0x0200_0000).to_string();
    assert_eq!(
        reported,
        [
            (members[0].conn.0, Some("ada".to_owned()), dead.clone()),
            (members[1].conn.0, Some("ada".to_owned()), dead.clone()),
            (members[2].conn.0, None, dead),
        ]
    );
    assert_eq!(nodes[1].2.room("r").await.unwrap().connections, 0);
    assert!(!nodes[2].2.user("ada").await.unwrap().online);
    assert!(nodes[0].3 .0.lock().unwrap().is_empty());
    // Nothing more arrives: later heartbeats find nothing left to reap.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let total: usize = nodes[1..]
        .iter()
        .map(|n| n.3 .0.lock().unwrap().len())
        .sum();
    assert_eq!(total, 3);
}

/// A replay racing live changes. 1,000 connections are in room `a`; then the
/// node is removed from Redis's node set once (as when Redis restarts empty
/// or the others reaped it), so its next heartbeat replays the whole mirror,
/// while the connections move from `a` to `b`, spread over 60 ms. The
/// replay's snapshot is older than most moves; once it is over, Redis must
/// hold where the connections are (all in `b`), not where the snapshot said
/// (which, before replays re-wrote what changed under them, it did for good).
/// Five rounds, moving back and forth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_does_not_undo_changes_made_while_it_runs() {
    use presence::PresenceStore;
    use roomcast_core::{ConnId, NodeId};
    use std::time::{Duration, Instant};

    const CONNS: u64 = 1000;
    let server = RedisServer::start();
    let url = server.url();
    let mut c = config(&url, "race");
    c.heartbeat = Duration::from_millis(10);
    let redis = Redis::start(c).unwrap();
    let broker = redis.broker();
    let node = NodeId(0x0300_0000);
    roomcast_core::broker::Broker::attach(&broker, node, Arc::new(NoHub));
    redis.connected().await;
    let store = Arc::new(redis.presence());
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let member = |n: u64| presence::Member {
        conn: ConnId(0x0300_0000_0000_0000 + n),
        user: Some(Arc::from(format!("u{}", n % 50).as_str())),
        node,
        info: None,
    };
    for n in 0..CONNS {
        store.connect(&member(n)).await.unwrap();
        store.join("a", &member(n)).await.unwrap();
    }
    // Registered, with a heartbeat after that (no replay in flight).
    async fn settled(admin: &mut ::redis::aio::MultiplexedConnection, node: NodeId) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut beats = 0;
        while beats < 3 {
            assert!(Instant::now() < deadline, "the node never registered again");
            let seen: Option<f64> = ::redis::cmd("ZSCORE")
                .arg("race:nodes")
                .arg(node.to_string())
                .query_async(admin)
                .await
                .unwrap();
            beats = if seen.is_some() { beats + 1 } else { 0 };
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    settled(&mut admin, node).await;
    for round in 0..5 {
        let (from, to) = if round % 2 == 0 {
            ("a", "b")
        } else {
            ("b", "a")
        };
        let _: i64 = ::redis::cmd("ZREM")
            .arg("race:nodes")
            .arg(node.to_string())
            .query_async(&mut admin)
            .await
            .unwrap();
        let moves: Vec<_> = (0..CONNS)
            .map(|n| {
                let store = store.clone();
                let m = member(n);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(n % 60)).await;
                    store.leave(from, m.conn).await.unwrap();
                    store.join(to, &m).await.unwrap();
                })
            })
            .collect();
        for t in moves {
            t.await.unwrap();
        }
        // The replay (or the one after it, if changes were still arriving)
        // ends with Redis as the mirror is; a stale one would stay wrong.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (f, t) = (
                store.room(from).await.unwrap(),
                store.room(to).await.unwrap(),
            );
            if (f.connections, t.connections) == (0, CONNS as usize) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: {} connections in {from} and {} in {to}",
                f.connections,
                t.connections
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        settled(&mut admin, node).await;
    }
    assert_eq!(store.stats().await.unwrap().users, 50);
}
