//! What clients may do, over real sockets: room rules, client send and
//! broadcast, the event proxy and webhooks against a real HTTP backend, the
//! subscribe proxy, rate limits, the origin allow-list, per-user connection
//! caps and API key scopes.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use support::backend::{Answer, Backend, Call};
use support::*;
use tokio_tungstenite::tungstenite::Message;

#[path = "../../roomcast-socketio/tests/support/mod.rs"]
mod sio;

use roomcast_core::room::RoomRule;

const SECRET: &str = "policy-test-secret";

fn rules(v: Value) -> Vec<RoomRule> {
    serde_json::from_value(v).unwrap()
}

/// Open mode that also accepts tokens signed with [`SECRET`].
fn open_with_tokens() -> roomcast::Config {
    let mut c = config();
    c.auth.jwt.secret = SECRET.to_owned();
    c
}

async fn with_token(srv: &TestServer, claims: Value, headers: &[(&str, &str)]) -> Client {
    let t = hs256(SECRET, &claims);
    let mut c = srv.client_with(&format!("/ws?token={t}"), headers).await;
    c.welcome().await;
    c
}

async fn rooms_of(srv: &TestServer, c: &Client) -> Value {
    let (_, info) = srv.get(&format!("/api/connections/{}", c.conn)).await;
    info["rooms"].clone()
}

/// The next Socket.IO packet that is not an event (presence events come and go).
async fn reply(s: &mut sio::Sio) -> String {
    loop {
        let p = s.recv_sio().await;
        if !p.starts_with('2') {
            return p;
        }
    }
}

fn code(frame: &Value) -> &str {
    assert_eq!(frame["type"], "error", "{frame}");
    frame["code"].as_str().unwrap()
}

#[tokio::test]
async fn join_rules_decide_which_rooms_a_client_may_join() {
    let mut backend = Backend::start(|c: &Call| match c.body["room"].as_str().unwrap() {
        "approved:yes" => Answer::ok(json!({})),
        "approved:no" => {
            Answer::ok(json!({"error": {"code": "not_invited", "message": "ask the owner"}}))
        }
        "approved:403" => Answer::Text(403, ""),
        "approved:slow" => Answer::Hang,
        _ => Answer::Text(500, "oops"),
    })
    .await;
    let mut cfg = open_with_tokens();
    cfg.proxy.subscribe_url = backend.url("subscribe");
    cfg.proxy.secret = "sub-secret".into();
    cfg.proxy.timeout_ms = 1_500;
    cfg.socketio.builtin_events = true;
    cfg.rooms = rules(json!([
        {"pattern": "public:*", "join": "anyone"},
        {"pattern": "members:*", "join": "authenticated"},
        {"pattern": "granted:*", "join": "claim"},
        {"pattern": "approved:*", "join": "proxy"},
        {"pattern": "user:#{user}", "join": "authenticated", "publish": "none"},
        {"pattern": "user:*", "join": "none"},
        {"pattern": "server:*", "join": "none"},
    ]));
    let srv = start(cfg).await;

    let mut anon = srv.client().await;
    anon.welcome().await;
    assert_eq!(
        anon.request(json!({"type": "join", "room": "public:1"}))
            .await["type"],
        "ack"
    );
    for room in ["members:1", "user:alice", "granted:a", "server:1"] {
        let e = anon.request(json!({"type": "join", "room": room})).await;
        assert_eq!(code(&e), "forbidden", "{room}: {e}");
    }

    let mut alice = with_token(
        &srv,
        json!({"sub": "alice", "rooms": ["granted:a"]}),
        &[("cookie", "sessionid=s1")],
    )
    .await;
    let ack = |v: Value| v["type"] == "ack";
    assert!(ack(alice
        .request(json!({"type": "join", "room": "members:1"}))
        .await));
    assert!(ack(alice
        .request(json!({"type": "leave", "room": "granted:a"}))
        .await));
    assert!(ack(alice
        .request(json!({"type": "join", "room": "granted:a"}))
        .await));
    assert!(ack(alice
        .request(json!({"type": "join", "room": "user:alice"}))
        .await));
    for room in ["granted:b", "user:bob", "user:*", "server:1"] {
        let e = alice.request(json!({"type": "join", "room": room})).await;
        assert_eq!(code(&e), "forbidden", "{room}: {e}");
    }

    // `join = "proxy"`: the backend is asked at each join.
    assert!(ack(alice
        .request(json!({"type": "join", "room": "approved:yes"}))
        .await));
    let call = backend.next("subscribe").await;
    assert_eq!(call.header("x-roomcast-secret"), Some("sub-secret"));
    assert_eq!(call.header("cookie"), Some("sessionid=s1"));
    assert_eq!(
        (
            &call.body["room"],
            &call.body["user"],
            &call.body["conn"],
            &call.body["transport"]
        ),
        (
            &json!("approved:yes"),
            &json!("alice"),
            &json!(alice.conn),
            &json!("websocket")
        )
    );
    for (room, want, message) in [
        ("approved:no", "not_invited", "ask the owner"),
        (
            "approved:403",
            "forbidden",
            "refused by the backend (HTTP 403)",
        ),
        ("approved:slow", "backend_timeout", "backend timeout"),
        ("approved:crash", "backend_error", "backend error"),
    ] {
        let e = alice.request(json!({"type": "join", "room": room})).await;
        assert_eq!(
            (code(&e), e["message"].as_str()),
            (want, Some(message)),
            "{room}"
        );
    }

    // Refused joins changed nothing.
    assert_eq!(
        rooms_of(&srv, &alice).await,
        json!(["approved:yes", "granted:a", "members:1", "user:alice"])
    );
    for room in [
        "granted:b",
        "user:bob",
        "server:1",
        "approved:no",
        "approved:slow",
    ] {
        let (_, p) = srv.get(&format!("/api/presence/{room}")).await;
        assert_eq!(p["connections"], 0, "{room}: {p}");
    }
    // Who is in a room is for its members, and for those who may join it by themselves.
    let presence = |room: &str| json!({"type": "presence", "room": room});
    for room in [
        "user:alice",
        "granted:a",
        "members:1",
        "approved:yes",
        "server:1",
    ] {
        let e = anon.request(presence(room)).await;
        assert_eq!(code(&e), "forbidden", "{room}: {e}");
    }
    assert_eq!(anon.request(presence("public:2")).await["connections"], 0);
    for room in ["user:alice", "approved:yes", "members:2"] {
        let p = alice.request(presence(room)).await;
        assert_eq!(p["type"], "ack", "{room}: {p}");
    }
    let e = alice.request(presence("approved:no")).await;
    assert_eq!(code(&e), "forbidden");
    let e = alice.request(presence("user:bob")).await;
    assert_eq!(code(&e), "forbidden");

    // The server side is not bound by client rules.
    let (_, r) = srv
        .post("/api/join", json!({"conn": alice.conn, "room": "server:1"}))
        .await;
    assert_eq!(r["joined"], 1, "{r}");

    // Socket.IO's built-in join obeys the same rules.
    let (mut s, _) = sio::Sio::connect(srv.addr, "/", json!({"user": "bob"})).await;
    s.send(r#"421["roomcast:join",{"room":"user:alice"}]"#)
        .await;
    let a = reply(&mut s).await;
    assert!(a.starts_with(r#"31[{"error":{"code":"forbidden""#), "{a}");
    s.send(r#"422["roomcast:join",{"room":"user:bob"}]"#).await;
    assert_eq!(
        reply(&mut s).await,
        r#"32[{"joined":true,"room":"user:bob"}]"#
    );
    s.send(r#"423["roomcast:presence",{"room":"user:alice"}]"#)
        .await;
    let a = reply(&mut s).await;
    assert!(a.starts_with(r#"33[{"error":{"code":"forbidden""#), "{a}");
    assert_eq!(
        srv.metric(r#"roomcast_permission_denied_total{action="join"}"#)
            .await,
        13.0
    );
    srv.stop().await;
}

#[tokio::test]
async fn publish_rules_and_client_send_and_broadcast() {
    let mut cfg = config();
    cfg.socketio.builtin_events = true;
    // Open mode allows both unless the config says otherwise.
    cfg.client.send = roomcast::config::Permit::Deny;
    cfg.client.broadcast = roomcast::config::Permit::Deny;
    cfg.rooms = rules(json!([
        {"pattern": "announce:*", "publish": "none"},
        {"pattern": "open:*", "publish": "anyone"},
    ]));
    let srv = start(cfg).await;
    let mut alice = srv.user("alice").await;
    let mut bob = srv.user("bob").await;
    for room in ["talk", "announce:1", "open:1"] {
        bob.join(room).await;
    }
    alice.join("announce:1").await;
    let publish = |room: &str, text: &str| json!({"type": "publish", "room": room, "event": "chat", "data": text});

    let e = alice.request(publish("talk", "not a member")).await;
    assert_eq!(code(&e), "forbidden");
    alice.join("talk").await;
    assert_eq!(
        alice.request(publish("talk", "member")).await["delivered"],
        2
    );
    let e = alice.request(publish("announce:1", "member, but")).await;
    assert_eq!(code(&e), "forbidden");
    assert!(
        e["message"].as_str().unwrap().contains("only the server"),
        "{e}"
    );
    srv.post(
        "/api/publish",
        json!({"room": "announce:1", "event": "chat", "data": "from the server"}),
    )
    .await;
    assert_eq!(
        alice.request(publish("open:1", "anyone")).await["delivered"],
        1
    );
    let e = alice
        .request(json!({"type": "send", "user": "bob", "event": "chat", "data": "dm"}))
        .await;
    assert_eq!(code(&e), "forbidden");
    let e = alice
        .request(json!({"type": "broadcast", "event": "chat", "data": "all"}))
        .await;
    assert_eq!(code(&e), "forbidden");
    let (mut s, _) = sio::Sio::connect(srv.addr, "/", json!({"user": "carol"})).await;
    s.send(r#"421["roomcast:publish",{"room":"talk","event":"chat","data":"sio"}]"#)
        .await;
    let a = s.recv_sio().await;
    assert!(a.starts_with(r#"31[{"error":{"code":"forbidden""#), "{a}");
    srv.post(
        "/api/publish",
        json!({"room": "talk", "event": "chat", "data": "fence"}),
    )
    .await;

    // bob got exactly the allowed publications, in order.
    let mut got = Vec::new();
    loop {
        let m = bob.recv_type("message").await;
        got.push(m["data"].as_str().unwrap().to_owned());
        if got.last().unwrap() == "fence" {
            break;
        }
    }
    assert_eq!(got, ["member", "from the server", "anyone", "fence"]);
    assert_eq!(
        srv.metric(r#"roomcast_permission_denied_total{action="publish"}"#)
            .await,
        3.0
    );
    srv.stop().await;
}

#[tokio::test]
async fn presence_visibility_join_leave_events_and_room_capacity() {
    let mut cfg = config();
    cfg.rooms = rules(json!([
        {"pattern": "secret:*", "presence": false},
        {"pattern": "quiet:*", "join_leave_events": false},
        {"pattern": "small:*", "max_members": 2},
    ]));
    let srv = start(cfg).await;
    let mut alice = srv.user("alice").await;
    let mut bob = srv.user("bob").await;
    let mut carol = srv.user("carol").await;

    alice.join("secret:1").await;
    let e = alice
        .request(json!({"type": "presence", "room": "secret:1"}))
        .await;
    assert_eq!(code(&e), "forbidden");
    let (s, body) = srv.get("/api/presence/secret:1").await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );

    alice.join("quiet:1").await;
    bob.join("quiet:1").await;
    alice.join("loud").await;
    bob.join("loud").await;
    // The first presence event alice sees is about `loud`: none came for `quiet:1`.
    let p = alice.recv_type("presence").await;
    assert_eq!(p["room"], "loud", "{p}");

    alice.join("small:1").await;
    bob.join("small:1").await;
    let e = carol
        .request(json!({"type": "join", "room": "small:1"}))
        .await;
    assert_eq!(code(&e), "room_full");
    let (_, p) = srv.get("/api/presence/small:1").await;
    assert_eq!(p["connections"], 2);
    srv.stop().await;
}

/// The event proxy's backend: answers by event name.
fn events(c: &Call) -> Answer {
    let data = &c.body["data"];
    match c.body["event"].as_str().unwrap_or_default() {
        "chat.send" => Answer::ok(json!({
            "result": {"id": 17},
            "actions": [
                {"type": "publish", "room": "lobby", "event": "message", "data": {"text": data["text"]}},
                {"type": "session", "data": {"last": "chat.send"}},
                {"type": "join", "room": "staff:1"},
            ],
        })),
        "dm" => Answer::ok(json!({
            "actions": [{"type": "send", "user": "bob", "event": "dm", "data": data}],
        })),
        "fail" => Answer::ok(json!({"error": {"code": "invalid", "message": "text too long"}})),
        "crash" => Answer::Text(500, "Internal Server Error"),
        "slow" => Answer::Hang,
        "garbage" => Answer::Text(200, "<html>"),
        "explode" => Answer::ok(json!({"actions": [{"type": "explode"}]})),
        "huge" => Answer::ok(json!({"result": "x".repeat(2 << 20)})),
        "leak" => Answer::Json(
            500,
            json!({"error": {"code": "db", "message": "password=hunter2 at /srv/app/views.py"}}),
        ),
        "kick" => {
            Answer::ok(json!({"actions": [{"type": "disconnect", "code": 4600, "reason": "bye"}]}))
        }
        "gated" => Answer::Gated(Box::new(Answer::ok(json!({"result": data})))),
        other => Answer::ok(json!({"result": {"echo": other}})),
    }
}

fn rpc_config(backend: &Backend) -> roomcast::Config {
    let mut c = config();
    c.proxy.rpc_url = backend.url("rpc");
    c.proxy.rpc_routes = vec![roomcast::config::RpcRoute {
        event: "billing.*".into(),
        url: backend.url("billing"),
    }];
    c.proxy.secret = "rpc-secret".into();
    c.proxy.timeout_ms = 1_500;
    c.rooms = rules(json!([{"pattern": "staff:*", "join": "none"}]));
    c
}

#[tokio::test]
async fn native_rpc_goes_to_the_backend_whose_answer_is_the_ack_and_its_actions_run() {
    let mut backend = Backend::start(events).await;
    let srv = start(rpc_config(&backend)).await;
    let mut alice = srv.client_with("/ws", &[("cookie", "sessionid=a")]).await;
    alice.welcome().await;
    assert_eq!(
        alice
            .request(json!({"type": "auth", "user": "alice"}))
            .await["type"],
        "ack"
    );
    let mut bob = srv.user("bob").await;
    alice.join("lobby").await;
    bob.join("lobby").await;
    let rpc = |event: &str, data: Value| json!({"type": "rpc", "event": event, "data": data});

    let ack = alice.request(rpc("chat.send", json!({"text": "hi"}))).await;
    assert_eq!(
        (&ack["type"], &ack["result"]),
        (&json!("ack"), &json!({"id": 17})),
        "{ack}"
    );
    let call = backend.next("rpc").await;
    assert_eq!(call.header("x-roomcast-secret"), Some("rpc-secret"));
    assert_eq!(call.header("cookie"), Some("sessionid=a"));
    assert_eq!(
        call.body,
        json!({"event": "chat.send", "data": {"text": "hi"}, "conn": alice.conn, "user": "alice",
               "session": {}, "rooms": ["lobby"], "transport": "websocket", "namespace": null})
    );
    // The actions ran as alice: publish, session data, and a join no client may make.
    let m = bob.recv_type("message").await;
    assert_eq!(
        (&m["room"], &m["event"], &m["data"], &m["from"]["user"]),
        (
            &json!("lobby"),
            &json!("message"),
            &json!({"text": "hi"}),
            &json!("alice")
        )
    );
    let (_, info) = srv.get(&format!("/api/connections/{}", alice.conn)).await;
    assert_eq!(info["session"], json!({"last": "chat.send"}), "{info}");
    let e = alice
        .request(json!({"type": "session", "data": {"last": "forged"}}))
        .await;
    assert_eq!(code(&e), "forbidden", "{e}");
    assert_eq!(info["rooms"], json!(["lobby", "staff:1"]), "{info}");

    assert_eq!(
        alice.request(rpc("dm", json!("psst"))).await["result"],
        Value::Null
    );
    let m = bob.recv_type("message").await;
    assert_eq!((&m["user"], &m["data"]), (&json!("bob"), &json!("psst")));

    let ack = alice.request(rpc("billing.charge", json!(1))).await;
    assert_eq!(ack["result"], json!({"echo": "billing.charge"}));
    assert_eq!(
        backend.next("billing").await.body["event"],
        "billing.charge"
    );

    for (event, want, message) in [
        ("fail", "invalid", "text too long"),
        ("crash", "backend_error", "backend error"),
        ("slow", "backend_timeout", "backend timeout"),
        ("garbage", "backend_error", "backend error"),
        // What the backend's 5xx says, or what was wrong with its answer, is
        // for roomcast's log: it may name internals.
        ("leak", "backend_error", "backend error"),
        ("explode", "backend_error", "backend error"),
        // Answers over 1 MiB are not read.
        ("huge", "backend_error", "backend error"),
    ] {
        let e = alice.request(rpc(event, json!({}))).await;
        assert_eq!(
            (code(&e), e["message"].as_str()),
            (want, Some(message)),
            "{event}"
        );
    }
    // An RPC that reached the backend is never retried (it may not be idempotent).
    let crashes = backend
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.body["event"] == "crash")
        .count();
    assert_eq!(crashes, 1);

    // A disconnect action closes the caller with the backend's code; bob stays.
    alice.send(rpc("kick", json!({}))).await;
    let closed = alice.closed().await;
    assert_eq!(closed.code, Some(4600));
    assert_eq!(closed.disconnect.unwrap()["reason"], "bye");
    bob.send(json!({"type": "ping", "id": 99})).await;
    assert_eq!(bob.recv_type("pong").await["id"], 99);
    assert_eq!(
        srv.metric(r#"roomcast_proxy_requests_total{kind="rpc",result="timeout"}"#)
            .await,
        1.0
    );
    srv.stop().await;
}

#[tokio::test]
async fn socketio_events_go_to_the_backend_bounded_per_connection_and_per_node() {
    let backend = Backend::start(events).await;
    let srv = start(rpc_config(&backend)).await;
    let (mut s, _) = sio::Sio::connect(srv.addr, "/", json!({"user": "alice"})).await;
    s.send(r#"421["chat.send",{"text":"hi"}]"#).await;
    assert_eq!(s.recv_sio().await, r#"31[{"id":17}]"#);
    s.send(r#"422["fail",{}]"#).await;
    assert_eq!(
        s.recv_sio().await,
        r#"32[{"error":{"code":"invalid","message":"text too long"}}]"#
    );
    // Without an ack, an error comes back as a roomcast:error event.
    s.send(r#"42["fail",{}]"#).await;
    assert_eq!(
        s.event().await,
        (
            "roomcast:error".to_owned(),
            json!({"event": "fail", "error": {"code": "invalid", "message": "text too long"}})
        )
    );

    // Eight events may wait for the backend per connection; the ninth is refused.
    // The three calls above were answered, so the count is settled here.
    let before = backend.count("rpc");
    for i in 0..8 {
        s.send(&format!(r#"42{}["gated",{i}]"#, 100 + i)).await;
    }
    // All eight are at the backend (held by its gate) before the ninth is sent.
    let deadline = tokio::time::Instant::now() + STEP;
    while backend.count("rpc") < before + 8 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "8 gated calls at the backend, saw {}",
            backend.count("rpc") - before
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    s.send(r#"42108["gated",8]"#).await;
    assert_eq!(
        s.recv_sio().await,
        r#"3108[{"error":{"code":"too_many_requests","message":"too many events waiting for the backend on this connection"}}]"#
    );
    backend.release(8);
    let mut acks: Vec<String> = Vec::new();
    for _ in 0..8 {
        acks.push(s.recv_sio().await);
    }
    acks.sort();
    let want: Vec<String> = (0..8).map(|i| format!("3{}[{i}]", 100 + i)).collect();
    assert_eq!(acks, want);
    assert_eq!(
        backend.count("rpc"),
        before + 8,
        "the ninth never reached the backend"
    );
    srv.stop().await;

    // At most `max_in_flight` calls per node: the others wait for a slot.
    let mut backend = Backend::start(events).await;
    let mut cfg = rpc_config(&backend);
    cfg.proxy.max_in_flight = 1;
    cfg.proxy.timeout_ms = 5_000;
    let srv = start(cfg).await;
    let mut clients = Vec::new();
    for i in 0..4 {
        let (mut c, _) = sio::Sio::connect(srv.addr, "/", json!({"user": format!("u{i}")})).await;
        c.send(&format!(r#"421["gated",{i}]"#)).await;
        clients.push(c);
    }
    // Each call reaches the backend only once the one before it was answered.
    for arrived in 1..=4 {
        backend.next("rpc").await;
        assert_eq!(
            backend.count("rpc"),
            arrived,
            "more than one call in flight"
        );
        backend.release(1);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.recv_sio().await, format!("31[{i}]"));
    }
    srv.stop().await;
}

#[tokio::test]
async fn webhooks_post_connect_join_leave_and_disconnect_in_order_and_retry() {
    let failed_once = Arc::new(AtomicBool::new(false));
    let flag = failed_once.clone();
    let mut backend = Backend::start(move |c: &Call| {
        // The first post of the join of `r2` fails: it must be posted again, in its place.
        if c.body["type"] == "join" && c.body["room"] == "r2" && !flag.swap(true, Ordering::SeqCst)
        {
            return Answer::Text(503, "busy");
        }
        Answer::ok(json!({}))
    })
    .await;
    let mut cfg = open_with_tokens();
    cfg.proxy.webhook_url = backend.url("webhook");
    cfg.proxy.secret = "hook-secret".into();
    let srv = start(cfg).await;
    let mut alice = with_token(&srv, json!({"sub": "alice", "rooms": ["r1"]}), &[]).await;
    alice.join("r2").await;
    assert_eq!(
        alice.request(json!({"type": "leave", "room": "r2"})).await["left"],
        true
    );
    let mut late = srv.client().await;
    late.welcome().await;
    assert_eq!(
        late.request(json!({"type": "auth", "user": "bob"})).await["type"],
        "ack"
    );
    let (alice_conn, late_conn) = (alice.conn.clone(), late.conn.clone());
    alice.close().await;

    let mut seen = Vec::new();
    while seen.len() < 7 {
        let c = backend.next("webhook").await;
        assert_eq!(c.header("x-roomcast-secret"), Some("hook-secret"));
        seen.push(c.body);
    }
    let brief: Vec<(String, String, Value, Value)> = seen
        .iter()
        .map(|b| {
            let conn = if b["conn"] == alice_conn.as_str() {
                "alice"
            } else if b["conn"] == late_conn.as_str() {
                "late"
            } else {
                "?"
            };
            (
                b["type"].as_str().unwrap().to_owned(),
                conn.to_owned(),
                b["user"].clone(),
                b.get("room").cloned().unwrap_or(Value::Null),
            )
        })
        .collect();
    let row = |t: &str, c: &str, u: Value, r: Value| (t.to_owned(), c.to_owned(), u, r);
    assert_eq!(
        brief,
        vec![
            row("connect", "alice", json!("alice"), Value::Null),
            row("join", "alice", json!("alice"), json!("r1")),
            row("join", "alice", json!("alice"), json!("r2")),
            row("join", "alice", json!("alice"), json!("r2")),
            row("leave", "alice", json!("alice"), json!("r2")),
            row("connect", "late", Value::Null, Value::Null),
            row("connect", "late", json!("bob"), Value::Null),
        ]
    );
    // The retry is the same event (same id); the others have their own.
    assert_eq!(seen[2]["id"], seen[3]["id"]);
    let mut ids: Vec<&str> = seen.iter().map(|b| b["id"].as_str().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 6);
    let gone = backend.next("webhook").await.body;
    assert_eq!(
        (&gone["type"], &gone["conn"], &gone["reason"]),
        (
            &json!("disconnect"),
            &json!(alice_conn),
            &json!("client closed")
        )
    );
    assert!(seen
        .iter()
        .all(|b| b["node"].is_string() && b["time_ms"].as_u64().unwrap() > 0));
    srv.stop().await;

    // Only the chosen kinds are posted.
    let mut backend = Backend::start(|_: &Call| Answer::ok(json!({}))).await;
    let mut cfg = config();
    cfg.proxy.webhook_url = backend.url("webhook");
    cfg.proxy.webhook_events = vec!["disconnect".into()];
    let srv = start(cfg).await;
    let mut c = srv.user("carol").await;
    c.join("r").await;
    let conn = c.conn.clone();
    c.close().await;
    let only = backend.next("webhook").await.body;
    assert_eq!(
        (&only["type"], &only["conn"]),
        (&json!("disconnect"), &json!(conn))
    );
    assert_eq!(backend.count("webhook"), 1);
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// Abuse limits

#[tokio::test]
async fn the_message_rate_limit_refuses_then_disconnects_with_4005() {
    let mut cfg = config();
    cfg.limits.message_rate = 1;
    cfg.limits.message_burst = 3;
    cfg.socketio.builtin_events = true;
    let srv = start(cfg).await;
    let mut calm = srv.user("calm").await;
    let mut noisy = srv.client().await;
    noisy.welcome().await;
    // Ten joins in one write: the burst of three passes, then refusals, then the close.
    noisy
        .send_batch((1..=10).map(|i| {
            Message::text(json!({"type": "join", "room": format!("r{i}"), "id": i}).to_string())
        }))
        .await;
    let mut frames = Vec::new();
    let closed = loop {
        let f = noisy.recv().await;
        if f["type"] == "disconnect" {
            break f;
        }
        frames.push((f["type"].clone(), f["id"].clone(), f["code"].clone()));
    };
    assert_eq!(
        frames,
        vec![
            (json!("ack"), json!(1), Value::Null),
            (json!("ack"), json!(2), Value::Null),
            (json!("ack"), json!(3), Value::Null),
            (json!("error"), json!(4), json!("rate_limited")),
            (json!("error"), json!(5), json!("rate_limited")),
        ]
    );
    assert_eq!(
        (&closed["code"], &closed["reconnect"]),
        (&json!(4005), &json!(true))
    );
    assert_eq!(noisy.closed().await.code, Some(4005));
    // Others are not affected.
    calm.join("r1").await;

    // Socket.IO events count the same way.
    let (mut s, _) = sio::Sio::connect(srv.addr, "/", json!({"user": "sio"})).await;
    for i in 1..=4 {
        s.send(&format!(r#"42{i}["roomcast:join",{{"room":"s{i}"}}]"#))
            .await;
    }
    for i in 1..=3 {
        assert_eq!(
            reply(&mut s).await,
            format!(r#"3{i}[{{"joined":true,"room":"s{i}"}}]"#)
        );
    }
    let a = reply(&mut s).await;
    assert!(
        a.starts_with(r#"34[{"error":{"code":"rate_limited""#),
        "{a}"
    );
    // A Socket.IO session flooding in one polling payload is closed once.
    let polling = Polling::open(&srv, &[]).await;
    let mut body = vec![r#"40{"user":"flood"}"#.to_owned()];
    body.extend((0..200).map(|i| format!(r#"42["roomcast:presence",{{"room":"p{i}"}}]"#)));
    polling.post(&body.join("\x1e")).await;
    polling.until_closed().await;
    assert_eq!(
        srv.metric(r#"roomcast_disconnects_total{code="4005"}"#)
            .await,
        2.0
    );

    // Binary frames and pings count too.
    for frame in [
        Message::Binary(vec![1u8].into()),
        Message::Ping(vec![].into()),
    ] {
        let mut c = srv.client().await;
        c.welcome().await;
        for _ in 0..10 {
            c.send_raw(frame.clone()).await;
        }
        assert_eq!(c.closed().await.code, Some(4005), "{frame:?}");
    }
    assert_eq!(
        srv.metric(r#"roomcast_disconnects_total{code="4005"}"#)
            .await,
        4.0
    );
    srv.stop().await;
}

#[tokio::test]
async fn new_connections_per_ip_are_rate_limited_with_429() {
    let mut cfg = config();
    cfg.limits.connection_rate_per_ip = 1;
    cfg.limits.connection_burst_per_ip = 2;
    let srv = start(cfg).await;
    let mut a = srv.client().await;
    a.welcome().await;
    let mut b = srv.client().await;
    b.welcome().await;
    let Err((status, body)) = Client::try_connect(srv.addr, "/ws", &[]).await else {
        panic!("a third upgrade within the second was accepted");
    };
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limited"))
    );
    let r = reqwest::get(srv.url("/socket.io/?EIO=4&transport=polling"))
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    // The API and the open connections are not limited.
    let (s, _) = srv.get("/api/stats").await;
    assert_eq!(s, 200);
    a.join("still-here").await;
    assert_eq!(
        srv.metric(r#"roomcast_rate_limited_total{kind="connection"}"#)
            .await,
        2.0
    );
    srv.stop().await;
}

#[tokio::test]
async fn browsers_from_other_origins_are_refused_with_403() {
    let mut cfg = config();
    cfg.auth.allowed_origins = vec!["https://app.example".into()];
    let srv = start(cfg).await;
    let evil = [("origin", "https://evil.example")];
    let Err((status, body)) = Client::try_connect(srv.addr, "/ws", &evil).await else {
        panic!("a handshake from another origin was accepted");
    };
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("origin_not_allowed"))
    );
    let r = reqwest::Client::new()
        .get(srv.url("/socket.io/?EIO=4&transport=polling"))
        .header("origin", "https://app.example.evil")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let mut ok = srv
        .client_with("/ws", &[("origin", "https://app.example")])
        .await;
    ok.welcome().await;
    // Clients that are not browsers send no Origin.
    let mut tool = srv.client().await;
    tool.welcome().await;
    assert_eq!(srv.metric("roomcast_origin_rejected_total").await, 2.0);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_may_hold_at_most_max_connections_per_user() {
    let mut cfg = open_with_tokens();
    cfg.limits.max_connections_per_user = 2;
    let srv = start(cfg).await;
    let t = hs256(SECRET, &json!({"sub": "alice"}));
    let _one = with_token(&srv, json!({"sub": "alice"}), &[]).await;
    let _two = srv.user("alice").await;
    let third = Client::connect(srv.addr, &format!("/ws?token={t}")).await;
    let closed = third.closed().await;
    assert_eq!(closed.code, Some(4505));
    assert_eq!(closed.disconnect.unwrap()["reconnect"], false);
    // The auth command (open mode, and a token) closes the same way.
    for auth in [
        json!({"type": "auth", "user": "alice", "id": 1}),
        json!({"type": "auth", "token": t, "id": 1}),
    ] {
        let mut fourth = srv.client().await;
        fourth.welcome().await;
        fourth.send(auth).await;
        let closed = fourth.closed().await;
        assert_eq!(closed.code, Some(4505));
        let d = closed.disconnect.unwrap();
        assert_eq!(
            (d["code"].as_u64(), d["reconnect"].as_bool()),
            (Some(4505), Some(false))
        );
    }
    let (_, answer) = sio::Sio::connect(srv.addr, "/", json!({"token": t})).await;
    assert!(
        answer.starts_with(r#"4{"data":{"code":"too_many_connections"}"#),
        "{answer}"
    );
    // Many connections of one user at once: still only two get in.
    let t = hs256(SECRET, &json!({"sub": "carol"}));
    let attempts = (0..100).map(|_| {
        let path = format!("/ws?token={t}");
        let addr = srv.addr;
        async move {
            let mut c = Client::connect(addr, &path).await;
            let first = c.recv().await;
            (first["type"] == "welcome").then_some(c)
        }
    });
    let admitted: Vec<Client> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(admitted.len(), 2);
    // Another user is not affected.
    let _bob = srv.user("bob").await;
    let (_, u) = srv.get("/api/users/alice").await;
    assert_eq!(u["connections"].as_array().unwrap().len(), 2, "{u}");
    assert_eq!(
        srv.metric(r#"roomcast_permission_denied_total{action="connect"}"#)
            .await,
        102.0
    );
    srv.stop().await;
}

#[tokio::test]
async fn api_keys_have_scopes() {
    let mut cfg = config();
    cfg.api.keys = vec![
        roomcast::config::ApiKey {
            key: "pub-key".into(),
            scope: roomcast::config::ApiScope::Publish,
        },
        roomcast::config::ApiKey {
            key: "admin-key".into(),
            scope: roomcast::config::ApiScope::Admin,
        },
    ];
    let srv = start(cfg).await;
    let mut c = srv.user("alice").await;
    c.join("r").await;
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, key: &str, body: Option<Value>| {
        let mut req = http.request(method, srv.url(path)).bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    use reqwest::Method;
    let publish = json!({"room": "r", "event": "e", "data": 1});
    for (path, body) in [
        ("/api/publish", publish.clone()),
        (
            "/api/send",
            json!({"user": "alice", "event": "e", "data": 2}),
        ),
        ("/api/broadcast", json!({"event": "e", "data": 3})),
    ] {
        let (s, r) = call(Method::POST, path, "pub-key", Some(body)).await;
        assert_eq!((s, r["delivered"].as_u64()), (200, Some(1)), "{path}: {r}");
    }
    for (method, path, body) in [
        (
            Method::POST,
            "/api/disconnect",
            Some(json!({"user": "alice"})),
        ),
        (
            Method::POST,
            "/api/join",
            Some(json!({"user": "alice", "room": "x"})),
        ),
        (Method::GET, "/api/presence/r", None),
        (Method::GET, "/api/stats", None),
    ] {
        let (s, r) = call(method, path, "pub-key", body).await;
        assert_eq!(
            (s, r["error"]["code"].as_str()),
            (403, Some("insufficient_scope")),
            "{path}"
        );
    }
    let (s, r) = call(Method::POST, "/api/publish", "wrong-key", Some(publish)).await;
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (s, p) = call(Method::GET, "/api/presence/r", "admin-key", None).await;
    assert_eq!((s, p["connections"].as_u64()), (200, Some(1)));
    // The publish key changed nothing it may not: alice is still connected.
    for d in [1, 2, 3] {
        assert_eq!(c.recv_type("message").await["data"], d);
    }
    let (s, _) = call(
        Method::POST,
        "/api/disconnect",
        "admin-key",
        Some(json!({"user": "alice"})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(c.closed().await.code, Some(4500));
    assert_eq!(
        srv.metric(r#"roomcast_api_denied_total{reason="scope"}"#)
            .await,
        4.0
    );
    assert_eq!(
        srv.metric(r#"roomcast_api_denied_total{reason="wrong_key"}"#)
            .await,
        1.0
    );
    srv.stop().await;
}

#[tokio::test]
async fn client_send_and_broadcast_follow_the_auth_mode_unless_set() {
    // Open mode: on by default.
    let srv = start(config()).await;
    let mut alice = srv.user("alice").await;
    let mut bob = srv.user("bob").await;
    let r = alice
        .request(json!({"type": "send", "user": "bob", "event": "dm", "data": 1}))
        .await;
    assert_eq!(r["type"], "ack", "{r}");
    assert_eq!(bob.recv_type("message").await["data"], 1);
    let r = alice
        .request(json!({"type": "broadcast", "event": "all", "data": 2}))
        .await;
    assert_eq!(r["type"], "ack", "{r}");
    assert_eq!(bob.recv_type("message").await["data"], 2);
    srv.stop().await;

    // Token mode: off by default, on when set.
    for (permit, allowed) in [
        (roomcast::config::Permit::Auto, false),
        (roomcast::config::Permit::Allow, true),
    ] {
        let mut cfg = config();
        cfg.auth.mode = roomcast::config::AuthMode::Token;
        cfg.auth.jwt.secret = SECRET.to_owned();
        cfg.client.send = permit;
        let srv = start(cfg).await;
        let mut alice = with_token(&srv, json!({"sub": "alice"}), &[]).await;
        let r = alice
            .request(json!({"type": "send", "user": "bob", "event": "dm", "data": 1}))
            .await;
        if allowed {
            assert_eq!(r["type"], "ack", "{r}");
        } else {
            assert_eq!(code(&r), "forbidden");
        }
        let r = alice
            .request(json!({"type": "broadcast", "event": "all", "data": 2}))
            .await;
        assert_eq!(code(&r), "forbidden");
        srv.stop().await;
    }
}
