// ANCHOR: imports
//! In-memory streams for tests.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadBuf};
// ANCHOR_END: imports

// ANCHOR: dummy_stream
/// An `AsyncRead` that serves fixed bytes from memory.
///
/// By default a read gets as much as it asks for. `trickle(n)` makes the
/// stream behave like a slow network: every read first returns `Pending`
/// (after asking to be polled again) and then delivers at most `n` bytes.
/// `fail_with(kind)` makes the read after the last byte fail.
pub struct DummyStream {
    data: BytesMut,
    chunk: usize,
    trickle: bool,
    pending_next: bool,
    error_at_end: Option<io::ErrorKind>,
}

impl DummyStream {
    pub fn new(data: impl Into<BytesMut>) -> Self {
        Self {
            data: data.into(),
            chunk: usize::MAX,
            trickle: false,
            pending_next: false,
            error_at_end: None,
        }
    }

    pub fn fail_with(mut self, kind: io::ErrorKind) -> Self {
        self.error_at_end = Some(kind);
        self
    }

    pub fn trickle(mut self, chunk: usize) -> Self {
        self.chunk = chunk;
        self.trickle = true;
        self.pending_next = true;
        self
    }
}

impl AsyncRead for DummyStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.trickle {
            if this.pending_next {
                this.pending_next = false;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            this.pending_next = true;
        }
        if let (true, Some(kind)) = (this.data.is_empty(), this.error_at_end) {
            return Poll::Ready(Err(kind.into()));
        }
        let n = this.data.len().min(buf.remaining()).min(this.chunk);
        buf.put_slice(&this.data.split_to(n));
        Poll::Ready(Ok(()))
    }
}
// ANCHOR_END: dummy_stream
