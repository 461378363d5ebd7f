//! The operations a sequence is made of: each one calls the hub, checks
//! what the call returned and brings the model up to date.

use roomcast_core::{BindOutcome, Disconnect, Target, Who};

use super::*;

impl World {
    async fn connect(&mut self, node: usize, user: Option<&str>) -> Result<usize, String> {
        let conn = self.hubs[node]
            .connect(self.wire.clone(), user)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        self.serials += 1;
        let label = format!("c{}@{node}", self.serials);
        self.note(format!("connect {label} as {user:?}"));
        let indexed = self.stamp();
        self.clients.push(Client {
            conn,
            label,
            node,
            user: user.map(str::to_owned),
            indexed,
            rooms: Vec::new(),
            expect: Vec::new(),
            pos: HashMap::new(),
            mark_seq: HashMap::new(),
            closed: false,
            held: false,
        });
        Ok(self.clients.len() - 1)
    }

    /// The connections a command to `who` through `node` reaches, in order:
    /// the node's own ones, then the other node's.
    fn reached(&self, who: &Who, node: usize) -> Vec<usize> {
        let mut out: Vec<usize> = match who {
            Who::Conn(id) => (0..self.clients.len())
                .filter(|&i| self.clients[i].conn.id() == *id)
                .collect(),
            Who::User(u) => (0..self.clients.len())
                .filter(|&i| self.clients[i].user.as_deref() == Some(u.as_str()))
                .collect(),
        };
        out.sort_by_key(|&i| (self.clients[i].node != node, self.clients[i].indexed));
        out
    }

    fn random_who(&self, rng: &mut Rng) -> (Who, String) {
        if rng.chance(50) && !self.clients.is_empty() {
            let c = &self.clients[rng.below(self.clients.len())];
            (Who::Conn(c.conn.id()), c.label.clone())
        } else {
            let u = rng.pick(&USERS);
            (Who::User(u.to_owned()), u.to_owned())
        }
    }

    pub(super) async fn step(&mut self, rng: &mut Rng) -> Check {
        let nodes = self.hubs.len();
        let roll = if self.clients.is_empty() {
            0
        } else {
            rng.below(100)
        };
        match roll {
            0..=9 => {
                if self.clients.len() >= MAX_CONNS {
                    return self.close_one(rng).await;
                }
                let user = (!rng.chance(25)).then(|| rng.pick(&USERS));
                self.connect(rng.below(nodes), user).await?;
            }
            10..=23 => {
                let i = rng.below(self.clients.len());
                let room = rng.pick(&ROOMS);
                let new = !self.clients[i].rooms.iter().any(|r| r == room);
                self.note(format!("{} joins {room}", self.clients[i].label));
                self.count("client join");
                let r = self.clients[i].conn.join(room).await;
                ensure!(
                    matches!(r, Ok(j) if j == new),
                    "join {room}: {r:?}, the model {new}"
                );
                if new {
                    self.model_join(i, room, false);
                } else {
                    self.touch(room);
                }
            }
            24..=31 => {
                let i = rng.below(self.clients.len());
                let room = rng.pick(&ROOMS);
                let was = self.clients[i].rooms.iter().any(|r| r == room);
                self.note(format!("{} leaves {room}", self.clients[i].label));
                self.count("client leave");
                let r = self.clients[i].conn.leave(room).await;
                ensure!(
                    matches!(r, Ok(l) if l == was),
                    "leave {room}: {r:?}, the model {was}"
                );
                if was {
                    self.model_leave(i, room, false);
                }
            }
            32..=45 => {
                let id = self.next_id();
                let i = rng.below(self.clients.len());
                let c = &self.clients[i];
                let room = if !c.rooms.is_empty() && rng.chance(75) {
                    let k = rng.below(c.rooms.len());
                    ROOMS.into_iter().find(|r| *r == c.rooms[k]).unwrap()
                } else {
                    rng.pick(&ROOMS)
                };
                let exclude_self = rng.chance(30);
                let mut p = Publication::json(Target::Room(room.into()), room, &id).unwrap();
                if exclude_self {
                    p.exclude = Some(c.conn.id());
                }
                let what = format!(
                    "{} publishes {id} to {room}{}",
                    c.label,
                    if exclude_self {
                        " excluding itself"
                    } else {
                        ""
                    }
                );
                let (n, node) = (c.conn.publish(p).await, c.node);
                self.note(what);
                self.count(if exclude_self {
                    "client publish excluding itself"
                } else {
                    "client publish"
                });
                let want = self.model_publish(&To::Room(room), id, exclude_self.then_some(i), node);
                ensure!(
                    matches!(n, Ok(n) if n == want),
                    "publish: {n:?}, the model {want} local"
                );
            }
            46..=53 => {
                let node = rng.below(nodes);
                let to = match rng.below(10) {
                    0..=6 => To::Room(rng.pick(&ROOMS)),
                    7 | 8 => To::User(rng.pick(&USERS)),
                    _ => To::All,
                };
                // Now and then a burst, so that history gets trimmed under
                // connections that are away.
                let burst = match to {
                    To::Room(r) if history_size(r).is_some() && rng.chance(30) => 2 + rng.below(5),
                    _ => 1,
                };
                if burst > 1 {
                    self.count("burst of publications");
                }
                for _ in 0..burst {
                    let id = self.next_id();
                    let (target, event) = match &to {
                        To::Room(r) => (Target::Room((*r).into()), *r),
                        To::User(u) => (Target::User((*u).into()), "dm"),
                        To::All => (Target::All, "all"),
                    };
                    self.note(format!("node {node} publishes {id} to {target:?}"));
                    self.count("server publish");
                    let p = Publication::json(target, event, &id).unwrap();
                    let n = self.hubs[node].publish(p).await;
                    let want = self.model_publish(&to, id, None, node);
                    ensure!(
                        matches!(n, Ok(n) if n == want),
                        "publish: {n:?}, the model {want} local"
                    );
                }
            }
            54..=61 => {
                let node = rng.below(nodes);
                let (who, name) = self.random_who(rng);
                let room = rng.pick(&ROOMS);
                let join = rng.chance(60);
                let reached = self.reached(&who, node);
                self.count_remote(&reached, node);
                self.count(if join { "server join" } else { "server leave" });
                self.note(format!(
                    "node {node} {} {name} {room}",
                    if join { "joins" } else { "removes" }
                ));
                let local: Vec<usize> = reached
                    .iter()
                    .copied()
                    .filter(|&i| self.clients[i].node == node)
                    .collect();
                if join {
                    let want = local.len();
                    let r = self.hubs[node].join(who, room).await;
                    ensure!(
                        matches!(r, Ok(n) if n == want),
                        "server join: {r:?}, the model {want}"
                    );
                } else {
                    let want = local
                        .iter()
                        .filter(|&&i| self.clients[i].rooms.iter().any(|r| r == room))
                        .count();
                    let r = self.hubs[node].leave(who, room).await;
                    ensure!(
                        matches!(r, Ok(n) if n == want),
                        "server leave: {r:?}, the model {want}"
                    );
                }
                for i in reached {
                    let member = self.clients[i].rooms.iter().any(|r| r == room);
                    if join && !member {
                        self.model_join(i, room, true);
                    } else if join {
                        self.touch(room);
                    } else if !join && member {
                        self.model_leave(i, room, true);
                    }
                }
            }
            62..=63 => self.close_room(rng).await?,
            64..=71 => self.close_one(rng).await?,
            72..=77 => {
                let node = rng.below(nodes);
                let i = rng.below(self.clients.len());
                let user = rng.pick(&USERS);
                let what = format!("node {node} binds {} to {user}", self.clients[i].label);
                self.note(what);
                self.count("bind");
                let c = &self.clients[i];
                let r = self.hubs[node].bind(c.conn.id(), user).await;
                let local = c.node == node;
                let applies = c.user.is_none();
                if !local {
                    self.count("command carried to the other node");
                }
                let c = &self.clients[i];
                let ok = match (&r, local, c.user.as_deref()) {
                    (Ok(BindOutcome::Forwarded), false, _) => true,
                    (Ok(BindOutcome::Bound), true, None) => true,
                    (Ok(BindOutcome::Already), true, Some(u)) => u == user,
                    (Err(_), true, Some(u)) => u != user,
                    _ => false,
                };
                ensure!(ok, "bind: {r:?} for {:?} (local {local})", c.user);
                if applies {
                    let stamp = self.stamp();
                    self.clients[i].user = Some(user.to_owned());
                    self.clients[i].indexed = stamp;
                    for room in self.clients[i].rooms.clone() {
                        let others = self
                            .in_room(&room)
                            .into_iter()
                            .any(|j| j != i && self.clients[j].user.as_deref() == Some(user));
                        if !others {
                            let members = self.in_room(&room);
                            self.push_to(&members, &format!("pj {room} {user}"));
                            self.count("presence join event on bind");
                        }
                    }
                }
            }
            78..=87 => self.reconnect(rng).await?,
            88..=93 => self.resume_in_room(rng).await?,
            94..=95 => self.resume_fresh(rng).await?,
            96..=97 => self.resume_while_publishing(rng).await?,
            _ => {
                let node = rng.below(nodes);
                let room = rng.pick(&["h-small", "h-big"]);
                self.note(format!("node {node} removes the history of {room}"));
                self.hubs[node]
                    .remove_history(room)
                    .await
                    .map_err(|e| format!("remove history: {e}"))?;
                self.streams.remove(room);
                self.count("remove history");
            }
        }
        Ok(())
    }

    fn next_id(&mut self) -> u64 {
        self.ids += 1;
        self.ids
    }

    /// A client closes, or the server disconnects a connection or a user.
    async fn close_one(&mut self, rng: &mut Rng) -> Check {
        if rng.chance(40) {
            let i = rng.below(self.clients.len());
            self.note(format!("{} closes", self.clients[i].label));
            self.count("client close");
            self.clients[i].conn.close().await;
            self.model_close(i);
            return Ok(());
        }
        let node = rng.below(self.hubs.len());
        let (who, name) = self.random_who(rng);
        let reached = self.reached(&who, node);
        self.note(format!("node {node} disconnects {name}"));
        self.count("server disconnect");
        self.count_remote(&reached, node);
        let n = self.hubs[node]
            .disconnect(who, Disconnect::BY_SERVER)
            .await
            .map_err(|e| format!("disconnect: {e}"))?;
        let want = reached
            .iter()
            .filter(|&&i| self.clients[i].node == node)
            .count();
        ensure!(
            n == want,
            "disconnect reached {n} local connections, the model {want}"
        );
        self.quiesce().await?;
        for (i, c) in self.clients.iter_mut().enumerate() {
            let hit = reached.contains(&i);
            ensure!(
                c.conn.outbox().is_closed() == hit,
                "{}: outbox closed {}, the model {hit}",
                c.label,
                c.conn.outbox().is_closed()
            );
            c.closed = hit;
        }
        // Each one's task drains what was queued before the close, then closes.
        let mut ids: Vec<_> = reached.iter().map(|&i| self.clients[i].conn.id()).collect();
        while let Some(id) = ids.pop() {
            let i = self.clients.iter().position(|c| c.conn.id() == id).unwrap();
            let got = drain(&self.clients[i].conn).await?;
            ensure!(
                got == self.clients[i].expect,
                "{} drained {got:?}, the model {:?}",
                self.clients[i].label,
                self.clients[i].expect
            );
            self.clients[i].conn.close().await;
            self.model_close(i);
        }
        Ok(())
    }

    async fn close_room(&mut self, rng: &mut Rng) -> Check {
        let node = rng.below(self.hubs.len());
        let room = rng.pick(&ROOMS);
        let members = self.in_room(room);
        self.note(format!("node {node} closes {room}"));
        self.count("close room");
        self.count_remote(&members, node);
        let n = self.hubs[node]
            .close_room(room)
            .await
            .map_err(|e| format!("close room: {e}"))?;
        let want = members
            .iter()
            .filter(|&&i| self.clients[i].node == node)
            .count();
        ensure!(
            n == want,
            "close room reached {n} local connections, the model {want}"
        );
        self.quiesce().await?;
        // The members leave one by one in no defined order: each gets leave
        // events of other users whose last connection left before it, then
        // its notice.
        let users: Vec<String> = members
            .iter()
            .filter_map(|&i| self.clients[i].user.clone())
            .collect();
        for &i in &members {
            let c = &mut self.clients[i];
            let got = drain(&c.conn).await?;
            let (last, before) = got.split_last().ok_or(format!("{} got nothing", c.label))?;
            let mut seen: Vec<&str> = Vec::new();
            let ok = *last == format!("out {room}")
                && before.iter().all(|f| {
                    let u = f.strip_prefix(&format!("pl {room} ")).unwrap_or("");
                    let fine = users.iter().any(|x| x == u)
                        && c.user.as_deref() != Some(u)
                        && !seen.contains(&u);
                    seen.push(u);
                    fine
                });
            ensure!(
                ok,
                "{} ({:?}) got {got:?} when {room} closed",
                c.label,
                c.user
            );
            if !before.is_empty() {
                *self.seen.entry("leave event on close room").or_default() += 1;
            }
            c.rooms.retain(|r| r != room);
            c.mark_seq.remove(room);
        }
        Ok(())
    }

    /// A closed connection comes back and resumes its rooms.
    async fn reconnect(&mut self, rng: &mut Rng) -> Check {
        if self.ghosts.is_empty() || self.clients.len() >= MAX_CONNS {
            return self.close_one(rng).await;
        }
        let ghost = self.ghosts.remove(rng.below(self.ghosts.len()));
        let node = rng.below(self.hubs.len());
        let i = self.connect(node, ghost.user.as_deref()).await?;
        let mut plan = Vec::new();
        for room in &ghost.rooms {
            let from = match ghost.pos.get(room) {
                Some(&(generation, offset)) if history_size(room).is_some() => {
                    From::Offset(self.epoch(room, generation)?, offset)
                }
                _ => From::Latest,
            };
            plan.push((room.clone(), from));
        }
        let together = rng.chance(50);
        self.count(if together {
            "reconnect with rejoin"
        } else {
            "reconnect room by room"
        });
        self.note(format!(
            "{} resumes {:?} {}",
            self.clients[i].label,
            ghost.rooms,
            if together {
                "with rejoin"
            } else {
                "room by room"
            }
        ));
        if together {
            let mut want = Vec::new();
            for (room, from) in &plan {
                want.push(self.expect_join(i, room, from, None)?);
            }
            let rooms: Vec<(String, Since)> =
                plan.iter().map(|(r, f)| (r.clone(), since(f))).collect();
            let got = self.clients[i]
                .conn
                .rejoin(rooms, |rs| rs.iter().map(reply_frame).collect())
                .await
                .map_err(|e| format!("rejoin: {e}"))?;
            self.compare_recoveries(&got, &want)?;
            self.model_rejoin(i, &want);
        } else {
            for (room, from) in &plan {
                let want = self.expect_join(i, room, from, None)?;
                let got = self.clients[i]
                    .conn
                    .join_since(room, since(from), |r| Some(reply_frame(r)))
                    .await
                    .map_err(|e| format!("join_since: {e}"))?;
                self.compare_recoveries(&[got], std::slice::from_ref(&want))?;
                self.model_rejoin(i, &[want]);
            }
        }
        Ok(())
    }

    /// A connection in a history room asks for it again from some offset:
    /// it gets what came before its join, after that offset.
    async fn resume_in_room(&mut self, rng: &mut Rng) -> Check {
        let candidates: Vec<(usize, &str)> = (0..self.clients.len())
            .flat_map(|i| {
                self.clients[i]
                    .rooms
                    .iter()
                    .filter_map(|r| ROOMS.into_iter().find(|x| x == r))
                    .filter(|r| history_size(r).is_some())
                    .map(move |r| (i, r))
            })
            .collect();
        if candidates.is_empty() {
            return self.resume_fresh(rng).await;
        }
        let (i, room) = rng.pick(&candidates);
        let from = self.random_from(rng, room)?;
        let cutoff = self.clients[i].mark_seq.get(room).copied().unwrap_or(0);
        let want = self.expect_join(i, room, &from, Some(cutoff))?;
        self.note(format!(
            "{} (in it) resumes {room} from {}",
            self.clients[i].label,
            describe(&from)
        ));
        let got = self.clients[i]
            .conn
            .join_since(room, since(&from), |r| Some(reply_frame(r)))
            .await
            .map_err(|e| format!("join_since: {e}"))?;
        self.compare_recoveries(&[got], std::slice::from_ref(&want))?;
        self.model_rejoin(i, &[want]);
        Ok(())
    }

    /// A connection joins a room with history from a position of its own,
    /// a random one, one past the top or one of an unknown epoch.
    async fn resume_fresh(&mut self, rng: &mut Rng) -> Check {
        let i = rng.below(self.clients.len());
        let room = rng.pick(&["h-small", "h-big"]);
        if self.clients[i].rooms.iter().any(|r| r == room) {
            return Ok(());
        }
        let from = match self.clients[i].pos.get(room) {
            Some(&(generation, offset)) if rng.chance(40) => {
                From::Offset(self.epoch(room, generation)?, offset)
            }
            _ => self.random_from(rng, room)?,
        };
        let want = self.expect_join(i, room, &from, None)?;
        self.note(format!(
            "{} resumes {room} from {}",
            self.clients[i].label,
            describe(&from)
        ));
        let got = self.clients[i]
            .conn
            .join_since(room, since(&from), |r| Some(reply_frame(r)))
            .await
            .map_err(|e| format!("join_since: {e}"))?;
        self.compare_recoveries(&[got], std::slice::from_ref(&want))?;
        self.model_rejoin(i, &[want]);
        Ok(())
    }

    /// A connection joins a room with history from a position while the
    /// server publishes to the room between its join and its read of the
    /// stream: it gets those publications once, from the replay, after the
    /// reply; the other members get them live.
    async fn resume_while_publishing(&mut self, rng: &mut Rng) -> Check {
        let i = rng.below(self.clients.len());
        let room = rng.pick(&["h-small", "h-big"]);
        if self.clients[i].rooms.iter().any(|r| r == room) {
            return Ok(());
        }
        let from = match self.clients[i].pos.get(room) {
            Some(&(generation, offset)) if rng.chance(60) => {
                From::Offset(self.epoch(room, generation)?, offset)
            }
            _ => self.random_from(rng, room)?,
        };
        let node = rng.below(self.hubs.len());
        let burst = 1 + rng.below(6);
        let ids: Vec<u64> = (0..burst).map(|_| self.next_id()).collect();
        self.note(format!(
            "{} resumes {room} from {} while node {node} publishes {ids:?}",
            self.clients[i].label,
            describe(&from)
        ));
        self.count("resume while publishing");
        self.history.armed.store(true, Ordering::Release);
        let (hub, conn, gate) = (&self.hubs[node], &self.clients[i].conn, &self.history);
        let join = conn.join_since(room, since(&from), |r| Some(reply_frame(r)));
        let publish = async {
            let read = tokio::time::timeout(DEADLINE, gate.arrived.notified()).await;
            let mut out = Vec::new();
            for id in &ids {
                let p = Publication::json(Target::Room(room.into()), room, id).unwrap();
                out.push(hub.publish(p).await);
            }
            gate.proceed.notify_one();
            (read.is_ok(), out)
        };
        let (got, (read, published)) = tokio::join!(join, publish);
        ensure!(
            read,
            "the join did not read the history within {DEADLINE:?}"
        );
        let got = got.map_err(|e| format!("join_since: {e}"))?;
        // The join took effect (presence events) before the publications.
        self.model_join(i, room, false);
        self.clients[i].held = true;
        for (id, n) in ids.iter().zip(published) {
            let want = self.model_publish(&To::Room(room), *id, None, node);
            ensure!(
                matches!(n, Ok(n) if n == want),
                "publish: {n:?}, the model {want} local"
            );
        }
        self.clients[i].held = false;
        // The read found them all; the join's position and mark are its top.
        let mut want = self.expect_join(i, room, &from, None)?;
        want.joined = true;
        let s = &self.streams[room];
        let (top, seq) = ((s.generation, s.top), s.top_seq);
        self.compare_recoveries(&[got], std::slice::from_ref(&want))?;
        self.count(want.case);
        let c = &mut self.clients[i];
        c.pos.insert(room.to_owned(), top);
        c.mark_seq.insert(room.to_owned(), seq);
        c.expect.push(format!("rec {room} {}", want.recovered));
        c.expect.extend(want.replay.into_iter().map(|r| r.1));
        Ok(())
    }

    fn random_from(&self, rng: &mut Rng, room: &str) -> Result<From, String> {
        let Some(s) = self.streams.get(room) else {
            return Ok(From::Offset("no-such-epoch".into(), rng.below(3) as u64));
        };
        let epoch = if rng.chance(15) {
            "no-such-epoch".to_owned()
        } else {
            self.epoch(room, s.generation)?
        };
        Ok(From::Offset(epoch, rng.below(s.top as usize + 3) as u64))
    }
}

fn since(from: &From) -> Since {
    match from {
        From::Latest => Since::Latest,
        From::Offset(epoch, offset) => Since::Offset {
            offset: *offset,
            epoch: epoch.clone(),
        },
    }
}

fn describe(from: &From) -> String {
    match from {
        From::Latest => "latest".into(),
        From::Offset(epoch, offset) => format!("{offset} of {epoch}"),
    }
}
