//! Plain WebSocket group-chat peer (contract B): every text frame a client sends
//! is forwarded unchanged to every other connected client.
//!
//! This is the tokio-tungstenite chat example without the logging: one task per
//! connection and a shared map of per-connection unbounded senders (nothing is
//! ever dropped; a slow reader only grows its own queue). Each connection's
//! queue is drained by `StreamExt::forward`, which writes every queued message
//! and flushes the socket only when the queue is momentarily empty.
//!
//! Usage: peer-forwarder PORT   (or --port PORT)

use std::{
    collections::HashMap,
    io::Write,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use futures_channel::mpsc::{unbounded, UnboundedSender};
use futures_util::{future, pin_mut, StreamExt, TryStreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

type PeerMap = Arc<Mutex<HashMap<SocketAddr, UnboundedSender<Message>>>>;

fn port_from_args() -> u16 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let raw = match args.as_slice() {
        [flag, port, ..] if flag == "--port" => port.as_str(),
        [port, ..] => port.as_str(),
        [] => "3000",
    };
    raw.parse().expect("port must be a number")
}

async fn handle_connection(peers: PeerMap, stream: TcpStream, addr: SocketAddr) {
    stream.set_nodelay(true).ok();
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };

    let (tx, rx) = unbounded();
    peers.lock().unwrap().insert(addr, tx);

    let (outgoing, incoming) = ws.split();

    let broadcast_incoming = incoming.try_for_each(|msg| {
        if msg.is_text() {
            let peers = peers.lock().unwrap();
            for (_, tx) in peers.iter().filter(|(peer, _)| **peer != addr) {
                // Text payloads are reference-counted: the clone copies no bytes.
                tx.unbounded_send(msg.clone()).ok();
            }
        }
        future::ok(())
    });
    let receive_from_others = rx.map(Ok).forward(outgoing);

    pin_mut!(broadcast_incoming, receive_from_others);
    future::select(broadcast_incoming, receive_from_others).await;

    peers.lock().unwrap().remove(&addr);
}

#[tokio::main]
async fn main() {
    let port = port_from_args();
    let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    let addr = listener.local_addr().expect("local addr");

    println!("ready on {addr}");
    std::io::stdout().flush().ok();

    let peers = PeerMap::default();
    loop {
        if let Ok((stream, addr)) = listener.accept().await {
            tokio::spawn(handle_connection(peers.clone(), stream, addr));
        }
    }
}
