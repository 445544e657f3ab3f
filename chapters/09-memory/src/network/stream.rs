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

use bytes::{Buf, Bytes, BytesMut};
use futures::{Sink, Stream, stream::FusedStream};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    task::JoinHandle,
    time::{Instant, Sleep},
};
use tokio_util::io::poll_read_buf;

use super::frame::{
    DEFAULT_MAX_FRAME, ENTRY_COST, FrameCoder, HEADER_LEN, INLINE_LIMIT, READ_CHUNK, decode_held,
    decodes_inline, parse_header, write_frame,
};
use crate::{ConnectionBudget, Held, KvError};
// ANCHOR_END: imports

// ANCHOR: struct
/// Once this many encoded bytes wait in the write buffer, `poll_ready`
/// writes them out before it accepts another message.
pub const WRITE_BACKPRESSURE: usize = 64 * 1024;

/// How large a stream's read and write buffers may grow even when the
/// budget is full: enough for a short request, or a short answer that
/// says no. (What they hold is counted all the same.)
pub const FREE_ROOM: usize = 1024;

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
    /// A whole frame encoded elsewhere, to write after `write_buf`.
    pending: Option<(Bytes, Held)>,
    /// Where the memory this stream holds for its peer is counted, and
    /// what each buffer holds: `read_buf`'s and `write_buf`'s capacity,
    /// and the frame of the message last handed out, until the next call.
    budget: ConnectionBudget,
    read_held: Held,
    write_held: Held,
    item_held: Held,
    max_frame: usize,
    /// Set once the stream cannot yield another message.
    terminated: bool,
    /// A large frame being decoded on a blocking thread.
    decoding: Option<JoinHandle<(Result<In, KvError>, Held)>>,
    /// A large message being encoded on a blocking thread.
    encoding: Option<JoinHandle<Result<(BytesMut, Held), KvError>>>,
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
    /// A stream whose buffers are counted against no budget, until
    /// [`ProstStream::budget`] gives it one.
    pub fn new(stream: S) -> Self {
        let budget = ConnectionBudget::unlimited();
        Self {
            stream,
            read_buf: BytesMut::new(),
            write_buf: BytesMut::new(),
            pending: None,
            read_held: budget.empty(),
            write_held: budget.empty(),
            item_held: budget.empty(),
            budget,
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

    /// Holds the bytes of this stream's buffers against `budget`. A frame
    /// that does not fit ends the stream with an error; an answer that
    /// does not fit is refused by `start_send`, and the stream goes on.
    pub fn budget(mut self, budget: ConnectionBudget) -> Self {
        self.read_held = budget.empty();
        self.write_held = budget.empty();
        self.item_held = budget.empty();
        self.budget = budget;
        self
    }

    /// Gives back what the message last handed out holds against the
    /// budget, for a caller that is done with it; the next call to
    /// `poll_next` does anyway.
    pub fn release_item(&mut self) {
        let _ = self.item_held.set(0);
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
    fn next_frame(&mut self) -> Result<Option<(BytesMut, Held)>, KvError> {
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
        // The frame takes its part of the buffer, and of what it holds.
        let frame = self.read_buf.split_to(HEADER_LEN + len);
        let held = self.read_held.split(frame.len());
        if frame.len() > READ_CHUNK {
            // The rest of the buffer still shares the large frame's
            // memory. Copy the rest (the start of the next frames, if any)
            // to a buffer of its own, so that the memory goes with the
            // frame and a connection does not keep its largest buffer.
            self.read_buf = BytesMut::from(&self.read_buf[..]);
            self.read_held.set(self.read_buf.capacity())?;
        }
        Ok(Some((frame, held)))
    }

    /// Makes room in `read_buf` for more bytes, once it is full. It grows
    /// with what has come: it doubles (so a large frame is copied a few
    /// times, not at every read), but never past the end of the frame its
    /// header announced, and the room is held against the budget before
    /// it is allocated.
    fn make_room(&mut self) -> Result<(), KvError> {
        let (len, capacity) = (self.read_buf.len(), self.read_buf.capacity());
        if len < capacity {
            return Ok(());
        }
        let mut room = (2 * capacity).max(FREE_ROOM);
        if len >= HEADER_LEN {
            // `next_frame` found no whole frame: its end is further on.
            let (_, payload) = parse_header(&self.read_buf[..HEADER_LEN]);
            room = room.min(HEADER_LEN + payload);
        }
        let room = room.max(len + 1);
        hold_room(&mut self.read_held, room)?;
        let mut grown = BytesMut::with_capacity(room);
        grown.extend_from_slice(&self.read_buf);
        self.read_buf = grown;
        Ok(())
    }
    // ANCHOR_END: next_frame

    // ANCHOR: poll_write_buf
    /// Writes `write_buf` out, as far as the stream takes it now.
    fn poll_write_buf(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), KvError>> {
        ready!(poll_write_all(&mut self.stream, cx, &mut self.write_buf))?;
        if self.write_held.bytes() > READ_CHUNK {
            // Empty, but large after a large frame: let the memory go.
            self.write_buf = BytesMut::new();
            self.write_held.set(0)?;
        }
        if let Some((frame, _)) = &mut self.pending {
            ready!(poll_write_all(&mut self.stream, cx, frame))?;
            self.pending = None;
        }
        Poll::Ready(Ok(()))
    }

    /// Makes room in `write_buf` for `more` bytes, held against the budget
    /// before they are allocated (see `hold_room`).
    fn make_write_room(&mut self, more: usize) -> Result<(), KvError> {
        let (len, capacity) = (self.write_buf.len(), self.write_buf.capacity());
        if capacity - len >= more {
            return Ok(());
        }
        // A buffer of its own rather than `reserve`, which may allocate more
        // than this (it counts the part already written and cut off).
        let room = (2 * capacity).max(len + more);
        hold_room(&mut self.write_held, room)?;
        let mut grown = BytesMut::with_capacity(room);
        grown.extend_from_slice(&self.write_buf);
        self.write_buf = grown;
        Ok(())
    }

    /// Puts a frame encoded elsewhere (a published message, encoded once
    /// for all its subscribers) after the frames waiting to be written.
    /// Call `poll_ready` first, as for `start_send`; `held` is what the
    /// frame holds against the budget, given back once it is written.
    pub fn start_send_frame(&mut self, frame: Bytes, held: Held) {
        debug_assert!(self.pending.is_none(), "poll_ready first");
        self.pending = Some((frame, held));
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
            let (frame, held) =
                done.map_err(|err| KvError::Internal(format!("encoding failed: {err}")))??;
            // Nothing was put in `write_buf` since the job began (see
            // `poll_ready`): the frame goes after what is there.
            self.pending = Some((frame.freeze(), held));
        }
        Poll::Ready(Ok(()))
    }
}
// ANCHOR_END: poll_encoding

// ANCHOR: hold
/// Holds `bytes` of room in a buffer: up to [`FREE_ROOM`] always (a short
/// request or answer gets through even when the budget is full), more
/// only if the budget has it.
fn hold_room(held: &mut Held, bytes: usize) -> Result<(), KvError> {
    if bytes <= FREE_ROOM {
        held.set_anyway(bytes);
        return Ok(());
    }
    held.set(bytes)
}
// ANCHOR_END: hold

// ANCHOR: poll_write_all
/// Writes all of `buf` to `stream`, as far as it takes it now; what was
/// written is cut off the front of `buf`.
fn poll_write_all<S: AsyncWrite + Unpin>(
    stream: &mut S,
    cx: &mut Context<'_>,
    buf: &mut impl Buf,
) -> Poll<Result<(), KvError>> {
    while buf.has_remaining() {
        let n = ready!(Pin::new(&mut *stream).poll_write(cx, buf.chunk()))?;
        if n == 0 {
            // A stream that takes nothing will never take the rest.
            return Poll::Ready(Err(io::Error::from(ErrorKind::WriteZero).into()));
        }
        buf.advance(n);
    }
    Poll::Ready(Ok(()))
}
// ANCHOR_END: poll_write_all

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
        // The message handed out last has been used by now.
        this.release_item();
        loop {
            // A large frame is being decoded elsewhere: its message (or
            // the reason it does not decode) is the next item.
            if let Some(job) = &mut this.decoding {
                let done = ready!(Pin::new(job).poll(cx));
                this.decoding = None;
                let decoded = match done {
                    Ok((decoded, held)) => {
                        this.item_held = held;
                        decoded
                    }
                    Err(err) => Err(KvError::Internal(format!("decoding failed: {err}"))),
                };
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
                Ok(Some((mut frame, held))) if decodes_inline::<In>(&frame) => {
                    this.item_held = held;
                    return Poll::Ready(Some(In::decode_frame(&mut frame, this.max_frame)));
                }
                // Large or compressed: decode on a thread meant for
                // blocking work, and poll the job at the top of the loop.
                // The frame's bytes, and those it inflates to, are held
                // until the message has been used.
                Ok(Some((mut frame, mut held))) => {
                    let max = this.max_frame;
                    let job = move || (decode_held(&mut frame, max, Some(&mut held)), held);
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
            if let Err(err) = this.make_room() {
                this.terminated = true;
                return Poll::Ready(Some(Err(err)));
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
        // A frame encoded elsewhere is written before anything is put in
        // `write_buf`, so that the frames leave in order.
        if this.pending.is_some() || this.write_buf.len() >= WRITE_BACKPRESSURE {
            ready!(this.poll_write_buf(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Encodes the message into the write buffer; writes nothing yet. A
    /// large message is encoded (and compressed) on a thread meant for
    /// blocking work: `poll_ready` and `poll_flush` wait for it.
    fn start_send(self: Pin<&mut Self>, item: Out) -> Result<(), KvError> {
        let this = self.get_mut();
        let len = item.encoded_len();
        if len <= INLINE_LIMIT {
            this.make_write_room(HEADER_LEN + len)?;
            return item.encode_frame(&mut this.write_buf);
        }
        // Held while encoding: the message's entries, its payload, and the
        // frame made of it (at most as large again); then the frame alone.
        let mut held = (this.budget).hold(item.entries() * ENTRY_COST + 2 * len + HEADER_LEN)?;
        this.encoding = Some(tokio::task::spawn_blocking(move || {
            let payload = item.encode_to_vec();
            drop(item);
            let mut frame = BytesMut::with_capacity(HEADER_LEN + payload.len());
            write_frame(&payload, &mut frame)?;
            held.set(frame.capacity())?;
            Ok((frame, held))
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
    use crate::{CommandRequest, INLINE_ENTRIES, network::dummy::DummyStream};
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
        // The buffer grew to the large frame's end and no further, and
        // the frame took its memory with it.
        assert!(stream.read_buf.is_empty(), "{}", stream.read_buf.len());
        assert!(
            stream.read_buf.capacity() <= READ_CHUNK,
            "the buffer is small"
        );
        assert_eq!(stream.next().await.unwrap().unwrap(), small);
    }
    // ANCHOR_END: lean_test

    // ANCHOR: close_test
    #[test]
    fn only_small_uncompressed_frames_with_few_entries_decode_inline() {
        let inline = |request: CommandRequest| {
            let mut frame = BytesMut::new();
            request.encode_frame(&mut frame).unwrap();
            (frame.len(), decodes_inline::<CommandRequest>(&frame))
        };
        assert!(inline(CommandRequest::new_hget("t", "k")).1);
        // Compresses to a few bytes, but inflates to 100 kB.
        let (len, decodes) = inline(CommandRequest::new_hset("t", "k", "v".repeat(100_000)));
        assert!(len < INLINE_LIMIT && !decodes);
        // The table counts too: with it, the most entries, then one more.
        let keys = |count: usize| (0..count).map(|i| i.to_string());
        assert!(inline(CommandRequest::new_hmget("t", keys(INLINE_ENTRIES - 1))).1);
        let (len, decodes) = inline(CommandRequest::new_hmget("t", keys(INLINE_ENTRIES)));
        assert!(len < 1024 && !decodes);
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
