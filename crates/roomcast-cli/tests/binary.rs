//! The `roomcast` binary as users run it: configuration errors, the listening
//! line, environment overrides and graceful shutdown on SIGTERM.

use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_roomcast");

/// `Command::output` with a wall-clock bound: a binary that should exit at
/// once but starts serving instead fails the test after 20 s, killed.
trait BoundedOutput {
    fn bounded_output(&mut self) -> std::io::Result<std::process::Output>;
}

impl BoundedOutput for Command {
    fn bounded_output(&mut self) -> std::io::Result<std::process::Output> {
        use std::io::Read;
        let mut child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let drain = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = r.read_to_end(&mut v);
                v
            })
        };
        let out = drain(Box::new(child.stdout.take().unwrap()));
        let err = drain(Box::new(child.stderr.take().unwrap()));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{self:?} did not exit within 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(std::process::Output {
            status,
            stdout: out.join().unwrap(),
            stderr: err.join().unwrap(),
        })
    }
}

fn temp_config(text: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let p = std::env::temp_dir().join(format!("roomcast-bin-{}-{n}.toml", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

struct Running {
    child: tokio::process::Child,
    addr: String,
}

impl Running {
    /// Sends SIGTERM, as a service manager stopping roomcast does.
    fn sigterm(&self) {
        let pid = self.child.id().expect("still running").to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
    }
}

/// Starts the binary and waits for its "listening on" line.
async fn spawn(args: &[&str], env: &[(&str, &str)]) -> Running {
    use tokio::io::AsyncBufReadExt;
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("roomcast printed its address in time")
        .unwrap()
        .expect("a first line");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    Running { child, addr }
}

#[test]
fn a_bad_config_file_names_the_key_and_line_and_exits_non_zero() {
    let path = temp_config("listen = \"127.0.0.1:0\"\n\n[limits]\nmax_conections = 5\n");
    let out = Command::new(BIN)
        .args(["serve", "--config", path.to_str().unwrap()])
        .bounded_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 4") && err.contains("max_conections"),
        "{err}"
    );

    let out = Command::new(BIN)
        .args(["serve", "--config", "/nonexistent.toml"])
        .bounded_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    let out = Command::new(BIN)
        .args(["serve"])
        .env("ROOMCAST_HEARTBEAT_INTERVAL_MS", "soon")
        .bounded_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ROOMCAST_HEARTBEAT_INTERVAL_MS"));
    let _ = std::fs::remove_file(path);
}

/// Values that parse but are wrong fail at load, in `config` and `serve`
/// alike, with exit 2 and the key and where it was set.
#[test]
fn invalid_values_are_configuration_errors_at_load() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(BIN);
        cmd.args(args).env("ROOMCAST_LISTEN", "127.0.0.1:0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.bounded_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for command in ["config", "serve"] {
        let (code, err) = run(&[command], &[("ROOMCAST_LOG", "verbose")]);
        assert_eq!(code, Some(2), "{command}: {err}");
        assert!(
            err.contains("configuration error: ROOMCAST_LOG: log: \"verbose\""),
            "{err}"
        );
        for alg in ["none", "hs256"] {
            let (code, err) = run(&[command], &[("ROOMCAST_AUTH_JWT_ALGORITHM", alg)]);
            assert_eq!(code, Some(2), "{command}: {err}");
            assert!(
                err.contains(
                    "configuration error: ROOMCAST_AUTH_JWT_ALGORITHM: auth.jwt.algorithm"
                ),
                "{err}"
            );
        }
    }
    let (code, err) = run(&["serve", "--log", "loud"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--log: log:"), "{err}");
    // RUST_LOG overrides `log`, and is checked the same way.
    let (code, err) = run(&["serve"], &[("RUST_LOG", "verbose")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("configuration error: RUST_LOG"), "{err}");
    // Key files are read at start: a missing one is a configuration error too.
    let (code, err) = run(
        &["serve", "--auth", "token"],
        &[
            ("ROOMCAST_AUTH_JWT_ALGORITHM", "RS256"),
            ("ROOMCAST_AUTH_JWT_PUBLIC_KEY_FILE", "/nonexistent/key.pem"),
        ],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("configuration error: auth.jwt: cannot read /nonexistent/key.pem"),
        "{err}"
    );
}

/// `roomcast` with flags and no command serves, on 8700 unless told otherwise
/// (beside Django's runserver on 8000).
#[tokio::test]
async fn no_command_means_serve() {
    let out = Command::new(BIN).arg("config").bounded_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("listen = \"127.0.0.1:8700\""), "{text}");
    let mut bare = spawn(&["--listen", "127.0.0.1:0"], &[]).await;
    let mut env = spawn(&[], &[("ROOMCAST_LISTEN", "127.0.0.1:0")]).await;
    for r in [&bare, &env] {
        let body = reqwest::get(format!("http://{}/healthz", r.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, r#"{"status":"ok"}"#);
    }
    let _ = bare.child.kill().await;
    let _ = env.child.kill().await;
}

/// `roomcast config` masks secrets unless asked for them.
#[test]
fn config_masks_secrets() {
    let path = temp_config(
        "[api]\nkey = \"api-key-0123456789\"\nkeys = [{key = \"publisher-key\", scope = \"publish\"}]\n[auth.jwt]\nsecret = \"jwt-secret-abcdefgh\"\n[proxy]\nsecret = \"backend-secret\"\n",
    );
    let out = Command::new(BIN)
        .args(["config", "--config", path.to_str().unwrap()])
        .bounded_output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for secret in [
        "api-key-01",
        "publisher-key",
        "jwt-secret",
        "backend-secret",
    ] {
        assert!(!text.contains(secret), "{secret} printed: {text}");
    }
    assert!(
        text.contains("key = \"****6789 (18 chars, masked)\""),
        "{text}"
    );
    assert!(
        text.contains("secret = \"****efgh (19 chars, masked)\""),
        "{text}"
    );
    let _ = std::fs::remove_file(path);
}

#[test]
fn flags_win_over_environment_and_file() {
    let path = temp_config("[api]\nkey = \"file\"\n[limits]\nmax_connections = 7\n");
    let out = Command::new(BIN)
        .args([
            "config",
            "--config",
            path.to_str().unwrap(),
            "--api-key",
            "flag",
            "--show-secrets",
        ])
        .env("ROOMCAST_LIMITS_MAX_CONNECTIONS", "9")
        .env("ROOMCAST_API_KEY", "env")
        .bounded_output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("key = \"flag\""), "{text}");
    assert!(text.contains("max_connections = 9"), "{text}");
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn sigterm_closes_clients_with_4000_and_exits_zero() {
    let mut server = spawn(
        &["serve", "--listen", "127.0.0.1:0", "--api-key", "k"],
        &[("ROOMCAST_SHUTDOWN_DRAIN_MS", "3000")],
    )
    .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr))
        .await
        .unwrap();
    let welcome = ws.next().await.unwrap().unwrap();
    assert!(welcome.to_text().unwrap().contains("welcome"));
    // The API key from the flag is in force.
    let status = reqwest::Client::new()
        .get(format!("http://{}/api/stats", server.addr))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);

    server.sigterm();
    let mut disconnect = None;
    let mut code = None;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        match m {
            Message::Text(t) => {
                disconnect = Some(serde_json::from_str::<serde_json::Value>(t.as_str()).unwrap())
            }
            Message::Close(f) => {
                code = f.map(|f| u16::from(f.code));
                let _ = ws.close(None).await;
                break;
            }
            _ => {}
        }
    }
    assert_eq!(code, Some(4000));
    assert_eq!(disconnect.unwrap()["code"], 4000);
    let status = tokio::time::timeout(Duration::from_secs(10), server.child.wait())
        .await
        .expect("roomcast exited in time")
        .unwrap();
    assert!(status.success(), "{status:?}");
    // New connections are refused once it is gone.
    assert!(tokio::net::TcpStream::connect(&server.addr).await.is_err());
    let _ = ws.send(Message::text("{}")).await;
}

/// One HTTP/1.1 request on a kept-alive connection; returns the status and body.
async fn http_on(stream: &mut tokio::net::TcpStream, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!("GET {path} HTTP/1.1\r\nHost: roomcast\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "the connection closed without an answer");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let head = &text[..end];
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .expect("a content-length");
        if buf.len() >= end + 4 + len {
            let status = head[9..12].parse().unwrap();
            return (status, text[end + 4..end + 4 + len].to_owned());
        }
    }
}

/// During the drain the listener stays: load balancers see `/healthz` 503,
/// new WebSocket upgrades and Engine.IO handshakes get 503 `shutting_down`,
/// and a request on a kept-alive connection is answered; the clients get
/// 4000; a second signal ends the drain and the process exits 0.
#[tokio::test]
async fn during_the_drain_the_listener_answers_with_503s() {
    let mut server = spawn(
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("ROOMCAST_SHUTDOWN_DRAIN_MS", "60000"),
            ("ROOMCAST_SHUTDOWN_LINGER_MS", "60000"),
        ],
    )
    .await;
    let mut kept = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    let (status, body) = http_on(&mut kept, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr))
        .await
        .unwrap();
    assert!(ws
        .next()
        .await
        .unwrap()
        .unwrap()
        .to_text()
        .unwrap()
        .contains("welcome"));

    server.sigterm();
    let mut code = None;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        if let Message::Close(f) = m {
            code = f.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(code, Some(4000));

    // The client is gone; the node still answers, and says it is going.
    let (status, body) = http_on(&mut kept, "/healthz").await;
    assert_eq!(
        (status, body.as_str()),
        (503, r#"{"status":"shutting_down"}"#)
    );
    let http = reqwest::Client::new();
    let r = http
        .get(format!("http://{}/healthz", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    match tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            let body: serde_json::Value =
                serde_json::from_slice(resp.body().as_ref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "shutting_down");
        }
        other => panic!("expected a 503, got {other:?}"),
    }
    let r = http
        .get(format!(
            "http://{}/socket.io/?EIO=4&transport=polling",
            server.addr
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "shutting_down");

    // A second signal ends the drain now.
    server.sigterm();
    let status = tokio::time::timeout(Duration::from_secs(10), server.child.wait())
        .await
        .expect("roomcast exited in time")
        .unwrap();
    assert!(status.success(), "{status:?}");
}
