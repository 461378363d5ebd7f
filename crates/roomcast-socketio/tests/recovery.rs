//! Connection-state recovery through the library API, driven by a raw client:
//! what a reconnecting client sends (`40{"pid","offset"}`) and gets back.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;

use roomcast_core::history::HistoryLimits;
use roomcast_core::room::RoomRules;
use roomcast_core::{Hub, HubConfig};
use roomcast_socketio::socketio::{Payload, SocketIo, SocketIoConfig};

async fn serve_io(io: &SocketIo) -> std::net::SocketAddr {
    serve(io.router("/socket.io/")).await
}

/// A server whose rooms keep history and whose sockets may recover. A new
/// socket gets data from its auth payload and joins rooms `a` and `b`; a
/// recovered one gets them back. `whoami` answers with what the socket has.
fn server() -> SocketIo {
    let rooms = RoomRules::default().with_history(HistoryLimits {
        size: 100,
        ttl: Duration::from_secs(60),
    });
    let hub = Hub::new(HubConfig {
        rooms,
        ..HubConfig::default()
    });
    let io = SocketIo::new(
        hub,
        SocketIoConfig {
            recovery: Some(Duration::from_secs(60)),
            ..SocketIoConfig::default()
        },
    );
    io.ns("/", |socket, auth| async move {
        if !socket.recovered() {
            let data = json!({"name": auth["name"]});
            socket.set_data(data.as_object().unwrap().clone()).unwrap();
            socket.join("a").await.unwrap();
            socket.join("b").await.unwrap();
        }
        socket.on("whoami", |socket, _, ack| async move {
            let mut rooms = socket.rooms();
            rooms.sort();
            let me =
                json!({"data": socket.data(), "rooms": rooms, "recovered": socket.recovered()});
            ack.unwrap().send(Payload::json(&me)).unwrap();
        });
        Ok(())
    });
    io
}

/// The next EVENT's name and every argument.
async fn event(c: &mut Sio) -> (String, Vec<Value>) {
    let p = c.recv_sio().await;
    let body = p
        .strip_prefix('2')
        .unwrap_or_else(|| panic!("expected an event, got {p}"));
    let mut args: Vec<Value> = serde_json::from_str(body).unwrap();
    let name = args.remove(0).as_str().unwrap().to_owned();
    (name, args)
}

fn connected(answer: &str) -> Value {
    let body = answer
        .strip_prefix('0')
        .unwrap_or_else(|| panic!("not a CONNECT reply: {answer}"));
    serde_json::from_str(body).unwrap()
}

async fn whoami(c: &mut Sio) -> Value {
    c.send(r#"421["whoami"]"#).await;
    let p = c.recv_sio().await;
    let args: Vec<Value> = serde_json::from_str(p.strip_prefix("31").unwrap()).unwrap();
    args[0].clone()
}

#[tokio::test]
async fn a_recovered_socket_gets_its_id_data_rooms_and_what_it_missed_across_rooms_in_order() {
    let io = server();
    let addr = serve_io(&io).await;
    let (mut c1, answer) = Sio::connect(addr, "/", json!({"name": "ann"})).await;
    let first = connected(&answer);
    let pid = first["pid"]
        .as_str()
        .expect("a pid when recovery is on")
        .to_owned();
    // Publications alternate between the two rooms.
    for n in 1..=6 {
        let room = if n % 2 == 1 { "a" } else { "b" };
        io.emit_to_room(room, "n", &n).await.unwrap();
    }
    let mut offsets = Vec::new();
    for n in 1..=6 {
        let (name, args) = event(&mut c1).await;
        assert_eq!((name.as_str(), &args[0]), ("n", &json!(n)));
        offsets.push(args.last().unwrap().as_str().unwrap().to_owned());
    }
    // The client got only the first three before the cut; more come meanwhile.
    drop(c1);
    io.emit_to_room("b", "n", &7).await.unwrap();
    io.emit_to_room("a", "n", &8).await.unwrap();
    let (mut c2, answer) = Sio::connect(
        addr,
        "/",
        json!({"pid": pid, "offset": offsets[2], "name": "x"}),
    )
    .await;
    let again = connected(&answer);
    assert_eq!(again["sid"], first["sid"], "the socket id is kept");
    assert_eq!(
        again["pid"], first["pid"],
        "the same pid tells the client it recovered"
    );
    for n in 4..=8 {
        let (_, args) = event(&mut c2).await;
        assert_eq!(args[0], json!(n), "missed events in publication order");
    }
    let me = whoami(&mut c2).await;
    assert_eq!(
        me,
        json!({"data": {"name": "ann"}, "rooms": ["a", "b"], "recovered": true})
    );
    io.emit_to_room("a", "n", &9).await.unwrap();
    assert_eq!(event(&mut c2).await.1[0], json!(9));

    // An offset that is not one of ours (the last argument of some other
    // event) tells nothing: a fresh socket.
    drop(c2);
    let (mut c3, answer) = Sio::connect(
        addr,
        "/",
        json!({"pid": pid, "offset": "hello", "name": "bo"}),
    )
    .await;
    let fresh = connected(&answer);
    assert_ne!(fresh["pid"], first["pid"]);
    assert_ne!(fresh["sid"], first["sid"]);
    let me = whoami(&mut c3).await;
    assert_eq!(me["recovered"], false);
    assert_eq!(me["data"], json!({"name": "bo"}));
}

#[tokio::test]
async fn an_unknown_pid_and_a_server_without_recovery_give_fresh_sockets() {
    let io = server();
    let addr = serve_io(&io).await;
    let (mut c, answer) = Sio::connect(
        addr,
        "/",
        json!({"pid": "nobody", "offset": "3", "name": "cy"}),
    )
    .await;
    let fresh = connected(&answer);
    assert_ne!(fresh["pid"], "nobody");
    assert_eq!(whoami(&mut c).await["recovered"], false);
    // Without recovery: no pid, and events carry no offset.
    let plain = SocketIo::new(
        Hub::new(HubConfig {
            rooms: RoomRules::default().with_history(HistoryLimits {
                size: 10,
                ttl: Duration::from_secs(60),
            }),
            ..HubConfig::default()
        }),
        SocketIoConfig::default(),
    );
    plain.ns("/", |socket, _| async move {
        socket.join("a").await.unwrap();
        Ok(())
    });
    let addr = serve_io(&plain).await;
    let (mut d, answer) = Sio::connect(addr, "/", json!({})).await;
    assert!(connected(&answer).get("pid").is_none(), "{answer}");
    plain.emit_to_room("a", "n", &1).await.unwrap();
    assert_eq!(event(&mut d).await.1, vec![json!(1)]);
}
