use std::{
    fmt::Display,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, RwLock, TryLockError, Weak},
    time::{Duration, Instant},
};

use prost::Message;
use redb::{
    Database, ReadOnlyTable, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    TableDefinition, TableError,
};
use tracing::{info, warn};

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
///
/// After a disk error (a full disk, say) redb refuses all work until the
/// file is opened again, so the store closes it and reopens it by itself,
/// and answers 503 ([`KvError::StorageUnavailable`]) meanwhile.
pub struct RedbStore {
    db: RwLock<Handle>,
    /// The file, to open it again; `None` for a database on a backend made
    /// by the caller, which is never closed.
    path: Option<PathBuf>,
    /// When the next reopen may be tried. Held by the thread trying.
    next_reopen: Mutex<Instant>,
}

/// The database, or the one that was closed after a disk error.
enum Handle {
    Open(Arc<Database>),
    /// Closed. Every call holds a clone of the `Arc` for as long as its
    /// transaction lives, so the `Weak` tells when the last call on the
    /// old database has ended.
    Closed(Weak<Database>),
}

/// A table as redb stores it, inside a read or a write transaction.
type ReadTable = ReadOnlyTable<&'static str, &'static [u8]>;
type WriteTable<'txn> = Table<'txn, &'static str, &'static [u8]>;

impl RedbStore {
    /// Opens the database at `path`, creating the file if it is missing.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, KvError> {
        let path = path.as_ref().to_owned();
        let db = Database::create(&path)?;
        Ok(Self::with_database(db, Some(path)))
    }

    fn with_database(db: Database, path: Option<PathBuf>) -> Self {
        Self {
            db: RwLock::new(Handle::Open(Arc::new(db))),
            path,
            next_reopen: Mutex::new(Instant::now()),
        }
    }

    /// Runs `op` on the database. If it meets a disk error, the database
    /// is closed, to be reopened, and the answer is 503.
    fn with_db<T>(
        &self,
        op: impl FnOnce(&Arc<Database>) -> Result<T, KvError>,
    ) -> Result<T, KvError> {
        let db = self.database()?;
        let result = op(&db);
        self.check(&db, result)
    }
}

/// The table for reading, or `None` if it was never written to.
fn read_table(db: &Database, table: &str) -> Result<Option<ReadTable>, KvError> {
    let txn = db.begin_read()?;
    match txn.open_table(definition(table)?) {
        Ok(t) => Ok(Some(t)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(err) => Err(err.into()),
    }
}
// ANCHOR_END: struct

// ANCHOR: recovery
/// How often a closed database may be tried again.
const REOPEN_INTERVAL: Duration = Duration::from_secs(1);

impl RedbStore {
    /// The database, opened again first if a disk error closed it. A
    /// reopen waits until every call on the old database has ended (redb
    /// allows one handle on a file at a time), and is tried by one thread
    /// at a time, at most once a [`REOPEN_INTERVAL`]. The calls that come
    /// meanwhile are answered 503 at once.
    fn database(&self) -> Result<Arc<Database>, KvError> {
        if let Handle::Open(db) = &*self.db.read().unwrap_or_else(PoisonError::into_inner) {
            return Ok(Arc::clone(db));
        }
        self.reopen()
    }

    fn reopen(&self) -> Result<Arc<Database>, KvError> {
        let closed = || unavailable("the database file is closed after a disk error");
        // One thread tries; the others answer at once.
        let mut next = match self.next_reopen.try_lock() {
            Ok(next) => next,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(closed()),
        };
        let old = match &*self.db.read().unwrap_or_else(PoisonError::into_inner) {
            Handle::Open(db) => return Ok(Arc::clone(db)), // reopened meanwhile
            Handle::Closed(old) => old.clone(),
        };
        let Some(path) = &self.path else {
            return Err(closed());
        };
        if old.strong_count() > 0 || Instant::now() < *next {
            return Err(closed());
        }
        *next = Instant::now() + REOPEN_INTERVAL;
        self.open_again(path)
    }

    /// Opens the file again, for the calls from now on. redb finds that it
    /// was not closed cleanly, and repairs it back to its last commit,
    /// which holds every write that was acknowledged.
    fn open_again(&self, path: &Path) -> Result<Arc<Database>, KvError> {
        let db = Database::create(path).map_err(|err| {
            warn!(error = %err, "cannot reopen the database yet");
            unavailable(format_args!(
                "the database file cannot be reopened yet ({err})"
            ))
        })?;
        let db = Arc::new(db);
        *self.db.write().unwrap_or_else(PoisonError::into_inner) = Handle::Open(Arc::clone(&db));
        info!("reopened the database after a disk error");
        Ok(db)
    }

    /// Passes `result` on; but on a disk error, closes `db` and answers
    /// 503 instead. A database on a caller's backend is not closed.
    fn check<T>(&self, db: &Arc<Database>, result: Result<T, KvError>) -> Result<T, KvError> {
        match result {
            Err(KvError::Storage(err)) if self.path.is_some() && is_disk_error(&err) => {
                self.close(db, &err);
                Err(match *err {
                    redb::Error::PreviousIo => unavailable("an earlier disk write or read failed"),
                    _ => unavailable(format_args!("a disk write or read failed ({err})")),
                })
            }
            other => other,
        }
    }

    /// Marks `db` closed, unless that was done already. It closes for good
    /// when the last call holding it ends.
    fn close(&self, db: &Arc<Database>, err: &redb::Error) {
        let mut handle = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if matches!(&*handle, Handle::Open(open) if Arc::ptr_eq(open, db)) {
            *handle = Handle::Closed(Arc::downgrade(db));
            warn!(error = %err, "disk error: closing the database, to reopen it");
        }
    }
}

/// Whether `err` is the file's: a read or write that failed now, or one
/// that failed before, after which redb refuses all work on this handle.
fn is_disk_error(err: &redb::Error) -> bool {
    matches!(err, redb::Error::Io(_) | redb::Error::PreviousIo)
}

/// The answer while the database is closed.
fn unavailable(cause: impl Display) -> KvError {
    KvError::StorageUnavailable(format!(
        "{cause}; the server reopens the database by itself, trying once a second"
    ))
}
// ANCHOR_END: recovery

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
        self.with_db(|db| {
            // Check first: deleting from a missing table needs no commit.
            if read_table(db, table)?.is_none() {
                return Ok(None);
            }
            write_in(db, table, |t| t.del(key))
        })
    }

    /// Every commit waits for the disk.
    fn blocks(&self) -> bool {
        true
    }

    fn iter(&self, table: &str) -> Result<StorageIter<'_>, KvError> {
        let db = self.database()?;
        let range = read_table(&db, table).and_then(|t| match t {
            Some(t) => Ok(Some(t.range::<&str>(..)?)),
            None => Ok(None),
        });
        let Some(range) = self.check(&db, range)? else {
            return Ok(Box::new(std::iter::empty()));
        };
        // The range keeps its read transaction alive: the iterator walks a
        // snapshot, in key order, without copying the table first. It
        // holds `db` too, for a reopen to wait for.
        let table = table.to_owned();
        let pairs = range.map(move |entry| {
            let pair = entry.map_err(KvError::from).and_then(|(key, bytes)| {
                let value = decode(&table, key.value(), bytes.value())?;
                Ok(Kvpair::new(key.value(), value))
            });
            self.check(&db, pair)
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
        self.with_db(|db| {
            let t = RedbRead {
                name: table,
                table: read_table(db, table)?,
            };
            work(&t)
        })
    }

    fn write<T>(
        &self,
        table: &str,
        work: impl FnOnce(&mut dyn TableWrite) -> Result<T, KvError>,
    ) -> Result<T, KvError> {
        self.with_db(|db| write_in(db, table, work))
    }
    // ANCHOR_END: transactions
}

// ANCHOR: write_in
/// One write transaction on `table` of `db`: see [`Storage::write`].
fn write_in<T>(
    db: &Database,
    table: &str,
    work: impl FnOnce(&mut dyn TableWrite) -> Result<T, KvError>,
) -> Result<T, KvError> {
    let txn = db.begin_write()?;
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
// ANCHOR_END: write_in

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
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

    use super::*;
    use crate::storage::conformance::storage_conformance;

    /// A store in an anonymous temporary file, removed when it is closed.
    fn temp_store() -> RedbStore {
        let file = tempfile::tempfile().unwrap();
        let backend = redb::backends::FileBackend::new(file).unwrap();
        let db = Database::builder().create_with_backend(backend).unwrap();
        RedbStore::with_database(db, None)
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
            let db = store.database().unwrap();
            assert!(read_table(&db, table).unwrap().is_none(), "{table}");
        }
    }

    #[test]
    fn a_corrupt_value_is_an_error_that_names_table_and_key() {
        let store = temp_store();
        let txn = store.database().unwrap().begin_write().unwrap();
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

    // ANCHOR: recovery_test
    /// A file whose writes fail while `fail` is set, as on a full disk.
    #[derive(Debug)]
    struct Faulty {
        file: redb::backends::FileBackend,
        fail: Arc<AtomicBool>,
    }

    impl Faulty {
        fn check(&self) -> std::io::Result<()> {
            match self.fail.load(Relaxed) {
                true => Err(std::io::Error::from_raw_os_error(28)), // ENOSPC
                false => Ok(()),
            }
        }
    }

    impl redb::StorageBackend for Faulty {
        fn len(&self) -> std::io::Result<u64> {
            self.file.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.file.read(offset, out)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.check()?;
            self.file.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.check()?;
            self.file.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.check()?;
            self.file.write(offset, data)
        }
        fn close(&self) -> std::io::Result<()> {
            self.file.close()
        }
    }

    #[test]
    fn after_a_disk_error_the_file_is_reopened_and_no_write_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        let fail = Arc::new(AtomicBool::new(false));
        let file = std::fs::File::create_new(&path).unwrap();
        let backend = Faulty {
            file: redb::backends::FileBackend::new(file).unwrap(),
            fail: Arc::clone(&fail),
        };
        let db = Database::builder().create_with_backend(backend).unwrap();
        let store = RedbStore::with_database(db, Some(path));
        store.set("t", "kept".into(), 1i64.into()).unwrap();
        let old = store.iter("t").unwrap(); // a call still on the old file

        fail.store(true, Relaxed);
        let err = store.set("t", "lost".into(), 2i64.into()).unwrap_err();
        assert_eq!(err.status(), 503, "{err}");
        assert!(err.to_string().contains("No space left"), "{err}");
        assert!(err.to_string().contains("reopens the database"), "{err}");
        // Not reopened while the old file is in use: answered 503 at once.
        let err = store.get("t", "kept").unwrap_err();
        assert_eq!(err.status(), 503, "{err}");

        drop(old); // its last call ends: the next call reopens the file
        assert_eq!(store.get("t", "kept").unwrap(), Some(1i64.into()));
        assert_eq!(store.get("t", "lost").unwrap(), None);
        store.set("t", "after".into(), 3i64.into()).unwrap();
        assert_eq!(store.get_all("t").unwrap().len(), 2);
    }
    // ANCHOR_END: recovery_test
}
