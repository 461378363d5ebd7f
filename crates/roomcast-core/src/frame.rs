//! Encoded frames, shared between every recipient of a broadcast.

use bytes::Bytes;

/// One encoded WebSocket (or long-polling) message, ready to be written.
///
/// Cloning is a reference-count increment: a broadcast is encoded once per
/// protocol and the same bytes are queued for every recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A text frame; always valid UTF-8.
    Text(Bytes),
    /// A binary frame.
    Binary(Bytes),
}

impl Frame {
    /// A text frame from a string.
    pub fn text(s: String) -> Frame {
        Frame::Text(Bytes::from(s))
    }

    /// The payload length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Frame::Text(b) | Frame::Binary(b) => b.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The text, for a text frame.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            // Text frames are built from `String`s only.
            Frame::Text(b) => std::str::from_utf8(b).ok(),
            Frame::Binary(_) => None,
        }
    }
}
