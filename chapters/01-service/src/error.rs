use thiserror::Error;

// ANCHOR: error
/// Everything that can go wrong while serving a request.
#[derive(Debug, Error)]
pub enum KvError {
    #[error("key `{key}` not found in table `{table}`")]
    NotFound { table: String, key: String },

    #[error("invalid command: {0}")]
    InvalidCommand(String),

    #[error("command `{0}` is not implemented yet")]
    Unimplemented(&'static str),

    #[error("internal error: {0}")]
    Internal(String),
}
// ANCHOR_END: error

// ANCHOR: status
impl KvError {
    /// The HTTP-style status code a response carries for this error.
    pub fn status(&self) -> u32 {
        match self {
            KvError::NotFound { .. } => 404,
            KvError::InvalidCommand(_) => 400,
            KvError::Unimplemented(_) => 501,
            KvError::Internal(_) => 500,
        }
    }
}
// ANCHOR_END: status

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
        assert_eq!(KvError::Unimplemented("hdel").status(), 501);
        assert_eq!(KvError::Internal("x".into()).status(), 500);
    }
}
