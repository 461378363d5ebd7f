//! The native protocol over real sockets on 127.0.0.1.

mod support;

use serde_json::json;
use support::*;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn welcome_then_ping_pong() {
    let srv = start(config()).await;
    let mut c = srv.client().await;
    let w = c.welcome().await;
    assert_eq!(w["user"], serde_json::Value::Null);
    assert_eq!(w["conn"].as_str().unwrap().len(), 16);
    c.send(json!({"type": "ping"})).await;
    assert_eq!(c.recv().await, json!({"type": "pong"}));
    c.send(json!({"type": "ping", "id": 9})).await;
    assert_eq!(c.recv().await, json!({"type": "pong", "id": 9}));
    srv.stop().await;
}

#[tokio::test]
async fn many_clients_in_many_rooms_get_exactly_their_rooms_messages() {
    let srv = start(config()).await;
    const ROOMS: usize = 8;
    const PER_ROOM: usize = 6;
    let mut clients = Vec::new();
    for r in 0..ROOMS {
        for i in 0..PER_ROOM {
            let mut c = srv.user(&format!("u{r}-{i}")).await;
            c.join(&format!("room-{r}")).await;
            clients.push((r, c));
        }
    }
    // Joins made presence events; read them away by waiting for our own publish acks below.
    for (r, c) in clients.iter_mut() {
        let ack = c
            .request(json!({"type": "publish", "room": format!("room-{r}"), "event": "chat", "data": {"from_room": *r}}))
            .await;
        assert_eq!(ack["delivered"], PER_ROOM, "{ack}");
    }
    for (r, c) in clients.iter_mut() {
        for _ in 0..PER_ROOM {
            let m = c.recv_type("message").await;
            assert_eq!(m["room"], format!("room-{r}"));
            assert_eq!(m["data"]["from_room"], *r);
            assert_eq!(m["event"], "chat");
        }
        // Nothing more: a ping round trip proves no stray message is queued.
        c.send(json!({"type": "ping", "id": 1000})).await;
        loop {
            let f = c.recv().await;
            assert_ne!(f["type"], "message", "stray message {f}");
            if f["type"] == "pong" {
                break;
            }
        }
    }
    srv.stop().await;
}

#[tokio::test]
async fn a_user_with_two_connections() {
    let mut cfg = config();
    cfg.client.send = roomcast::config::Permit::Allow;
    let srv = start(cfg).await;
    let mut tab1 = srv.user("alice").await;
    let mut tab2 = srv.user("alice").await;
    let mut bob = srv.user("bob").await;
    tab1.join("lobby").await;
    tab2.join("lobby").await;
    bob.join("lobby").await;
    let p = bob
        .request(json!({"type": "presence", "room": "lobby"}))
        .await;
    assert_eq!(p["connections"], 3);
    assert_eq!(
        p["users"],
        json!([{"user": "alice", "connections": 2}, {"user": "bob", "connections": 1}])
    );
    let ack = bob
        .request(json!({"type": "send", "user": "alice", "event": "dm", "data": "hi"}))
        .await;
    assert_eq!(ack["delivered"], 2);
    for tab in [&mut tab1, &mut tab2] {
        let m = tab.recv_type("message").await;
        assert_eq!(m["user"], "alice");
        assert_eq!(m["event"], "dm");
        assert_eq!(m["data"], "hi");
        assert_eq!(m["from"]["user"], "bob");
        assert!(m.get("room").is_none());
    }
    let (_, u) = srv.get("/api/users/alice").await;
    assert_eq!(u["online"], true);
    assert_eq!(u["connections"].as_array().unwrap().len(), 2);
    srv.stop().await;
}

#[tokio::test]
async fn presence_events_follow_first_join_and_last_leave() {
    let srv = start(config()).await;
    let mut watcher = srv.user("watcher").await;
    watcher.join("lobby").await;
    // Members, the joiner included, see a user's first join.
    assert_eq!(watcher.recv_type("presence").await["user"], "watcher");
    let mut a1 = srv.user("alice").await;
    a1.join("lobby").await;
    let e = watcher.recv_type("presence").await;
    assert_eq!(
        (e["event"].as_str(), e["user"].as_str(), e["room"].as_str()),
        (Some("join"), Some("alice"), Some("lobby"))
    );
    let mut a2 = srv.user("alice").await;
    a2.join("lobby").await; // second connection: no event
    let left = a1.request(json!({"type": "leave", "room": "lobby"})).await;
    assert_eq!(left["left"], true);
    // alice still has a2 in the room: no leave yet. A publish fences the stream.
    watcher
        .request(json!({"type": "publish", "room": "lobby", "event": "fence"}))
        .await;
    let next = watcher.recv().await;
    assert_eq!(
        next["type"], "message",
        "no presence event expected before the fence: {next}"
    );
    // Disconnecting the last connection emits the leave.
    a2.close().await;
    let e = watcher.recv_type("presence").await;
    assert_eq!(
        (e["event"].as_str(), e["user"].as_str()),
        (Some("leave"), Some("alice"))
    );
    let p = watcher
        .request(json!({"type": "presence", "room": "lobby"}))
        .await;
    assert_eq!(p["users"], json!([{"user": "watcher", "connections": 1}]));
    srv.stop().await;
}

#[tokio::test]
async fn exclude_self_and_broadcast() {
    let mut cfg = config();
    cfg.client.broadcast = roomcast::config::Permit::Allow;
    let srv = start(cfg).await;
    let mut a = srv.client().await;
    a.welcome().await;
    let mut b = srv.client().await;
    b.welcome().await;
    a.join("r").await;
    b.join("r").await;
    let ack = a
        .request(
            json!({"type": "publish", "room": "r", "event": "e", "data": 1, "exclude_self": true}),
        )
        .await;
    assert_eq!(ack["delivered"], 1);
    let m = b.recv_type("message").await;
    assert_eq!(m["from"]["conn"], a.conn.as_str());
    assert_eq!(m["from"]["user"], serde_json::Value::Null);
    let ack = a
        .request(json!({"type": "broadcast", "event": "all", "data": [1]}))
        .await;
    assert_eq!(ack["delivered"], 2);
    // a's first message is the broadcast: the excluded publish never reached it.
    assert_eq!(a.recv_type("message").await["event"], "all");
    assert_eq!(b.recv_type("message").await["event"], "all");
    srv.stop().await;
}

#[tokio::test]
async fn session_data_merges_and_shows_in_the_api() {
    let mut cfg = config();
    cfg.limits.max_session_bytes = 100;
    let srv = start(cfg).await;
    let mut c = srv.user("alice").await;
    let ack = c
        .request(json!({"type": "session", "data": {"tab": "inbox", "n": 1}}))
        .await;
    assert_eq!(ack["session"], json!({"tab": "inbox", "n": 1}));
    let ack = c
        .request(json!({"type": "session", "data": {"n": null, "x": true}}))
        .await;
    assert_eq!(ack["session"], json!({"tab": "inbox", "x": true}));
    let err = c
        .request(json!({"type": "session", "data": {"big": "y".repeat(200)}}))
        .await;
    assert_eq!(err["code"], "session_too_large");
    let (status, info) = srv.get(&format!("/api/connections/{}", c.conn)).await;
    assert_eq!(status, 200);
    assert_eq!(info["online"], true);
    assert_eq!(info["user"], "alice");
    assert_eq!(info["session"], json!({"tab": "inbox", "x": true}));
    srv.stop().await;
}

#[tokio::test]
async fn bad_input_gets_error_frames_and_harms_no_one() {
    let srv = start(config()).await;
    let mut bad = srv.client().await;
    bad.welcome().await;
    let mut good = srv.client().await;
    good.welcome().await;
    good.join("r").await;
    bad.join("r").await;

    bad.send_raw(Message::text("{not json")).await;
    let e = bad.recv_type("error").await;
    assert_eq!(e["code"], "bad_request");
    assert_eq!(e["id"], serde_json::Value::Null);
    let e = bad.request(json!({"type": "teleport"})).await;
    assert_eq!(e["code"], "unknown_type");
    let e = bad.request(json!({"type": "publish", "room": "r"})).await;
    assert_eq!(
        (e["code"].as_str(), e["message"].as_str()),
        (Some("bad_request"), Some("missing field `event`"))
    );
    let e = bad
        .request(json!({"type": "join", "room": "no spaces"}))
        .await;
    assert_eq!(e["code"], "invalid_room");
    let e = bad
        .request(json!({"type": "publish", "room": "r", "event": ""}))
        .await;
    assert_eq!(e["code"], "invalid_event");
    let e = bad.request(json!({"type": "auth", "user": ""})).await;
    assert_eq!(e["code"], "invalid_user");
    bad.send_raw(Message::binary(vec![0u8, 1, 2])).await;
    assert_eq!(bad.recv_type("error").await["code"], "binary_not_supported");
    // Data nested deeper than client libraries can read is not relayed.
    let deep = format!(
        r#"{{"type":"publish","room":"r","event":"deep","data":{}1{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    bad.send_raw(Message::text(deep)).await;
    let e = bad.recv_type("error").await;
    assert!(
        e["message"].as_str().unwrap().contains("nested deeper"),
        "{e}"
    );
    bad.send_raw(Message::text(r#"{"type":"ping","id":77} trailing"#))
        .await;
    assert_eq!(bad.recv_type("error").await["id"], 77);

    // Both connections still work.
    let ack = bad
        .request(json!({"type": "publish", "room": "r", "event": "ok"}))
        .await;
    assert_eq!(ack["delivered"], 2);
    assert_eq!(good.recv_type("message").await["event"], "ok");
    let (_, m) = srv.get_text("/metrics").await;
    assert!(m.contains("roomcast_client_errors_total 9"), "{m}");
    srv.stop().await;
}

/// A client waiting on its id hears back whatever was wrong with the frame.
#[tokio::test]
async fn every_error_names_the_id_of_the_frame_it_answers() {
    let srv = start(config()).await;
    let mut c = srv.client().await;
    c.welcome().await;
    let deep = format!(
        r#"{{"type":"publish","room":"r","event":"e","data":{}1{},"id":16}}"#,
        "[".repeat(300),
        "]".repeat(300)
    );
    let frames = [
        (r#"{"type":"join","room":5,"id":14}"#.to_owned(), 14),
        (
            r#"{"type":"join","room":"h","since":{"offset":3},"id":15}"#.to_owned(),
            15,
        ),
        (deep, 16),
        (
            r#"{"id":17,"type":"publish","room":"r","event":"e","exclude_self":"yes"}"#.to_owned(),
            17,
        ),
    ];
    for (frame, id) in frames {
        c.send_raw(Message::text(frame.clone())).await;
        let e = c.recv_type("error").await;
        assert_eq!(
            (e["id"].as_u64(), e["code"].as_str()),
            (Some(id), Some("bad_request")),
            "{frame}: {e}"
        );
    }
    srv.stop().await;
}

#[tokio::test]
async fn an_oversize_message_closes_with_1009_and_others_continue() {
    let mut cfg = config();
    cfg.limits.max_message_bytes = 1024;
    let srv = start(cfg).await;
    let mut big = srv.client().await;
    big.welcome().await;
    let mut other = srv.client().await;
    other.welcome().await;
    big.send_raw(Message::text(format!(
        "{{\"type\":\"ping\",\"pad\":\"{}\"}}",
        "x".repeat(2000)
    )))
    .await;
    let closed = big.closed().await;
    assert_eq!(closed.code, Some(1009), "{closed:?}");
    assert_eq!(closed.disconnect.unwrap()["code"], 1009);
    other.send(json!({"type": "ping", "id": 1})).await;
    assert_eq!(other.recv().await["type"], "pong");
    srv.stop().await;
}

#[tokio::test]
async fn room_limits() {
    let mut cfg = config();
    cfg.limits.max_rooms_per_connection = 2;
    cfg.rooms = vec![roomcast_core::room::RoomRule {
        max_members: 1,
        ..roomcast_core::room::RoomRule::default_for("solo:*")
    }];
    let srv = start(cfg).await;
    let mut c = srv.client().await;
    c.welcome().await;
    c.join("a").await;
    let again = c.request(json!({"type": "join", "room": "a"})).await;
    assert_eq!(again["joined"], false);
    c.join("solo:1").await;
    let e = c.request(json!({"type": "join", "room": "c"})).await;
    assert_eq!(e["code"], "too_many_rooms");
    let mut d = srv.client().await;
    d.welcome().await;
    let e = d.request(json!({"type": "join", "room": "solo:1"})).await;
    assert_eq!(e["code"], "room_full");
    let p = d
        .request(json!({"type": "presence", "room": "solo:1"}))
        .await;
    assert_eq!(p["connections"], 1, "a refused join leaves no trace: {p}");
    srv.stop().await;
}

#[tokio::test]
async fn a_slow_consumer_is_disconnected_while_fast_clients_get_everything() {
    let mut cfg = config();
    cfg.limits.max_queue_bytes = 256 << 10;
    // The publisher is not a member of the room.
    cfg.rooms = vec![roomcast_core::room::RoomRule {
        publish: roomcast_core::room::PublishRule::Anyone,
        ..roomcast_core::room::RoomRule::default_for("firehose")
    }];
    let srv = start(cfg).await;
    let mut fast = srv.user("fast").await;
    fast.join("firehose").await;
    assert_eq!(fast.recv_type("presence").await["user"], "fast");
    // The slow client joins and then never reads again.
    let mut slow = RawClient::connect_small_buffer(srv.addr, "/ws").await;
    slow.send_frame(1, br#"{"type":"auth","user":"slow"}"#)
        .await;
    slow.send_frame(1, br#"{"type":"join","room":"firehose"}"#)
        .await;
    let joined = fast.recv_type("presence").await;
    assert_eq!(
        (joined["event"].as_str(), joined["user"].as_str()),
        (Some("join"), Some("slow"))
    );

    // Far more than the slow client's socket buffers and queue can hold, paced
    // so that the fast client (a test reader) never has much queued.
    const N: usize = 1000;
    const STEP_N: usize = 10;
    let payload = "z".repeat(16 << 10);
    let mut publisher = srv.client().await;
    publisher.welcome().await;
    let mut left = None;
    let mut got = 0;
    for batch in 0..N / STEP_N {
        for i in 0..STEP_N {
            let n = batch * STEP_N + i;
            publisher
                .send(json!({"type": "publish", "room": "firehose", "event": "bulk", "data": {"i": n, "pad": payload}}))
                .await;
        }
        while got < (batch + 1) * STEP_N {
            let f = fast.recv().await;
            match f["type"].as_str() {
                Some("message") => {
                    assert_eq!(
                        f["data"]["i"], got,
                        "fast client gets every message in order"
                    );
                    got += 1;
                }
                Some("presence") if f["event"] == "leave" => left = Some(f["user"].clone()),
                _ => {}
            }
        }
    }
    if left.is_none() {
        left = Some(fast.recv_type("presence").await["user"].clone());
    }
    assert_eq!(left.unwrap(), "slow");
    assert_eq!(srv.server.metrics().disconnects(4001), 1);
    let (_, m) = srv.get_text("/metrics").await;
    assert!(
        m.contains("roomcast_slow_consumer_disconnects_total 1"),
        "{m}"
    );
    // What the slow client finally reads ends with the 4001 close, or the
    // server gave up on the stuck socket and dropped it.
    let (_, _, code) = slow.read_until_close().await;
    assert!(code == Some(4001) || code.is_none(), "{code:?}");
    srv.stop().await;
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_interval_plus_timeout() {
    let mut cfg = config();
    cfg.heartbeat.interval_ms = 100;
    cfg.heartbeat.timeout_ms = 100;
    let srv = start(cfg).await;
    // Never answers pings.
    let mut raw = RawClient::connect(srv.addr, "/ws").await;
    let started = std::time::Instant::now();
    let (ops, texts, code) = raw.read_until_close().await;
    assert_eq!(code, Some(4002), "ops {ops:?} texts {texts:?}");
    assert!(ops.contains(&0x9), "the server pinged first");
    assert!(texts.last().unwrap().contains("\"code\":4002"));
    assert!(started.elapsed() >= std::time::Duration::from_millis(200));
    srv.stop().await;
}

#[tokio::test]
async fn a_client_that_answers_pings_stays() {
    let mut cfg = config();
    cfg.heartbeat.interval_ms = 100;
    cfg.heartbeat.timeout_ms = 300;
    let srv = start(cfg).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", srv.addr))
        .await
        .unwrap();
    use futures_util::{SinkExt, StreamExt};
    let mut pings = 0;
    // Reading answers each ping; ten pings (1 s) span two and a half silence limits.
    while pings < 10 {
        match tokio::time::timeout(STEP, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Ping(_) => pings += 1,
            Message::Text(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    ws.send(Message::text(r#"{"type":"ping","id":1}"#))
        .await
        .unwrap();
    loop {
        if let Message::Text(t) = ws.next().await.unwrap().unwrap() {
            assert!(t.as_str().contains("pong"));
            break;
        }
    }
    srv.stop().await;
}

#[tokio::test]
async fn unauthenticated_connections_are_refused_then_closed_after_the_auth_timeout() {
    let mut cfg = config();
    cfg.auth.anonymous = roomcast::config::Anonymous::Deny;
    cfg.auth.timeout_ms = 1_000;
    let srv = start(cfg).await;
    let mut ok = srv.client().await;
    ok.welcome().await;
    let mut lazy = srv.client().await;
    lazy.welcome().await;
    let e = lazy.request(json!({"type": "join", "room": "r"})).await;
    assert_eq!(e["code"], "unauthenticated");
    let ack = ok.request(json!({"type": "auth", "user": "alice"})).await;
    assert_eq!(ack["user"], "alice");
    let again = ok.request(json!({"type": "auth", "user": "mallory"})).await;
    assert_eq!(again["code"], "already_authenticated");
    let closed = lazy.closed().await;
    assert_eq!(closed.code, Some(4501));
    assert_eq!(closed.disconnect.unwrap()["reconnect"], false);
    // The authenticated one is still there after the deadline passed.
    ok.join("r").await;
    srv.stop().await;
}

#[tokio::test]
async fn a_token_in_open_mode_is_refused_with_4502() {
    let srv = start(config()).await;
    let c = Client::connect(srv.addr, "/ws?token=abc").await;
    let closed = c.closed().await;
    assert_eq!(closed.code, Some(4502));
    assert!(closed.disconnect.unwrap()["reason"]
        .as_str()
        .unwrap()
        .contains("open mode"));
    srv.stop().await;
}

#[tokio::test]
async fn max_connections_refuses_the_upgrade_with_503() {
    let mut cfg = config();
    cfg.limits.max_connections = 2;
    let srv = start(cfg).await;
    let mut a = srv.client().await;
    a.welcome().await;
    let mut b = srv.client().await;
    b.welcome().await;
    let err = tokio_tungstenite::connect_async(format!("ws://{}/ws", srv.addr))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status(), 503);
            let body: serde_json::Value =
                serde_json::from_slice(resp.body().as_ref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "server_full");
        }
        other => panic!("expected a 503, got {other:?}"),
    }
    a.close().await;
    // Once a slot frees up, a new client gets in (await the server's cleanup via stats).
    for _ in 0..100 {
        let (_, s) = srv.get("/api/stats").await;
        if s["node"]["connections"] == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let mut c = srv.client().await;
    c.welcome().await;
    srv.stop().await;
}

/// `limits.max_connections` is one count for native connections and
/// Engine.IO sessions (from their handshake, whatever namespaces they join).
#[tokio::test]
async fn max_connections_counts_every_transport_once() {
    let mut cfg = config();
    cfg.limits.max_connections = 1;
    let srv = start(cfg).await;
    let handshake = || async {
        let r = reqwest::get(srv.url("/socket.io/?EIO=4&transport=polling"))
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    };
    // A native connection fills the node: no Engine.IO session.
    let mut native = srv.client().await;
    native.welcome().await;
    let (status, body) = handshake().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("server_full"), "{body}");
    native.close().await;
    // Once it is gone, an Engine.IO session gets the place, and no native
    // connection gets in beside it.
    // (The server frees the place as it cleans up; nothing to await but that.)
    let polling = tokio::time::timeout(STEP, async {
        loop {
            match handshake().await {
                (200, open) => break open,
                (503, _) => tokio::task::yield_now().await,
                other => panic!("{other:?}"),
            }
        }
    })
    .await
    .expect("the place was freed");
    assert!(polling.starts_with('0'), "{polling}");
    match Client::try_connect(srv.addr, "/ws", &[]).await {
        Err((status, body)) => {
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (503, Some("server_full"))
            )
        }
        Ok(_) => panic!("a native connection was admitted beside the Engine.IO session"),
    }
    srv.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_tells_every_client_4000() {
    let srv = start(config()).await;
    let mut a = srv.client().await;
    a.welcome().await;
    let mut b = srv.user("b").await;
    b.join("r").await;
    let stopping = tokio::spawn(srv.stop());
    for c in [a, b] {
        let closed = c.closed().await;
        assert_eq!(closed.code, Some(4000));
        let d = closed.disconnect.unwrap();
        assert_eq!(
            (d["code"].as_i64(), d["reconnect"].as_bool()),
            (Some(4000), Some(true))
        );
    }
    stopping.await.unwrap();
}
