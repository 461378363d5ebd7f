//! JWT connection tokens: HS256/384/512, RS256 and ES256, with keys from the
//! configuration, a PEM file or a JWKS file.

use std::collections::HashSet;
use std::str::FromStr;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::config::JwtConfig;

/// The algorithms roomcast accepts.
const SUPPORTED: [Algorithm; 5] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::ES256,
];

/// What a valid token says.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    /// `sub`: the user id.
    pub user: String,
    /// `exp`, in seconds since the Unix epoch.
    pub expires_at: Option<u64>,
    /// `rooms`: rooms joined on connect, and granted for `join = "claim"` rules.
    pub rooms: Vec<String>,
    /// `info`: public data about the connection.
    pub info: Option<Value>,
}

#[derive(Deserialize)]
struct Raw {
    sub: String,
    exp: Option<u64>,
    #[serde(default)]
    rooms: Vec<String>,
    info: Option<Value>,
}

/// Why a token was refused; the text reaches the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// Anything else: forged, malformed, wrong algorithm, not yet valid...
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// The JWT key configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("auth.jwt: {0}")]
pub struct KeyError(String);

struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Checks connection tokens against the configured keys.
pub struct Verifier {
    keys: Vec<Key>,
    issuer: String,
    audience: String,
    leeway: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

fn read(path: &str) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|e| KeyError(format!("cannot read {path}: {e}")))
}

impl Verifier {
    /// Loads the keys of `config`; `None` when none is configured.
    pub fn from_config(config: &JwtConfig) -> Result<Option<Verifier>, KeyError> {
        if !config.has_key() {
            return Ok(None);
        }
        let algorithm = Algorithm::from_str(&config.algorithm)
            .ok()
            .filter(|a| SUPPORTED.contains(a))
            .ok_or_else(|| {
                KeyError(format!(
                    "algorithm must be HS256, HS384, HS512, RS256 or ES256, got {:?}",
                    config.algorithm
                ))
            })?;
        let mut keys = Vec::new();
        let hmac = matches!(
            algorithm,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        );
        if !config.secret.is_empty() {
            if !hmac {
                return Err(KeyError(format!(
                    "secret is for HS256/384/512; {:?} needs public_key, public_key_file or jwks_file",
                    config.algorithm
                )));
            }
            keys.push(Key {
                kid: None,
                algorithm,
                key: DecodingKey::from_secret(config.secret.as_bytes()),
            });
        }
        let pem = if !config.public_key.is_empty() {
            Some(config.public_key.as_bytes().to_vec())
        } else if !config.public_key_file.is_empty() {
            Some(read(&config.public_key_file)?)
        } else {
            None
        };
        if let Some(pem) = pem {
            let key = match algorithm {
                Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
                Algorithm::ES256 => DecodingKey::from_ec_pem(&pem),
                _ => {
                    return Err(KeyError(
                        "a public key needs algorithm RS256 or ES256".to_owned(),
                    ))
                }
            }
            .map_err(|e| KeyError(format!("public key: {e}")))?;
            keys.push(Key {
                kid: None,
                algorithm,
                key,
            });
        }
        if !config.jwks_file.is_empty() {
            let text = read(&config.jwks_file)?;
            let set: JwkSet = serde_json::from_slice(&text)
                .map_err(|e| KeyError(format!("{}: {e}", config.jwks_file)))?;
            for jwk in &set.keys {
                let alg = jwk
                    .common
                    .key_algorithm
                    .and_then(|a| Algorithm::from_str(&a.to_string()).ok())
                    .filter(|a| SUPPORTED.contains(a))
                    .ok_or_else(|| {
                        KeyError(format!(
                            "{}: every key needs an `alg` of RS256, ES256 or HS*",
                            config.jwks_file
                        ))
                    })?;
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| KeyError(format!("{}: {e}", config.jwks_file)))?;
                keys.push(Key {
                    kid: jwk.common.key_id.clone(),
                    algorithm: alg,
                    key,
                });
            }
        }
        if keys.is_empty() {
            return Err(KeyError("no usable key".to_owned()));
        }
        Ok(Some(Verifier {
            keys,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway_s,
        }))
    }

    /// Checks a token: signature with the key its header names (by `kid`, and
    /// only with that key's algorithm), `exp`, `nbf`, `iss` and `aud`.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            TokenError::Invalid(match e.kind() {
                // An `alg` this library does not know, `none` included.
                ErrorKind::Json(_) if token.split('.').count() == 3 => {
                    "unreadable header or unsupported algorithm".to_owned()
                }
                _ => "malformed token".to_owned(),
            })
        })?;
        let candidates: Vec<&Key> = self
            .keys
            .iter()
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                (_, None) => true,
                (None, Some(_)) => self.keys.len() == 1,
            })
            .collect();
        let key = candidates
            .iter()
            .find(|k| k.algorithm == header.alg)
            .ok_or_else(|| {
                TokenError::Invalid(format!(
                    "algorithm {:?} is not accepted{}",
                    header.alg,
                    header
                        .kid
                        .as_deref()
                        .map(|k| format!(" for key {k:?}"))
                        .unwrap_or_default()
                ))
            })?;
        let mut v = Validation::new(key.algorithm);
        v.algorithms = vec![key.algorithm];
        v.leeway = self.leeway;
        v.validate_nbf = true;
        v.validate_exp = true;
        v.required_spec_claims = HashSet::from(["sub".to_owned()]);
        if !self.issuer.is_empty() {
            v.set_issuer(&[&self.issuer]);
            v.required_spec_claims.insert("iss".to_owned());
        }
        if self.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&[&self.audience]);
            v.required_spec_claims.insert("aud".to_owned());
        }
        let data = jsonwebtoken::decode::<Raw>(token, &key.key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => {
                    TokenError::Invalid("token not valid yet (nbf)".to_owned())
                }
                ErrorKind::InvalidSignature => TokenError::Invalid("bad signature".to_owned()),
                _ => TokenError::Invalid(e.to_string()),
            }
        })?;
        let raw = data.claims;
        if raw.sub.is_empty() {
            return Err(TokenError::Invalid("empty `sub`".to_owned()));
        }
        Ok(Claims {
            user: raw.sub,
            // The leeway that let the token in also holds off its expiry:
            // otherwise a connection accepted within it is closed at once.
            expires_at: raw.exp.map(|e| e.saturating_add(self.leeway)),
            rooms: raw.rooms,
            info: raw.info,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn hs(alg: &str, secret: &str) -> Verifier {
        let c = JwtConfig {
            algorithm: alg.to_owned(),
            secret: secret.to_owned(),
            ..JwtConfig::default()
        };
        Verifier::from_config(&c).unwrap().unwrap()
    }

    fn sign(alg: Algorithm, secret: &str, claims: &Value) -> String {
        encode(
            &Header::new(alg),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn hmac_tokens() {
        let v = hs("HS384", "s");
        let t = sign(
            Algorithm::HS384,
            "s",
            &json!({"sub":"alice","exp":now()+60,"rooms":["a","b"],"info":{"name":"Alice"}}),
        );
        let c = v.verify(&t).unwrap();
        assert_eq!(c.user, "alice");
        assert_eq!(c.rooms, ["a", "b"]);
        assert_eq!(c.info, Some(json!({"name":"Alice"})));
        // No exp is accepted; exp in the past is not.
        assert!(v
            .verify(&sign(Algorithm::HS384, "s", &json!({"sub":"a"})))
            .is_ok());
        assert_eq!(
            v.verify(&sign(
                Algorithm::HS384,
                "s",
                &json!({"sub":"a","exp":now()-10})
            )),
            Err(TokenError::Expired)
        );
        // Other secret, other algorithm, nbf in the future, missing or empty sub.
        assert!(v
            .verify(&sign(Algorithm::HS384, "x", &json!({"sub":"a"})))
            .is_err());
        assert!(v
            .verify(&sign(Algorithm::HS256, "s", &json!({"sub":"a"})))
            .is_err());
        assert!(v
            .verify(&sign(
                Algorithm::HS384,
                "s",
                &json!({"sub":"a","nbf":now()+600})
            ))
            .is_err());
        assert!(v
            .verify(&sign(Algorithm::HS384, "s", &json!({"name":"a"})))
            .is_err());
        assert!(v
            .verify(&sign(Algorithm::HS384, "s", &json!({"sub":""})))
            .is_err());
        assert!(v.verify("not.a.token").is_err());
        assert!(v.verify("").is_err());
    }

    #[test]
    fn alg_none_is_refused() {
        let v = hs("HS256", "s");
        // {"alg":"none","typ":"JWT"} . {"sub":"admin"} . (no signature)
        let t = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhZG1pbiJ9.";
        assert!(v.verify(t).is_err());
    }

    #[test]
    fn issuer_and_audience() {
        let c = JwtConfig {
            secret: "s".into(),
            issuer: "https://backend".into(),
            audience: "roomcast".into(),
            ..JwtConfig::default()
        };
        let v = Verifier::from_config(&c).unwrap().unwrap();
        let good = json!({"sub":"a","iss":"https://backend","aud":"roomcast"});
        assert!(v.verify(&sign(Algorithm::HS256, "s", &good)).is_ok());
        let other = json!({"sub":"a","iss":"https://evil","aud":"roomcast"});
        assert!(v.verify(&sign(Algorithm::HS256, "s", &other)).is_err());
        let other = json!({"sub":"a","iss":"https://backend"});
        assert!(v.verify(&sign(Algorithm::HS256, "s", &other)).is_err());
    }

    #[test]
    fn bad_key_configuration_is_an_error() {
        let c = JwtConfig {
            algorithm: "RS256".into(),
            secret: "s".into(),
            ..JwtConfig::default()
        };
        assert!(Verifier::from_config(&c).is_err());
        let c = JwtConfig {
            algorithm: "none".into(),
            secret: "s".into(),
            ..JwtConfig::default()
        };
        assert!(Verifier::from_config(&c).is_err());
        let c = JwtConfig {
            algorithm: "RS256".into(),
            public_key: "not a pem".into(),
            ..JwtConfig::default()
        };
        assert!(Verifier::from_config(&c).is_err());
        assert!(Verifier::from_config(&JwtConfig::default())
            .unwrap()
            .is_none());
    }
}
