//! Where the data lives. The service talks to a [`Storage`], which has two
//! implementations: [`MemTable`] keeps everything in memory, [`RedbStore`]
//! keeps it in a database file.

mod memory;
mod redb_store;

pub use memory::MemTable;
pub use redb_store::RedbStore;

use crate::{KvError, Kvpair, Value};

/// One table, as a read transaction sees it: see [`Storage::read`].
pub trait TableRead {
    /// The value of `key`, if there is one.
    fn get(&self, key: &str) -> Result<Option<Value>, KvError>;

    /// Whether `key` has a value.
    fn contains(&self, key: &str) -> Result<bool, KvError>;
}

/// One table inside a write transaction: see [`Storage::write`]. Reads
/// see the transaction's own writes.
pub trait TableWrite: TableRead {
    /// Stores `value` under `key` and returns the value it replaced.
    fn set(&mut self, key: String, value: Value) -> Result<Option<Value>, KvError>;

    /// Removes `key` and returns the value it had.
    fn del(&mut self, key: &str) -> Result<Option<Value>, KvError>;
}

/// An iterator over the pairs of one table. Each item is a `Result`
/// because a backend that reads from disk can fail half-way through.
pub type StorageIter<'a> = Box<dyn Iterator<Item = Result<Kvpair, KvError>> + 'a>;

// ANCHOR: storage
/// A set of named tables, each mapping string keys to [`Value`]s.
///
/// Methods take `&self`: a storage is shared by every request at once, so
/// implementations synchronise internally. A table that was never written
/// to behaves as an empty table, and reading it does not create it.
pub trait Storage: Send + Sync {
    /// The value of `key`, if there is one.
    fn get(&self, table: &str, key: &str) -> Result<Option<Value>, KvError>;

    /// Stores `value` under `key` and returns the value it replaced.
    fn set(&self, table: &str, key: String, value: Value) -> Result<Option<Value>, KvError>;

    /// Whether `key` has a value.
    fn contains(&self, table: &str, key: &str) -> Result<bool, KvError>;

    /// Removes `key` and returns the value it had.
    fn del(&self, table: &str, key: &str) -> Result<Option<Value>, KvError>;

    /// The pairs of `table`, sorted by key.
    fn iter(&self, table: &str) -> Result<StorageIter<'_>, KvError>;

    // ANCHOR: blocks
    /// Whether calls may wait: for the disk, or for a lock that another
    /// thread holds for long. The server runs the requests of such a
    /// storage on threads meant for blocking work.
    fn blocks(&self) -> bool {
        false
    }
    // ANCHOR_END: blocks

    /// Every pair of `table`, sorted by key.
    fn get_all(&self, table: &str) -> Result<Vec<Kvpair>, KvError> {
        self.iter(table)?.collect()
    }

    /// Runs `work` on `table` in one read transaction, for a command that
    /// reads several keys. A backend with snapshots (redb) shows `work`
    /// the table as it was at one moment.
    fn read<T>(
        &self,
        table: &str,
        work: impl FnOnce(&dyn TableRead) -> Result<T, KvError>,
    ) -> Result<T, KvError>
    where
        Self: Sized;

    /// Runs `work` on `table` in one write transaction: if it returns
    /// `Ok`, all of its changes are kept; if it returns an error, none.
    fn write<T>(
        &self,
        table: &str,
        work: impl FnOnce(&mut dyn TableWrite) -> Result<T, KvError>,
    ) -> Result<T, KvError>
    where
        Self: Sized;
}
// ANCHOR_END: storage

/// Tests that every [`Storage`] must pass, written once. A backend runs
/// them all with `storage_conformance!(expression that makes a storage)`.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;

    pub fn get_set_overwrite(store: &impl Storage) {
        assert_eq!(store.get("t", "k").unwrap(), None);
        assert_eq!(store.set("t", "k".into(), "v1".into()).unwrap(), None);
        assert_eq!(
            store.set("t", "k".into(), "v2".into()).unwrap(),
            Some("v1".into())
        );
        assert_eq!(store.get("t", "k").unwrap(), Some("v2".into()));
    }

    pub fn contains_and_del(store: &impl Storage) {
        store.set("t", "k".into(), 7i64.into()).unwrap();
        assert!(store.contains("t", "k").unwrap());
        assert!(!store.contains("t", "other").unwrap());
        assert_eq!(store.del("t", "k").unwrap(), Some(7i64.into()));
        assert!(!store.contains("t", "k").unwrap());
        assert_eq!(store.del("t", "k").unwrap(), None);
    }

    pub fn tables_are_separate(store: &impl Storage) {
        store.set("a", "k".into(), "in a".into()).unwrap();
        store.set("b", "k".into(), "in b".into()).unwrap();
        assert_eq!(store.get("a", "k").unwrap(), Some("in a".into()));
        assert_eq!(store.get("b", "k").unwrap(), Some("in b".into()));
        store.del("a", "k").unwrap();
        assert_eq!(store.get("b", "k").unwrap(), Some("in b".into()));
    }

    pub fn get_all_is_sorted_by_key(store: &impl Storage) {
        for key in ["c", "a", "b"] {
            store.set("t", key.into(), key.into()).unwrap();
        }
        let pairs = store.get_all("t").unwrap();
        let expected: Vec<_> = ["a", "b", "c"].map(|k| Kvpair::new(k, k)).into();
        assert_eq!(pairs, expected);
        let collected: Vec<_> = store.iter("t").unwrap().map(Result::unwrap).collect();
        assert_eq!(collected, expected);
    }

    // ANCHOR: missing_table
    pub fn missing_table_is_empty(store: &impl Storage) {
        assert_eq!(store.get("nowhere", "k").unwrap(), None);
        assert!(!store.contains("nowhere", "k").unwrap());
        assert_eq!(store.del("nowhere", "k").unwrap(), None);
        assert!(store.get_all("nowhere").unwrap().is_empty());
        assert_eq!(store.iter("nowhere").unwrap().count(), 0);
    }
    // ANCHOR_END: missing_table

    pub fn every_value_type_round_trips(store: &impl Storage) {
        let values: [Value; 6] = [
            "text".into(),
            (-1i64).into(),
            2.5.into(),
            true.into(),
            (&b"\x00bin\xff"[..]).into(),
            "".into(),
        ];
        for (i, value) in values.iter().enumerate() {
            store.set("t", i.to_string(), value.clone()).unwrap();
        }
        for (i, value) in values.iter().enumerate() {
            assert_eq!(
                store.get("t", &i.to_string()).unwrap().as_ref(),
                Some(value)
            );
        }
    }

    pub fn a_write_sees_its_own_changes(store: &impl Storage) {
        store.set("t", "k".into(), 1i64.into()).unwrap();
        let seen = store
            .write("t", |t| {
                assert_eq!(t.set("k".into(), 2i64.into())?, Some(1i64.into()));
                assert_eq!(t.get("k")?, Some(2i64.into()));
                assert_eq!(t.del("k")?, Some(2i64.into()));
                assert!(!t.contains("k")?);
                t.set("k".into(), 3i64.into())
            })
            .unwrap();
        assert_eq!(seen, None, "the key was deleted just before");
        assert_eq!(store.get("t", "k").unwrap(), Some(3i64.into()));
    }

    pub fn a_failed_write_changes_nothing(store: &impl Storage) {
        store.set("t", "kept".into(), "old".into()).unwrap();
        let err = store
            .write("t", |t| {
                t.set("kept".into(), "new".into())?;
                t.del("kept")?;
                t.set("added".into(), 1i64.into())?;
                Err::<(), _>(KvError::Internal("stop half-way".into()))
            })
            .unwrap_err();
        assert_eq!(err.to_string(), "internal error: stop half-way");
        assert_eq!(store.get("t", "kept").unwrap(), Some("old".into()));
        assert!(!store.contains("t", "added").unwrap());
        let err = store.write("new", |t| {
            t.set("k".into(), 1i64.into())?;
            Err::<(), _>(KvError::Internal("stop".into()))
        });
        assert!(err.is_err());
        assert!(store.get_all("new").unwrap().is_empty());
    }

    pub fn a_read_sees_every_key(store: &impl Storage) {
        store.set("t", "a".into(), 1i64.into()).unwrap();
        let (a, b, has_a) = store
            .read("t", |t| Ok((t.get("a")?, t.get("b")?, t.contains("a")?)))
            .unwrap();
        assert_eq!((a, b, has_a), (Some(1i64.into()), None, true));
        let missing = store.read("nowhere", |t| t.get("a")).unwrap();
        assert_eq!(missing, None);
    }

    // ANCHOR: conformance_macro
    pub fn names_never_collide(store: &impl Storage) {
        // Each (table, key) below would collide with another if the store
        // joined table and key into one string, with or without a separator.
        let names = [
            ("a", "b:c"),
            ("a:b", "c"),
            ("ab", "c"),
            ("a", "bc"),
            ("a", ""),
            ("a\0", "\0"),
            ("\u{e9}t\u{e9}", "cl\u{e9} \u{1f511}"),
        ];
        for (i, &(table, key)) in names.iter().enumerate() {
            store.set(table, key.into(), (i as i64).into()).unwrap();
        }
        for (i, &(table, key)) in names.iter().enumerate() {
            assert_eq!(store.get(table, key).unwrap(), Some((i as i64).into()));
        }
        assert_eq!(store.get_all("a").unwrap().len(), 3);
        assert_eq!(store.get_all("ab").unwrap(), [Kvpair::new("c", 2i64)]);
    }

    /// Expands to one `#[test]` per conformance test, each given a fresh
    /// storage made by `$make`.
    macro_rules! storage_conformance {
        ($make:expr) => {
            $crate::storage::conformance::storage_conformance!(
                $make;
                get_set_overwrite,
                contains_and_del,
                tables_are_separate,
                get_all_is_sorted_by_key,
                missing_table_is_empty,
                every_value_type_round_trips,
                names_never_collide,
                a_write_sees_its_own_changes,
                a_failed_write_changes_nothing,
                a_read_sees_every_key,
            );
        };
        ($make:expr; $($name:ident),+ $(,)?) => {
            $(
                #[test]
                fn $name() {
                    let store = $make;
                    $crate::storage::conformance::$name(&store);
                }
            )+
        };
    }
    pub(crate) use storage_conformance;
    // ANCHOR_END: conformance_macro
}
