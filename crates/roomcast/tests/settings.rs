//! Settings of docs/configuration.md that no other test exercised, each
//! checked against its documented behaviour over real sockets: Socket.IO CORS,
//! path, heartbeat, connect timeout and payload cap; JWT leeway, issuer and
//! audience; history expiry; Socket.IO recovery over long-polling; backend
//! retries and the webhook queue; and the byte and connection counters.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::backend::{Answer, Backend};
use support::*;

#[path = "../../roomcast-socketio/tests/support/mod.rs"]
mod sio;

use roomcast::config::AuthMode;
use roomcast::roomcast_core::room::RoomRule;

/// Polls `check` every 50 ms until it gives `Some`, failing with `what` after `LONGEST`.
async fn until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + LONGEST;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {LONGEST:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An Engine.IO long-polling handshake at `path`: the status, headers and body.
async fn handshake(
    srv: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = reqwest::Client::new().get(srv.url(&format!("{path}?EIO=4&transport=polling")));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = tokio::time::timeout(STEP, req.send())
        .await
        .expect("the handshake answered in time")
        .unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, headers, r.text().await.unwrap())
}

/// The JSON of an Engine.IO OPEN packet (`0{...}`).
fn open_packet(body: &str) -> Value {
    serde_json::from_str(
        body.strip_prefix('0')
            .unwrap_or_else(|| panic!("not OPEN: {body}")),
    )
    .unwrap()
}

// ---------------------------------------------------------------- Socket.IO

/// `socketio.cors_origins`: a preflight from a listed origin is answered with
/// the CORS headers (origin echoed, credentials, methods, the asked headers);
/// a polling request from an origin outside the list gets 403, one without
/// `Origin` (not a browser) passes.
#[tokio::test]
async fn cors_origins_answer_preflights_and_refuse_other_origins() {
    let mut cfg = config();
    cfg.socketio.cors_origins = vec!["https://app.example.com".to_owned()];
    let srv = start(cfg).await;
    let r = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            srv.url("/socket.io/?EIO=4&transport=polling"),
        )
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "preflight: {}", r.status());
    let h = |n: &str| {
        r.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(h("access-control-allow-origin"), "https://app.example.com");
    assert_eq!(h("access-control-allow-credentials"), "true");
    assert!(
        h("access-control-allow-methods").contains("POST"),
        "{:?}",
        r.headers()
    );
    assert_eq!(h("access-control-allow-headers"), "content-type");

    // The handshake itself from the listed origin carries the headers too.
    let (status, headers, body) = handshake(
        &srv,
        "/socket.io/",
        &[("origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    // Another origin: 403, and no CORS headers to let a browser read it.
    let (status, headers, body) = handshake(
        &srv,
        "/socket.io/",
        &[("origin", "https://evil.example.com")],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(!headers.contains_key("access-control-allow-origin"));
    // A polling POST of an open session from another origin: 403 as well.
    let polling = Polling::open(&srv, &[]).await;
    let r = reqwest::Client::new()
        .post(&polling.url)
        .header("origin", "https://evil.example.com")
        .body("40")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    srv.stop().await;
}

/// `socketio.enabled = false`: the Socket.IO path is not served (404), native
/// clients still are.
#[tokio::test]
async fn socketio_disabled_serves_no_engineio() {
    let mut cfg = config();
    cfg.socketio.enabled = false;
    let srv = start(cfg).await;
    let (status, _, body) = handshake(&srv, "/socket.io/", &[]).await;
    assert_eq!(status, 404, "{body}");
    let mut c = srv.client().await;
    c.welcome().await;
    srv.stop().await;
}

/// `socketio.path`: Engine.IO is served at the custom path, over both
/// transports, and no longer at `/socket.io/`.
#[tokio::test]
async fn socketio_path_moves_engineio() {
    let mut cfg = config();
    cfg.socketio.path = "/rt/".to_owned();
    let srv = start(cfg).await;
    let (status, _, body) = handshake(&srv, "/rt/", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(open_packet(&body)["sid"].is_string(), "{body}");
    let (status, _, body) = handshake(&srv, "/socket.io/", &[]).await;
    assert_eq!(status, 404, "{body}");
    let (mut ws, _) = sio::Sio::open(srv.addr, "/rt/").await;
    ws.send(r#"40{"user":"pat"}"#).await;
    let answer = ws.recv_sio().await;
    assert!(answer.starts_with("0{\"sid\""), "{answer}");
    srv.stop().await;
}

/// `socketio.ping_interval_ms`, `ping_timeout_ms` and `max_payload_bytes` are
/// what the handshake advertises; a POST over `max_payload_bytes` gets 413 and
/// one at it is taken.
#[tokio::test]
async fn the_handshake_advertises_the_heartbeat_and_payload_settings() {
    let mut cfg = config();
    cfg.socketio.ping_interval_ms = 1234;
    cfg.socketio.ping_timeout_ms = 567;
    cfg.socketio.max_payload_bytes = 1000;
    let srv = start(cfg).await;
    let (status, _, body) = handshake(&srv, "/socket.io/", &[]).await;
    assert_eq!(status, 200);
    let open = open_packet(&body);
    assert_eq!(
        (
            &open["pingInterval"],
            &open["pingTimeout"],
            &open["maxPayload"]
        ),
        (&json!(1234), &json!(567), &json!(1000)),
        "{open}"
    );
    let polling = Polling::open(&srv, &[]).await;
    // 1001 bytes: one Socket.IO EVENT padded past the cap.
    let big = format!(r#"42["x","{}"]"#, "a".repeat(1001 - 10));
    assert_eq!(big.len(), 1001);
    assert_eq!(polling.post(&big).await.0, 413);
    // At the cap it is accepted (a CONNECT padded with spaces JSON ignores),
    // in a new session: the one that sent too much was closed.
    let polling = Polling::open(&srv, &[]).await;
    let fits = format!(r#"40{{"user":"pat"}}{}"#, " ".repeat(1000 - 16));
    assert_eq!(fits.len(), 1000);
    assert_eq!(polling.post(&fits).await, (200, "ok".to_owned()));
    srv.stop().await;
}

/// A WebSocket message over `socketio.max_payload_bytes` closes the session.
#[tokio::test]
async fn a_websocket_message_over_max_payload_closes_the_session() {
    let mut cfg = config();
    cfg.socketio.max_payload_bytes = 1000;
    let srv = start(cfg).await;
    let (mut c, answer) = sio::Sio::connect(srv.addr, "/", json!({})).await;
    assert!(answer.starts_with("0{"), "{answer}");
    c.send(&format!(r#"42["x","{}"]"#, "a".repeat(2000))).await;
    c.closed().await;
    srv.stop().await;
}

/// `socketio.ping_interval_ms` / `ping_timeout_ms`: a client that answers
/// pings stays (several pings come), one that stops answering is closed
/// after them; over long-polling, its session is then unknown.
#[tokio::test]
async fn a_silent_socketio_client_is_closed_after_the_ping_timeout() {
    let mut cfg = config();
    cfg.socketio.ping_interval_ms = 200;
    cfg.socketio.ping_timeout_ms = 1000;
    let srv = start(cfg).await;
    let (mut c, answer) = sio::Sio::connect(srv.addr, "/", json!({})).await;
    assert!(answer.starts_with("0{"), "{answer}");
    c.auto_pong = false;
    for _ in 0..3 {
        assert_eq!(c.recv().await, "2", "a ping");
        c.send("3").await;
    }
    // Now silent: the next ping goes unanswered.
    assert_eq!(c.recv().await, "2");
    let closed = bounded("the silent client is closed", c.closed()).await;
    let _ = closed;

    // Long-polling: a session that neither polls nor answers is gone.
    let polling = Polling::open(&srv, &[]).await;
    assert_eq!(polling.post("40").await.0, 200);
    // Its polls get pings it never answers: the session ends.
    polling.until_closed().await;
    srv.stop().await;
}

/// `socketio.connect_timeout_ms`: an Engine.IO session that connects to no
/// namespace is closed, over WebSocket and over long-polling.
#[tokio::test]
async fn a_session_that_joins_no_namespace_is_closed_after_connect_timeout() {
    let mut cfg = config();
    cfg.socketio.connect_timeout_ms = 1000;
    let srv = start(cfg).await;
    let (mut c, _) = sio::Sio::open(srv.addr, "/socket.io/").await;
    bounded("the idle WebSocket session is closed", c.closed()).await;
    let polling = Polling::open(&srv, &[]).await;
    polling.until_closed().await;
    // A session that connects in time is kept past the timeout: it still
    // answers after twice that long (a wait for an absence, not a sync).
    let (mut c, answer) = sio::Sio::connect(srv.addr, "/", json!({})).await;
    assert!(answer.starts_with("0{"), "{answer}");
    let deadline = tokio::time::Instant::now() + Duration::from_millis(2000);
    tokio::time::sleep_until(deadline).await;
    c.send(r#"421["roomcast:nothing"]"#).await;
    let ack = c.recv_sio().await;
    assert!(ack.starts_with("31"), "an ack, the session is open: {ack}");
    srv.stop().await;
}

/// A server with Socket.IO recovery and history, and a long-polling socket of
/// user `pat` in room `r` that got event 1 and then lost the network (it
/// answered no ping; the session timed out, a recoverable reason), after
/// which events 2 and 3 were published. Returns the server, the socket's sid
/// and pid, and the offset of the last event it got.
async fn polling_socket_that_dropped() -> (TestServer, String, String, String) {
    let mut cfg = config();
    cfg.socketio.recovery_ms = 60_000;
    cfg.socketio.ping_interval_ms = 300;
    cfg.socketio.ping_timeout_ms = 1000;
    cfg.history.size = 100;
    let srv = start(cfg).await;
    let first = Polling::open(&srv, &[]).await;
    assert_eq!(first.post(r#"40{"user":"pat"}"#).await.0, 200);
    let (_, reply) = first.poll().await;
    let reply: Value = serde_json::from_str(reply.strip_prefix("40").unwrap()).unwrap();
    let (sid, pid) = (
        reply["sid"].as_str().unwrap().to_owned(),
        reply["pid"]
            .as_str()
            .expect("a pid with recovery on")
            .to_owned(),
    );
    let (status, _) = srv
        .post("/api/join", json!({"conn": sid, "room": "r"}))
        .await;
    assert_eq!(status, 200);
    publish_n(&srv, 1).await;
    let (_, event) = first.poll().await;
    let args: Vec<Value> = serde_json::from_str(event.strip_prefix("42").unwrap()).unwrap();
    assert_eq!((&args[0], &args[1]), (&json!("n"), &json!(1)), "{event}");
    let offset = args.last().unwrap().as_str().expect("an offset").to_owned();
    // Its polls get pings it never answers: the session times out.
    first.until_closed().await;
    publish_n(&srv, 2).await;
    publish_n(&srv, 3).await;
    (srv, sid, pid, offset)
}

async fn publish_n(srv: &TestServer, n: u64) {
    let (status, v) = srv
        .post(
            "/api/publish",
            json!({"room": "r", "event": "n", "data": n}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
}

/// Polls `session` (answering its pings) until it has `n` packets or ends;
/// returns the packets and whether it ended.
async fn packets(session: &Polling, n: usize) -> (Vec<String>, bool) {
    let mut packets: Vec<String> = Vec::new();
    bounded("packets on a polling session", async {
        while packets.len() < n {
            let (status, body) = session.poll().await;
            if status != 200 {
                return (packets, true);
            }
            for p in body.split('\x1e') {
                match p {
                    "2" => assert_eq!(session.post("3").await.0, 200, "a pong"),
                    "1" => return (packets, true),
                    p => packets.push(p.to_owned()),
                }
            }
        }
        (packets, false)
    })
    .await
}

/// `socketio.recovery_ms` over long-polling: a client whose session timed
/// out reconnects in a new Engine.IO session with its `pid` and last
/// `offset`, keeps its socket id and gets what it missed, in order.
#[tokio::test]
async fn recovery_works_over_long_polling() {
    let (srv, sid, pid, offset) = polling_socket_that_dropped().await;
    let second = Polling::open(&srv, &[]).await;
    let connect = json!({"pid": pid, "offset": offset, "user": "pat"});
    assert_eq!(second.post(&format!("40{connect}")).await.0, 200);
    let (packets, ended) = packets(&second, 3).await;
    assert!(!ended, "{packets:?}");
    let again: Value = serde_json::from_str(packets[0].strip_prefix("40").unwrap()).unwrap();
    assert_eq!(again["sid"], sid.as_str(), "recovered: the same socket id");
    assert_eq!(again["pid"], pid.as_str());
    for (p, n) in packets[1..].iter().zip(2..) {
        let args: Vec<Value> = serde_json::from_str(p.strip_prefix("42").unwrap()).unwrap();
        assert_eq!((&args[0], &args[1]), (&json!("n"), &json!(n)), "{p}");
    }
    srv.stop().await;
}

/// A reconnect with another user's pid recovers nothing: the session is
/// closed before any CONNECT reply or missed event (the pid is used up, so
/// the owner's own later attempt gets a fresh socket).
#[tokio::test]
async fn a_pid_presented_by_another_user_recovers_nothing() {
    let (srv, sid, pid, offset) = polling_socket_that_dropped().await;
    let thief = Polling::open(&srv, &[]).await;
    let connect = json!({"pid": pid, "offset": offset, "user": "mallory"});
    assert_eq!(thief.post(&format!("40{connect}")).await.0, 200);
    let (got, ended) = packets(&thief, 1).await;
    assert!(ended && got.is_empty(), "the impostor got {got:?}");
    // The owner comes back afterwards: a new socket, nothing replayed.
    let owner = Polling::open(&srv, &[]).await;
    let connect = json!({"pid": pid, "offset": offset, "user": "pat"});
    assert_eq!(owner.post(&format!("40{connect}")).await.0, 200);
    let (got, _) = packets(&owner, 1).await;
    let reply: Value = serde_json::from_str(got[0].strip_prefix("40").unwrap()).unwrap();
    assert_ne!(reply["sid"], sid.as_str(), "{reply}");
    assert_ne!(reply["pid"], pid.as_str(), "{reply}");
    srv.stop().await;
}

// ---------------------------------------------------------------- JWT

const SECRET: &str = "settings-test-secret-not-used-elsewhere";

fn jwt_config() -> roomcast::Config {
    let mut c = config();
    c.auth.mode = AuthMode::Token;
    c.auth.jwt.secret = SECRET.to_owned();
    c
}

/// The close code and reason a native client gets for `token` at the upgrade,
/// or `None` when it was welcomed.
async fn upgrade_with(srv: &TestServer, token: &str) -> Option<(Option<u16>, String)> {
    let mut c = Client::connect(srv.addr, &format!("/ws?token={token}")).await;
    let first = c.recv().await;
    if first["type"] == "welcome" {
        return None;
    }
    assert_eq!(first["type"], "disconnect", "{first}");
    let reason = first["reason"].as_str().unwrap_or_default().to_owned();
    Some((c.closed().await.code, reason))
}

/// `auth.jwt.leeway_s`: a token expired by less than the leeway is accepted
/// at the upgrade; one expired by more is refused with 4504. (What happens
/// next is a bug, reported in docs/reliability.md: the accepted connection is
/// closed with 4504 within a second, because its expiry timer runs to `exp`,
/// not `exp + leeway`.)
#[tokio::test]
async fn jwt_leeway_accepts_a_token_just_expired_and_refuses_one_beyond() {
    let mut cfg = jwt_config();
    cfg.auth.jwt.leeway_s = 30;
    let srv = start(cfg).await;
    let exp = now() - 10;
    let within = hs256(SECRET, &json!({"sub": "a", "exp": exp}));
    assert_eq!(upgrade_with(&srv, &within).await, None);
    // And the connection it opens lives until exp + leeway (it used to be
    // closed with 4504 right after the welcome, its timer set to `exp`).
    let mut c = Client::connect(srv.addr, &format!("/ws?token={within}")).await;
    assert_eq!(c.welcome().await["expires_at"], exp + 30);
    c.send(json!({"type": "ping", "id": 1})).await;
    assert_eq!(c.recv_type("pong").await["id"], 1);
    let beyond = hs256(SECRET, &json!({"sub": "a", "exp": now() - 60}));
    let (code, reason) = upgrade_with(&srv, &beyond).await.expect("refused");
    assert_eq!(code, Some(4504), "{reason}");
    // Without leeway the first is refused too: the setting is what let it in.
    let srv0 = start(jwt_config()).await;
    let (code, reason) = upgrade_with(&srv0, &within).await.expect("refused");
    assert_eq!(code, Some(4504), "{reason}");
    srv.stop().await;
    srv0.stop().await;
}

/// `auth.jwt.issuer` and `auth.jwt.audience`: when set, a token must carry
/// them; a wrong or missing `iss`/`aud` closes with 4502.
#[tokio::test]
async fn jwt_issuer_and_audience_are_required_when_set() {
    let mut cfg = jwt_config();
    cfg.auth.jwt.issuer = "https://id.example.com".to_owned();
    cfg.auth.jwt.audience = "roomcast".to_owned();
    let srv = start(cfg).await;
    let exp = now() + 600;
    let (iss, aud) = ("https://id.example.com", "roomcast");
    let good = hs256(
        SECRET,
        &json!({"sub": "a", "exp": exp, "iss": iss, "aud": aud}),
    );
    assert_eq!(upgrade_with(&srv, &good).await, None);
    // `aud` may also be a list naming it.
    let list = hs256(
        SECRET,
        &json!({"sub": "a", "exp": exp, "iss": iss, "aud": ["other", aud]}),
    );
    assert_eq!(upgrade_with(&srv, &list).await, None);
    let cases = [
        (
            "wrong iss",
            json!({"sub": "a", "exp": exp, "iss": "https://evil", "aud": aud}),
        ),
        ("no iss", json!({"sub": "a", "exp": exp, "aud": aud})),
        (
            "wrong aud",
            json!({"sub": "a", "exp": exp, "iss": iss, "aud": "other"}),
        ),
        ("no aud", json!({"sub": "a", "exp": exp, "iss": iss})),
    ];
    for (what, claims) in cases {
        let (code, reason) = upgrade_with(&srv, &hs256(SECRET, &claims))
            .await
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert_eq!(code, Some(4502), "{what}: {reason}");
    }
    srv.stop().await;
}

// ---------------------------------------------------------------- history

/// Joins `room` resuming from `since`; returns the ack.
async fn resume(srv: &TestServer, room: &str, since: Value) -> Value {
    let mut c = srv.client().await;
    c.welcome().await;
    let ack = c
        .request(json!({"type": "join", "room": room, "since": since}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    ack
}

/// Publishes one message to `room` through the API; returns the answer.
async fn publish_to(srv: &TestServer, room: &str) -> Value {
    let (status, v) = srv
        .post(
            "/api/publish",
            json!({"room": room, "event": "e", "data": 1}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    v
}

/// The publications `GET /api/history/{room}` still holds.
async fn kept(srv: &TestServer, room: &str) -> usize {
    let (status, page) = srv.get(&format!("/api/history/{room}")).await;
    assert_eq!(status, 200, "{page}");
    page["publications"].as_array().map_or(0, Vec::len)
}

/// `history.ttl`: a publication leaves the history after it; a client
/// resuming from before it is then told `recovered: false` (the stream
/// position itself is kept by `meta_ttl`).
#[tokio::test]
async fn history_ttl_expires_publications_into_recovered_false() {
    let mut cfg = config();
    cfg.history.size = 10;
    cfg.history.ttl = 1;
    let srv = start(cfg).await;
    let ack = resume(&srv, "t:1", json!(null)).await;
    let since = json!({"offset": ack["offset"], "epoch": ack["epoch"]});
    publish_to(&srv, "t:1").await;
    assert_eq!(kept(&srv, "t:1").await, 1);
    let fresh = resume(&srv, "t:1", since.clone()).await;
    assert_eq!(fresh["recovered"], true, "before the ttl: {fresh}");
    until("the publication expires", || async {
        (kept(&srv, "t:1").await == 0).then_some(())
    })
    .await;
    let late = resume(&srv, "t:1", since).await;
    assert_eq!(late["recovered"], false, "after the ttl: {late}");
    assert_eq!(
        late["epoch"], ack["epoch"],
        "the stream is still known: {late}"
    );
    srv.stop().await;
}

/// `history.meta_ttl`, with the history in Redis and in memory: the stream
/// position outlives the last publication by it, then is forgotten: a client
/// resuming from its end, though it missed nothing, is told `recovered:
/// false`, and the room starts a new epoch. (The in-memory store used to
/// forget a quiet stream only at a sweep every 4,096 publications.)
#[tokio::test]
async fn history_meta_ttl_forgets_the_stream_into_recovered_false() {
    let redis = roomcast_redis::testing::RedisServer::start();
    meta_ttl_case(Some(redis.url())).await;
    meta_ttl_case(None).await;
}

async fn meta_ttl_case(broker: Option<String>) {
    let mut cfg = config();
    let on_redis = broker.is_some();
    cfg.broker.url = broker.unwrap_or_default();
    cfg.history.size = 10;
    cfg.history.ttl = 1;
    cfg.history.meta_ttl = 1;
    let srv = start(cfg).await;
    if on_redis {
        until("the node is on Redis", || async {
            (srv.metric("roomcast_redis_connected").await == 1.0).then_some(())
        })
        .await;
    }
    publish_to(&srv, "m:1").await;
    let (_, page) = srv.get("/api/history/m:1").await;
    let since = json!({"offset": page["offset"], "epoch": page["epoch"]});
    assert_eq!(since["offset"], 1, "{page}");
    let up_to_date = resume(&srv, "m:1", since.clone()).await;
    assert_eq!(up_to_date["recovered"], true, "{up_to_date}");
    let forgotten = until("the stream is forgotten", || {
        let since = since.clone();
        let srv = &srv;
        async move {
            let ack = resume(srv, "m:1", since).await;
            (ack["recovered"] == false).then_some(ack)
        }
    })
    .await;
    assert_ne!(
        forgotten["epoch"], since["epoch"],
        "a new epoch: {forgotten}"
    );
    srv.stop().await;
}

/// A rule's `history_ttl` wins over `history.ttl` for its rooms only.
#[tokio::test]
async fn a_rules_history_ttl_applies_to_its_rooms_only() {
    let mut cfg = config();
    cfg.history.size = 10;
    cfg.history.ttl = 300;
    cfg.rooms = vec![RoomRule {
        history_ttl: Some(1),
        ..RoomRule::default_for("short:*")
    }];
    let srv = start(cfg).await;
    let ack = resume(&srv, "short:1", json!(null)).await;
    let since = json!({"offset": ack["offset"], "epoch": ack["epoch"]});
    publish_to(&srv, "short:1").await;
    publish_to(&srv, "long:1").await;
    until("the short room's publication expires", || async {
        (kept(&srv, "short:1").await == 0).then_some(())
    })
    .await;
    assert_eq!(
        kept(&srv, "long:1").await,
        1,
        "the other room keeps its own"
    );
    let late = resume(&srv, "short:1", since).await;
    assert_eq!(late["recovered"], false, "{late}");
    srv.stop().await;
}

// ---------------------------------------------------------------- backend

/// `proxy.retries`: a webhook answered 5xx is retried that many times (then
/// dropped and counted); with `retries = 0` it is posted once.
#[tokio::test]
async fn proxy_retries_repeat_a_failing_webhook() {
    for retries in [2u32, 0] {
        let backend = Backend::start(|_| Answer::Json(500, json!({}))).await;
        let mut cfg = config();
        cfg.proxy.webhook_url = backend.url("hook");
        cfg.proxy.webhook_events = vec!["connect".to_owned()];
        cfg.proxy.retries = retries;
        let srv = start(cfg).await;
        // An anonymous client: one `connect` event (authenticating would add one).
        let mut c = srv.client().await;
        c.welcome().await;
        let dropped = "roomcast_webhooks_dropped_total";
        until("the webhook is given up", || async {
            (srv.metric(dropped).await >= 1.0).then_some(())
        })
        .await;
        assert_eq!(
            backend.count("hook"),
            retries as usize + 1,
            "retries = {retries}"
        );
        let ids: Vec<Value> = backend
            .log
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.body["id"].clone())
            .collect();
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "one event: {ids:?}");
        c.close().await;
        srv.stop().await;
    }
}

/// A backend that accepts TCP connections and closes each without answering;
/// counts them.
async fn closing_backend() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = n.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(s);
        }
    });
    (addr, n)
}

/// `proxy.retries` never repeats a connect call that reached the backend: a
/// backend that closes the connection without answering is asked once, and
/// the client is refused.
#[tokio::test]
async fn a_connect_call_that_reached_the_backend_is_not_retried() {
    let (addr, connections) = closing_backend().await;
    let mut cfg = config();
    cfg.auth.mode = AuthMode::Proxy;
    cfg.proxy.connect_url = format!("http://{addr}/connect");
    cfg.proxy.retries = 3;
    let srv = start(cfg).await;
    let c = Client::connect(srv.addr, "/ws").await;
    let closed = c.closed().await;
    assert!(
        closed.code.is_some_and(|c| c >= 4000),
        "refused with a roomcast code: {closed:?}"
    );
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1);
    srv.stop().await;
}

/// `proxy.retries` on a refused connection: while the connect proxy's port
/// refuses connections, a handshake with `retries = 0` is refused at once;
/// with enough retries (50 ms doubling backoff) it is let in once the
/// backend comes up on that port.
#[tokio::test]
async fn a_connect_call_refused_at_the_tcp_level_is_retried() {
    // A port held by a socket that is bound but not listening: connections
    // to it are refused, and no other process can take it meanwhile.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    let proxied = |retries| {
        let mut cfg = config();
        cfg.auth.mode = AuthMode::Proxy;
        cfg.proxy.connect_url = format!("http://127.0.0.1:{port}/connect");
        cfg.proxy.retries = retries;
        cfg
    };
    let srv = start(proxied(0)).await;
    let closed = Client::connect(srv.addr, "/ws").await.closed().await;
    assert!(closed.code.is_some_and(|c| c >= 4000), "{closed:?}");
    srv.stop().await;

    let srv = start(proxied(10)).await;
    let addr = srv.addr;
    let client = tokio::spawn(async move {
        let mut c = Client::connect(addr, "/ws").await;
        c.welcome().await
    });
    // The backend is down for a while (an outage, not a synchronisation),
    // then comes up on the port the server keeps trying.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listener = socket.listen(128).unwrap();
    let app = axum::Router::new().route(
        "/connect",
        axum::routing::post(|| async { axum::Json(json!({"user": "ann"})) }),
    );
    let backend = tokio::spawn(async move { axum::serve(listener, app).await });
    let welcome = bounded("the retried handshake", client).await.unwrap();
    assert_eq!(welcome["user"], "ann", "{welcome}");
    backend.abort();
    srv.stop().await;
}

/// `proxy.webhook_queue`: with the receiver hanging, events beyond the queue
/// (and the one in flight) are dropped and counted in
/// `roomcast_webhooks_dropped_total`; clients are not held up.
#[tokio::test]
async fn a_full_webhook_queue_drops_and_counts() {
    let backend = Backend::start(|_| Answer::Hang).await;
    let mut cfg = config();
    cfg.proxy.webhook_url = backend.url("hook");
    cfg.proxy.webhook_events = vec!["connect".to_owned()];
    cfg.proxy.webhook_queue = 1;
    cfg.proxy.timeout_ms = 30_000;
    cfg.proxy.retries = 0;
    let srv = start(cfg).await;
    const N: usize = 6;
    let mut clients = Vec::new();
    for _ in 0..N {
        let mut c = srv.client().await;
        c.welcome().await;
        clients.push(c);
    }
    let dropped = "roomcast_webhooks_dropped_total";
    // One in flight and one queued at most; every other event dropped.
    let n = until("the overflow is counted", || async {
        let n = srv.metric(dropped).await;
        (n >= (N - 2) as f64).then_some(n)
    })
    .await;
    assert!(n <= (N - 1) as f64, "{n} dropped of {N}");
    assert!(
        backend.count("hook") <= 2,
        "{} posted",
        backend.count("hook")
    );
    for c in clients {
        c.close().await;
    }
    srv.stop().await;
}

// ---------------------------------------------------------------- metrics

/// `roomcast_connections_closed_total` counts closes of every kind (a client's
/// own close, an API disconnect); `roomcast_bytes_in_total` and
/// `roomcast_bytes_out_total` grow by at least the bytes of the messages sent
/// and received.
#[tokio::test]
async fn connection_and_byte_counters_grow_with_the_traffic() {
    let srv = start(config()).await;
    let closed = "roomcast_connections_closed_total";
    let before = srv.metric(closed).await;
    let a = srv.user("a").await;
    a.close().await;
    let b = srv.user("b").await;
    let (status, _) = srv.post("/api/disconnect", json!({"user": "b"})).await;
    assert_eq!(status, 200);
    b.closed().await;
    until("both closes are counted", || async {
        (srv.metric(closed).await >= before + 2.0).then_some(())
    })
    .await;

    let mut c = srv.user("c").await;
    c.join("bytes").await;
    let (bytes_in, bytes_out) = (
        srv.metric("roomcast_bytes_in_total").await,
        srv.metric("roomcast_bytes_out_total").await,
    );
    let padding = "x".repeat(10_000);
    let cmd = json!({"type": "publish", "room": "bytes", "event": "e", "data": padding});
    let sent = cmd.to_string().len() as f64;
    let ack = c.request(cmd).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let echo = c.recv_type("message").await;
    let received = echo.to_string().len() as f64;
    assert!(received >= 10_000.0);
    let grown_in = srv.metric("roomcast_bytes_in_total").await - bytes_in;
    let grown_out = srv.metric("roomcast_bytes_out_total").await - bytes_out;
    assert!(grown_in >= sent, "bytes in grew {grown_in}, sent {sent}");
    assert!(
        grown_out >= received,
        "bytes out grew {grown_out}, received {received}"
    );
    c.close().await;
    srv.stop().await;
}
