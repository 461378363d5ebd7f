//! The Rust library API of Socket.IO on roomcast, driven by a raw client over
//! real sockets.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use support::*;
use tokio::sync::mpsc;

use roomcast_core::{Hub, HubConfig};
use roomcast_socketio::socketio::{AckError, ConnectRefusal, Payload, SocketIo, SocketIoConfig};

async fn serve_io(io: &SocketIo) -> std::net::SocketAddr {
    serve(io.router("/socket.io/")).await
}

fn io() -> SocketIo {
    SocketIo::new(Hub::new(HubConfig::default()), SocketIoConfig::default())
}

#[tokio::test]
async fn connect_handlers_see_the_auth_payload_and_can_refuse_with_data() {
    let io = io();
    io.ns("/", |socket, auth| async move {
        if auth["password"] != "open sesame" {
            return Err(ConnectRefusal {
                message: "wrong password".into(),
                data: Some(json!({"retry": false})),
            });
        }
        socket.emit("welcome", &auth["name"]).ok();
        Ok(())
    });
    let addr = serve_io(&io).await;
    let (_, answer) = Sio::connect(addr, "/", json!({"password": "nope"})).await;
    assert_eq!(
        answer,
        r#"4{"data":{"retry":false},"message":"wrong password"}"#
    );
    let (mut c, answer) =
        Sio::connect(addr, "/", json!({"password": "open sesame", "name": "ann"})).await;
    assert!(answer.starts_with("0{\"sid\":"));
    // Emits made in the connect handler come after the CONNECT reply.
    assert_eq!(c.event().await, ("welcome".to_owned(), json!("ann")));
}

#[tokio::test]
async fn events_acks_both_ways_binary_and_disconnect_reasons() {
    let io = io();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    io.ns("/", move |socket, _| {
        let tx = tx.clone();
        async move {
            socket.on("sum", |_, p, ack| async move {
                let total: i64 = p.args.iter().filter_map(Value::as_i64).sum();
                ack.unwrap().send(Payload::json(&total)).ok();
            });
            socket.on("bytes", |socket, p, _| async move {
                // Echo the attachment, reversed, as a binary event.
                let mut data = p.binary[0].to_vec();
                data.reverse();
                socket
                    .emit_payload("bytes", Payload::bytes(Bytes::from(data)))
                    .ok();
            });
            socket.on("ask", |socket, _, _| async move {
                let answer = socket
                    .emit_with_ack("question", Payload::json(&"2+2?"), Duration::from_secs(2))
                    .await;
                socket
                    .emit(
                        "answer",
                        &answer.map(|p| p.first().clone()).unwrap_or(Value::Null),
                    )
                    .ok();
                let silent = socket
                    .emit_with_ack(
                        "question",
                        Payload::json(&"ignored?"),
                        Duration::from_millis(100),
                    )
                    .await;
                socket
                    .emit("timeout", &matches!(silent, Err(AckError::Timeout)))
                    .ok();
            });
            let tx = tx.clone();
            socket.on_disconnect(move |_, reason| {
                let tx = tx.clone();
                async move {
                    tx.send(reason).ok();
                }
            });
            Ok(())
        }
    });
    let addr = serve_io(&io).await;
    let (mut c, _) = Sio::connect(addr, "/", json!({})).await;

    c.send(r#"425["sum",1,2,3]"#).await;
    assert_eq!(c.recv_sio().await, "35[6]");

    c.send(r#"451-["bytes",{"_placeholder":true,"num":0}]"#)
        .await;
    c.send_binary(&[1, 2, 3]).await;
    assert_eq!(
        c.recv_sio().await,
        r#"51-["bytes",{"_placeholder":true,"num":0}]"#
    );
    assert_eq!(c.recv_sio().await, "bin:030201");

    c.send(r#"42["ask"]"#).await;
    assert_eq!(c.recv_sio().await, r#"20["question","2+2?"]"#);
    c.send(r#"430[4]"#).await;
    assert_eq!(c.event().await, ("answer".to_owned(), json!(4)));
    assert_eq!(c.recv_sio().await, r#"21["question","ignored?"]"#);
    assert_eq!(c.event().await, ("timeout".to_owned(), json!(true)));

    // Leaving the namespace keeps the Engine.IO session; the handler hears why.
    c.send("41").await;
    assert_eq!(rx.recv().await.unwrap(), "client namespace disconnect");
    c.send("40").await;
    assert!(c.recv_sio().await.starts_with("0{\"sid\""));
    drop(c);
    assert_eq!(rx.recv().await.unwrap(), "transport close");
}

#[tokio::test]
async fn rooms_except_sender_close_room_data_and_server_disconnect() {
    let io = io();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen2 = seen.clone();
    io.ns("/", move |socket, auth| {
        let seen = seen2.clone();
        async move {
            let mut data = serde_json::Map::new();
            data.insert("name".into(), auth["name"].clone());
            socket.set_data(data).unwrap();
            socket.join("game").await.unwrap();
            socket.on("move", |socket, p, _| async move {
                socket.to_room("game", "moved", p.first()).await.unwrap();
            });
            socket.on("end", |socket, _, _| async move {
                socket.within_room("game", "over", &true).await.unwrap();
                socket.close_room("game").await.unwrap();
            });
            socket.on("whoami", move |socket, _, ack| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(socket.data()["name"].to_string());
                    ack.unwrap().send(Payload::json(&socket.rooms())).ok();
                }
            });
            socket.on(
                "kick",
                |socket, _, _| async move { socket.disconnect().await },
            );
            Ok(())
        }
    });
    let addr = serve_io(&io).await;
    let (mut a, _) = Sio::connect(addr, "/", json!({"name": "a"})).await;
    let (mut b, _) = Sio::connect(addr, "/", json!({"name": "b"})).await;
    a.send(r#"42["move",{"x":1}]"#).await;
    assert_eq!(b.event().await, ("moved".to_owned(), json!({"x": 1})));
    a.send(r#"421["whoami"]"#).await;
    assert_eq!(
        a.recv_sio().await,
        r#"31[["game"]]"#,
        "a never got its own move"
    );
    assert_eq!(seen.lock().unwrap().as_slice(), ["\"a\""]);
    b.send(r#"42["end"]"#).await;
    assert_eq!(a.event().await, ("over".to_owned(), json!(true)));
    assert_eq!(b.event().await, ("over".to_owned(), json!(true)));
    a.send(r#"422["whoami"]"#).await;
    assert_eq!(a.recv_sio().await, r#"32[[]]"#, "the room was closed");
    b.send(r#"42["kick"]"#).await;
    assert_eq!(b.recv_sio().await, "1");
    // The Engine.IO session survives a namespace disconnect: reconnect on it.
    b.send("40").await;
    assert!(b.recv_sio().await.starts_with("0{\"sid\""));
}

#[tokio::test]
async fn a_socket_id_is_a_room_holding_that_socket() {
    let io = io();
    io.ns("/", |socket, _| async move {
        socket.on("dm", |socket, p, _| async move {
            let to = p.first().as_str().unwrap_or_default().to_owned();
            socket.to_room(&to, "dm", &"psst").await.unwrap();
        });
        Ok(())
    });
    let addr = serve_io(&io).await;
    let (mut a, _) = Sio::connect(addr, "/", json!({})).await;
    let (mut b, _) = Sio::connect(addr, "/", json!({})).await;
    let (mut c, _) = Sio::connect(addr, "/", json!({})).await;
    a.send(&format!(r#"42["dm","{}"]"#, b.sid)).await;
    assert_eq!(b.event().await, ("dm".to_owned(), json!("psst")));
    io.emit_to_room(&c.sid, "direct", &1).await.unwrap();
    assert_eq!(c.event().await, ("direct".to_owned(), json!(1)));
    // a got nothing in between: its next event is this one.
    io.emit_to_room(&a.sid, "fence", &0).await.unwrap();
    assert_eq!(a.event().await, ("fence".to_owned(), json!(0)));
}

#[tokio::test]
async fn dynamic_namespaces_and_room_emits_from_outside_handlers() {
    let io = io();
    io.dynamic_ns(
        |name| name.starts_with("/tenant-"),
        |socket, _| async move {
            let room = format!("ns:{}", socket.ns());
            socket.join(&room).await.unwrap();
            Ok(())
        },
    );
    let addr = serve_io(&io).await;
    let (mut c, answer) = Sio::connect(addr, "/tenant-42", json!({})).await;
    assert!(answer.starts_with("0/tenant-42,{\"sid\""), "{answer}");
    let (_, refused) = Sio::connect(addr, "/other", json!({})).await;
    assert_eq!(refused, r#"4/other,{"message":"Invalid namespace"}"#);
    let n = io
        .emit_to_room("ns:/tenant-42", "hello", &"tenant")
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(c.recv_sio().await, r#"2/tenant-42,["hello","tenant"]"#);
}

#[tokio::test]
async fn periodic_emits_stop_with_the_hub() {
    let io = io();
    io.ns("/", |socket, _| async move {
        socket.join("ticks").await.unwrap();
        Ok(())
    });
    let addr = serve_io(&io).await;
    let (mut c, _) = Sio::connect(addr, "/", json!({})).await;
    let timer = io.hub().every(Duration::from_millis(20), |hub| async move {
        let p = roomcast_core::Publication::json(
            roomcast_core::Target::Room("ticks".into()),
            "tick",
            &1,
        )
        .unwrap();
        hub.publish(p).await.ok();
    });
    assert_eq!(c.event().await.0, "tick");
    assert_eq!(c.event().await.0, "tick");
    io.hub().shutdown(roomcast_core::Disconnect::SHUTDOWN);
    tokio::time::timeout(STEP, timer)
        .await
        .expect("the timer ends with the hub")
        .unwrap();
}

#[tokio::test]
async fn protocol_violations_close_with_a_close_frame_and_code() {
    let io = io();
    io.ns("/", |_, _| async move { Ok(()) });
    let addr = serve_io(&io).await;
    // A ping from the client is the wrong heartbeat direction.
    let (mut c, _) = Sio::open(addr, "/socket.io/").await;
    c.send("2").await;
    assert_eq!(c.closed().await, 1002);
    // An invalid Socket.IO packet.
    let (mut c, _) = Sio::open(addr, "/socket.io/").await;
    c.send("40").await;
    assert!(c.recv_sio().await.starts_with("0{"));
    c.send("42{}").await;
    assert_eq!(c.closed().await, 1002);
    // A message over maxPayload.
    let (mut c, _) = Sio::open(addr, "/socket.io/").await;
    c.send(&format!("4{}", "x".repeat(1_000_001))).await;
    assert_eq!(c.closed().await, 1009);
    // The client's own close packet is answered with a normal close.
    let (mut c, _) = Sio::open(addr, "/socket.io/").await;
    c.send("1").await;
    assert_eq!(c.closed().await, 1000);
}

/// Long-polls `sid` until the session ends (a CLOSE packet, or 400 for an
/// unknown session); returns every packet received before that.
async fn poll_until_closed(http: &reqwest::Client, url: &str) -> Vec<String> {
    let mut packets = Vec::new();
    loop {
        let r = tokio::time::timeout(STEP, http.get(url).send())
            .await
            .expect("a poll answered in time")
            .unwrap();
        if r.status() == 400 {
            return packets;
        }
        let body = r.text().await.unwrap();
        for p in body.split('\x1e') {
            if p == "1" {
                return packets;
            }
            packets.push(p.to_owned());
        }
    }
}

async fn polling_session(http: &reqwest::Client, addr: std::net::SocketAddr) -> String {
    let base = format!("http://{addr}/socket.io/?EIO=4&transport=polling");
    let open = http.get(&base).send().await.unwrap().text().await.unwrap();
    let sid = serde_json::from_str::<Value>(&open[1..]).unwrap()["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    format!("{base}&sid={sid}")
}

#[tokio::test]
async fn a_session_may_not_retry_refused_connects_without_end() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let io = io();
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    io.ns("/", move |_, _| {
        counted.fetch_add(1, Ordering::SeqCst);
        async {
            Err(ConnectRefusal {
                message: "no".into(),
                data: None,
            })
        }
    });
    let addr = serve_io(&io).await;
    let http = reqwest::Client::new();
    let url = polling_session(&http, addr).await;
    let body = vec!["40"; 50].join("\x1e");
    let r = http.post(&url).body(body).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "ok");
    // The session ends (its queued refusals go with it)...
    let packets = poll_until_closed(&http, &url).await;
    assert!(packets.iter().all(|p| p.starts_with("44")), "{packets:?}");
    // ...after the handler was asked as often as the cap allows, not 50 times.
    let max = roomcast_socketio::socketio::MAX_REFUSED_CONNECTS as usize;
    assert_eq!(attempts.load(Ordering::SeqCst), max);
    // Over WebSocket: the same bound, then a close with a protocol error.
    let (mut c, _) = Sio::open(addr, "/socket.io/").await;
    for _ in 0..=max {
        c.send("40").await;
    }
    assert_eq!(c.closed().await, 1002);
    assert_eq!(attempts.load(Ordering::SeqCst), 2 * max);
}

#[tokio::test]
async fn a_flood_of_packets_closes_the_session_instead_of_queueing_without_bound() {
    let io = io();
    io.ns("/", |_, _| async { Ok(()) });
    let addr = serve_io(&io).await;
    let http = reqwest::Client::new();
    let url = polling_session(&http, addr).await;
    // 200 000 tiny packets in one payload (600 kB, under maxPayload): far more
    // waiting packets than four payloads' worth.
    let body = vec!["40"; 200_000].join("\x1e");
    let r = http.post(&url).body(body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let packets = poll_until_closed(&http, &url).await;
    assert!(packets.len() <= 1, "{packets:?}");
    // A client sending a payload of ordinary size is fine.
    let url = polling_session(&http, addr).await;
    let mut body = vec!["40".to_owned()];
    body.extend((0..2_000).map(|i| format!(r#"42["e",{i}]"#)));
    let r = http
        .post(&url)
        .body(body.join("\x1e"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "ok");
    let r = http.get(&url).send().await.unwrap();
    assert!(r.text().await.unwrap().starts_with("40{\"sid\""));
}
