use std::path::Path;

use prost::Message;
use redb::{
    Database, ReadOnlyTable, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    TableDefinition, TableError,
};

use crate::{KvError, Kvpair, Storage, StorageIter, TableRead, TableWrite, Value};

// ANCHOR: layout
/// Every table of the KV store is a redb table of the same name, from the
/// key to the protobuf encoding of the value.
type KvTable<'a> = TableDefinition<'a, &'static str, &'static [u8]>;

/// The redb table for `table`. redb cannot name a table with the empty
/// string (it panics), so that is an error here.
fn definition(table: &str) -> Result<KvTable<'_>, KvError> {
    if table.is_empty() {
        return Err(KvError::InvalidCommand("the table name is empty".into()));
    }
    Ok(TableDefinition::new(table))
}
// ANCHOR_END: layout

// ANCHOR: struct
/// A [`Storage`] in a [redb](https://docs.rs/redb) database file: the data
/// outlives the process.
///
/// Each call is one transaction. A write is on disk when it returns: redb
/// commits with `Durability::Immediate` unless told otherwise, and we keep
/// that, so a client that was told "done" never loses the write. redb runs
/// any number of readers next to one writer, and readers see a consistent
/// snapshot.
pub struct RedbStore {
    db: Database,
}

/// A table as redb stores it, inside a read or a write transaction.
type ReadTable = ReadOnlyTable<&'static str, &'static [u8]>;
type WriteTable<'txn> = Table<'txn, &'static str, &'static [u8]>;

impl RedbStore {
    /// Opens the database at `path`, creating the file if it is missing.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, KvError> {
        Ok(Self {
            db: Database::create(path)?,
        })
    }

    /// The table for reading, or `None` if it was never written to.
    fn read_table(&self, table: &str) -> Result<Option<ReadTable>, KvError> {
        let txn = self.db.begin_read()?;
        match txn.open_table(definition(table)?) {
            Ok(t) => Ok(Some(t)),
            Err(TableError::TableDoesNotExist(_)) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }
}
// ANCHOR_END: struct

// ANCHOR: decode
fn decode(table: &str, key: &str, bytes: &[u8]) -> Result<Value, KvError> {
    Value::decode(bytes).map_err(|error| KvError::CorruptValue {
        table: table.into(),
        key: key.into(),
        error,
    })
}
// ANCHOR_END: decode

// ANCHOR: storage
impl Storage for RedbStore {
    fn get(&self, table: &str, key: &str) -> Result<Option<Value>, KvError> {
        self.read(table, |t| t.get(key))
    }

    fn set(&self, table: &str, key: String, value: Value) -> Result<Option<Value>, KvError> {
        self.write(table, |t| t.set(key, value))
    }

    fn contains(&self, table: &str, key: &str) -> Result<bool, KvError> {
        self.read(table, |t| t.contains(key))
    }

    fn del(&self, table: &str, key: &str) -> Result<Option<Value>, KvError> {
        // Check first: deleting from a missing table needs no commit.
        if self.read_table(table)?.is_none() {
            return Ok(None);
        }
        self.write(table, |t| t.del(key))
    }

    /// Every commit waits for the disk.
    fn blocks(&self) -> bool {
        true
    }

    fn iter(&self, table: &str) -> Result<StorageIter<'_>, KvError> {
        let Some(t) = self.read_table(table)? else {
            return Ok(Box::new(std::iter::empty()));
        };
        // The range keeps its read transaction alive: the iterator walks a
        // snapshot, in key order, without copying the table first.
        let table = table.to_owned();
        let pairs = t.range::<&str>(..)?.map(move |entry| {
            let (key, bytes) = entry?;
            let value = decode(&table, key.value(), bytes.value())?;
            Ok(Kvpair::new(key.value(), value))
        });
        Ok(Box::new(pairs))
    }

    // ANCHOR_END: storage

    // ANCHOR: transactions
    fn read<T>(
        &self,
        table: &str,
        work: impl FnOnce(&dyn TableRead) -> Result<T, KvError>,
    ) -> Result<T, KvError> {
        let t = RedbRead {
            name: table,
            table: self.read_table(table)?,
        };
        work(&t)
    }

    fn write<T>(
        &self,
        table: &str,
        work: impl FnOnce(&mut dyn TableWrite) -> Result<T, KvError>,
    ) -> Result<T, KvError> {
        let txn = self.db.begin_write()?;
        let (result, empty) = {
            // Opening a table in a write transaction creates it.
            let mut t = RedbWrite {
                name: table,
                table: txn.open_table(definition(table)?)?,
            };
            // On an error, `txn` is dropped uncommitted, which aborts it:
            // none of the changes, not even the new table, are kept.
            let result = work(&mut t)?;
            (result, t.table.is_empty()?)
        };
        // A missing table reads as empty, so an empty one is dropped: a
        // delete from a table that did not exist leaves none behind.
        if empty {
            txn.delete_table(definition(table)?)?;
        }
        txn.commit()?;
        Ok(result)
    }
    // ANCHOR_END: transactions
}

// ANCHOR: txn_tables
/// A table in a read transaction; `None` if it does not exist.
struct RedbRead<'a> {
    name: &'a str,
    table: Option<ReadTable>,
}

impl TableRead for RedbRead<'_> {
    fn get(&self, key: &str) -> Result<Option<Value>, KvError> {
        match &self.table {
            Some(t) => get(self.name, t, key),
            None => Ok(None),
        }
    }

    fn contains(&self, key: &str) -> Result<bool, KvError> {
        match &self.table {
            Some(t) => Ok(t.get(key)?.is_some()),
            None => Ok(false),
        }
    }
}

/// A table in a write transaction.
struct RedbWrite<'a, 'txn> {
    name: &'a str,
    table: WriteTable<'txn>,
}

impl TableRead for RedbWrite<'_, '_> {
    fn get(&self, key: &str) -> Result<Option<Value>, KvError> {
        get(self.name, &self.table, key)
    }

    fn contains(&self, key: &str) -> Result<bool, KvError> {
        Ok(self.table.get(key)?.is_some())
    }
}

impl TableWrite for RedbWrite<'_, '_> {
    fn set(&mut self, key: String, value: Value) -> Result<Option<Value>, KvError> {
        let previous = self
            .table
            .insert(key.as_str(), value.encode_to_vec().as_slice())?;
        previous
            .map(|bytes| decode(self.name, &key, bytes.value()))
            .transpose()
    }

    fn del(&mut self, key: &str) -> Result<Option<Value>, KvError> {
        let removed = self.table.remove(key)?;
        removed
            .map(|bytes| decode(self.name, key, bytes.value()))
            .transpose()
    }
}

/// Reads and decodes one value from either kind of table.
fn get(
    name: &str,
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<Value>, KvError> {
    table
        .get(key)?
        .map(|bytes| decode(name, key, bytes.value()))
        .transpose()
}
// ANCHOR_END: txn_tables

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::conformance::storage_conformance;

    /// A store in an anonymous temporary file, removed when it is closed.
    fn temp_store() -> RedbStore {
        let file = tempfile::tempfile().unwrap();
        let backend = redb::backends::FileBackend::new(file).unwrap();
        RedbStore {
            db: Database::builder().create_with_backend(backend).unwrap(),
        }
    }

    storage_conformance!(temp_store());

    // ANCHOR: reopen_test
    #[test]
    fn data_survives_closing_and_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");

        let store = RedbStore::open(&path).unwrap();
        store.set("t", "k".into(), "kept".into()).unwrap();
        store.set("t", "gone".into(), 1i64.into()).unwrap();
        store.del("t", "gone").unwrap();
        drop(store);

        let store = RedbStore::open(&path).unwrap();
        assert_eq!(store.get("t", "k").unwrap(), Some("kept".into()));
        assert_eq!(store.get_all("t").unwrap(), [Kvpair::new("k", "kept")]);
    }
    // ANCHOR_END: reopen_test

    #[test]
    fn a_read_transaction_sees_one_snapshot() {
        let store = temp_store();
        store.set("t", "k".into(), "before".into()).unwrap();
        let seen = store
            .read("t", |t| {
                // Another transaction commits a change half-way through.
                store.set("t", "k".into(), "after".into())?;
                t.get("k")
            })
            .unwrap();
        assert_eq!(seen, Some("before".into()));
        assert_eq!(store.get("t", "k").unwrap(), Some("after".into()));
    }

    #[test]
    fn an_empty_table_name_is_an_error_not_a_panic() {
        let store = temp_store();
        let err = store.set("", "k".into(), 1i64.into()).unwrap_err();
        assert_eq!(err.to_string(), "invalid command: the table name is empty");
        assert!(store.get("", "k").is_err());
        assert!(store.iter("").is_err());
    }

    #[test]
    fn reading_or_deleting_does_not_create_a_table() {
        let store = temp_store();
        store.get("ghost", "k").unwrap();
        store.contains("ghost", "k").unwrap();
        store.del("ghost", "k").unwrap();
        store.get_all("ghost").unwrap();
        store.write("ghost", |t| t.del("k")).unwrap();
        let failed = store.write("ghost", |t| {
            t.set("k".into(), 1i64.into())?;
            Err::<(), _>(KvError::Internal("stop".into()))
        });
        assert!(failed.is_err());
        store.set("emptied", "k".into(), 1i64.into()).unwrap();
        store.del("emptied", "k").unwrap();
        for table in ["ghost", "emptied"] {
            assert!(store.read_table(table).unwrap().is_none(), "{table}");
        }
    }

    #[test]
    fn a_corrupt_value_is_an_error_that_names_table_and_key() {
        let store = temp_store();
        let txn = store.db.begin_write().unwrap();
        txn.open_table(definition("t").unwrap())
            .unwrap()
            .insert("k", &[0xff_u8, 0xff][..])
            .unwrap();
        txn.commit().unwrap();

        let err = store.get("t", "k").unwrap_err();
        assert_eq!(err.status(), 500);
        assert!(
            err.to_string()
                .starts_with("value of key `k` in table `t` is corrupt"),
            "{err}"
        );
        let err = store.get_all("t").unwrap_err();
        assert!(matches!(err, KvError::CorruptValue { .. }), "{err}");
    }
}
