//! The server: the accept loop, and the streams of each connection.

use std::{future::poll_fn, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncWrite, BufWriter},
    net::TcpListener,
    sync::Semaphore,
    task::{JoinError, JoinSet},
};
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
use tracing::{debug, info, warn};
use yamux::{Connection, Mode};

use crate::{
    ConnectionId, DEFAULT_CONNECTION_WINDOW, DEFAULT_MAX_FRAME, DEFAULT_MAX_STREAMS, KvError,
    MuxStream, ProstServerStream, Service, Storage, TlsServerAcceptor, network::yamux_config,
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
    /// 512 KiB per stream in `max_streams`.
    pub connection_window: usize,
    /// The server's certificate and, for mutual TLS, the clients' CA.
    pub tls: TlsServerAcceptor,
}

impl ServerConfig {
    pub fn new(tls: TlsServerAcceptor) -> Self {
        Self {
            max_frame: DEFAULT_MAX_FRAME,
            max_streams: DEFAULT_MAX_STREAMS,
            connection_window: DEFAULT_CONNECTION_WINDOW,
            tls,
        }
    }

    /// Fails, saying why, if these settings cannot work. [`serve`] checks
    /// too; this is for checking before anything else starts.
    pub fn check(&self) -> Result<(), KvError> {
        yamux_config(self.max_streams, self.connection_window).map(drop)
    }
}
// ANCHOR_END: config

// ANCHOR: serve
/// Serves every connection that `listener` accepts, each in a task of its
/// own, until the returned future is dropped. Connections are independent:
/// one client's failed handshake, bad frame or sudden disconnect affects
/// no one else.
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
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors, say. Wait a little rather than
                // spin; the listener itself is still fine.
                warn!(%err, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        info!(%peer, "client connected");
        // yamux writes small frames (window updates, a header before its
        // data): sent at once, not held back by Nagle's algorithm.
        if let Err(err) = stream.set_nodelay(true) {
            warn!(%peer, %err, "cannot set TCP_NODELAY");
        }
        let (service, config) = (service.clone(), Arc::clone(&config));
        tokio::spawn(async move {
            // The handshake runs here, in the connection's own task, so a
            // slow or broken client never holds up the accept loop.
            let result = match config.tls.accept(stream).await {
                Ok(stream) => serve_connection(stream, service, &config).await,
                Err(err) => Err(err),
            };
            match result {
                Ok(()) => info!(%peer, "client disconnected"),
                Err(err) => warn!(%peer, %err, "connection closed on error"),
            }
        });
    }
}
// ANCHOR_END: serve

// ANCHOR: serve_connection
/// Serves the streams that the client opens on one connection (`io`, after
/// the TLS handshake), each in a task of its own, until the connection
/// ends. Returns once every stream's task has finished.
pub async fn serve_connection<S, Store>(
    io: S,
    service: Service<Store>,
    config: &ServerConfig,
) -> Result<(), KvError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    Store: Storage + 'static,
{
    let yamux = yamux_config(config.max_streams, config.connection_window)?;
    // yamux writes a frame's header and its body separately. On TLS, each
    // write would be a record and a system call of its own: the buffer
    // makes them one.
    let io = BufWriter::new(io).compat();
    let mut connection = Connection::new(io, yamux, Mode::Server);
    let places = Arc::new(Semaphore::new(config.max_streams));
    // Every stream of this connection says it belongs to this connection:
    // any of them may end the connection's subscriptions.
    let id = ConnectionId::new();
    let mut tasks = JoinSet::new();
    // This loop is the connection's driver: every stream's data moves
    // while it waits here for the next stream.
    let result = loop {
        let stream = match poll_fn(|cx| connection.poll_next_inbound(cx)).await {
            Some(Ok(stream)) => stream,
            Some(Err(err)) => break Err(KvError::from(err)),
            None => break Ok(()),
        };
        // Collect the tasks that have finished, so the set stays small.
        while let Some(result) = tasks.try_join_next() {
            log_panic(result);
        }
        let service = service.clone();
        match Arc::clone(&places).try_acquire_owned() {
            Ok(place) => {
                let stream = MuxStream::new(stream, place, None);
                let stream = ProstServerStream::new(stream, service)
                    .max_frame(config.max_frame)
                    .connection(id);
                tasks.spawn(log_end(stream.process()));
            }
            Err(_) => {
                let stream = ProstServerStream::new(stream.compat(), service);
                let err = KvError::TooManyStreams {
                    max: config.max_streams,
                };
                tasks.spawn(log_end(stream.refuse(err)));
            }
        }
    };
    // The connection has ended, and with it every stream: the tasks see
    // the end of their stream and finish.
    while let Some(result) = tasks.join_next().await {
        log_panic(result);
    }
    result
}

/// Logs a stream's task that panicked (a hook, say), instead of passing
/// the panic on to the connection's task.
fn log_panic(result: Result<(), JoinError>) {
    if let Err(err) = result {
        warn!(%err, "a stream's task failed");
    }
}

/// Runs a stream's task and logs how it ended.
async fn log_end(task: impl Future<Output = Result<(), KvError>>) {
    if let Err(err) = task.await {
        debug!(%err, "stream closed on error");
    }
}
// ANCHOR_END: serve_connection
