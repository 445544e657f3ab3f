// ANCHOR: imports
//! The places among `max_connections`: who holds them, and which one a
//! full server gives up to a new client.
//!
//! A connection that has moved no byte for a while is the cheapest to
//! lose: its client can connect again when it needs to. So a new client
//! of a full server takes the place of the connection that has been quiet
//! longest (first among those with no stream open), as nginx closes idle
//! keep-alive connections when it runs out. Only when every connection is
//! busy is the new client refused. `Metered`, around each connection's TCP
//! stream, notes when it last moved a byte.

use std::{
    collections::HashMap,
    io,
    net::IpAddr,
    pin::Pin,
    sync::{
        Arc, LazyLock, Mutex, MutexGuard,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::KvError;
// ANCHOR_END: imports

// ANCHOR: places
/// How long a connection must have been quiet before a new client may take
/// its place, unless told otherwise: longer than the pauses of a client
/// that is talking, short enough that a new client of a full server waits
/// little. (A connection whose request runs longer, or whose reader is
/// slower, may be taken too: the server is full, and it is the quietest.)
pub const DEFAULT_QUIET_TIME: Duration = Duration::from_millis(250);

/// The connections being served.
pub(crate) struct Places {
    max: usize,
    per_address: Option<usize>,
    quiet: Duration,
    table: Mutex<HashMap<u64, (IpAddr, Arc<Seat>)>>,
    next_id: AtomicU64,
}

/// What a connection's task shares with the table: when it last moved a
/// byte, how many streams it has open, and the token that closes it.
pub(crate) struct Seat {
    pub(crate) activity: Activity,
    streams: AtomicUsize,
    pub(crate) close: CancellationToken,
}

/// A place held; dropping it gives the place back.
pub(crate) struct Ticket {
    places: Arc<Places>,
    id: u64,
    pub(crate) seat: Arc<Seat>,
}
// ANCHOR_END: places

// ANCHOR: take
impl Places {
    /// Room for `max` connections, at most `per_address` from one address;
    /// a place may go to a new client once its connection has been quiet
    /// for `quiet`.
    pub(crate) fn new(max: usize, per_address: Option<usize>, quiet: Duration) -> Arc<Self> {
        Arc::new(Self {
            max,
            per_address,
            quiet,
            table: Mutex::default(),
            next_id: AtomicU64::new(0),
        })
    }

    /// A place for a connection from `peer`: a free one, or the place of
    /// the connection that has been quiet longest, which is closed.
    pub(crate) fn take(self: &Arc<Self>, peer: IpAddr) -> Result<Ticket, Refusal> {
        let mut table = self.lock();
        if let Some(max) = self.per_address {
            let from_peer = table.values().filter(|(ip, _)| *ip == peer).count();
            if from_peer >= max {
                return Err(Refusal::Address { max });
            }
        }
        if table.len() >= self.max {
            let Some(quietest) = quietest(&table, self.quiet) else {
                return Err(Refusal::Full { max: self.max });
            };
            let (_, seat) = table.remove(&quietest).expect("found in the table");
            seat.close.cancel();
        }
        let id = self.next_id.fetch_add(1, Relaxed);
        let seat = Arc::new(Seat::new());
        table.insert(id, (peer, Arc::clone(&seat)));
        let places = Arc::clone(self);
        Ok(Ticket { places, id, seat })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, (IpAddr, Arc<Seat>)>> {
        // Inserts and removes cannot panic half-way: take it anyway.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The connection that has been quiet longest, at least `quiet`: first
/// among those with no stream open, then among the others.
fn quietest(table: &HashMap<u64, (IpAddr, Arc<Seat>)>, quiet: Duration) -> Option<u64> {
    table
        .iter()
        .filter(|(_, (_, seat))| seat.activity.quiet_for() >= quiet)
        .min_by_key(|(_, (_, seat))| (seat.streams.load(Relaxed) > 0, seat.activity.last()))
        .map(|(&id, _)| id)
}

/// Why a connection gets no place.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Refusal {
    /// Every place is taken, by connections that are not quiet.
    Full { max: usize },
    /// Its address has as many connections as one address may.
    Address { max: usize },
}

impl From<Refusal> for KvError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Full { max } => KvError::TooManyConnections { max },
            Refusal::Address { max } => KvError::TooManyFromAddress { max },
        }
    }
}

impl Seat {
    /// A connection that has just moved a byte, with no stream open.
    pub(crate) fn new() -> Self {
        Self {
            activity: Activity::now(),
            streams: AtomicUsize::new(0),
            close: CancellationToken::new(),
        }
    }

    /// Says how many streams the connection has open.
    pub(crate) fn set_streams(&self, open: usize) {
        self.streams.store(open, Relaxed);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.places.lock().remove(&self.id);
    }
}
// ANCHOR_END: take

// ANCHOR: activity
/// When a connection last moved a byte, in or out. Clones share it.
#[derive(Clone)]
pub(crate) struct Activity(Arc<AtomicU64>);

/// Milliseconds on a clock of this process. It starts a day in, so that
/// a test can say "quiet for an hour" right after the process starts.
fn millis() -> u64 {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    START.elapsed().as_millis() as u64 + 86_400_000
}

impl Activity {
    /// Activity that happened just now.
    pub(crate) fn now() -> Self {
        Self(Arc::new(AtomicU64::new(millis())))
    }

    fn touch(&self) {
        self.0.store(millis(), Relaxed);
    }

    /// When it was, on this process's clock: earlier is smaller.
    pub(crate) fn last(&self) -> u64 {
        self.0.load(Relaxed)
    }

    /// How long it has been.
    pub(crate) fn quiet_for(&self) -> Duration {
        Duration::from_millis(millis().saturating_sub(self.last()))
    }

    /// Moves the last activity `ago` into the past.
    #[cfg(test)]
    pub(crate) fn pretend_quiet_for(&self, ago: Duration) {
        self.0.store(millis() - ago.as_millis() as u64, Relaxed);
    }
}
// ANCHOR_END: activity

// ANCHOR: metered
/// A connection that notes when it last moved a byte, in or out.
pub(crate) struct Metered<S> {
    inner: S,
    activity: Activity,
}

impl<S> Metered<S> {
    pub(crate) fn new(inner: S, activity: Activity) -> Self {
        Self { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let read = buf.filled().len() - before;
        if read > 0 {
            self.activity.touch();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        if n > 0 {
            self.activity.touch();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
// ANCHOR_END: metered

// ANCHOR: tests
#[cfg(test)]
mod tests {
    use super::*;

    /// Long, so that no test is quiet by accident: they pretend.
    const QUIET: Duration = Duration::from_secs(3600);
    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn a_full_server_gives_up_the_quietest_place_and_only_a_quiet_one() {
        let places = Places::new(2, None, QUIET);
        let busy = places.take(HOME).unwrap();
        let quiet = places.take(HOME).unwrap();
        // Neither has been quiet long enough yet.
        let refused = KvError::from(places.take(HOME).err().unwrap());
        assert_eq!(refused.status(), 503, "{refused}");
        quiet.seat.activity.pretend_quiet_for(QUIET * 3);
        busy.seat.activity.pretend_quiet_for(QUIET * 2);
        busy.seat.set_streams(1);
        let newcomer = places.take(HOME).unwrap();
        assert!(quiet.seat.close.is_cancelled(), "quiet, and no stream open");
        assert!(!busy.seat.close.is_cancelled());
        drop((quiet, newcomer));
        assert_eq!(places.lock().len(), 1, "dropped tickets give places back");
    }

    #[test]
    fn one_address_gets_at_most_its_share() {
        let places = Places::new(10, Some(2), QUIET);
        let _held = [places.take(HOME).unwrap(), places.take(HOME).unwrap()];
        let err = KvError::from(places.take(HOME).err().unwrap());
        assert!(err.to_string().contains("one address"), "{err}");
        let other = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
        assert!(places.take(other).is_ok());
    }
}
// ANCHOR_END: tests
