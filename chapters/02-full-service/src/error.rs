use thiserror::Error;

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

    #[error("internal error: {0}")]
    Internal(String),
}

// ANCHOR: status
impl KvError {
    /// The HTTP-style status code a response carries for this error.
    pub fn status(&self) -> u32 {
        match self {
            KvError::NotFound { .. } => 404,
            KvError::InvalidCommand(_) => 400,
            KvError::Storage(_) | KvError::CorruptValue { .. } | KvError::Internal(_) => 500,
        }
    }
}
// ANCHOR_END: status

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
        assert_eq!(KvError::Internal("x".into()).status(), 500);
        let storage = KvError::from(redb::StorageError::Corrupted("bad page".into()));
        assert_eq!(storage.status(), 500);
        assert!(storage.to_string().contains("bad page"), "{storage}");
        assert!(
            std::error::Error::source(&storage).is_none(),
            "the cause is in the message, and only there"
        );
    }
}
