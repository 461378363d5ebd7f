//! The authentication seam: who a connection is.
//!
//! [`StandardAuthenticator`] implements the three modes of `auth.mode`: `open`
//! (client-chosen user ids, and tokens when a key is configured), `token`
//! (JWT connection tokens) and `proxy` (the backend's `proxy.connect_url`
//! answers for each handshake).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::HeaderMap;
use serde_json::{Map, Value};

use roomcast_core::{BoxFuture, ConnId, Disconnect};

use crate::codes::Code;
use crate::config::{AuthConfig, AuthMode};

mod jwt;
pub(crate) use jwt::TokenError;
pub use jwt::{Claims, KeyError, Verifier};

/// What a client presented.
#[derive(Debug, Clone, PartialEq)]
pub enum Credentials {
    /// A connection token (`?token=`, `Authorization: Bearer`,
    /// `{"type":"auth","token":...}` or Socket.IO's `auth: {token}`).
    Token(String),
    /// A client-chosen user id (`{"type":"auth","user":...}`), accepted in open mode.
    User(String),
    /// An auth payload for the backend (`{"type":"auth","data":...}`, or
    /// Socket.IO's `auth` object), in proxy mode.
    Data(Value),
    /// Nothing but the handshake itself (its cookies and headers), in proxy mode.
    Handshake,
}

/// The request a connection was opened with.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// The hub connection id.
    pub conn: ConnId,
    /// `websocket` (native) or `socketio`.
    pub transport: &'static str,
    /// The Socket.IO namespace.
    pub namespace: Option<String>,
    /// The peer's address, when known.
    pub remote: Option<SocketAddr>,
    /// The handshake's headers.
    pub headers: HeaderMap,
}

impl Handshake {
    /// The handshake of connection `conn`: its transport, namespace and
    /// headers (the peer address comes from the header the server set).
    pub fn new(
        conn: ConnId,
        transport: &'static str,
        namespace: Option<String>,
        headers: &HeaderMap,
    ) -> Handshake {
        Handshake {
            conn,
            transport,
            namespace,
            remote: crate::http::peer(headers),
            headers: headers.clone(),
        }
    }
}

impl Credentials {
    /// Credentials from an auth payload (Socket.IO's `auth`, native `auth`):
    /// a `token`; in proxy mode anything else for the backend (nothing, or
    /// an empty object, is the handshake alone); otherwise a `user`.
    pub fn from_payload(payload: &Value, proxy: bool) -> Option<Credentials> {
        let str_of = |k: &str| payload.get(k).and_then(Value::as_str).map(str::to_owned);
        if let Some(t) = str_of("token") {
            return Some(Credentials::Token(t));
        }
        if proxy {
            return Some(match payload {
                Value::Null => Credentials::Handshake,
                Value::Object(m) if m.is_empty() => Credentials::Handshake,
                other => Credentials::Data(other.clone()),
            });
        }
        str_of("user").map(Credentials::User)
    }
}

/// Who the credentials say the client is, and what comes with it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    /// The user id; `None` is an anonymous connection.
    pub user: Option<String>,
    /// Rooms to join now; they are also granted for `join = "claim"` rules.
    pub rooms: Vec<String>,
    /// Session data to set.
    pub session: Map<String, Value>,
    /// Public data about the connection (the token's `info` claim).
    pub info: Option<Value>,
    /// When the credentials expire, in seconds since the Unix epoch.
    pub expires_at: Option<u64>,
}

/// Credentials were refused or could not be checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// Refused; the message reaches the client.
    #[error("{0}")]
    Refused(String),
    /// The token has expired.
    #[error("token expired")]
    Expired,
    /// The backend failed or did not answer in time. The detail is for the
    /// log; clients see only "authentication backend unavailable".
    #[error("authentication backend unavailable")]
    Unavailable(String),
}

impl AuthFailure {
    /// The close the client gets when this happens at connect time.
    pub fn disconnect(&self) -> Disconnect {
        match self {
            AuthFailure::Refused(m) => Disconnect::custom(Disconnect::AUTH_FAILED.code, m.clone()),
            AuthFailure::Expired => Disconnect::TOKEN_EXPIRED,
            AuthFailure::Unavailable(_) => Disconnect::AUTH_UNAVAILABLE,
        }
    }

    /// The error code of a refused `auth` or `refresh` command.
    pub fn code(&self) -> Code {
        match self {
            AuthFailure::Refused(_) => Code::AUTH_FAILED,
            AuthFailure::Expired => Code::TOKEN_EXPIRED,
            AuthFailure::Unavailable(_) => Code::BACKEND_UNAVAILABLE,
        }
    }

    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthFailure::Refused(_) => "refused",
            AuthFailure::Expired => "expired",
            AuthFailure::Unavailable(_) => "unavailable",
        }
    }
}

/// Decides who a connection is.
pub trait Authenticator: Send + Sync + 'static {
    /// Checks credentials presented during `handshake`.
    fn authenticate<'a>(
        &'a self,
        credentials: Credentials,
        handshake: &'a Handshake,
    ) -> BoxFuture<'a, Result<Identity, AuthFailure>>;
}

/// The connect proxy: the backend that says who a handshake's client is
/// (`proxy` mode). The backend module's `Backend` is the one over HTTP.
pub trait ConnectProxy: Send + Sync + 'static {
    /// Asks who the client of `handshake` is, given what it presented.
    fn connect<'a>(
        &'a self,
        handshake: &'a Handshake,
        token: Option<String>,
        data: Option<Value>,
    ) -> BoxFuture<'a, Result<Identity, AuthFailure>>;
}

/// The authenticator of `auth.mode`.
pub struct StandardAuthenticator {
    mode: AuthMode,
    jwt: Option<Verifier>,
    proxy: Option<Arc<dyn ConnectProxy>>,
}

impl std::fmt::Debug for StandardAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandardAuthenticator")
            .field("mode", &self.mode)
            .field("jwt", &self.jwt.is_some())
            .finish_non_exhaustive()
    }
}

impl StandardAuthenticator {
    /// An authenticator for `config`; `proxy` is needed in proxy mode.
    pub fn new(
        config: &AuthConfig,
        proxy: Option<Arc<dyn ConnectProxy>>,
    ) -> Result<StandardAuthenticator, KeyError> {
        Ok(StandardAuthenticator {
            mode: config.mode,
            jwt: Verifier::from_config(&config.jwt)?,
            proxy,
        })
    }

    fn token(&self, token: &str) -> Result<Identity, AuthFailure> {
        let Some(jwt) = &self.jwt else {
            return Err(AuthFailure::Refused(
                "token authentication is not configured; in open mode send {\"type\":\"auth\",\"user\":\"<id>\"}".to_owned(),
            ));
        };
        match jwt.verify(token) {
            Ok(c) => Ok(Identity {
                user: Some(c.user),
                rooms: c.rooms,
                session: Map::new(),
                info: c.info,
                expires_at: c.expires_at,
            }),
            Err(TokenError::Expired) => Err(AuthFailure::Expired),
            Err(e) => Err(AuthFailure::Refused(e.to_string())),
        }
    }
}

impl Authenticator for StandardAuthenticator {
    fn authenticate<'a>(
        &'a self,
        credentials: Credentials,
        handshake: &'a Handshake,
    ) -> BoxFuture<'a, Result<Identity, AuthFailure>> {
        Box::pin(async move {
            match (self.mode, credentials) {
                (AuthMode::Proxy, c) => {
                    let proxy = self.proxy.as_ref().ok_or_else(|| {
                        AuthFailure::Unavailable("proxy.connect_url is not set".to_owned())
                    })?;
                    let (token, data) = match c {
                        Credentials::Token(t) => (Some(t), None),
                        Credentials::Data(d) => (None, Some(d)),
                        Credentials::Handshake => (None, None),
                        Credentials::User(_) => {
                            return Err(AuthFailure::Refused(
                                "client-chosen user ids are accepted in open mode only".to_owned(),
                            ))
                        }
                    };
                    proxy.connect(handshake, token, data).await
                }
                (_, Credentials::Token(t)) => self.token(&t),
                (AuthMode::Open, Credentials::User(user)) => Ok(Identity {
                    user: Some(user),
                    ..Identity::default()
                }),
                (_, Credentials::User(_)) => Err(AuthFailure::Refused(
                    "client-chosen user ids are accepted in open mode only; present a token"
                        .to_owned(),
                )),
                (_, Credentials::Data(_) | Credentials::Handshake) => Err(AuthFailure::Refused(
                    "present a token: {\"type\":\"auth\",\"token\":\"...\"}".to_owned(),
                )),
            }
        })
    }
}
