// ANCHOR: imports
//! The client's end of a connection.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::frame::{DEFAULT_MAX_FRAME, FrameCoder, read_frame};
use crate::{CommandRequest, CommandResponse, KvError};
// ANCHOR_END: imports

// ANCHOR: client_stream
/// The client's end of a connection: sends a request, waits for its
/// response.
pub struct ProstClientStream<S> {
    inner: S,
    buf: BytesMut,
    max_frame: usize,
    /// Set while a call is under way. Still set when a call begins, it
    /// means that the last call was dropped half-way.
    in_call: bool,
}

impl<S> ProstClientStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    pub fn new(stream: S) -> Self {
        Self {
            inner: stream,
            buf: BytesMut::new(),
            max_frame: DEFAULT_MAX_FRAME,
            in_call: false,
        }
    }

    /// Sets the largest response payload accepted, compressed or not.
    pub fn max_frame(mut self, max_len: usize) -> Self {
        self.max_frame = max_len;
        self
    }

    /// Sends one request and returns the server's response.
    ///
    /// Not cancel-safe: a call dropped before it ends (by a timeout, say)
    /// may leave a request half-written or an answer unread, and the
    /// connection out of step. Every later call then fails, rather than
    /// return the answer to another request.
    pub async fn execute(&mut self, request: CommandRequest) -> Result<CommandResponse, KvError> {
        if self.in_call {
            return Err(KvError::Internal(
                "an earlier call was dropped half-way: the connection is out of step".into(),
            ));
        }
        self.buf.clear();
        request.encode_frame(&mut self.buf)?;
        self.in_call = true;
        self.inner.write_all(&self.buf).await?;
        self.inner.flush().await?;

        if !read_frame(&mut self.inner, &mut self.buf, self.max_frame).await? {
            return Err(KvError::BadFrame(
                "the server closed the connection before responding".into(),
            ));
        }
        self.in_call = false;
        CommandResponse::decode_frame(&mut self.buf, self.max_frame)
    }

    /// Closes the connection cleanly. On TLS, this tells the server that
    /// we are done (close_notify) before the connection goes.
    pub async fn close(mut self) -> Result<(), KvError> {
        self.inner.shutdown().await?;
        Ok(())
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
    async fn after_a_dropped_call_every_call_fails_rather_than_lie() {
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
        let err = client
            .execute(CommandRequest::new_hget("t", "k"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("out of step"), "{err}");
    }
}
// ANCHOR_END: cancel_test
