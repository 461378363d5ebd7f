//! `[[endpoints]]`: URL-per-room WebSockets (see `docs/channels.md`).

use serde::{Deserialize, Serialize};

/// `[[endpoints]]`: a WebSocket path with the room in it (`/ws/chat/{room}/`).
/// A connection joins its room on connect; every frame it sends goes to the
/// room's members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// The path; `{room}` captures one whole path segment.
    pub path: String,
    /// The hub room a connection joins, with `{room}` replaced by the
    /// captured segment. Default: `"{room}"`.
    #[serde(default = "room_placeholder")]
    pub room: String,
    /// What happens to client frames. Default: `relay`.
    #[serde(default)]
    pub mode: EndpointMode,
}

fn room_placeholder() -> String {
    "{room}".to_owned()
}

impl EndpointConfig {
    /// An endpoint at `path` in relay mode, joining the room `{room}`.
    pub fn relay(path: &str) -> EndpointConfig {
        EndpointConfig {
            path: path.to_owned(),
            room: room_placeholder(),
            mode: EndpointMode::Relay,
        }
    }

    pub(super) fn validate(&self, i: usize) -> Result<(), String> {
        let key = format!("endpoints[{i}]");
        if !self.path.starts_with('/') {
            return Err(format!(
                "{key}.path must start with '/', got {:?}",
                self.path
            ));
        }
        let captures = self
            .path
            .split('/')
            .filter(|seg| seg.contains('{') || seg.contains('}'))
            .collect::<Vec<_>>();
        if captures != ["{room}"] {
            return Err(format!(
                "{key}.path must hold {{room}} once, as a whole path segment (\"/ws/chat/{{room}}/\"), got {:?}",
                self.path
            ));
        }
        if self.room.matches("{room}").count() > 1
            || self.room.replace("{room}", "").contains(['{', '}'])
        {
            return Err(format!(
                "{key}.room may hold {{room}} once and no other braces, got {:?}",
                self.room
            ));
        }
        Ok(())
    }
}

/// What an endpoint does with the frames its clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    /// Every frame goes to every member of the room, the sender included.
    #[default]
    Relay,
    /// Every frame goes to the event proxy (`proxy.rpc_url` or
    /// `proxy.rpc_routes`) as event `message` with the room; the answer's
    /// result goes back to the sender and its actions run.
    Rpc,
}
