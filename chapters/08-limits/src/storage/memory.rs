use dashmap::{DashMap, mapref::one::Ref};

use crate::{KvError, Kvpair, Storage, StorageIter, TableRead, TableWrite, Value};

// ANCHOR: memtable
/// A [`Storage`] that keeps every table in memory.
///
/// `DashMap` is a concurrent hash map: it splits its entries into shards,
/// each behind its own lock, so requests that touch different keys rarely
/// wait for each other.
#[derive(Debug, Default)]
pub struct MemTable {
    tables: DashMap<String, DashMap<String, Value>>,
}

impl MemTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// The table called `name`, created if needed. Only writes call this:
    /// a read of a missing table must not leave an empty table behind.
    fn table_for_write(&self, name: &str) -> Ref<'_, String, DashMap<String, Value>> {
        if let Some(table) = self.tables.get(name) {
            return table;
        }
        // `entry` locks the shard for writing; `downgrade` turns that into
        // a read lock so other readers of the shard can go on.
        self.tables.entry(name.to_owned()).or_default().downgrade()
    }
}
// ANCHOR_END: memtable

// ANCHOR: memtable_storage
impl Storage for MemTable {
    fn get(&self, table: &str, key: &str) -> Result<Option<Value>, KvError> {
        let value = self
            .tables
            .get(table)
            .and_then(|t| t.get(key).map(|v| v.value().clone()));
        Ok(value)
    }

    fn set(&self, table: &str, key: String, value: Value) -> Result<Option<Value>, KvError> {
        Ok(self.table_for_write(table).insert(key, value))
    }

    fn contains(&self, table: &str, key: &str) -> Result<bool, KvError> {
        Ok(self.tables.get(table).is_some_and(|t| t.contains_key(key)))
    }

    fn del(&self, table: &str, key: &str) -> Result<Option<Value>, KvError> {
        let removed = self
            .tables
            .get(table)
            .and_then(|t| t.remove(key).map(|(_, v)| v));
        Ok(removed)
    }

    fn iter(&self, table: &str) -> Result<StorageIter<'_>, KvError> {
        // DashMap keeps no order, so sorting needs every key: copy the
        // keys, not the values, and sort them. Each value is copied when
        // the iterator reaches it, under a lock held only that long. So a
        // caller that stops early (hgetall at its answer limit) copies no
        // more values, and a caller that writes inside its loop finds no
        // lock held by the iterator.
        let mut keys: Vec<String> = match self.tables.get(table) {
            Some(t) => t.iter().map(|e| e.key().clone()).collect(),
            None => Vec::new(),
        };
        keys.sort_unstable();
        let table = table.to_owned();
        let pairs = keys.into_iter().filter_map(move |key| {
            // A key deleted since the copy is skipped.
            let value = self.tables.get(&table)?.get(&key)?.value().clone();
            Some(Ok(Kvpair::new(key, value)))
        });
        Ok(Box::new(pairs))
    }

    // ANCHOR: memtable_transactions
    fn read<T>(
        &self,
        table: &str,
        work: impl FnOnce(&dyn TableRead) -> Result<T, KvError>,
    ) -> Result<T, KvError> {
        work(&MemRead(self.tables.get(table)))
    }

    fn write<T>(
        &self,
        table: &str,
        work: impl FnOnce(&mut dyn TableWrite) -> Result<T, KvError>,
    ) -> Result<T, KvError> {
        // The table's entry in `tables`, held for writing: until it is
        // dropped, no other request reads or writes this table (nor the
        // other tables in its shard of `tables`). So no one sees half of a
        // transaction, and two transactions never interleave.
        let entry = self.tables.entry(table.to_owned()).or_default();
        let mut txn = MemWrite {
            table: &entry,
            undo: Vec::new(),
        };
        let result = work(&mut txn);
        if result.is_err() {
            txn.roll_back();
        }
        // A table left empty (made for this write, say) is no table.
        let empty = entry.is_empty();
        drop(entry);
        if empty {
            self.tables.remove_if(table, |_, t| t.is_empty());
        }
        result
    }
    // ANCHOR_END: memtable_transactions
}
// ANCHOR_END: memtable_storage

// ANCHOR: memtable_txn
/// A table of a [`MemTable`] for reading; `None` if it does not exist.
struct MemRead<'a>(Option<Ref<'a, String, DashMap<String, Value>>>);

impl TableRead for MemRead<'_> {
    fn get(&self, key: &str) -> Result<Option<Value>, KvError> {
        let table = self.0.as_ref();
        Ok(table.and_then(|t| t.get(key).map(|v| v.value().clone())))
    }

    fn contains(&self, key: &str) -> Result<bool, KvError> {
        Ok(self.0.as_ref().is_some_and(|t| t.contains_key(key)))
    }
}

/// A write transaction on a [`MemTable`]: it changes the table at once,
/// and remembers what each change replaced, to put it back on an error.
struct MemWrite<'a> {
    table: &'a DashMap<String, Value>,
    /// Each key changed, with the value it had before (`None`: no value).
    undo: Vec<(String, Option<Value>)>,
}

impl MemWrite<'_> {
    /// Puts back what the transaction replaced or removed, newest first.
    fn roll_back(self) {
        for (key, before) in self.undo.into_iter().rev() {
            match before {
                Some(value) => self.table.insert(key, value),
                None => self.table.remove(&key).map(|(_, value)| value),
            };
        }
    }
}

impl TableRead for MemWrite<'_> {
    fn get(&self, key: &str) -> Result<Option<Value>, KvError> {
        Ok(self.table.get(key).map(|v| v.value().clone()))
    }

    fn contains(&self, key: &str) -> Result<bool, KvError> {
        Ok(self.table.contains_key(key))
    }
}

impl TableWrite for MemWrite<'_> {
    fn set(&mut self, key: String, value: Value) -> Result<Option<Value>, KvError> {
        let previous = self.table.insert(key.clone(), value);
        self.undo.push((key, previous.clone()));
        Ok(previous)
    }

    fn del(&mut self, key: &str) -> Result<Option<Value>, KvError> {
        let previous = self.table.remove(key).map(|(_, value)| value);
        if let Some(value) = &previous {
            self.undo.push((key.to_owned(), Some(value.clone())));
        }
        Ok(previous)
    }
}
// ANCHOR_END: memtable_txn

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::conformance::storage_conformance;

    // ANCHOR: run_conformance
    storage_conformance!(MemTable::new());
    // ANCHOR_END: run_conformance

    #[test]
    fn iter_copies_each_value_only_when_it_gets_there() {
        let store = MemTable::new();
        for key in ["a", "b", "c"] {
            store.set("t", key.into(), key.into()).unwrap();
        }
        let mut pairs = store.iter("t").unwrap();
        assert_eq!(pairs.next().unwrap().unwrap(), Kvpair::new("a", "a"));
        // Changed and deleted after `iter` began, but before it got there:
        // it copies the values as they are now, and no lock is in the way.
        store.set("t", "b".into(), "new".into()).unwrap();
        store.del("t", "c").unwrap();
        assert_eq!(pairs.next().unwrap().unwrap(), Kvpair::new("b", "new"));
        assert!(pairs.next().is_none());
    }

    #[test]
    fn concurrent_writes_never_report_the_same_previous_value() {
        // Each write replaces the value before it. If two writes could
        // interleave, both could report one value as the one they replaced.
        let store = MemTable::new();
        let previous: Vec<Option<Value>> = std::thread::scope(|s| {
            let writers: Vec<_> = (0..4)
                .map(|w| {
                    let store = &store;
                    s.spawn(move || {
                        (0..500)
                            .map(|i| {
                                let value = Value::from(format!("{w}-{i}"));
                                store.write("t", |t| t.set("k".into(), value)).unwrap()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            writers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        let replaced: std::collections::HashSet<String> =
            previous.iter().flatten().map(Value::to_string).collect();
        assert_eq!(
            replaced.len(),
            4 * 500 - 1,
            "every value but the last was replaced once"
        );
    }

    #[test]
    fn a_read_never_sees_half_of_a_write() {
        // Each write sets both keys to the same number; a read of both
        // must never find them apart.
        let store = MemTable::new();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..2000i64 {
                    store
                        .write("t", |t| {
                            t.set("a".into(), i.into())?;
                            t.set("b".into(), i.into())
                        })
                        .unwrap();
                }
                done.store(true, std::sync::atomic::Ordering::Relaxed);
            });
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let (a, b) = store.read("t", |t| Ok((t.get("a")?, t.get("b")?))).unwrap();
                assert_eq!(a, b);
            }
        });
    }

    #[test]
    fn reading_a_missing_table_does_not_create_it() {
        let store = MemTable::new();
        store.get("ghost", "k").unwrap();
        store.contains("ghost", "k").unwrap();
        store.del("ghost", "k").unwrap();
        store.get_all("ghost").unwrap();
        store.read("ghost", |t| t.get("k")).unwrap();
        store.write("ghost", |t| t.del("k")).unwrap();
        assert!(store.tables.is_empty());
    }
}
