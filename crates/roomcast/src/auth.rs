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

use crate::backend::Backend;
use crate::config::{AuthConfig, AuthMode};
use crate::jwt::{TokenError, Verifier};

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

    /// The error code of a refused `auth` command.
    pub fn code(&self) -> &'static str {
        match self {
            AuthFailure::Refused(_) => "auth_failed",
            AuthFailure::Expired => "token_expired",
            AuthFailure::Unavailable(_) => "backend_unavailable",
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

/// The authenticator of `auth.mode`.
pub struct StandardAuthenticator {
    mode: AuthMode,
    jwt: Option<Verifier>,
    backend: Option<Arc<Backend>>,
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
    /// An authenticator for `config`; `backend` is needed in proxy mode.
    pub fn new(
        config: &AuthConfig,
        backend: Option<Arc<Backend>>,
    ) -> Result<StandardAuthenticator, crate::jwt::KeyError> {
        Ok(StandardAuthenticator {
            mode: config.mode,
            jwt: Verifier::from_config(&config.jwt)?,
            backend,
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
                    let backend = self.backend.as_ref().ok_or_else(|| {
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
                    backend.connect(handshake, token, data).await
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
