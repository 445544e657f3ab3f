//! The frame format: how a protobuf message travels on a byte stream.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-------------------------------------------------------------+
//! |Z|                  payload length (31 bits)                   |
//! +-+-------------------------------------------------------------+
//! |                 payload (protobuf, gzip if Z = 1) ...
//! ```
//!
//! The header is a big-endian `u32`. Its top bit, Z, says the payload is
//! gzip-compressed; the other 31 bits give the payload's length in bytes,
//! as sent (compressed, if it is).

use std::io::{Read, Write};

use bytes::{Buf, BufMut, BytesMut};
use flate2::{Compression, read::GzDecoder, write::GzEncoder};
use prost::Message;

use crate::{CommandRequest, CommandResponse, KvError, RequestData, budget::Held};

// ANCHOR: constants
/// The size of the frame header.
pub const HEADER_LEN: usize = 4;

/// The header bit that marks a compressed payload.
const COMPRESSED: u32 = 1 << 31;

/// Payloads larger than this are compressed. It is about what fits in one
/// Ethernet packet: an MTU of 1500 bytes, less 20 for the IPv4 header, 20
/// for the TCP header, 20 set aside for IP and TCP options (timestamps
/// alone take 12), and our own 4-byte header. Smaller payloads travel in
/// one packet anyway, so compressing them would cost time and save little.
pub const COMPRESSION_LIMIT: usize = 1436;

/// The largest payload the 31-bit length field can describe.
pub const MAX_WIRE_LEN: usize = (COMPRESSED - 1) as usize;

/// The default limit on a received payload, before and after inflating.
/// Large enough for a value of several MiB, small enough that a peer
/// cannot make us hold much memory.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// How much buffer `read_frame` adds at a time while a payload arrives.
pub(crate) const READ_CHUNK: usize = 64 * 1024;

/// What one entry of a repeated field (a key of `hmget`, a pair of
/// `hmset`, a value of an answer) may cost in memory once decoded, beyond
/// its own bytes: its struct in a `Vec` that may be up to twice as long as
/// needed, plus the smallest heap block for each string in it.
pub const ENTRY_COST: usize = 256;

/// Work on a message is done where the message is, on the async runtime's
/// thread, when it takes microseconds: when it is at most this large, has
/// at most [`INLINE_ENTRIES`] entries, and needs no compressing or
/// inflating. Other work goes to a thread meant for blocking work, so that
/// it cannot hold up the other connections; the trip there and back costs
/// tens of microseconds of thread wake-ups, which is worth paying only for
/// longer work. (Copying 64 KiB takes under 2 µs, so 256 KiB well under
/// 10; see the benchmark page.)
pub const INLINE_LIMIT: usize = 256 * 1024;

/// See [`INLINE_LIMIT`]: decoding, running or encoding an entry (a key, a
/// pair, a value) takes about as long as copying a kilobyte. A frame
/// decoded in place is charged for its bytes but not for its entries (at
/// [`ENTRY_COST`] each): this bound is also what keeps that uncharged part
/// small, 16 KiB at most.
pub const INLINE_ENTRIES: usize = 64;
// ANCHOR_END: constants

// ANCHOR: max_entries
/// The most entries a message may hold, for a frame limit of `max_frame`
/// bytes. Entries then cost at most `max_frame` bytes once decoded, on top
/// of the payload's own bytes: a decoded message never holds more than
/// twice the frame limit, however small its frame was.
pub fn max_entries(max_frame: usize) -> usize {
    max_frame / ENTRY_COST
}
// ANCHOR_END: max_entries

// ANCHOR: frame_coder
/// A message that travels in frames.
pub trait FrameCoder: Message + Default + Sized + 'static {
    /// How deep in the message its repeated fields are: 1 for fields of
    /// the message itself, 2 for fields of a message inside it.
    const ENTRY_DEPTH: usize;

    /// How many entries the message holds: keys, pairs or values.
    fn entries(&self) -> usize;

    /// Appends this message to `buf` as one frame, after whatever `buf`
    /// already holds.
    fn encode_frame(&self, buf: &mut BytesMut) -> Result<(), KvError> {
        write_frame(&self.encode_to_vec(), buf)
    }

    /// Decodes one frame, which `buf` must hold whole (as `read_frame`
    /// leaves it), and empties `buf`. An inflated payload larger than
    /// `max_len` is an error: the check happens while inflating, so a
    /// small frame cannot make us allocate gigabytes (a "gzip bomb").
    ///
    /// A message with more than [`max_entries`] entries is refused before
    /// it is decoded: a few bytes of protobuf can stand for an entry that
    /// takes a hundred bytes of memory.
    fn decode_frame(buf: &mut BytesMut, max_len: usize) -> Result<Self, KvError> {
        decode_held(buf, max_len, None)
    }
}

// ANCHOR: decode_held
/// [`FrameCoder::decode_frame`], holding the inflated payload's bytes
/// against `held`, if given, before they are allocated: a compressed frame
/// of a few bytes cannot make a connection hold more than its budget.
pub(crate) fn decode_held<M: FrameCoder>(
    buf: &mut BytesMut,
    max_len: usize,
    held: Option<&mut Held>,
) -> Result<M, KvError> {
    // Take the whole buffer, allocation and all: `buf` starts afresh.
    let frame = std::mem::take(buf);
    if frame.len() < HEADER_LEN {
        return Err(KvError::BadFrame("shorter than a frame header".into()));
    }
    let (compressed, len) = parse_header(&frame[..HEADER_LEN]);
    let payload = &frame[HEADER_LEN..];
    if payload.len() != len {
        return Err(KvError::BadFrame(format!(
            "header says {len} bytes, frame has {}",
            payload.len()
        )));
    }
    let mut held = held;
    if !compressed {
        return decode_counted(payload, max_len, held);
    }
    let inflated = inflate(payload, max_len, held.as_deref_mut())?;
    decode_counted(&inflated, max_len, held)
}

/// Inflates a gzip payload of at most `max_len` bytes. The buffer doubles
/// as the payload comes out, and each growth is held against `held` first.
fn inflate(
    payload: &[u8],
    max_len: usize,
    mut held: Option<&mut Held>,
) -> Result<Vec<u8>, KvError> {
    let bad = |err: std::io::Error| KvError::BadFrame(format!("invalid gzip payload: {err}"));
    // One byte more than allowed may come out: getting it means "too big".
    let most = max_len.saturating_add(1);
    let mut gzip = GzDecoder::new(payload).take(most as u64);
    let mut inflated = Vec::new();
    let mut filled = 0;
    loop {
        if filled == inflated.len() {
            let room = (2 * filled).max(READ_CHUNK).min(most);
            if room <= filled {
                break; // full: at `most` bytes already
            }
            if let Some(held) = held.as_deref_mut() {
                held.grow(room - filled)?;
            }
            inflated.resize(room, 0);
        }
        match gzip.read(&mut inflated[filled..]).map_err(bad)? {
            0 => break,
            n => filled += n,
        }
    }
    if filled > max_len {
        return Err(KvError::BadFrame(format!(
            "payload inflates to more than {max_len} bytes"
        )));
    }
    inflated.truncate(filled);
    Ok(inflated)
}
// ANCHOR_END: decode_held

// The repeated fields of a request are in its command (`Hmget::keys`);
// those of a response are its own (`values`, `pairs`).
impl FrameCoder for CommandRequest {
    const ENTRY_DEPTH: usize = 2;

    fn entries(&self) -> usize {
        match &self.request_data {
            Some(RequestData::Hmget(command)) => command.keys.len(),
            Some(RequestData::Hmset(command)) => command.pairs.len(),
            Some(RequestData::Hmdel(command)) => command.keys.len(),
            Some(RequestData::Hmexist(command)) => command.keys.len(),
            Some(RequestData::Publish(command)) => command.data.len(),
            _ => 1,
        }
    }
}
impl FrameCoder for CommandResponse {
    const ENTRY_DEPTH: usize = 1;

    fn entries(&self) -> usize {
        self.values.len() + self.pairs.len()
    }
}
// ANCHOR_END: frame_coder

// ANCHOR: write_frame
/// Appends `payload` to `buf` as one frame: compressed if it is larger
/// than [`COMPRESSION_LIMIT`], looks compressible, and compressing shrinks
/// it. The frame is never larger than the header and the payload: with
/// room for those reserved, `buf` does not grow.
pub(crate) fn write_frame(payload: &[u8], buf: &mut BytesMut) -> Result<(), KvError> {
    let start = buf.len();
    buf.put_u32(0); // the real header is written once the length is known

    let mut header = 0;
    if compresses(payload) {
        // Room for one byte less than the payload, and no more: if gzip
        // fails, as it does once its output does not fit (random bytes,
        // say), the payload goes as it is.
        let room = (&mut *buf).limit(payload.len() - 1).writer();
        // The fastest level: see the benchmark page.
        let mut encoder = GzEncoder::new(room, Compression::fast());
        if encoder.write_all(payload).is_ok() && encoder.try_finish().is_ok() {
            header = COMPRESSED;
        }
        drop(encoder);
        if header == 0 {
            buf.truncate(start + HEADER_LEN);
        }
    }
    if header == 0 {
        buf.extend_from_slice(payload);
    }

    let len = buf.len() - start - HEADER_LEN;
    if len > MAX_WIRE_LEN {
        buf.truncate(start);
        return Err(KvError::FrameTooLarge {
            len,
            max: MAX_WIRE_LEN,
        });
    }
    header |= len as u32;
    buf[start..start + HEADER_LEN].copy_from_slice(&header.to_be_bytes());
    Ok(())
}

/// Whether `write_frame` would compress `payload`.
pub(crate) fn compresses(payload: &[u8]) -> bool {
    payload.len() > COMPRESSION_LIMIT && looks_compressible(payload)
}
// ANCHOR_END: write_frame

// ANCHOR: decode_counted
/// Decodes `payload` if its entries are within the limit for `max_len`;
/// what they may cost once decoded ([`ENTRY_COST`] each) is held against
/// `held` first, if given.
fn decode_counted<M: FrameCoder>(
    payload: &[u8],
    max_len: usize,
    held: Option<&mut Held>,
) -> Result<M, KvError> {
    let entries = count_fields(payload, M::ENTRY_DEPTH, usize::MAX);
    let max = max_entries(max_len);
    if entries > max {
        return Err(KvError::TooManyEntries { entries, max });
    }
    if let Some(held) = held {
        held.grow(entries * ENTRY_COST)?;
    }
    Ok(M::decode(payload)?)
}

/// Counts the fields `depth` levels down in a protobuf message, without
/// decoding anything: at depth 1, the message's own fields; at depth 2,
/// the fields of each length-delimited field that is itself a message.
///
/// Every entry of a repeated field is one field on the wire (our schema
/// has no packed numbers, where one field holds many), so this is at least
/// the number of entries that decoding would create. Bytes that are not a
/// message count for nothing here: prost either skips them (an unknown
/// field) or fails to decode them.
///
/// Counting stops once past `stop`: then the count is more than `stop`.
fn count_fields(mut message: &[u8], depth: usize, stop: usize) -> usize {
    use prost::encoding::decode_varint;

    let mut count = 0;
    while !message.is_empty() {
        let Ok(key) = decode_varint(&mut message) else {
            break;
        };
        let skip = match key & 0b111 {
            0 => decode_varint(&mut message).map(|_| 0).ok(),
            1 => Some(8),
            5 => Some(4),
            2 => decode_varint(&mut message).ok().map(|len| len as usize),
            _ => None, // groups, long deprecated, or not protobuf at all
        };
        let Some(skip) = skip.filter(|&n| n <= message.len()) else {
            break;
        };
        let (field, rest) = message.split_at(skip);
        count += match depth {
            1 => 1,
            _ if key & 0b111 == 2 => count_fields(field, depth - 1, stop),
            _ => 0,
        };
        if count > stop {
            break;
        }
        message = rest;
    }
    count
}
// ANCHOR_END: decode_counted

// ANCHOR: looks_compressible
/// Whether `payload` looks worth compressing, judged from a sample of at
/// most 1 KiB: how likely two bytes picked from it are to be equal. For
/// random bytes, and bytes compressed or encrypted already, that is 1 in
/// 256, and gzip cannot shrink them (finding that out takes as long as
/// compressing). In English prose it is about 1 in 16, and most other
/// data is far from random too. Below 1 in 181 (which in information
/// theory is a collision entropy of 7.5 bits per byte, out of 8), it is
/// not worth trying.
fn looks_compressible(payload: &[u8]) -> bool {
    // At most 16 runs of 64 bytes, spread over the payload.
    const RUN: usize = 64;
    let stride = payload.len().div_ceil(16).max(RUN);
    let mut counts = [0u64; 256];
    let mut sampled: u64 = 0;
    for start in (0..payload.len()).step_by(stride) {
        for &byte in &payload[start..payload.len().min(start + RUN)] {
            counts[byte as usize] += 1;
            sampled += 1;
        }
    }
    // Pairs of equal bytes, out of all pairs: more than 1 in 181?
    let equal: u64 = counts.iter().map(|&n| n * n.saturating_sub(1)).sum();
    let all = sampled * sampled.saturating_sub(1);
    equal * 181 > all
}
// ANCHOR_END: looks_compressible

// ANCHOR: decodes_inline
/// Whether a whole frame holding an `M` decodes in microseconds (see
/// [`INLINE_LIMIT`]). Its entries are counted on the wire, where a table
/// name or a status counts too; the count stops early, so that it stays
/// quick.
pub(crate) fn decodes_inline<M: FrameCoder>(frame: &[u8]) -> bool {
    let Some(header) = frame.get(..HEADER_LEN) else {
        return true; // not even a header: decoding fails at once
    };
    let (compressed, len) = parse_header(header);
    !compressed
        && len <= INLINE_LIMIT
        && count_fields(&frame[HEADER_LEN..], M::ENTRY_DEPTH, INLINE_ENTRIES) <= INLINE_ENTRIES
}
// ANCHOR_END: decodes_inline

/// Splits a header into its compression bit and payload length.
pub(crate) fn parse_header(header: &[u8]) -> (bool, usize) {
    let header = (&header[..HEADER_LEN]).get_u32();
    (header & COMPRESSED != 0, (header & !COMPRESSED) as usize)
}

// ANCHOR: read_frame
/// Reads one whole frame from `stream` into `buf`, ready for
/// [`FrameCoder::decode_frame`]. Returns `Ok(false)` if the stream ended
/// cleanly before the frame began, and an error if it ended inside one.
///
/// A payload longer than `max_len` is rejected as soon as the header
/// arrives. The buffer grows as bytes arrive, never ahead of them, so a
/// header that claims a large payload costs nothing until the payload
/// really comes.
///
/// `ProstStream` does this work now; only the naive stream, kept as a
/// lesson, still calls this.
#[cfg(test)]
pub(crate) async fn read_frame<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<bool, KvError>
where
    S: tokio::io::AsyncRead + Unpin,
{
    use std::io::ErrorKind;
    use tokio::io::AsyncReadExt;

    let mut header = [0; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        match stream.read(&mut header[filled..]).await {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => {
                return Err(KvError::BadFrame(
                    "stream ended inside a frame header".into(),
                ));
            }
            Ok(n) => filled += n,
            // TLS reports a peer that hangs up without saying goodbye
            // (close_notify) as UnexpectedEof, to reveal a cut-off message.
            // Between two frames nothing was cut off: that is a clean end.
            Err(err) if filled == 0 && err.kind() == ErrorKind::UnexpectedEof => {
                return Ok(false);
            }
            Err(err) => return Err(err.into()),
        }
    }
    let (_, len) = parse_header(&header);
    if len > max_len {
        return Err(KvError::FrameTooLarge { len, max: max_len });
    }

    if buf.capacity() > READ_CHUNK {
        // An earlier frame was large. Start small again, so that a
        // connection does not keep its largest buffer for good.
        *buf = BytesMut::new();
    }
    buf.clear();
    buf.extend_from_slice(&header);
    let end = HEADER_LEN + len;
    while buf.len() < end {
        buf.reserve((end - buf.len()).min(READ_CHUNK));
        // Read no further than this frame: the bytes after it belong to
        // the next one.
        let limit = (end - buf.len()) as u64;
        if (&mut *stream).take(limit).read_buf(buf).await? == 0 {
            return Err(KvError::BadFrame(format!(
                "stream ended inside a frame: got {} of {len} payload bytes",
                buf.len() - HEADER_LEN
            )));
        }
    }
    Ok(true)
}
// ANCHOR_END: read_frame

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;

    use super::*;
    use crate::network::dummy::DummyStream;

    /// Bytes that do not compress: a xorshift sequence.
    fn random_bytes(len: usize) -> Vec<u8> {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    fn header_of(frame: &[u8]) -> (bool, usize) {
        parse_header(&frame[..HEADER_LEN])
    }

    /// A frame with the given header bit and raw payload bytes.
    fn raw_frame(compressed: bool, payload: &[u8]) -> BytesMut {
        let mut frame = BytesMut::new();
        let bit = if compressed { COMPRESSED } else { 0 };
        frame.put_u32(bit | payload.len() as u32);
        frame.extend_from_slice(payload);
        frame
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn a_small_message_is_sent_as_it_is() {
        let request = CommandRequest::new_hset("t", "k", "v");
        let mut buf = BytesMut::new();
        request.encode_frame(&mut buf).unwrap();
        assert_eq!(header_of(&buf), (false, request.encoded_len()));
        assert_eq!(&buf[HEADER_LEN..], request.encode_to_vec());
        assert_eq!(
            CommandRequest::decode_frame(&mut buf, 1024).unwrap(),
            request
        );
        assert!(buf.is_empty());
    }

    // ANCHOR: compression_tests
    #[test]
    fn a_large_compressible_message_is_compressed() {
        let request = CommandRequest::new_hset("t", "k", "abc".repeat(10_000));
        let mut buf = BytesMut::new();
        request.encode_frame(&mut buf).unwrap();
        let (compressed, len) = header_of(&buf);
        assert!(compressed);
        assert!(len < request.encoded_len() / 10, "{len} bytes");
        assert_eq!(len, buf.len() - HEADER_LEN);
        let decoded = CommandRequest::decode_frame(&mut buf, DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(decoded, request);
    }

    #[test]
    fn an_incompressible_message_is_sent_as_it_is() {
        let request = CommandRequest::new_hset("t", "k", random_bytes(100_000));
        let mut buf = BytesMut::new();
        request.encode_frame(&mut buf).unwrap();
        assert_eq!(header_of(&buf), (false, request.encoded_len()));
        let decoded = CommandRequest::decode_frame(&mut buf, DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(decoded, request);
    }

    #[test]
    fn an_incompressible_payload_never_grows_the_buffer_past_its_room() {
        for len in [COMPRESSION_LIMIT + 1, 4096, 100_000] {
            let payload = random_bytes(len);
            // After a frame already there, room for the header and payload.
            let mut buf = BytesMut::with_capacity(3 + HEADER_LEN + len);
            buf.extend_from_slice(b"abc");
            let room = buf.capacity();
            write_frame(&payload, &mut buf).unwrap();
            assert_eq!(header_of(&buf[3..]), (false, len));
            assert_eq!(&buf[3 + HEADER_LEN..], payload);
            assert_eq!(buf.capacity(), room, "{len} bytes: the buffer grew");
        }
    }

    #[test]
    fn random_bytes_do_not_look_compressible_and_text_does() {
        let text = "Shall I compare thee to a summer's day? ".repeat(100);
        let json: String = (0..2000)
            .map(|i| format!("{{\"id\":{i},\"ok\":true}},"))
            .collect();
        for compressible in [text.as_bytes(), json.as_bytes(), &[0; 2000]] {
            assert!(looks_compressible(compressible));
        }
        // Long or short, sampled or read whole.
        for len in [COMPRESSION_LIMIT + 1, 4096, 1 << 20] {
            assert!(!looks_compressible(&random_bytes(len)), "{len} bytes");
        }
    }
    // ANCHOR_END: compression_tests

    #[test]
    fn encoding_appends_to_what_the_buffer_holds() {
        let first = CommandRequest::new_hget("t", "k");
        let second = CommandRequest::new_hset("t", "k", "x".repeat(5000));
        let mut buf = BytesMut::new();
        first.encode_frame(&mut buf).unwrap();
        let first_len = buf.len();
        second.encode_frame(&mut buf).unwrap();

        let mut tail = buf.split_off(first_len);
        assert_eq!(
            CommandRequest::decode_frame(&mut buf, 1 << 20).unwrap(),
            first
        );
        assert_eq!(
            CommandRequest::decode_frame(&mut tail, 1 << 20).unwrap(),
            second
        );
    }

    // ANCHOR: gzip_bomb_test
    #[test]
    fn a_gzip_bomb_is_rejected_while_inflating() {
        let max = 64 * 1024;
        let mut frame = raw_frame(true, &gzip(&vec![0; 100 * max]));
        assert!(frame.len() < max, "the bomb itself is within the limit");
        let err = CommandRequest::decode_frame(&mut frame, max).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bad frame: payload inflates to more than 65536 bytes"
        );
    }
    // ANCHOR_END: gzip_bomb_test

    // ANCHOR: entries_tests
    /// An hmset of `count` empty pairs: two bytes each on the wire.
    fn empty_pairs(count: usize) -> CommandRequest {
        CommandRequest::new_hmset("t", vec![crate::Kvpair::default(); count])
    }

    #[test]
    fn entries_are_counted_where_the_repeated_fields_are() {
        let request = empty_pairs(1000);
        assert_eq!(
            count_fields(&request.encode_to_vec(), 2, usize::MAX),
            1001,
            "table + pairs"
        );
        let keys = CommandRequest::new_hmget("t", ["a", "b", "c"]);
        assert_eq!(count_fields(&keys.encode_to_vec(), 2, usize::MAX), 4);
        let response = CommandResponse::from(vec![crate::Value::from(1i64); 7]);
        assert_eq!(
            count_fields(&response.encode_to_vec(), 1, usize::MAX),
            8,
            "status + values"
        );
        assert_eq!(
            count_fields(b"\xff\xff\xff", 2, usize::MAX),
            0,
            "not protobuf"
        );
    }

    #[test]
    fn a_small_frame_with_too_many_entries_is_refused_before_decoding() {
        let max = 1 << 20; // 1 MiB: 4096 entries
        let mut frame = raw_frame(true, &gzip(&empty_pairs(100_000).encode_to_vec()));
        assert!(frame.len() < 2000, "{} bytes", frame.len());
        let err = CommandRequest::decode_frame(&mut frame, max).unwrap_err();
        assert_eq!(err.status(), 413);
        assert_eq!(
            err.to_string(),
            "message holds 100001 entries, more than the limit of 4096"
        );

        let mut frame = raw_frame(false, &empty_pairs(4095).encode_to_vec());
        let decoded = CommandRequest::decode_frame(&mut frame, max).unwrap();
        assert_eq!(decoded, empty_pairs(4095), "4095 pairs + the table fit");
    }

    #[test]
    fn an_entry_costs_no_more_than_entry_cost() {
        use std::mem::size_of;
        // Twice the struct (a Vec may be twice as long as needed) and a
        // smallest heap block for each of up to two strings.
        for size in [
            size_of::<String>(),
            size_of::<crate::Value>(),
            size_of::<crate::Kvpair>(),
        ] {
            assert!(2 * size + 2 * 32 <= ENTRY_COST, "{size} bytes");
        }
    }
    // ANCHOR_END: entries_tests

    #[test]
    fn a_payload_of_exactly_the_limit_inflates() {
        let request = CommandRequest::new_hset("t", "k", "y".repeat(4000));
        let mut frame = raw_frame(true, &gzip(&request.encode_to_vec()));
        let decoded = CommandRequest::decode_frame(&mut frame, request.encoded_len()).unwrap();
        assert_eq!(decoded, request);
    }

    #[test]
    fn bad_payloads_are_errors() {
        let mut frame = raw_frame(false, b"\xff\xff\xff");
        let err = CommandRequest::decode_frame(&mut frame, 1024).unwrap_err();
        assert!(matches!(err, KvError::Decode(_)), "{err}");

        let mut frame = raw_frame(true, b"not gzip at all");
        let err = CommandRequest::decode_frame(&mut frame, 1024).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("bad frame: invalid gzip payload"),
            "{err}"
        );

        let mut frame = raw_frame(false, b"abc");
        frame.truncate(5);
        let err = CommandRequest::decode_frame(&mut frame, 1024).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bad frame: header says 3 bytes, frame has 1"
        );
    }

    // ANCHOR: read_frame_tests
    /// The frames of `requests`, back to back.
    fn wire(requests: &[CommandRequest]) -> BytesMut {
        let mut wire = BytesMut::new();
        for request in requests {
            request.encode_frame(&mut wire).unwrap();
        }
        wire
    }

    /// Reads `requests` from `stream` with `read_frame`, then a clean end.
    async fn assert_reads(stream: &mut DummyStream, requests: &[CommandRequest]) {
        let mut buf = BytesMut::new();
        for request in requests {
            assert!(read_frame(stream, &mut buf, 1 << 20).await.unwrap());
            assert_eq!(
                &CommandRequest::decode_frame(&mut buf, 1 << 20).unwrap(),
                request
            );
        }
        assert!(!read_frame(stream, &mut buf, 1 << 20).await.unwrap());
    }

    #[tokio::test]
    async fn read_frame_reads_frame_after_frame_then_a_clean_end() {
        let requests = [
            CommandRequest::new_hget("t", "k"),
            CommandRequest::new_hset("t", "k", "z".repeat(3000)),
        ];
        assert_reads(&mut DummyStream::new(wire(&requests)), &requests).await;
    }

    #[tokio::test]
    async fn read_frame_copes_with_pending_and_one_byte_at_a_time() {
        let requests: Vec<_> = (0..20)
            .map(|i| CommandRequest::new_hset("t", i.to_string(), "w".repeat(i * 200)))
            .collect();
        assert_reads(&mut DummyStream::new(wire(&requests)).trickle(1), &requests).await;
    }

    #[tokio::test]
    async fn a_header_over_the_limit_is_rejected_before_any_allocation() {
        let mut stream = DummyStream::new(&u32::MAX.to_be_bytes()[..]);
        let mut buf = BytesMut::new();
        let err = read_frame(&mut stream, &mut buf, 1 << 20)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "frame of 2147483647 bytes is larger than the limit of 1048576 bytes"
        );
        assert_eq!(buf.capacity(), 0);
    }

    #[tokio::test]
    async fn a_large_claim_costs_only_what_arrives() {
        // The header claims 1 GiB, which the limit allows; 10 bytes come.
        let mut wire = BytesMut::new();
        wire.put_u32(1 << 30);
        wire.extend_from_slice(&[0; 10]);
        let mut buf = BytesMut::new();
        let err = read_frame(&mut DummyStream::new(wire), &mut buf, MAX_WIRE_LEN)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "bad frame: stream ended inside a frame: got 10 of 1073741824 payload bytes"
        );
        assert!(
            buf.capacity() < 1 << 20,
            "{} bytes reserved",
            buf.capacity()
        );
    }
    // ANCHOR_END: read_frame_tests

    #[tokio::test]
    async fn leaving_without_close_notify_between_frames_is_a_clean_end() {
        let mut buf = BytesMut::new();
        let mut stream = DummyStream::new(BytesMut::new()).fail_with(ErrorKind::UnexpectedEof);
        assert!(!read_frame(&mut stream, &mut buf, 1024).await.unwrap());

        let mut stream = DummyStream::new(&[0u8][..]).fail_with(ErrorKind::UnexpectedEof);
        let err = read_frame(&mut stream, &mut buf, 1024).await.unwrap_err();
        assert!(matches!(err, KvError::Io(_)), "{err}");
    }

    #[tokio::test]
    async fn a_large_frame_leaves_no_large_buffer_behind() {
        let requests = [
            CommandRequest::new_hset("t", "k", random_bytes(300_000)),
            CommandRequest::new_hget("t", "k"),
        ];
        let mut stream = DummyStream::new(wire(&requests));
        let mut buf = BytesMut::new();
        assert!(read_frame(&mut stream, &mut buf, 1 << 20).await.unwrap());
        assert!(buf.capacity() >= 300_000);
        CommandRequest::decode_frame(&mut buf, 1 << 20).unwrap();
        assert_eq!(buf.capacity(), 0, "decode_frame took the buffer");
        assert!(read_frame(&mut stream, &mut buf, 1 << 20).await.unwrap());
        assert!(buf.capacity() <= READ_CHUNK, "{}", buf.capacity());
    }

    #[tokio::test]
    async fn an_end_inside_the_header_is_an_error() {
        let mut buf = BytesMut::new();
        let err = read_frame(&mut DummyStream::new(&[0u8, 0][..]), &mut buf, 1024)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "bad frame: stream ended inside a frame header"
        );
    }
}
