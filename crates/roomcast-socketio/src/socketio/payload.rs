//! Event arguments and their binary attachments.

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

/// Event arguments and their binary attachments. Binary values appear in
/// `args` as `{"_placeholder":true,"num":N}`, the attachment being `binary[N]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Payload {
    /// The arguments after the event name.
    pub args: Vec<Value>,
    /// Binary attachments.
    pub binary: Vec<Bytes>,
}

impl Payload {
    /// One JSON argument.
    pub fn json<T: Serialize>(value: &T) -> Payload {
        Payload {
            args: vec![serde_json::to_value(value).unwrap_or(Value::Null)],
            binary: Vec::new(),
        }
    }

    /// No arguments.
    pub fn empty() -> Payload {
        Payload::default()
    }

    /// One binary argument.
    pub fn bytes(data: Bytes) -> Payload {
        Payload {
            args: vec![serde_json::json!({"_placeholder": true, "num": 0})],
            binary: vec![data],
        }
    }

    /// The first argument, or null.
    pub fn first(&self) -> &Value {
        self.args.first().unwrap_or(&Value::Null)
    }
}
