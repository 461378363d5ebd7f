//! Actions on the local connections a selection picks: how messages from
//! outside the cluster's own wire format (Socket.IO emitters publishing into
//! Redis) are applied. Every node receives such a message and applies it to
//! its own connections only, so nothing here goes through the broker.

use std::collections::HashSet;
use std::sync::Arc;

use super::delivery::{EncodeCache, Tally};
use super::state::ConnState;
use super::Hub;
use crate::{ConnId, Disconnect, Payload, Publication};

/// Which local connections an action applies to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    /// Only connections of this Socket.IO namespace; connections without a
    /// namespace (native clients) count as `/`. `None`: every connection.
    pub namespace: Option<String>,
    /// Members of these rooms; empty means every connection. A name that is a
    /// connection id selects that connection (a Socket.IO socket id is a room
    /// holding just that socket).
    pub rooms: Vec<String>,
    /// Members of these rooms (or these connection ids) are left out.
    pub except: Vec<String>,
}

impl Hub {
    fn in_rooms(&self, rooms: &[String], out: &mut Vec<Arc<ConnState>>) {
        for name in rooms {
            if let Ok(id) = name.parse::<ConnId>() {
                if let Some(c) = self.inner.conns.read(&id, |m| m.get(&id).cloned()) {
                    out.push(c);
                    continue;
                }
            }
            self.inner.rooms.read(name.as_str(), |m| {
                if let Some(members) = m.get(name.as_str()) {
                    out.extend(members.values().cloned());
                }
            });
        }
    }

    /// The local connections `selection` picks, each once.
    fn select(&self, selection: &Selection) -> Vec<Arc<ConnState>> {
        let mut picked = Vec::new();
        if selection.rooms.is_empty() {
            self.inner
                .conns
                .for_each_shard(|m| picked.extend(m.values().cloned()));
        } else {
            self.in_rooms(&selection.rooms, &mut picked);
        }
        let mut excluded = Vec::new();
        self.in_rooms(&selection.except, &mut excluded);
        let mut skip: HashSet<ConnId> = excluded.iter().map(|c| c.id).collect();
        picked.retain(|c| {
            let in_namespace = match &selection.namespace {
                None => true,
                Some(ns) => c.protocol.namespace().unwrap_or("/") == ns,
            };
            in_namespace && skip.insert(c.id)
        });
        picked
    }

    /// Delivers a publication to the selected local connections only. Its
    /// target is ignored. Returns how many it reached.
    pub fn publish_selected(&self, selection: &Selection, publication: Publication) -> usize {
        let payload = Payload::Publication(Arc::new(publication));
        let mut cache = EncodeCache::new(&payload);
        let mut tally = Tally::default();
        let mut delivered = 0;
        for c in self.select(selection) {
            if let Some(frame) = cache.frame(&c.protocol) {
                if tally.push(&c, frame) {
                    delivered += 1;
                }
            }
        }
        tally.record(&self.inner.metrics);
        delivered
    }

    /// Puts the selected local connections into `rooms`. Returns how many joins happened.
    pub async fn join_selected(&self, selection: &Selection, rooms: &[String]) -> usize {
        let mut n = 0;
        for c in self.select(selection) {
            for room in rooms {
                if matches!(self.join_room(&c, room, true).await, Ok(true)) {
                    n += 1;
                }
            }
        }
        n
    }

    /// Takes the selected local connections out of `rooms`. Returns how many leaves happened.
    pub async fn leave_selected(&self, selection: &Selection, rooms: &[String]) -> usize {
        let mut n = 0;
        for c in self.select(selection) {
            for room in rooms {
                if matches!(self.leave_room(&c, room, true).await, Ok(true)) {
                    n += 1;
                }
            }
        }
        n
    }

    /// Closes the selected local connections with `reason`.
    pub fn disconnect_selected(&self, selection: &Selection, reason: Disconnect) -> usize {
        self.select(selection)
            .iter()
            .filter(|c| c.outbox.close(reason.clone()))
            .count()
    }
}
