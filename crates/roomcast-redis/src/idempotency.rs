//! Idempotency keys in Redis, shared by every node: one string per key,
//! `P\n<fingerprint>` while its request is carried out, then
//! `D\n<fingerprint>\n<answer>`, each with the window as its expiry.

use std::sync::Arc;
use std::time::Duration;

use roomcast_core::idempotency::{Claim, IdempotencyError, IdempotencyStore};
use roomcast_core::BoxFuture;

use crate::Shared;

/// Sets the pending value unless the key exists; otherwise answers what it holds.
const CLAIM: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return false
end
return redis.call('GET', KEYS[1])
"#;

/// The idempotency store on Redis; get one with [`Redis::idempotency`](crate::Redis::idempotency).
pub struct RedisIdempotency {
    shared: Arc<Shared>,
    claim: redis::Script,
}

impl RedisIdempotency {
    pub(crate) fn new(shared: Arc<Shared>) -> RedisIdempotency {
        RedisIdempotency {
            shared,
            claim: redis::Script::new(CLAIM),
        }
    }

    fn key(&self, key: &str) -> String {
        self.shared.key(&format!("idempotency:{key}"))
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> IdempotencyError {
        self.shared.failed(&e);
        IdempotencyError(format!("redis: {e}"))
    }
}

fn ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

/// What a stored value says, for a request with `fingerprint`.
fn read(value: &str, fingerprint: &str) -> Claim {
    let mut parts = value.splitn(3, '\n');
    let (state, stored) = (parts.next(), parts.next());
    if stored != Some(fingerprint) {
        return Claim::Mismatch;
    }
    match (state, parts.next()) {
        (Some("D"), Some(answer)) => Claim::Done(answer.to_owned()),
        _ => Claim::Pending,
    }
}

impl IdempotencyStore for RedisIdempotency {
    fn claim(
        &self,
        key: &str,
        fingerprint: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Claim, IdempotencyError>> {
        let key = self.key(key);
        let pending = format!("P\n{fingerprint}");
        let fingerprint = fingerprint.to_owned();
        Box::pin(async move {
            let mut conn = self.shared.conn().map_err(|e| self.unavailable(e))?;
            let found: Option<String> = self
                .claim
                .key(&key)
                .arg(&pending)
                .arg(ms(ttl))
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.unavailable(e))?;
            Ok(match found {
                None => Claim::New,
                Some(v) => read(&v, &fingerprint),
            })
        })
    }

    fn complete(
        &self,
        key: &str,
        fingerprint: &str,
        answer: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), IdempotencyError>> {
        let key = self.key(key);
        let value = format!("D\n{fingerprint}\n{answer}");
        Box::pin(async move {
            let mut conn = self.shared.conn().map_err(|e| self.unavailable(e))?;
            redis::cmd("SET")
                .arg(&key)
                .arg(&value)
                .arg("PX")
                .arg(ms(ttl))
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| self.unavailable(e))
        })
    }

    fn release(&self, key: &str) -> BoxFuture<'_, Result<(), IdempotencyError>> {
        let key = self.key(key);
        Box::pin(async move {
            let mut conn = self.shared.conn().map_err(|e| self.unavailable(e))?;
            redis::cmd("DEL")
                .arg(&key)
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| self.unavailable(e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_values_read_back() {
        assert_eq!(read("P\nf", "f"), Claim::Pending);
        assert_eq!(
            read("D\nf\n{\"a\":1}", "f"),
            Claim::Done("{\"a\":1}".into())
        );
        assert_eq!(read("D\nf\n{}", "g"), Claim::Mismatch);
        assert_eq!(read("garbage", "f"), Claim::Mismatch);
    }
}
