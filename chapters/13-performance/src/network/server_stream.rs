// ANCHOR: imports
//! The server's end of one stream of frames: one of a connection's yamux
//! streams.

use std::time::{Duration, Instant};

use futures::{FutureExt, SinkExt, StreamExt, stream::FusedStream};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span, field};

use super::{
    frame::{FrameCoder, INLINE_ENTRIES, INLINE_LIMIT},
    linger::linger,
    stream::ProstStream,
};
use crate::{
    Answer, CommandRequest, CommandResponse, ConnectionBudget, ConnectionId, Delivery, KvError,
    MemTable, RequestData, Service, Storage, Subscription, telemetry,
};
// ANCHOR_END: imports

/// The most answers that wait in the write buffer for more requests.
const MAX_UNSENT: usize = 64;

/// The frame limit on a subscription's stream. Anything a subscriber sends
/// ends its subscription, so a frame need not be large to do that.
const SUBSCRIBER_MAX_FRAME: usize = 4 * 1024;

// ANCHOR: server_stream
/// The server's end of one stream of frames: reads requests, runs them,
/// writes the responses, until the client closes the stream.
pub struct ProstServerStream<S, Store = MemTable> {
    inner: ProstStream<S, CommandRequest, CommandResponse>,
    service: Service<Store>,
    connection: ConnectionId,
    budget: ConnectionBudget,
    shutdown: CancellationToken,
    write_timeout: Option<Duration>,
    /// Answers in the write buffer, not yet flushed.
    unsent: usize,
}

impl<S, Store> ProstServerStream<S, Store>
where
    S: AsyncRead + AsyncWrite + Unpin,
    Store: Storage + 'static,
{
    /// Serves `service` on `stream`, with no limits but the default frame
    /// limit until the builder methods below set them.
    pub fn new(stream: S, service: Service<Store>) -> Self {
        Self {
            inner: ProstStream::new(stream),
            service,
            connection: ConnectionId::new(),
            budget: ConnectionBudget::unlimited(),
            shutdown: CancellationToken::new(),
            write_timeout: None,
            unsent: 0,
        }
    }

    /// Ends the stream, between requests, once `shutdown` is cancelled; a
    /// subscription gets a last answer that says why.
    pub fn shutdown(mut self, shutdown: CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Sets how long the client may take to send a request: to start one
    /// (`idle`), and to finish one it has started (`frame`).
    pub fn read_timeouts(mut self, idle: Duration, frame: Duration) -> Self {
        self.inner = self.inner.read_timeouts(Some(idle), Some(frame));
        self
    }

    /// Sets how long an answer may wait for the client to read it.
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = Some(timeout);
        self
    }

    /// Says which connection this stream belongs to; by default, one of
    /// its own. Subscriptions belong to a connection, and any of its
    /// streams may end them.
    pub fn connection(mut self, connection: ConnectionId) -> Self {
        self.connection = connection;
        self
    }

    /// Holds what this stream makes the server hold (frames being read,
    /// answers waiting, its subscription's queue) against `budget`, its
    /// connection's; by default, against none.
    pub fn budget(mut self, budget: ConnectionBudget) -> Self {
        self.inner = self.inner.budget(budget.clone());
        self.budget = budget;
        self
    }

    /// Sets the largest request payload accepted, compressed or not.
    pub fn max_frame(mut self, max_len: usize) -> Self {
        self.inner = self.inner.max_frame(max_len);
        self
    }

    /// Serves requests until the client closes the connection, which is
    /// `Ok`. A frame that cannot be read whole ends the connection with an
    /// error; a frame that was read whole but does not decode gets a 400
    /// response, and the connection goes on. A subscription takes over the
    /// stream until it ends, and then the stream ends too.
    pub async fn process(mut self) -> Result<(), KvError> {
        // ANCHOR: coalesce
        loop {
            // A request that is already here is answered before anything
            // is written: the answers to requests that came together
            // (pipelined) leave together, in as few writes (and TLS
            // records) as the buffers allow. Up to a point: a client that
            // never pauses still gets its answers.
            let ready = if self.shutdown.is_cancelled() || self.unsent >= MAX_UNSENT {
                None
            } else {
                self.inner.next().now_or_never()
            };
            let request = match ready {
                Some(request) => request,
                // None is here: send the answers, then wait.
                None => {
                    self.flush().await?;
                    tokio::select! {
                        // Between requests, a shutdown goes first.
                        biased;
                        () = self.shutdown.cancelled() => {
                            self.turn_away().await?;
                            break;
                        }
                        request = self.inner.next() => request,
                    }
                }
            };
            let Some(request) = request else { break };
            // ANCHOR_END: coalesce
            let response = match request {
                Ok(request) => {
                    // Answers waiting in the buffer do not wait for slow work.
                    if self.service.blocks() || !runs_inline(&request) {
                        self.flush().await?;
                    }
                    let answer = match self.execute(request).await {
                        Ok(answer) => answer,
                        Err(err) => return self.flush_then(err).await,
                    };
                    match answer {
                        Answer::One(response) => response,
                        Answer::Stream(subscription) => return self.deliver(subscription).await,
                    }
                }
                Err(err @ KvError::FrameTooLarge { .. }) => {
                    // The payload is not read, so the next frame cannot be
                    // found: answer, then end the connection.
                    self.send(self.service.refuse(&err)).await?;
                    linger(self.inner.inner_mut()).await;
                    return Err(err);
                }
                // Too slow, or a frame that does not fit in the memory
                // budget: say so, then end the stream.
                Err(
                    err @ (KvError::Timeout(_)
                    | KvError::ConnectionMemory { .. }
                    | KvError::ServerMemory { .. }),
                ) if self.inner.is_terminated() => {
                    self.send(self.service.refuse(&err)).await?;
                    self.close().await?;
                    return Err(err);
                }
                // The stream is out of step and has ended.
                Err(err) if self.inner.is_terminated() => return self.flush_then(err).await,
                // The frame was read whole, so the stream is still in step.
                Err(err) => self.service.refuse(&err),
            };
            self.queue(response).await?;
        }
        self.close().await
    }

    /// On shutdown: requests that have already arrived whole are not run,
    /// but each gets a 503, so that its client knows it was not.
    async fn turn_away(&mut self) -> Result<(), KvError> {
        while let Some(Some(Ok(_))) = self.inner.next().now_or_never() {
            self.send(self.service.refuse(&KvError::ShuttingDown))
                .await?;
        }
        Ok(())
    }

    /// Answers with `err` at once, without reading a request, then closes
    /// the stream: for a stream that the server will not serve.
    pub async fn refuse(mut self, err: KvError) -> Result<(), KvError> {
        self.send(self.service.refuse(&err)).await?;
        self.close().await
    }

    // ANCHOR: queue
    /// Puts an answer in the write buffer, which `flush` sends. Writes
    /// only if the buffer is full; fails if the client does not read that
    /// within the write timeout.
    async fn queue(&mut self, response: CommandResponse) -> Result<(), KvError> {
        match within(self.write_timeout, self.inner.feed(response)).await {
            Err(err @ (KvError::ConnectionMemory { .. } | KvError::ServerMemory { .. })) => {
                // No room for the answer now: a short one says why, once
                // the answers before it have left.
                self.flush().await?;
                let mut refusal = self.service.refuse(&err);
                refusal.message = format!("the request ran, but {}", refusal.message);
                within(self.write_timeout, self.inner.feed(refusal)).await?;
            }
            queued => queued?,
        }
        self.unsent += 1;
        Ok(())
    }

    /// Sends the buffered answers, within the write timeout, and runs the
    /// `after_send` hook for each: they have left now.
    async fn flush(&mut self) -> Result<(), KvError> {
        if self.unsent > 0 {
            within(self.write_timeout, self.inner.flush()).await?;
        }
        for _ in 0..std::mem::take(&mut self.unsent) {
            self.service.after_send();
        }
        Ok(())
    }
    // ANCHOR_END: queue

    /// Ends with `err`, after trying to send the answers that wait: their
    /// requests have run, and their clients should know it.
    async fn flush_then(&mut self, err: KvError) -> Result<(), KvError> {
        let _ = self.flush().await;
        Err(err)
    }

    /// Sends an answer at once, with any that wait in the buffer.
    async fn send(&mut self, response: CommandResponse) -> Result<(), KvError> {
        self.queue(response).await?;
        self.flush().await
    }

    /// Sends what waits, then closes the stream (on TLS, with
    /// close_notify), within the write timeout too.
    async fn close(&mut self) -> Result<(), KvError> {
        self.flush().await?;
        within(self.write_timeout, self.inner.close()).await
    }
    // ANCHOR_END: server_stream

    // ANCHOR: deliver
    /// Sends a subscription's answers, its id first, until it ends or the
    /// client closes its side of the stream; then closes the stream, which
    /// tells the client that no more will come.
    async fn deliver(mut self, mut subscription: Subscription) -> Result<(), KvError> {
        // A subscriber sends nothing more: it is not idle, only listening.
        // Whatever it does send ends the subscription, so a large frame
        // need not be read to the end first.
        self.inner.set_idle_timeout(None);
        self.inner = self.inner.max_frame(SUBSCRIBER_MAX_FRAME);
        // The id, before anything else can happen. It has had its hooks.
        if let Some(Delivery::Answer(first)) = subscription.next().await {
            self.send(first).await?;
        }
        let mut shutting_down = false;
        let result = loop {
            tokio::select! {
                delivery = subscription.next() => {
                    let Some(delivery) = delivery else { break Ok(()) };
                    // Sending waits for the client to read. If it fell
                    // behind meanwhile, stop waiting: the subscription and
                    // its queue go now, and the reason is the last answer.
                    tokio::select! {
                        // A send that can finish goes first.
                        biased;
                        sent = self.deliver_one(delivery) => match sent {
                            Ok(()) => {}
                            Err(err) => break Err(err),
                        },
                        () = subscription.fell_behind() => break Ok(()),
                    }
                }
                // The client sends nothing on a subscription's stream: its
                // end, or anything else, ends the subscription.
                incoming = self.inner.next() => {
                    if let Some(Ok(_)) = incoming {
                        let err = KvError::InvalidCommand(
                            "a subscription's stream takes no more requests".into(),
                        );
                        // The stream ends anyway: a failed send changes nothing.
                        let _ = self.send(self.service.refuse(&err)).await;
                    }
                    break Ok(());
                }
                () = self.shutdown.cancelled() => {
                    shutting_down = true;
                    break Ok(());
                }
            }
        };
        // Unsubscribed, and the queue freed, before the client can see the
        // stream end.
        let reason = subscription.take_reason();
        drop(subscription);
        result?;
        let reason = reason.or(shutting_down.then_some(KvError::ShuttingDown));
        if let Some(reason) = reason {
            let mut last = CommandResponse::from(reason);
            self.service.before_send(&mut last);
            self.send(last).await?;
        }
        self.close().await
    }
    /// Sends one delivery: a published message's frame as it is, or an
    /// answer, hooks run.
    async fn deliver_one(&mut self, delivery: Delivery) -> Result<(), KvError> {
        match delivery {
            Delivery::Message(frame, held) => {
                let inner = &mut self.inner;
                let send = async {
                    futures::future::poll_fn(|cx| inner.poll_ready_unpin(cx)).await?;
                    inner.start_send_frame(frame, held);
                    inner.flush().await
                };
                within(self.write_timeout, send).await?;
                self.service.after_send();
                Ok(())
            }
            Delivery::Answer(mut answer) => {
                self.service.before_send(&mut answer);
                self.send(answer).await
            }
        }
    }
    // ANCHOR_END: deliver

    // ANCHOR: execute
    /// Runs a request: right here if it is quick, on a thread meant for
    /// blocking work if it may take long. `ProstStream` makes the same
    /// choice for decoding and encoding.
    async fn execute(&mut self, request: CommandRequest) -> Result<Answer, KvError> {
        // The span names the command and, once known, the status and the
        // time taken; never a table, key or value.
        let command = telemetry::command_name(&request);
        let span = debug_span!(
            "request",
            command,
            status = field::Empty,
            micros = field::Empty
        );
        let started = Instant::now();
        let heavy = self.service.blocks() || !runs_inline(&request);
        let (service, connection) = (self.service.clone(), self.connection);
        let budget = self.budget.clone();
        // A closure on a blocking thread is outside the future's span:
        // it enters the span itself.
        let in_span = span.clone();
        let work = move || in_span.in_scope(|| service.call(request, connection, &budget));
        let answer = offload(heavy, work).instrument(span.clone()).await?;
        // The request is gone: what its frame held is free for the answer.
        self.inner.release_item();
        let status = match &answer {
            Answer::One(response) => response.status,
            Answer::Stream(_) => 200,
        };
        let elapsed = started.elapsed();
        telemetry::request_done(command, status, elapsed);
        span.record("status", status)
            .record("micros", elapsed.as_micros() as u64);
        span.in_scope(|| debug!("answered"));
        Ok(answer)
    }
}

/// Whether running `request` takes microseconds: it is small, has few
/// entries, and it is not `hgetall`, whose work grows with the table, not
/// with the request.
fn runs_inline(request: &CommandRequest) -> bool {
    let hgetall = matches!(request.request_data, Some(RequestData::Hgetall(_)));
    !hgetall && request.entries() <= INLINE_ENTRIES && request.encoded_len() <= INLINE_LIMIT
}

/// Runs `work` right here if it is light. Otherwise it runs on a thread
/// meant for blocking work, so that it does not hold up the other
/// connections that this thread serves. The hop to that thread and back
/// costs microseconds: worth it for work that takes longer, not for a
/// small request.
async fn offload<T>(heavy: bool, work: impl FnOnce() -> T + Send + 'static) -> Result<T, KvError>
where
    T: Send + 'static,
{
    if !heavy {
        return Ok(work());
    }
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| KvError::Internal(format!("request task failed: {err}")))
}

/// Runs `write`, failing if it takes longer than `limit`: a client that
/// does not read makes writes wait.
async fn within(
    limit: Option<Duration>,
    write: impl Future<Output = Result<(), KvError>>,
) -> Result<(), KvError> {
    let Some(limit) = limit else {
        return write.await;
    };
    tokio::time::timeout(limit, write)
        .await
        .unwrap_or_else(|_| {
            Err(KvError::Timeout(format!(
                "the client did not read its answers for {limit:?}"
            )))
        })
}
// ANCHOR_END: execute

// ANCHOR: test_imports
#[cfg(test)]
mod tests {
    use std::{
        pin::Pin,
        sync::{Arc, Mutex},
        task::{Context, Poll},
        time::Duration,
    };

    use super::*;
    use crate::{ProstClientStream, Value};
    // ANCHOR_END: test_imports

    // ANCHOR: duplex_test
    #[tokio::test]
    async fn client_and_server_work_through_a_one_byte_pipe() {
        // Each side of the pipe buffers one byte: every read and write is
        // partial, and every other poll is `Pending`. A bug that loses a
        // byte would make this hang, so it runs with a deadline.
        let (client_end, server_end) = tokio::io::duplex(1);
        let service = Service::new(MemTable::new());
        let server = tokio::spawn(ProstServerStream::new(server_end, service).process());
        let mut client = ProstClientStream::new(client_end);

        let exchange = async {
            let big = Value::from("compress me ".repeat(1000));
            for (key, value) in [("small", Value::from(1i64)), ("big", big)] {
                let set = CommandRequest::new_hset("t", key, value.clone());
                assert!(client.execute(set).await.unwrap().is_ok());
                let res = client.execute(CommandRequest::new_hget("t", key)).await;
                assert_eq!(res.unwrap().values, [value]);
            }
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .expect("the exchange finishes");

        drop(client);
        server
            .await
            .unwrap()
            .expect("a clean end when the client hangs up");
    }
    // ANCHOR_END: duplex_test

    // ANCHOR: hooks_test
    #[tokio::test]
    async fn a_frame_that_does_not_decode_passes_the_hooks_too() {
        let events = Arc::new(Mutex::new(Vec::new()));
        let log = |name: &'static str| {
            let events = Arc::clone(&events);
            move || events.lock().unwrap().push(name)
        };
        let (received, executed, before, after) = (
            log("received"),
            log("executed"),
            log("before_send"),
            log("after_send"),
        );
        let service = Service::builder(MemTable::new())
            .on_received(move |_| received())
            .on_executed(move |_| executed())
            .on_before_send(move |_| before())
            .on_after_send(after)
            .build();

        let (client_end, server_end) = tokio::io::duplex(1024);
        let server = tokio::spawn(ProstServerStream::new(server_end, service).process());
        let mut client = ProstStream::<_, CommandResponse, CommandRequest>::new(client_end);
        // A whole frame whose payload is not protobuf.
        let garbage = b"\0\0\0\x03\xff\xff\xff";
        tokio::io::AsyncWriteExt::write_all(client.inner_mut(), garbage)
            .await
            .unwrap();
        let res = client.next().await.unwrap().unwrap();
        assert_eq!(res.status, 400);
        drop(client);
        server.await.unwrap().unwrap();

        // No request was decoded, so `on_received` had nothing to see.
        let events = events.lock().unwrap();
        assert_eq!(*events, ["executed", "before_send", "after_send"]);
    }
    // ANCHOR_END: hooks_test

    // ANCHOR: pipelined_test
    /// Counts the flushes of the stream inside.
    struct Flushes<S> {
        inner: S,
        count: Arc<Mutex<usize>>,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for Flushes<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for Flushes<S> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            *self.count.lock().unwrap() += 1;
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn pipelined_answers_leave_together_even_when_the_stream_then_fails() {
        let (client_end, server_end) = tokio::io::duplex(64 * 1024);
        let count = Arc::new(Mutex::new(0));
        let server_end = Flushes {
            inner: server_end,
            count: Arc::clone(&count),
        };
        let service = Service::new(MemTable::new());
        let server = tokio::spawn(ProstServerStream::new(server_end, service).process());

        // More requests than may wait for their answers, in one write,
        // then half a header, then the end: all of it is there before the
        // server first reads.
        let requests = MAX_UNSENT + 2;
        let mut client = ProstStream::<_, CommandResponse, CommandRequest>::new(client_end);
        for key in 0..requests {
            let request = CommandRequest::new_hset("t", key.to_string(), "v");
            client.feed(request).await.unwrap();
        }
        client.flush().await.unwrap();
        let raw = client.inner_mut();
        tokio::io::AsyncWriteExt::write_all(raw, &[0, 0])
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::shutdown(raw).await.unwrap();

        // The stream fails, but every request ran, and the answers left
        // first: in two flushes, the first once `MAX_UNSENT` were waiting.
        let err = server.await.unwrap().unwrap_err();
        assert!(matches!(err, KvError::BadFrame(_)), "{err}");
        for _ in 0..requests {
            assert!(client.next().await.unwrap().unwrap().is_ok());
        }
        assert!(client.next().await.is_none());
        assert_eq!(*count.lock().unwrap(), 2);
    }
    // ANCHOR_END: pipelined_test

    #[test]
    fn only_small_requests_with_few_entries_other_than_hgetall_run_inline() {
        assert!(runs_inline(&CommandRequest::new_hget("t", "k")));
        assert!(runs_inline(&CommandRequest::new_hset(
            "t",
            "k",
            "v".repeat(4096)
        )));
        assert!(!runs_inline(&CommandRequest::new_hgetall("t")));
        let big = CommandRequest::new_hset("t", "k", "v".repeat(INLINE_LIMIT));
        assert!(!runs_inline(&big));
        let many = (0..=INLINE_ENTRIES).map(|i| i.to_string());
        assert!(!runs_inline(&CommandRequest::new_hmget("t", many)));
    }
}
