//! Where the data lives. The service talks to a [`Storage`]; this chapter
//! has one implementation, [`MemTable`], that keeps everything in memory.

mod memory;

pub use memory::MemTable;

use crate::{KvError, Kvpair, Value};

// ANCHOR: storage
/// An iterator over the pairs of one table. Each item is a `Result`
/// because a backend that reads from disk can fail half-way through.
pub type StorageIter<'a> = Box<dyn Iterator<Item = Result<Kvpair, KvError>> + 'a>;

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

    /// Every pair of `table`, sorted by key.
    fn get_all(&self, table: &str) -> Result<Vec<Kvpair>, KvError> {
        self.iter(table)?.collect()
    }
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

    // ANCHOR: conformance_macro
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
