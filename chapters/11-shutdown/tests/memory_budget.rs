// ANCHOR: imports
//! The attacks that per-frame limits let through, each against a real TLS
//! server in this process with a small memory budget: the memory in use,
//! counted by the allocator, stays within the budget (and a little for
//! the attacker's own side), a fresh client is served meanwhile, and the
//! memory comes back once the attacker leaves.

mod common;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    net::SocketAddr,
    sync::atomic::{AtomicUsize, Ordering::Relaxed},
    time::{Duration, Instant},
};

use bytes::BufMut;
use common::{CERTS, acceptor, connector, random_bytes};
use futures::{SinkExt, StreamExt};
use kv::{
    Client, CommandRequest, CommandResponse, FrameCoder, MemTable, MuxStream, ProstStream,
    ServerConfig, Service, serve,
};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
};
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

/// The counters count every thread, so the tests take turns. (An async
/// lock: each test holds it across its awaits.)
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}
// ANCHOR_END: allocator

// ANCHOR: setup
const MIB: usize = 1 << 20;
/// The frame limit of these servers, and a connection's budget: three
/// frames' worth.
const MAX_FRAME: usize = 4 * MIB;
const BUDGET: usize = 3 * MAX_FRAME;
/// What the attacker's own side of the connection may hold on top: its
/// yamux windows and TLS buffers.
const ATTACKER: usize = 8 * MIB;
const DEADLINE: Duration = Duration::from_secs(10);

/// A server with this budget, on a free port, and `adjust` applied.
async fn start(adjust: impl FnOnce(&mut ServerConfig)) -> SocketAddr {
    start_with(MemTable::new(), adjust).await
}

/// Like `start`, with `store` for its data.
async fn start_with(store: MemTable, adjust: impl FnOnce(&mut ServerConfig)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = ServerConfig::new(acceptor(&CERTS, false));
    config.max_frame = MAX_FRAME;
    config.connection_memory = BUDGET;
    config.client_memory = 8 * BUDGET;
    adjust(&mut config);
    let service = Service::builder(store).max_answer(MAX_FRAME).build();
    tokio::spawn(async move { serve(listener, service, config).await.unwrap() });
    addr
}

async fn connect(addr: SocketAddr) -> Client {
    let tcp = TcpStream::connect(addr).await.unwrap();
    Client::new(connector(&CERTS, false).connect(tcp).await.unwrap())
}

/// A fresh client's `hget` on a table of its own: how long it took to be
/// answered. A full server may answer 503 while it frees memory: the
/// client asks again, as a real one would.
async fn fresh_client_hget(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let request = async {
        let client = connect(addr).await;
        loop {
            let answer = client.execute(CommandRequest::new_hget("other", "k"));
            let answer = answer.await.unwrap();
            if answer.status != 503 {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let answer = tokio::time::timeout(DEADLINE, request).await.unwrap();
    assert_eq!(answer.status, 404, "{}", answer.message);
    started.elapsed()
}

/// Waits until the memory in use is back to within `slack` of `before`.
async fn memory_comes_back(before: usize, slack: usize) {
    let deadline = Instant::now() + DEADLINE;
    while IN_USE.load(Relaxed) > before + slack {
        assert!(
            Instant::now() < deadline,
            "{} still in use",
            IN_USE.load(Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The peak memory since `before`, beyond it.
fn peak_since(before: usize) -> usize {
    PEAK.load(Relaxed).saturating_sub(before)
}
/// A stream of frames to and from the server.
fn frames(stream: MuxStream) -> ProstStream<MuxStream, CommandResponse, CommandRequest> {
    ProstStream::new(stream).max_frame(MAX_FRAME)
}
// ANCHOR_END: setup

// ANCHOR: unread_answers
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_nobody_reads_stay_within_the_connection_budget() {
    let _turn = one_at_a_time().await;
    let addr = start(|_| {}).await;
    let attacker = connect(addr).await;
    // A value that does not compress, so its answer is large on the wire.
    let value = random_bytes(MAX_FRAME - 1024, 1);
    let set = attacker.execute(CommandRequest::new_hset("t", "k", value));
    assert!(set.await.unwrap().is_ok());

    let before = IN_USE.load(Relaxed);
    PEAK.store(before, Relaxed);
    // Sixteen streams ask for it, and read nothing.
    let mut streams = Vec::new();
    for _ in 0..16 {
        let mut stream = frames(attacker.open().await.unwrap());
        stream
            .send(CommandRequest::new_hget("t", "k"))
            .await
            .unwrap();
        streams.push(stream);
    }
    let waited = fresh_client_hget(addr).await;
    // Each stream is answered: the value, or a 429 that says why not.
    let mut refused = 0;
    for stream in &mut streams {
        let answer = stream.next().await.unwrap().unwrap();
        if answer.status == 429 {
            assert!(
                answer.message.contains("memory budget"),
                "{}",
                answer.message
            );
            refused += 1;
        }
    }
    let peak = peak_since(before);
    println!("peak {peak} bytes, {refused} of 16 refused, a fresh client in {waited:?}");
    assert!(peak <= BUDGET + ATTACKER, "{peak} bytes at the peak");
    assert!(refused > 0, "sixteen answers cannot all fit");
    assert!(waited < Duration::from_secs(1), "{waited:?}");
    drop((streams, attacker));
    memory_comes_back(before, MIB).await;
}
// ANCHOR_END: unread_answers

// ANCHOR: partial_frames
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_that_never_finish_stay_within_the_connection_budget() {
    let _turn = one_at_a_time().await;
    // The frames that fit end when the frame timeout runs out.
    let addr = start(|config| config.frame_timeout = Duration::from_secs(1)).await;
    let attacker = connect(addr).await;
    let payload = bytes::Bytes::from(random_bytes(MAX_FRAME - 1, 2));
    let before = IN_USE.load(Relaxed);
    PEAK.store(before, Relaxed);
    // On each of twelve streams: a header for a frame of the largest
    // size, and all of its payload but the last byte.
    let mut attacks = Vec::new();
    for _ in 0..12 {
        let stream = attacker.open().await.unwrap();
        attacks.push(tokio::spawn(never_finish(stream, payload.clone())));
    }
    let waited = fresh_client_hget(addr).await;
    // Every stream gets an answer: 429 if its frame did not fit, 408
    // once the frame timeout ends one that did.
    let mut statuses = Vec::new();
    for attack in attacks {
        let status = tokio::time::timeout(DEADLINE, attack).await.unwrap();
        statuses.push(status.unwrap());
    }
    let peak = peak_since(before);
    println!("peak {peak} bytes, answers {statuses:?}, a fresh client in {waited:?}");
    assert!(peak <= BUDGET + ATTACKER, "{peak} bytes at the peak");
    assert!(statuses.contains(&429), "twelve frames cannot all fit");
    assert!(
        statuses.iter().all(|s| [408, 429].contains(s)),
        "{statuses:?}"
    );
    assert!(waited < Duration::from_secs(1), "{waited:?}");
    drop((attacker, payload));
    memory_comes_back(before, MIB).await;
}
// ANCHOR_END: partial_frames

// ANCHOR: never_finish
/// Sends a frame header for the largest frame and `payload`, one byte
/// short of it, while it waits for the answer; returns its status.
async fn never_finish(stream: MuxStream, payload: bytes::Bytes) -> u32 {
    let (mut read, mut write) = tokio::io::split(stream);
    let send = async {
        write.write_u32(MAX_FRAME as u32).await?;
        write.write_all(&payload).await?;
        write.flush().await?;
        // Nothing more: the frame stays one byte short.
        std::future::pending::<std::io::Result<()>>().await
    };
    tokio::select! {
        // An answer that has come goes first, even if the send failed.
        biased;
        status = read_status(&mut read) => status,
        Err(err) = send => panic!("the stream failed before it was answered: {err}"),
    }
}

/// Reads one answer frame by hand (the other half of the stream is busy
/// writing) and returns its status.
async fn read_status(read: &mut (impl tokio::io::AsyncRead + Unpin)) -> u32 {
    use tokio::io::AsyncReadExt;
    let header = read.read_u32().await.unwrap();
    let mut frame = bytes::BytesMut::new();
    frame.put_u32(header);
    frame.resize(4 + (header & !(1 << 31)) as usize, 0);
    read.read_exact(&mut frame[4..]).await.unwrap();
    let answer = CommandResponse::decode_frame(&mut frame, MAX_FRAME).unwrap();
    answer.status
}
// ANCHOR_END: never_finish

// ANCHOR: fan_out
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_to_subscribers_who_never_read_is_held_once() {
    let _turn = one_at_a_time().await;
    // Each queue counts the messages it holds, shared or not: room for
    // twenty connections' budgets.
    let addr = start(|config| config.client_memory = 20 * BUDGET).await;
    // Twenty subscribers, each on a connection of its own, so that each
    // has a whole budget: every one of them can queue every message.
    let mut subscribers = Vec::new();
    for _ in 0..20 {
        let listener = connect(addr).await;
        let subscriber = listener.subscribe("news").await.unwrap();
        subscribers.push((listener, subscriber));
    }
    let publisher = connect(addr).await;
    let data = random_bytes(2 * MIB, 3);
    let before = IN_USE.load(Relaxed);
    PEAK.store(before, Relaxed);
    for _ in 0..5 {
        let publish = CommandRequest::new_publish("news", vec![kv::Value::from(data.clone())]);
        let answer = publisher.execute(publish).await.unwrap();
        assert_eq!(
            answer.values,
            [kv::Value::from(20i64)],
            "{}",
            answer.message
        );
    }
    let waited = fresh_client_hget(addr).await;
    let peak = peak_since(before);
    println!("peak {peak} bytes, a fresh client in {waited:?}");
    // Five messages of 2 MiB in twenty queues: copies would be 200 MiB.
    // Shared, they are 10 MiB, with the requests that carried them and
    // what the subscribers' side has read.
    assert!(
        peak <= 5 * 2 * MIB + 4 * 2 * MIB + ATTACKER,
        "{peak} bytes at the peak"
    );
    assert!(waited < Duration::from_secs(1), "{waited:?}");
    drop((subscribers, publisher));
    memory_comes_back(before, MIB).await;
}
// ANCHOR_END: fan_out

// ANCHOR: queued_size
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_message_holds_only_its_own_bytes() {
    let _turn = one_at_a_time().await;
    let addr = start(|_| {}).await;
    let listener = connect(addr).await;
    let subscriber = listener.subscribe("news").await.unwrap();
    let publisher = connect(addr).await;
    let before = IN_USE.load(Relaxed);
    // Each message is 64 KiB that do not compress and 1 MiB that do: its
    // frame is about 64 KiB. The subscriber reads nothing, so after its
    // stream's window (256 KiB) the messages wait in its queue.
    let mut message = random_bytes(64 * 1024, 5);
    message.resize(64 * 1024 + MIB, 0);
    for _ in 0..12 {
        let publish = CommandRequest::new_publish("news", vec![kv::Value::from(message.clone())]);
        let answer = publisher.execute(publish).await.unwrap();
        assert_eq!(answer.values, [kv::Value::from(1i64)], "{}", answer.message);
    }
    // Twelve frames of 64 KiB, and not twelve buffers of a megabyte.
    let held = IN_USE.load(Relaxed).saturating_sub(before);
    println!("{held} bytes held");
    assert!(held <= 3 * MIB, "{held} bytes held");
    drop((subscriber, listener, publisher));
    memory_comes_back(before, MIB).await;
}
// ANCHOR_END: queued_size

// ANCHOR: store_limit
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_that_compress_to_nothing_cannot_fill_the_store_past_its_limit() {
    let _turn = one_at_a_time().await;
    let limit = 8 * MIB;
    let addr = start_with(MemTable::with_max_memory(limit), |_| {}).await;
    let attacker = connect(addr).await;
    let before = IN_USE.load(Relaxed);
    PEAK.store(before, Relaxed);
    // A megabyte of zeros is a kilobyte on the wire.
    let mut full = 0;
    for i in 0..20 {
        let zeros = kv::Value::from(vec![0u8; MIB]);
        let set = CommandRequest::new_hset("t", i.to_string(), zeros);
        let answer = attacker.execute(set).await.unwrap();
        if answer.status == 507 {
            assert!(
                answer.message.contains("memory is full"),
                "{}",
                answer.message
            );
            full += 1;
        }
    }
    let waited = fresh_client_hget(addr).await;
    let peak = peak_since(before);
    println!("peak {peak} bytes, {full} of 20 refused, a fresh client in {waited:?}");
    assert!(full >= 12, "at most eight megabytes fit");
    assert!(
        peak <= limit + BUDGET + ATTACKER,
        "{peak} bytes at the peak"
    );
    assert!(waited < Duration::from_secs(1), "{waited:?}");
}
// ANCHOR_END: store_limit

// ANCHOR: eviction
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_closes_the_connection_holding_the_most() {
    let _turn = one_at_a_time().await;
    // Room for one connection's budget, all together.
    let addr = start(|config| config.client_memory = BUDGET).await;
    let writer = connect(addr).await;
    let value = random_bytes(MAX_FRAME / 2, 4);
    let set = writer.execute(CommandRequest::new_hset("t", "k", value));
    assert!(set.await.unwrap().is_ok());
    let before = IN_USE.load(Relaxed);
    PEAK.store(before, Relaxed);
    // Three connections ask for the value on many streams, and read
    // nothing: each could hold most of the server's budget.
    let mut attackers = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..3 {
        let attacker = connect(addr).await;
        for _ in 0..8 {
            // The server may close this connection while it opens them,
            // or asks on them.
            let Ok(stream) = attacker.open().await else {
                break;
            };
            let mut stream = frames(stream);
            if stream
                .send(CommandRequest::new_hget("t", "k"))
                .await
                .is_err()
            {
                break;
            }
            streams.push(stream);
        }
        attackers.push(attacker);
    }
    let waited = fresh_client_hget(addr).await;
    let peak = peak_since(before);
    // One or two of them are closed, once the server has run their
    // requests: ask until their requests fail.
    let closed_ones = async {
        loop {
            let mut closed = 0;
            for attacker in &attackers {
                let asked = attacker.execute(CommandRequest::new_hget("other", "k"));
                closed += usize::from(asked.await.is_err());
            }
            if closed > 0 {
                return closed;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let closed = tokio::time::timeout(DEADLINE, closed_ones).await.unwrap();
    println!("peak {peak} bytes, {closed} of 3 connections closed, a fresh client in {waited:?}");
    assert!((1..3).contains(&closed), "{closed} closed");
    assert!(peak <= BUDGET + 2 * ATTACKER, "{peak} bytes at the peak");
    assert!(waited < Duration::from_secs(1), "{waited:?}");
    drop((streams, attackers));
    memory_comes_back(before, MIB).await;
}
// ANCHOR_END: eviction

// ANCHOR: windows
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_open_stream_holds_its_window() {
    let _turn = one_at_a_time().await;
    // Room for four streams' windows (256 KiB each) and their buffers.
    let addr = start(|config| {
        config.max_frame = 64 * 1024;
        config.connection_memory = 4 * kv::STREAM_WINDOW + 64 * 1024;
    })
    .await;
    let client = connect(addr).await;
    let mut streams = Vec::new();
    for _ in 0..5 {
        let mut stream = frames(client.open().await.unwrap());
        stream
            .send(CommandRequest::new_hget("t", "k"))
            .await
            .unwrap();
        streams.push(stream);
    }
    let mut statuses = Vec::new();
    for stream in &mut streams {
        statuses.push(stream.next().await.unwrap().unwrap().status);
    }
    let served = statuses.iter().position(|&status| status == 404).unwrap();
    statuses.sort();
    assert_eq!(
        statuses,
        [404, 404, 404, 404, 429],
        "the fifth does not fit"
    );
    // A stream that ends gives its window back, once the server has seen
    // it end: ask until it has.
    drop(streams.remove(served));
    let again = async {
        loop {
            let answer = client.execute(CommandRequest::new_hget("t", "k")).await;
            if answer.unwrap().status == 404 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(DEADLINE, again).await.unwrap();
}
// ANCHOR_END: windows
