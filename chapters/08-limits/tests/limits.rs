// ANCHOR: helpers
//! Each limit and timeout of the server, on a real TLS server in this
//! process. Timeouts are short here, so each test waits for the server to
//! act, with a deadline; none sleeps a guess.

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::{CERTS, acceptor, connector, random_bytes};
use futures::{SinkExt, StreamExt};
use kv::{
    Client, CommandRequest, CommandResponse, MemTable, ProstStream, ServerConfig, Service, serve,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// How long a test waits for something that should take far less.
const DEADLINE: Duration = Duration::from_secs(10);
/// The timeout under test, where there is one.
const SHORT: Duration = Duration::from_millis(200);

/// A TLS server on a free port, with `adjust` applied to its defaults.
/// Returns its address.
async fn start(adjust: impl FnOnce(&mut ServerConfig)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = ServerConfig::new(acceptor(&CERTS, false));
    adjust(&mut config);
    let service = Service::new(MemTable::new());
    tokio::spawn(async move { serve(listener, service, config).await.unwrap() });
    addr
}

async fn connect(addr: SocketAddr) -> Client {
    let tcp = TcpStream::connect(addr).await.unwrap();
    Client::new(connector(&CERTS, false).connect(tcp).await.unwrap())
}

async fn hget(client: &Client) -> CommandResponse {
    let res = client.execute(CommandRequest::new_hget("t", "k"));
    tokio::time::timeout(DEADLINE, res)
        .await
        .expect("an answer in time")
        .unwrap()
}

/// Waits for `read` to see the end of what the server sends, and returns
/// how long it has been since `start`, taken before the server's clock
/// could start.
async fn time_until_end<F: Future>(start: Instant, read: F) -> (F::Output, Duration) {
    let output = tokio::time::timeout(DEADLINE, read)
        .await
        .expect("the server acted in time");
    (output, start.elapsed())
}

/// The next answer on a stream of frames, if any.
async fn answer<S>(frames: &mut ProstStream<S, CommandResponse, CommandRequest>) -> Option<u32>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    Some(frames.next().await?.ok()?.status)
}
// ANCHOR_END: helpers

// ANCHOR: connection_limit
#[tokio::test]
async fn a_connection_past_the_limit_hears_why_and_the_others_go_on() {
    let addr = start(|config| {
        config.max_connections = 2;
        // No place goes to a newcomer here (see the next test).
        config.quiet_time = Duration::from_secs(3600);
    })
    .await;
    let (first, second) = (connect(addr).await, connect(addr).await);
    assert_eq!(hget(&first).await.status, 404);
    assert_eq!(hget(&second).await.status, 404);

    let third = connect(addr).await;
    let refused = hget(&third).await;
    assert_eq!(refused.status, 503);
    assert!(
        refused.message.contains("at most 2 connections"),
        "{refused:?}"
    );
    assert_eq!(hget(&first).await.status, 404, "the others are served");

    // Once a place is free, a new client gets it. The server frees it when
    // it has seen the connection end: ask until it has.
    first.close().await;
    let served = async {
        loop {
            if hget(&connect(addr).await).await.status == 404 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(DEADLINE, served)
        .await
        .expect("served");
}
// ANCHOR_END: connection_limit

// ANCHOR: quiet_places
/// Fills a server of four places with connections that go quiet in
/// `go_quiet`, then connects a fresh client at once: returns how long it
/// took to be served, from when they were all quiet. It is served on its
/// first try: the server waits `quiet_time` for a place to come free.
async fn quiet_ones_make_room<F, Fut, T>(go_quiet: F) -> Duration
where
    F: Fn(Client) -> Fut,
    Fut: Future<Output = T>,
{
    let addr = start(|config| {
        config.max_connections = 4;
        config.quiet_time = SHORT;
    })
    .await;
    let mut quiet = Vec::new();
    for _ in 0..4 {
        quiet.push(go_quiet(connect(addr).await).await);
    }
    let start = Instant::now();
    let served = async { hget(&connect(addr).await).await.status };
    let (status, waited) = time_until_end(start, served).await;
    assert_eq!(status, 404, "served, not refused");
    drop(quiet);
    waited
}

#[tokio::test]
async fn a_full_server_gives_the_place_of_a_stalled_connection_to_a_new_client() {
    // Each stalls two bytes into a frame header, as in the test above.
    let waited = quiet_ones_make_room(|client| async move {
        let mut stream = client.open().await.unwrap();
        stream.write_all(&[0, 0]).await.unwrap();
        stream.flush().await.unwrap();
        (client, stream)
    })
    .await;
    assert!(waited < SHORT + Duration::from_secs(1), "{waited:?}");
}

#[tokio::test]
async fn a_full_server_gives_the_place_of_a_quiet_subscriber_to_a_new_client() {
    let waited = quiet_ones_make_room(|client| async move {
        let subscriber = client.subscribe("quiet").await.unwrap();
        (client, subscriber)
    })
    .await;
    assert!(waited < SHORT + Duration::from_secs(1), "{waited:?}");
}

#[tokio::test]
async fn one_address_gets_at_most_its_share_of_connections() {
    let addr = start(|config| config.max_per_address = Some(2)).await;
    let _two = (connect(addr).await, connect(addr).await);
    let refused = hget(&connect(addr).await).await;
    assert_eq!(refused.status, 503);
    assert!(refused.message.contains("one address"), "{refused:?}");
}
// ANCHOR_END: quiet_places

// ANCHOR: stalls
#[tokio::test]
async fn a_frame_that_stalls_is_cut_and_the_connection_goes_on() {
    let addr = start(|config| config.frame_timeout = SHORT).await;
    let client = connect(addr).await;
    let mut stream = client.open().await.unwrap();
    let start = Instant::now();
    // Two bytes of a frame's four-byte header, then nothing.
    stream.write_all(&[0, 0]).await.unwrap();
    stream.flush().await.unwrap();
    let mut frames = ProstStream::new(stream);
    let (status, waited) = time_until_end(start, answer(&mut frames)).await;
    assert_eq!(status, Some(408), "told why");
    assert!(waited >= SHORT, "{waited:?}");
    assert_eq!(answer(&mut frames).await, None, "then the end");
    assert_eq!(hget(&client).await.status, 404, "other streams go on");
}

#[tokio::test]
async fn an_idle_stream_then_its_idle_connection_are_closed() {
    let addr = start(|config| config.idle_timeout = SHORT).await;
    let client = connect(addr).await;
    let start = Instant::now();
    let mut frames = ProstStream::new(client.open().await.unwrap());
    frames
        .send(CommandRequest::new_hget("t", "k"))
        .await
        .unwrap();
    assert_eq!(answer(&mut frames).await, Some(404));
    // Then nothing: the stream is told, and closed.
    let (status, waited) = time_until_end(start, answer(&mut frames)).await;
    assert_eq!(status, Some(408));
    assert!(waited >= SHORT, "{waited:?}");
    assert_eq!(answer(&mut frames).await, None);

    // A connection with no stream at all: closed cleanly, with
    // close_notify, which reads as a clean end rather than an error.
    let start = Instant::now();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = connector(&CERTS, false).connect(tcp).await.unwrap();
    let mut rest = Vec::new();
    let (read, waited) = time_until_end(start, tls.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "{read:?}");
    assert!(waited >= SHORT, "{waited:?}");
}

#[tokio::test]
async fn a_handshake_that_stalls_is_cut() {
    let addr = start(|config| {
        config.tls = acceptor(&CERTS, false).handshake_timeout(SHORT);
    })
    .await;
    let start = Instant::now();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&[0x16, 0x03]).await.unwrap();
    let (read, waited) = time_until_end(start, tcp.read(&mut [0; 64])).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(waited >= SHORT, "{waited:?}");
}
// ANCHOR_END: stalls

// ANCHOR: no_reader
#[tokio::test]
async fn a_client_that_never_reads_its_answers_loses_its_stream() {
    let addr = start(|config| {
        config.write_timeout = SHORT;
        config.max_streams = 1;
    })
    .await;
    let client = connect(addr).await;
    let value = random_bytes(200_000, 1);
    let set = CommandRequest::new_hset("t", "k", value);
    assert_eq!(client.execute(set).await.unwrap().status, 200);

    // 20 requests for 200 kB each, and no reading: the answers fill the
    // stream's 256 KiB window and the server's send waits.
    let mut stream = client.open().await.unwrap();
    let mut wire = bytes::BytesMut::new();
    for _ in 0..20 {
        kv::FrameCoder::encode_frame(&CommandRequest::new_hget("t", "k"), &mut wire).unwrap();
    }
    stream.write_all(&wire).await.unwrap();
    stream.flush().await.unwrap();

    // The stream holds the connection's only place until the server gives
    // up on it; then other streams are served again.
    let served = async {
        while hget(&client).await.status == 429 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(DEADLINE, served)
        .await
        .expect("served");
    let mut frames = ProstStream::new(stream);
    let mut answers = 0;
    while answer(&mut frames).await.is_some() {
        answers += 1;
    }
    assert!(answers < 20, "{answers} answers: the server gave up");
}
// ANCHOR_END: no_reader
