//! Runs the `embed` example and uses it as a client would.

use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::Message;

async fn next_json(
    ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> serde_json::Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame in time")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

#[tokio::test]
async fn the_embed_example_publishes_from_rust_routes_and_timers() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_embed"))
        .arg("127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = line.split("http://").nth(1).unwrap().trim().to_owned();

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    for room in ["order:42", "clock"] {
        ws.send(Message::text(format!(
            r#"{{"type":"join","room":"{room}","id":1}}"#
        )))
        .await
        .unwrap();
        assert_eq!(next_json(&mut ws).await["type"], "ack");
    }
    let r: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{addr}/orders/42/ship"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["notified"], 1);
    let (mut shipped, mut ticked) = (false, false);
    // The clock ticks every second, so each frame comes within the per-frame
    // bound; the deadline is what fails a missing "shipped".
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !(shipped && ticked) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no shipped status (shipped {shipped}, ticked {ticked}) within 20 s"
        );
        let m = next_json(&mut ws).await;
        match (m["room"].as_str(), m["event"].as_str()) {
            (Some("order:42"), Some("status")) => shipped = m["data"]["status"] == "shipped",
            (Some("clock"), Some("tick")) => ticked = m["data"].is_u64(),
            _ => {}
        }
    }
    child.kill().await.unwrap();
}
