//! Engine.IO v4 packets and long-polling payloads: pure functions over bytes.
//!
//! A packet on a WebSocket is one frame: text `<type><data>`, or a binary
//! frame holding a binary message with no type byte. A long-polling payload
//! joins packets with the record separator `\x1e`; a binary message in it is
//! `b<base64>`.

use base64::Engine as _;
use bytes::Bytes;

/// The record separator between packets of a long-polling payload.
pub const SEPARATOR: char = '\x1e';

/// An Engine.IO packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// `0{...}`: the handshake, server → client.
    Open(String),
    /// `1`: close the session.
    Close,
    /// `2` (or `2probe` during an upgrade).
    Ping(String),
    /// `3` (or `3probe`).
    Pong(String),
    /// `4<text>`: a text message.
    Message(String),
    /// A binary message.
    Binary(Bytes),
    /// `5`: the client completes an upgrade.
    Upgrade,
    /// `6`: nothing; frees a pending poll.
    Noop,
}

/// A packet that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Empty text.
    #[error("empty packet")]
    Empty,
    /// The type character is not 0–6 (or `b` in a payload).
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    /// A `b` packet whose base64 does not decode.
    #[error("invalid base64 in a binary packet")]
    Base64,
}

impl Packet {
    /// Decodes a text packet (a WebSocket text frame, or one record of a payload).
    pub fn decode(text: &str) -> Result<Packet, PacketError> {
        let mut chars = text.chars();
        let ty = chars.next().ok_or(PacketError::Empty)?;
        let rest = chars.as_str();
        Ok(match ty {
            '0' => Packet::Open(rest.to_owned()),
            '1' => Packet::Close,
            '2' => Packet::Ping(rest.to_owned()),
            '3' => Packet::Pong(rest.to_owned()),
            '4' => Packet::Message(rest.to_owned()),
            '5' => Packet::Upgrade,
            '6' => Packet::Noop,
            other => return Err(PacketError::UnknownType(other)),
        })
    }

    /// The text form (`Binary` has none: see [`encode_payload`] and the WebSocket transport).
    pub fn encode_text(&self) -> Option<String> {
        Some(match self {
            Packet::Open(d) => format!("0{d}"),
            Packet::Close => "1".to_owned(),
            Packet::Ping(d) => format!("2{d}"),
            Packet::Pong(d) => format!("3{d}"),
            Packet::Message(d) => format!("4{d}"),
            Packet::Upgrade => "5".to_owned(),
            Packet::Noop => "6".to_owned(),
            Packet::Binary(_) => return None,
        })
    }
}

/// Decodes a long-polling request body into packets.
pub fn decode_payload(body: &str) -> Result<Vec<Packet>, PacketError> {
    body.split(SEPARATOR)
        .map(|record| match record.strip_prefix('b') {
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map(|v| Packet::Binary(Bytes::from(v)))
                .map_err(|_| PacketError::Base64),
            None => Packet::decode(record),
        })
        .collect()
}

/// One queued packet as it will be written: the text of a text packet, or the
/// bytes of a binary message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoded<'a> {
    /// A text packet, type digit included.
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
}

/// Encodes queued packets as one long-polling response body.
pub fn encode_payload<'a>(packets: impl IntoIterator<Item = Encoded<'a>>) -> String {
    let mut out = String::new();
    for (i, p) in packets.into_iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        match p {
            Encoded::Text(t) => out.push_str(t),
            Encoded::Binary(b) => {
                out.push('b');
                base64::engine::general_purpose::STANDARD.encode_string(b, &mut out);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_packets_round_trip() {
        for (wire, packet) in [
            ("0{\"sid\":\"a\"}", Packet::Open("{\"sid\":\"a\"}".into())),
            ("1", Packet::Close),
            ("2", Packet::Ping(String::new())),
            ("2probe", Packet::Ping("probe".into())),
            ("3probe", Packet::Pong("probe".into())),
            ("4hello", Packet::Message("hello".into())),
            ("4", Packet::Message(String::new())),
            ("5", Packet::Upgrade),
            ("6", Packet::Noop),
        ] {
            assert_eq!(Packet::decode(wire).unwrap(), packet);
            assert_eq!(packet.encode_text().unwrap(), wire);
        }
        assert_eq!(Packet::decode(""), Err(PacketError::Empty));
        assert_eq!(Packet::decode("7x"), Err(PacketError::UnknownType('7')));
        assert_eq!(Packet::decode("abc"), Err(PacketError::UnknownType('a')));
    }

    #[test]
    fn payloads() {
        let body = "4hello\x1e2\x1e4world\x1ebAQID";
        assert_eq!(
            decode_payload(body).unwrap(),
            vec![
                Packet::Message("hello".into()),
                Packet::Ping(String::new()),
                Packet::Message("world".into()),
                Packet::Binary(Bytes::from_static(&[1, 2, 3])),
            ]
        );
        assert_eq!(decode_payload("b!!!"), Err(PacketError::Base64));
        assert_eq!(decode_payload("4a\x1e\x1e4b"), Err(PacketError::Empty));
        assert_eq!(
            encode_payload([
                Encoded::Text("4hello"),
                Encoded::Binary(&[1, 2, 3]),
                Encoded::Text("2")
            ]),
            "4hello\x1ebAQID\x1e2"
        );
        assert_eq!(encode_payload([Encoded::Text("6")]), "6");
    }
}
