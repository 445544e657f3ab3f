// ANCHOR: imports
//! `ProstStream`: frames on a byte stream, as a `futures` `Stream` of
//! decoded messages and a `Sink` of messages to encode.

use std::{
    future::Future,
    io::{self, ErrorKind},
    marker::PhantomData,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Buf, BytesMut};
use futures::{Sink, Stream, stream::FusedStream};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    task::JoinHandle,
    time::{Instant, Sleep},
};
use tokio_util::io::poll_read_buf;

use super::frame::{
    DEFAULT_MAX_FRAME, FrameCoder, HEADER_LEN, INLINE_LIMIT, READ_CHUNK, decodes_inline,
    parse_header,
};
use crate::KvError;
// ANCHOR_END: imports

// ANCHOR: struct
/// Once this many encoded bytes wait in the write buffer, `poll_ready`
/// writes them out before it accepts another message.
pub const WRITE_BACKPRESSURE: usize = 64 * 1024;

/// Frames on a byte stream `S`: a [`Stream`] of the `In` messages that
/// arrive and a [`Sink`] for the `Out` messages to send.
///
/// Any `poll_*` call may return `Pending` half-way, with a frame partly
/// read or partly written, and the next call must go on from exactly
/// there. So everything in flight lives here, in the struct, and nothing
/// in a local variable of a `poll_*` method.
pub struct ProstStream<S, In, Out> {
    stream: S,
    /// Bytes read but not yet decoded: part of a frame, or several frames.
    read_buf: BytesMut,
    /// Encoded frames not yet written. What was written is cut off the
    /// front, so the buffer's start is the write position.
    write_buf: BytesMut,
    max_frame: usize,
    /// Set once the stream cannot yield another message.
    terminated: bool,
    /// A large frame being decoded on a blocking thread.
    decoding: Option<JoinHandle<Result<In, KvError>>>,
    /// A large message being encoded on a blocking thread.
    encoding: Option<JoinHandle<Result<BytesMut, KvError>>>,
    /// How long to wait for a frame to start, and then to finish.
    idle_timeout: Option<Duration>,
    frame_timeout: Option<Duration>,
    /// The timer of those waits, made at the first one and then reused.
    timer: Option<Pin<Box<Sleep>>>,
    /// What the timer is set for: `Some(true)` the rest of a frame,
    /// `Some(false)` a new one, `None` nothing yet since the last frame.
    armed: Option<bool>,
    // No field holds an `Out`, and a type parameter that no field uses is
    // an error (E0392). `fn(Out)` names it as something the stream takes
    // but never owns, so `Out` does not decide whether the stream is
    // `Send`, `Sync` or `Unpin`.
    _out: PhantomData<fn(Out)>,
}
// ANCHOR_END: struct

// ANCHOR: new
impl<S, In, Out> ProstStream<S, In, Out>
where
    S: AsyncRead + AsyncWrite + Unpin,
    In: FrameCoder,
    Out: FrameCoder,
{
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            read_buf: BytesMut::new(),
            write_buf: BytesMut::new(),
            max_frame: DEFAULT_MAX_FRAME,
            terminated: false,
            decoding: None,
            encoding: None,
            idle_timeout: None,
            frame_timeout: None,
            timer: None,
            armed: None,
            _out: PhantomData,
        }
    }

    /// Sets how long `next` may wait for a frame to start (`idle`) and,
    /// once it has started, for the rest of it (`frame`); `None` waits for
    /// ever. A wait that runs out ends the stream with a timeout error.
    pub fn read_timeouts(mut self, idle: Option<Duration>, frame: Option<Duration>) -> Self {
        self.idle_timeout = idle;
        self.frame_timeout = frame;
        self
    }

    /// Changes the idle timeout of a stream in use.
    pub fn set_idle_timeout(&mut self, idle: Option<Duration>) {
        self.idle_timeout = idle;
        self.armed = None;
    }

    /// Sets the largest payload accepted, before and after inflating.
    pub fn max_frame(mut self, max_len: usize) -> Self {
        self.max_frame = max_len;
        self
    }

    /// The stream inside, for what the frames do not cover (TLS details,
    /// shutting down). Bytes still in the buffers are not in it.
    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.stream
    }
    // ANCHOR_END: new

    // ANCHOR: next_frame
    /// Splits the first whole frame off `read_buf`, if it holds one.
    /// A header over the limit is an error at once: its payload will not
    /// be read, so no later frame can be found either.
    fn next_frame(&mut self) -> Result<Option<BytesMut>, KvError> {
        if self.read_buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let (_, len) = parse_header(&self.read_buf[..HEADER_LEN]);
        if len > self.max_frame {
            return Err(KvError::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        if self.read_buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let frame = self.read_buf.split_to(HEADER_LEN + len);
        if frame.len() > READ_CHUNK {
            // The rest of the buffer still shares the large frame's
            // memory. Copy the rest (the start of the next frames, if any)
            // to a buffer of its own, so that the memory goes with the
            // frame and a connection does not keep its largest buffer.
            self.read_buf = BytesMut::from(&self.read_buf[..]);
        }
        Ok(Some(frame))
    }
    // ANCHOR_END: next_frame

    // ANCHOR: poll_write_buf
    /// Writes `write_buf` out, as far as the stream takes it now.
    fn poll_write_buf(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), KvError>> {
        while !self.write_buf.is_empty() {
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &self.write_buf))?;
            if n == 0 {
                // A stream that takes nothing will never take the rest.
                return Poll::Ready(Err(io::Error::from(ErrorKind::WriteZero).into()));
            }
            self.write_buf.advance(n);
        }
        if self.write_buf.capacity() > READ_CHUNK {
            // Empty, but large after a large frame: let the memory go.
            self.write_buf = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
    // ANCHOR_END: poll_write_buf

    // ANCHOR: poll_deadline
    /// Called when a read has to wait: `Ready` with the error once the
    /// wait has run out. The clock starts at the first wait of a frame (or
    /// of the pause before one), so a frame that arrives whole in one read
    /// never touches the timer.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<KvError> {
        let inside = !self.read_buf.is_empty();
        let limit = if inside {
            self.frame_timeout
        } else {
            self.idle_timeout
        };
        let Some(limit) = limit else {
            return Poll::Pending;
        };
        let sleep = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if self.armed != Some(inside) {
            // The first wait since the last frame, or a frame has started
            // since the last wait: the clock starts now.
            sleep.as_mut().reset(Instant::now() + limit);
            self.armed = Some(inside);
        }
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(if inside {
            let got = self.read_buf.len();
            KvError::Timeout(format!(
                "a frame did not finish within {limit:?} ({got} bytes came)"
            ))
        } else {
            KvError::Timeout(format!("no request for {limit:?}"))
        })
    }
    // ANCHOR_END: poll_deadline

    // ANCHOR: poll_encoding
    /// Waits for a large message being encoded, if there is one, and puts
    /// its frame in the write buffer, after the frames before it.
    fn poll_encoding(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), KvError>> {
        if let Some(job) = &mut self.encoding {
            let done = ready!(Pin::new(job).poll(cx));
            self.encoding = None;
            let frame =
                done.map_err(|err| KvError::Internal(format!("encoding failed: {err}")))??;
            // Moves `frame` in if the buffer is empty, else copies it.
            self.write_buf.unsplit(frame);
        }
        Poll::Ready(Ok(()))
    }
}
// ANCHOR_END: poll_encoding

// ANCHOR: stream
impl<S, In, Out> Stream for ProstStream<S, In, Out>
where
    S: AsyncRead + AsyncWrite + Unpin,
    In: FrameCoder,
    Out: FrameCoder,
{
    type Item = Result<In, KvError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Every field is `Unpin`, so a pinned `ProstStream` may be used as
        // a plain `&mut`.
        let this = self.get_mut();
        loop {
            // A large frame is being decoded elsewhere: its message (or
            // the reason it does not decode) is the next item.
            if let Some(job) = &mut this.decoding {
                let done = ready!(Pin::new(job).poll(cx));
                this.decoding = None;
                let decoded = done
                    .map_err(|err| KvError::Internal(format!("decoding failed: {err}")))
                    .and_then(|decoded| decoded);
                return Poll::Ready(Some(decoded));
            }
            if this.terminated {
                return Poll::Ready(None);
            }
            let next = this.next_frame();
            if let Ok(Some(_)) = next {
                // The wait is over: the next one starts its own clock.
                this.armed = None;
            }
            match next {
                // A whole frame: decode it. If it does not decode, the
                // error is the item, and the next frame comes after it.
                Ok(Some(mut frame)) if decodes_inline(&frame) => {
                    return Poll::Ready(Some(In::decode_frame(&mut frame, this.max_frame)));
                }
                // Large or compressed: decode on a thread meant for
                // blocking work, and poll the job at the top of the loop.
                Ok(Some(mut frame)) => {
                    let max = this.max_frame;
                    let job = move || In::decode_frame(&mut frame, max);
                    this.decoding = Some(tokio::task::spawn_blocking(job));
                    continue;
                }
                Ok(None) => {}
                Err(err) => {
                    this.terminated = true;
                    return Poll::Ready(Some(Err(err)));
                }
            }

            // No whole frame yet: read more. `ready!` returns `Pending`
            // from here if no bytes are there; whatever was read before
            // stays in `read_buf` for the next call.
            if this.read_buf.capacity() == this.read_buf.len() {
                this.read_buf.reserve(READ_CHUNK);
            }
            let read = match poll_read_buf(Pin::new(&mut this.stream), cx, &mut this.read_buf) {
                Poll::Ready(read) => read,
                Poll::Pending => {
                    let err = ready!(this.poll_deadline(cx));
                    this.terminated = true;
                    return Poll::Ready(Some(Err(err)));
                }
            };
            let ended_cleanly = this.read_buf.is_empty();
            match read {
                Ok(n) if n > 0 => continue,
                // The peer hung up (TLS may say so as UnexpectedEof, see
                // `read_frame`): fine between frames, an error inside one.
                Ok(_) => this.terminated = true,
                Err(err) if err.kind() == ErrorKind::UnexpectedEof => this.terminated = true,
                Err(err) => {
                    this.terminated = true;
                    return Poll::Ready(Some(Err(err.into())));
                }
            }
            if !ended_cleanly {
                let got = this.read_buf.len();
                this.read_buf.clear();
                let message = format!("stream ended inside a frame, after {got} bytes");
                return Poll::Ready(Some(Err(KvError::BadFrame(message))));
            }
        }
    }
}

impl<S, In, Out> FusedStream for ProstStream<S, In, Out>
where
    S: AsyncRead + AsyncWrite + Unpin,
    In: FrameCoder,
    Out: FrameCoder,
{
    fn is_terminated(&self) -> bool {
        self.terminated
    }
}
// ANCHOR_END: stream

// ANCHOR: sink
impl<S, In, Out> Sink<Out> for ProstStream<S, In, Out>
where
    S: AsyncRead + AsyncWrite + Unpin,
    In: FrameCoder,
    Out: FrameCoder,
{
    type Error = KvError;

    /// Ready for another message, unless much is waiting to be written:
    /// then write first, so that a fast sender cannot fill memory.
    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), KvError>> {
        let this = self.get_mut();
        ready!(this.poll_encoding(cx))?;
        if this.write_buf.len() >= WRITE_BACKPRESSURE {
            ready!(this.poll_write_buf(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Encodes the message into the write buffer; writes nothing yet. A
    /// large message is encoded (and compressed) on a thread meant for
    /// blocking work: `poll_ready` and `poll_flush` wait for it.
    fn start_send(self: Pin<&mut Self>, item: Out) -> Result<(), KvError> {
        let this = self.get_mut();
        if item.encoded_len() <= INLINE_LIMIT {
            return item.encode_frame(&mut this.write_buf);
        }
        this.encoding = Some(tokio::task::spawn_blocking(move || {
            let mut frame = BytesMut::new();
            item.encode_frame(&mut frame)?;
            Ok(frame)
        }));
        Ok(())
    }

    /// Writes everything buffered, then flushes the stream.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), KvError>> {
        let this = self.get_mut();
        ready!(this.poll_encoding(cx))?;
        ready!(this.poll_write_buf(cx))?;
        ready!(Pin::new(&mut this.stream).poll_flush(cx))?;
        Poll::Ready(Ok(()))
    }

    /// Flushes, then shuts the stream down for writing (on TLS, this sends
    /// close_notify).
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), KvError>> {
        let this = self.get_mut();
        ready!(this.poll_encoding(cx))?;
        ready!(this.poll_write_buf(cx))?;
        ready!(Pin::new(&mut this.stream).poll_flush(cx))?;
        ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
        Poll::Ready(Ok(()))
    }
}
// ANCHOR_END: sink

// ANCHOR: test_imports
#[cfg(test)]
mod tests {
    use std::io::ErrorKind;

    use bytes::BufMut;
    use futures::{FutureExt, SinkExt, StreamExt, TryStreamExt};
    use proptest::prelude::*;

    use super::*;
    use crate::{CommandRequest, network::dummy::DummyStream};
    // ANCHOR_END: test_imports

    // ANCHOR: round_trip_tests
    /// A loopback `ProstStream` that reads back the requests it sends.
    type Loopback = ProstStream<DummyStream, CommandRequest, CommandRequest>;

    fn requests(count: usize) -> Vec<CommandRequest> {
        // Sizes from a few bytes to well past the compression limit.
        (0..count)
            .map(|i| CommandRequest::new_hset("t", i.to_string(), "v".repeat(i * 97 % 5000)))
            .collect()
    }

    #[tokio::test]
    async fn send_then_receive() {
        let mut stream = Loopback::new(DummyStream::new(BytesMut::new()));
        let request = CommandRequest::new_hget("t", "k");
        stream.send(request.clone()).await.unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), request);
    }

    #[tokio::test]
    async fn many_frames_through_one_byte_chunks() {
        let mut stream = Loopback::new(DummyStream::new(BytesMut::new()).trickle(1));
        let requests = requests(30);
        for request in &requests {
            stream.send(request.clone()).await.unwrap();
            assert_eq!(&stream.next().await.unwrap().unwrap(), request);
        }
    }

    #[tokio::test]
    async fn several_frames_fed_before_one_flush() {
        let mut stream = Loopback::new(DummyStream::new(BytesMut::new()).trickle(3));
        let requests = requests(5);
        for request in &requests {
            stream.feed(request.clone()).await.unwrap();
        }
        assert!(
            stream.inner_mut().unread().is_empty(),
            "feed writes nothing"
        );
        stream.flush().await.unwrap();
        stream.close().await.unwrap();
        let received: Vec<_> = stream.try_collect().await.unwrap();
        assert_eq!(received, requests);
    }
    // ANCHOR_END: round_trip_tests

    // ANCHOR: error_tests
    #[tokio::test]
    async fn a_corrupt_frame_then_a_good_one() {
        let good = CommandRequest::new_hexist("t", "k");
        let mut wire = BytesMut::new();
        wire.put_u32(3);
        wire.extend_from_slice(b"\xff\xff\xff");
        good.encode_frame(&mut wire).unwrap();
        let mut stream = Loopback::new(DummyStream::new(wire).trickle(2));

        let err = stream.next().await.unwrap().unwrap_err();
        assert!(matches!(err, KvError::Decode(_)), "{err}");
        assert!(!stream.is_terminated(), "still in step");
        assert_eq!(stream.next().await.unwrap().unwrap(), good);
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_ends_the_stream() {
        let mut wire = BytesMut::new();
        wire.put_u32(1 << 20);
        let mut stream = Loopback::new(DummyStream::new(wire)).max_frame(1024);
        let err = stream.next().await.unwrap().unwrap_err();
        assert!(matches!(err, KvError::FrameTooLarge { .. }), "{err}");
        assert!(stream.is_terminated());
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn an_end_inside_a_frame_is_an_error_then_the_end() {
        let mut wire = BytesMut::new();
        CommandRequest::new_hget("t", "k")
            .encode_frame(&mut wire)
            .unwrap();
        wire.truncate(wire.len() - 1);
        let mut stream = Loopback::new(DummyStream::new(wire));
        let err = stream.next().await.unwrap().unwrap_err();
        assert!(
            err.to_string().contains("stream ended inside a frame"),
            "{err}"
        );
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn leaving_without_close_notify_between_frames_is_a_clean_end() {
        let stream = DummyStream::new(BytesMut::new()).fail_with(ErrorKind::UnexpectedEof);
        assert!(Loopback::new(stream).next().await.is_none());
    }

    #[tokio::test]
    async fn a_stream_that_takes_no_bytes_is_an_error_not_a_hang() {
        let mut stream = Loopback::new(DummyStream::new(BytesMut::new()).write_zero());
        let err = stream
            .send(CommandRequest::new_hget("t", "k"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, KvError::Io(ref e) if e.kind() == ErrorKind::WriteZero),
            "{err}"
        );
    }
    // ANCHOR_END: error_tests

    // ANCHOR: backpressure_test
    #[tokio::test]
    async fn poll_ready_holds_back_a_sender_the_reader_cannot_keep_up_with() {
        // Nobody reads the other end of this pipe, so once its 4 KiB are
        // full every write is `Pending`.
        let (near, _far) = tokio::io::duplex(4096);
        let mut stream = ProstStream::<_, CommandRequest, CommandRequest>::new(near);
        let request = CommandRequest::new_hset("t", "k", "x".repeat(1000));
        let mut accepted = 0;
        while stream.feed(request.clone()).now_or_never().is_some() {
            accepted += 1;
            assert!(accepted < 1000, "the sink never pushed back");
        }
        // It took about one threshold's worth of frames, wrote the 4 KiB
        // the pipe holds, and now waits for the pipe before taking more.
        let waiting = stream.write_buf.len();
        assert!(waiting >= WRITE_BACKPRESSURE - 4096, "{waiting}");
        assert!(waiting < WRITE_BACKPRESSURE + 1100, "{waiting}");
    }
    // ANCHOR_END: backpressure_test

    // ANCHOR: timeout_tests
    #[tokio::test]
    async fn a_frame_must_finish_within_the_frame_timeout() {
        let short = std::time::Duration::from_millis(200);
        let (mut near, far) = tokio::io::duplex(64);
        let mut stream = ProstStream::<_, CommandRequest, CommandRequest>::new(far)
            .read_timeouts(None, Some(short));
        // A whole frame, slowly: each byte well within the timeout, so it
        // is only the whole frame's time that counts.
        let mut frame = BytesMut::new();
        CommandRequest::new_hget("t", "k")
            .encode_frame(&mut frame)
            .unwrap();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for byte in frame.iter() {
                near.write_all(&[*byte]).await.unwrap();
                tokio::time::sleep(short / 50).await;
            }
            // Then half a header, and nothing.
            near.write_all(&[0, 0]).await.unwrap();
            near
        });
        assert!(stream.next().await.unwrap().is_ok(), "in time");
        let started = tokio::time::Instant::now();
        let err = stream.next().await.unwrap().unwrap_err();
        assert!(started.elapsed() >= short);
        assert!(err.to_string().contains("did not finish"), "{err}");
        assert!(stream.is_terminated());
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn a_pause_between_frames_is_held_to_the_idle_timeout() {
        let short = std::time::Duration::from_millis(50);
        let (_near, far) = tokio::io::duplex(64);
        let mut stream = ProstStream::<_, CommandRequest, CommandRequest>::new(far)
            .read_timeouts(Some(short), None);
        let err = stream.next().await.unwrap().unwrap_err();
        assert!(matches!(err, KvError::Timeout(_)), "{err}");
        assert!(err.to_string().contains("no request"), "{err}");
    }
    // ANCHOR_END: timeout_tests

    // ANCHOR: lean_test
    #[tokio::test]
    async fn a_large_frame_leaves_no_large_buffer_behind() {
        // Bytes that do not compress (xorshift), so the frame stays large.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let value: Vec<u8> = (0..300_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let mut stream = Loopback::new(DummyStream::new(BytesMut::new()));
        let small = CommandRequest::new_hget("t", "k");
        stream
            .feed(CommandRequest::new_hset("t", "k", value))
            .await
            .unwrap();
        stream.send(small.clone()).await.unwrap();
        assert!(stream.write_buf.capacity() <= READ_CHUNK, "written, let go");

        stream.next().await.unwrap().unwrap();
        assert!(!stream.read_buf.is_empty(), "the small frame follows");
        assert!(
            stream.read_buf.capacity() <= READ_CHUNK,
            "and the buffer is small"
        );
        assert_eq!(stream.next().await.unwrap().unwrap(), small);
    }
    // ANCHOR_END: lean_test

    // ANCHOR: close_test
    #[test]
    fn only_small_uncompressed_frames_decode_inline() {
        let mut frame = BytesMut::new();
        CommandRequest::new_hget("t", "k")
            .encode_frame(&mut frame)
            .unwrap();
        assert!(decodes_inline(&frame));
        frame.clear();
        // Compresses to a few bytes, but inflates to 100 kB.
        CommandRequest::new_hset("t", "k", "v".repeat(100_000))
            .encode_frame(&mut frame)
            .unwrap();
        assert!(frame.len() < INLINE_LIMIT && !decodes_inline(&frame));
    }

    #[tokio::test]
    async fn close_flushes_then_shuts_down() {
        let mut stream = Loopback::new(DummyStream::new(BytesMut::new()).trickle(7));
        stream
            .feed(CommandRequest::new_hget("t", "k"))
            .await
            .unwrap();
        stream.close().await.unwrap();
        assert!(stream.inner_mut().is_shut_down());
        assert!(
            !stream.inner_mut().unread().is_empty(),
            "the frame was written first"
        );
    }
    // ANCHOR_END: close_test

    // ANCHOR: unpin_test
    #[test]
    fn prost_stream_is_unpin_whatever_the_messages_and_send_with_them() {
        fn unpin<T: Unpin>() {}
        fn send_sync<T: Send + Sync>() {}
        // `PhantomPinned` is not `Unpin`, `Rc` neither `Send` nor `Sync`.
        // The stream never pins a message, so it is `Unpin` regardless. A
        // decoding job holds an `In`, so `Send` needs `In: Send`, which
        // every prost message is.
        type Odd = (std::rc::Rc<()>, std::marker::PhantomPinned);
        unpin::<ProstStream<tokio::net::TcpStream, Odd, Odd>>();
        send_sync::<ProstStream<tokio::net::TcpStream, CommandRequest, CommandRequest>>();
    }
    // ANCHOR_END: unpin_test

    // ANCHOR: proptest
    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Any messages, through any chunk size, come out as they went in.
        #[test]
        fn frames_survive_any_chunk_size(
            chunk in 1usize..200,
            sizes in proptest::collection::vec(0usize..6000, 1..12),
        ) {
            let requests: Vec<_> = sizes
                .iter()
                .enumerate()
                .map(|(i, &size)| CommandRequest::new_hset("t", i.to_string(), "z".repeat(size)))
                .collect();
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let received: Vec<CommandRequest> = runtime.block_on(async {
                let mut stream = Loopback::new(DummyStream::new(BytesMut::new()).trickle(chunk));
                for request in &requests {
                    stream.feed(request.clone()).await.unwrap();
                }
                stream.close().await.unwrap();
                stream.try_collect().await.unwrap()
            });
            prop_assert_eq!(received, requests);
        }
    }
}
// ANCHOR_END: proptest
