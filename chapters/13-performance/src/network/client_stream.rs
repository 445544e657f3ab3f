// ANCHOR: imports
//! The client's end of one stream of frames: one of a connection's yamux
//! streams.

use futures::{SinkExt, StreamExt, stream::FusedStream};
use tokio::io::{AsyncRead, AsyncWrite};

use super::stream::ProstStream;
use crate::{CommandRequest, CommandResponse, KvError};
// ANCHOR_END: imports

// ANCHOR: client_stream
/// The client's end of one stream of frames: sends a request, waits
/// for its response.
pub struct ProstClientStream<S> {
    inner: ProstStream<S, CommandResponse, CommandRequest>,
    /// Requests sent whose answers have not been read yet.
    unanswered: usize,
}

impl<S> ProstClientStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    pub fn new(stream: S) -> Self {
        Self {
            inner: ProstStream::new(stream),
            unanswered: 0,
        }
    }

    /// Sets the largest response payload accepted, compressed or not.
    pub fn max_frame(mut self, max_len: usize) -> Self {
        self.inner = self.inner.max_frame(max_len);
        self
    }

    /// Sends one request and returns the server's response.
    ///
    /// Cancel-safe: a call dropped before it ends (by a timeout, say)
    /// leaves the connection usable. What it had written stays in
    /// `ProstStream`'s buffer and goes out with the next call, and the
    /// answer to it is read and dropped before the next call's own.
    pub async fn execute(&mut self, request: CommandRequest) -> Result<CommandResponse, KvError> {
        // A dropped call may have left its request unsent, in the write
        // buffer or still being encoded: send it, or its answer never comes.
        self.inner.flush().await?;
        while self.unanswered > 0 {
            let _stale = self.answer().await?;
        }
        // `feed` puts the request into the write buffer in the same poll
        // that it returns `Ready`: no cancelling between it and the count.
        self.inner.feed(request).await?;
        self.unanswered += 1;
        self.inner.flush().await?;
        self.answer().await?
    }

    /// Reads the answer to the oldest request still unanswered. The outer
    /// `Result` fails if no answer can come: the stream has ended, or an
    /// error ended it. The inner one is the answer, or the reason its frame
    /// did not decode (the stream goes on).
    async fn answer(&mut self) -> Result<Result<CommandResponse, KvError>, KvError> {
        match self.inner.next().await {
            // An error that ended the stream answers nothing: pass it on.
            Some(Err(err)) if self.inner.is_terminated() => Err(err),
            Some(answer) => {
                self.unanswered -= 1;
                Ok(answer)
            }
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

// ANCHOR: cancel_test
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{MemTable, ProstServerStream, Service};

    #[tokio::test]
    async fn a_dropped_call_leaves_the_connection_in_step() {
        let (client_end, server_end) = tokio::io::duplex(64 * 1024);
        let mut client = ProstClientStream::new(client_end);

        // No server yet: the request is written, the answer cannot come,
        // and the zero timeout drops the call right there.
        let set = CommandRequest::new_hset("t", "k", 1i64);
        let call = tokio::time::timeout(Duration::ZERO, client.execute(set));
        assert!(call.await.is_err(), "the call was dropped");

        // The server answers the dropped request first. The next call must
        // not take that answer for its own.
        let service = Service::new(MemTable::new());
        tokio::spawn(ProstServerStream::new(server_end, service).process());
        let res = client.execute(CommandRequest::new_hget("t", "k")).await;
        assert_eq!(res.unwrap().values, [1i64.into()], "hget's own answer");
    }

    #[tokio::test]
    async fn a_call_dropped_before_its_request_left_is_in_step_too() {
        // A pipe of 16 bytes, and requests too large to encode inline: the
        // first call is dropped while its request is being encoded or is
        // only partly written.
        let (client_end, server_end) = tokio::io::duplex(16);
        let mut client = ProstClientStream::new(client_end);
        let big = "x".repeat(10_000);
        let set = CommandRequest::new_hset("t", "k", big.as_str());
        let call = tokio::time::timeout(Duration::ZERO, client.execute(set));
        assert!(call.await.is_err(), "the call was dropped");

        let service = Service::new(MemTable::new());
        tokio::spawn(ProstServerStream::new(server_end, service).process());
        let get = client.execute(CommandRequest::new_hget("t", "k"));
        let res = tokio::time::timeout(Duration::from_secs(10), get)
            .await
            .expect("the dropped request was sent, and answered");
        assert_eq!(res.unwrap().values, [big.into()]);
    }

    #[tokio::test]
    async fn an_error_that_ends_the_stream_is_reported_not_dropped() {
        let (client_end, mut server_end) = tokio::io::duplex(64 * 1024);
        let mut client = ProstClientStream::new(client_end);
        let call = client.execute(CommandRequest::new_hget("t", "k"));
        assert!(tokio::time::timeout(Duration::ZERO, call).await.is_err());

        // The "server" answers with a header no frame limit allows. The next
        // call reads it while it looks for the dropped call's answer.
        tokio::io::AsyncWriteExt::write_all(&mut server_end, &[0x7f, 0xff, 0xff, 0xff])
            .await
            .unwrap();
        let err = client
            .execute(CommandRequest::new_hget("t", "k"))
            .await
            .unwrap_err();
        assert!(matches!(err, KvError::FrameTooLarge { .. }), "{err}");
    }
}
// ANCHOR_END: cancel_test
