//! The hub's indexes of local connections (by id, by room, by user) as
//! sharded maps, and their upkeep: the node's first connection of a user
//! subscribes the node to the user's envelopes, its last one unsubscribes.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, RwLock};

use crate::presence::Member;
use crate::{ConnId, Who};

use super::state::ConnState;
use super::Hub;

pub(super) const SHARDS: usize = 64;

/// A map split into independently locked shards.
pub(super) struct Sharded<K, V> {
    shards: Box<[RwLock<HashMap<K, V>>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl<K: Hash + Eq, V> Sharded<K, V> {
    pub(super) fn new() -> Self {
        Sharded {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }

    pub(super) fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> &RwLock<HashMap<K, V>> {
        let h = self.hasher.hash_one(key) as usize;
        &self.shards[h % SHARDS]
    }

    pub(super) fn read<Q: Hash + ?Sized, T>(
        &self,
        key: &Q,
        f: impl FnOnce(&HashMap<K, V>) -> T,
    ) -> T {
        f(&self.shard(key).read().unwrap_or_else(|e| e.into_inner()))
    }

    pub(super) fn write<Q: Hash + ?Sized, T>(
        &self,
        key: &Q,
        f: impl FnOnce(&mut HashMap<K, V>) -> T,
    ) -> T {
        f(&mut self.shard(key).write().unwrap_or_else(|e| e.into_inner()))
    }

    pub(super) fn for_each_shard(&self, mut f: impl FnMut(&HashMap<K, V>)) {
        for s in self.shards.iter() {
            f(&s.read().unwrap_or_else(|e| e.into_inner()));
        }
    }
}

impl Hub {
    /// Adds a connection to the user index; the node's first connection of the
    /// user subscribes the node to the user's envelopes.
    pub(super) async fn index_user(&self, user: &Arc<str>, state: &Arc<ConnState>) {
        let first = self.insert_user(user, state);
        self.subscribe_if_first(user, first).await;
    }

    pub(super) fn insert_user(&self, user: &Arc<str>, state: &Arc<ConnState>) -> bool {
        self.inner.users.write(user, |m| {
            let list = m.entry(user.clone()).or_default();
            list.push(state.clone());
            list.len() == 1
        })
    }

    pub(super) async fn subscribe_if_first(&self, user: &str, first: bool) {
        if first {
            if let Err(e) = self
                .inner
                .broker
                .subscribe_user(self.inner.node, user)
                .await
            {
                self.backend_error(&e);
            }
        }
    }

    /// Removes a connection from the user index; see [`index_user`](Hub::index_user).
    pub(super) async fn unindex_user(&self, user: &Arc<str>, id: ConnId) {
        let last = self.inner.users.write(user, |m| {
            let Some(list) = m.get_mut(user) else {
                return false;
            };
            list.retain(|c| c.id != id);
            if list.is_empty() {
                m.remove(user);
                return true;
            }
            false
        });
        if last {
            if let Err(e) = self
                .inner
                .broker
                .unsubscribe_user(self.inner.node, user)
                .await
            {
                self.backend_error(&e);
            }
        }
    }

    pub(super) fn member_of(&self, c: &ConnState) -> Member {
        let meta = c.meta();
        Member {
            conn: c.id,
            user: meta.user.clone(),
            node: self.inner.node,
            info: meta.info.clone(),
        }
    }

    pub(super) fn local_conns(&self, who: &Who) -> Vec<Arc<ConnState>> {
        match who {
            Who::Conn(id) => self
                .inner
                .conns
                .read(id, |m| m.get(id).cloned())
                .into_iter()
                .collect(),
            Who::User(u) => self.inner.users.read(u.as_str(), |m| {
                m.get(u.as_str()).cloned().unwrap_or_default()
            }),
        }
    }
}
