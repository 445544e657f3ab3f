// ANCHOR: imports
//! Many streams over one connection: yamux runs between TLS and the frames.
//!
//! yamux is written against the `futures` IO traits and tokio has its own,
//! so `tokio-util`'s compat layer converts in both directions: the TLS
//! stream goes into yamux with `.compat()`, and each yamux stream comes out
//! with `.compat()` again, ready for `ProstStream`.

use futures::{SinkExt, Stream, StreamExt};
use std::{
    future::poll_fn,
    io,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll, ready},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, BufWriter, ReadBuf},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch},
};
use tokio_util::compat::TokioAsyncReadCompatExt;
use tracing::debug;
use yamux::{Connection, ConnectionError, Mode};

use crate::{CommandRequest, CommandResponse, KvError, ProstClientStream, ProstStream, value};
// ANCHOR_END: imports

// ANCHOR: config
/// How many streams a connection may have open at once, unless told
/// otherwise. HTTP/2 suggests no fewer than 100.
pub const DEFAULT_MAX_STREAMS: usize = 100;

/// The receive window that yamux gives each stream when it opens: 256 KiB,
/// as the yamux specification says. A peer may send that much on a stream
/// before it must wait for us to read.
pub const STREAM_WINDOW: usize = yamux::DEFAULT_CREDIT as usize;

/// How many bytes all the streams of a client's connection may have
/// received but not yet read, together: the least that yamux takes for
/// the default stream limit, 50 MiB. (A server's follows its stream limit
/// unless set: see `connection_window`.)
pub const DEFAULT_CONNECTION_WINDOW: usize = 2 * DEFAULT_MAX_STREAMS * STREAM_WINDOW;

/// The connection window for `max_streams` streams: `window` if one is
/// set, else the least that yamux takes, a [`STREAM_WINDOW`] for each of
/// twice as many streams (see `yamux_config`).
pub(crate) fn connection_window(max_streams: usize, window: Option<usize>) -> usize {
    window.unwrap_or_else(|| max_streams.saturating_mul(2 * STREAM_WINDOW))
}

/// yamux's settings for a connection that serves up to `max_streams`
/// streams at once.
///
/// yamux ends the whole connection when the peer opens one stream more
/// than yamux's own limit allows. So yamux's limit is twice ours: a stream
/// past our limit but within yamux's gets a clear refusal, and the
/// connection goes on. yamux wants a window of at least [`STREAM_WINDOW`]
/// for each of its streams, and panics otherwise: this is checked first.
pub(crate) fn yamux_config(
    max_streams: usize,
    connection_window: usize,
) -> Result<yamux::Config, KvError> {
    if max_streams == 0 {
        return Err(KvError::Config(
            "a connection needs at least one stream".into(),
        ));
    }
    let yamux_streams = max_streams.saturating_mul(2);
    let Some(least) = yamux_streams.checked_mul(STREAM_WINDOW) else {
        return Err(KvError::Config(format!(
            "{max_streams} streams per connection are more than memory can hold"
        )));
    };
    if connection_window < least {
        return Err(KvError::Config(format!(
            "a connection window of {connection_window} bytes is too small for \
             {max_streams} streams: it needs at least {least} (256 KiB per stream, \
             for twice as many streams, the ones refused included)"
        )));
    }
    let mut config = yamux::Config::default();
    // Each setter checks the two values against each other: lift the
    // window's limit first, then set both.
    config
        .set_max_connection_receive_window(None)
        .set_max_num_streams(yamux_streams)
        .set_max_connection_receive_window(Some(connection_window));
    Ok(config)
}
// ANCHOR_END: config

// ANCHOR: mux_stream
/// The size of a stream's scratch buffer for reads, and so the most that
/// one read copies. (See `poll_read` for why there is one.)
const SCRATCH: usize = 16 << 10;

/// One yamux stream, with tokio's IO traits, holding its place among the
/// streams that its connection may have open.
pub struct MuxStream {
    // Fields are dropped in order: the place is given back before the
    // stream closes, so it is free by the time the peer sees the end.
    _permit: OwnedSemaphorePermit,
    stream: yamux::Stream,
    scratch: Box<[u8]>,
    /// On a client, the connection: it runs while a stream needs it.
    client: Option<Client>,
}

impl MuxStream {
    pub(crate) fn new(
        stream: yamux::Stream,
        permit: OwnedSemaphorePermit,
        client: Option<Client>,
    ) -> Self {
        Self {
            _permit: permit,
            stream,
            scratch: vec![0; SCRATCH].into(),
            client,
        }
    }

    /// Why the client's connection failed, if it has. yamux ends every
    /// stream of a failed connection as if the peer had closed it; a
    /// stream says why instead, where it can.
    fn failure(&self) -> Option<io::Error> {
        let reason = self.client.as_ref()?.failure.get()?;
        Some(io::Error::other(format!("the connection failed: {reason}")))
    }
}

// yamux implements the `futures` IO traits; these impls give the tokio
// ones, as `.compat()` would, and explain a failed connection.
// `yamux::Stream` is `Unpin`, so `Pin::new` reaches it.
impl AsyncRead for MuxStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // `futures` reads into `&mut [u8]`, which must be initialized;
        // tokio's `ReadBuf` may not be. `.compat()` zeroes all of it
        // before each read: 64 KiB in `ProstStream`, for every message and
        // every poll, which cost 15% of the server's time. We read into a
        // buffer zeroed once, then copy what came.
        let this = &mut *self;
        let len = buf.remaining().min(SCRATCH);
        let result = ready!(futures::AsyncRead::poll_read(
            Pin::new(&mut this.stream),
            cx,
            &mut this.scratch[..len]
        ));
        if let Ok(n) = result {
            buf.put_slice(&this.scratch[..n]);
        }
        match (result, self.failure()) {
            (Ok(0), Some(err)) if len > 0 => Poll::Ready(Err(err)),
            (Ok(_), _) => Poll::Ready(Ok(())),
            (Err(err), failure) => Poll::Ready(Err(failure.unwrap_or(err))),
        }
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = ready!(futures::AsyncWrite::poll_write(
            Pin::new(&mut self.stream),
            cx,
            buf
        ));
        Poll::Ready(result.map_err(|err| self.failure().unwrap_or(err)))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = ready!(futures::AsyncWrite::poll_flush(
            Pin::new(&mut self.stream),
            cx
        ));
        Poll::Ready(result.map_err(|err| self.failure().unwrap_or(err)))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = ready!(futures::AsyncWrite::poll_close(
            Pin::new(&mut self.stream),
            cx
        ));
        Poll::Ready(result.map_err(|err| self.failure().unwrap_or(err)))
    }
}
// ANCHOR_END: mux_stream

// ANCHOR: client
/// Asks the driver task for a new stream; the answer comes back on it.
type OpenRequest = oneshot::Sender<Result<yamux::Stream, ConnectionError>>;

/// The client's end of a multiplexed connection. Clones share the
/// connection, and any task may use one: each request, or each run of
/// requests, gets a stream of its own, and they all go over one TLS
/// connection.
///
/// A task of its own drives the connection. It ends, closing the
/// connection, once every clone and every stream is gone; or when the
/// connection fails, and then every open stream ends with an error.
#[derive(Clone)]
pub struct Client {
    opener: mpsc::Sender<OpenRequest>,
    streams: Arc<Semaphore>,
    /// Changes never; ends when the driver task has closed the connection.
    closed: watch::Receiver<()>,
    /// Why the connection failed, once it has.
    failure: Arc<OnceLock<String>>,
}

impl Client {
    /// Starts yamux on `io` (a TLS stream, say) and the task that drives
    /// it, for up to [`DEFAULT_MAX_STREAMS`] streams at once. Must be
    /// called inside a tokio runtime.
    pub fn new<S>(io: S) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::with_max_streams(io, DEFAULT_MAX_STREAMS).expect("the default limit works")
    }

    /// Like [`Client::new`], for up to `max_streams` streams at once. The
    /// server refuses streams past its own limit, and ends the connection
    /// past twice that: keep `max_streams` at most twice the server's.
    pub fn with_max_streams<S>(io: S, max_streams: usize) -> Result<Self, KvError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let least = max_streams.saturating_mul(2 * STREAM_WINDOW);
        let config = yamux_config(max_streams, least.max(DEFAULT_CONNECTION_WINDOW))?;
        let failure = Arc::new(OnceLock::new());
        // One write per frame, not two: see `serve_connection`.
        let io = Recorded {
            io: BufWriter::new(io),
            failure: Arc::clone(&failure),
        };
        let connection = Connection::new(io.compat(), config, Mode::Client);
        let (opener, requests) = mpsc::channel(1);
        let (done, closed) = watch::channel(());
        let streams = Arc::new(Semaphore::new(max_streams));
        let ends = Ends {
            streams: Arc::clone(&streams),
            failure: Arc::clone(&failure),
            _done: done,
        };
        tokio::spawn(drive(connection, requests, ends));
        Ok(Self {
            opener,
            streams,
            closed,
            failure,
        })
    }

    /// Opens a stream: a byte stream of its own, to carry frames exactly as
    /// a TCP connection did. Waits while the most streams this client
    /// allows are open: yamux would end the connection if we opened too
    /// many. Nothing is sent until the stream's first write.
    pub async fn open(&self) -> Result<MuxStream, KvError> {
        let closed = || match self.failure.get() {
            Some(reason) => KvError::Connection(format!("the connection failed: {reason}")),
            None => KvError::Connection("the connection is closed".into()),
        };
        let permit = Arc::clone(&self.streams)
            .acquire_owned()
            .await
            .map_err(|_| closed())?;
        let (reply, answer) = oneshot::channel();
        self.opener.send(reply).await.map_err(|_| closed())?;
        let stream = answer.await.map_err(|_| closed())??;
        Ok(MuxStream::new(stream, permit, Some(self.clone())))
    }

    /// Sends one request on a stream of its own, and returns the answer.
    pub async fn execute(&self, request: CommandRequest) -> Result<CommandResponse, KvError> {
        let mut stream = ProstClientStream::new(self.open().await?);
        let response = stream.execute(request).await?;
        // Lets the server's end of the stream end cleanly. The answer is
        // here whatever happens to the connection now.
        let _ = stream.close().await;
        Ok(response)
    }

    /// Subscribes to `topic` on a stream of its own. Returns once the
    /// server has answered with the subscription's id.
    pub async fn subscribe(&self, topic: impl Into<String>) -> Result<Subscriber, KvError> {
        let mut stream = ProstStream::<_, CommandResponse, CommandRequest>::new(self.open().await?);
        stream.send(CommandRequest::new_subscribe(topic)).await?;
        let first = match stream.next().await {
            Some(first) => first?,
            None => return Err(KvError::Connection("the stream ended".into())),
        };
        if !first.is_ok() {
            let (status, message) = (first.status, first.message);
            return Err(KvError::Refused { status, message });
        }
        let id = first.values.first().and_then(|value| match value.value {
            Some(value::Value::Integer(id)) => u32::try_from(id).ok(),
            _ => None,
        });
        let id = id.ok_or_else(|| KvError::BadFrame("the first answer holds no id".into()))?;
        Ok(Subscriber { id, stream })
    }

    /// Lets go of this handle, and waits until the connection is closed
    /// (TLS included). That is at once if this was the last handle, and
    /// when the others and their streams are gone otherwise.
    pub async fn close(self) {
        let mut closed = self.closed.clone();
        drop(self);
        // Only an error can come: when the driver drops its sender.
        let _ = closed.changed().await;
    }
}

/// What the driver task leaves behind when it ends.
struct Ends {
    /// Closed at the end, so that `open` fails instead of waiting.
    streams: Arc<Semaphore>,
    /// Why the connection failed, if no IO error says it already.
    failure: Arc<OnceLock<String>>,
    /// Dropped at the end, which ends `Client::close`.
    _done: watch::Sender<()>,
}

/// Drives a client's connection: opens the streams asked for, and moves
/// the data of every stream, until no one can ask for a stream any more
/// or the connection fails.
async fn drive<S>(
    mut connection: Connection<S>,
    mut requests: mpsc::Receiver<OpenRequest>,
    ends: Ends,
) where
    S: futures::AsyncRead + futures::AsyncWrite + Unpin,
{
    let mut waiting: Option<OpenRequest> = None;
    let result = poll_fn(|cx| {
        loop {
            // All of yamux's reading and writing happens in this call.
            match connection.poll_next_inbound(cx) {
                // Our server opens no streams: refuse any that comes, and
                // poll again, since `Ready` left no waker behind.
                Poll::Ready(Some(Ok(stream))) => {
                    drop(stream);
                    continue;
                }
                Poll::Ready(Some(Err(err))) => return Poll::Ready(Err(err)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => {}
            }
            if waiting.is_none() {
                match requests.poll_recv(cx) {
                    Poll::Ready(Some(reply)) => waiting = Some(reply),
                    // Every `Client` and every stream is gone.
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => return Poll::Pending,
                }
            }
            // yamux makes us wait once 256 new streams are not yet
            // acknowledged by the server; our limits stay below that.
            let stream = ready!(connection.poll_new_outbound(cx));
            if let Some(reply) = waiting.take() {
                // The caller may have given up waiting; then the stream
                // is dropped, which closes it.
                let _ = reply.send(stream);
            }
        }
    })
    .await;
    match result {
        Ok(()) => debug!("client connection done"),
        Err(err) => {
            debug!(%err, "client connection failed");
            let _ = ends.failure.set(err.to_string());
        }
    }
    ends.streams.close();
    // Says goodbye to the server and closes TLS; at once if the
    // connection has already ended.
    let _ = poll_fn(|cx| connection.poll_close(cx)).await;
}
// ANCHOR_END: client

// ANCHOR: subscriber
/// The client's end of a subscription: a `Stream` of the messages
/// published to its topic. It ends when the subscription does: the server
/// closes the stream after an unsubscribe, or after a last error answer
/// if we fell behind. Dropping it closes the stream, which unsubscribes.
pub struct Subscriber {
    id: u32,
    stream: ProstStream<MuxStream, CommandResponse, CommandRequest>,
}

impl Subscriber {
    /// The id that `Unsubscribe` needs, sent from another stream of the
    /// same connection.
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl Stream for Subscriber {
    type Item = Result<CommandResponse, KvError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.poll_next_unpin(cx)
    }
}
// ANCHOR_END: subscriber

// ANCHOR: recorded
/// The client's connection, remembering its first IO error. The error is
/// kept before yamux sees it, and so before yamux ends the streams: a
/// stream that sees its end because of it can tell why.
struct Recorded<S> {
    io: S,
    failure: Arc<OnceLock<String>>,
}

impl<S> Recorded<S> {
    fn record<T>(&self, result: io::Result<T>) -> io::Result<T> {
        if let Err(err) = &result {
            // Only the first error counts; a later one is its consequence.
            let _ = self.failure.set(err.to_string());
        }
        result
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Recorded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let result = ready!(Pin::new(&mut self.io).poll_read(cx, buf));
        Poll::Ready(self.record(result))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recorded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = ready!(Pin::new(&mut self.io).poll_write(cx, buf));
        Poll::Ready(self.record(result))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = ready!(Pin::new(&mut self.io).poll_flush(cx));
        Poll::Ready(self.record(result))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = ready!(Pin::new(&mut self.io).poll_shutdown(cx));
        Poll::Ready(self.record(result))
    }
}
// ANCHOR_END: recorded

// ANCHOR: tests
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_that_yamux_would_panic_on_are_errors() {
        let err = yamux_config(0, DEFAULT_CONNECTION_WINDOW).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: a connection needs at least one stream"
        );
        let least = 2 * 10 * STREAM_WINDOW;
        assert!(yamux_config(10, least).is_ok());
        let err = yamux_config(10, least - 1).unwrap_err();
        assert!(
            err.to_string().contains("it needs at least 5242880"),
            "{err}"
        );
        // Large enough to overflow, if the check multiplied carelessly.
        assert!(yamux_config(usize::MAX / 2, usize::MAX).is_err());
    }

    #[tokio::test]
    async fn a_client_needs_at_least_one_stream() {
        let (io, _peer) = tokio::io::duplex(64);
        let err = Client::with_max_streams(io, 0).err().unwrap();
        assert_eq!(
            err.to_string(),
            "invalid configuration: a connection needs at least one stream"
        );
    }
}
// ANCHOR_END: tests
