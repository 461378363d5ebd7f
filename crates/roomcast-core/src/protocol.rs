//! The seam between the hub and a wire format.

use crate::{Frame, PresenceEvent, Publication};

/// Encodes what the hub sends to clients in one wire format (native JSON, Socket.IO).
///
/// The hub calls each method at most once per protocol per delivery, and queues
/// the same [`Frame`] for every recipient that speaks the protocol.
pub trait Protocol: Send + Sync + 'static {
    /// A publication, as the recipients of this protocol see it.
    fn encode_publication(&self, publication: &Publication) -> Frame;

    /// A presence event, or `None` if the protocol does not show presence events.
    fn encode_presence(&self, event: &PresenceEvent) -> Option<Frame>;

    /// A notice that the server put the connection into (`joined`) or took it out of a room.
    fn encode_membership(&self, room: &str, joined: bool) -> Option<Frame>;

    /// The Socket.IO namespace the connection belongs to; `None` for protocols
    /// without namespaces, which count as the default namespace `/`. Used to
    /// scope what Socket.IO emitters send.
    fn namespace(&self) -> Option<&str> {
        None
    }
}
