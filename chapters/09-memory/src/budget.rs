// ANCHOR: imports
//! Memory budgets: how many bytes one connection, and all connections
//! together, may make the server hold.
//!
//! A limit per frame says how large one request may be; it says nothing
//! about how many a peer may have in flight at once. So every buffer that
//! a peer fills (a frame being read, a request being inflated, an answer
//! waiting to be written, a subscriber's queue) takes its bytes from its
//! connection's budget first, and never waits for them: a charge that does
//! not fit fails at once, and the caller refuses the work with an error.
//! When all the connections together pass the server's budget, the one
//! holding the most is closed.

use std::sync::{
    Arc, Mutex, Weak,
    atomic::{AtomicUsize, Ordering},
};

use tokio_util::sync::CancellationToken;

use crate::KvError;
// ANCHOR_END: imports

// ANCHOR: types
/// The budget of the whole server. Clones share it.
#[derive(Clone)]
pub struct MemoryBudget {
    server: Arc<Pool>,
}

/// The budget of one connection, inside the server's. Clones share it.
#[derive(Clone)]
pub struct ConnectionBudget {
    account: Arc<Account>,
    server: Arc<Pool>,
}

/// Bytes held against a connection's budget, given back when dropped.
#[must_use = "the bytes are given back as soon as this is dropped"]
pub struct Held {
    budget: ConnectionBudget,
    bytes: usize,
}

/// The server's counter, and every connection's account, to find the one
/// holding the most.
struct Pool {
    limit: usize,
    used: AtomicUsize,
    accounts: Mutex<Vec<Weak<Account>>>,
}

/// One connection's counter, and the token that closes the connection.
struct Account {
    limit: usize,
    used: AtomicUsize,
    evicted: CancellationToken,
}
// ANCHOR_END: types

// ANCHOR: memory_budget
impl MemoryBudget {
    /// A server budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        let server = Pool {
            limit,
            used: AtomicUsize::new(0),
            accounts: Mutex::new(Vec::new()),
        };
        Self {
            server: Arc::new(server),
        }
    }

    /// A budget of `limit` bytes for a new connection; `close` is
    /// cancelled if the server chooses to close it to give memory back.
    pub fn connection(&self, limit: usize, close: CancellationToken) -> ConnectionBudget {
        let account = Arc::new(Account {
            limit,
            used: AtomicUsize::new(0),
            evicted: close,
        });
        let mut accounts = self.server.lock();
        // Forget the connections that have gone, so the list stays as
        // long as the number of open connections.
        accounts.retain(|account| account.strong_count() > 0);
        accounts.push(Arc::downgrade(&account));
        drop(accounts);
        ConnectionBudget {
            account,
            server: Arc::clone(&self.server),
        }
    }

    /// Bytes held now, by all connections together.
    pub fn used(&self) -> usize {
        self.server.used.load(Ordering::Relaxed)
    }
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Account>>> {
        // Nothing under this lock can panic half-way: take it anyway.
        self.accounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the connection that holds the most, unless the connections
    /// closing already hold enough to bring the total within the limit
    /// once they are gone (they give their memory back in moments).
    fn evict_largest(&self, more: usize) {
        let accounts = self.lock();
        let live: Vec<_> = accounts.iter().filter_map(Weak::upgrade).collect();
        let used = |account: &Arc<Account>| account.used.load(Ordering::Relaxed);
        let (closing, open): (Vec<_>, Vec<_>) = live
            .iter()
            .partition(|account| account.evicted.is_cancelled());
        let freeing: usize = closing.iter().map(|account| used(account)).sum();
        let after = self.used.load(Ordering::Relaxed).saturating_sub(freeing);
        if after.saturating_add(more) <= self.limit {
            return;
        }
        if let Some(largest) = open.into_iter().max_by_key(|account| used(account)) {
            largest.evicted.cancel();
        }
    }
}
// ANCHOR_END: memory_budget

// ANCHOR: connection_budget
impl ConnectionBudget {
    /// Holds `bytes` more, if they fit in this connection's budget and in
    /// the server's. If the server's is full, the connection holding the
    /// most is closed (perhaps this one), and this charge fails too.
    pub fn hold(&self, bytes: usize) -> Result<Held, KvError> {
        let mut held = Held {
            budget: self.clone(),
            bytes: 0,
        };
        held.grow(bytes)?;
        Ok(held)
    }

    /// A budget that never runs out: for a client, or a test.
    pub fn unlimited() -> Self {
        MemoryBudget::new(usize::MAX).connection(usize::MAX, CancellationToken::new())
    }

    /// Nothing held yet, to grow later.
    pub fn empty(&self) -> Held {
        Held {
            budget: self.clone(),
            bytes: 0,
        }
    }

    /// Bytes this connection holds now.
    pub fn used(&self) -> usize {
        self.account.used.load(Ordering::Relaxed)
    }

    /// This connection's limit.
    pub fn limit(&self) -> usize {
        self.account.limit
    }
}

/// Adds `more` to `counter` unless that passes `limit`; else returns what
/// the counter held.
fn add(counter: &AtomicUsize, more: usize, limit: usize) -> Result<(), usize> {
    let fits = |used: usize| used.checked_add(more).filter(|&total| total <= limit);
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, fits)
        .map(drop)
}
// ANCHOR_END: connection_budget

// ANCHOR: held
impl Held {
    /// Holds `more` bytes, or fails as [`ConnectionBudget::hold`] does and
    /// holds what it held before.
    pub fn grow(&mut self, more: usize) -> Result<(), KvError> {
        // Nothing more always fits, even in a budget that `set_anyway`
        // took past its limit.
        if more == 0 {
            return Ok(());
        }
        let (account, server) = (&self.budget.account, &self.budget.server);
        if let Err(used) = add(&account.used, more, account.limit) {
            let limit = account.limit;
            return Err(KvError::ConnectionMemory { more, used, limit });
        }
        if let Err(used) = add(&server.used, more, server.limit) {
            account.used.fetch_sub(more, Ordering::Relaxed);
            server.evict_largest(more);
            let limit = server.limit;
            return Err(KvError::ServerMemory { more, used, limit });
        }
        self.bytes += more;
        Ok(())
    }

    /// Holds exactly `bytes`: gives back what is over, or grows.
    pub fn set(&mut self, bytes: usize) -> Result<(), KvError> {
        match bytes.checked_sub(self.bytes) {
            Some(more) => self.grow(more),
            None => {
                self.give_back(self.bytes - bytes);
                Ok(())
            }
        }
    }

    /// Holds exactly `bytes`, even past the limits: for the few bytes a
    /// stream needs to read a short request, or to say no. They count, so
    /// larger work is refused sooner.
    pub fn set_anyway(&mut self, bytes: usize) {
        if let Some(more) = bytes.checked_sub(self.bytes) {
            self.budget.account.used.fetch_add(more, Ordering::Relaxed);
            self.budget.server.used.fetch_add(more, Ordering::Relaxed);
            self.bytes = bytes;
        } else {
            self.give_back(self.bytes - bytes);
        }
    }

    /// Splits `bytes` of what this holds off into a `Held` of their own.
    pub fn split(&mut self, bytes: usize) -> Held {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        Held {
            budget: self.budget.clone(),
            bytes,
        }
    }

    /// How many bytes this holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn give_back(&mut self, bytes: usize) {
        self.budget.account.used.fetch_sub(bytes, Ordering::Relaxed);
        self.budget.server.used.fetch_sub(bytes, Ordering::Relaxed);
        self.bytes -= bytes;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.give_back(self.bytes);
    }
}
// ANCHOR_END: held

// ANCHOR: budget_tests
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_fits_or_fails_whole_and_comes_back_on_drop() {
        let server = MemoryBudget::new(1000);
        let connection = server.connection(100, CancellationToken::new());
        let held = connection.hold(60).unwrap();
        let err = connection.hold(41).err().unwrap();
        assert_eq!(err.status(), 429, "{err}");
        assert_eq!((connection.used(), server.used()), (60, 60));
        drop(held);
        assert_eq!((connection.used(), server.used()), (0, 0));
        assert!(connection.hold(100).is_ok());
    }

    #[test]
    fn set_and_split_move_bytes_without_losing_any() {
        let server = MemoryBudget::new(1000);
        let connection = server.connection(100, CancellationToken::new());
        let mut held = connection.empty();
        held.set(80).unwrap();
        let part = held.split(30);
        assert_eq!((held.bytes(), part.bytes()), (50, 30));
        assert!(held.set(71).is_err(), "50 + 30 + 21 is over 100");
        assert_eq!(held.bytes(), 50, "a failed set keeps what was held");
        held.set(10).unwrap();
        assert_eq!(connection.used(), 40);
        drop((held, part));
        assert_eq!(server.used(), 0);
    }

    #[test]
    fn a_full_server_closes_the_connection_holding_the_most() {
        let server = MemoryBudget::new(100);
        let (small, large, third) = (
            server.connection(100, CancellationToken::new()),
            server.connection(100, CancellationToken::new()),
            server.connection(100, CancellationToken::new()),
        );
        let _a = small.hold(20).unwrap();
        let _b = large.hold(70).unwrap();
        let err = third.hold(20).err().unwrap();
        assert_eq!(err.status(), 503, "{err}");
        assert!(large.account.evicted.is_cancelled());
        assert!(!small.account.evicted.is_cancelled());
        assert!(!third.account.evicted.is_cancelled());
        assert_eq!(server.used(), 90);
    }
}
// ANCHOR_END: budget_tests
