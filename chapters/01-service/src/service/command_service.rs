//! One [`CommandService`] implementation per command.

use crate::{CommandResponse, CommandService, Hget, Hgetall, Hset, KvError, Storage};

// ANCHOR: check_table
/// Rejects the empty table name, so a typo does not silently create it.
fn check_table(table: &str) -> Result<(), KvError> {
    if table.is_empty() {
        return Err(KvError::InvalidCommand("the table name is empty".into()));
    }
    Ok(())
}
// ANCHOR_END: check_table

// ANCHOR: hget
impl CommandService for Hget {
    fn execute(self, store: &impl Storage) -> Result<CommandResponse, KvError> {
        check_table(&self.table)?;
        match store.get(&self.table, &self.key)? {
            Some(value) => Ok(value.into()),
            None => Err(KvError::NotFound {
                table: self.table,
                key: self.key,
            }),
        }
    }
}
// ANCHOR_END: hget

// ANCHOR: hgetall
impl CommandService for Hgetall {
    fn execute(self, store: &impl Storage) -> Result<CommandResponse, KvError> {
        check_table(&self.table)?;
        Ok(store.get_all(&self.table)?.into())
    }
}
// ANCHOR_END: hgetall

// ANCHOR: hset
impl CommandService for Hset {
    /// Answers the value the key had before, or an empty value.
    fn execute(self, store: &impl Storage) -> Result<CommandResponse, KvError> {
        check_table(&self.table)?;
        let pair = self
            .pair
            .ok_or_else(|| KvError::InvalidCommand("hset needs a key-value pair".into()))?;
        let value = pair
            .value
            .filter(|v| !v.is_empty())
            .ok_or_else(|| KvError::InvalidCommand(format!("no value for key `{}`", pair.key)))?;
        let previous = store.set(&self.table, pair.key, value)?;
        Ok(previous.unwrap_or_default().into())
    }
}
// ANCHOR_END: hset

#[cfg(test)]
mod tests {
    use crate::{CommandRequest, CommandResponse, Hset, Kvpair, MemTable, Service, Value};

    fn service() -> Service {
        Service::new(MemTable::new())
    }

    fn assert_values(res: &CommandResponse, values: &[Value]) {
        assert_eq!(res.status, 200, "{res:?}");
        assert_eq!(res.message, "");
        assert_eq!(res.values, values);
        assert!(res.pairs.is_empty());
    }

    #[test]
    fn hset_answers_the_previous_value() {
        let service = service();
        let res = service.execute(CommandRequest::new_hset("t", "k", 10i64));
        assert_values(&res, &[Value::default()]);
        let res = service.execute(CommandRequest::new_hset("t", "k", 20i64));
        assert_values(&res, &[10i64.into()]);
    }

    #[test]
    fn hget_reads_what_hset_wrote() {
        let service = service();
        service.execute(CommandRequest::new_hset("t", "k", "hello"));
        let res = service.execute(CommandRequest::new_hget("t", "k"));
        assert_values(&res, &["hello".into()]);
    }

    #[test]
    fn hget_of_a_missing_key_is_404() {
        let service = service();
        service.execute(CommandRequest::new_hset("t", "k", "v"));
        for (table, key) in [("t", "other"), ("no-such-table", "k")] {
            let res = service.execute(CommandRequest::new_hget(table, key));
            assert_eq!(res.status, 404);
            assert_eq!(
                res.message,
                format!("key `{key}` not found in table `{table}`")
            );
            assert!(res.values.is_empty());
        }
    }

    #[test]
    fn hgetall_answers_every_pair_sorted_by_key() {
        let service = service();
        for (key, value) in [("u2", 2i64), ("u1", 1), ("u3", 3)] {
            service.execute(CommandRequest::new_hset("scores", key, value));
        }
        service.execute(CommandRequest::new_hset("other", "u9", 9i64));
        let res = service.execute(CommandRequest::new_hgetall("scores"));
        assert_eq!(res.status, 200);
        let expected: Vec<_> = [("u1", 1i64), ("u2", 2), ("u3", 3)]
            .map(|(k, v)| Kvpair::new(k, v))
            .into();
        assert_eq!(res.pairs, expected);
        assert!(res.values.is_empty());
    }

    #[test]
    fn hgetall_of_a_missing_table_is_empty() {
        let res = service().execute(CommandRequest::new_hgetall("nothing"));
        assert_eq!(res.status, 200);
        assert!(res.pairs.is_empty());
    }

    #[test]
    fn invalid_hset_requests_are_400() {
        let service = service();
        let no_pair = Hset {
            table: "t".into(),
            pair: None,
        };
        let no_value = Hset {
            table: "t".into(),
            pair: Some(Kvpair {
                key: "k".into(),
                value: None,
            }),
        };
        let empty_value = CommandRequest::new_hset("t", "k", Value::default());
        let cases = [
            (
                no_pair.into(),
                "invalid command: hset needs a key-value pair",
            ),
            (no_value.into(), "invalid command: no value for key `k`"),
            (empty_value, "invalid command: no value for key `k`"),
        ];
        for (request, message) in cases {
            let res = service.execute(request);
            assert_eq!(res.status, 400);
            assert_eq!(res.message, message);
        }
        // Nothing was stored by the rejected requests.
        assert_eq!(service.execute(CommandRequest::new_hgetall("t")).pairs, []);
    }

    #[test]
    fn an_empty_table_name_is_400() {
        let service = service();
        for request in [
            CommandRequest::new_hget("", "k"),
            CommandRequest::new_hgetall(""),
            CommandRequest::new_hset("", "k", 1i64),
        ] {
            let res = service.execute(request);
            assert_eq!(res.status, 400);
            assert_eq!(res.message, "invalid command: the table name is empty");
        }
    }
}
