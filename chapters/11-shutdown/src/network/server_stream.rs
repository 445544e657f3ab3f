// ANCHOR: imports
//! The server's end of one stream of frames: one of a connection's yamux
//! streams.

use std::time::Duration;

use futures::{FutureExt, SinkExt, StreamExt, stream::FusedStream};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{frame::INLINE_LIMIT, linger::linger, stream::ProstStream};
use crate::{
    Answer, CommandRequest, CommandResponse, ConnectionBudget, ConnectionId, Delivery, KvError,
    MemTable, RequestData, Service, Storage, Subscription,
};
// ANCHOR_END: imports

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
        loop {
            let request = tokio::select! {
                // Between requests, a shutdown goes first.
                biased;
                () = self.shutdown.cancelled() => {
                    self.turn_away().await?;
                    break;
                }
                request = self.inner.next() => request,
            };
            let Some(request) = request else { break };
            let response = match request {
                Ok(request) => match self.execute(request).await? {
                    Answer::One(response) => response,
                    Answer::Stream(subscription) => return self.deliver(subscription).await,
                },
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
                Err(err) if self.inner.is_terminated() => return Err(err),
                // The frame was read whole, so the stream is still in step.
                Err(err) => self.service.refuse(&err),
            };
            self.send(response).await?;
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

    /// Sends an answer and runs the `after_send` hook. Fails if the client
    /// does not read it within the write timeout.
    async fn send(&mut self, response: CommandResponse) -> Result<(), KvError> {
        match within(self.write_timeout, self.inner.send(response)).await {
            Err(err @ (KvError::ConnectionMemory { .. } | KvError::ServerMemory { .. })) => {
                // No room for the answer now: a short one says why.
                let mut refusal = self.service.refuse(&err);
                refusal.message = format!("the request ran, but {}", refusal.message);
                within(self.write_timeout, self.inner.send(refusal)).await?;
            }
            sent => sent?,
        }
        self.service.after_send();
        Ok(())
    }

    /// Closes the stream (on TLS, with close_notify), within the write
    /// timeout too.
    async fn close(&mut self) -> Result<(), KvError> {
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
        self.inner = self.inner.max_frame(INLINE_LIMIT);
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
        debug!(?request, "executing");
        let heavy = self.service.blocks() || !runs_inline(&request);
        let (service, connection) = (self.service.clone(), self.connection);
        let budget = self.budget.clone();
        let work = move || service.call(request, connection, &budget);
        let answer = offload(heavy, work).await?;
        // The request is gone: what its frame held is free for the answer.
        self.inner.release_item();
        Ok(answer)
    }
}

/// Whether running `request` takes microseconds: it is small, and it is
/// not `hgetall`, whose work grows with the table, not with the request.
fn runs_inline(request: &CommandRequest) -> bool {
    let hgetall = matches!(request.request_data, Some(RequestData::Hgetall(_)));
    !hgetall && request.encoded_len() <= INLINE_LIMIT
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
        sync::{Arc, Mutex},
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

    #[test]
    fn only_small_requests_other_than_hgetall_run_inline() {
        assert!(runs_inline(&CommandRequest::new_hget("t", "k")));
        assert!(!runs_inline(&CommandRequest::new_hgetall("t")));
        let big = CommandRequest::new_hset("t", "k", "v".repeat(INLINE_LIMIT));
        assert!(!runs_inline(&big));
    }
}
