//! The in-process presence store.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use super::*;

#[derive(Default)]
struct Room {
    conns: HashMap<ConnId, Option<Arc<str>>>,
    users: HashMap<Arc<str>, usize>,
}

struct Conn {
    user: Option<Arc<str>>,
    node: NodeId,
    rooms: Vec<String>,
    info: Option<Arc<str>>,
}

#[derive(Default)]
struct State {
    conns: HashMap<ConnId, Conn>,
    users: HashMap<Arc<str>, Vec<ConnId>>,
    rooms: HashMap<String, Room>,
}

/// Presence for one node, in memory.
#[derive(Default)]
pub struct MemoryPresence {
    state: Mutex<State>,
}

impl MemoryPresence {
    /// An empty store.
    pub fn new() -> MemoryPresence {
        MemoryPresence::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn ready<'a, T: Send + 'a>(v: T) -> BoxFuture<'a, Result<T, PresenceError>> {
    Box::pin(std::future::ready(Ok(v)))
}

impl State {
    fn leave(&mut self, room_name: &str, conn: ConnId) -> LeaveOutcome {
        let Some(room) = self.rooms.get_mut(room_name) else {
            return LeaveOutcome {
                removed: false,
                last_for_user: false,
            };
        };
        let Some(user) = room.conns.remove(&conn) else {
            return LeaveOutcome {
                removed: false,
                last_for_user: false,
            };
        };
        let mut last = false;
        if let Some(user) = user {
            if let Some(n) = room.users.get_mut(&user) {
                *n -= 1;
                if *n == 0 {
                    room.users.remove(&user);
                    last = true;
                }
            }
        }
        if room.conns.is_empty() {
            self.rooms.remove(room_name);
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.rooms.retain(|r| r != room_name);
        }
        LeaveOutcome {
            removed: true,
            last_for_user: last,
        }
    }

    fn disconnect(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        for room in c.rooms.clone() {
            self.leave(&room, conn);
        }
        if let Some(c) = self.conns.remove(&conn) {
            if let Some(user) = c.user {
                if let Some(list) = self.users.get_mut(&user) {
                    list.retain(|&x| x != conn);
                    if list.is_empty() {
                        self.users.remove(&user);
                    }
                }
            }
        }
    }
}

impl PresenceStore for MemoryPresence {
    fn connect(&self, member: &Member) -> BoxFuture<'_, Result<(), PresenceError>> {
        self.with(|s| {
            s.disconnect(member.conn);
            s.conns.insert(
                member.conn,
                Conn {
                    user: member.user.clone(),
                    node: member.node,
                    rooms: Vec::new(),
                    info: member.info.clone(),
                },
            );
            if let Some(user) = &member.user {
                s.users.entry(user.clone()).or_default().push(member.conn);
            }
        });
        ready(())
    }

    fn disconnect(&self, conn: ConnId) -> BoxFuture<'_, Result<(), PresenceError>> {
        self.with(|s| s.disconnect(conn));
        ready(())
    }

    fn join(
        &self,
        room_name: &str,
        member: &Member,
    ) -> BoxFuture<'_, Result<JoinOutcome, PresenceError>> {
        let out = self.with(|s| {
            let room = s.rooms.entry(room_name.to_owned()).or_default();
            if room.conns.contains_key(&member.conn) {
                return JoinOutcome {
                    added: false,
                    first_for_user: false,
                    connections: room.conns.len(),
                };
            }
            room.conns.insert(member.conn, member.user.clone());
            let mut first = false;
            if let Some(user) = &member.user {
                let n = room.users.entry(user.clone()).or_default();
                *n += 1;
                first = *n == 1;
            }
            let connections = room.conns.len();
            if let Some(c) = s.conns.get_mut(&member.conn) {
                c.rooms.push(room_name.to_owned());
            }
            JoinOutcome {
                added: true,
                first_for_user: first,
                connections,
            }
        });
        ready(out)
    }

    fn leave(
        &self,
        room: &str,
        conn: ConnId,
    ) -> BoxFuture<'_, Result<LeaveOutcome, PresenceError>> {
        let out = self.with(|s| s.leave(room, conn));
        ready(out)
    }

    fn room(&self, room: &str) -> BoxFuture<'_, Result<RoomPresence, PresenceError>> {
        let out = self.with(|s| match s.rooms.get(room) {
            None => RoomPresence::default(),
            Some(r) => {
                let users: BTreeMap<&Arc<str>, usize> =
                    r.users.iter().map(|(u, n)| (u, *n)).collect();
                let named: usize = users.values().sum();
                let mut infos: HashMap<&Arc<str>, &Arc<str>> = HashMap::new();
                for (c, u) in &r.conns {
                    if let (Some(u), Some(info)) = (u, s.conns.get(c).and_then(|c| c.info.as_ref()))
                    {
                        infos.entry(u).or_insert(info);
                    }
                }
                RoomPresence {
                    connections: r.conns.len(),
                    anonymous: r.conns.len() - named,
                    users: users
                        .into_iter()
                        .map(|(u, n)| UserCount {
                            user: u.clone(),
                            connections: n,
                            info: infos.get(u).and_then(|i| serde_json::from_str(i).ok()),
                        })
                        .collect(),
                }
            }
        });
        ready(out)
    }

    fn users(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> BoxFuture<'_, Result<UsersPage, PresenceError>> {
        let out = self.with(|s| {
            let mut ids: Vec<&Arc<str>> = s
                .users
                .iter()
                .filter(|(u, conns)| !conns.is_empty() && after.is_none_or(|a| &***u > a))
                .map(|(u, _)| u)
                .collect();
            ids.sort();
            let more = ids.len() > limit;
            ids.truncate(limit);
            let users: Vec<UserCount> = ids
                .into_iter()
                .map(|u| {
                    let conns = &s.users[u];
                    let info = conns
                        .iter()
                        .find_map(|c| s.conns.get(c).and_then(|c| c.info.as_ref()));
                    UserCount {
                        user: u.clone(),
                        connections: conns.len(),
                        info: info.and_then(|i| serde_json::from_str(i).ok()),
                    }
                })
                .collect();
            let next = more
                .then(|| users.last().map(|u| u.user.to_string()))
                .flatten();
            UsersPage { users, next }
        });
        ready(out)
    }

    fn rooms(&self) -> BoxFuture<'_, Result<Vec<RoomSummary>, PresenceError>> {
        let mut out = self.with(|s| {
            s.rooms
                .iter()
                .map(|(name, r)| RoomSummary {
                    room: name.clone(),
                    connections: r.conns.len(),
                    users: r.users.len(),
                })
                .collect::<Vec<_>>()
        });
        out.sort_by(|a, b| a.room.cmp(&b.room));
        ready(out)
    }

    fn user(&self, user: &str) -> BoxFuture<'_, Result<UserPresence, PresenceError>> {
        let out = self.with(|s| match s.users.get(user) {
            None => UserPresence::default(),
            Some(list) => UserPresence {
                online: !list.is_empty(),
                connections: list.iter().map(|c| c.to_string()).collect(),
            },
        });
        ready(out)
    }

    fn connection(
        &self,
        conn: ConnId,
    ) -> BoxFuture<'_, Result<Option<ConnPresence>, PresenceError>> {
        let out = self.with(|s| {
            s.conns.get(&conn).map(|c| {
                let mut rooms = c.rooms.clone();
                rooms.sort();
                ConnPresence {
                    user: c.user.clone(),
                    node: c.node,
                    rooms,
                }
            })
        });
        ready(out)
    }

    fn stats(&self) -> BoxFuture<'_, Result<PresenceStats, PresenceError>> {
        let out = self.with(|s| PresenceStats {
            connections: s.conns.len(),
            users: s.users.len(),
            rooms: s.rooms.len(),
        });
        ready(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_presence_passes_the_shared_suite() {
        super::super::suite::run(MemoryPresence::new).await;
    }
}
