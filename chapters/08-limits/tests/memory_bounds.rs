// ANCHOR: imports
//! What one request can make the server hold, measured with an allocator
//! that counts: however a request is shaped or compressed, decoding it and
//! building its answer stay within a small multiple of the frame limit.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    io::Write,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
};

use bytes::{BufMut, BytesMut};
use flate2::{Compression, write::GzEncoder};
use kv::{CommandRequest, FrameCoder, Kvpair, MemTable, Service, Value, max_entries};
use prost::Message;
// ANCHOR_END: imports

// ANCHOR: allocator
/// The system allocator, counting the bytes in use and their peak.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = IN_USE.fetch_add(layout.size(), Relaxed) + layout.size();
        PEAK.fetch_max(now, Relaxed);
        // SAFETY: the caller's promises about `layout` are passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        IN_USE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The counters count every thread, so the tests take turns: each holds
/// this lock from start to end.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `f` and returns what it returned, and the most memory it held at
/// once beyond what was in use before.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = IN_USE.load(Relaxed);
    PEAK.store(before, Relaxed);
    let out = f();
    (out, PEAK.load(Relaxed) - before)
}
// ANCHOR_END: allocator

// ANCHOR: decode_setup
const MAX_FRAME: usize = 1 << 20;

fn frame_of(payload: &[u8], compress: bool) -> BytesMut {
    let payload = if compress {
        let mut gzip = GzEncoder::new(Vec::new(), Compression::fast());
        gzip.write_all(payload).unwrap();
        gzip.finish().unwrap()
    } else {
        payload.to_vec()
    };
    let mut frame = BytesMut::new();
    frame.put_u32(u32::from(compress) << 31 | payload.len() as u32);
    frame.extend_from_slice(&payload);
    frame
}

#[test]
fn one_request_holds_a_small_multiple_of_the_frame_limit() {
    let _turn = one_at_a_time();
    let entries = max_entries(MAX_FRAME) - 1; // the table is one more
    let one_byte: Vec<String> = (0..entries)
        .map(|i| char::from(b'a' + (i % 26) as u8).into())
        .collect();
    let pairs = |value: &str| {
        (one_byte.iter())
            .map(|key| Kvpair::new(key.as_str(), value))
            .collect::<Vec<_>>()
    };
    let requests = [
        (
            "hmset of empty pairs",
            CommandRequest::new_hmset("t", vec![Kvpair::default(); entries]),
        ),
        (
            "hmset of one-byte pairs",
            CommandRequest::new_hmset("t", pairs("v")),
        ),
        (
            "hmget of empty keys",
            CommandRequest::new_hmget("t", vec![""; entries]),
        ),
        (
            "hmget of one-byte keys",
            CommandRequest::new_hmget("t", one_byte.clone()),
        ),
        (
            "hset of a large value",
            CommandRequest::new_hset("t", "k", "x".repeat(MAX_FRAME - 100)),
        ),
    ];
    // ANCHOR_END: decode_setup

    // ANCHOR: decode_bound
    for (shape, request) in &requests {
        for compress in [false, true] {
            let frame = frame_of(&request.encode_to_vec(), compress);
            let (decoded, peak) = peak_of(|| {
                let mut frame = frame.clone();
                CommandRequest::decode_frame(&mut frame, MAX_FRAME).unwrap()
            });
            assert_eq!(&decoded, request);
            println!("{shape}, compressed {compress}: {peak} bytes at the peak");
            assert!(peak <= 3 * MAX_FRAME, "{shape}: {peak} bytes");
        }
    }

    // One entry more, and the request is refused before it is decoded.
    let too_many = CommandRequest::new_hmget("t", vec![""; entries + 1]);
    let frame = frame_of(&too_many.encode_to_vec(), true);
    let (result, peak) = peak_of(|| CommandRequest::decode_frame(&mut frame.clone(), MAX_FRAME));
    assert_eq!(result.unwrap_err().status(), 413);
    assert!(peak <= 3 * MAX_FRAME, "refusing: {peak} bytes");
}
// ANCHOR_END: decode_bound

// ANCHOR: answer_bound
#[test]
fn hgetall_stops_copying_at_the_answer_limit() {
    let _turn = one_at_a_time();
    let service = Service::builder(MemTable::new())
        .max_answer(MAX_FRAME)
        .build();
    let value = Value::from(vec![1u8; 256 * 1024]);
    for i in 0..64 {
        service.execute(CommandRequest::new_hset("t", i.to_string(), value.clone()));
    }
    // The table holds 16 MiB; the answer may hold 1 MiB.
    let (res, peak) = peak_of(|| service.execute(CommandRequest::new_hgetall("t")));
    assert_eq!(res.status, 400, "{}", res.message);
    assert!(peak <= 2 * MAX_FRAME, "{peak} bytes");
}
// ANCHOR_END: answer_bound
