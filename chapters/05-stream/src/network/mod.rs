//! The service on the network: frames on any byte stream, and the two
//! ends of a connection.

mod client_stream;
#[cfg(test)]
mod dummy;
mod frame;
<<<<<<< 05-stream/src/network/mod.rs
#[cfg(test)]
mod naive;
mod stream;
=======
mod linger;
mod server_stream;
>>>>>>> 03-frame/src/network/mod.rs

pub use client_stream::ProstClientStream;
pub use frame::{
    COMPRESSION_LIMIT, DEFAULT_MAX_FRAME, ENTRY_COST, FrameCoder, HEADER_LEN, INLINE_LIMIT,
    MAX_WIRE_LEN, max_entries, read_frame,
};
<<<<<<< 05-stream/src/network/mod.rs
pub use stream::{ProstStream, WRITE_BACKPRESSURE};

use std::time::Duration;

use futures::{SinkExt, StreamExt, stream::FusedStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use crate::{CommandRequest, CommandResponse, KvError, MemTable, Service, Storage};

/// How long the server goes on reading after refusing a frame as too
/// large, so that the client can read the refusal (see `linger`).
const LINGER: Duration = Duration::from_secs(2);

// ANCHOR: server_stream
/// The server's end of one connection: reads requests, runs them, writes
/// the responses, until the client hangs up.
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
                    self.inner.send(CommandResponse::from(&err)).await?;
                    self.service.after_send();
                    self.linger().await;
                    return Err(err);
                }
                // The stream is out of step and has ended.
                Err(err) if self.inner.is_terminated() => return Err(err),
                // The frame was read whole, so the stream is still in step.
                Err(err) => err.into(),
            };
            self.inner.send(response).await?;
            self.service.after_send();
        }
        Ok(())
    }

    /// Runs a request on a thread meant for blocking work:
    /// `Service::execute` is synchronous, and a storage may wait for the
    /// disk.
    async fn execute(&self, request: CommandRequest) -> Result<CommandResponse, KvError> {
        debug!(?request, "executing");
        let service = self.service.clone();
        tokio::task::spawn_blocking(move || service.execute(request))
            .await
            .map_err(|err| KvError::Internal(format!("request task failed: {err}")))
    }

    /// Stops writing, then reads and drops what the client still sends,
    /// for a moment. Closing a socket while received data is unread makes
    /// the kernel reset the connection, and the reset can destroy the
    /// response we just sent before the client has read it.
    async fn linger(&mut self) {
        let stream = self.inner.inner_mut();
        let mut sink = [0; 4096];
        let linger = async {
            let _ = stream.shutdown().await;
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        let _ = tokio::time::timeout(LINGER, linger).await;
    }
}
// ANCHOR_END: server_stream

// ANCHOR: client_stream
/// The client's end of a connection: sends a request, waits for its
/// response.
pub struct ProstClientStream<S> {
    inner: ProstStream<S, CommandResponse, CommandRequest>,
}

impl<S> ProstClientStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    pub fn new(stream: S) -> Self {
        Self {
            inner: ProstStream::new(stream),
        }
    }

    /// Sets the largest response payload accepted, compressed or not.
    pub fn max_frame(mut self, max_len: usize) -> Self {
        self.inner = self.inner.max_frame(max_len);
        self
    }

    /// Sends one request and returns the server's response.
    pub async fn execute(&mut self, request: CommandRequest) -> Result<CommandResponse, KvError> {
        self.inner.send(request).await?;
        match self.inner.next().await {
            Some(response) => response,
            None => Err(KvError::BadFrame(
                "the server closed the connection before responding".into(),
            )),
        }
    }

    /// Closes the connection cleanly. On TLS, this tells the server that
    /// we are done (close_notify) before the connection goes.
    pub async fn close(mut self) -> Result<(), KvError> {
        self.inner.close().await
    }
}
// ANCHOR_END: client_stream

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Value;

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
}
=======
pub use server_stream::ProstServerStream;
>>>>>>> 03-frame/src/network/mod.rs
