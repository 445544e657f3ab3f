use std::{
    collections::BTreeMap,
    ops::Bound::{Excluded, Unbounded},
    sync::{
        Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
};

use dashmap::DashMap;

use crate::{
    KvError, Kvpair, Storage, StorageIter, TableRead, TableWrite, Value, telemetry, value,
};

// ANCHOR: memtable
/// A [`Storage`] that keeps every table in memory, up to a limit.
///
/// The tables are in a `DashMap`, a concurrent hash map that splits its
/// entries into shards, each behind its own lock; a request holds a
/// shard's lock only while it looks its table up. Each table is a
/// `BTreeMap`, which keeps its keys in order, behind a lock of its own.
#[derive(Debug)]
pub struct MemTable {
    tables: DashMap<String, Arc<Table>>,
    /// The bytes charged for what the tables hold: see [`MemTable::used`].
    used: AtomicUsize,
    /// The most that a write may take `used` to.
    max: usize,
}

/// One table: its pairs, sorted by key.
#[derive(Debug, Default)]
struct Table(RwLock<Rows>);

#[derive(Debug, Default)]
struct Rows {
    pairs: BTreeMap<String, Value>,
    /// Set, under the lock, when the table is taken out of `tables` for
    /// being empty: a writer that found it before then must look again.
    removed: bool,
}

impl Table {
    // A transaction undoes its changes when a panic unwinds it (see
    // `MemWrite`), so a lock poisoned by a panic guards whole data.
    fn read(&self) -> RwLockReadGuard<'_, Rows> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Rows> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}
// ANCHOR_END: memtable

// ANCHOR: memory_cost
/// Bytes charged for each pair besides its key and value. Measured with
/// the counting allocator of `tests/memory_bounds.rs`, which checks it:
/// 122 to 146 bytes a pair. A `BTreeMap` node holds up to 11 pairs of 64
/// bytes (a `String` and a `Value`) in 720 bytes, and keys inserted in
/// order leave nodes about half full; a binary value, once cloned for a
/// read, gains a 24-byte shared header. Rounded up for the allocator's
/// own bookkeeping, which the count does not see.
const ENTRY_OVERHEAD: usize = 160;

/// Bytes charged for each table besides its name, measured the same way:
/// 827 bytes for a table of one pair, less that pair's 160. A table's
/// first `BTreeMap` node takes 720 bytes even for one pair; then come its
/// lock and map behind an `Arc`, and its slot in `tables`, which is up to
/// twice as large just after the map grows. Rounded up.
const TABLE_OVERHEAD: usize = 768;

/// What a pair is charged.
fn pair_cost(key: &str, value: &Value) -> usize {
    key.len() + payload_len(value) + ENTRY_OVERHEAD
}

/// The bytes of a value's text or binary data. A number or a bool is
/// inside the `Value` itself, which [`ENTRY_OVERHEAD`] counts.
fn payload_len(value: &Value) -> usize {
    match &value.value {
        Some(value::Value::String(text)) => text.len(),
        Some(value::Value::Binary(bytes)) => bytes.len(),
        _ => 0,
    }
}
// ANCHOR_END: memory_cost

// ANCHOR: memtable_new
impl MemTable {
    /// An empty store without a memory limit: for tests and programs that
    /// bound their data themselves. `kvs` always sets one: see
    /// `limits.max_memory` in [`crate::config::Limits`].
    pub fn new() -> Self {
        Self::with_max_memory(usize::MAX)
    }

    /// An empty store that refuses a write that would take [`used`]
    /// past `max` bytes, with [`KvError::OutOfMemory`]. Reads, deletes
    /// and writes that do not grow the data always go on.
    ///
    /// [`used`]: MemTable::used
    pub fn with_max_memory(max: usize) -> Self {
        Self {
            tables: DashMap::new(),
            used: AtomicUsize::new(0),
            max,
        }
    }

    /// The bytes the data takes, as the limit counts them: each pair's key
    /// and value (the text or bytes) and a measured overhead, and each
    /// table's name and its overhead.
    pub fn used(&self) -> usize {
        self.used.load(Relaxed)
    }

    /// The limit given to [`MemTable::with_max_memory`].
    pub fn max_memory(&self) -> usize {
        self.max
    }

    /// The table called `name`, if it exists. The `Arc` is cloned so that
    /// the shard's lock is released before anyone takes the table's lock.
    fn table(&self, name: &str) -> Option<Arc<Table>> {
        self.tables.get(name).map(|table| Arc::clone(table.value()))
    }

    /// The table called `name`, created if needed. Only writes call this:
    /// a read of a missing table must not leave an empty table behind.
    fn table_for_write(&self, name: &str) -> Arc<Table> {
        self.table(name).unwrap_or_else(|| {
            let entry = self.tables.entry(name.to_owned()).or_default();
            Arc::clone(entry.value())
        })
    }

    /// Changes what is charged from `before` to `after` bytes. Growing
    /// past the limit is refused, unless `anyway`.
    fn charge(&self, before: usize, after: usize, anyway: bool) -> Result<(), KvError> {
        if after <= before {
            self.used.fetch_sub(before - after, Relaxed);
            return Ok(());
        }
        let more = after - before;
        let max = if anyway { usize::MAX } else { self.max };
        let grow = |used: usize| used.checked_add(more).filter(|&total| total <= max);
        match self.used.fetch_update(Relaxed, Relaxed, grow) {
            Ok(_) => Ok(()),
            Err(_) => Err(KvError::OutOfMemory { max: self.max }),
        }
    }
}

impl Default for MemTable {
    fn default() -> Self {
        Self::new()
    }
}
// ANCHOR_END: memtable_new

// ANCHOR: memtable_storage
impl Storage for MemTable {
    fn get(&self, table: &str, key: &str) -> Result<Option<Value>, KvError> {
        Ok(self
            .table(table)
            .and_then(|t| t.read().pairs.get(key).cloned()))
    }

    fn set(&self, table: &str, key: String, value: Value) -> Result<Option<Value>, KvError> {
        self.write(table, |t| t.set(key, value))
    }

    fn contains(&self, table: &str, key: &str) -> Result<bool, KvError> {
        Ok(self
            .table(table)
            .is_some_and(|t| t.read().pairs.contains_key(key)))
    }

    fn del(&self, table: &str, key: &str) -> Result<Option<Value>, KvError> {
        // A missing table has nothing to delete, and is not created.
        if self.table(table).is_none() {
            return Ok(None);
        }
        self.write(table, |t| t.del(key))
    }

    fn iter(&self, table: &str) -> Result<StorageIter<'_>, KvError> {
        Ok(Box::new(Pairs {
            store: self,
            table: table.to_owned(),
            after: None,
            chunk: Vec::new().into_iter(),
            done: false,
        }))
    }

    // ANCHOR: memtable_transactions
    fn read<T>(
        &self,
        table: &str,
        work: impl FnOnce(&dyn TableRead) -> Result<T, KvError>,
    ) -> Result<T, KvError> {
        // The read lock, held until `work` returns: no write lands half-way.
        let table = self.table(table);
        let rows = table.as_ref().map(|t| t.read());
        work(&MemRead(rows.as_ref().map(|rows| &rows.pairs)))
    }

    fn write<T>(
        &self,
        table: &str,
        work: impl FnOnce(&mut dyn TableWrite) -> Result<T, KvError>,
    ) -> Result<T, KvError> {
        loop {
            let handle = self.table_for_write(table);
            // The table's write lock, held for the whole transaction: no
            // one sees half of it, and two transactions never interleave.
            // Other tables are not locked.
            let mut rows = handle.write();
            if rows.removed {
                continue; // emptied and taken out since we found it
            }
            let result = self.transaction(&mut rows.pairs, table, work);
            // A table left empty (made for this write, say) is no table.
            // Taken out under its lock, so no write can land in it after.
            if rows.pairs.is_empty() {
                rows.removed = true;
                self.tables.remove_if(table, |_, t| Arc::ptr_eq(t, &handle));
            }
            metrics::gauge!(telemetry::STORAGE_BYTES).set(self.used() as f64);
            return result;
        }
    }
    // ANCHOR_END: memtable_transactions
}
// ANCHOR_END: memtable_storage

// ANCHOR: memtable_transaction
impl MemTable {
    /// Runs `work` on `pairs`, and undoes its changes unless it succeeds.
    fn transaction<T>(
        &self,
        pairs: &mut BTreeMap<String, Value>,
        name: &str,
        work: impl FnOnce(&mut dyn TableWrite) -> Result<T, KvError>,
    ) -> Result<T, KvError> {
        let mut txn = MemWrite {
            store: self,
            pairs,
            table_cost: TABLE_OVERHEAD + name.len(),
            undo: Vec::new(),
        };
        let result = work(&mut txn);
        if result.is_ok() {
            txn.undo.clear(); // kept: nothing to undo
        }
        result
    }
}
// ANCHOR_END: memtable_transaction

// ANCHOR: memtable_iter
/// A table read in chunks: each chunk is copied under one short hold of
/// the table's read lock, and the next one starts after the last key of
/// the one before. So a writer waits for one chunk at most, and a caller
/// that stops early (hgetall at its answer limit) copies little more
/// than it kept.
struct Pairs<'a> {
    store: &'a MemTable,
    table: String,
    /// The last key copied.
    after: Option<String>,
    chunk: std::vec::IntoIter<Kvpair>,
    /// Whether the table has nothing after `after`.
    done: bool,
}

/// The most pairs in a chunk.
const CHUNK_PAIRS: usize = 64;
/// A chunk ends once its keys and values reach this many bytes.
const CHUNK_BYTES: usize = 64 * 1024;

impl Iterator for Pairs<'_> {
    type Item = Result<Kvpair, KvError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.chunk.len() == 0 && !self.done {
            self.read_chunk();
        }
        self.chunk.next().map(Ok)
    }
}

impl Pairs<'_> {
    /// Copies the pairs after `after`, up to a chunk's worth. The table is
    /// looked up again each time: a key deleted since the last chunk is
    /// not there, and a value is copied as it is now.
    fn read_chunk(&mut self) {
        self.done = true;
        let Some(table) = self.store.table(&self.table) else {
            return;
        };
        let rows = table.read();
        let start = match &self.after {
            Some(key) => Excluded(key.as_str()),
            None => Unbounded,
        };
        let mut chunk = Vec::new();
        let mut bytes = 0;
        for (key, value) in rows.pairs.range::<str, _>((start, Unbounded)) {
            if chunk.len() == CHUNK_PAIRS || bytes >= CHUNK_BYTES {
                self.done = false; // there is more
                break;
            }
            bytes += key.len() + payload_len(value);
            chunk.push(Kvpair::new(key.clone(), value.clone()));
        }
        drop(rows);
        self.after = chunk.last().map(|pair| pair.key.clone());
        self.chunk = chunk.into_iter();
    }
}
// ANCHOR_END: memtable_iter

// ANCHOR: memtable_txn
/// A table of a [`MemTable`] for reading; `None` if it does not exist.
struct MemRead<'a>(Option<&'a BTreeMap<String, Value>>);

impl TableRead for MemRead<'_> {
    fn get(&self, key: &str) -> Result<Option<Value>, KvError> {
        Ok(self.0.and_then(|pairs| pairs.get(key).cloned()))
    }

    fn contains(&self, key: &str) -> Result<bool, KvError> {
        Ok(self.0.is_some_and(|pairs| pairs.contains_key(key)))
    }
}

/// A write transaction on a [`MemTable`]: it changes the table at once,
/// charging each change to the store, and remembers what each change
/// replaced, to put it back if the transaction fails.
struct MemWrite<'a> {
    store: &'a MemTable,
    pairs: &'a mut BTreeMap<String, Value>,
    /// What the table itself is charged while it holds a pair.
    table_cost: usize,
    /// Each key changed, with the value it had before (`None`: no value).
    undo: Vec<(String, Option<Value>)>,
}

impl MemWrite<'_> {
    /// Puts `value` under `key`, or removes it if `None`, and charges the
    /// difference in size. Refused if it grows the data past the limit,
    /// unless `anyway`.
    fn put(
        &mut self,
        key: String,
        value: Option<Value>,
        anyway: bool,
    ) -> Result<Option<Value>, KvError> {
        let old = self.pairs.get(&key);
        let len_after =
            self.pairs.len() - usize::from(old.is_some()) + usize::from(value.is_some());
        let before = self.cost(self.pairs.len()) + old.map_or(0, |v| pair_cost(&key, v));
        let after = self.cost(len_after) + value.as_ref().map_or(0, |v| pair_cost(&key, v));
        self.store.charge(before, after, anyway)?;
        Ok(match value {
            Some(value) => self.pairs.insert(key, value),
            None => self.pairs.remove(&key),
        })
    }

    /// What the table is charged when it holds `len` pairs.
    fn cost(&self, len: usize) -> usize {
        if len == 0 { 0 } else { self.table_cost }
    }
}

impl Drop for MemWrite<'_> {
    /// Puts back, newest first, what the transaction changed and did not
    /// keep: everything, after an error or a panic. Putting back what it
    /// freed may take the total past the limit, by at most that much.
    fn drop(&mut self) {
        while let Some((key, before)) = self.undo.pop() {
            let _ = self.put(key, before, true);
        }
    }
}

impl TableRead for MemWrite<'_> {
    fn get(&self, key: &str) -> Result<Option<Value>, KvError> {
        Ok(self.pairs.get(key).cloned())
    }

    fn contains(&self, key: &str) -> Result<bool, KvError> {
        Ok(self.pairs.contains_key(key))
    }
}

impl TableWrite for MemWrite<'_> {
    fn set(&mut self, key: String, value: Value) -> Result<Option<Value>, KvError> {
        let previous = self.put(key.clone(), Some(value), false)?;
        self.undo.push((key, previous.clone()));
        Ok(previous)
    }

    fn del(&mut self, key: &str) -> Result<Option<Value>, KvError> {
        if !self.pairs.contains_key(key) {
            return Ok(None);
        }
        let previous = self.put(key.to_owned(), None, false)?;
        self.undo.push((key.to_owned(), previous.clone()));
        Ok(previous)
    }
}
// ANCHOR_END: memtable_txn

#[cfg(test)]
mod tests {
    use std::{sync::mpsc, time::Duration};

    use super::*;
    use crate::{CommandRequest, Service, storage::conformance::storage_conformance};

    // ANCHOR: run_conformance
    storage_conformance!(MemTable::new());
    // ANCHOR_END: run_conformance

    #[test]
    fn iter_copies_each_value_only_when_it_gets_there() {
        // More keys than a chunk, so the last ones are read later.
        let store = MemTable::new();
        let keys: Vec<String> = (0..CHUNK_PAIRS + 2).map(|i| format!("{i:03}")).collect();
        for key in &keys {
            store.set("t", key.clone(), key.as_str().into()).unwrap();
        }
        let mut pairs = store.iter("t").unwrap();
        assert_eq!(pairs.next().unwrap().unwrap(), Kvpair::new("000", "000"));
        // Changed and deleted after `iter` began, but before it got there:
        // it copies the values as they are now, and no lock is in the way.
        let (changed, deleted) = (&keys[CHUNK_PAIRS], &keys[CHUNK_PAIRS + 1]);
        store.set("t", changed.clone(), "new".into()).unwrap();
        store.del("t", deleted).unwrap();
        let rest: Vec<Kvpair> = pairs.map(Result::unwrap).collect();
        assert_eq!(rest.len(), CHUNK_PAIRS, "all but the first and the deleted");
        assert_eq!(rest.last().unwrap(), &Kvpair::new(changed.as_str(), "new"));
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

    // ANCHOR: limit_tests
    #[test]
    fn the_limit_refuses_a_write_past_it_but_not_reads_or_deletes() {
        let pair = pair_cost("k0", &"v".into());
        let store = MemTable::with_max_memory(TABLE_OVERHEAD + "t".len() + 2 * pair);
        store.set("t", "k0".into(), "v".into()).unwrap();
        store.set("t", "k1".into(), "v".into()).unwrap();
        assert_eq!(store.used(), store.max_memory(), "full");

        let err = store.set("t", "k2".into(), "v".into()).unwrap_err();
        assert_eq!(err.status(), 507);
        assert!(err.to_string().contains("memory is full"), "{err}");
        assert!(store.set("t", "k1".into(), "vv".into()).is_err(), "grows");
        assert!(
            store.set("u", "k".into(), 1i64.into()).is_err(),
            "new table"
        );
        // Writes that keep or shrink the size, reads and deletes go on.
        store.set("t", "k1".into(), "w".into()).unwrap();
        store.set("t", "k1".into(), "".into()).unwrap();
        assert_eq!(store.get("t", "k0").unwrap(), Some("v".into()));
        assert_eq!(store.get_all("t").unwrap().len(), 2);
        assert_eq!(store.del("t", "k0").unwrap(), Some("v".into()));
        // What a delete frees can be used again.
        store.set("t", "k2".into(), "v".into()).unwrap();
        store.del("t", "k1").unwrap();
        store.del("t", "k2").unwrap();
        assert_eq!(store.used(), 0, "every byte charged is given back");
    }

    #[test]
    fn a_write_of_several_pairs_past_the_limit_changes_nothing() {
        let store = MemTable::with_max_memory(4096);
        store.set("t", "a".into(), "old".into()).unwrap();
        let used = store.used();
        let err = store
            .write("t", |t| {
                t.set("a".into(), "new".into())?;
                t.del("a")?;
                t.set("b".into(), "fits".into())?;
                t.set("c".into(), vec![0u8; 4096].into())
            })
            .unwrap_err();
        assert!(matches!(err, KvError::OutOfMemory { max: 4096 }), "{err}");
        assert_eq!(store.get_all("t").unwrap(), [Kvpair::new("a", "old")]);
        assert_eq!(store.used(), used);

        // The same through the service: hmset answers 507.
        let service = Service::new(store);
        let pairs = [Kvpair::new("b", "fits"), Kvpair::new("c", vec![0u8; 4096])];
        let res = service.execute(CommandRequest::new_hmset("t", pairs));
        assert_eq!(res.status, 507, "{res:?}");
        let res = service.execute(CommandRequest::new_hgetall("t"));
        assert_eq!(res.pairs, [Kvpair::new("a", "old")]);
    }
    // ANCHOR_END: limit_tests

    // ANCHOR: lock_tests
    #[test]
    fn a_write_transaction_does_not_hold_up_other_tables() {
        // Enough tables that some share a shard of `tables` with "busy".
        let names: Vec<String> = (0..256).map(|i| format!("other-{i}")).collect();
        let store = MemTable::new();
        let (done, finished) = mpsc::channel();
        std::thread::scope(|s| {
            store
                .write("busy", |t| {
                    t.set("k".into(), 1i64.into())?;
                    s.spawn(|| {
                        for name in &names {
                            store.set(name, "k".into(), 2i64.into()).unwrap();
                            store.get(name, "k").unwrap();
                        }
                        done.send(()).unwrap();
                    });
                    // An error ends the transaction, which frees the writer.
                    finished
                        .recv_timeout(Duration::from_secs(10))
                        .map_err(|_| KvError::Internal("other tables waited for this one".into()))
                })
                .unwrap();
        });
    }

    #[test]
    fn an_iterator_held_open_does_not_hold_up_writes() {
        let store = MemTable::new();
        for i in 0..1000 {
            store.set("t", format!("{i:04}"), i.into()).unwrap();
        }
        let mut pairs = store.iter("t").unwrap();
        assert_eq!(pairs.next().unwrap().unwrap().key, "0000");
        let (done, finished) = mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                store.set("t", "0500".into(), "new".into()).unwrap();
                store.del("t", "0999").unwrap();
                store.set("other", "k".into(), 1i64.into()).unwrap();
                done.send(()).unwrap();
            });
            let waited = finished.recv_timeout(Duration::from_secs(10));
            // Dropped before the check, so a failure does not hang the scope.
            let rest: Vec<Kvpair> = pairs.map(Result::unwrap).collect();
            assert!(waited.is_ok(), "the writes waited for the iterator");
            assert_eq!(rest.len(), 998);
            assert_eq!(rest[499], Kvpair::new("0500", "new"));
        });
    }

    #[test]
    fn a_write_never_lands_in_a_table_that_was_removed() {
        // Each writer empties the table again and again, which removes it,
        // while the others write to it.
        let store = MemTable::new();
        std::thread::scope(|s| {
            for w in 0..4 {
                let store = &store;
                s.spawn(move || {
                    for i in 0..2000 {
                        let key = format!("{w}-{i}");
                        store.set("t", key.clone(), 1i64.into()).unwrap();
                        let found = store.get("t", &key).unwrap();
                        assert_eq!(found, Some(1i64.into()), "{key} was lost");
                        store.del("t", &key).unwrap();
                    }
                });
            }
        });
        assert!(store.tables.is_empty());
        assert_eq!(store.used(), 0);
    }
    // ANCHOR_END: lock_tests
}
