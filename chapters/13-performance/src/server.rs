//! The server: the accept loop, and the streams of each connection.

use std::{future::poll_fn, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncWrite, BufWriter},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    task::{JoinError, JoinSet},
    time::Instant,
};
use tokio_util::{
    compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt},
    sync::CancellationToken,
    task::TaskTracker,
};
use tracing::{Instrument, debug, debug_span, info, info_span, warn};
use yamux::{Connection, Mode};

use crate::{
    ConnectionId, DEFAULT_MAX_FRAME, DEFAULT_MAX_STREAMS, Held, KvError, MemoryBudget, MuxStream,
    ProstServerStream, STREAM_WINDOW, Service, Storage, TlsServerAcceptor,
    limits::{
        DEFAULT_FRAME_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_WRITE_TIMEOUT, MAX_TIMEOUT,
        default_client_memory, default_max_connections,
    },
    network::{Lingering, connection_window, linger, window_headroom, yamux_config},
    places::{DEFAULT_QUIET_TIME, Metered, Places, Refusal, Seat, Ticket},
    telemetry::{self, Open},
};

// ANCHOR: config
/// How [`serve`] runs. Later chapters add fields here, not parameters to
/// `serve`; [`ServerConfig::new`] gives each field but `tls` its default.
#[derive(Clone)]
pub struct ServerConfig {
    /// The largest request payload accepted, before and after inflating.
    /// Give the service the same limit for its answers
    /// ([`ServiceBuilder::max_answer`](crate::ServiceBuilder::max_answer)).
    pub max_frame: usize,
    /// How many streams a connection may have open at once. A stream past
    /// the limit is answered with a 429 error and closed; the connection
    /// goes on.
    pub max_streams: usize,
    /// How many bytes a connection's streams may have received and not yet
    /// read, all together: yamux's connection receive window. At least
    /// 512 KiB per stream in `max_streams`; `None`, that least. What is set
    /// above it counts against `connection_memory`.
    pub connection_window: Option<usize>,
    /// How many connections may be open at once. One more takes the place
    /// of the connection that has been quiet longest, at least
    /// `quiet_time`; if none has, it is told that the server is full, and
    /// closed.
    pub max_connections: usize,
    /// How long a connection must have moved no byte before a new client
    /// of a full server may take its place.
    pub quiet_time: Duration,
    /// How many connections may come from one IP address; `None`: any
    /// number.
    pub max_per_address: Option<usize>,
    /// How many bytes one connection may make the server hold: frames
    /// being read and inflated, answers waiting to be sent, its
    /// subscriptions' queues, its streams' windows. Work past it is
    /// refused with a 429 error. At least three times `max_frame`, and
    /// what a `connection_window` above the least adds.
    pub connection_memory: usize,
    /// How many bytes all connections together may make the server hold.
    /// Past it, work is refused with a 503 error, and the connection
    /// holding the most is closed.
    pub client_memory: usize,
    /// How long a frame may take to arrive, once it has started.
    pub frame_timeout: Duration,
    /// How long a stream may wait for a request, and a connection may have
    /// no stream open, before it is closed.
    pub idle_timeout: Duration,
    /// How long an answer may wait for the client to read it.
    pub write_timeout: Duration,
    /// The server's certificate and, for mutual TLS, the clients' CA. The
    /// handshake's timeout is set here too.
    pub tls: TlsServerAcceptor,
    /// Cancel it (a clone of it) to shut the server down gracefully.
    pub shutdown: CancellationToken,
}

impl ServerConfig {
    /// The defaults, with `tls` for the handshake.
    pub fn new(tls: TlsServerAcceptor) -> Self {
        Self {
            max_frame: DEFAULT_MAX_FRAME,
            max_streams: DEFAULT_MAX_STREAMS,
            connection_window: None,
            max_connections: default_max_connections(),
            max_per_address: None,
            quiet_time: DEFAULT_QUIET_TIME,
            connection_memory: DEFAULT_CONNECTION_MEMORY,
            client_memory: default_client_memory(),
            frame_timeout: DEFAULT_FRAME_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            tls,
            shutdown: CancellationToken::new(),
        }
    }

    /// The connection window in effect: the one set, or the least that
    /// yamux takes for `max_streams`.
    pub fn window(&self) -> usize {
        connection_window(self.max_streams, self.connection_window)
    }

    /// Fails, saying why, if these settings cannot work. [`serve`] checks
    /// too; this is for checking before anything else starts.
    pub fn check(&self) -> Result<(), KvError> {
        yamux_config(self.max_streams, self.window())?;
        if !(1..=Semaphore::MAX_PERMITS).contains(&self.max_connections) {
            return Err(KvError::Config(format!(
                "the connection limit must be from 1 to {}",
                Semaphore::MAX_PERMITS
            )));
        }
        let least =
            least_connection_memory(self.max_frame, self.max_streams, self.connection_window);
        if self.connection_memory < least {
            return Err(KvError::Config(format!(
                "a connection's memory budget must be at least {least} bytes: three \
                 frames of the largest size (a request and its answer), and what yamux \
                 may grow stream windows by"
            )));
        }
        if self.client_memory < self.connection_memory {
            return Err(KvError::Config(
                "the clients' memory budget must be at least one connection's".into(),
            ));
        }
        let timeouts = [
            self.frame_timeout,
            self.idle_timeout,
            self.write_timeout,
            self.quiet_time,
        ];
        if !timeouts.iter().all(|t| !t.is_zero() && *t <= MAX_TIMEOUT) {
            return Err(KvError::Config(
                "a timeout must be more than 0 and at most a year".into(),
            ));
        }
        Ok(())
    }
}

/// A connection's memory budget, unless told otherwise: 64 MiB, four
/// frames of the default limit.
pub const DEFAULT_CONNECTION_MEMORY: usize = 4 * DEFAULT_MAX_FRAME;

/// The smallest budget a connection can work with: a request and its
/// answer of the largest size (three frames' worth: see the memory budget
/// page), and the headroom of yamux's window.
pub fn least_connection_memory(
    max_frame: usize,
    max_streams: usize,
    connection_window: Option<usize>,
) -> usize {
    let headroom = window_headroom(max_streams, connection_window);
    max_frame.saturating_mul(3).saturating_add(headroom)
}
// ANCHOR_END: config

// ANCHOR: serve
/// A new connection's place, or why it has none, and where to ask again.
struct Admission {
    admitted: Result<Ticket, Refusal>,
    places: Arc<Places>,
    peer: std::net::IpAddr,
    /// A place among the connections being told why not, if refused.
    refusing: Option<OwnedSemaphorePermit>,
}

impl Admission {
    /// The place, or the refusal. A full server may have a connection
    /// quiet enough in a moment: a new client refused for that waits
    /// `quiet` (at most [`REFUSAL_TIME`]) and asks once more. A client
    /// refused for good keeps its place among those being told why (the
    /// permit returned); one admitted gives it back at once.
    async fn settle(
        self,
        quiet: Duration,
    ) -> (Result<Ticket, Refusal>, Option<OwnedSemaphorePermit>) {
        let admitted = match self.admitted {
            Err(Refusal::Full { .. }) => {
                tokio::time::sleep(quiet.min(REFUSAL_TIME)).await;
                self.places.take(self.peer)
            }
            admitted => admitted,
        };
        let refusing = self.refusing.filter(|_| admitted.is_err());
        (admitted, refusing)
    }
}

/// Counts a connection refused a place.
fn refused(refusal: Refusal) {
    let reason = refusal.reason();
    metrics::counter!(telemetry::CONNECTIONS_REJECTED, "reason" => reason).increment(1);
}

/// How many connections over the limit may be in the middle of being told
/// so. Past this, an extra connection is closed without a word.
const REFUSING: usize = 16;
/// How long a connection refused for good gets to finish its handshake
/// and hear why. Short, so that clients that
/// stall cannot keep the refusing places.
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// Serves every connection that `listener` accepts, each in a task of its
/// own, until `config.shutdown` is cancelled. Then it stops accepting, lets each
/// connection finish the requests it has started, closes them, and
/// returns once all are closed.
///
/// Connections are independent: one client's failed handshake, bad frame
/// or sudden disconnect affects no one else.
///
/// Returns at once, with an error, if `config` cannot work.
pub async fn serve<Store>(
    listener: TcpListener,
    service: Service<Store>,
    config: ServerConfig,
) -> Result<(), KvError>
where
    Store: Storage + 'static,
{
    config.check()?;
    let config = Arc::new(config);
    let places = Places::new(
        config.max_connections,
        config.max_per_address,
        config.quiet_time,
    );
    let refusing = Arc::new(Semaphore::new(REFUSING));
    let memory = MemoryBudget::new(config.client_memory);
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = config.shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors, say. Wait a little rather than
                // spin; the listener itself is still fine.
                warn!(%err, "cannot accept a connection");
                metrics::counter!(telemetry::CONNECTIONS_REJECTED, "reason" => "accept")
                    .increment(1);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // A place among the connections served (perhaps a quiet one's),
        // or else among those being told why not.
        let admitted = places.take(peer.ip());
        let refusing = match &admitted {
            Ok(_) => None,
            Err(refusal) => match Arc::clone(&refusing).try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    // A peer decides how often this happens: not a
                    // warning each time, but a count.
                    refused(*refusal);
                    debug!(%peer, "closing a connection at once");
                    continue;
                }
            },
        };
        let span = info_span!("connection", %peer);
        let (service, config) = (service.clone(), Arc::clone(&config));
        let admission = Admission {
            admitted,
            places: Arc::clone(&places),
            peer: peer.ip(),
            refusing,
        };
        let task = connection(stream, admission, service, config, memory.clone());
        connections.spawn(task.instrument(span));
    }
    // No new connections; the ones open end their streams and close.
    drop(listener);
    connections.close();
    info!(open = connections.len(), "waiting for connections to close");
    connections.wait().await;
    Ok(())
}

/// One connection's task: the handshake, then its streams; or, when it
/// was refused a place, the handshake and a 503 answer that says why. It
/// ends early if the server closes it to make room.
async fn connection<Store: Storage + 'static>(
    stream: TcpStream,
    admission: Admission,
    service: Service<Store>,
    config: Arc<ServerConfig>,
    memory: MemoryBudget,
) {
    info!("client connected");
    let (admitted, _refusing) = admission.settle(config.quiet_time).await;
    let (ticket, refusal) = match admitted {
        Ok(ticket) => (Some(ticket), None),
        Err(refusal) => {
            refused(refusal);
            (None, Some(refusal))
        }
    };
    let _open = ticket.is_some().then(|| {
        metrics::counter!(telemetry::CONNECTIONS).increment(1);
        Open::new(telemetry::CONNECTIONS_OPEN)
    });
    // A refused connection gets a seat of its own, in no table.
    let seat = ticket
        .as_ref()
        .map_or_else(|| Arc::new(Seat::new()), |t| Arc::clone(&t.seat));
    // yamux writes small frames (window updates, a header before its
    // data): sent at once, not held back by Nagle's algorithm.
    if let Err(err) = stream.set_nodelay(true) {
        warn!(%err, "cannot set TCP_NODELAY");
    }
    if let Err(err) = keep_alive(&stream) {
        warn!(%err, "cannot turn on TCP keep-alive");
    }
    // The handshake runs here, in the connection's own task, so a slow or
    // broken client never holds up the accept loop.
    let mut tcp = Metered::new(stream, seat.activity.clone());
    let serving = async {
        // A shutdown does not wait for a handshake: the client has asked
        // for nothing yet. (`select!` drops the handshake before it runs
        // the branch, which can then use `tcp` again.)
        let stream = tokio::select! {
            stream = config.tls.accept(&mut tcp) => stream?,
            () = config.shutdown.cancelled() => {
                linger(&mut tcp).await;
                return Ok(());
            }
        };
        drive(stream, service, &config, &memory, &seat, refusal).await
    };
    let serving = async {
        tokio::select! {
            result = serving => result,
            () = seat.close.cancelled() => Err(KvError::Evicted),
        }
    };
    let result = if refusal.is_some() {
        tokio::time::timeout(REFUSAL_TIME, serving)
            .await
            .unwrap_or_else(|_| Err(KvError::Timeout("refusing took too long".into())))
    } else {
        serving.await
    };
    // Failures are the clients' more often than the server's, and a peer
    // decides how many there are: `info`, not `warn`.
    match result {
        Ok(()) => info!("client disconnected"),
        Err(err) => info!(%err, "connection closed on error"),
    }
}
// ANCHOR_END: serve

// ANCHOR: serve_connection
/// Serves the streams that the client opens on one connection (`io`, after
/// the TLS handshake), each in a task of its own, until the connection
/// ends, stays idle too long, or `config.shutdown` is cancelled. Returns
/// once every stream's task has finished. The connection gets a memory
/// budget of `config.client_memory` of its own: no other connection
/// shares it.
pub async fn serve_connection<S, Store>(
    io: S,
    service: Service<Store>,
    config: &ServerConfig,
) -> Result<(), KvError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    Store: Storage + 'static,
{
    let memory = MemoryBudget::new(config.client_memory);
    let seat = Seat::new();
    tokio::select! {
        result = drive(io, service, config, &memory, &seat, None) => result,
        () = seat.close.cancelled() => Err(KvError::Evicted),
    }
}

// ANCHOR: keep_alive
/// How long a connection may be silent before the kernel starts asking
/// its peer whether it is still there, how often it asks, and how many
/// unanswered questions end the connection. A quiet subscriber whose
/// machine has gone (lost its power, say) is found within a minute and a
/// half, and its connection closes; one that answers is left alone.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 3;

/// Turns TCP keep-alive on for `stream`, with the timings above.
#[cfg(unix)]
fn keep_alive(stream: &TcpStream) -> std::io::Result<()> {
    use rustix::net::sockopt;
    sockopt::set_socket_keepalive(stream, true)?;
    sockopt::set_tcp_keepidle(stream, KEEPALIVE_IDLE)?;
    sockopt::set_tcp_keepintvl(stream, KEEPALIVE_INTERVAL)?;
    sockopt::set_tcp_keepcnt(stream, KEEPALIVE_PROBES)?;
    Ok(())
}

#[cfg(not(unix))]
fn keep_alive(_stream: &TcpStream) -> std::io::Result<()> {
    Ok(()) // elsewhere, the system's defaults
}

// ANCHOR_END: keep_alive

// ANCHOR: drive
/// The driver of one connection, in `seat`. A connection with a
/// `refusal` gets only to hear it: its first stream is answered with a
/// 503 error, and the connection closes.
async fn drive<S, Store>(
    io: S,
    service: Service<Store>,
    config: &ServerConfig,
    memory: &MemoryBudget,
    seat: &Seat,
    refusal: Option<Refusal>,
) -> Result<(), KvError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    Store: Storage + 'static,
{
    let yamux = yamux_config(config.max_streams, config.window())?;
    // yamux writes a frame's header and its body separately. On TLS, each
    // write would be a record and a system call of its own: the buffer
    // makes them one. When yamux closes the connection, `Lingering` keeps
    // the close from turning into a reset (see `linger`).
    let io = BufWriter::new(Lingering::new(io)).compat();
    let mut connection = Connection::new(io, yamux, Mode::Server);
    let stream_slots = Arc::new(Semaphore::new(config.max_streams));
    // Every stream of this connection says it belongs to this connection:
    // any of them may end the connection's subscriptions.
    let id = ConnectionId::new();
    let budget = memory.connection(config.connection_memory, seat.close.clone());
    // What yamux may grow stream windows by, held while the connection is.
    let headroom = window_headroom(config.max_streams, config.connection_window);
    let _headroom = budget.hold(headroom)?;
    let shutdown = &config.shutdown;
    let mut tasks = JoinSet::new();
    let idle_timeout = config.idle_timeout;
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    let mut refused_one = false;
    // This loop is the connection's driver: every stream's data moves
    // while it waits here for the next stream.
    let result = loop {
        // Done: shutting down, or the full server has said so, and no
        // stream is left to finish.
        if tasks.is_empty() && (shutdown.is_cancelled() || refused_one) {
            break Ok(());
        }
        tokio::select! {
            inbound = poll_fn(|cx| connection.poll_next_inbound(cx)) => {
                let stream = match inbound {
                    Some(Ok(stream)) => stream,
                    Some(Err(err)) => break Err(KvError::from(err)),
                    None => break Ok(()),
                };
                let span = debug_span!("stream", id = %stream.id());
                let service = service.clone();
                if refusal.is_some() {
                    refused_one = true;
                }
                // What yamux may buffer for the stream before it is read,
                // its window, is held for as long as the stream is open.
                let mut window = budget.empty();
                let admitted = admit_stream(refusal, config, &stream_slots, &mut window);
                match admitted {
                    Ok(place) => {
                        let stream = MuxStream::new(stream, place, None);
                        let stream = ProstServerStream::new(stream, service)
                            .max_frame(config.max_frame)
                            .connection(id)
                            .budget(budget.clone())
                            .shutdown(shutdown.clone())
                            .read_timeouts(config.idle_timeout, config.frame_timeout)
                            .write_timeout(config.write_timeout);
                        let task = log_end(stream.process(), window);
                        tasks.spawn(task.instrument(span));
                    }
                    Err(err) => {
                        // A refused stream is open until its answer is
                        // read: its window is counted, never refused.
                        window.set_anyway(STREAM_WINDOW);
                        let stream = ProstServerStream::new(stream.compat(), service)
                            .write_timeout(config.write_timeout);
                        tasks.spawn(log_end(stream.refuse(err), window).instrument(span));
                    }
                }
                seat.set_streams(tasks.len());
            }
            Some(joined) = tasks.join_next() => {
                log_panic(joined);
                seat.set_streams(tasks.len());
                if tasks.is_empty() {
                    idle.as_mut().reset(Instant::now() + idle_timeout);
                }
            }
            () = &mut idle, if tasks.is_empty() => {
                info!(after = ?idle_timeout, "closing an idle connection");
                break Ok(());
            }
            () = shutdown.cancelled(), if tasks.is_empty() => {}
        }
    };
    // The connection has ended, or no stream is left: the tasks see the
    // end of their stream and finish.
    while let Some(joined) = tasks.join_next().await {
        log_panic(joined);
    }
    if result.is_ok() {
        // Tell the client, and on TLS send close_notify: a clean end that
        // it can tell apart from a cut connection.
        let close = poll_fn(|cx| connection.poll_close(cx));
        match tokio::time::timeout(config.write_timeout, close).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => debug!(%err, "cannot close the connection cleanly"),
            Err(_) => debug!("the client did not take the connection's end"),
        }
    }
    result
}
// ANCHOR_END: drive

/// Whether a connection takes a new stream: not if the connection has a
/// `refusal`, the server is shutting down, the connection has as many
/// streams open as it may, or its budget cannot hold the stream's window.
fn admit_stream(
    refusal: Option<Refusal>,
    config: &ServerConfig,
    stream_slots: &Arc<Semaphore>,
    window: &mut Held,
) -> Result<OwnedSemaphorePermit, KvError> {
    if let Some(refusal) = refusal {
        return Err(refusal.into());
    }
    if config.shutdown.is_cancelled() {
        return Err(KvError::ShuttingDown);
    }
    let max = config.max_streams;
    let place = (Arc::clone(stream_slots).try_acquire_owned())
        .map_err(|_| KvError::TooManyStreams { max })?;
    window.grow(STREAM_WINDOW)?;
    Ok(place)
}

/// Logs a stream's task that panicked (a hook, say), instead of passing
/// the panic on to the connection's task.
fn log_panic(result: Result<(), JoinError>) {
    if let Err(err) = result {
        warn!(%err, "a stream's task failed");
    }
}

/// Runs a stream's task and logs how it ended; `window` is held until
/// then.
async fn log_end(task: impl Future<Output = Result<(), KvError>>, window: Held) {
    let _open = Open::new(telemetry::STREAMS_OPEN);
    let _window = window;
    if let Err(err) = task.await {
        debug!(%err, "stream closed on error");
    }
}
// ANCHOR_END: serve_connection

// ANCHOR: keep_alive_test
#[cfg(all(test, unix))]
mod tests {
    use rustix::net::sockopt;

    use super::*;

    #[tokio::test]
    async fn accepted_connections_are_kept_alive_with_our_timings() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (_client, accepted) = tokio::join!(client, listener.accept());
        let (server, _) = accepted.unwrap();
        keep_alive(&server).unwrap();
        assert!(sockopt::socket_keepalive(&server).unwrap());
        assert_eq!(sockopt::tcp_keepidle(&server).unwrap(), KEEPALIVE_IDLE);
        assert_eq!(sockopt::tcp_keepintvl(&server).unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(sockopt::tcp_keepcnt(&server).unwrap(), KEEPALIVE_PROBES);
    }
}
// ANCHOR_END: keep_alive_test

#[cfg(test)]
mod admission_tests {
    use std::net::IpAddr;

    use super::*;

    #[tokio::test]
    async fn a_client_admitted_on_its_second_try_gives_its_refusing_place_back() {
        let quiet = Duration::from_millis(10);
        let places = Places::new(1, None, quiet);
        let peer = IpAddr::from([127, 0, 0, 1]);
        let first = places.take(peer).unwrap();
        let refused = places.take(peer);
        assert!(matches!(refused, Err(Refusal::Full { .. })));
        let refusing = Arc::new(Semaphore::new(1));
        let permit = Arc::clone(&refusing).try_acquire_owned().unwrap();
        let admission = Admission {
            admitted: refused,
            places,
            peer,
            refusing: Some(permit),
        };
        // The first connection goes quiet while the second waits.
        first
            .seat
            .activity
            .pretend_quiet_for(Duration::from_secs(1));
        let (admitted, kept) = admission.settle(quiet).await;
        assert!(admitted.is_ok());
        assert!(kept.is_none());
        assert_eq!(refusing.available_permits(), 1);
    }
}
