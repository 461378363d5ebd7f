//! Socket.IO clients of the standalone server, over real sockets: a minimal
//! Engine.IO/Socket.IO client speaking raw packets on a WebSocket.

mod support;

use serde_json::{json, Value};
use support::*;

#[path = "../../roomcast-socketio/tests/support/mod.rs"]
mod sio;

/// A client of the server's `/socket.io/` on namespace `/`.
struct Sio;

impl Sio {
    async fn connect(srv: &TestServer, auth: Value) -> (sio::Sio, String) {
        sio::Sio::connect(srv.addr, "/", auth).await
    }
}

fn sio_config(builtin: bool) -> roomcast::Config {
    let mut c = config();
    c.socketio.builtin_events = builtin;
    c
}

#[tokio::test]
async fn native_and_socketio_clients_share_rooms_and_presence() {
    let srv = start(sio_config(true)).await;
    let (mut sio, answer) = Sio::connect(&srv, json!({"user": "alice"})).await;
    assert!(answer.starts_with("0{\"sid\""), "{answer}");
    let mut native = srv.user("bob").await;
    native.join("lobby").await;

    // The backend puts the Socket.IO user into the room.
    let (_, r) = srv
        .post("/api/join", json!({"user": "alice", "room": "lobby"}))
        .await;
    assert_eq!(r["joined"], 1);
    let (_, p) = srv.get("/api/presence/lobby").await;
    assert_eq!(
        p["users"],
        json!([{"user": "alice", "connections": 1}, {"user": "bob", "connections": 1}])
    );
    // With built-in events on, the Socket.IO client sees presence events too.
    let (name, e) = sio.event().await;
    assert_eq!(
        (name.as_str(), e["user"].as_str(), e["event"].as_str()),
        ("roomcast:presence", Some("alice"), Some("join"))
    );

    // API publish reaches both, each in its protocol.
    srv.post(
        "/api/publish",
        json!({"room": "lobby", "event": "chat", "data": {"text": "hi all"}}),
    )
    .await;
    assert_eq!(
        sio.event().await,
        ("chat".to_owned(), json!({"text": "hi all"}))
    );
    assert_eq!(native.recv_type("message").await["data"]["text"], "hi all");

    // A native publish reaches the Socket.IO client...
    native
        .request(
            json!({"type": "publish", "room": "lobby", "event": "chat", "data": "from native"}),
        )
        .await;
    assert_eq!(sio.event().await, ("chat".to_owned(), json!("from native")));
    assert_eq!(native.recv_type("message").await["data"], "from native");
    // ...and a Socket.IO built-in publish reaches the native client, with its sender.
    sio.send(r#"421["roomcast:publish",{"room":"lobby","event":"chat","data":"from sio","exclude_self":true}]"#).await;
    let ack = sio.recv_sio().await;
    assert_eq!(ack, r#"31[{"delivered":1}]"#);
    let m = native.recv_type("message").await;
    assert_eq!(
        (m["data"].as_str(), m["from"]["user"].as_str()),
        (Some("from sio"), Some("alice"))
    );
    srv.stop().await;
}

#[tokio::test]
async fn builtin_room_events_and_errors() {
    let srv = start(sio_config(true)).await;
    let (mut sio, _) = Sio::connect(&srv, json!({})).await;
    sio.send(r#"427["roomcast:join",{"room":"r1"}]"#).await;
    assert_eq!(sio.recv_sio().await, r#"37[{"joined":true,"room":"r1"}]"#);
    let (_, r) = srv
        .post(
            "/api/publish",
            json!({"room": "r1", "event": "e", "data": 1}),
        )
        .await;
    assert_eq!(r["delivered"], 1);
    assert_eq!(sio.event().await, ("e".to_owned(), json!(1)));
    sio.send(r#"428["roomcast:presence",{"room":"r1"}]"#).await;
    assert_eq!(
        sio.recv_sio().await,
        r#"38[{"anonymous":1,"connections":1,"room":"r1","users":[]}]"#
    );
    sio.send(r#"429["roomcast:join",{"room":"bad room"}]"#)
        .await;
    assert!(sio
        .recv_sio()
        .await
        .starts_with(r#"39[{"error":{"code":"join_failed""#));
    sio.send(r#"4210["roomcast:leave",{"room":"r1"}]"#).await;
    assert_eq!(sio.recv_sio().await, r#"310[{"left":true,"room":"r1"}]"#);
    srv.stop().await;
}

#[tokio::test]
async fn events_without_a_handler_get_an_error_ack() {
    let srv = start(sio_config(false)).await;
    let (mut sio, _) = Sio::connect(&srv, json!({"user": "carol"})).await;
    sio.send(r#"423["order",{"id":1}]"#).await;
    let ack = sio.recv_sio().await;
    assert!(
        ack.starts_with(r#"33[{"error":{"code":"no_handler""#),
        "{ack}"
    );
    // Built-in events are off by default: they are unhandled events too.
    sio.send(r#"42["roomcast:join",{"room":"r"}]"#).await;
    let (name, e) = sio.event().await;
    assert_eq!(
        (
            name.as_str(),
            e["event"].as_str(),
            e["error"]["code"].as_str()
        ),
        ("roomcast:error", Some("roomcast:join"), Some("no_handler"))
    );
    srv.stop().await;
}

#[tokio::test]
async fn connect_errors() {
    let mut cfg = sio_config(false);
    cfg.auth.anonymous = roomcast::config::Anonymous::Deny;
    let srv = start(cfg).await;
    let (_, answer) = Sio::connect(&srv, json!({"token": "x"})).await;
    let err: Value = serde_json::from_str(answer.strip_prefix('4').unwrap()).unwrap();
    assert_eq!(err["data"]["code"], "auth_failed");
    let (_, answer) = Sio::connect(&srv, json!({})).await;
    assert!(
        answer.starts_with(r#"4{"data":{"code":"unauthenticated"}"#),
        "{answer}"
    );
    let (mut c, answer) = Sio::connect(&srv, json!({"user": "dan"})).await;
    assert!(answer.starts_with("0{"));
    c.send("40/nope,").await;
    assert_eq!(
        c.recv_sio().await,
        r#"4/nope,{"message":"Invalid namespace"}"#
    );
    srv.stop().await;
}

#[tokio::test]
async fn api_disconnect_sends_namespace_disconnect_then_closes() {
    let srv = start(sio_config(false)).await;
    let (mut sio, _) = Sio::connect(&srv, json!({"user": "erin"})).await;
    let (_, u) = srv.get("/api/users/erin").await;
    assert_eq!(u["online"], true);
    srv.post("/api/disconnect", json!({"user": "erin"})).await;
    // DISCONNECT tells socket.io clients not to reconnect by themselves.
    assert_eq!(sio.recv_sio().await, "1");
    assert_eq!(sio.recv().await, "close:4500");
    srv.stop().await;
}

#[tokio::test]
async fn shutdown_closes_socketio_clients_with_4000() {
    let srv = start(sio_config(false)).await;
    let (mut sio, _) = Sio::connect(&srv, json!({})).await;
    let stopping = tokio::spawn(srv.stop());
    assert_eq!(sio.recv().await, "close:4000");
    stopping.await.unwrap();
}

#[tokio::test]
async fn long_polling_clients_share_the_hub_too() {
    let srv = start(sio_config(false)).await;
    let polling = Polling::open(&srv, &[]).await;
    assert_eq!(
        polling.post(r#"40{"user":"pat"}"#).await,
        (200, "ok".to_owned())
    );
    let (_, connected) = polling.poll().await;
    assert!(connected.starts_with("40{\"sid\""), "{connected}");
    srv.post(
        "/api/send",
        json!({"user": "pat", "event": "note", "data": [1, 2]}),
    )
    .await;
    assert_eq!(polling.poll().await.1, r#"42["note",[1,2]]"#);
    srv.stop().await;
}

#[tokio::test]
async fn engineio_sessions_count_against_max_connections_before_they_connect() {
    let mut cfg = sio_config(false);
    cfg.limits.max_connections = 2;
    let srv = start(cfg).await;
    let url = srv.url("/socket.io/?EIO=4&transport=polling");
    for _ in 0..2 {
        let r = reqwest::get(&url).await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = reqwest::get(&url).await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "server_full");
    srv.stop().await;
}
