//! In-memory streams for tests.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

// ANCHOR: dummy_stream
/// An in-memory loopback stream: what is written to it can be read back.
///
/// By default every read and write moves as much as it can. `trickle(n)`
/// makes it behave like a slow network: every read and every write first
/// returns `Pending` (after asking to be polled again), then moves at most
/// `n` bytes. `fail_with(kind)` makes the read after the last byte fail,
/// and `write_zero()` makes every write take nothing.
pub struct DummyStream {
    data: BytesMut,
    chunk: usize,
    trickle: bool,
    read_pending_next: bool,
    write_pending_next: bool,
    error_at_end: Option<io::ErrorKind>,
    write_zero: bool,
    shut_down: bool,
}

impl DummyStream {
    /// A stream that first reads `data`, then whatever is written.
    pub fn new(data: impl Into<BytesMut>) -> Self {
        Self {
            data: data.into(),
            chunk: usize::MAX,
            trickle: false,
            read_pending_next: false,
            write_pending_next: false,
            error_at_end: None,
            write_zero: false,
            shut_down: false,
        }
    }

    pub fn trickle(mut self, chunk: usize) -> Self {
        self.chunk = chunk;
        self.trickle = true;
        self.read_pending_next = true;
        self.write_pending_next = true;
        self
    }

    pub fn fail_with(mut self, kind: io::ErrorKind) -> Self {
        self.error_at_end = Some(kind);
        self
    }

    pub fn write_zero(mut self) -> Self {
        self.write_zero = true;
        self
    }

    pub fn is_shut_down(&self) -> bool {
        self.shut_down
    }

    /// The bytes written and not read yet.
    pub fn unread(&self) -> &[u8] {
        &self.data
    }
}

/// In trickle mode, every other call takes a break: it returns `true`
/// (answer `Pending`) after waking the task, so that it polls again.
fn take_a_break(trickle: bool, pending_next: &mut bool, cx: &mut Context<'_>) -> bool {
    if !trickle {
        return false;
    }
    let pending = *pending_next;
    *pending_next = !pending;
    if pending {
        cx.waker().wake_by_ref();
    }
    pending
}

impl AsyncRead for DummyStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if take_a_break(this.trickle, &mut this.read_pending_next, cx) {
            return Poll::Pending;
        }
        if let (true, Some(kind)) = (this.data.is_empty(), this.error_at_end) {
            return Poll::Ready(Err(kind.into()));
        }
        let n = this.data.len().min(buf.remaining()).min(this.chunk);
        buf.put_slice(&this.data.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for DummyStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_zero {
            return Poll::Ready(Ok(0));
        }
        if take_a_break(this.trickle, &mut this.write_pending_next, cx) {
            return Poll::Pending;
        }
        let n = buf.len().min(this.chunk);
        this.data.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().shut_down = true;
        Poll::Ready(Ok(()))
    }
}
// ANCHOR_END: dummy_stream
