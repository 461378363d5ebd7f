//! Binding users after connect (`POST /api/bind`, the backend's `bind`
//! action), the cluster-wide list of online users (`GET /api/users`) and
//! idempotent publishing (`idempotency_key`), on one node and across two
//! nodes on a real redis-server.

mod support;

use serde_json::{json, Value};
use support::backend::{Answer, Backend, Call};
use support::*;

async fn anonymous(srv: &TestServer) -> Client {
    let mut c = srv.client().await;
    c.welcome().await;
    c
}

#[tokio::test]
async fn the_api_binds_an_anonymous_connection_once() {
    let srv = start(config()).await;
    let mut c = anonymous(&srv).await;
    let mut watcher = srv.user("watcher").await;
    watcher.join("lobby").await;
    c.join("lobby").await;

    let (status, body) = srv
        .post("/api/bind", json!({"conn": c.conn, "user": "alice"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"conn": c.conn, "user": "alice", "bound": true})
    );
    // Its room now counts it as alice's, and says so to the other members.
    let p = loop {
        let p = watcher.recv_type("presence").await;
        if p["user"] != "watcher" {
            break p;
        }
    };
    assert_eq!(
        (&p["room"], &p["user"], &p["event"]),
        (&json!("lobby"), &json!("alice"), &json!("join")),
        "{p}"
    );
    let (_, presence) = srv.get("/api/presence/lobby").await;
    assert_eq!(presence["anonymous"], 0, "{presence}");
    assert_eq!(presence["users"][0]["user"], "alice");
    // Sends to the user reach it.
    srv.post(
        "/api/send",
        json!({"user": "alice", "event": "dm", "data": 1}),
    )
    .await;
    let m = c.recv_type("message").await;
    assert_eq!((&m["user"], &m["data"]), (&json!("alice"), &json!(1)));
    let (_, user) = srv.get("/api/users/alice").await;
    assert_eq!(user["connections"], json!([c.conn]));

    // Again: nothing changes. Another user: refused.
    let (status, body) = srv
        .post("/api/bind", json!({"conn": c.conn, "user": "alice"}))
        .await;
    assert_eq!((status, &body["bound"]), (200, &json!(false)), "{body}");
    let (status, body) = srv
        .post("/api/bind", json!({"conn": c.conn, "user": "bob"}))
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("already_bound")),
        "{body}"
    );

    // Bad input.
    let (status, body) = srv
        .post(
            "/api/bind",
            json!({"conn": "00000001ffffffff", "user": "alice"}),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("no_connection")),
        "{body}"
    );
    let (status, body) = srv
        .post("/api/bind", json!({"conn": c.conn, "user": ""}))
        .await;
    assert_eq!(
        (status, &body["error"]["code"], &body["error"]["field"]),
        (400, &json!("invalid_user"), &json!("user")),
        "{body}"
    );
    let (status, body) = srv.post("/api/bind", json!({"user": "alice"})).await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (400, &json!("conn")),
        "{body}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn a_bind_over_the_per_user_cap_is_refused() {
    let mut cfg = config();
    cfg.limits.max_connections_per_user = 1;
    let srv = start(cfg).await;
    let _alice = srv.user("alice").await;
    let c = anonymous(&srv).await;
    let (status, body) = srv
        .post("/api/bind", json!({"conn": c.conn, "user": "alice"}))
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("too_many_connections")),
        "{body}"
    );
    let (_, info) = srv.get(&format!("/api/connections/{}", c.conn)).await;
    assert_eq!(info["user"], Value::Null);
    srv.stop().await;
}

/// The event proxy of seed apps: `login` binds the calling connection.
fn login_backend(c: &Call) -> Answer {
    let user = c.body["data"]["login"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Answer::ok(json!({"result": {"ok": true}, "actions": [{"type": "bind", "user": user}]}))
}

#[tokio::test]
async fn the_backend_binds_with_an_action_and_a_webhook_says_who() {
    let mut backend = Backend::start(|c: &Call| {
        if c.path.ends_with("webhook") {
            Answer::ok(json!({}))
        } else {
            login_backend(c)
        }
    })
    .await;
    let mut cfg = config();
    cfg.proxy.rpc_url = backend.url("rpc");
    cfg.proxy.webhook_url = backend.url("webhook");
    let srv = start(cfg).await;
    let mut c = anonymous(&srv).await;
    let first = backend.next("webhook").await;
    assert_eq!(
        (&first.body["type"], &first.body["user"]),
        (&json!("connect"), &Value::Null)
    );

    let rpc = |login: &str| json!({"type": "rpc", "event": "login", "data": {"login": login}});
    let ack = c.request(rpc("carol")).await;
    assert_eq!(
        (&ack["type"], &ack["result"]),
        (&json!("ack"), &json!({"ok": true})),
        "{ack}"
    );
    let (_, info) = srv.get(&format!("/api/connections/{}", c.conn)).await;
    assert_eq!(info["user"], "carol");
    let again = backend.next("webhook").await;
    assert_eq!(
        (
            &again.body["type"],
            &again.body["conn"],
            &again.body["user"]
        ),
        (&json!("connect"), &json!(c.conn), &json!("carol"))
    );
    // A second login as someone else is refused with its own code.
    let e = c.request(rpc("dave")).await;
    assert_eq!(
        (&e["type"], &e["code"]),
        (&json!("error"), &json!("already_bound")),
        "{e}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn online_users_are_listed_in_pages() {
    let srv = start(config()).await;
    let mut clients = Vec::new();
    for u in ["carol", "alice", "bob", "alice"] {
        clients.push(srv.user(u).await);
    }
    clients.push(anonymous(&srv).await);
    let (status, page) = srv.get("/api/users?limit=2").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        page,
        json!({"users": [{"user": "alice", "connections": 2}, {"user": "bob", "connections": 1}],
               "next_cursor": "bob"})
    );
    let (_, page) = srv.get("/api/users?limit=2&cursor=bob").await;
    assert_eq!(
        page,
        json!({"users": [{"user": "carol", "connections": 1}], "next_cursor": null})
    );
    for bad in [
        "/api/users?limit=0",
        "/api/users?limit=1001",
        "/api/users?limit=x",
    ] {
        let (status, body) = srv.get(bad).await;
        assert_eq!(
            (status, &body["error"]["field"]),
            (400, &json!("limit")),
            "{bad}: {body}"
        );
    }
    let (status, body) = srv.get("/api/users?sort=name").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("bad_request")),
        "{body}"
    );
    srv.stop().await;
}

async fn publish_raw(srv: &TestServer, body: Value) -> (u16, Option<String>, Value) {
    let r = reqwest::Client::new()
        .post(srv.url("/api/publish"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let replayed = r
        .headers()
        .get("idempotent-replayed")
        .map(|v| v.to_str().unwrap().to_owned());
    (r.status().as_u16(), replayed, r.json().await.unwrap())
}

/// Everything `c` received in `room` up to the publication `fence`.
async fn until_fence(c: &mut Client) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        let m = c.recv_type("message").await;
        if m["data"] == "fence" {
            return got;
        }
        got.push(m["data"].clone());
    }
}

#[tokio::test]
async fn a_publish_with_an_idempotency_key_happens_once() {
    let srv = start(config()).await;
    let mut bob = srv.user("bob").await;
    bob.join("news").await;
    let body =
        json!({"room": "news", "event": "n", "data": {"v": 1}, "idempotency_key": "order-17"});
    let (status, replayed, first) = publish_raw(&srv, body.clone()).await;
    assert_eq!(
        (status, replayed, &first),
        (200, None, &json!({"delivered": 1}))
    );
    let (status, replayed, again) = publish_raw(&srv, body.clone()).await;
    assert_eq!(
        (status, replayed.as_deref(), &again),
        (200, Some("true"), &first)
    );
    // The same key for another request.
    let mut other = body.clone();
    other["data"] = json!({"v": 2});
    let (status, _, e) = publish_raw(&srv, other).await;
    assert_eq!(
        (status, &e["error"]["code"]),
        (422, &json!("idempotency_key_reused")),
        "{e}"
    );
    // Other keys and no key publish as usual.
    let mut next = body.clone();
    next["idempotency_key"] = json!("order-18");
    assert_eq!(publish_raw(&srv, next).await.0, 200);
    let (status, _, e) = publish_raw(
        &srv,
        json!({"room": "news", "event": "n", "idempotency_key": ""}),
    )
    .await;
    assert_eq!(
        (status, &e["error"]["field"]),
        (400, &json!("idempotency_key")),
        "{e}"
    );
    srv.post(
        "/api/publish",
        json!({"room": "news", "event": "n", "data": "fence"}),
    )
    .await;
    assert_eq!(
        until_fence(&mut bob).await,
        [json!({"v": 1}), json!({"v": 1})]
    );
    srv.stop().await;
}

async fn wait_connected(s: &TestServer) {
    for _ in 0..400 {
        if s.metric("roomcast_redis_connected").await == 1.0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await; // poll, bounded
    }
    panic!("node never connected to redis");
}

#[tokio::test]
async fn across_two_nodes_users_bind_and_idempotency_keys_are_shared() {
    let redis = roomcast_redis::testing::RedisServer::start();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let mut c = config();
        c.broker.url = redis.url();
        let srv = start(c).await;
        wait_connected(&srv).await;
        nodes.push(srv);
    }
    let _alice = nodes[0].user("alice").await;
    let mut bob = nodes[1].user("bob").await;
    bob.join("news").await;
    let mut anon = anonymous(&nodes[1]).await;
    anon.join("news").await;
    let (_, before) = nodes[0].get("/api/presence/news").await;
    assert_eq!(before["anonymous"], 1, "{before}");

    // Bind a connection of node 1 through node 0.
    let (status, body) = nodes[0]
        .post("/api/bind", json!({"conn": anon.conn, "user": "carol"}))
        .await;
    assert_eq!((status, &body["bound"]), (200, &json!(true)), "{body}");
    nodes[0]
        .post(
            "/api/send",
            json!({"user": "carol", "event": "dm", "data": "hi carol"}),
        )
        .await;
    assert_eq!(anon.recv_type("message").await["data"], "hi carol");
    // Presence (in Redis) counts it as carol's in its room now.
    let (_, after) = nodes[0].get("/api/presence/news").await;
    let users: Vec<&str> = after["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user"].as_str().unwrap())
        .collect();
    assert_eq!(
        (users, &after["anonymous"]),
        (vec!["bob", "carol"], &json!(0)),
        "{after}"
    );
    let (status, body) = nodes[0]
        .post("/api/bind", json!({"conn": anon.conn, "user": "dave"}))
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("already_bound")),
        "{body}"
    );

    // Every node lists every online user.
    for n in &nodes {
        let (_, page) = n.get("/api/users").await;
        let users: Vec<&str> = page["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["user"].as_str().unwrap())
            .collect();
        assert_eq!(users, ["alice", "bob", "carol"], "{page}");
    }

    // A retry on the other node does not publish again.
    let body = json!({"room": "news", "event": "n", "data": "once", "idempotency_key": "k-1"});
    let (status, _, first) = publish_raw(&nodes[0], body.clone()).await;
    assert_eq!(status, 200, "{first}");
    let (status, replayed, again) = publish_raw(&nodes[1], body).await;
    assert_eq!(
        (status, replayed.as_deref(), &again),
        (200, Some("true"), &first)
    );
    nodes[1]
        .post(
            "/api/publish",
            json!({"room": "news", "event": "n", "data": "fence"}),
        )
        .await;
    assert_eq!(until_fence(&mut bob).await, [json!("once")]);
    for n in nodes {
        n.stop().await;
    }
}
