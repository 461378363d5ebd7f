//! Room history and native recovery over real sockets: on one node with the
//! memory store, and on two nodes sharing a real `redis-server`.

mod support;

use serde_json::{json, Value};

use roomcast::Config;
use roomcast_core::room::RoomRule;
use roomcast_redis::testing::RedisServer;
use support::*;

/// One node (memory store), or two nodes on one Redis.
struct Nodes {
    servers: Vec<TestServer>,
    redis: Option<RedisServer>,
}

fn history_config() -> Config {
    let mut c = config();
    c.history.size = 1000;
    c.history.ttl = 60;
    c.rooms = vec![RoomRule {
        history_size: Some(3),
        ..RoomRule::default_for("small:*")
    }];
    c.rooms.push(RoomRule {
        history_size: Some(0),
        ..RoomRule::default_for("plain:*")
    });
    c
}

impl Nodes {
    async fn memory() -> Nodes {
        Nodes {
            servers: vec![start(history_config()).await],
            redis: None,
        }
    }

    async fn redis() -> Nodes {
        let redis = RedisServer::start();
        let mut servers = Vec::new();
        for _ in 0..2 {
            let mut c = history_config();
            c.broker.url = redis.url();
            let srv = start(c).await;
            servers.push(srv);
        }
        for s in &servers {
            wait_connected(s).await;
        }
        Nodes {
            servers,
            redis: Some(redis),
        }
    }

    /// The `i`th node (with one node, always that one).
    fn node(&self, i: usize) -> &TestServer {
        &self.servers[i % self.servers.len()]
    }

    async fn stop(self) {
        for s in self.servers {
            s.stop().await;
        }
    }
}

/// Waits for the node's Redis subscriber, as `/healthz` reports it.
async fn wait_connected(s: &TestServer) {
    for _ in 0..200 {
        if s.metric("roomcast_redis_connected").await == 1.0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("node never connected to redis");
}

async fn publish(c: &mut Client, room: &str, n: u64) {
    let ack = c
        .request(json!({"type": "publish", "room": room, "event": "n", "data": n}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
}

async fn message(c: &mut Client) -> Value {
    c.recv_type("message").await
}

async fn join_since(c: &mut Client, room: &str, since: Value) -> Value {
    let ack = c
        .request(json!({"type": "join", "room": room, "since": since}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    ack
}

/// A client that reconnects (the old socket cut without a close frame) with
/// `since` gets the ack first, then what it missed in order, then live ones.
async fn resume_gets_what_was_missed_then_live(nodes: Nodes) {
    let room = "h:resume";
    let mut p = nodes.node(0).user("pub").await;
    p.join(room).await;
    let mut a = nodes.node(0).client().await;
    a.welcome().await;
    let ack = a.request(json!({"type": "join", "room": room})).await;
    // Nothing published yet: the position is offset 0 of the stream's epoch.
    assert_eq!(ack["offset"], 0, "{ack}");
    let opened = ack["epoch"].clone();
    assert!(opened.is_string(), "{ack}");
    for n in 1..=5 {
        publish(&mut p, room, n).await;
    }
    let mut epoch = Value::Null;
    for n in 1..=5u64 {
        let m = message(&mut a).await;
        assert_eq!(
            (m["data"].as_u64(), m["offset"].as_u64()),
            (Some(n), Some(n))
        );
        epoch = m["epoch"].clone();
    }
    assert_eq!(
        epoch, opened,
        "the first publication is in the epoch the join gave"
    );
    drop(a);
    for n in 6..=10 {
        publish(&mut p, room, n).await;
    }
    let mut b = nodes.node(1).client().await;
    b.welcome().await;
    let ack = join_since(&mut b, room, json!({"offset": 5, "epoch": epoch})).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_eq!((ack["offset"].as_u64(), &ack["epoch"]), (Some(10), &epoch));
    assert_eq!(b.pending_len(), 0, "the ack comes before the replay");
    for n in 6..=10u64 {
        let m = b.recv().await;
        assert_eq!(m["type"], "message", "{m}");
        assert_eq!(
            (m["data"].as_u64(), m["offset"].as_u64()),
            (Some(n), Some(n))
        );
    }
    publish(&mut p, room, 11).await;
    let m = message(&mut b).await;
    assert_eq!(
        (m["data"].as_u64(), m["offset"].as_u64()),
        (Some(11), Some(11))
    );
    let node = nodes.node(1);
    assert_eq!(node.metric("roomcast_history_recoveries_total").await, 1.0);
    assert_eq!(
        node.metric("roomcast_history_recoveries_failed_total")
            .await,
        0.0
    );
    assert_eq!(node.metric("roomcast_history_replayed_total").await, 5.0);
    nodes.stop().await;
}

/// Publications keep coming while a client resumes: it gets each offset once, in order.
async fn resume_while_publishing_loses_and_repeats_nothing(nodes: Nodes) {
    let room = "h:busy";
    const TOTAL: u64 = 400;
    let mut p = nodes.node(0).user("pub").await;
    p.join(room).await;
    let mut a = nodes.node(1).client().await;
    a.welcome().await;
    a.join(room).await;
    let publisher = tokio::spawn(async move {
        for n in 1..=TOTAL {
            // No id: published without waiting, as a stream.
            p.send(json!({"type": "publish", "room": room, "event": "n", "data": n}))
                .await;
        }
        let fence = p.request(json!({"type": "session", "data": {}})).await;
        assert_eq!(fence["type"], "ack");
        p
    });
    let mut last = json!(null);
    for n in 1..=40u64 {
        last = message(&mut a).await;
        assert_eq!(last["offset"].as_u64(), Some(n));
    }
    drop(a);
    let mut b = nodes.node(1).client().await;
    b.welcome().await;
    let ack = join_since(
        &mut b,
        room,
        json!({"offset": last["offset"], "epoch": last["epoch"]}),
    )
    .await;
    assert_eq!(ack["recovered"], true, "{ack}");
    for n in 41..=TOTAL {
        let m = message(&mut b).await;
        assert_eq!(m["offset"].as_u64(), Some(n), "after {n} - 1: {m}");
        assert_eq!(m["data"].as_u64(), Some(n));
    }
    let mut p = publisher.await.unwrap();
    publish(&mut p, room, TOTAL + 1).await;
    assert_eq!(message(&mut b).await["offset"].as_u64(), Some(TOTAL + 1));
    nodes.stop().await;
}

/// When the missed publications are gone (trimmed, another epoch), the client
/// is told `recovered: false` with the current position, and gets only what follows.
async fn an_impossible_recovery_says_so(nodes: Nodes) {
    let room = "small:1";
    let mut p = nodes.node(0).user("pub").await;
    p.join(room).await;
    for n in 1..=6 {
        publish(&mut p, room, n).await;
    }
    let page = nodes.node(1).get(&format!("/api/history/{room}")).await.1;
    let epoch = page["epoch"].clone();
    let mut b = nodes.node(1).client().await;
    b.welcome().await;
    // Offsets 1 to 3 were trimmed (the room keeps 3): after 1 is a gap.
    let ack = join_since(&mut b, room, json!({"offset": 1, "epoch": epoch})).await;
    assert_eq!(ack["recovered"], false, "{ack}");
    assert_eq!(ack["offset"], 6);
    // Another epoch, on a second client.
    let mut c = nodes.node(0).client().await;
    c.welcome().await;
    let ack = join_since(&mut c, room, json!({"offset": 5, "epoch": "not-it"})).await;
    assert_eq!(ack["recovered"], false, "{ack}");
    // Nothing of the old stream is replayed: the next message is the live one.
    publish(&mut p, room, 7).await;
    assert_eq!(message(&mut b).await["offset"], 7);
    assert_eq!(message(&mut c).await["offset"], 7);
    // After 3 nothing was lost.
    let mut d = nodes.node(1).client().await;
    d.welcome().await;
    let ack = join_since(&mut d, room, json!({"offset": 4, "epoch": epoch})).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    for n in 5..=7 {
        assert_eq!(message(&mut d).await["offset"], n);
    }
    // A room without history cannot recover anything.
    let ack = join_since(&mut d, "plain:1", json!({"offset": 1, "epoch": epoch})).await;
    assert_eq!(ack["recovered"], false, "{ack}");
    assert!(ack.get("offset").is_none());
    nodes.stop().await;
}

/// A join before anything was published gets a position (offset 0 and the
/// stream's epoch), so that a client that drops can resume from it.
async fn a_join_before_the_first_publication_can_resume(nodes: Nodes) {
    let room = "h:first";
    let mut a = nodes.node(0).client().await;
    a.welcome().await;
    let ack = a.request(json!({"type": "join", "room": room})).await;
    assert_eq!(ack["offset"], 0, "{ack}");
    let epoch = ack["epoch"]
        .as_str()
        .expect("an epoch in the ack")
        .to_owned();
    drop(a);
    for n in 1..=2 {
        nodes
            .node(1)
            .post(
                "/api/publish",
                json!({"room": room, "event": "n", "data": n}),
            )
            .await;
    }
    let mut b = nodes.node(1).client().await;
    b.welcome().await;
    let ack = join_since(&mut b, room, json!({"offset": 0, "epoch": epoch})).await;
    assert_eq!(
        (&ack["recovered"], &ack["offset"], ack["epoch"].as_str()),
        (&json!(true), &json!(2), Some(epoch.as_str())),
        "{ack}"
    );
    for n in 1..=2 {
        let m = message(&mut b).await;
        assert_eq!(
            (m["data"].as_u64(), m["offset"].as_u64()),
            (Some(n), Some(n))
        );
    }
    // An API read before any publication shows no stream; after a join it
    // shows the opened one.
    let (_, page) = nodes.node(0).get("/api/history/h:never").await;
    assert_eq!(
        page,
        json!({"room": "h:never", "epoch": null, "offset": 0, "complete": true, "publications": []})
    );
    nodes.stop().await;
}

/// The next frame that is not a presence event (the room announces joins).
async fn next_not_presence(c: &mut Client) -> Value {
    loop {
        let f = c.recv().await;
        if f["type"] != "presence" {
            return f;
        }
    }
}

/// A publish's ack comes after the publisher's own copy, also when the copy
/// comes back through Redis; `delivered` counts this node's members reached.
async fn the_ack_comes_after_the_senders_own_copy(nodes: Nodes) {
    let room = "h:order";
    let mut p = nodes.node(0).user("pub").await;
    p.join(room).await;
    let mut other = nodes.node(0).user("other").await;
    other.join(room).await;
    for n in 1..=30u64 {
        p.send(json!({"type": "publish", "room": room, "event": "n", "data": n, "id": 1000 + n}))
            .await;
        let first = next_not_presence(&mut p).await;
        assert_eq!(
            (first["type"].as_str(), first["data"].as_u64()),
            (Some("message"), Some(n)),
            "{first}"
        );
        let ack = next_not_presence(&mut p).await;
        assert_eq!(
            (ack["type"].as_str(), ack["id"].as_u64()),
            (Some("ack"), Some(1000 + n)),
            "{ack}"
        );
        assert_eq!(ack["delivered"], 2, "{ack}");
        assert_eq!(other.recv_type("message").await["data"], n);
    }
    let (status, r) = nodes
        .node(0)
        .post(
            "/api/publish",
            json!({"room": room, "event": "n", "data": 0}),
        )
        .await;
    assert_eq!((status, &r), (200, &json!({"delivered": 2})));
    nodes.stop().await;
}

/// `GET /api/history/{room}` pages; `DELETE` starts a new epoch.
async fn the_api_reads_and_removes_history(nodes: Nodes) {
    let room = "h:api";
    let srv = nodes.node(0);
    for n in 1..=5 {
        let (status, body) = srv
            .post(
                "/api/publish",
                json!({"room": room, "event": "n", "data": n}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, page) = nodes
        .node(1)
        .get(&format!("/api/history/{room}?since=2&limit=2"))
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["offset"], 5);
    assert_eq!(page["complete"], true);
    let pubs = page["publications"].as_array().unwrap();
    let got: Vec<(u64, u64)> = pubs
        .iter()
        .map(|p| (p["offset"].as_u64().unwrap(), p["data"].as_u64().unwrap()))
        .collect();
    assert_eq!(got, [(3, 3), (4, 4)]);
    assert_eq!(pubs[0]["room"], room);
    assert_eq!(pubs[0]["event"], "n");
    let epoch = page["epoch"].as_str().unwrap().to_owned();
    let (_, all) = srv.get(&format!("/api/history/{room}")).await;
    assert_eq!(all["publications"].as_array().unwrap().len(), 5);
    // Without `since`: everything it holds, also once the oldest were trimmed.
    for n in 1..=5 {
        srv.post(
            "/api/publish",
            json!({"room": "small:api", "event": "n", "data": n}),
        )
        .await;
    }
    let (status, held) = nodes.node(1).get("/api/history/small:api").await;
    assert_eq!(status, 200, "{held}");
    let offsets: Vec<u64> = held["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(
        (offsets, &held["complete"]),
        (vec![3, 4, 5], &json!(true)),
        "{held}"
    );
    let (_, held) = srv.get("/api/history/small:api?limit=2").await;
    assert_eq!(held["publications"].as_array().unwrap().len(), 2, "{held}");
    // `since` in a trimmed part: not complete, nothing given.
    let (_, gap) = srv.get("/api/history/small:api?since=1").await;
    assert_eq!(
        (
            &gap["complete"],
            gap["publications"].as_array().unwrap().len()
        ),
        (&json!(false), 0)
    );
    // The limit is 1 to 1000.
    for bad in ["0", "1001", "-1"] {
        let (status, e) = srv.get(&format!("/api/history/{room}?limit={bad}")).await;
        assert_eq!(
            (status, e["error"]["field"].as_str()),
            (400, Some("limit")),
            "limit={bad}: {e}"
        );
    }
    let (status, _) = srv.get(&format!("/api/history/{room}?limit=1000")).await;
    assert_eq!(status, 200);
    // Bad input is a 4xx with a JSON body.
    let (status, e) = srv.get(&format!("/api/history/{room}?since=x")).await;
    assert_eq!((status, e["error"]["field"].as_str()), (400, Some("since")));
    let (status, e) = srv.get(&format!("/api/history/{room}?what=1")).await;
    assert_eq!(status, 400, "{e}");
    let (status, e) = srv.get("/api/history/plain:1").await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (404, Some("no_history"))
    );
    let (status, e) = srv.get("/api/history/bad%20room").await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("invalid_room"))
    );
    // Removed: empty, and the next publication starts a new epoch at 1.
    let status = srv.http_delete(&format!("/api/history/{room}")).await;
    assert_eq!(status, 200);
    let (_, empty) = srv.get(&format!("/api/history/{room}")).await;
    assert_eq!(empty["publications"].as_array().unwrap().len(), 0);
    srv.post(
        "/api/publish",
        json!({"room": room, "event": "n", "data": 6}),
    )
    .await;
    let (_, fresh) = nodes.node(1).get(&format!("/api/history/{room}")).await;
    assert_eq!(fresh["offset"], 1);
    assert_ne!(fresh["epoch"], epoch.as_str());
    nodes.stop().await;
}

#[tokio::test]
async fn memory_a_join_before_the_first_publication_can_resume() {
    a_join_before_the_first_publication_can_resume(Nodes::memory().await).await;
}

#[tokio::test]
async fn redis_a_join_before_the_first_publication_can_resume() {
    a_join_before_the_first_publication_can_resume(Nodes::redis().await).await;
}

#[tokio::test]
async fn memory_the_ack_comes_after_the_senders_own_copy() {
    the_ack_comes_after_the_senders_own_copy(Nodes::memory().await).await;
}

#[tokio::test]
async fn redis_the_ack_comes_after_the_senders_own_copy() {
    the_ack_comes_after_the_senders_own_copy(Nodes::redis().await).await;
}

#[tokio::test]
async fn memory_resume_gets_what_was_missed_then_live() {
    resume_gets_what_was_missed_then_live(Nodes::memory().await).await;
}

#[tokio::test]
async fn memory_resume_while_publishing_loses_and_repeats_nothing() {
    resume_while_publishing_loses_and_repeats_nothing(Nodes::memory().await).await;
}

#[tokio::test]
async fn memory_an_impossible_recovery_says_so() {
    an_impossible_recovery_says_so(Nodes::memory().await).await;
}

#[tokio::test]
async fn memory_the_api_reads_and_removes_history() {
    the_api_reads_and_removes_history(Nodes::memory().await).await;
}

#[tokio::test]
async fn redis_resume_gets_what_was_missed_then_live() {
    resume_gets_what_was_missed_then_live(Nodes::redis().await).await;
}

#[tokio::test]
async fn redis_resume_while_publishing_loses_and_repeats_nothing() {
    resume_while_publishing_loses_and_repeats_nothing(Nodes::redis().await).await;
}

#[tokio::test]
async fn redis_an_impossible_recovery_says_so() {
    an_impossible_recovery_says_so(Nodes::redis().await).await;
}

#[tokio::test]
async fn redis_the_api_reads_and_removes_history() {
    the_api_reads_and_removes_history(Nodes::redis().await).await;
}

/// A node that stops (its clients cut off) leaves the stream in Redis: its
/// client resumes on the other node.
#[tokio::test]
async fn redis_a_client_resumes_on_another_node_after_its_node_stopped() {
    let mut nodes = Nodes::redis().await;
    let room = "h:failover";
    let mut p = nodes.node(1).user("pub").await;
    p.join(room).await;
    let mut a = nodes.node(0).client().await;
    a.welcome().await;
    a.join(room).await;
    publish(&mut p, room, 1).await;
    let first = message(&mut a).await;
    let gone = nodes.servers.remove(0);
    gone.stop().await;
    drop(a);
    for n in 2..=4 {
        publish(&mut p, room, n).await;
    }
    let mut b = nodes.node(0).client().await;
    b.welcome().await;
    let ack = join_since(
        &mut b,
        room,
        json!({"offset": first["offset"], "epoch": first["epoch"]}),
    )
    .await;
    assert_eq!(ack["recovered"], true, "{ack}");
    for n in 2..=4 {
        assert_eq!(message(&mut b).await["data"], n);
    }
    nodes.stop().await;
}

/// After Redis loses everything (`FLUSHALL`), a resuming client is told it was
/// not recovered, and the room starts a new epoch.
#[tokio::test]
async fn redis_a_flush_starts_a_new_epoch() {
    let nodes = Nodes::redis().await;
    let room = "h:flush";
    let mut p = nodes.node(0).user("pub").await;
    p.join(room).await;
    publish(&mut p, room, 1).await;
    let m = message(&mut p).await;
    flushall(nodes.redis.as_ref().unwrap()).await;
    publish(&mut p, room, 2).await;
    let after = message(&mut p).await;
    assert_eq!(after["offset"], 1, "{after}");
    assert_ne!(after["epoch"], m["epoch"]);
    let mut b = nodes.node(1).client().await;
    b.welcome().await;
    let ack = join_since(&mut b, room, json!({"offset": 1, "epoch": m["epoch"]})).await;
    assert_eq!(ack["recovered"], false, "{ack}");
    assert_eq!(
        (&ack["offset"], &ack["epoch"]),
        (&json!(1), &after["epoch"])
    );
    nodes.stop().await;
}

/// While Redis is down a publication to a room with history fails (nobody
/// gets it), and a resuming client is told it was not recovered.
#[tokio::test]
async fn redis_during_an_outage_nothing_is_silently_partial() {
    let mut nodes = Nodes::redis().await;
    let room = "h:outage";
    let mut p = nodes.node(0).user("pub").await;
    p.join(room).await;
    publish(&mut p, room, 1).await;
    let m = message(&mut p).await;
    nodes.redis.as_mut().unwrap().kill();
    let mut b = nodes.node(1).client().await;
    b.welcome().await;
    let ack = join_since(&mut b, room, json!({"offset": 0, "epoch": m["epoch"]})).await;
    assert_eq!(ack["recovered"], false, "{ack}");
    let e = p
        .request(json!({"type": "publish", "room": room, "event": "n", "data": 2}))
        .await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("backend_unavailable")),
        "{e}"
    );
    // This Redis persists nothing: after its restart the stream is gone, and
    // the next publication starts a new epoch.
    nodes.redis.as_mut().unwrap().restart();
    for s in &nodes.servers {
        wait_connected(s).await;
    }
    let mut c = nodes.node(1).client().await;
    c.welcome().await;
    let ack = join_since(&mut c, room, json!({"offset": 0, "epoch": m["epoch"]})).await;
    assert_eq!(ack["recovered"], false, "{ack}");
    publish(&mut p, room, 3).await;
    let fresh = message(&mut c).await;
    assert_eq!(
        (fresh["data"].as_u64(), fresh["offset"].as_u64()),
        (Some(3), Some(1))
    );
    assert_ne!(fresh["epoch"], m["epoch"]);
    nodes.stop().await;
}

async fn flushall(redis: &RedisServer) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", redis.port()))
        .await
        .unwrap();
    s.write_all(b"*1\r\n$8\r\nFLUSHALL\r\n").await.unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"+OK\r\n");
}
