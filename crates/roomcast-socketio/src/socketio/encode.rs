//! How the hub's publications and presence events look to the Socket.IO
//! clients of one namespace.

use serde_json::Value;

use roomcast_core::{Frame, PresenceEvent, Protocol, Publication};

/// How the hub's publications look to Socket.IO clients of one namespace:
/// `42<nsp>,["<event>",<data>]`.
pub(super) struct NamespaceProtocol {
    pub(super) nsp: String,
    pub(super) presence_event: Option<String>,
    /// Append a positioned publication's offset as its last argument, for
    /// connection-state recovery.
    pub(super) offsets: bool,
}

impl NamespaceProtocol {
    /// `data` is zero or more comma-separated JSON values: the arguments.
    fn frame(&self, event: &str, data: &str) -> Frame {
        self.frame_with(event, data, None)
    }

    fn frame_with(&self, event: &str, data: &str, offset: Option<u64>) -> Frame {
        let mut s = String::with_capacity(event.len() + data.len() + self.nsp.len() + 32);
        s.push_str("42");
        if self.nsp != "/" {
            s.push_str(&self.nsp);
            s.push(',');
        }
        s.push('[');
        s.push_str(&Value::String(event.to_owned()).to_string());
        if !data.is_empty() {
            s.push(',');
            s.push_str(data);
        }
        if let Some(offset) = offset {
            // An opaque string to the client: the history sequence number.
            use std::fmt::Write as _;
            let _ = write!(s, ",\"{offset}\"");
        }
        s.push(']');
        Frame::text(s)
    }
}

impl Protocol for NamespaceProtocol {
    fn encode_publication(&self, p: &Publication) -> Frame {
        let data = p.data.get();
        let offset = self
            .offsets
            .then(|| p.position.as_ref().map(|s| s.seq))
            .flatten();
        if p.spread {
            // `data` is a JSON array of arguments: `["ev",a,b]` rather than `["ev",[a,b]]`.
            if let Some(inner) = data.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
                return self.frame_with(&p.event, inner.trim(), offset);
            }
        }
        self.frame_with(&p.event, data, offset)
    }

    fn namespace(&self) -> Option<&str> {
        Some(&self.nsp)
    }

    fn encode_presence(&self, e: &PresenceEvent) -> Option<Frame> {
        let name = self.presence_event.as_ref()?;
        let data = serde_json::json!({
            "room": e.room, "event": e.kind.as_str(), "user": &*e.user, "conn": e.conn.to_string(),
        });
        Some(self.frame(name, &data.to_string()))
    }

    fn encode_membership(&self, _: &str, _: bool) -> Option<Frame> {
        None
    }
}
