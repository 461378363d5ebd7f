//! The idempotency seam: a request made with an idempotency key is carried
//! out once within a window, and its repeats get the first one's answer.
//!
//! A front end [`claim`](IdempotencyStore::claim)s the key with a
//! fingerprint of the request, carries the request out only for
//! [`Claim::New`], then [`complete`](IdempotencyStore::complete)s the claim
//! with the answer (or [`release`](IdempotencyStore::release)s it when the
//! request failed, so that a retry runs). [`MemoryIdempotency`] serves one
//! node; roomcast-redis has the store a cluster shares.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::BoxFuture;

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Nobody had the key: carry the request out, then complete or release it.
    New,
    /// A request with the key is still being carried out.
    Pending,
    /// The key's request was carried out; its answer.
    Done(String),
    /// The key was used for a different request.
    Mismatch,
}

/// The store could not be reached.
#[derive(Debug, Clone, thiserror::Error)]
#[error("idempotency store unavailable: {0}")]
pub struct IdempotencyError(pub String);

/// Where idempotency keys are kept; see the module docs.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims `key` for the request `fingerprint` for `ttl`, unless it is known.
    fn claim(
        &self,
        key: &str,
        fingerprint: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Claim, IdempotencyError>>;
    /// Records the answer of a claimed request, kept for `ttl` from now.
    fn complete(
        &self,
        key: &str,
        fingerprint: &str,
        answer: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), IdempotencyError>>;
    /// Forgets a claim whose request failed.
    fn release(&self, key: &str) -> BoxFuture<'_, Result<(), IdempotencyError>>;
}

struct Entry {
    fingerprint: String,
    answer: Option<String>,
    expires: Instant,
}

/// The in-process store, for one node. Expired keys are dropped as new ones come.
#[derive(Default)]
pub struct MemoryIdempotency {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    keys: HashMap<String, Entry>,
    /// Keys in the order they were claimed, with the expiry they had then.
    order: VecDeque<(Instant, String)>,
}

impl MemoryIdempotency {
    /// An empty store.
    pub fn new() -> MemoryIdempotency {
        MemoryIdempotency::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl State {
    fn prune(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if *at > now {
                break;
            }
            let (_, key) = self.order.pop_front().expect("a front was seen");
            if self.keys.get(&key).is_some_and(|e| e.expires <= now) {
                self.keys.remove(&key);
            }
        }
    }
}

fn ready<T: Send + 'static>(v: T) -> BoxFuture<'static, T> {
    Box::pin(std::future::ready(v))
}

impl IdempotencyStore for MemoryIdempotency {
    fn claim(
        &self,
        key: &str,
        fingerprint: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Claim, IdempotencyError>> {
        let now = Instant::now();
        let claim = self.with(|s| {
            s.prune(now);
            if let Some(e) = s.keys.get(key).filter(|e| e.expires > now) {
                return if e.fingerprint != fingerprint {
                    Claim::Mismatch
                } else {
                    e.answer.clone().map_or(Claim::Pending, Claim::Done)
                };
            }
            s.keys.insert(
                key.to_owned(),
                Entry {
                    fingerprint: fingerprint.to_owned(),
                    answer: None,
                    expires: now + ttl,
                },
            );
            s.order.push_back((now + ttl, key.to_owned()));
            Claim::New
        });
        ready(Ok(claim))
    }

    fn complete(
        &self,
        key: &str,
        fingerprint: &str,
        answer: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), IdempotencyError>> {
        let expires = Instant::now() + ttl;
        self.with(|s| {
            s.keys.insert(
                key.to_owned(),
                Entry {
                    fingerprint: fingerprint.to_owned(),
                    answer: Some(answer.to_owned()),
                    expires,
                },
            );
            s.order.push_back((expires, key.to_owned()));
        });
        ready(Ok(()))
    }

    fn release(&self, key: &str) -> BoxFuture<'_, Result<(), IdempotencyError>> {
        self.with(|s| s.keys.remove(key));
        ready(Ok(()))
    }
}

/// The shared test suite every [`IdempotencyStore`] must pass; `make`
/// returns an empty store each time.
#[cfg(any(test, feature = "testing"))]
pub mod suite {
    use super::*;

    /// Runs every case against stores made by `make`.
    pub async fn run<S: IdempotencyStore>(make: impl Fn() -> S) {
        once_then_the_answer(make()).await;
        released_claims_run_again(make()).await;
        keys_expire(make()).await;
    }

    const TTL: Duration = Duration::from_secs(60);

    async fn once_then_the_answer(s: impl IdempotencyStore) {
        assert_eq!(s.claim("k", "f", TTL).await.unwrap(), Claim::New);
        assert_eq!(s.claim("k", "f", TTL).await.unwrap(), Claim::Pending);
        s.complete("k", "f", r#"{"delivered":3}"#, TTL)
            .await
            .unwrap();
        assert_eq!(
            s.claim("k", "f", TTL).await.unwrap(),
            Claim::Done(r#"{"delivered":3}"#.into())
        );
        assert_eq!(s.claim("k", "other", TTL).await.unwrap(), Claim::Mismatch);
        assert_eq!(s.claim("k2", "f", TTL).await.unwrap(), Claim::New);
    }

    async fn released_claims_run_again(s: impl IdempotencyStore) {
        assert_eq!(s.claim("k", "f", TTL).await.unwrap(), Claim::New);
        s.release("k").await.unwrap();
        assert_eq!(s.claim("k", "f", TTL).await.unwrap(), Claim::New);
    }

    async fn keys_expire(s: impl IdempotencyStore) {
        let short = Duration::from_millis(50);
        assert_eq!(s.claim("k", "f", short).await.unwrap(), Claim::New);
        s.complete("k", "f", "{}", short).await.unwrap();
        // Past the expiry the key is new again; the wait is the subject here.
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(s.claim("k", "f", short).await.unwrap(), Claim::New);
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_store_passes_the_suite() {
        super::suite::run(super::MemoryIdempotency::new).await;
    }
}
