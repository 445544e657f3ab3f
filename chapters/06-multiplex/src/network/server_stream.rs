// ANCHOR: imports
//! The server's end of one stream of frames: one of a connection's yamux
//! streams.

use futures::{SinkExt, StreamExt, stream::FusedStream};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::{frame::INLINE_LIMIT, linger::linger, stream::ProstStream};
use crate::{CommandRequest, CommandResponse, KvError, MemTable, RequestData, Service, Storage};
// ANCHOR_END: imports

// ANCHOR: server_stream
/// The server's end of one stream of frames: reads requests, runs them,
/// writes the responses, until the client closes the stream.
pub struct ProstServerStream<S, Store = MemTable> {
    inner: ProstStream<S, CommandRequest, CommandResponse>,
    service: Service<Store>,
}

impl<S, Store> ProstServerStream<S, Store>
where
    S: AsyncRead + AsyncWrite + Unpin,
    Store: Storage + 'static,
{
    pub fn new(stream: S, service: Service<Store>) -> Self {
        Self {
            inner: ProstStream::new(stream),
            service,
        }
    }

    /// Sets the largest request payload accepted, compressed or not.
    pub fn max_frame(mut self, max_len: usize) -> Self {
        self.inner = self.inner.max_frame(max_len);
        self
    }

    /// Serves requests until the client closes the connection, which is
    /// `Ok`. A frame that cannot be read whole ends the connection with an
    /// error; a frame that was read whole but does not decode gets a 400
    /// response, and the connection goes on.
    pub async fn process(mut self) -> Result<(), KvError> {
        while let Some(request) = self.inner.next().await {
            let response = match request {
                Ok(request) => self.execute(request).await?,
                Err(err @ KvError::FrameTooLarge { .. }) => {
                    // The payload is not read, so the next frame cannot be
                    // found: answer, then end the connection.
                    self.inner.send(self.service.refuse(&err)).await?;
                    self.service.after_send();
                    linger(self.inner.inner_mut()).await;
                    return Err(err);
                }
                // The stream is out of step and has ended.
                Err(err) if self.inner.is_terminated() => return Err(err),
                // The frame was read whole, so the stream is still in step.
                Err(err) => self.service.refuse(&err),
            };
            self.inner.send(response).await?;
            self.service.after_send();
        }
        Ok(())
    }

    /// Answers with `err` at once, without reading a request, then closes
    /// the stream: for a stream that the server will not serve.
    pub async fn refuse(mut self, err: KvError) -> Result<(), KvError> {
        self.inner.send(self.service.refuse(&err)).await?;
        self.service.after_send();
        self.inner.close().await
    }
    // ANCHOR_END: server_stream

    // ANCHOR: execute
    /// Runs a request: right here if it is quick, on a thread meant for
    /// blocking work if it may take long. `ProstStream` makes the same
    /// choice for decoding and encoding.
    async fn execute(&self, request: CommandRequest) -> Result<CommandResponse, KvError> {
        debug!(?request, "executing");
        let heavy = self.service.blocks() || !runs_inline(&request);
        let service = self.service.clone();
        offload(heavy, move || service.execute(request)).await
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
