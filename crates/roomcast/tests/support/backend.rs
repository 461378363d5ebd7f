//! A scripted backend for the connect, subscribe and event proxies and the
//! webhooks: a real HTTP server on 127.0.0.1 port 0 that records every call
//! (path, headers, JSON body) and answers with what the test's script says.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::Value;
use tokio::sync::{mpsc, Semaphore};

use super::STEP;

/// One request roomcast made.
#[derive(Debug, Clone)]
pub struct Call {
    /// The path without its leading `/`: `connect`, `rpc`, ...
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Call {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How the backend answers one call.
pub enum Answer {
    /// A status and a JSON body.
    Json(u16, Value),
    /// A status and a body that is not JSON.
    Text(u16, &'static str),
    /// A redirect to `Location`.
    Redirect(u16, String),
    /// Never answers (roomcast's `proxy.timeout_ms` must end the call).
    Hang,
    /// Answers once the test opens the gate ([`Backend::release`]).
    Gated(Box<Answer>),
}

impl Answer {
    pub fn ok(v: Value) -> Answer {
        Answer::Json(200, v)
    }
}

type Script = dyn Fn(&Call) -> Answer + Send + Sync;

#[derive(Clone)]
struct Shared {
    script: Arc<Script>,
    calls: mpsc::UnboundedSender<Call>,
    gate: Arc<Semaphore>,
}

/// The running backend.
pub struct Backend {
    pub addr: SocketAddr,
    calls: mpsc::UnboundedReceiver<Call>,
    pending: VecDeque<Call>,
    gate: Arc<Semaphore>,
    task: tokio::task::JoinHandle<()>,
    /// Every call seen so far, in order of arrival (also those `next` returned).
    pub log: Arc<Mutex<Vec<Call>>>,
}

async fn handle(
    State(s): State<Shared>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = Call {
        path,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    let answer = (s.script)(&call);
    let _ = s.calls.send(call);
    respond(answer, &s.gate).await
}

async fn respond(answer: Answer, gate: &Semaphore) -> Response {
    let mut answer = answer;
    loop {
        return match answer {
            Answer::Json(status, v) => (
                StatusCode::from_u16(status).unwrap(),
                [("content-type", "application/json")],
                v.to_string(),
            )
                .into_response(),
            Answer::Text(status, t) => (StatusCode::from_u16(status).unwrap(), t).into_response(),
            Answer::Redirect(status, to) => (
                StatusCode::from_u16(status).unwrap(),
                [("location", to)],
                "",
            )
                .into_response(),
            Answer::Hang => std::future::pending().await,
            Answer::Gated(inner) => {
                gate.acquire().await.unwrap().forget();
                answer = *inner;
                continue;
            }
        };
    }
}

impl Backend {
    /// Starts a backend answering every call with `script(call)`.
    pub async fn start(script: impl Fn(&Call) -> Answer + Send + Sync + 'static) -> Backend {
        let (tx, rx) = mpsc::unbounded_channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(0));
        let logged = log.clone();
        let shared = Shared {
            script: Arc::new(move |c: &Call| {
                logged.lock().unwrap().push(c.clone());
                script(c)
            }),
            calls: tx,
            gate: gate.clone(),
        };
        let app = Router::new()
            .route("/{*path}", post(handle))
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Backend {
            addr,
            calls: rx,
            pending: VecDeque::new(),
            gate,
            task,
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    /// The next call to `path` (others are kept for later), within the step timeout.
    pub async fn next(&mut self, path: &str) -> Call {
        if let Some(i) = self.pending.iter().position(|c| c.path == path) {
            return self.pending.remove(i).unwrap();
        }
        loop {
            let c = tokio::time::timeout(STEP, self.calls.recv())
                .await
                .unwrap_or_else(|_| panic!("no call to /{path} within the step timeout"))
                .expect("backend running");
            if c.path == path {
                return c;
            }
            self.pending.push_back(c);
        }
    }

    /// How many calls to `path` arrived so far.
    pub fn count(&self, path: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.path == path)
            .count()
    }

    /// Lets `n` gated answers go.
    pub fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}
