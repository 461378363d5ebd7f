//! The authentication seam: who a connection is.

use roomcast_core::BoxFuture;

use crate::config::{AuthConfig, AuthMode};

/// What a client presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A connection token (`?token=`, `Authorization: Bearer`, or `{"type":"auth","token":...}`).
    Token(String),
    /// A client-chosen user id (`{"type":"auth","user":...}`), accepted in open mode.
    User(String),
}

/// Who the credentials say the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id.
    pub user: String,
}

/// Credentials were refused; the message reaches the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthFailure(pub String);

/// Decides who a connection is.
pub trait Authenticator: Send + Sync + 'static {
    /// Checks credentials.
    fn authenticate(
        &self,
        credentials: Credentials,
    ) -> BoxFuture<'_, Result<Identity, AuthFailure>>;
}

/// Open mode: any client-chosen user id is accepted; tokens are not understood.
#[derive(Debug, Default)]
pub struct OpenAuthenticator;

impl Authenticator for OpenAuthenticator {
    fn authenticate(
        &self,
        credentials: Credentials,
    ) -> BoxFuture<'_, Result<Identity, AuthFailure>> {
        let r = match credentials {
            Credentials::User(user) => Ok(Identity { user }),
            Credentials::Token(_) => Err(AuthFailure(
                "token authentication is not configured; in open mode send {\"type\":\"auth\",\"user\":\"<id>\"}".to_owned(),
            )),
        };
        Box::pin(std::future::ready(r))
    }
}

/// The authenticator for a configuration.
pub fn from_config(config: &AuthConfig) -> std::sync::Arc<dyn Authenticator> {
    match config.mode {
        AuthMode::Open => std::sync::Arc::new(OpenAuthenticator),
    }
}
