//! URL-per-room WebSocket endpoints (`[[endpoints]]`) over real sockets:
//! relay between endpoint, native and API members, unknown paths, join
//! rules, tokens, oversize frames.

mod support;

use serde_json::{json, Value};
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

#[path = "../../roomcast-socketio/tests/support/mod.rs"]
mod sio;

use roomcast::config::EndpointConfig;
use roomcast_core::room::RoomRule;

/// A page's `new WebSocket(url)`: frames in, frames out, nothing else.
async fn page(srv: &TestServer, path: &str) -> Client {
    Client::connect(srv.addr, path).await
}

async fn page_with(srv: &TestServer, path: &str, headers: &[(&str, &str)]) -> Client {
    Client::try_connect(srv.addr, path, headers)
        .await
        .expect("endpoint upgrade")
}

/// The next frame, which must be text.
async fn text(c: &mut Client) -> String {
    match c.recv_message().await {
        Message::Text(t) => t.as_str().to_owned(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// The close code the server sent.
async fn close_code(c: Client) -> u16 {
    c.closed().await.code.expect("closed with a code")
}

fn chat_config() -> roomcast::Config {
    let mut c = config();
    c.endpoints = vec![
        EndpointConfig {
            room: "chat_{room}".into(),
            ..EndpointConfig::relay("/ws/chat/{room}/")
        },
        EndpointConfig::relay("/room/{room}/"),
    ];
    c
}

#[tokio::test]
async fn frames_are_relayed_unchanged_to_endpoint_members_and_as_events_to_native_ones() {
    let srv = start(chat_config()).await;
    let mut a = page(&srv, "/ws/chat/lobby/").await;
    let mut b = page(&srv, "/ws/chat/lobby/").await;
    let mut native = srv.client().await;
    native.welcome().await;
    native.join("chat_lobby").await;
    // Both pages are members before anything is sent.
    let (_, p) = srv.get("/api/presence/chat_lobby").await;
    assert_eq!(p["connections"], 3, "{p}");

    // The tutorial's frame, with its spacing: both pages (the sender too) get it as sent.
    let frame = r#"{"message": "hi there"}"#;
    a.send_raw(Message::text(frame)).await;
    assert_eq!(text(&mut a).await, frame);
    assert_eq!(text(&mut b).await, frame);
    let m = native.recv_type("message").await;
    assert_eq!(m["room"], "chat_lobby");
    assert_eq!(m["event"], roomcast::RELAY_EVENT);
    assert_eq!(m["data"], json!({"message": "hi there"}));

    // Plain text is not JSON: native members get the string.
    b.send_raw(Message::text("hello")).await;
    assert_eq!(text(&mut a).await, "hello");
    assert_eq!(text(&mut b).await, "hello");
    assert_eq!(native.recv_type("message").await["data"], "hello");

    // A JSON string literal stays a literal for the pages.
    a.send_raw(Message::text(r#""quoted""#)).await;
    assert_eq!(text(&mut b).await, r#""quoted""#);
    assert_eq!(native.recv_type("message").await["data"], "quoted");

    // JSON with whitespace around it stays byte for byte for the pages; native
    // members get it as a string.
    a.send_raw(Message::text(" {\"n\": 1}\n")).await;
    assert_eq!(text(&mut b).await, " {\"n\": 1}\n");
    assert_eq!(native.recv_type("message").await["data"], " {\"n\": 1}\n");

    // Binary frames come back as the same bytes.
    a.send_raw(Message::binary(vec![0u8, 1, 254, 255])).await;
    assert_eq!(
        b.recv_message().await,
        Message::binary(vec![0u8, 1, 254, 255])
    );
    assert_eq!(native.recv_type("message").await["data"], "AAH+/w==");

    // A publication from the API or a native client reaches pages as the JSON of its data.
    let (status, _) = srv
        .post(
            "/api/publish",
            json!({"room": "chat_lobby", "event": "chat.message", "data": {"message": "from django"}}),
        )
        .await;
    assert_eq!(status, 200);
    let got: Value = serde_json::from_str(&text(&mut b).await).unwrap();
    assert_eq!(got, json!({"message": "from django"}));
    let ack = native
        .request(json!({"type": "publish", "room": "chat_lobby", "event": "x", "data": [1, 2]}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    // Page a did not read since "hello": the rest is queued for it, in order.
    assert_eq!(text(&mut a).await, r#""quoted""#);
    assert_eq!(text(&mut a).await, " {\"n\": 1}\n");
    assert_eq!(
        a.recv_message().await,
        Message::binary(vec![0u8, 1, 254, 255])
    );
    assert_eq!(text(&mut a).await, r#"{"message":"from django"}"#);
    assert_eq!(text(&mut a).await, "[1,2]");
    srv.stop().await;
}

#[tokio::test]
async fn the_other_endpoint_uses_the_segment_as_the_room_and_unknown_paths_are_404() {
    let srv = start(chat_config()).await;
    let mut p = page(&srv, "/room/123/").await;
    let mut native = srv.client().await;
    native.welcome().await;
    native.join("123").await;
    native
        .request(json!({"type": "publish", "room": "123", "event": "e", "data": "to the page"}))
        .await;
    assert_eq!(text(&mut p).await, r#""to the page""#);

    let too_long = format!("/room/{}/", "x".repeat(300));
    for path in [
        "/room/",
        "/room/1/2/",
        "/ws/chat/lobby",
        "/nothing/here/",
        too_long.as_str(),
    ] {
        let r = Client::try_connect(srv.addr, path, &[]).await;
        assert_eq!(r.err().map(|e| e.0), Some(404), "{path}");
    }
    srv.stop().await;
}

#[tokio::test]
async fn a_refused_join_closes_with_4506_and_a_missing_token_with_4502() {
    let mut c = chat_config();
    c.rooms = serde_json::from_value::<Vec<RoomRule>>(json!([
        {"pattern": "chat_staff", "join": "none"}
    ]))
    .unwrap();
    let srv = start(c).await;
    let staff = page(&srv, "/ws/chat/staff/").await;
    assert_eq!(close_code(staff).await, 4506);
    srv.stop().await;

    // Token mode: an endpoint client cannot authenticate after the upgrade.
    let mut c = chat_config();
    c.auth.mode = roomcast::config::AuthMode::Token;
    c.auth.jwt.secret = "endpoint-test-secret".into();
    let srv = start(c).await;
    let anonymous = page(&srv, "/ws/chat/lobby/").await;
    assert_eq!(close_code(anonymous).await, 4502);
    let bad = page(&srv, "/ws/chat/lobby/?token=not-a-jwt").await;
    assert_eq!(close_code(bad).await, 4502);
    srv.stop().await;
}

#[tokio::test]
async fn an_oversize_frame_closes_only_its_sender() {
    let mut c = chat_config();
    c.limits.max_message_bytes = 1024;
    let srv = start(c).await;
    let mut big = page(&srv, "/room/r/").await;
    let mut other = page(&srv, "/room/r/").await;
    big.send_raw(Message::text("x".repeat(4096))).await;
    assert_eq!(close_code(big).await, u16::from(CloseCode::Size));
    other.send_raw(Message::text("still here")).await;
    assert_eq!(text(&mut other).await, "still here");
    let (_, p) = srv.get("/api/presence/r").await;
    assert_eq!(p["connections"], 1, "{p}");
    srv.stop().await;
}

/// The backend of a consumer in rpc mode: answers `hello` with plain text,
/// anything else with a JSON result and a publication to the room.
fn consumer(c: &support::backend::Call) -> support::backend::Answer {
    let data = &c.body["data"];
    if data == "hello" {
        return support::backend::Answer::ok(json!({"result": "hello yourself"}));
    }
    support::backend::Answer::ok(json!({
        "result": {"saved": data["message"]},
        "actions": [{"type": "publish", "room": c.body["room"], "event": "chat.message", "data": {"message": data["message"]}}],
    }))
}

#[tokio::test]
async fn rpc_mode_hands_frames_to_the_event_proxy_and_answers_the_sender() {
    let mut backend = support::backend::Backend::start(consumer).await;
    let mut c = config();
    c.proxy.rpc_url = backend.url("rpc");
    c.proxy.secret = "endpoint-rpc-secret".into();
    c.endpoints = vec![EndpointConfig {
        room: "chat_{room}".into(),
        mode: roomcast::config::EndpointMode::Rpc,
        ..EndpointConfig::relay("/ws/chat/{room}/")
    }];
    let srv = start(c).await;
    let mut a = page(&srv, "/ws/chat/lobby/").await;
    let mut b = page(&srv, "/ws/chat/lobby/").await;

    a.send_raw(Message::text("hello")).await;
    assert_eq!(text(&mut a).await, "hello yourself");
    let call = backend.next("rpc").await;
    assert_eq!(call.body["event"], roomcast::RELAY_EVENT);
    assert_eq!(call.body["room"], "chat_lobby");
    assert_eq!(call.body["transport"], "endpoint");
    assert_eq!(call.body["rooms"], json!(["chat_lobby"]));

    // The backend decides what is relayed: here, a publication to the room.
    // Its actions run before its result is sent, as for a native rpc.
    a.send_raw(Message::text(r#"{"message": "saved?"}"#)).await;
    assert_eq!(text(&mut a).await, r#"{"message":"saved?"}"#);
    assert_eq!(text(&mut a).await, r#"{"saved":"saved?"}"#);
    assert_eq!(text(&mut b).await, r#"{"message":"saved?"}"#);
    srv.stop().await;
}

#[test]
fn endpoint_and_channels_settings_that_cannot_work_are_configuration_errors() {
    let mut c = config();
    c.endpoints = vec![EndpointConfig {
        mode: roomcast::config::EndpointMode::Rpc,
        ..EndpointConfig::relay("/room/{room}/")
    }];
    assert!(c.validate().unwrap_err().contains("proxy.rpc_url"));
    c.endpoints = vec![EndpointConfig::relay("/room/{room}/x{y}")];
    assert!(c.validate().unwrap_err().contains("endpoints[0].path"));
    // Channel mode needs a channel and the Channels layer; a channel is only for channel mode.
    let channel = |name: &str| EndpointConfig {
        mode: roomcast::config::EndpointMode::Channel,
        channel: name.to_owned(),
        ..EndpointConfig::relay("/room/{room}/")
    };
    c.endpoints = vec![channel("")];
    assert!(c.validate().unwrap_err().contains("endpoints[0].channel"));
    c.endpoints = vec![channel("chat.inbound")];
    assert!(c.validate().unwrap_err().contains("channels.url"));
    c.channels.url = "redis://127.0.0.1:6379/0".into();
    assert_eq!(c.validate(), Ok(()));
    c.endpoints = vec![channel("chat!inbound")];
    assert!(c.validate().unwrap_err().contains("Channels channel name"));
    c.endpoints = vec![EndpointConfig {
        channel: "chat.inbound".into(),
        ..EndpointConfig::relay("/room/{room}/")
    }];
    assert!(c.validate().unwrap_err().contains("only for mode"));
    c.endpoints = vec![EndpointConfig {
        group_type: Some("chat message".into()),
        ..EndpointConfig::relay("/room/{room}/")
    }];
    assert!(c.validate().unwrap_err().contains("group_type"));
    c.endpoints.clear();
    c.channels.url = "http://x".into();
    assert!(c.validate().unwrap_err().contains("channels.url"));
}

/// Waits for the node's Redis subscriber, as its metrics report it.
async fn wait_connected(s: &TestServer) {
    for _ in 0..200 {
        if s.metric("roomcast_redis_connected").await == 1.0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("node never connected to redis");
}

#[tokio::test]
async fn relayed_frames_cross_nodes_on_redis_unchanged() {
    let redis = roomcast_redis::testing::RedisServer::start();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let mut c = chat_config();
        c.broker.url = redis.url();
        let srv = start(c).await;
        wait_connected(&srv).await;
        nodes.push(srv);
    }
    // A native member on each node joins first: its ack comes once the node
    // is subscribed to the room.
    let mut native_a = nodes[0].client().await;
    native_a.welcome().await;
    native_a.join("chat_lobby").await;
    let mut native_b = nodes[1].client().await;
    native_b.welcome().await;
    native_b.join("chat_lobby").await;

    // A page sends only once it is in its room: its first frame reaching
    // node 0 shows it is a member.
    let mut page_b = page(&nodes[1], "/ws/chat/lobby/").await;
    page_b.send_raw(Message::text("from b")).await;
    assert_eq!(native_a.recv_type("message").await["data"], "from b");
    assert_eq!(text(&mut page_b).await, "from b");

    let mut page_a = page(&nodes[0], "/ws/chat/lobby/").await;
    let frame = r#"{"message":  "across"}"#;
    page_a.send_raw(Message::text(frame)).await;
    assert_eq!(text(&mut page_b).await, frame);
    assert_eq!(text(&mut page_a).await, frame);
    assert_eq!(native_b.recv_type("message").await["data"], "from b");
    assert_eq!(
        native_b.recv_type("message").await["data"],
        json!({"message": "across"})
    );
    page_a.send_raw(Message::text(r#""lit""#)).await;
    assert_eq!(text(&mut page_b).await, r#""lit""#);
    page_a.send_raw(Message::binary(vec![7u8, 0, 7])).await;
    assert_eq!(
        page_b.recv_message().await,
        Message::binary(vec![7u8, 0, 7])
    );
    assert_eq!(
        native_a.recv_type("message").await["data"],
        json!({"message": "across"})
    );
    assert_eq!(native_a.recv_type("message").await["data"], "lit");
    assert_eq!(native_a.recv_type("message").await["data"], "BwAH");
    for n in nodes {
        n.stop().await;
    }
}

/// The connect proxy knows the Django session by its cookie.
fn django_sessions(c: &support::backend::Call) -> support::backend::Answer {
    let cookie = c.header("cookie").unwrap_or_default();
    if cookie.contains("sessionid=alice") {
        support::backend::Answer::ok(json!({"user": "42"}))
    } else {
        support::backend::Answer::ok(json!({"error": {"code": "login", "message": "log in first"}}))
    }
}

#[tokio::test]
async fn in_proxy_mode_the_django_session_user_is_the_endpoint_user() {
    let mut backend = support::backend::Backend::start(django_sessions).await;
    let mut c = chat_config();
    c.auth.mode = roomcast::config::AuthMode::Proxy;
    c.proxy.connect_url = backend.url("connect");
    c.proxy.secret = "endpoint-proxy-secret".into();
    let srv = start(c).await;
    let mut alice = page_with(&srv, "/ws/chat/lobby/", &[("cookie", "sessionid=alice")]).await;
    let call = backend.next("connect").await;
    assert_eq!(call.body["transport"], "endpoint");
    assert_eq!(call.header("cookie"), Some("sessionid=alice"));
    alice.send_raw(Message::text("in")).await;
    assert_eq!(text(&mut alice).await, "in");
    let (_, p) = srv.get("/api/presence/chat_lobby").await;
    assert_eq!(p["users"][0]["user"], "42", "{p}");

    let stranger = page_with(&srv, "/ws/chat/lobby/", &[("cookie", "sessionid=bob")]).await;
    assert_eq!(close_code(stranger).await, 4502);
    srv.stop().await;
}

#[tokio::test]
async fn socketio_members_get_relayed_frames_as_message_events() {
    let mut c = chat_config();
    c.socketio.builtin_events = true;
    let srv = start(c).await;
    let (mut s, _) = sio::Sio::connect(srv.addr, "/", json!({})).await;
    s.send(r#"421["roomcast:join",{"room":"chat_lobby"}]"#)
        .await;
    assert_eq!(
        s.recv_sio().await,
        r#"31[{"joined":true,"room":"chat_lobby"}]"#
    );
    let mut page = page(&srv, "/ws/chat/lobby/").await;
    page.send_raw(Message::text(r#"{"message":"to socket.io"}"#))
        .await;
    assert_eq!(text(&mut page).await, r#"{"message":"to socket.io"}"#);
    assert_eq!(
        s.event().await,
        ("message".to_owned(), json!({"message": "to socket.io"}))
    );
    page.send_raw(Message::text("plain")).await;
    assert_eq!(s.event().await, ("message".to_owned(), json!("plain")));
    srv.stop().await;
}

#[tokio::test]
async fn frames_over_the_rate_are_dropped_then_the_sender_is_closed_with_4005() {
    let mut c = chat_config();
    c.limits.message_rate = 1;
    c.limits.message_burst = 3;
    let srv = start(c).await;
    let mut calm = page(&srv, "/room/r/").await;
    let mut noisy = page(&srv, "/room/r/").await;
    // Ten frames in one write: the burst of three is relayed, the next two
    // are dropped (an endpoint has no error frame), the sixth closes.
    noisy
        .send_batch((1..=10).map(|i| Message::text(i.to_string())))
        .await;
    for i in 1..=3 {
        assert_eq!(text(&mut calm).await, i.to_string());
    }
    assert_eq!(close_code(noisy).await, 4005);
    // Nothing of 4..10 reached the room: the next frame calm sees is its own.
    calm.send_raw(Message::text("after")).await;
    assert_eq!(text(&mut calm).await, "after");
    assert_eq!(srv.metric("roomcast_client_errors_total").await, 2.0);
    srv.stop().await;
}
