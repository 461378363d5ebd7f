//! The HTTP server API over real sockets on 127.0.0.1.

mod support;

use std::sync::Arc;

use serde_json::{json, Value};
use support::*;

use roomcast::Server;
use roomcast_core::broker::MemoryBroker;
use roomcast_core::presence::MemoryPresence;
use roomcast_core::{Hub, Publication, Target};

#[tokio::test]
async fn publish_send_and_broadcast_reach_clients_and_count_them() {
    let srv = start(config()).await;
    let mut a = srv.user("alice").await;
    let mut b = srv.user("bob").await;
    a.join("lobby").await;

    let (s, r) = srv
        .post(
            "/api/publish",
            json!({"room": "lobby", "event": "news", "data": {"x": 1}}),
        )
        .await;
    assert_eq!((s, &r), (200, &json!({"delivered": 1})));
    let m = a.recv_type("message").await;
    assert_eq!(
        m,
        json!({"type": "message", "room": "lobby", "event": "news", "data": {"x": 1}, "from": null})
    );

    let (s, r) = srv
        .post(
            "/api/send",
            json!({"user": "bob", "event": "dm", "data": "hey"}),
        )
        .await;
    assert_eq!((s, r["delivered"].as_u64()), (200, Some(1)));
    assert_eq!(b.recv_type("message").await["user"], "bob");

    let (_, r) = srv
        .post("/api/send", json!({"conn": a.conn, "event": "direct"}))
        .await;
    assert_eq!(r["delivered"], 1);
    let m = a.recv_type("message").await;
    assert_eq!(
        (m["conn"].as_str(), m["data"].is_null()),
        (Some(a.conn.as_str()), true)
    );

    let (_, r) = srv
        .post("/api/broadcast", json!({"event": "all", "data": [1, 2]}))
        .await;
    assert_eq!(r["delivered"], 2);
    assert_eq!(a.recv_type("message").await["event"], "all");
    assert_eq!(b.recv_type("message").await["event"], "all");

    // exclude_conn leaves out that connection and only it: bob (now in the
    // room too) gets "skip", alice gets nothing before the next publication.
    b.join("lobby").await;
    let (_, r) = srv
        .post(
            "/api/publish",
            json!({"room": "lobby", "event": "skip", "exclude_conn": a.conn}),
        )
        .await;
    assert_eq!(r["delivered"], 1);
    assert_eq!(b.recv_type("message").await["event"], "skip");
    let (_, r) = srv
        .post("/api/publish", json!({"room": "lobby", "event": "fence"}))
        .await;
    assert_eq!(r["delivered"], 2);
    assert_eq!(a.recv_type("message").await["event"], "fence");
    assert_eq!(b.recv_type("message").await["event"], "fence");
    srv.stop().await;
}

#[tokio::test]
async fn server_side_membership_and_disconnect() {
    let srv = start(config()).await;
    let mut tab1 = srv.user("carol").await;
    let mut tab2 = srv.user("carol").await;
    let (s, r) = srv
        .post("/api/join", json!({"user": "carol", "room": "team"}))
        .await;
    assert_eq!((s, r["joined"].as_u64()), (200, Some(2)));
    for tab in [&mut tab1, &mut tab2] {
        assert_eq!(tab.recv_type("joined").await["room"], "team");
    }
    let (_, r) = srv
        .post("/api/publish", json!({"room": "team", "event": "hi"}))
        .await;
    assert_eq!(r["delivered"], 2);
    let (_, p) = srv.get("/api/presence/team").await;
    assert_eq!(
        p,
        json!({"room": "team", "connections": 2, "users": [{"user": "carol", "connections": 2}], "anonymous": 0})
    );

    let (_, r) = srv
        .post("/api/leave", json!({"conn": tab1.conn, "room": "team"}))
        .await;
    assert_eq!(r["left"], 1);
    assert_eq!(tab1.recv_type("left").await["room"], "team");
    let (_, info) = srv.get(&format!("/api/connections/{}", tab1.conn)).await;
    assert_eq!(info["rooms"], json!([]));
    let (_, info) = srv.get(&format!("/api/connections/{}", tab2.conn)).await;
    assert_eq!(info["rooms"], json!(["team"]));
    let (_, rooms) = srv.get("/api/rooms").await;
    assert_eq!(
        rooms,
        json!({"rooms": [{"room": "team", "connections": 1, "users": 1}]})
    );

    let (_, r) = srv
        .post(
            "/api/disconnect",
            json!({"user": "carol", "code": 4601, "reason": "banned"}),
        )
        .await;
    assert_eq!(r["disconnected"], 2);
    for tab in [tab1, tab2] {
        let closed = tab.closed().await;
        assert_eq!(closed.code, Some(4601));
        let d = closed.disconnect.unwrap();
        assert_eq!(
            (d["reason"].as_str(), d["reconnect"].as_bool()),
            (Some("banned"), Some(false))
        );
    }
    let (_, u) = srv.get("/api/users/carol").await;
    // Cleanup runs when each connection task ends; the close frames above came first.
    let mut u = u;
    for _ in 0..200 {
        if u["online"] == false {
            break;
        }
        tokio::task::yield_now().await;
        u = srv.get("/api/users/carol").await.1;
    }
    assert_eq!(
        u,
        json!({"user": "carol", "online": false, "connections": []})
    );
    srv.stop().await;
}

#[tokio::test]
async fn bad_requests_get_json_errors_naming_the_field() {
    let mut cfg = config();
    cfg.api.max_body_bytes = 1000;
    let srv = start(cfg).await;
    let cases: Vec<(&str, Value, &str, Option<&str>)> = vec![
        (
            "/api/publish",
            json!({"event": "e"}),
            "bad_request",
            Some("room"),
        ),
        (
            "/api/publish",
            json!({"room": "r"}),
            "bad_request",
            Some("event"),
        ),
        (
            "/api/publish",
            json!({"room": 5, "event": "e"}),
            "bad_request",
            Some("room"),
        ),
        (
            "/api/publish",
            json!({"room": "a b", "event": "e"}),
            "invalid_room",
            Some("room"),
        ),
        (
            "/api/publish",
            json!({"room": "r", "event": "e", "exclude_conn": "zz"}),
            "invalid_conn",
            Some("exclude_conn"),
        ),
        (
            "/api/publish",
            json!({"room": "r", "event": "e", "rooom": 1}),
            "bad_request",
            Some("rooom"),
        ),
        (
            "/api/send",
            json!({"event": "e"}),
            "bad_request",
            Some("user"),
        ),
        (
            "/api/send",
            json!({"user": "u", "conn": "0000000000000001", "event": "e"}),
            "bad_request",
            Some("conn"),
        ),
        (
            "/api/join",
            json!({"user": "u"}),
            "bad_request",
            Some("room"),
        ),
        (
            "/api/disconnect",
            json!({"user": "u", "code": 1000}),
            "bad_request",
            Some("code"),
        ),
        ("/api/publish", json!([1]), "bad_request", None),
    ];
    for (path, body, code, field) in cases {
        let (s, r) = srv.post(path, body.clone()).await;
        assert_eq!(s, 400, "{path} {body}: {r}");
        assert_eq!(r["error"]["code"], code, "{path} {body}: {r}");
        assert_eq!(r["error"]["field"].as_str(), field, "{path} {body}: {r}");
        assert!(!r["error"]["message"].as_str().unwrap().is_empty());
    }
    let (s, r) = srv.post_raw("/api/publish", "{broken").await;
    assert_eq!((s, r["error"]["code"].as_str()), (400, Some("bad_request")));
    let deep = format!(
        r#"{{"room":"r","event":"e","data":{}1{}}}"#,
        "[".repeat(300),
        "]".repeat(300)
    );
    let (s, r) = srv.post_raw("/api/publish", &deep).await;
    assert_eq!((s, r["error"]["code"].as_str()), (400, Some("bad_request")));
    assert!(
        r["error"]["message"].as_str().unwrap().contains("deeper"),
        "{r}"
    );
    let big = json!({"room": "r", "event": "e", "data": "x".repeat(2000)});
    let (s, r) = srv.post("/api/publish", big).await;
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (413, Some("body_too_large"))
    );
    let (s, r) = srv.get("/api/nope").await;
    assert_eq!((s, r["error"]["code"].as_str()), (404, Some("not_found")));
    let (s, r) = srv.get("/api/connections/xyz").await;
    assert_eq!((s, r["error"]["field"].as_str()), (400, Some("conn")));
    let (s, r) = srv.get("/api/connections/00000000000000ff").await;
    assert_eq!((s, r["online"].as_bool()), (200, Some(false)));
    srv.stop().await;
}

/// 405s and paths that do not decode are answered by axum itself; they get
/// the same JSON error body as every other `/api/` error.
#[tokio::test]
async fn errors_axum_answers_itself_are_json_too() {
    let srv = start(config()).await;
    let http = reqwest::Client::new();
    use reqwest::Method as M;
    let cases = [
        (M::GET, "/api/publish", 405, "method_not_allowed"),
        (M::POST, "/api/stats", 405, "method_not_allowed"),
        (M::PUT, "/api/history/r", 405, "method_not_allowed"),
        (M::GET, "/api/presence/%FF%FF", 400, "bad_request"),
        (M::GET, "/api/users/%C3%28", 400, "bad_request"),
    ];
    for (method, path, status, code) in cases {
        let resp = http
            .request(method.clone(), srv.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{method} {path}");
        let allow = resp.headers().get("allow").cloned();
        let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("application/json"), "{method} {path}: {ct}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{method} {path}: {body}");
        assert!(
            !body["error"]["message"].as_str().unwrap().is_empty(),
            "{body}"
        );
        assert!(body["error"].get("field").is_some(), "{body}");
        if status == 405 {
            // The Allow header axum set is kept, and the message points at it.
            assert!(allow.is_some(), "{method} {path}");
            assert_eq!(
                body["error"]["message"],
                format!("{method} is not allowed here (the Allow header lists what is)")
            );
        }
    }
    assert_eq!(srv.metric("roomcast_api_errors_total").await, 5.0);
    srv.stop().await;
}

#[tokio::test]
async fn the_api_key_protects_api_routes_only() {
    let mut cfg = config();
    cfg.api.key = "s3cret".into();
    let srv = start(cfg).await;
    let body = json!({"room": "r", "event": "e"});
    let (s, r) = srv.post("/api/publish", body.clone()).await;
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (s, _) = srv
        .post_with_key("/api/publish", body.clone(), Some("wrong"))
        .await;
    assert_eq!(s, 401);
    let (s, r) = srv
        .post_with_key("/api/publish", body, Some("s3cret"))
        .await;
    assert_eq!((s, r["delivered"].as_u64()), (200, Some(0)));
    let (s, _) = srv.get("/api/stats").await;
    assert_eq!(s, 401);
    let (s, h) = srv.get("/healthz").await;
    assert_eq!((s, h["status"].as_str()), (200, Some("ok")));
    let (s, m) = srv.get_text("/metrics").await;
    assert_eq!(s, 200);
    assert!(m.contains("roomcast_api_errors_total 3"), "{m}");
    srv.stop().await;
}

#[tokio::test]
async fn stats_metrics_and_the_chat_page() {
    let srv = start(config()).await;
    let mut a = srv.user("alice").await;
    let mut b = srv.client().await;
    b.welcome().await;
    a.join("x").await;
    b.join("x").await;
    a.request(json!({"type": "publish", "room": "x", "event": "e", "data": "12345"}))
        .await;
    b.recv_type("message").await;
    let (_, s) = srv.get("/api/stats").await;
    assert_eq!(
        (
            s["connections"].as_u64(),
            s["users"].as_u64(),
            s["rooms"].as_u64()
        ),
        (Some(2), Some(1), Some(1))
    );
    assert_eq!(s["node"]["connections"], 2);
    let (_, m) = srv.get_text("/metrics").await;
    for line in [
        "roomcast_connections 2",
        "roomcast_rooms 1",
        "roomcast_connections_accepted_total 2",
        "roomcast_publications_total 1",
        "# TYPE roomcast_messages_out_total counter",
    ] {
        assert!(m.contains(line), "missing {line:?} in\n{m}");
    }
    let (s, page) = srv.get_text("/").await;
    assert_eq!(s, 200);
    assert!(page.contains("/ws"), "the chat page speaks to /ws");
    srv.stop().await;
}

#[tokio::test]
async fn publishing_from_rust_code_reaches_websocket_clients() {
    let srv = start(config()).await;
    let mut c = srv.client().await;
    c.welcome().await;
    c.join("ticker").await;
    let hub = srv.server.hub().clone();
    let p = Publication::json(
        Target::Room("ticker".into()),
        "price",
        &json!({"eur": 1.08}),
    )
    .unwrap();
    assert_eq!(hub.publish(p).await.unwrap(), 1);
    let m = c.recv_type("message").await;
    assert_eq!(m["data"]["eur"], 1.08);
    srv.stop().await;
}

/// Two servers sharing one in-process broker and presence store behave as one.
#[tokio::test]
async fn two_nodes_on_a_shared_broker_act_as_one() {
    let broker = Arc::new(MemoryBroker::new());
    let presence = Arc::new(MemoryPresence::new());
    let node = |c: roomcast::Config| {
        let hub = Hub::with_backends(c.hub_config(), broker.clone(), presence.clone());
        Server::with_hub(c, hub)
    };
    let (n1, n2) = (node(config()), node(config()));
    let s1 = start_server(n1).await;
    let s2 = start_server(n2).await;
    let mut a = s1.user("alice").await;
    let mut b = s2.user("bob").await;
    a.join("lobby").await;
    b.join("lobby").await;
    // bob's join reached alice's node as a presence event.
    assert_eq!(a.recv_type("presence").await["user"], "alice");
    assert_eq!(a.recv_type("presence").await["user"], "bob");

    let ack = a
        .request(
            json!({"type": "publish", "room": "lobby", "event": "chat", "data": "from node 1"}),
        )
        .await;
    assert_eq!(ack["delivered"], 1, "local deliveries only");
    assert_eq!(b.recv_type("message").await["data"], "from node 1");

    // The API of node 1 acts on a client of node 2.
    let (_, r) = s1
        .post("/api/join", json!({"user": "bob", "room": "ops"}))
        .await;
    assert_eq!(r["joined"], 0);
    assert_eq!(b.recv_type("joined").await["room"], "ops");
    let (_, p) = s1.get("/api/presence/ops").await;
    assert_eq!(p["users"], json!([{"user": "bob", "connections": 1}]));
    s1.post("/api/send", json!({"user": "bob", "event": "dm"}))
        .await;
    assert_eq!(b.recv_type("message").await["event"], "dm");
    let (_, st) = s1.get("/api/stats").await;
    assert_eq!(st["connections"], 2);
    s1.post("/api/disconnect", json!({"user": "bob"})).await;
    assert_eq!(b.closed().await.code, Some(4500));
    s1.stop().await;
    s2.stop().await;
}

#[test]
fn the_close_code_table_in_the_docs_matches_the_code() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/protocol.md"
    ))
    .unwrap();
    for d in roomcast_core::Disconnect::TABLE {
        let row = format!(
            "| {} | {} | {} |",
            d.code,
            d.reason,
            if d.reconnect() { "yes" } else { "no" }
        );
        assert!(doc.contains(&row), "docs/protocol.md lacks the row {row:?}");
    }
}
