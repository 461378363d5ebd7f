//! Room names and the per-pattern rules that apply to rooms.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::history::HistoryLimits;

/// The longest room name allowed when nothing else is configured.
pub const DEFAULT_MAX_ROOM_NAME: usize = 200;

/// Why a room name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomNameError {
    /// The name is empty.
    #[error("room name is empty")]
    Empty,
    /// The name is too long.
    #[error("room name is longer than {max} bytes")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// The name has a character outside the allowed set.
    #[error("room name may only contain A-Z a-z 0-9 and _ - . : @ # / = +")]
    BadChar,
}

/// Checks a room name: 1 to `max_len` bytes of `A-Z a-z 0-9 _ - . : @ # / = +`.
pub fn validate_room_name(name: &str, max_len: usize) -> Result<(), RoomNameError> {
    if name.is_empty() {
        return Err(RoomNameError::Empty);
    }
    if name.len() > max_len {
        return Err(RoomNameError::TooLong { max: max_len });
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-.:@#/=+".contains(&b))
    {
        return Err(RoomNameError::BadChar);
    }
    Ok(())
}

/// Who may join a room from the client side. The HTTP API, the backend's
/// proxy actions and Rust code are not bound by it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinRule {
    /// Any connection the server accepted, anonymous ones included.
    #[default]
    Anyone,
    /// Connections with a user id.
    Authenticated,
    /// Connections whose token (`rooms` claim) or connect-proxy answer lists the room.
    Claim,
    /// Connections the backend approves, asked at each join (`proxy.subscribe_url`).
    Proxy,
    /// Nobody: only the server side joins connections to the room.
    None,
}

/// Who may publish to a room from the client side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishRule {
    /// Connections in the room.
    #[default]
    Members,
    /// Any connection allowed to act (anonymous ones only where allowed).
    Anyone,
    /// Nobody: only the server side publishes to the room.
    None,
}

/// Settings for the rooms whose names match `pattern`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomRule {
    /// A room name, or a glob where `*` matches any run of characters (`chat:*`, `*`).
    /// `#{user}` matches the acting connection's user id only (`user:#{user}`):
    /// for another connection the rule does not apply and the next one is tried.
    pub pattern: String,
    /// Who may join from the client side. Default: `anyone`.
    #[serde(default)]
    pub join: JoinRule,
    /// Who may publish from the client side. Default: `members`.
    #[serde(default)]
    pub publish: PublishRule,
    /// Send `presence` join/leave events to members when a user's first connection
    /// joins or their last leaves. Default: true.
    #[serde(default = "yes")]
    pub join_leave_events: bool,
    /// Whether clients may ask who is in the room. `false` also stops the
    /// join/leave events, which would tell the same. Default: true.
    #[serde(default = "yes")]
    pub presence: bool,
    /// The most connections the room may hold; 0 means no limit. Default: 0.
    #[serde(default)]
    pub max_members: usize,
    /// Publications the room's history keeps; 0 keeps none. Default: the
    /// server-wide `history.size` (0 unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_size: Option<usize>,
    /// Seconds a publication stays in the room's history. Default: the
    /// server-wide `history.ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_ttl: Option<u64>,
}

fn yes() -> bool {
    true
}

impl RoomRule {
    /// The rule for rooms no configured pattern matches.
    pub fn default_for(pattern: &str) -> RoomRule {
        RoomRule {
            pattern: pattern.to_owned(),
            join: JoinRule::Anyone,
            publish: PublishRule::Members,
            join_leave_events: true,
            presence: true,
            max_members: 0,
            history_size: None,
            history_ttl: None,
        }
    }

    /// Whether members get join/leave events: `join_leave_events`, unless
    /// `presence` hides who is in the room.
    pub fn announces_members(&self) -> bool {
        self.join_leave_events && self.presence
    }

    /// Whether this rule applies to `room`, whoever acts (`#{user}` matches any user).
    pub fn matches(&self, room: &str) -> bool {
        if self.pattern.contains(USER_PLACEHOLDER) {
            let any = self.pattern.replace(USER_PLACEHOLDER, "*");
            return glob_match(any.as_bytes(), room.as_bytes());
        }
        glob_match(self.pattern.as_bytes(), room.as_bytes())
    }

    /// Whether this rule applies to `room` when `user` acts: `#{user}` stands
    /// for that user id alone, and never matches for a connection without one.
    pub fn matches_for(&self, room: &str, user: Option<&str>) -> bool {
        if !self.pattern.contains(USER_PLACEHOLDER) {
            return self.matches(room);
        }
        let Some(user) = user else { return false };
        // `*` in a user id must stay literal: only rooms named for this exact user match.
        if user.contains('*') {
            return false;
        }
        let own = self.pattern.replace(USER_PLACEHOLDER, user);
        glob_match(own.as_bytes(), room.as_bytes())
    }
}

/// The placeholder for the acting user's id in a rule's pattern.
pub const USER_PLACEHOLDER: &str = "#{user}";

/// Rules in configuration order; the first whose pattern matches a room applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRules {
    rules: Vec<RoomRule>,
    fallback: RoomRule,
    history: HistoryLimits,
}

/// The history ttl when neither a rule nor the server-wide setting gives one.
pub const DEFAULT_HISTORY_TTL: Duration = Duration::from_secs(300);

impl Default for RoomRules {
    fn default() -> Self {
        RoomRules::new(Vec::new())
    }
}

impl RoomRules {
    /// Rules in order of precedence.
    pub fn new(rules: Vec<RoomRule>) -> RoomRules {
        RoomRules {
            rules,
            fallback: RoomRule::default_for("*"),
            history: HistoryLimits {
                size: 0,
                ttl: DEFAULT_HISTORY_TTL,
            },
        }
    }

    /// Sets the history every room keeps unless its rule says otherwise
    /// (`size` 0: none).
    pub fn with_history(mut self, limits: HistoryLimits) -> RoomRules {
        self.history = limits;
        self
    }

    /// The history `room` keeps, if any.
    pub fn history_for(&self, room: &str) -> Option<HistoryLimits> {
        let rule = self.for_room(room);
        let size = rule.history_size.unwrap_or(self.history.size);
        if size == 0 {
            return None;
        }
        let ttl = rule
            .history_ttl
            .map(Duration::from_secs)
            .unwrap_or(self.history.ttl);
        Some(HistoryLimits {
            size,
            ttl: if ttl.is_zero() {
                DEFAULT_HISTORY_TTL
            } else {
                ttl
            },
        })
    }

    /// Whether any room may keep history.
    pub fn any_history(&self) -> bool {
        self.history.size > 0 || self.rules.iter().any(|r| r.history_size.unwrap_or(0) > 0)
    }

    /// The rule that applies to `room`.
    pub fn for_room(&self, room: &str) -> &RoomRule {
        self.rules
            .iter()
            .find(|r| r.matches(room))
            .unwrap_or(&self.fallback)
    }

    /// The rule that applies to `room` when `user` acts (see [`RoomRule::matches_for`]).
    pub fn for_room_as(&self, room: &str, user: Option<&str>) -> &RoomRule {
        self.rules
            .iter()
            .find(|r| r.matches_for(room, user))
            .unwrap_or(&self.fallback)
    }
}

/// Matches `*` against any run of bytes; everything else literally.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        assert!(validate_room_name("chat:lobby-1/a.b@c#d=e+f_g", 200).is_ok());
        assert_eq!(validate_room_name("", 200), Err(RoomNameError::Empty));
        assert_eq!(validate_room_name("a b", 200), Err(RoomNameError::BadChar));
        assert_eq!(validate_room_name("é", 200), Err(RoomNameError::BadChar));
        assert_eq!(
            validate_room_name("abcd", 3),
            Err(RoomNameError::TooLong { max: 3 })
        );
    }

    #[test]
    fn globs() {
        assert!(glob_match(b"*", b"anything"));
        assert!(glob_match(b"chat:*", b"chat:lobby"));
        assert!(glob_match(b"chat:*", b"chat:"));
        assert!(!glob_match(b"chat:*", b"chatx"));
        assert!(glob_match(b"a*b*c", b"aXXbYYc"));
        assert!(!glob_match(b"a*b*c", b"aXXbYY"));
        assert!(glob_match(b"exact", b"exact"));
        assert!(!glob_match(b"exact", b"exactly"));
    }

    #[test]
    fn user_placeholder_matches_the_acting_user_only() {
        let mut own = RoomRule::default_for("user:#{user}");
        own.join = JoinRule::Authenticated;
        let mut others = RoomRule::default_for("user:*");
        others.join = JoinRule::None;
        let rules = RoomRules::new(vec![own, others]);
        assert_eq!(
            rules.for_room_as("user:42", Some("42")).join,
            JoinRule::Authenticated
        );
        assert_eq!(rules.for_room_as("user:42", Some("7")).join, JoinRule::None);
        assert_eq!(rules.for_room_as("user:42", None).join, JoinRule::None);
        assert_eq!(
            rules.for_room_as("user:4*", Some("4*")).join,
            JoinRule::None
        );
        assert_eq!(
            rules.for_room_as("user:42x", Some("42")).join,
            JoinRule::None
        );
        // Without an actor (hub limits), the placeholder matches any user.
        assert_eq!(rules.for_room("user:42").join, JoinRule::Authenticated);
    }

    #[test]
    fn first_matching_rule_wins() {
        let mut quiet = RoomRule::default_for("big:*");
        quiet.join_leave_events = false;
        let rules = RoomRules::new(vec![quiet, RoomRule::default_for("*")]);
        assert!(!rules.for_room("big:1").join_leave_events);
        assert!(rules.for_room("small").join_leave_events);
    }
}
