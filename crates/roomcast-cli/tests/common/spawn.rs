//! `roomcast serve` as a child process, for the tests of this crate
//! (`cluster.rs`, `faults.rs`, `process.rs`): started on a free port, its
//! address read from its first line, killed when dropped.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

pub const BIN: &str = env!("CARGO_BIN_EXE_roomcast");

/// Starts `roomcast serve --listen 127.0.0.1:0 <args>` with `ROOMCAST_LOG=warn`
/// and `env`, and waits (10 s at most) for its "listening on http://..." line.
/// Its log goes to the file named by the environment variable `log_var`, if set.
pub async fn serve(
    args: &[&str],
    env: &[(&str, &str)],
    log_var: &str,
) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("ROOMCAST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(match std::env::var_os(log_var) {
            Some(p) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .unwrap(),
            ),
            None => Stdio::null(),
        })
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("the node printed its address in time")
        .unwrap()
        .expect("the node printed its address");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    (child, addr)
}
