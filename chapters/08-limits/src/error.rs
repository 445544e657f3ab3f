use std::{fmt::Display, path::PathBuf};

use thiserror::Error;

// ANCHOR: error
/// Everything that can go wrong while serving a request.
///
/// Each message includes its cause, because the message is all that a
/// client is told. So no variant also hands out the cause as its
/// `source()`: a report that prints the whole chain would repeat it.
#[derive(Debug, Error)]
pub enum KvError {
    #[error("key `{key}` not found in table `{table}`")]
    NotFound { table: String, key: String },

    #[error("invalid command: {0}")]
    InvalidCommand(String),

    #[error("storage error: {0}")]
    Storage(Box<redb::Error>),

    #[error("value of key `{key}` in table `{table}` is corrupt: {error}")]
    CorruptValue {
        table: String,
        key: String,
        error: prost::DecodeError,
    },

    #[error("frame of {len} bytes is larger than the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },

    #[error("message holds {entries} entries, more than the limit of {max}")]
    TooManyEntries { entries: usize, max: usize },

    #[error("bad frame: {0}")]
    BadFrame(String),

    #[error("cannot decode message: {0}")]
    Decode(prost::DecodeError),

    #[error("I/O error: {0}")]
    Io(std::io::Error),

    #[error("TLS error: {0}")]
    Tls(String),

    #[error("cannot load {what} from `{}`: {reason}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },

    #[error("too many streams on this connection: at most {max} at once")]
    TooManyStreams { max: usize },

    #[error("the server is full: at most {max} connections at once")]
    TooManyConnections { max: usize },

    #[error(
        "closed to make room: the server was full, and this connection had \
         been quiet the longest"
    )]
    Evicted,

    #[error("too many connections from one address: at most {max} at once")]
    TooManyFromAddress { max: usize },

    #[error("timed out: {0}")]
    Timeout(String),

    #[error("no subscription {id} to topic `{topic}` on this connection")]
    NoSubscription { topic: String, id: u32 },

    #[error("subscription {id} ended: it fell more than {queue} messages behind")]
    Lagged { id: u32, queue: usize },

    #[error("the server answered {status}: {message}")]
    Refused { status: u32, message: String },

    #[error("connection error: {0}")]
    Connection(String),

    #[error("invalid configuration: {0}")]
    Config(String),

    #[error("internal error: {0}")]
    Internal(String),
}
// ANCHOR_END: error

// ANCHOR: status
impl KvError {
    /// The HTTP-style status code a response carries for this error.
    pub fn status(&self) -> u32 {
        match self {
            KvError::NotFound { .. } | KvError::NoSubscription { .. } => 404,
            KvError::InvalidCommand(_) | KvError::BadFrame(_) | KvError::Decode(_) => 400,
            KvError::FrameTooLarge { .. } | KvError::TooManyEntries { .. } => 413,
            KvError::TooManyStreams { .. } | KvError::Lagged { .. } => 429,
            KvError::TooManyConnections { .. }
            | KvError::Evicted
            | KvError::TooManyFromAddress { .. } => 503,
            KvError::Timeout(_) => 408,
            KvError::Refused { status, .. } => *status,
            KvError::Storage(_)
            | KvError::CorruptValue { .. }
            | KvError::Io(_)
            | KvError::Tls(_)
            | KvError::Pem { .. }
            | KvError::Connection(_)
            | KvError::Config(_)
            | KvError::Internal(_) => 500,
        }
    }

    /// A file that should hold `what` in PEM form cannot be used.
    pub fn pem(what: &'static str, path: impl Into<PathBuf>, reason: impl Display) -> Self {
        KvError::Pem {
            what,
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}

impl From<tokio_rustls::rustls::Error> for KvError {
    fn from(err: tokio_rustls::rustls::Error) -> Self {
        KvError::Tls(err.to_string())
    }
}

impl From<rcgen::Error> for KvError {
    fn from(err: rcgen::Error) -> Self {
        KvError::Tls(format!("cannot generate a certificate: {err}"))
    }
}
// ANCHOR_END: status

impl From<std::io::Error> for KvError {
    fn from(err: std::io::Error) -> Self {
        KvError::Io(err)
    }
}

impl From<yamux::ConnectionError> for KvError {
    fn from(err: yamux::ConnectionError) -> Self {
        match err {
            yamux::ConnectionError::Io(err) => KvError::Io(err),
            other => KvError::Connection(other.to_string()),
        }
    }
}

impl From<prost::DecodeError> for KvError {
    fn from(err: prost::DecodeError) -> Self {
        KvError::Decode(err)
    }
}

// ANCHOR: from_redb
// redb has an error type per operation (opening a table, starting or
// committing a transaction, ...). Each converts into `redb::Error`; these
// impls let `?` take them straight to a `KvError`. The error is boxed
// because it is large, and it would make every `Result` in the crate large.
macro_rules! from_redb_error {
    ($($error:ty),+ $(,)?) => {
        $(
            impl From<$error> for KvError {
                fn from(err: $error) -> Self {
                    KvError::Storage(Box::new(err.into()))
                }
            }
        )+
    };
}

from_redb_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
);
// ANCHOR_END: from_redb

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_table_and_key() {
        let err = KvError::NotFound {
            table: "users".into(),
            key: "alice".into(),
        };
        assert_eq!(err.to_string(), "key `alice` not found in table `users`");
    }

    #[test]
    fn every_error_has_its_own_status() {
        assert_eq!(
            KvError::NotFound {
                table: "t".into(),
                key: "k".into()
            }
            .status(),
            404
        );
        assert_eq!(KvError::InvalidCommand("x".into()).status(), 400);
        assert_eq!(KvError::BadFrame("x".into()).status(), 400);
        assert_eq!(KvError::FrameTooLarge { len: 2, max: 1 }.status(), 413);
        assert_eq!(KvError::TooManyStreams { max: 1 }.status(), 429);
        let gone = KvError::NoSubscription {
            topic: "t".into(),
            id: 7,
        };
        assert_eq!(gone.status(), 404);
        assert_eq!(KvError::Lagged { id: 7, queue: 2 }.status(), 429);
        assert_eq!(KvError::Internal("x".into()).status(), 500);
        let pem = KvError::pem("a private key", "/etc/kv/key.pem", "no key found");
        assert_eq!(
            pem.to_string(),
            "cannot load a private key from `/etc/kv/key.pem`: no key found"
        );
        let storage = KvError::from(redb::StorageError::Corrupted("bad page".into()));
        assert_eq!(storage.status(), 500);
        assert!(storage.to_string().contains("bad page"), "{storage}");
        assert!(
            std::error::Error::source(&storage).is_none(),
            "the cause is in the message, and only there"
        );
    }
}
