//! Several `roomcast` processes on one real redis-server act as one: native
//! clients spread over the nodes, the HTTP API on one node acting on clients
//! of another, a node killed without cleanup, and Redis restarted under load.

#[path = "common/spawn.rs"]
mod spawn;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use roomcast_redis::testing::{RedisCluster, RedisServer};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

struct Node {
    child: tokio::process::Child,
    addr: String,
}

impl Node {
    /// Starts a node on `redis` with fast heartbeats (250 ms, dead after
    /// 2.5 s: ten missed beats, so a node on a loaded machine is not reaped alive).
    async fn start(redis: &str) -> Node {
        Node::start_with(redis, &[]).await
    }

    async fn start_with(redis: &str, env: &[(&str, &str)]) -> Node {
        let mut all = vec![
            ("ROOMCAST_BROKER_HEARTBEAT_MS", "250"),
            ("ROOMCAST_BROKER_NODE_TTL_MS", "2500"),
        ];
        all.extend_from_slice(env);
        let (child, addr) = spawn::serve(&["--broker", redis], &all, "CLUSTER_LOG").await;
        Node { child, addr }
    }

    async fn api(&self, path: &str, body: Value) -> Value {
        let r = reqwest::Client::new()
            .post(format!("http://{}/api/{path}", self.addr))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    async fn get(&self, path: &str) -> Value {
        reqwest::get(format!("http://{}{path}", self.addr))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Polls `path` until `ok` holds for its JSON (state that settles in the
    /// background: heartbeats, reconnects), failing after 10 s.
    async fn until(&self, path: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = self.get(path).await;
            if ok(&v) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path} never satisfied the condition; last answer {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Client {
    ws: Ws,
    conn: String,
    next_id: u64,
    /// Frames that arrived while a command waited for its ack.
    early: std::collections::VecDeque<Value>,
}

impl Client {
    async fn connect(node: &Node, user: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", node.addr))
            .await
            .unwrap();
        let mut c = Client {
            ws,
            conn: String::new(),
            next_id: 0,
            early: Default::default(),
        };
        let welcome = c.next("welcome").await;
        c.conn = welcome["conn"].as_str().unwrap().to_owned();
        c.call(json!({"type": "auth", "user": user})).await;
        c
    }

    /// Sends a command with an id and waits for its ack (frames before it are kept for later).
    async fn call(&mut self, cmd: Value) -> Value {
        let f = self.answer(cmd.clone()).await;
        assert_eq!(f["type"], "ack", "{cmd} answered {f}");
        f
    }

    /// Sends a command with an id and returns its answer, ack or error.
    async fn answer(&mut self, mut cmd: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        cmd["id"] = json!(id);
        self.ws.send(Message::text(cmd.to_string())).await.unwrap();
        loop {
            let f = self.read().await;
            if f["id"] == json!(id) {
                return f;
            }
            self.early.push_back(f);
        }
    }

    async fn frame(&mut self) -> Value {
        match self.early.pop_front() {
            Some(f) => f,
            None => self.read().await,
        }
    }

    async fn read(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("the connection is open")
                .unwrap();
            if let Message::Text(t) = m {
                return serde_json::from_str(t.as_str()).unwrap();
            }
        }
    }

    /// The next presence event about `user`, skipping others.
    async fn presence_of(&mut self, user: &str) -> Value {
        loop {
            let f = self.next("presence").await;
            if f["user"] == user {
                return f;
            }
        }
    }

    /// The next frame of type `kind`, skipping others.
    async fn next(&mut self, kind: &str) -> Value {
        loop {
            let f = self.frame().await;
            if f["type"] == kind {
                return f;
            }
        }
    }

    async fn join(&mut self, room: &str) {
        self.call(json!({"type": "join", "room": room})).await;
    }

    /// The next message events, in order, exactly: a duplicate or a stray shows up
    /// before the fence that the caller publishes last.
    async fn expect_events(&mut self, events: &[&str]) {
        for want in events {
            let m = self.next("message").await;
            assert_eq!(m["event"], *want, "{m}");
        }
    }
}

/// A last publication from `node`. The order of one node's publications holds on
/// every node; two nodes' publications may interleave, so the fence comes from the
/// node the awaited messages came from.
async fn fence(node: &Node, room: &str) {
    node.api("publish", json!({"room": room, "event": "fence"}))
        .await;
}

#[tokio::test]
async fn three_nodes_act_as_one() {
    let redis = RedisServer::start();
    let (a, b, c) = (
        Node::start(&redis.url()).await,
        Node::start(&redis.url()).await,
        Node::start(&redis.url()).await,
    );
    let mut alice = Client::connect(&a, "alice").await;
    let mut bob = Client::connect(&b, "bob").await;
    let mut carol = Client::connect(&c, "carol").await;
    let mut alice2 = Client::connect(&c, "alice").await;
    for cl in [&mut alice, &mut bob, &mut carol, &mut alice2] {
        cl.join("lobby").await;
    }

    // A client's publish reaches every member on every node once.
    alice
        .call(json!({"type": "publish", "room": "lobby", "event": "hi", "data": 1}))
        .await;
    fence(&a, "lobby").await;
    for cl in [&mut alice, &mut bob, &mut carol, &mut alice2] {
        cl.expect_events(&["hi", "fence"]).await;
    }

    // Without an id nothing waits for Redis; the order is kept all the same.
    for event in ["n1", "n2", "n3"] {
        let frame = json!({"type": "publish", "room": "lobby", "event": event});
        alice
            .ws
            .send(Message::text(frame.to_string()))
            .await
            .unwrap();
    }
    alice
        .call(json!({"type": "publish", "room": "lobby", "event": "acked"}))
        .await;
    for cl in [&mut alice, &mut bob, &mut carol, &mut alice2] {
        cl.expect_events(&["n1", "n2", "n3", "acked"]).await;
    }

    // A user send from node B reaches both of alice's connections (A and C) once.
    b.api(
        "send",
        json!({"user": "alice", "event": "dm", "data": {"n": 1}}),
    )
    .await;
    fence(&b, "lobby").await;
    alice.expect_events(&["dm", "fence"]).await;
    alice2.expect_events(&["dm", "fence"]).await;
    bob.expect_events(&["fence"]).await;
    carol.expect_events(&["fence"]).await;

    // A broadcast from C reaches everyone once.
    c.api("broadcast", json!({"event": "all"})).await;
    fence(&c, "lobby").await;
    for cl in [&mut alice, &mut bob, &mut carol, &mut alice2] {
        cl.expect_events(&["all", "fence"]).await;
    }

    // Presence is cluster-wide, whichever node answers.
    let p = b.get("/api/presence/lobby").await;
    assert_eq!(p["connections"], 4, "{p}");
    assert_eq!(
        p["users"],
        json!([{"user": "alice", "connections": 2}, {"user": "bob", "connections": 1}, {"user": "carol", "connections": 1}])
    );
    let u = c.get("/api/users/alice").await;
    let mut conns: Vec<String> = serde_json::from_value(u["connections"].clone()).unwrap();
    conns.sort();
    let mut want = vec![alice.conn.clone(), alice2.conn.clone()];
    want.sort();
    assert_eq!(conns, want);
    let conn = a.get(&format!("/api/connections/{}", bob.conn)).await;
    assert_eq!(
        (conn["user"].clone(), conn["rooms"].clone()),
        (json!("bob"), json!(["lobby"]))
    );
    let stats = a
        .until("/api/stats", |s| {
            s["nodes"].as_array().map(Vec::len) == Some(3)
        })
        .await;
    assert_eq!(
        (stats["connections"].clone(), stats["users"].clone()),
        (json!(4), json!(3))
    );

    // API join on A puts bob (on B) into a room; a publish on C then reaches him.
    a.api("join", json!({"user": "bob", "room": "side"})).await;
    assert_eq!(bob.next("joined").await["room"], "side");
    c.api("publish", json!({"room": "side", "event": "side-msg"}))
        .await;
    fence(&c, "side").await;
    bob.expect_events(&["side-msg", "fence"]).await;

    // API leave by connection id, sent to a node that does not hold it.
    c.api("leave", json!({"conn": bob.conn, "room": "side"}))
        .await;
    assert_eq!(bob.next("left").await["room"], "side");

    // Room close from A empties the room on every node.
    a.api("close_room", json!({"room": "lobby"})).await;
    for cl in [&mut alice, &mut bob, &mut carol, &mut alice2] {
        assert_eq!(cl.next("left").await["room"], "lobby");
    }
    let p = b
        .until("/api/presence/lobby", |p| p["connections"] == 0)
        .await;
    assert_eq!(p["users"], json!([]));

    // Disconnect by user from A closes carol's connection on C.
    a.api("disconnect", json!({"user": "carol"})).await;
    let d = carol.next("disconnect").await;
    assert_eq!(d["code"], 4500);
}

#[tokio::test]
async fn a_killed_node_has_its_presence_expire() {
    let redis = RedisServer::start();
    let (a, mut b) = (
        Node::start(&redis.url()).await,
        Node::start(&redis.url()).await,
    );
    let mut eve = Client::connect(&a, "eve").await;
    eve.join("lobby").await;
    let mut dave = Client::connect(&b, "dave").await;
    dave.join("lobby").await;
    assert_eq!(eve.presence_of("dave").await["event"], "join");
    a.until("/api/stats", |s| {
        s["nodes"].as_array().map(Vec::len) == Some(2)
    })
    .await;

    // SIGKILL: the node removes nothing itself.
    b.child.start_kill().unwrap();
    b.child.wait().await.unwrap();
    // The node that reaps dave's entries announces his leave.
    assert_eq!(eve.presence_of("dave").await["event"], "leave");
    let p = a.get("/api/presence/lobby").await;
    assert_eq!(p["users"], json!([{"user": "eve", "connections": 1}]));
    let s = a
        .until("/api/stats", |s| {
            s["nodes"].as_array().map(Vec::len) == Some(1)
        })
        .await;
    assert_eq!(s["connections"], 1);
    assert!(!a.get("/api/users/dave").await["online"].as_bool().unwrap());
}

#[tokio::test]
async fn nodes_recover_after_redis_restarts() {
    let mut redis = RedisServer::start();
    let (a, b) = (
        Node::start(&redis.url()).await,
        Node::start(&redis.url()).await,
    );
    let mut a1 = Client::connect(&a, "a1").await;
    let mut a2 = Client::connect(&a, "a2").await;
    let mut b1 = Client::connect(&b, "b1").await;
    for cl in [&mut a1, &mut a2, &mut b1] {
        cl.join("r").await;
    }
    a1.call(json!({"type": "publish", "room": "r", "event": "before"}))
        .await;
    for cl in [&mut a1, &mut a2, &mut b1] {
        cl.expect_events(&["before"]).await;
    }

    redis.kill();
    let h = a.until("/healthz", |h| h["status"] == "degraded").await;
    assert!(h["reason"].as_str().unwrap().contains("redis"), "{h}");
    let metrics = reqwest::get(format!("http://{}/metrics", a.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("roomcast_backend_up 0"), "{metrics}");
    // Local delivery goes on without Redis; the sender is told the other
    // nodes were not reached.
    let e = a1
        .answer(json!({"type": "publish", "room": "r", "event": "during"}))
        .await;
    assert_eq!(e["code"], "backend_unavailable", "{e}");
    a1.expect_events(&["during"]).await;
    a2.expect_events(&["during"]).await;

    redis.restart();
    a.until("/healthz", |h| h["status"] == "ok").await;
    b.until("/healthz", |h| h["status"] == "ok").await;
    // Both nodes re-register their connections in the (empty) new Redis.
    b.until("/api/presence/r", |p| p["connections"] == 3).await;
    // And they resubscribed: messages flow between nodes again.
    b1.call(json!({"type": "publish", "room": "r", "event": "after"}))
        .await;
    for cl in [&mut a1, &mut a2, &mut b1] {
        cl.expect_events(&["after"]).await;
    }
    // What was published during the gap did not reach the other node: b1 got "after" first.
}

/// `nodes[]` in `/api/stats`: the answering node's own count is current,
/// not the one of its last heartbeat (a minute apart here).
#[tokio::test]
async fn stats_give_this_nodes_connections_as_they_are() {
    let redis = RedisServer::start();
    let slow = [
        ("ROOMCAST_BROKER_HEARTBEAT_MS", "60000"),
        ("ROOMCAST_BROKER_NODE_TTL_MS", "120000"),
    ];
    let a = Node::start_with(&redis.url(), &slow).await;
    a.until("/api/stats", |s| {
        s["nodes"].as_array().map(Vec::len) == Some(1)
    })
    .await;
    let _c1 = Client::connect(&a, "alice").await;
    let _c2 = Client::connect(&a, "bob").await;
    let s = a.get("/api/stats").await;
    assert_eq!(s["node"]["connections"], 2, "{s}");
    assert_eq!(s["nodes"][0]["node"], s["node"]["id"], "{s}");
    assert_eq!(s["nodes"][0]["connections"], 2, "{s}");
}

/// Engine.IO long-polling with every request on a different node: each node
/// forwards requests for sessions it does not own to the owner.
#[tokio::test]
async fn long_polling_needs_no_sticky_sessions() {
    let redis = RedisServer::start();
    let nodes = [
        Node::start(&redis.url()).await,
        Node::start(&redis.url()).await,
        Node::start(&redis.url()).await,
    ];
    // Every node has published its address.
    nodes[0]
        .until("/api/stats", |s| {
            s["nodes"]
                .as_array()
                .is_some_and(|n| n.len() == 3 && n.iter().all(|n| n["address"].is_string()))
        })
        .await;
    let http = reqwest::Client::new();
    let url = |i: usize, sid: &str| {
        let mut u = format!(
            "http://{}/socket.io/?EIO=4&transport=polling",
            nodes[i].addr
        );
        if !sid.is_empty() {
            u.push_str("&sid=");
            u.push_str(sid);
        }
        u
    };
    let get = |i: usize, sid: String| {
        let req = http.get(url(i, &sid));
        async move {
            let r = req.send().await.unwrap();
            assert!(r.status().is_success(), "GET {}", r.status());
            r.text().await.unwrap()
        }
    };
    let open = get(0, String::new()).await;
    let handshake: Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
    let sid = handshake["sid"].as_str().unwrap().to_owned();

    // CONNECT through node 1, the reply read through node 2.
    let r = http.post(url(1, &sid)).body("40").send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "ok");
    let connect = get(2, sid.clone()).await;
    let reply: Value = serde_json::from_str(connect.strip_prefix("40").unwrap()).unwrap();
    let socket = reply["sid"].as_str().unwrap().to_owned();

    // The API of node 1 puts the socket (on node 0) into a room; node 2 publishes to it;
    // the event is read through node 1.
    nodes[1]
        .api("join", json!({"conn": socket, "room": "poll"}))
        .await;
    // The join runs on node 0 after the API answered: wait until node 0
    // listens to the room (a Socket.IO client gets no notice of it).
    let deadline = tokio::time::Instant::now() + WAIT;
    while redis.subscribers("roomcast:room:poll") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 0 never subscribed to the room"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nodes[2]
        .api(
            "publish",
            json!({"room": "poll", "event": "hello", "data": {"n": 1}}),
        )
        .await;
    let event = get(1, sid.clone()).await;
    assert_eq!(event, r#"42["hello",{"n":1}]"#);

    // An unknown session is still refused, whichever node is asked.
    let r = http.get(url(2, "0000000fnope")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .get(url(2, &format!("{}xx", &sid[..8])))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

/// A node started while Redis is down serves its own clients at once and
/// joins the cluster when Redis appears.
#[tokio::test]
async fn a_node_starts_without_redis_and_joins_it_later() {
    let mut redis = RedisServer::start();
    redis.kill();
    let a = Node::start(&redis.url()).await;
    let h = a.until("/healthz", |h| h["status"] == "degraded").await;
    assert!(h["reason"].as_str().unwrap().contains("redis"), "{h}");
    let mut x = Client::connect(&a, "x").await;
    let mut y = Client::connect(&a, "y").await;
    x.join("r").await;
    y.join("r").await;
    let e = x
        .answer(json!({"type": "publish", "room": "r", "event": "local"}))
        .await;
    assert_eq!(e["code"], "backend_unavailable", "{e}");
    y.expect_events(&["local"]).await;

    redis.restart();
    a.until("/healthz", |h| h["status"] == "ok").await;
    a.until("/api/presence/r", |p| p["connections"] == 2).await;
    let b = Node::start(&redis.url()).await;
    let mut z = Client::connect(&b, "z").await;
    z.join("r").await;
    z.call(json!({"type": "publish", "room": "r", "event": "hello"}))
        .await;
    x.expect_events(&["local", "hello"]).await;
    y.expect_events(&["hello"]).await;
}

/// Nodes on a three-shard Redis Cluster: sharded pub/sub between them,
/// presence on one shard, a dead node reaped.
#[tokio::test]
async fn nodes_on_a_redis_cluster() {
    let redis = RedisCluster::start(3);
    let env = [("ROOMCAST_BROKER_CLUSTER", "true")];
    let a = Node::start_with(&redis.url(), &env).await;
    let mut b = Node::start_with(&redis.url(), &env).await;
    let mut ann = Client::connect(&a, "ann").await;
    let mut ben = Client::connect(&b, "ben").await;
    for room in ["r1", "r2", "r3"] {
        ann.join(room).await;
        ben.join(room).await;
    }
    for room in ["r1", "r2", "r3"] {
        ann.call(json!({"type": "publish", "room": room, "event": room}))
            .await;
    }
    b.api("send", json!({"user": "ann", "event": "dm"})).await;
    ben.expect_events(&["r1", "r2", "r3"]).await;
    ann.expect_events(&["r1", "r2", "r3", "dm"]).await;
    let p = b.get("/api/presence/r2").await;
    assert_eq!(p["connections"], 2, "{p}");
    a.until("/api/stats", |s| {
        s["nodes"].as_array().map(Vec::len) == Some(2)
    })
    .await;

    b.child.start_kill().unwrap();
    b.child.wait().await.unwrap();
    assert_eq!(ann.presence_of("ben").await["event"], "leave");
    let p = a.until("/api/presence/r1", |p| p["connections"] == 1).await;
    assert_eq!(p["users"], json!([{"user": "ann", "connections": 1}]));
}
