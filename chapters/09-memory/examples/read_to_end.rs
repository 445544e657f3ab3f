// ANCHOR: header
//! `read_to_end` written as a future by hand, and what must not move:
//! this future, or the one that awaits it?
//!
//! cargo run --example read_to_end

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
};
// ANCHOR_END: header

// ANCHOR: read_to_end
/// How many bytes to make room for before each read.
const CHUNK: usize = 4 * 1024;

/// Reads `reader` to its end, appends what it read to `buf`, and counts it.
struct ReadToEnd<'a, R> {
    reader: &'a mut R,
    buf: &'a mut Vec<u8>,
    /// Bytes appended so far: the output, kept across `Pending`.
    read: usize,
}

fn read_to_end<'a, R: AsyncRead + Unpin>(
    reader: &'a mut R,
    buf: &'a mut Vec<u8>,
) -> ReadToEnd<'a, R> {
    ReadToEnd {
        reader,
        buf,
        read: 0,
    }
}

impl<R: AsyncRead + Unpin> Future for ReadToEnd<'_, R> {
    type Output = io::Result<usize>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        // `ReadToEnd` is `Unpin`, so `get_mut` hands out a plain `&mut`.
        let this = self.get_mut();
        loop {
            // Make room after the bytes already there. `ReadBuf::new` wants
            // initialized memory, so the room is filled with zeros first.
            let start = this.buf.len();
            this.buf.resize(start + CHUNK, 0);
            let mut read_buf = ReadBuf::new(&mut this.buf[start..]);
            // `R: Unpin`: a `Pin<&mut R>` can be made from the `&mut R`.
            let result = Pin::new(&mut *this.reader).poll_read(cx, &mut read_buf);
            let n = read_buf.filled().len();
            // Keep the bytes read, drop the zeros after them.
            this.buf.truncate(start + n);
            match result {
                // The reader has registered our waker: we may wait too.
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // A read of zero bytes is the end of the input.
                Poll::Ready(Ok(())) if n == 0 => return Poll::Ready(Ok(this.read)),
                Poll::Ready(Ok(())) => this.read += n,
            }
        }
    }
}
// ANCHOR_END: read_to_end

// ANCHOR: borrows_itself
/// Reads all of `reader` into a new vector. While it waits at the `.await`,
/// the future of this function holds `reader` and `buf`, and also the
/// `ReadToEnd`, whose two references point at them: into the same future.
async fn read_all(mut reader: impl AsyncRead + Unpin) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    read_to_end(&mut reader, &mut buf).await?;
    Ok(buf)
}
// ANCHOR_END: borrows_itself

// ANCHOR: main
#[tokio::main]
async fn main() -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await?;
        for chunk in ["bytes ", "that arrive ", "in three pieces"] {
            socket.write_all(chunk.as_bytes()).await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok::<_, io::Error>(())
        // Dropping `socket` closes it: the reader sees the end.
    });

    let mut stream = TcpStream::connect(address).await?;
    let mut buf = b"already in the buffer: ".to_vec();
    let n = read_to_end(&mut stream, &mut buf).await?;
    println!("read {n} bytes");
    println!("{:?}", String::from_utf8_lossy(&buf));

    let all = read_all(&b"from a slice"[..]).await?;
    println!("read_all: {:?}", String::from_utf8_lossy(&all));
    Ok(())
}
// ANCHOR_END: main

// ANCHOR: tests
#[cfg(test)]
mod tests {
    use std::{marker::PhantomPinned, pin::pin, task::Waker};

    use pin_project_lite::pin_project;

    use super::*;

    pin_project! {
        /// A reader that returns `Pending` before every byte, and before
        /// the end. `PhantomPinned` makes it `!Unpin`.
        struct Trickle {
            data: Vec<u8>,
            at: usize,
            ready: bool,
            #[pin]
            _pin: PhantomPinned,
        }
    }

    impl Trickle {
        fn new(data: &[u8]) -> Self {
            Self {
                data: data.to_vec(),
                at: 0,
                ready: false,
                _pin: PhantomPinned,
            }
        }
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.project();
            if !*this.ready {
                *this.ready = true;
                // The rule: arrange a wake-up before `Pending`.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            *this.ready = false;
            if let Some(&byte) = this.data.get(*this.at) {
                buf.put_slice(&[byte]);
                *this.at += 1;
            }
            Poll::Ready(Ok(()))
        }
    }

    /// Polls `future` until it is ready, and counts the `Pending`s.
    fn run<F: Future>(future: F) -> (F::Output, usize) {
        let mut future = pin!(future);
        let mut cx = Context::from_waker(Waker::noop());
        let mut pendings = 0;
        loop {
            match future.as_mut().poll(&mut cx) {
                Poll::Ready(output) => return (output, pendings),
                Poll::Pending => pendings += 1,
            }
        }
    }

    #[test]
    fn reads_everything_from_a_reader_that_trickles() {
        let input = b"one byte at a time, with a Pending before each";
        // `Trickle` is not `Unpin`: pin it first. `Pin<&mut Trickle>` is
        // an `AsyncRead` too, and it is `Unpin`.
        let mut reader = pin!(Trickle::new(input));
        let mut buf = b"kept: ".to_vec();
        let (n, pendings) = run(read_to_end(&mut reader, &mut buf));
        assert_eq!(n.unwrap(), input.len());
        assert_eq!(buf, [&b"kept: "[..], input].concat());
        assert_eq!(pendings, input.len() + 1);
    }

    #[test]
    fn an_empty_reader_reads_zero_bytes() {
        let mut reader = pin!(Trickle::new(b""));
        let mut buf = Vec::new();
        let (n, pendings) = run(read_to_end(&mut reader, &mut buf));
        assert_eq!(n.unwrap(), 0);
        assert!(buf.is_empty());
        assert_eq!(pendings, 1);
    }

    #[test]
    fn reads_more_than_one_chunk() {
        let input: Vec<u8> = (0..3 * CHUNK + 5).map(|i| i as u8).collect();
        let (all, pendings) = run(read_all(&input[..]));
        assert_eq!(all.unwrap(), input);
        assert_eq!(pendings, 0);
    }

    #[test]
    fn an_error_ends_the_future() {
        struct Broken;
        impl AsyncRead for Broken {
            fn poll_read(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
            }
        }
        let mut buf = b"untouched".to_vec();
        let (result, _) = run(read_to_end(&mut Broken, &mut buf));
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(buf, b"untouched");
    }
}
// ANCHOR_END: tests

// ANCHOR: unpin_checks
#[cfg(test)]
mod unpin_checks {
    use std::marker::{PhantomData, PhantomPinned};

    use super::*;

    /// Compiles only if `T: Unpin`.
    fn assert_unpin<T: Unpin>() {}

    /// Tells whether the type of a value is `Unpin`, even a type that has
    /// no name, such as an async block's. When `T: Unpin`, the inherent
    /// method applies, and Rust picks an inherent method before a trait's;
    /// when not, only the trait's method is left.
    struct Probe<T>(PhantomData<T>);
    impl<T: Unpin> Probe<T> {
        fn is_unpin(&self) -> bool {
            true
        }
    }
    trait NotUnpin {
        fn is_unpin(&self) -> bool {
            false
        }
    }
    impl<T> NotUnpin for Probe<T> {}
    fn probe<T>(_: &T) -> Probe<T> {
        Probe(PhantomData)
    }

    #[test]
    fn read_to_end_may_move_but_a_future_that_awaits_it_may_not() {
        // Two references and a number: moving them moves no reader and no
        // vector. So it is `Unpin`, even over a type that is not.
        assert_unpin::<ReadToEnd<'_, TcpStream>>();
        assert_unpin::<ReadToEnd<'_, PhantomPinned>>();
        let (mut reader, mut buf) = (&b"abc"[..], Vec::new());
        assert!(probe(&read_to_end(&mut reader, &mut buf)).is_unpin());

        // A future that holds `buf` and a `ReadToEnd` borrowing it: not `Unpin`.
        assert!(!probe(&read_all(&b"abc"[..])).is_unpin());
        // The compiler does not look at what an async block borrows: every
        // one is `!Unpin`, even one that borrows nothing.
        assert!(!probe(&async {}).is_unpin());
        // tokio's own `ReadToEnd` is `!Unpin` by choice: it holds a
        // `PhantomPinned`, "for compatibility with async trait methods".
        let (mut reader, mut buf) = (&b"abc"[..], Vec::new());
        let tokio_read_to_end = tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut buf);
        assert!(!probe(&tokio_read_to_end).is_unpin());
        // The same check on types we know, to show the probe tells the truth.
        assert!(probe(&0_u32).is_unpin());
        assert!(!probe(&PhantomPinned).is_unpin());
    }
}
// ANCHOR_END: unpin_checks
