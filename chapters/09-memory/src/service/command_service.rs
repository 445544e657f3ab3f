//! One [`CommandService`] implementation per command.
//!
//! What a missing key answers, everywhere: a command about one key that
//! must produce a value (`hget`, `hdel`) fails with 404 Not Found. The
//! commands about several keys never fail for a missing key; they answer an
//! empty `Value` (or `false`) in its place, so answers line up with the
//! keys asked. A table that was never written to is an empty table.

use prost::{Message, length_delimiter_len};

use crate::{
    CommandResponse, CommandService, Hdel, Hexist, Hget, Hgetall, Hmdel, Hmexist, Hmget, Hmset,
    Hset, KvError, Kvpair, Storage, Value, max_entries,
};

// ANCHOR: check_table
/// Rejects the empty table name, so a typo does not silently create it.
fn check_table(table: &str) -> Result<(), KvError> {
    if table.is_empty() {
        return Err(KvError::InvalidCommand("the table name is empty".into()));
    }
    Ok(())
}
// ANCHOR_END: check_table

// ANCHOR: response_limit
/// The size of an answer while a command builds it. Without a limit, an
/// `hmget` that names one large value's key a thousand times would make
/// the server copy that value a thousand times: a request of a few bytes
/// could cost gigabytes. So each value is counted as it goes in, and the
/// command stops as soon as the answer would be too large for a frame of
/// `max` bytes, before it copies anything more.
struct AnswerSize {
    /// The answer's encoded length so far.
    len: usize,
    /// Its entries so far, counted as `decode_frame` counts them.
    entries: usize,
    max: usize,
}

impl AnswerSize {
    fn new(max: usize) -> Self {
        // An answer starts with its status: one entry of up to 6 bytes.
        Self {
            len: 6,
            entries: 1,
            max,
        }
    }

    /// Counts one more value or pair, encoded in `len` bytes.
    fn add(&mut self, len: usize) -> Result<(), KvError> {
        self.len += 1 + length_delimiter_len(len) + len;
        self.entries += 1;
        if self.len > self.max || self.entries > max_entries(self.max) {
            return Err(KvError::InvalidCommand(format!(
                "the answer would be larger than the limit of {} bytes",
                self.max
            )));
        }
        Ok(())
    }

    fn add_value(&mut self, value: &Value) -> Result<(), KvError> {
        self.add(value.encoded_len())
    }
}
// ANCHOR_END: response_limit

// ANCHOR: check_pair
/// The key and value of a pair to store, or 400 if the value is missing.
fn check_pair(pair: Kvpair) -> Result<(String, Value), KvError> {
    match pair.value {
        Some(value) if !value.is_empty() => Ok((pair.key, value)),
        _ => Err(KvError::InvalidCommand(format!(
            "no value for key `{}`",
            pair.key
        ))),
    }
}
// ANCHOR_END: check_pair

// ANCHOR: hget
impl CommandService for Hget {
    fn execute(self, store: &impl Storage, max_answer: usize) -> Result<CommandResponse, KvError> {
        check_table(&self.table)?;
        match store.get(&self.table, &self.key)? {
            Some(value) => {
                AnswerSize::new(max_answer).add_value(&value)?;
                Ok(value.into())
            }
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
    fn execute(self, store: &impl Storage, max_answer: usize) -> Result<CommandResponse, KvError> {
        check_table(&self.table)?;
        let mut size = AnswerSize::new(max_answer);
        let pairs = store
            .iter(&self.table)?
            .map(|pair| {
                let pair = pair?;
                size.add(pair.encoded_len())?;
                Ok(pair)
            })
            .collect::<Result<Vec<_>, KvError>>()?;
        Ok(pairs.into())
    }
}
// ANCHOR_END: hgetall

// ANCHOR: hmget
impl CommandService for Hmget {
    /// Answers one value per key, in order; an empty value for a missing key.
    fn execute(self, store: &impl Storage, max_answer: usize) -> Result<CommandResponse, KvError> {
        check_table(&self.table)?;
        let mut size = AnswerSize::new(max_answer);
        let values = store.read(&self.table, |t| {
            (self.keys.iter())
                .map(|key| {
                    let value = t.get(key)?.unwrap_or_default();
                    size.add_value(&value)?;
                    Ok(value)
                })
                .collect::<Result<Vec<_>, KvError>>()
        })?;
        Ok(values.into())
    }
}
// ANCHOR_END: hmget

// ANCHOR: hset
impl CommandService for Hset {
    /// Answers the value the key had before, or an empty value.
    fn execute(self, store: &impl Storage, max_answer: usize) -> Result<CommandResponse, KvError> {
        check_table(&self.table)?;
        let pair = self
            .pair
            .ok_or_else(|| KvError::InvalidCommand("hset needs a key-value pair".into()))?;
        let (key, value) = check_pair(pair)?;
        // In a transaction, so that an answer too large to send undoes
        // the change: a client never misses the answer to a change made.
        let previous = store.write(&self.table, |t| {
            let previous = t.set(key, value)?.unwrap_or_default();
            AnswerSize::new(max_answer).add_value(&previous)?;
            Ok(previous)
        })?;
        Ok(previous.into())
    }
}
// ANCHOR_END: hset

// ANCHOR: hmset
impl CommandService for Hmset {
    /// Answers the previous value of each key, in order.
    fn execute(self, store: &impl Storage, max_answer: usize) -> Result<CommandResponse, KvError> {
        check_table(&self.table)?;
        // Check every pair before writing any, so that a bad pair at the
        // end does not leave the pairs before it written.
        let pairs = self
            .pairs
            .into_iter()
            .map(check_pair)
            .collect::<Result<Vec<_>, _>>()?;
        // One transaction: all pairs are written, or none.
        let mut size = AnswerSize::new(max_answer);
        let previous = store.write(&self.table, |t| {
            (pairs.into_iter())
                .map(|(key, value)| {
                    let previous = t.set(key, value)?.unwrap_or_default();
                    size.add_value(&previous)?;
                    Ok(previous)
                })
                .collect::<Result<Vec<_>, KvError>>()
        })?;
        Ok(previous.into())
    }
}
// ANCHOR_END: hmset

// ANCHOR: hdel
impl CommandService for Hdel {
    /// Answers the value that was removed.
    fn execute(self, store: &impl Storage, max_answer: usize) -> Result<CommandResponse, KvError> {
        check_table(&self.table)?;
        let removed = store.write(&self.table, |t| {
            let removed = t.del(&self.key)?;
            if let Some(value) = &removed {
                AnswerSize::new(max_answer).add_value(value)?;
            }
            Ok(removed)
        })?;
        match removed {
            Some(value) => Ok(value.into()),
            None => Err(KvError::NotFound {
                table: self.table,
                key: self.key,
            }),
        }
    }
}
// ANCHOR_END: hdel

// ANCHOR: hmdel
impl CommandService for Hmdel {
    /// Answers the removed value of each key, in order; an empty value for
    /// a key that was not there.
    fn execute(self, store: &impl Storage, max_answer: usize) -> Result<CommandResponse, KvError> {
        check_table(&self.table)?;
        let mut size = AnswerSize::new(max_answer);
        let values = store.write(&self.table, |t| {
            (self.keys.iter())
                .map(|key| {
                    let value = t.del(key)?.unwrap_or_default();
                    size.add_value(&value)?;
                    Ok(value)
                })
                .collect::<Result<Vec<_>, KvError>>()
        })?;
        Ok(values.into())
    }
}
// ANCHOR_END: hmdel

// ANCHOR: hexist
impl CommandService for Hexist {
    /// Answers one bool.
    fn execute(self, store: &impl Storage, max_answer: usize) -> Result<CommandResponse, KvError> {
        check_table(&self.table)?;
        let value = Value::from(store.contains(&self.table, &self.key)?);
        AnswerSize::new(max_answer).add_value(&value)?;
        Ok(value.into())
    }
}

impl CommandService for Hmexist {
    /// Answers one bool per key, in order.
    fn execute(self, store: &impl Storage, max_answer: usize) -> Result<CommandResponse, KvError> {
        check_table(&self.table)?;
        let mut size = AnswerSize::new(max_answer);
        let values = store.read(&self.table, |t| {
            (self.keys.iter())
                .map(|key| {
                    let value = Value::from(t.contains(key)?);
                    size.add_value(&value)?;
                    Ok(value)
                })
                .collect::<Result<Vec<Value>, KvError>>()
        })?;
        Ok(values.into())
    }
}
// ANCHOR_END: hexist

/// Every test here runs twice, once per storage backend: each is a generic
/// function over the storage, and `for_each_backend!` makes the `#[test]`s.
#[cfg(test)]
mod tests {
    use crate::{CommandRequest, CommandResponse, Hset, Kvpair, Service, Storage, Value};

    fn assert_values(res: &CommandResponse, values: &[Value]) {
        assert_eq!(res.status, 200, "{res:?}");
        assert_eq!(res.message, "");
        assert_eq!(res.values, values);
        assert!(res.pairs.is_empty());
    }

    fn assert_error(res: &CommandResponse, status: u32, message: &str) {
        assert_eq!(res.status, status, "{res:?}");
        assert_eq!(res.message, message);
        assert!(res.values.is_empty() && res.pairs.is_empty());
    }

    /// Fills table `t` with a = 1 and b = "two".
    fn with_data<S: Storage>(service: Service<S>) -> Service<S> {
        let pairs = [Kvpair::new("a", 1i64), Kvpair::new("b", "two")];
        assert!(
            service
                .execute(CommandRequest::new_hmset("t", pairs))
                .is_ok()
        );
        service
    }

    fn hset_answers_the_previous_value<S: Storage>(service: Service<S>) {
        let res = service.execute(CommandRequest::new_hset("t", "k", 10i64));
        assert_values(&res, &[Value::default()]);
        let res = service.execute(CommandRequest::new_hset("t", "k", 20i64));
        assert_values(&res, &[10i64.into()]);
    }

    fn hget_reads_what_hset_wrote<S: Storage>(service: Service<S>) {
        service.execute(CommandRequest::new_hset("t", "k", "hello"));
        let res = service.execute(CommandRequest::new_hget("t", "k"));
        assert_values(&res, &["hello".into()]);
    }

    fn hget_of_a_missing_key_is_404<S: Storage>(service: Service<S>) {
        let service = with_data(service);
        for (table, key) in [("t", "other"), ("no-such-table", "a")] {
            let res = service.execute(CommandRequest::new_hget(table, key));
            let message = format!("key `{key}` not found in table `{table}`");
            assert_error(&res, 404, &message);
        }
    }

    fn hgetall_answers_every_pair_sorted_by_key<S: Storage>(service: Service<S>) {
        let service = with_data(service);
        service.execute(CommandRequest::new_hset("other", "z", 9i64));
        let res = service.execute(CommandRequest::new_hgetall("t"));
        assert_eq!(res.status, 200);
        assert_eq!(res.pairs, [Kvpair::new("a", 1i64), Kvpair::new("b", "two")]);
        assert!(res.values.is_empty());

        let res = service.execute(CommandRequest::new_hgetall("nothing"));
        assert_eq!((res.status, res.pairs.len()), (200, 0));
    }

    fn hmget_answers_one_value_per_key_in_order<S: Storage>(service: Service<S>) {
        let service = with_data(service);
        let res = service.execute(CommandRequest::new_hmget("t", ["b", "missing", "a", "b"]));
        assert_values(
            &res,
            &["two".into(), Value::default(), 1i64.into(), "two".into()],
        );
        let res = service.execute(CommandRequest::new_hmget("nothing", ["a"]));
        assert_values(&res, &[Value::default()]);
    }

    fn hmset_answers_the_previous_values<S: Storage>(service: Service<S>) {
        let service = with_data(service);
        let pairs = [Kvpair::new("b", 2i64), Kvpair::new("c", true)];
        let res = service.execute(CommandRequest::new_hmset("t", pairs));
        assert_values(&res, &["two".into(), Value::default()]);
        let res = service.execute(CommandRequest::new_hmget("t", ["a", "b", "c"]));
        assert_values(&res, &[1i64.into(), 2i64.into(), true.into()]);
    }

    fn hmset_with_a_bad_pair_writes_nothing<S: Storage>(service: Service<S>) {
        let pairs = [
            Kvpair::new("ok", 1i64),
            Kvpair {
                key: "bad".into(),
                value: None,
            },
        ];
        let res = service.execute(CommandRequest::new_hmset("t", pairs));
        assert_error(&res, 400, "invalid command: no value for key `bad`");
        let res = service.execute(CommandRequest::new_hexist("t", "ok"));
        assert_values(&res, &[false.into()]);
    }

    fn hdel_answers_the_removed_value<S: Storage>(service: Service<S>) {
        let service = with_data(service);
        let res = service.execute(CommandRequest::new_hdel("t", "a"));
        assert_values(&res, &[1i64.into()]);
        let res = service.execute(CommandRequest::new_hdel("t", "a"));
        assert_error(&res, 404, "key `a` not found in table `t`");
        let res = service.execute(CommandRequest::new_hdel("nothing", "a"));
        assert_error(&res, 404, "key `a` not found in table `nothing`");
    }

    fn hmdel_answers_the_removed_values<S: Storage>(service: Service<S>) {
        let service = with_data(service);
        let res = service.execute(CommandRequest::new_hmdel("t", ["b", "missing", "a"]));
        assert_values(&res, &["two".into(), Value::default(), 1i64.into()]);
        let res = service.execute(CommandRequest::new_hgetall("t"));
        assert!(res.pairs.is_empty());
    }

    fn hexist_and_hmexist_answer_bools<S: Storage>(service: Service<S>) {
        let service = with_data(service);
        let res = service.execute(CommandRequest::new_hexist("t", "a"));
        assert_values(&res, &[true.into()]);
        let res = service.execute(CommandRequest::new_hexist("nothing", "a"));
        assert_values(&res, &[false.into()]);
        let res = service.execute(CommandRequest::new_hmexist("t", ["a", "x", "b"]));
        assert_values(&res, &[true.into(), false.into(), true.into()]);
    }

    fn invalid_hset_requests_are_400<S: Storage>(service: Service<S>) {
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
            assert_error(&service.execute(request), 400, message);
        }
        // Nothing was stored by the rejected requests.
        assert_eq!(service.execute(CommandRequest::new_hgetall("t")).pairs, []);
    }

    // ANCHOR: response_limit_test
    fn an_answer_over_the_limit_is_refused<S: Storage>(service: Service<S>) {
        let big = Value::from(vec![7u8; 1 << 20]);
        service.execute(CommandRequest::new_hset("t", "big", big.clone()));
        // Fifteen copies of 1 MiB fit in 16 MiB; twenty do not.
        let res = service.execute(CommandRequest::new_hmget("t", vec!["big"; 15]));
        assert_eq!(res.values, vec![big; 15]);
        let res = service.execute(CommandRequest::new_hmget("t", vec!["big"; 20]));
        let message =
            "invalid command: the answer would be larger than the limit of 16777216 bytes";
        assert_error(&res, 400, message);

        let keys: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        for (i, key) in keys.iter().enumerate() {
            let value = Value::from(vec![i as u8; 1 << 20]);
            service.execute(CommandRequest::new_hset("many", key, value));
        }
        let hgetall = CommandRequest::new_hgetall("many");
        assert_error(&service.execute(hgetall), 400, message);

        // Writes whose answers (the old values) would be too large are
        // refused, and change nothing.
        let pairs = keys.iter().map(|key| Kvpair::new(key.as_str(), 0i64));
        let hmset = CommandRequest::new_hmset("many", pairs);
        assert_error(&service.execute(hmset), 400, message);
        let hmdel = CommandRequest::new_hmdel("many", keys.clone());
        assert_error(&service.execute(hmdel), 400, message);
        let res = service.execute(CommandRequest::new_hmget("many", ["0", "19"]));
        assert_eq!(res.values[1], Value::from(vec![19u8; 1 << 20]));
    }
    // ANCHOR_END: response_limit_test

    fn an_empty_table_name_is_400<S: Storage>(service: Service<S>) {
        for request in [
            CommandRequest::new_hget("", "k"),
            CommandRequest::new_hgetall(""),
            CommandRequest::new_hmget("", ["k"]),
            CommandRequest::new_hset("", "k", 1i64),
            CommandRequest::new_hmset("", [Kvpair::new("k", 1i64)]),
            CommandRequest::new_hdel("", "k"),
            CommandRequest::new_hmdel("", ["k"]),
            CommandRequest::new_hexist("", "k"),
            CommandRequest::new_hmexist("", ["k"]),
        ] {
            let res = service.execute(request);
            assert_error(&res, 400, "invalid command: the table name is empty");
        }
    }

    // ANCHOR: for_each_backend
    /// For each test function named, one `#[test]` per backend.
    macro_rules! for_each_backend {
        ($($name:ident),+ $(,)?) => {
            mod memtable {
                $(
                    #[test]
                    fn $name() {
                        super::$name(crate::Service::new(crate::MemTable::new()));
                    }
                )+
            }

            mod redb {
                $(
                    #[test]
                    fn $name() {
                        let dir = tempfile::tempdir().unwrap();
                        let store = crate::RedbStore::open(dir.path().join("kv.redb")).unwrap();
                        super::$name(crate::Service::new(store));
                    }
                )+
            }
        };
    }

    for_each_backend!(
        hset_answers_the_previous_value,
        hget_reads_what_hset_wrote,
        hget_of_a_missing_key_is_404,
        hgetall_answers_every_pair_sorted_by_key,
        hmget_answers_one_value_per_key_in_order,
        hmset_answers_the_previous_values,
        hmset_with_a_bad_pair_writes_nothing,
        hdel_answers_the_removed_value,
        hmdel_answers_the_removed_values,
        hexist_and_hmexist_answer_bools,
        invalid_hset_requests_are_400,
        an_empty_table_name_is_400,
        an_answer_over_the_limit_is_refused,
    );
    // ANCHOR_END: for_each_backend
}
