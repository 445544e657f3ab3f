//! The protocol types generated from `proto/abi.proto`, and the
//! constructors and conversions that make them pleasant to use.

use std::fmt;

use bytes::Bytes;

use crate::KvError;

// ANCHOR: abi
/// The code prost-build generated at build time (see `build.rs`).
pub mod abi {
    include!(concat!(env!("OUT_DIR"), "/abi.rs"));
}

use abi::{command_request::RequestData, *};
// ANCHOR_END: abi

// ANCHOR: constructors
impl CommandRequest {
    pub fn new_hget(table: impl Into<String>, key: impl Into<String>) -> Self {
        Hget {
            table: table.into(),
            key: key.into(),
        }
        .into()
    }

    pub fn new_hgetall(table: impl Into<String>) -> Self {
        Hgetall {
            table: table.into(),
        }
        .into()
    }

    pub fn new_hmget(
        table: impl Into<String>,
        keys: impl IntoIterator<Item: Into<String>>,
    ) -> Self {
        Hmget {
            table: table.into(),
            keys: keys.into_iter().map(Into::into).collect(),
        }
        .into()
    }

    pub fn new_hset(
        table: impl Into<String>,
        key: impl Into<String>,
        value: impl Into<Value>,
    ) -> Self {
        Hset {
            table: table.into(),
            pair: Some(Kvpair::new(key, value)),
        }
        .into()
    }

    pub fn new_hmset(table: impl Into<String>, pairs: impl IntoIterator<Item = Kvpair>) -> Self {
        Hmset {
            table: table.into(),
            pairs: pairs.into_iter().collect(),
        }
        .into()
    }

    pub fn new_hdel(table: impl Into<String>, key: impl Into<String>) -> Self {
        Hdel {
            table: table.into(),
            key: key.into(),
        }
        .into()
    }

    pub fn new_hmdel(
        table: impl Into<String>,
        keys: impl IntoIterator<Item: Into<String>>,
    ) -> Self {
        Hmdel {
            table: table.into(),
            keys: keys.into_iter().map(Into::into).collect(),
        }
        .into()
    }

    pub fn new_hexist(table: impl Into<String>, key: impl Into<String>) -> Self {
        Hexist {
            table: table.into(),
            key: key.into(),
        }
        .into()
    }

    pub fn new_hmexist(
        table: impl Into<String>,
        keys: impl IntoIterator<Item: Into<String>>,
    ) -> Self {
        Hmexist {
            table: table.into(),
            keys: keys.into_iter().map(Into::into).collect(),
        }
        .into()
    }

    pub fn new_subscribe(topic: impl Into<String>) -> Self {
        Subscribe {
            topic: topic.into(),
        }
        .into()
    }

    pub fn new_unsubscribe(topic: impl Into<String>, id: u32) -> Self {
        Unsubscribe {
            topic: topic.into(),
            id,
        }
        .into()
    }

    pub fn new_publish(
        topic: impl Into<String>,
        data: impl IntoIterator<Item: Into<Value>>,
    ) -> Self {
        Publish {
            topic: topic.into(),
            data: data.into_iter().map(Into::into).collect(),
        }
        .into()
    }
}
// ANCHOR_END: constructors

// ANCHOR: request_from
// Every command converts into a request that carries it.
macro_rules! request_from_command {
    ($($command:ident),+ $(,)?) => {
        $(
            impl From<$command> for CommandRequest {
                fn from(command: $command) -> Self {
                    Self {
                        request_data: Some(RequestData::$command(command)),
                    }
                }
            }
        )+
    };
}

request_from_command!(
    Hget,
    Hgetall,
    Hmget,
    Hset,
    Hmset,
    Hdel,
    Hmdel,
    Hexist,
    Hmexist,
    Subscribe,
    Unsubscribe,
    Publish,
);
// ANCHOR_END: request_from

// ANCHOR: kvpair_new
impl Kvpair {
    pub fn new(key: impl Into<String>, value: impl Into<Value>) -> Self {
        Self {
            key: key.into(),
            value: Some(value.into()),
        }
    }
}
// ANCHOR_END: kvpair_new

// ANCHOR: value_from
impl From<value::Value> for Value {
    fn from(value: value::Value) -> Self {
        Self { value: Some(value) }
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        value::Value::String(s).into()
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        s.to_owned().into()
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        value::Value::Integer(n).into()
    }
}

impl From<f64> for Value {
    fn from(x: f64) -> Self {
        value::Value::Float(x).into()
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        value::Value::Bool(b).into()
    }
}

impl From<Bytes> for Value {
    fn from(b: Bytes) -> Self {
        value::Value::Binary(b).into()
    }
}

impl From<Vec<u8>> for Value {
    fn from(b: Vec<u8>) -> Self {
        Bytes::from(b).into()
    }
}

impl From<&[u8]> for Value {
    fn from(b: &[u8]) -> Self {
        Bytes::copy_from_slice(b).into()
    }
}
// ANCHOR_END: value_from

// ANCHOR: value_is_empty
impl Value {
    /// True when the value holds nothing: the answer for "no such key"
    /// where a command answers one value per key.
    pub fn is_empty(&self) -> bool {
        self.value.is_none()
    }
}
// ANCHOR_END: value_is_empty

/// Shows a value the way a command-line client would print it.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            None => f.write_str("(nil)"),
            Some(value::Value::String(s)) => write!(f, "{s:?}"),
            Some(value::Value::Binary(b)) => write!(f, "{b:?}"),
            Some(value::Value::Integer(n)) => write!(f, "{n}"),
            Some(value::Value::Float(x)) => write!(f, "{x:?}"),
            Some(value::Value::Bool(b)) => write!(f, "{b}"),
        }
    }
}

// ANCHOR: response_from
impl CommandResponse {
    /// A successful response with nothing in it yet.
    pub fn ok() -> Self {
        Self {
            status: 200,
            ..Default::default()
        }
    }

    pub fn is_ok(&self) -> bool {
        self.status == 200
    }
}

impl From<Value> for CommandResponse {
    fn from(value: Value) -> Self {
        vec![value].into()
    }
}

impl From<Vec<Value>> for CommandResponse {
    fn from(values: Vec<Value>) -> Self {
        Self {
            values,
            ..Self::ok()
        }
    }
}

impl From<Vec<Kvpair>> for CommandResponse {
    fn from(pairs: Vec<Kvpair>) -> Self {
        Self {
            pairs,
            ..Self::ok()
        }
    }
}

impl From<&KvError> for CommandResponse {
    fn from(err: &KvError) -> Self {
        Self {
            status: err.status(),
            message: err.to_string(),
            ..Default::default()
        }
    }
}

impl From<KvError> for CommandResponse {
    fn from(err: KvError) -> Self {
        (&err).into()
    }
}
// ANCHOR_END: response_from

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_convert_from_rust_types() {
        assert_eq!(Value::from("hi"), value::Value::String("hi".into()).into());
        assert_eq!(Value::from(42i64), value::Value::Integer(42).into());
        assert_eq!(Value::from(0.5), value::Value::Float(0.5).into());
        assert_eq!(Value::from(true), value::Value::Bool(true).into());
        let bytes = Value::from(&b"\x00\xff"[..]);
        assert_eq!(bytes, Value::from(vec![0u8, 255]));
        assert!(Value::default().is_empty());
        assert!(!bytes.is_empty());
    }

    #[test]
    fn values_display_like_a_client_prints_them() {
        assert_eq!(Value::from("a b").to_string(), r#""a b""#);
        assert_eq!(Value::from(-7i64).to_string(), "-7");
        assert_eq!(Value::from(1.0).to_string(), "1.0");
        assert_eq!(Value::from(false).to_string(), "false");
        assert_eq!(Value::from(&b"k\x01"[..]).to_string(), r#"b"k\x01""#);
        assert_eq!(Value::default().to_string(), "(nil)");
    }

    #[test]
    fn constructors_fill_in_the_command() {
        let req = CommandRequest::new_hset("t", "k", 1i64);
        let Some(RequestData::Hset(hset)) = req.request_data else {
            panic!("expected hset, got {req:?}");
        };
        assert_eq!(hset.table, "t");
        assert_eq!(hset.pair, Some(Kvpair::new("k", 1i64)));

        let req = CommandRequest::new_hmget("t", ["a", "b"]);
        let Some(RequestData::Hmget(hmget)) = req.request_data else {
            panic!("expected hmget, got {req:?}");
        };
        assert_eq!(hmget.keys, ["a", "b"]);
    }

    #[test]
    fn errors_become_responses_with_status_and_message() {
        let res = CommandResponse::from(KvError::InvalidCommand("empty".into()));
        assert_eq!(res.status, 400);
        assert_eq!(res.message, "invalid command: empty");
        assert!(!res.is_ok());
        assert!(CommandResponse::from(Value::from(1i64)).is_ok());
    }
}
