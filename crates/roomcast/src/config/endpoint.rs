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
    /// `type` of the messages the room's publications become for the
    /// Channels group (`[channels] publish_to_groups`), e.g. `chat.message`.
    /// Default: none (`roomcast.message`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_type: Option<String>,
    /// The Channels channel client frames go to, for `mode = "channel"`
    /// (e.g. `chat.inbound`, served by `manage.py runworker chat.inbound`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub channel: String,
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
            group_type: None,
            channel: String::new(),
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
        // The router (axum 0.8) refuses a segment that starts with ':' or '*'
        // (the capture syntax of older versions) by panicking at startup.
        if let Some(seg) = self.path.split('/').find(|seg| seg.starts_with([':', '*'])) {
            return Err(format!(
                "{key}.path segments may not start with ':' or '*', got {seg:?} in {:?}",
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
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.len() < 100
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        match (self.mode, self.channel.is_empty()) {
            (EndpointMode::Channel, true) => {
                return Err(format!(
                    "{key}.mode = \"channel\" needs {key}.channel, e.g. \"chat.inbound\""
                ))
            }
            (EndpointMode::Channel, false) if !name_ok(&self.channel) => {
                return Err(format!(
                    "{key}.channel must be a Channels channel name (letters, digits, '-', '_', '.', under 100), got {:?}",
                    self.channel
                ))
            }
            (EndpointMode::Relay | EndpointMode::Rpc, false) => {
                return Err(format!("{key}.channel is only for mode = \"channel\""))
            }
            _ => {}
        }
        if let Some(t) = &self.group_type {
            if !name_ok(t) {
                return Err(format!(
                    "{key}.group_type must be a message type like \"chat.message\", got {t:?}"
                ));
            }
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
    /// Every frame goes to a Channels channel (`channel`) as
    /// `websocket.receive`, with `websocket.connect` and
    /// `websocket.disconnect` around them, for a Django worker.
    Channel,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paths the router cannot take are configuration errors, not a panic
    /// at startup (found by fuzzing `endpoint_path`).
    #[test]
    fn paths_the_router_refuses_are_configuration_errors() {
        for path in ["/:s/{room}", "/ws/*x/{room}/", "/a/{room}/:b"] {
            let e = EndpointConfig::relay(path).validate(0).unwrap_err();
            assert!(e.contains("may not start with ':' or '*'"), "{path}: {e}");
        }
        for path in ["/ws/chat/{room}/", "/a:b/{room}", "/x*/{room}"] {
            EndpointConfig::relay(path).validate(0).unwrap();
        }
    }
}
