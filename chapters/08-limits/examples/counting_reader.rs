// ANCHOR: header
//! Wrapping an `AsyncRead`: the wrapper must pass its own `Pin` on to the
//! reader inside, which is called pin projection.
//!
//! cargo run --example counting_reader

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
// ANCHOR_END: header

// ANCHOR: counting_reader
pin_project! {
    /// Counts the bytes read through it.
    struct CountingReader<R> {
        // Pinned with the wrapper: `R` may be a reader that must not move.
        #[pin]
        inner: R,
        // Not pinned: a plain number, free to change.
        count: usize,
    }
}

impl<R: AsyncRead> AsyncRead for CountingReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // `project` turns `Pin<&mut Self>` into a `Pin<&mut R>` for the
        // pinned field and a `&mut usize` for the other.
        let this = self.project();
        let before = buf.filled().len();
        let result = this.inner.poll_read(cx, buf);
        *this.count += buf.filled().len() - before;
        result
    }
}
// ANCHOR_END: counting_reader

// ANCHOR: main
#[tokio::main]
async fn main() -> io::Result<()> {
    let text: &[u8] = b"a reader of bytes, read through a wrapper that counts them";
    let mut reader = CountingReader {
        inner: text,
        count: 0,
    };
    let mut out = String::new();
    reader.read_to_string(&mut out).await?;
    println!("read {:?}", out);
    println!("counted {} bytes", reader.count);
    Ok(())
}
// ANCHOR_END: main
