// ANCHOR: header
//! A `Stream` of lines over any `AsyncBufRead`, with the reader pinned
//! inside it through pin-project-lite.
//!
//! cargo run --example line_stream

use std::{
    io, mem,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use futures::{Stream, StreamExt};
use pin_project_lite::pin_project;
use tokio::io::{AsyncBufRead, AsyncWriteExt, BufReader};
// ANCHOR_END: header

// ANCHOR: line_stream
pin_project! {
    /// The lines of a reader, each without its `\n`. A last line without
    /// a `\n` is still a line; an empty input has no lines.
    struct LineStream<R> {
        // Pinned with the stream, so `R` may be a reader that must not move.
        #[pin]
        reader: R,
        // The start of the current line. A line can arrive in pieces, one
        // poll at a time, and a local variable would not outlive `Pending`.
        line: Vec<u8>,
    }
}

impl<R> LineStream<R> {
    fn new(reader: R) -> Self {
        Self {
            reader,
            line: Vec::new(),
        }
    }
}

impl<R: AsyncBufRead> Stream for LineStream<R> {
    type Item = io::Result<String>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            // The reader's buffered bytes, reading more if it has none. Its
            // `Pending` has registered our waker, so we may return it.
            let available = match this.reader.as_mut().poll_fill_buf(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Ok(bytes)) => bytes,
            };
            if available.is_empty() {
                // The end of the input: yield what is left, then `None`.
                if this.line.is_empty() {
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(into_string(mem::take(this.line))));
            }
            match available.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    this.line.extend_from_slice(&available[..end]);
                    // Tell the reader we are done with the line and its `\n`.
                    this.reader.as_mut().consume(end + 1);
                    return Poll::Ready(Some(into_string(mem::take(this.line))));
                }
                None => {
                    // No end of line yet: keep these bytes, ask for more.
                    let n = available.len();
                    this.line.extend_from_slice(available);
                    this.reader.as_mut().consume(n);
                }
            }
        }
    }
}

fn into_string(line: Vec<u8>) -> io::Result<String> {
    String::from_utf8(line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
// ANCHOR_END: line_stream

// ANCHOR: main
#[tokio::main]
async fn main() -> io::Result<()> {
    // An in-memory pipe: what one end writes, the other reads.
    let (mut writer, reader) = tokio::io::duplex(64);
    tokio::spawn(async move {
        // The lines do not arrive one per write: the first write ends in
        // the middle of the second line, and the last has no newline.
        for chunk in ["first line\nsecond ", "line\n", "third line, no newline"] {
            writer.write_all(chunk.as_bytes()).await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok::<_, io::Error>(())
        // Dropping `writer` here ends the input.
    });

    let mut lines = LineStream::new(BufReader::new(reader));
    while let Some(line) = lines.next().await {
        println!("{:?}", line?);
    }
    println!("end of input");
    Ok(())
}
// ANCHOR_END: main

// ANCHOR: tests
#[cfg(test)]
mod tests {
    use std::{
        marker::PhantomPinned,
        pin::pin,
        task::{Context, Waker},
    };

    use tokio::io::{AsyncRead, ReadBuf};

    use super::*;

    pin_project! {
        /// A reader that returns `Pending` before every byte, and before
        /// the end. `PhantomPinned` makes it `!Unpin`, so these tests also
        /// show that `LineStream` does not need `Unpin`.
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

    /// Polls `stream` to its end by hand, and counts the `Pending`s.
    fn collect<S: Stream>(stream: S) -> (Vec<S::Item>, usize) {
        let mut stream = pin!(stream);
        let mut cx = Context::from_waker(Waker::noop());
        let (mut items, mut pendings) = (Vec::new(), 0);
        loop {
            match stream.as_mut().poll_next(&mut cx) {
                Poll::Ready(Some(item)) => items.push(item),
                Poll::Ready(None) => return (items, pendings),
                Poll::Pending => pendings += 1,
            }
        }
    }

    /// The lines of `input`, read one byte per poll.
    fn trickled_lines(input: &[u8]) -> (Vec<String>, usize) {
        let (items, pendings) = collect(LineStream::new(BufReader::new(Trickle::new(input))));
        let lines = items.into_iter().map(|line| line.unwrap()).collect();
        (lines, pendings)
    }

    #[test]
    fn lines_arrive_whole_from_a_reader_that_trickles() {
        let input = b"one\ntwo\n\nlast, without a newline";
        let (lines, pendings) = trickled_lines(input);
        assert_eq!(lines, ["one", "two", "", "last, without a newline"]);
        // Every line was put together over many polls: one `Pending` came
        // before each byte, and one before each of the two reads that found
        // the end (the first yielded the last line, the second ended it).
        assert_eq!(pendings, input.len() + 2);
    }

    #[test]
    fn an_empty_input_has_no_lines() {
        assert_eq!(trickled_lines(b""), (vec![], 1));
    }

    #[test]
    fn a_final_newline_does_not_make_an_empty_line() {
        assert_eq!(trickled_lines(b"a\nb\n").0, ["a", "b"]);
        assert_eq!(trickled_lines(b"\n").0, [""]);
    }

    #[test]
    fn the_same_lines_when_everything_is_there_at_once() {
        let input: &[u8] = b"one\ntwo\n\nlast";
        let (items, pendings) = collect(LineStream::new(input));
        let lines: Vec<String> = items.into_iter().map(|line| line.unwrap()).collect();
        assert_eq!(lines, ["one", "two", "", "last"]);
        assert_eq!(pendings, 0);
    }

    #[test]
    fn a_line_that_is_not_utf8_is_an_error_and_the_next_one_is_read() {
        let (items, _) = collect(LineStream::new(BufReader::new(Trickle::new(
            b"ok\n\xff\xfe\nafter\n",
        ))));
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].as_ref().unwrap(), "ok");
        assert_eq!(
            items[1].as_ref().unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert_eq!(items[2].as_ref().unwrap(), "after");
    }
}
// ANCHOR_END: tests
