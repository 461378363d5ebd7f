//! Socket.IO v5 packets: `<type>[<attachments>-][<nsp>,][<ackId>][<JSON>]`.
//!
//! Pure functions over strings, with every validation rule of the reference
//! parser: a packet that breaks one is refused, and the caller closes the
//! connection.

use serde_json::Value;

/// Event names a client may not emit.
pub const RESERVED_EVENTS: &[&str] = &[
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// The most binary attachments one packet may announce.
pub const MAX_ATTACHMENTS: usize = 10;

/// The packet type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `0`
    Connect,
    /// `1`
    Disconnect,
    /// `2`
    Event,
    /// `3`
    Ack,
    /// `4`
    ConnectError,
    /// `5`
    BinaryEvent,
    /// `6`
    BinaryAck,
}

impl Kind {
    fn from_char(c: char) -> Option<Kind> {
        Some(match c {
            '0' => Kind::Connect,
            '1' => Kind::Disconnect,
            '2' => Kind::Event,
            '3' => Kind::Ack,
            '4' => Kind::ConnectError,
            '5' => Kind::BinaryEvent,
            '6' => Kind::BinaryAck,
            _ => return None,
        })
    }

    fn digit(self) -> char {
        match self {
            Kind::Connect => '0',
            Kind::Disconnect => '1',
            Kind::Event => '2',
            Kind::Ack => '3',
            Kind::ConnectError => '4',
            Kind::BinaryEvent => '5',
            Kind::BinaryAck => '6',
        }
    }

    /// Whether the packet is followed by binary attachments.
    pub fn is_binary(self) -> bool {
        matches!(self, Kind::BinaryEvent | Kind::BinaryAck)
    }
}

/// A Socket.IO packet. For binary packets, `data` holds
/// `{"_placeholder":true,"num":N}` where attachment N goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    /// The type.
    pub kind: Kind,
    /// The namespace, `/` by default.
    pub nsp: String,
    /// The ack id.
    pub id: Option<u64>,
    /// The JSON payload.
    pub data: Option<Value>,
    /// How many binary attachments follow (binary kinds only).
    pub attachments: usize,
}

/// Why a packet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Not a known type digit.
    #[error("unknown packet type")]
    UnknownType,
    /// A binary packet without a valid `<n>-` attachment count, or too many.
    #[error("invalid attachment count")]
    Attachments,
    /// The ack id is not a number that fits.
    #[error("invalid ack id")]
    AckId,
    /// The payload is not JSON.
    #[error("invalid JSON payload")]
    Json,
    /// The payload breaks the rules for its packet type.
    #[error("invalid payload for the packet type")]
    Payload,
}

impl Packet {
    /// An EVENT (or BINARY_EVENT when there are attachments).
    pub fn event(nsp: &str, args: Value, id: Option<u64>, attachments: usize) -> Packet {
        Packet {
            kind: if attachments > 0 {
                Kind::BinaryEvent
            } else {
                Kind::Event
            },
            nsp: nsp.to_owned(),
            id,
            data: Some(args),
            attachments,
        }
    }

    /// An ACK (or BINARY_ACK when there are attachments).
    pub fn ack(nsp: &str, args: Value, id: u64, attachments: usize) -> Packet {
        Packet {
            kind: if attachments > 0 {
                Kind::BinaryAck
            } else {
                Kind::Ack
            },
            nsp: nsp.to_owned(),
            id: Some(id),
            data: Some(args),
            attachments,
        }
    }

    /// A packet of `kind` with optional data and no ack id.
    pub fn simple(kind: Kind, nsp: &str, data: Option<Value>) -> Packet {
        Packet {
            kind,
            nsp: nsp.to_owned(),
            id: None,
            data,
            attachments: 0,
        }
    }

    /// The wire form.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(32);
        out.push(self.kind.digit());
        if self.kind.is_binary() {
            out.push_str(&self.attachments.to_string());
            out.push('-');
        }
        if self.nsp != "/" {
            out.push_str(&self.nsp);
            out.push(',');
        }
        if let Some(id) = self.id {
            out.push_str(&id.to_string());
        }
        if let Some(data) = &self.data {
            out.push_str(&data.to_string());
        }
        out
    }

    /// Decodes and validates one text packet.
    pub fn decode(text: &str) -> Result<Packet, PacketError> {
        let mut rest = text;
        let kind = rest
            .chars()
            .next()
            .and_then(Kind::from_char)
            .ok_or(PacketError::UnknownType)?;
        rest = &rest[1..];
        let mut attachments = 0;
        if kind.is_binary() {
            let dash = rest.find('-').ok_or(PacketError::Attachments)?;
            let count = &rest[..dash];
            if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
                return Err(PacketError::Attachments);
            }
            attachments = count.parse().map_err(|_| PacketError::Attachments)?;
            if attachments > MAX_ATTACHMENTS {
                return Err(PacketError::Attachments);
            }
            rest = &rest[dash + 1..];
        }
        let mut nsp = "/".to_owned();
        if rest.starts_with('/') {
            match rest.find(',') {
                Some(comma) => {
                    nsp = rest[..comma].to_owned();
                    rest = &rest[comma + 1..];
                }
                None => {
                    nsp = rest.to_owned();
                    rest = "";
                }
            }
        }
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let id = if digits > 0 {
            let id = rest[..digits]
                .parse::<u64>()
                .map_err(|_| PacketError::AckId)?;
            rest = &rest[digits..];
            Some(id)
        } else {
            None
        };
        let data = if rest.is_empty() {
            None
        } else {
            Some(serde_json::from_str::<Value>(rest).map_err(|_| PacketError::Json)?)
        };
        let packet = Packet {
            kind,
            nsp,
            id,
            data,
            attachments,
        };
        if !packet.payload_is_valid() {
            return Err(PacketError::Payload);
        }
        Ok(packet)
    }

    fn payload_is_valid(&self) -> bool {
        match (&self.kind, &self.data) {
            (Kind::Connect, None) | (Kind::Connect, Some(Value::Object(_))) => true,
            (Kind::Disconnect, None) => true,
            (Kind::ConnectError, Some(Value::String(_) | Value::Object(_))) => true,
            (Kind::Event | Kind::BinaryEvent, Some(Value::Array(args))) => match args.first() {
                Some(Value::Number(_)) => true,
                Some(Value::String(name)) => !RESERVED_EVENTS.contains(&name.as_str()),
                _ => false,
            },
            (Kind::Ack | Kind::BinaryAck, Some(Value::Array(_))) => self.id.is_some(),
            _ => false,
        }
    }
}

/// Counts placeholders in `v` and checks each `num` is below `attachments`.
pub fn placeholders_valid(v: &Value, attachments: usize) -> bool {
    match v {
        Value::Object(m) if m.get("_placeholder") == Some(&Value::Bool(true)) => m
            .get("num")
            .and_then(Value::as_u64)
            .is_some_and(|n| (n as usize) < attachments),
        Value::Object(m) => m.values().all(|v| placeholders_valid(v, attachments)),
        Value::Array(a) => a.iter().all(|v| placeholders_valid(v, attachments)),
        _ => true,
    }
}

#[cfg(test)]
mod tests {

    /// Found by fuzzing: without serde_json's exact float parsing a long
    /// number read back from its own encoding was another double, so a
    /// client's number changed each time roomcast re-encoded it.
    #[test]
    fn numbers_survive_a_decode_encode_decode() {
        let text = format!("21[\"ca\",\t \t{}]", "4".repeat(56));
        let once = Packet::decode(&text).unwrap();
        assert_eq!(Packet::decode(&once.encode()).unwrap(), once);
        for n in [
            "0.1",
            "1e308",
            "2.2250738585072014e-308",
            "123456789012345678901234567890",
        ] {
            let p = Packet::decode(&format!("2[\"e\",{n}]")).unwrap();
            assert_eq!(Packet::decode(&p.encode()).unwrap(), p, "{n}");
        }
    }
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_the_documented_examples() {
        let p = Packet::decode("0").unwrap();
        assert_eq!((p.kind, p.nsp.as_str(), p.data), (Kind::Connect, "/", None));
        let p = Packet::decode("0/admin,{\"token\":\"123\"}").unwrap();
        assert_eq!(
            (p.nsp.as_str(), p.data.unwrap()),
            ("/admin", json!({"token": "123"}))
        );
        let p = Packet::decode("40/custom").unwrap_or_else(|_| Packet::decode("0/custom").unwrap());
        assert_eq!(p.nsp, "/custom");
        assert_eq!(Packet::decode("0/custom").unwrap().nsp, "/custom");
        let p = Packet::decode("1/admin,").unwrap();
        assert_eq!((p.kind, p.nsp.as_str()), (Kind::Disconnect, "/admin"));
        let p = Packet::decode("2/admin,12[\"foo\"]").unwrap();
        assert_eq!(
            (p.kind, p.id, p.data.unwrap()),
            (Kind::Event, Some(12), json!(["foo"]))
        );
        let p = Packet::decode("3/admin,12[\"bar\"]").unwrap();
        assert_eq!((p.kind, p.id), (Kind::Ack, Some(12)));
        let p = Packet::decode("51-[\"baz\",{\"_placeholder\":true,\"num\":0}]").unwrap();
        assert_eq!((p.kind, p.attachments), (Kind::BinaryEvent, 1));
        let p = Packet::decode("61-15[{\"_placeholder\":true,\"num\":0}]").unwrap();
        assert_eq!(
            (p.kind, p.id, p.attachments),
            (Kind::BinaryAck, Some(15), 1)
        );
        let p = Packet::decode("4{\"message\":\"Invalid namespace\"}").unwrap();
        assert_eq!(p.kind, Kind::ConnectError);
        assert_eq!(
            Packet::decode("2[1,2]").unwrap().data.unwrap(),
            json!([1, 2])
        );
    }

    #[test]
    fn refuses_what_the_reference_parser_refuses() {
        for bad in [
            "",
            "7",
            "abc",
            "2",
            "2{}",
            "2abc[\"foo\"]",
            "2[]",
            "2[null]",
            "2[\"connect\"]",
            "2[\"disconnect\",1]",
            "0\"string\"",
            "0[1]",
            "1{}",
            "1\"x\"",
            "3[1]",
            "3\"x\"",
            "4[1]",
            "4",
            "5[\"a\"]",
            "5x-[\"a\"]",
            "511-[\"a\"]",
            "2[\"a\"",
            "2/nsp,x",
            "299999999999999999999999[\"a\"]",
        ] {
            assert!(Packet::decode(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn encodes_literally() {
        assert_eq!(
            Packet::event("/", json!(["hello", 1]), None, 0).encode(),
            "2[\"hello\",1]"
        );
        assert_eq!(
            Packet::event("/admin", json!(["a"]), Some(7), 0).encode(),
            "2/admin,7[\"a\"]"
        );
        assert_eq!(Packet::ack("/", json!([]), 3, 0).encode(), "33[]");
        assert_eq!(
            Packet::event("/", json!(["b", {"_placeholder": true, "num": 0}]), None, 1).encode(),
            "51-[\"b\",{\"_placeholder\":true,\"num\":0}]"
        );
        assert_eq!(
            Packet::ack("/x", json!([{"_placeholder": true, "num": 0}]), 2, 1).encode(),
            "61-/x,2[{\"_placeholder\":true,\"num\":0}]"
        );
        assert_eq!(
            Packet::simple(Kind::Connect, "/", Some(json!({"sid": "s"}))).encode(),
            "0{\"sid\":\"s\"}"
        );
        assert_eq!(
            Packet::simple(Kind::Disconnect, "/admin", None).encode(),
            "1/admin,"
        );
        assert_eq!(
            Packet::simple(
                Kind::ConnectError,
                "/random",
                Some(json!({"message": "Invalid namespace"}))
            )
            .encode(),
            "4/random,{\"message\":\"Invalid namespace\"}"
        );
    }

    #[test]
    fn placeholders() {
        let v = json!(["e", {"a": [{"_placeholder": true, "num": 1}]}, {"_placeholder": true, "num": 0}]);
        assert!(placeholders_valid(&v, 2));
        assert!(!placeholders_valid(&v, 1));
        assert!(!placeholders_valid(&json!([{"_placeholder": true}]), 1));
    }
}
