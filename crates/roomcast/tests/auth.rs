//! Authentication over real sockets: JWT connection tokens (HMAC, RSA, EC,
//! JWKS; expiry, refresh, forgeries) and the connect proxy against a real
//! HTTP backend, for native and Socket.IO clients.

mod support;

use std::path::PathBuf;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::backend::{Answer, Backend};
use support::*;

#[path = "../../roomcast-socketio/tests/support/mod.rs"]
mod sio;

use roomcast::config::{Anonymous, AuthMode};
use roomcast::roomcast_core;

const SECRET: &str = "test-secret-never-used-elsewhere";

fn token_config() -> roomcast::Config {
    let mut c = config();
    c.auth.mode = AuthMode::Token;
    c.auth.jwt.secret = SECRET.to_owned();
    c
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

/// A token signed with a fixture private key, with an optional `kid`.
fn signed(alg: Algorithm, private: &str, kid: Option<&str>, claims: &Value) -> String {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem(private)).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem(private)).unwrap(),
        other => panic!("no fixture key for {other:?}"),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// The close a native client gets for a token presented at the upgrade.
/// An `auth` command without credentials says which one the mode wants.
#[tokio::test]
async fn an_empty_auth_command_names_what_the_mode_wants() {
    for (cfg, message) in [
        (config(), "missing field `user` (or `token`)"),
        (token_config(), "missing field `token`"),
    ] {
        let srv = start(cfg).await;
        let mut c = srv.client().await;
        c.welcome().await;
        let e = c.request(json!({"type": "auth"})).await;
        assert_eq!(
            (
                e["type"].as_str(),
                e["code"].as_str(),
                e["message"].as_str()
            ),
            (Some("error"), Some("bad_request"), Some(message)),
            "{e}"
        );
    }
}

async fn close_for(srv: &TestServer, token: &str) -> (Option<u16>, String) {
    let c = Client::connect(srv.addr, &format!("/ws?token={token}")).await;
    let closed = c.closed().await;
    let reason = closed
        .disconnect
        .map(|d| d["reason"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    (closed.code, reason)
}

async fn welcome_for(srv: &TestServer, token: &str) -> Value {
    let mut c = Client::connect(srv.addr, &format!("/ws?token={token}")).await;
    c.welcome().await
}

#[tokio::test]
async fn a_signed_token_authenticates_at_the_upgrade_in_a_header_or_by_command() {
    let srv = start(token_config()).await;
    let exp = now() + 600;
    let t = hs256(
        SECRET,
        &json!({"sub": "alice", "exp": exp, "rooms": ["news"], "info": {"name": "Alice"}}),
    );
    let mut alice = Client::connect(srv.addr, &format!("/ws?token={t}")).await;
    let w = alice.welcome().await;
    assert_eq!(
        (&w["user"], &w["expires_at"]),
        (&json!("alice"), &json!(exp))
    );
    // The `rooms` claim joined her; the `info` claim shows in presence.
    let p = alice
        .request(json!({"type": "presence", "room": "news"}))
        .await;
    assert_eq!(
        p["users"],
        json!([{"user": "alice", "connections": 1, "info": {"name": "Alice"}}]),
        "{p}"
    );

    let t = hs256(SECRET, &json!({"sub": "bob"}));
    let mut bob = srv
        .client_with("/ws", &[("authorization", &format!("Bearer {t}"))])
        .await;
    let w = bob.welcome().await;
    assert_eq!(
        (&w["user"], &w["expires_at"]),
        (&json!("bob"), &Value::Null)
    );

    // After connecting: nothing but auth until then, and no client-chosen ids.
    let mut carol = srv.client().await;
    assert_eq!(carol.welcome().await["user"], Value::Null);
    let e = carol.request(json!({"type": "join", "room": "news"})).await;
    assert_eq!(e["code"], "unauthenticated", "{e}");
    let e = carol
        .request(json!({"type": "auth", "user": "carol"}))
        .await;
    assert_eq!(e["code"], "auth_failed", "{e}");
    assert!(e["message"].as_str().unwrap().contains("open mode"), "{e}");
    let t = hs256(SECRET, &json!({"sub": "carol", "rooms": ["news"]}));
    let ack = carol.request(json!({"type": "auth", "token": t})).await;
    assert_eq!(
        (&ack["type"], &ack["user"]),
        (&json!("ack"), &json!("carol"))
    );
    let p = carol
        .request(json!({"type": "presence", "room": "news"}))
        .await;
    assert_eq!(p["connections"], 2, "{p}");
    srv.stop().await;
}

#[tokio::test]
async fn forged_expired_and_malformed_tokens_are_refused() {
    let srv = start(token_config()).await;
    let good = hs256(SECRET, &json!({"sub": "alice"}));
    // The signature of a good token over a payload naming someone else.
    let tampered = {
        let parts: Vec<&str> = good.split('.').collect();
        let admin = hs256(SECRET, &json!({"sub": "admin"}));
        let payload = admin.split('.').nth(1).unwrap().to_owned();
        format!("{}.{payload}.{}", parts[0], parts[2])
    };
    let cases = [
        (
            "expired",
            hs256(SECRET, &json!({"sub": "a", "exp": now() - 10})),
            4504,
            "token expired",
        ),
        (
            "another secret",
            hs256("guessed", &json!({"sub": "a"})),
            4502,
            "bad signature",
        ),
        ("tampered payload", tampered, 4502, "bad signature"),
        (
            "another HMAC size",
            sign(Algorithm::HS384, SECRET.as_bytes(), &json!({"sub": "a"})),
            4502,
            "HS384 is not accepted",
        ),
        (
            "alg none",
            // {"alg":"none","typ":"JWT"}.{"sub":"admin"}.
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhZG1pbiJ9.".to_owned(),
            4502,
            "invalid token",
        ),
        (
            "not valid yet",
            hs256(SECRET, &json!({"sub": "a", "nbf": now() + 600})),
            4502,
            "not valid yet",
        ),
        (
            "no sub",
            hs256(SECRET, &json!({"name": "a"})),
            4502,
            "invalid token",
        ),
        ("garbage", "garbage".to_owned(), 4502, "malformed"),
    ];
    for (what, token, code, reason) in &cases {
        let (got, why) = close_for(&srv, token).await;
        assert_eq!(got, Some(*code), "{what}: {why}");
        assert!(why.contains(reason), "{what}: {why:?} lacks {reason:?}");
    }
    // The same tokens by command are errors, and the connection stays usable.
    let mut c = srv.client().await;
    c.welcome().await;
    for (what, token, code, _) in &cases {
        let e = c.request(json!({"type": "auth", "token": token})).await;
        let want = if *code == 4504 {
            "token_expired"
        } else {
            "auth_failed"
        };
        assert_eq!(
            (&e["type"], &e["code"]),
            (&json!("error"), &json!(want)),
            "{what}: {e}"
        );
    }
    let ack = c.request(json!({"type": "auth", "token": good})).await;
    assert_eq!(ack["user"], "alice");
    // Nobody was let in as anyone else.
    let (_, u) = srv.get("/api/users/admin").await;
    assert_eq!(u["online"], false);
    assert_eq!(
        srv.metric(r#"roomcast_auth_failures_total{reason="expired"}"#)
            .await,
        2.0
    );
    assert_eq!(
        srv.metric(r#"roomcast_auth_failures_total{reason="refused"}"#)
            .await,
        14.0
    );
    srv.stop().await;
}

#[tokio::test]
async fn connections_that_never_authenticate_are_closed_with_4501() {
    let mut cfg = token_config();
    cfg.auth.timeout_ms = 1_000;
    let srv = start(cfg).await;
    let mut idle = srv.client().await;
    idle.welcome().await;
    let closed = idle.closed().await;
    assert_eq!(closed.code, Some(4501));
    assert_eq!(closed.disconnect.unwrap()["reconnect"], false);
    assert_eq!(
        srv.metric(r#"roomcast_auth_failures_total{reason="timeout"}"#)
            .await,
        1.0
    );
    srv.stop().await;
}

#[tokio::test]
async fn rsa_ec_and_jwks_keys_verify_only_their_own_algorithm() {
    let claims = json!({"sub": "alice"});
    let rsa_public = String::from_utf8(pem("rsa-public.pem")).unwrap();
    let rs = signed(Algorithm::RS256, "rsa-private.pem", None, &claims);
    let es = signed(Algorithm::ES256, "ec-private.pem", None, &claims);
    // The "algorithm confusion" forgery: HMAC keyed with the public key.
    let confused = sign(Algorithm::HS256, rsa_public.as_bytes(), &claims);

    let mut cfg = token_config();
    cfg.auth.jwt.secret.clear();
    cfg.auth.jwt.algorithm = "RS256".into();
    cfg.auth.jwt.public_key = rsa_public.clone();
    let srv = start(cfg).await;
    assert_eq!(welcome_for(&srv, &rs).await["user"], "alice");
    for forged in [&confused, &es] {
        assert_eq!(close_for(&srv, forged).await.0, Some(4502));
    }
    srv.stop().await;

    let mut cfg = token_config();
    cfg.auth.jwt.secret.clear();
    cfg.auth.jwt.algorithm = "ES256".into();
    cfg.auth.jwt.public_key_file = fixture("ec-public.pem").display().to_string();
    let srv = start(cfg).await;
    assert_eq!(welcome_for(&srv, &es).await["user"], "alice");
    assert_eq!(close_for(&srv, &rs).await.0, Some(4502));
    srv.stop().await;

    // A JWKS with one RSA and one EC key: the token's kid picks the key, and
    // only that key's `alg` verifies.
    let jwk = |alg: Algorithm, key: EncodingKey, kid: &str| {
        let mut k = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, alg).unwrap();
        k.common.key_id = Some(kid.to_owned());
        k
    };
    let set = jsonwebtoken::jwk::JwkSet {
        keys: vec![
            jwk(
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(&pem("rsa-private.pem")).unwrap(),
                "rsa-1",
            ),
            jwk(
                Algorithm::ES256,
                EncodingKey::from_ec_pem(&pem("ec-private.pem")).unwrap(),
                "ec-1",
            ),
        ],
    };
    let path = std::env::temp_dir().join(format!("roomcast-test-jwks-{}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_vec(&set).unwrap()).unwrap();
    let mut cfg = token_config();
    cfg.auth.jwt.secret.clear();
    cfg.auth.jwt.jwks_file = path.display().to_string();
    let srv = start(cfg).await;
    let by = |alg, key, kid| signed(alg, key, Some(kid), &claims);
    assert_eq!(
        welcome_for(&srv, &by(Algorithm::RS256, "rsa-private.pem", "rsa-1")).await["user"],
        "alice"
    );
    assert_eq!(
        welcome_for(&srv, &by(Algorithm::ES256, "ec-private.pem", "ec-1")).await["user"],
        "alice"
    );
    let mut confused_kid = Header::new(Algorithm::HS256);
    confused_kid.kid = Some("rsa-1".into());
    let confused_kid = jsonwebtoken::encode(
        &confused_kid,
        &claims,
        &EncodingKey::from_secret(rsa_public.as_bytes()),
    )
    .unwrap();
    for forged in [
        by(Algorithm::RS256, "rsa-private.pem", "ec-1"),
        by(Algorithm::ES256, "ec-private.pem", "no-such-key"),
        confused_kid,
    ] {
        let (code, why) = close_for(&srv, &forged).await;
        assert_eq!(code, Some(4502), "{why}");
    }
    srv.stop().await;
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn an_expiring_token_is_refreshed_or_its_connection_closed_with_4504() {
    let srv = start(token_config()).await;
    // Both tokens expire four seconds from now (`exp` is in seconds): time for
    // the three refreshes below on a loaded machine.
    let soon = now() + 4;
    let short = |sub: &str| hs256(SECRET, &json!({"sub": sub, "exp": soon}));
    let mut kept = Client::connect(srv.addr, &format!("/ws?token={}", short("alice"))).await;
    assert_eq!(kept.welcome().await["expires_at"], soon);
    let lapsed = Client::connect(srv.addr, &format!("/ws?token={}", short("bob"))).await;

    // A token for someone else does not refresh; the user's own does.
    let e = kept
        .request(json!({"type": "refresh", "token": hs256(SECRET, &json!({"sub": "mallory", "exp": now() + 3600}))}))
        .await;
    assert_eq!(e["code"], "auth_failed", "{e}");
    let e = kept
        .request(json!({"type": "refresh", "token": hs256(SECRET, &json!({"sub": "alice", "exp": now() - 1}))}))
        .await;
    assert_eq!(e["code"], "token_expired", "{e}");
    let later = now() + 3600;
    let ack = kept
        .request(json!({"type": "refresh", "token": hs256(SECRET, &json!({"sub": "alice", "exp": later}))}))
        .await;
    assert_eq!(
        (&ack["type"], &ack["expires_at"]),
        (&json!("ack"), &json!(later)),
        "{ack}"
    );

    let closed = lapsed.closed().await;
    assert_eq!(closed.code, Some(4504));
    assert_eq!(closed.disconnect.unwrap()["reconnect"], false);
    // Past the first expiry, the refreshed connection still works.
    assert!(now() >= soon);
    kept.join("after").await;

    // Socket.IO: the same, through the roomcast:refresh event.
    let soon = now() + 4;
    let short = |sub: &str| hs256(SECRET, &json!({"sub": sub, "exp": soon}));
    let (mut sio_kept, answer) =
        sio::Sio::connect(srv.addr, "/", json!({"token": short("carol")})).await;
    assert!(answer.starts_with("0{"), "{answer}");
    let (mut sio_lapsed, answer) =
        sio::Sio::connect(srv.addr, "/", json!({"token": short("dan")})).await;
    assert!(answer.starts_with("0{"), "{answer}");
    let refresh = json!(["roomcast:refresh", {"token": hs256(SECRET, &json!({"sub": "carol", "exp": later}))}]);
    sio_kept.send(&format!("421{refresh}")).await;
    assert_eq!(
        sio_kept.recv_sio().await,
        format!(r#"31[{{"expires_at":{later}}}]"#)
    );
    // A namespace DISCONNECT, then the close with the code.
    assert_eq!(sio_lapsed.recv_sio().await, "1");
    assert_eq!(sio_lapsed.closed().await, 4504);
    assert!(now() >= soon);
    let (_, u) = srv.get("/api/users/carol").await;
    assert_eq!(u["online"], true);
    assert_eq!(
        srv.metric(r#"roomcast_auth_failures_total{reason="expired"}"#)
            .await,
        3.0
    );
    srv.stop().await;
}

#[tokio::test]
async fn socketio_clients_present_tokens_in_the_connect_payload_or_a_header() {
    let srv = start(token_config()).await;
    let addr = srv.addr;
    let t = hs256(SECRET, &json!({"sub": "alice", "rooms": ["news"]}));
    let (_alice, answer) = sio::Sio::connect(addr, "/", json!({"token": t})).await;
    assert!(answer.starts_with("0{\"sid\""), "{answer}");
    let (_, p) = srv.get("/api/presence/news").await;
    assert_eq!(p["users"], json!([{"user": "alice", "connections": 1}]));

    let t = hs256(SECRET, &json!({"sub": "bob"}));
    let bearer = format!("Bearer {t}");
    let (_bob, answer) =
        sio::Sio::connect_with(addr, "/", json!({}), &[("authorization", &bearer)]).await;
    assert!(answer.starts_with("0{\"sid\""), "{answer}");
    let (_, u) = srv.get("/api/users/bob").await;
    assert_eq!(u["online"], true);

    let refused = |auth: Value| async move {
        let (_, answer) = sio::Sio::connect(addr, "/", auth).await;
        let e: Value = serde_json::from_str(answer.strip_prefix('4').unwrap_or("null"))
            .unwrap_or_else(|_| panic!("a CONNECT_ERROR, got {answer}"));
        (
            e["data"]["code"].as_str().unwrap_or_default().to_owned(),
            e["message"].as_str().unwrap_or_default().to_owned(),
        )
    };
    let expired = hs256(SECRET, &json!({"sub": "a", "exp": now() - 5}));
    assert_eq!(refused(json!({"token": expired})).await.0, "token_expired");
    let forged = hs256("guessed", &json!({"sub": "a"}));
    let (code, message) = refused(json!({"token": forged})).await;
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("auth_failed", "invalid token: bad signature")
    );
    assert_eq!(refused(json!({})).await.0, "unauthenticated");
    let (code, message) = refused(json!({"user": "admin"})).await;
    assert_eq!(code, "auth_failed", "{message}");
    assert!(message.contains("open mode only"), "{message}");
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// The connect proxy

/// Answers the connect proxy by the `sessionid` cookie, like a web framework's session.
fn sessions(call: &support::backend::Call) -> Answer {
    let cookie = call.header("cookie").unwrap_or_default().to_owned();
    let session = cookie
        .split("; ")
        .find_map(|c| c.strip_prefix("sessionid="))
        .unwrap_or_default();
    if call.body["data"]["ticket"] == "abc" {
        return Answer::ok(json!({"user": "99"}));
    }
    match session {
        "alice" => Answer::ok(json!({
            "user": "42", "rooms": ["team:1"], "session": {"plan": "pro"},
            "info": {"name": "Alice"}, "expires_at": now() + 600,
        })),
        "numeric" => Answer::ok(json!({"user": 7})),
        "refused" => Answer::ok(json!({"error": {"code": "banned", "message": "you are banned"}})),
        "forbidden" => Answer::Text(403, "no"),
        "crash" => Answer::Text(500, "Internal Server Error"),
        "garbage" => Answer::Text(200, "<html>a login page</html>"),
        "typo" => Answer::ok(json!({"usr": "a"})),
        "slow" => Answer::Hang,
        _ => Answer::ok(json!({"user": null})),
    }
}

fn proxy_config(backend: &Backend) -> roomcast::Config {
    let mut c = config();
    c.auth.mode = AuthMode::Proxy;
    c.proxy.connect_url = backend.url("connect");
    c.proxy.secret = "proxy-secret".into();
    c.proxy.timeout_ms = 1_500;
    // Asking for the secret and framing headers to be forwarded changes nothing.
    c.proxy
        .forward_headers
        .extend(["x-roomcast-secret", "host", "content-length"].map(str::to_owned));
    c
}

#[tokio::test]
async fn the_connect_proxy_decides_who_a_native_connection_is() {
    let mut backend = Backend::start(sessions).await;
    let srv = start(proxy_config(&backend)).await;
    let mut alice = srv
        .client_with(
            "/ws",
            &[
                // Two Cookie headers (as HTTP/2 clients send) reach the backend as one.
                ("cookie", "sessionid=alice"),
                ("cookie", "csrftoken=t"),
                ("user-agent", "test-browser/1"),
                ("x-roomcast-secret", "forged-by-the-client"),
                ("x-roomcast-peer", "203.0.113.9:1"),
            ],
        )
        .await;
    let w = alice.welcome().await;
    assert_eq!(w["user"], "42");
    assert!(w["expires_at"].as_u64().unwrap() > now());

    let call = backend.next("connect").await;
    assert_eq!(call.header("x-roomcast-secret"), Some("proxy-secret"));
    assert_eq!(call.header("cookie"), Some("sessionid=alice; csrftoken=t"));
    assert_eq!(call.headers.get_all("cookie").iter().count(), 1);
    assert_eq!(call.header("user-agent"), Some("test-browser/1"));
    assert_eq!(call.header("host"), Some(backend.addr.to_string().as_str()));
    assert_eq!(call.headers.get_all("x-roomcast-secret").iter().count(), 1);
    assert_eq!(call.header("x-roomcast-peer"), None);
    let b = &call.body;
    assert_eq!(
        (&b["conn"], &b["transport"], &b["token"], &b["data"]),
        (&w["conn"], &json!("websocket"), &Value::Null, &Value::Null)
    );
    assert!(
        b["remote_addr"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{b}"
    );

    // The answer's rooms, session data and info.
    let p = alice
        .request(json!({"type": "presence", "room": "team:1"}))
        .await;
    assert_eq!(
        p["users"],
        json!([{"user": "42", "connections": 1, "info": {"name": "Alice"}}])
    );
    let (_, info) = srv
        .get(&format!("/api/connections/{}", w["conn"].as_str().unwrap()))
        .await;
    assert_eq!(info["session"], json!({"plan": "pro"}), "{info}");
    // The backend's session keys are its own; the client may add others.
    let e = alice
        .request(json!({"type": "session", "data": {"plan": "enterprise"}}))
        .await;
    assert_eq!(
        (&e["code"], &e["message"]),
        (
            &json!("forbidden"),
            &json!("session key `plan` is set by the server")
        )
    );
    let e = alice
        .request(json!({"type": "session", "data": {"theme": "dark", "plan": null}}))
        .await;
    assert_eq!(e["code"], "forbidden", "{e}");
    let ack = alice
        .request(json!({"type": "session", "data": {"theme": "dark"}}))
        .await;
    assert_eq!(
        ack["session"],
        json!({"plan": "pro", "theme": "dark"}),
        "{ack}"
    );
    let mut seven = srv
        .client_with("/ws", &[("cookie", "sessionid=numeric")])
        .await;
    assert_eq!(seven.welcome().await["user"], "7");

    let cases = [
        ("refused", 4502, "you are banned"),
        ("forbidden", 4502, "refused by the backend (HTTP 403)"),
        ("anonymous", 4502, "anonymous connections are not allowed"),
        ("crash", 4004, "authentication backend unavailable"),
        ("garbage", 4004, "authentication backend unavailable"),
        ("typo", 4004, "authentication backend unavailable"),
        ("slow", 4004, "authentication backend unavailable"),
    ];
    for (session, code, reason) in cases {
        let cookie = format!("sessionid={session}");
        let c = srv.client_with("/ws", &[("cookie", &cookie)]).await;
        let closed = c.closed().await;
        assert_eq!(closed.code, Some(code), "{session}");
        let d = closed.disconnect.unwrap();
        assert_eq!(d["reason"], reason, "{session}");
        assert_eq!(d["reconnect"], code == 4004, "{session}");
    }
    // A connect call that reached the backend is not retried, whatever it answered.
    assert_eq!(backend.count("connect"), 2 + cases.len());
    assert_eq!(
        srv.metric(r#"roomcast_proxy_requests_total{kind="connect",result="timeout"}"#)
            .await,
        1.0
    );
    assert_eq!(
        srv.metric(r#"roomcast_auth_failures_total{reason="unavailable"}"#)
            .await,
        4.0
    );
    srv.stop().await;
}

#[tokio::test]
async fn the_connect_proxy_answers_for_socketio_clients_over_both_transports() {
    let mut backend = Backend::start(sessions).await;
    let srv = start(proxy_config(&backend)).await;
    let (_alice, answer) = sio::Sio::connect_with(
        srv.addr,
        "/",
        json!({"ticket": "ignored", "theme": "dark"}),
        &[("cookie", "sessionid=alice")],
    )
    .await;
    assert!(answer.starts_with("0{\"sid\""), "{answer}");
    let call = backend.next("connect").await;
    assert_eq!(
        (
            &call.body["transport"],
            &call.body["namespace"],
            &call.body["data"]
        ),
        (
            &json!("socketio"),
            &json!("/"),
            &json!({"ticket": "ignored", "theme": "dark"})
        )
    );
    assert_eq!(call.header("cookie"), Some("sessionid=alice"));
    let (_, p) = srv.get("/api/presence/team:1").await;
    assert_eq!(p["users"][0]["user"], "42", "{p}");

    for (session, code, message) in [
        ("refused", "auth_failed", "you are banned"),
        (
            "crash",
            "backend_unavailable",
            "authentication backend unavailable",
        ),
        (
            "slow",
            "backend_unavailable",
            "authentication backend unavailable",
        ),
    ] {
        let cookie = format!("sessionid={session}");
        let (_, answer) =
            sio::Sio::connect_with(srv.addr, "/", json!({}), &[("cookie", &cookie)]).await;
        let e: Value = serde_json::from_str(answer.strip_prefix('4').unwrap()).unwrap();
        assert_eq!(
            (e["data"]["code"].as_str(), e["message"].as_str()),
            (Some(code), Some(message)),
            "{session}: {answer}"
        );
    }

    // Long-polling: the cookie of the handshake request reaches the backend too.
    let polling = Polling::open(&srv, &[("cookie", "sessionid=numeric")]).await;
    assert_eq!(polling.post("40").await, (200, "ok".to_owned()));
    let (_, connected) = polling.poll().await;
    assert!(connected.starts_with("40{\"sid\""), "{connected}");
    let (_, u) = srv.get("/api/users/7").await;
    assert_eq!(u["online"], true, "{u}");
    srv.stop().await;
}

#[tokio::test]
async fn with_anonymous_allowed_the_proxy_also_takes_an_auth_payload_and_tokens() {
    let mut backend = Backend::start(sessions).await;
    let mut cfg = proxy_config(&backend);
    cfg.auth.anonymous = Anonymous::Allow;
    let srv = start(cfg).await;
    // No session: the backend says anonymous, which this server lets in.
    let mut c = srv.client().await;
    assert_eq!(c.welcome().await["user"], Value::Null);
    backend.next("connect").await;
    let e = c
        .request(json!({"type": "auth", "user": "self-chosen"}))
        .await;
    assert_eq!(e["code"], "auth_failed", "{e}");
    let ack = c
        .request(json!({"type": "auth", "data": {"ticket": "abc"}}))
        .await;
    assert_eq!(ack["user"], "99", "{ack}");
    let call = backend.next("connect").await;
    assert_eq!(call.body["data"], json!({"ticket": "abc"}));

    // A token goes to the backend as it is: the backend checks it.
    let mut t = Client::connect(srv.addr, "/ws?token=opaque-ticket").await;
    t.welcome().await;
    let call = backend.next("connect").await;
    assert_eq!(call.body["token"], "opaque-ticket");
    srv.stop().await;
}

/// The per-user cap applies however the connect proxy names the user: at the
/// upgrade (close 4505), for an auth payload later (close 4505), and for a
/// Socket.IO CONNECT (connect_error `too_many_connections`).
#[tokio::test]
async fn the_per_user_cap_applies_to_every_way_the_proxy_names_a_user() {
    let backend = Backend::start(sessions).await;
    let mut cfg = proxy_config(&backend);
    cfg.auth.anonymous = Anonymous::Allow;
    cfg.limits.max_connections_per_user = 1;
    let srv = start(cfg).await;
    let cookie = [("cookie", "sessionid=alice")];
    let mut first = srv.client_with("/ws", &cookie).await;
    assert_eq!(first.welcome().await["user"], "42");
    let second = srv.client_with("/ws", &cookie).await;
    assert_eq!(second.closed().await.code, Some(4505));
    let (_, answer) = sio::Sio::connect_with(srv.addr, "/", json!({}), &cookie).await;
    assert!(
        answer.starts_with(r#"4{"data":{"code":"too_many_connections"}"#),
        "{answer}"
    );
    let mut ticket = srv.client().await;
    ticket.welcome().await;
    let ack = ticket
        .request(json!({"type": "auth", "data": {"ticket": "abc"}}))
        .await;
    assert_eq!(ack["user"], "99", "{ack}");
    let mut again = srv.client().await;
    again.welcome().await;
    again
        .send(json!({"type": "auth", "data": {"ticket": "abc"}, "id": 1}))
        .await;
    let closed = again.closed().await;
    assert_eq!(
        (closed.code, closed.disconnect.unwrap()["code"].as_u64()),
        (Some(4505), Some(4505))
    );
    srv.stop().await;
}

/// An application's own authenticator: tickets `ticket:<user>`.
struct Tickets;

impl roomcast::auth::Authenticator for Tickets {
    fn authenticate<'a>(
        &'a self,
        credentials: roomcast::auth::Credentials,
        handshake: &'a roomcast::auth::Handshake,
    ) -> roomcast_core::BoxFuture<'a, Result<roomcast::auth::Identity, roomcast::auth::AuthFailure>>
    {
        use roomcast::auth::{AuthFailure, Credentials, Identity};
        Box::pin(async move {
            let Credentials::Token(t) = credentials else {
                return Err(AuthFailure::Refused("tickets only".into()));
            };
            let user = t
                .strip_prefix("ticket:")
                .ok_or_else(|| AuthFailure::Refused("unknown ticket".into()))?;
            Ok(Identity {
                user: Some(user.to_owned()),
                rooms: vec![format!("vip:{}", handshake.transport)],
                ..Identity::default()
            })
        })
    }
}

#[tokio::test]
async fn an_embedding_application_may_bring_its_own_authenticator() {
    let mut cfg = config();
    cfg.auth.mode = AuthMode::Token;
    let hub = roomcast_core::Hub::new(cfg.hub_config());
    let server =
        roomcast::Server::with_authenticator(cfg, hub, std::sync::Arc::new(Tickets)).unwrap();
    let srv = start_server(server).await;
    assert_eq!(welcome_for(&srv, "ticket:zoe").await["user"], "zoe");
    let (code, why) = close_for(&srv, "bogus").await;
    assert_eq!((code, why.as_str()), (Some(4502), "unknown ticket"));
    let (_s, answer) = sio::Sio::connect(srv.addr, "/", json!({"token": "ticket:yan"})).await;
    assert!(answer.starts_with("0{"), "{answer}");
    let (_, p) = srv.get("/api/presence/vip:socketio").await;
    assert_eq!(p["users"], json!([{"user": "yan", "connections": 1}]));
    // Room rules and limits of the configuration still apply: anonymous clients wait for auth.
    let mut c = srv.client().await;
    c.welcome().await;
    let e = c.request(json!({"type": "join", "room": "x"})).await;
    assert_eq!(e["code"], "unauthenticated");
    srv.stop().await;
}

#[tokio::test]
async fn an_expiry_too_far_away_to_represent_is_never_reached() {
    let srv = start(token_config()).await;
    let never = hs256(SECRET, &json!({"sub": "alice", "exp": u64::MAX}));
    let mut c = Client::connect(srv.addr, &format!("/ws?token={never}")).await;
    assert_eq!(c.welcome().await["expires_at"], json!(u64::MAX));
    c.join("r").await;
    let t = hs256(SECRET, &json!({"sub": "bob", "exp": now() + 60}));
    let mut d = Client::connect(srv.addr, &format!("/ws?token={t}")).await;
    d.welcome().await;
    let ack = d
        .request(json!({"type": "refresh", "token": hs256(SECRET, &json!({"sub": "bob", "exp": u64::MAX}))}))
        .await;
    assert_eq!(ack["expires_at"], json!(u64::MAX), "{ack}");
    d.join("r").await;
    let (_, p) = srv.get("/api/presence/r").await;
    assert_eq!(p["connections"], 2);
    srv.stop().await;
}

#[tokio::test]
async fn backend_redirects_are_not_followed() {
    let elsewhere =
        Backend::start(|_: &support::backend::Call| Answer::ok(json!({"user": "redirected"})))
            .await;
    for status in [301, 302, 303, 307, 308] {
        let to = elsewhere.url("connect");
        let backend =
            Backend::start(move |_: &support::backend::Call| Answer::Redirect(status, to.clone()))
                .await;
        let srv = start(proxy_config(&backend)).await;
        let c = srv
            .client_with("/ws", &[("cookie", "sessionid=alice")])
            .await;
        assert_eq!(c.closed().await.code, Some(4004), "HTTP {status}");
        assert_eq!(backend.count("connect"), 1);
        srv.stop().await;
    }
    // The secret and the client's cookies never reached the other host.
    assert_eq!(elsewhere.count("connect"), 0);
}

#[tokio::test]
async fn rooms_a_token_lists_beyond_the_limits_are_skipped() {
    let mut cfg = token_config();
    cfg.limits.max_rooms_per_connection = 10;
    let srv = start(cfg).await;
    let mut rooms: Vec<String> = vec!["bad room".into(), "".into()];
    rooms.extend((0..500).map(|i| format!("r{i}")));
    let t = hs256(SECRET, &json!({"sub": "alice", "rooms": rooms}));
    let mut c = Client::connect(srv.addr, &format!("/ws?token={t}")).await;
    c.welcome().await;
    let (_, info) = srv.get(&format!("/api/connections/{}", c.conn)).await;
    let joined: Vec<&str> = info["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(joined.len(), 10, "{info}");
    assert!(joined.iter().all(|r| r.starts_with('r')), "{info}");
    let e = c.request(json!({"type": "join", "room": "one-more"})).await;
    assert_eq!(e["code"], "too_many_rooms");
    srv.stop().await;
}
