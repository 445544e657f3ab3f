//! The three protocols that the load generator speaks: ours, through the
//! last chapter's library; Redis's RESP, the few commands we need of it;
//! and the echo protocol, whose frames have the sizes of ours.

use anyhow::{Context, bail};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kv::{CommandRequest, CommandResponse, DEFAULT_MAX_FRAME, FrameCoder, HEADER_LEN, Value};

/// One request of the mix: `hset table key value`, or `hget table key`.
/// (A table is a hash in Redis.)
pub struct Op<'a> {
    pub set: bool,
    pub table: &'a str,
    pub key: &'a str,
    pub value: &'a Bytes,
}

/// A request-response protocol, as bytes on a connection.
pub trait Protocol: Send + Sync + 'static {
    /// Appends `op`, as one request, to `buf`.
    fn encode(&self, op: &Op<'_>, buf: &mut BytesMut) -> anyhow::Result<()>;

    /// Removes one whole response from the front of `buf`, if `buf` holds
    /// one, and says whether it reports success.
    fn decode(&self, buf: &mut BytesMut) -> anyhow::Result<Option<bool>>;
}

/// The length that the frame at the front of `buf` claims, header
/// included. Our frames and the echo's share the header.
fn claimed_len(buf: &[u8]) -> Option<usize> {
    let header: [u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
    // The top bit says "compressed"; the other 31 are the length.
    Some(HEADER_LEN + (u32::from_be_bytes(header) & 0x7fff_ffff) as usize)
}

/// The length of the frame at the front of `buf`, once `buf` holds it whole.
fn whole_frame(buf: &[u8]) -> Option<usize> {
    claimed_len(buf).filter(|&len| buf.len() >= len)
}

/// Our protocol, encoded and decoded by the library that `kvs` is built on.
pub struct Kv;

impl Kv {
    fn request(op: &Op<'_>) -> CommandRequest {
        if op.set {
            CommandRequest::new_hset(op.table, op.key, Value::from(op.value.clone()))
        } else {
            CommandRequest::new_hget(op.table, op.key)
        }
    }
}

impl Protocol for Kv {
    fn encode(&self, op: &Op<'_>, buf: &mut BytesMut) -> anyhow::Result<()> {
        Ok(Self::request(op).encode_frame(buf)?)
    }

    fn decode(&self, buf: &mut BytesMut) -> anyhow::Result<Option<bool>> {
        if claimed_len(buf).is_some_and(|len| len - HEADER_LEN > DEFAULT_MAX_FRAME) {
            bail!("an answer claims more than {DEFAULT_MAX_FRAME} bytes");
        }
        let Some(len) = whole_frame(buf) else {
            return Ok(None);
        };
        let mut frame = buf.split_to(len);
        let response = CommandResponse::decode_frame(&mut frame, DEFAULT_MAX_FRAME)?;
        Ok(Some(response.is_ok()))
    }
}

// ANCHOR: resp
/// RESP, the protocol of Redis: `HSET` and `HGET` as arrays of bulk
/// strings, and the four kinds of reply they can get.
pub struct Resp;

impl Resp {
    fn bulk(buf: &mut BytesMut, bytes: &[u8]) {
        buf.put_slice(format!("${}\r\n", bytes.len()).as_bytes());
        buf.put_slice(bytes);
        buf.put_slice(b"\r\n");
    }
}

impl Protocol for Resp {
    fn encode(&self, op: &Op<'_>, buf: &mut BytesMut) -> anyhow::Result<()> {
        if op.set {
            buf.put_slice(b"*4\r\n");
            Self::bulk(buf, b"HSET");
        } else {
            buf.put_slice(b"*3\r\n");
            Self::bulk(buf, b"HGET");
        }
        Self::bulk(buf, op.table.as_bytes());
        Self::bulk(buf, op.key.as_bytes());
        if op.set {
            Self::bulk(buf, op.value);
        }
        Ok(())
    }

    fn decode(&self, buf: &mut BytesMut) -> anyhow::Result<Option<bool>> {
        let Some(end) = buf.windows(2).position(|pair| pair == b"\r\n") else {
            return Ok(None);
        };
        let Some(line) = buf.get(1..end) else {
            bail!("an empty reply line");
        };
        let (ok, len) = match buf[0] {
            // A simple string or an integer (HSET: how many fields are new).
            b'+' | b':' => (true, end + 2),
            // An error.
            b'-' => (false, end + 2),
            // A bulk string (HGET's value), or -1 for none.
            b'$' => {
                let n: i64 = std::str::from_utf8(line)?
                    .parse()
                    .context("a bad bulk length")?;
                match usize::try_from(n) {
                    Ok(n) if n > DEFAULT_MAX_FRAME => bail!("a bulk string of {n} bytes"),
                    Ok(n) => (true, end + 2 + n + 2),
                    Err(_) => (true, end + 2),
                }
            }
            other => bail!("an unexpected reply type {:?}", other as char),
        };
        if buf.len() < len {
            return Ok(None);
        }
        buf.advance(len);
        Ok(Some(ok))
    }
}

// ANCHOR_END: resp

/// How much the echo server answers before it writes.
pub const ECHO_OUTPUT: usize = 1 << 20;

// ANCHOR: echo
/// The echo protocol: a frame with our header, whose payload begins with
/// the length of the payload to answer with. The echo server does nothing
/// else, so it shows what moving these bytes costs on this machine.
pub struct Echo {
    /// Request and response frame lengths of `hset` in our protocol.
    set: (usize, usize),
    /// The same for `hget`.
    get: (usize, usize),
}

impl Echo {
    /// Frames of the same lengths as our protocol's, for `value` in
    /// `table` (an `hset` answers with the value it replaces).
    pub fn like_kv(table: &str, value: &Bytes) -> anyhow::Result<Self> {
        let frame_len = |message: &dyn Fn(&mut BytesMut) -> Result<(), kv::KvError>| {
            let mut buf = BytesMut::new();
            message(&mut buf).map(|()| buf.len())
        };
        let key = "key:00000000";
        let set = Kv::request(&Op {
            set: true,
            table,
            key,
            value,
        });
        let get = Kv::request(&Op {
            set: false,
            table,
            key,
            value,
        });
        let found = CommandResponse::from(Value::from(value.clone()));
        let found = frame_len(&|buf| found.encode_frame(buf))?;
        Ok(Self {
            set: (frame_len(&|buf| set.encode_frame(buf))?, found),
            get: (frame_len(&|buf| get.encode_frame(buf))?, found),
        })
    }
}

impl Protocol for Echo {
    fn encode(&self, op: &Op<'_>, buf: &mut BytesMut) -> anyhow::Result<()> {
        let (request, response) = if op.set { self.set } else { self.get };
        let payload = request.max(2 * HEADER_LEN) - HEADER_LEN;
        buf.put_u32(payload as u32);
        buf.put_u32((response.max(HEADER_LEN) - HEADER_LEN) as u32);
        buf.put_bytes(0, payload - HEADER_LEN);
        Ok(())
    }

    fn decode(&self, buf: &mut BytesMut) -> anyhow::Result<Option<bool>> {
        let Some(len) = whole_frame(buf) else {
            return Ok(None);
        };
        buf.advance(len);
        Ok(Some(true))
    }
}

/// What the echo server answers to the request frames at the front of
/// `input`: it appends each answer to `output`, and removes the requests.
/// It stops once `output` holds [`ECHO_OUTPUT`] bytes, so that a few small
/// requests cannot make it hold gigabytes. A frame that claims more than
/// our frame limit is an error at once, before it is read.
pub fn echo_answers(input: &mut BytesMut, output: &mut BytesMut) -> anyhow::Result<()> {
    while let Some(len) = claimed_len(input).filter(|_| output.len() < ECHO_OUTPUT) {
        if len - HEADER_LEN > DEFAULT_MAX_FRAME {
            bail!("a frame claims {len} bytes");
        }
        if input.len() < len {
            break;
        }
        let mut frame = input.split_to(len);
        frame.advance(HEADER_LEN);
        if frame.len() < HEADER_LEN {
            bail!("a frame too short to say what to answer");
        }
        let answer = (frame.get_u32() as usize).min(DEFAULT_MAX_FRAME);
        output.put_u32(answer as u32);
        output.put_bytes(0, answer);
    }
    Ok(())
}

// ANCHOR_END: echo

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(value: &Bytes) -> [Op<'_>; 2] {
        [
            Op {
                set: true,
                table: "bench",
                key: "k",
                value,
            },
            Op {
                set: false,
                table: "bench",
                key: "k",
                value,
            },
        ]
    }

    #[test]
    fn resp_requests_are_arrays_of_bulk_strings() {
        let value = Bytes::from_static(b"v1");
        let mut buf = BytesMut::new();
        for op in ops(&value) {
            Resp.encode(&op, &mut buf).unwrap();
        }
        let expected = "*4\r\n$4\r\nHSET\r\n$5\r\nbench\r\n$1\r\nk\r\n$2\r\nv1\r\n\
                        *3\r\n$4\r\nHGET\r\n$5\r\nbench\r\n$1\r\nk\r\n";
        assert_eq!(buf, expected.as_bytes());
    }

    #[test]
    fn resp_replies_are_taken_whole_one_at_a_time() {
        let replies = b":1\r\n$5\r\nhello\r\n$-1\r\n-ERR wrong\r\n+OK\r\n";
        let mut buf = BytesMut::new();
        let mut seen = Vec::new();
        // A byte at a time: a reply is taken only once it is all there.
        for &byte in replies {
            buf.put_u8(byte);
            while let Some(ok) = Resp.decode(&mut buf).unwrap() {
                seen.push(ok);
            }
        }
        assert_eq!(seen, [true, true, true, false, true]);
        assert!(buf.is_empty());
    }

    #[test]
    fn kv_responses_decode_after_the_last_byte_only() {
        let mut frame = BytesMut::new();
        CommandResponse::from(Value::from("v"))
            .encode_frame(&mut frame)
            .unwrap();
        let mut buf = BytesMut::new();
        for (i, &byte) in frame.iter().enumerate() {
            buf.put_u8(byte);
            let done = i + 1 == frame.len();
            assert_eq!(Kv.decode(&mut buf).unwrap(), done.then_some(true));
        }
    }

    #[test]
    fn echo_frames_have_our_lengths_and_get_the_answers_they_ask_for() {
        let value = Bytes::from(vec![7; 4096]);
        let echo = Echo::like_kv("bench", &value).unwrap();
        for op in ops(&value) {
            let mut ours = BytesMut::new();
            Kv.encode(&op, &mut ours).unwrap();
            let mut request = BytesMut::new();
            echo.encode(&op, &mut request).unwrap();
            // Keys in the run are as long as the one `like_kv` measured.
            assert!(request.len().abs_diff(ours.len()) <= "key:00000000".len());

            let mut answer = BytesMut::new();
            echo_answers(&mut request, &mut answer).unwrap();
            assert!(request.is_empty());
            let expected = if op.set { echo.set.1 } else { echo.get.1 };
            assert_eq!(answer.len(), expected);
            assert_eq!(echo.decode(&mut answer).unwrap(), Some(true));
        }
    }

    #[test]
    fn resp_replies_that_would_panic_or_never_end_are_errors() {
        for reply in [&b"\r\n"[..], b"$99999999999\r\n", b"*1\r\n"] {
            let mut buf = BytesMut::from(reply);
            assert!(Resp.decode(&mut buf).is_err(), "{reply:?}");
        }
        let mut huge = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff][..]);
        assert!(Kv.decode(&mut huge).is_err());
    }

    #[test]
    fn the_echo_server_answers_in_bounded_portions() {
        // Eight bytes ask for 1 MiB each: the second waits for a write.
        let mut input = BytesMut::new();
        for _ in 0..2 {
            input.put_u32(4);
            input.put_u32(1 << 20);
        }
        let mut output = BytesMut::new();
        echo_answers(&mut input, &mut output).unwrap();
        assert_eq!((output.len(), input.len()), (HEADER_LEN + (1 << 20), 8));
    }

    #[test]
    fn the_echo_server_refuses_what_it_cannot_answer() {
        let mut output = BytesMut::new();
        let mut short = BytesMut::from(&[0, 0, 0, 1, 9][..]);
        assert!(echo_answers(&mut short, &mut output).is_err());
        // A header is enough to refuse a frame too large to wait for.
        let mut huge = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff][..]);
        assert!(echo_answers(&mut huge, &mut output).is_err());
        assert!(output.is_empty());
    }
}
