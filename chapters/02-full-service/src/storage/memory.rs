use std::collections::HashMap;

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
        // Copy the table out rather than iterate it in place: iterating a
        // DashMap holds a read lock on the shard it is visiting, and a
        // caller that wrote a key of that shard inside its loop would wait
        // for that lock forever.
        let mut pairs: Vec<Kvpair> = match self.tables.get(table) {
            Some(t) => t
                .iter()
                .map(|e| Kvpair::new(e.key().clone(), e.value().clone()))
                .collect(),
            None => Vec::new(),
        };
        pairs.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        Ok(Box::new(pairs.into_iter().map(Ok)))
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
        let mut txn = MemWrite {
            table: MemRead(self.tables.get(table)),
            changes: HashMap::new(),
        };
        // On an error, the changes are dropped unapplied.
        let result = work(&mut txn)?;
        if txn.changes.is_empty() {
            return Ok(result);
        }
        // Let go of the read lock first: creating the table takes a write
        // lock on the same shard of `tables`.
        drop(txn.table);
        let target = self.table_for_write(table);
        for (key, change) in txn.changes {
            match change {
                Some(value) => target.insert(key, value),
                None => target.remove(&key).map(|(_, value)| value),
            };
        }
        Ok(result)
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

/// A write transaction on a [`MemTable`]. Its changes wait here (`None`
/// for a deletion) and reach the table only once `work` succeeds, so a
/// failure leaves nothing to undo. They reach it one key at a time: a
/// read at that moment may see some of them and not others.
struct MemWrite<'a> {
    table: MemRead<'a>,
    changes: HashMap<String, Option<Value>>,
}

impl TableRead for MemWrite<'_> {
    fn get(&self, key: &str) -> Result<Option<Value>, KvError> {
        match self.changes.get(key) {
            Some(change) => Ok(change.clone()),
            None => self.table.get(key),
        }
    }

    fn contains(&self, key: &str) -> Result<bool, KvError> {
        match self.changes.get(key) {
            Some(change) => Ok(change.is_some()),
            None => self.table.contains(key),
        }
    }
}

impl TableWrite for MemWrite<'_> {
    fn set(&mut self, key: String, value: Value) -> Result<Option<Value>, KvError> {
        let previous = self.get(&key)?;
        self.changes.insert(key, Some(value));
        Ok(previous)
    }

    fn del(&mut self, key: &str) -> Result<Option<Value>, KvError> {
        let previous = self.get(key)?;
        if previous.is_some() {
            self.changes.insert(key.to_owned(), None);
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
