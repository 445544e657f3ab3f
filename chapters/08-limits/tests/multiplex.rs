// ANCHOR: helpers
//! Many streams over one connection: side by side, past the limit, cut
//! off, and stalled.

mod common;

use std::{net::SocketAddr, time::Duration};

use bytes::{BufMut, BytesMut};
use common::{CERTS, acceptor, connector, proxy, random_bytes};
use kv::{
    Client, CommandRequest, KvError, MemTable, ProstClientStream, ServerConfig, Service, Value,
    serve, serve_connection,
};
use prost::Message;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// Server settings that allow `max_streams` streams per connection.
fn config(max_streams: usize) -> ServerConfig {
    ServerConfig {
        max_streams,
        ..ServerConfig::new(acceptor(&CERTS, false))
    }
}

/// One connection over an in-memory pipe that holds `pipe` bytes each
/// way: the server's end runs in a task, the client gets the other end.
fn over_pipe(pipe: usize, config: ServerConfig) -> (Client, JoinHandle<Result<(), KvError>>) {
    let (client_end, server_end) = tokio::io::duplex(pipe);
    let service = Service::new(MemTable::new());
    let server = tokio::spawn(async move { serve_connection(server_end, service, &config).await });
    (Client::new(client_end), server)
}

/// A TLS server on a free port; it accepts as soon as this returns.
async fn start_server(config: ServerConfig) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, Service::new(MemTable::new()), config));
    addr
}

/// A new TLS connection to `addr`.
async fn connect(addr: SocketAddr) -> Client {
    let tcp = TcpStream::connect(addr).await.unwrap();
    Client::new(connector(&CERTS, false).connect(tcp).await.unwrap())
}

/// On a stream of its own, sets a value of `len` random bytes twice and
/// reads it back each time. The second `hset` answers with the first
/// value, so large data goes both ways.
async fn round_trips(client: Client, id: u64, len: usize) {
    let mut stream = ProstClientStream::new(client.open().await.unwrap());
    let key = format!("key-{id}");
    let mut old = Value::default();
    for round in 0..2 {
        let value = Value::from(random_bytes(len, id * 10 + round));
        let set = CommandRequest::new_hset("t", &key, value.clone());
        assert_eq!(stream.execute(set).await.unwrap().values, [old]);
        let get = CommandRequest::new_hget("t", &key);
        let got = stream.execute(get).await.unwrap().values;
        assert_eq!(got, std::slice::from_ref(&value));
        old = value;
    }
}

/// Runs `round_trips` on `count` streams of `client` at once, with a
/// deadline.
async fn side_by_side(client: &Client, count: u64, len: usize) {
    let streams: Vec<_> = (0..count)
        .map(|id| tokio::spawn(round_trips(client.clone(), id, len)))
        .collect();
    within(60, async {
        for stream in streams {
            stream.await.unwrap();
        }
    })
    .await;
}

/// Runs `work` with a deadline, so that a hang fails the test.
async fn within<T>(seconds: u64, work: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(seconds), work)
        .await
        .expect("finished in time")
}
// ANCHOR_END: helpers

// ANCHOR: side_by_side
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_run_side_by_side_over_a_tiny_pipe() {
    // 64 bytes each way: every read and write is partial, and most polls
    // are `Pending`. The values are larger than a stream's window, so
    // flow control has to work for them to get through.
    let (client, server) = over_pipe(64, config(16));
    side_by_side(&client, 8, 300 << 10).await;

    // Once the client is gone, the server's end finishes, tasks and all.
    within(10, client.close()).await;
    let _ = within(10, server).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_run_side_by_side_over_tls() {
    let addr = start_server(config(32)).await;
    let client = connect(addr).await;
    // Values larger than a TLS record (16 KiB) and than a stream's window.
    side_by_side(&client, 16, 300 << 10).await;
    within(10, client.close()).await;
}
// ANCHOR_END: side_by_side

// ANCHOR: limit
#[tokio::test]
async fn a_stream_past_the_limit_gets_429_and_the_connection_goes_on() {
    let addr = start_server(config(2)).await;
    let client = connect(addr).await;
    let mut first = client.open().await.unwrap();
    let mut second = client.open().await.unwrap();
    // A stream reaches the server with its first data: send some.
    for stream in [&mut first, &mut second] {
        let set = CommandRequest::new_hset("t", "k", "v");
        let res = ProstClientStream::new(stream).execute(set).await;
        assert!(res.unwrap().is_ok());
    }

    // A third stream at once is one too many.
    let res = client.execute(CommandRequest::new_hget("t", "k")).await;
    let res = res.unwrap();
    assert_eq!(res.status, 429);
    assert_eq!(
        res.message,
        "too many streams on this connection: at most 2 at once"
    );

    // The connection and its streams go on.
    let get = CommandRequest::new_hget("t", "k");
    let res = ProstClientStream::new(&mut second).execute(get).await;
    assert_eq!(res.unwrap().values, [Value::from("v")]);

    // A stream that ends gives its place back. The server's end of the
    // stream closes once its task is done: wait for that.
    first.shutdown().await.unwrap();
    assert_eq!(first.read(&mut [0; 1]).await.unwrap(), 0);
    let res = client.execute(CommandRequest::new_hget("t", "k")).await;
    assert_eq!(res.unwrap().values, [Value::from("v")]);
}
// ANCHOR_END: limit

// ANCHOR: cut
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_ends_every_stream_with_an_error() {
    let server = start_server(config(8)).await;
    let (addr, proxy) = proxy(server).await;
    let client = connect(addr).await;

    // Three streams in use, and a fourth waiting for data that never comes.
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut stream = ProstClientStream::new(client.open().await.unwrap());
        let set = CommandRequest::new_hset("t", "k", "v");
        assert!(stream.execute(set).await.unwrap().is_ok());
        streams.push(stream);
    }
    let mut idle = client.open().await.unwrap();
    let reader = tokio::spawn(async move { idle.read(&mut [0; 16]).await });

    proxy.abort();
    let err = within(10, reader).await.unwrap().unwrap_err();
    assert!(
        err.to_string().starts_with("the connection failed"),
        "{err}"
    );
    for mut stream in streams {
        let get = CommandRequest::new_hget("t", "k");
        let err = within(10, stream.execute(get)).await.unwrap_err();
        assert!(err.to_string().contains("the connection failed"), "{err}");
    }
    let err = within(10, client.open()).await.err().unwrap();
    assert!(err.to_string().contains("the connection failed"), "{err}");

    // The server has dropped its end too, and serves others.
    let other = connect(server).await;
    let res = other.execute(CommandRequest::new_hget("t", "k")).await;
    assert_eq!(res.unwrap().values, [Value::from("v")]);
}
// ANCHOR_END: cut

// ANCHOR: stall
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_stops_reading_stalls_only_itself() {
    let (client, server) = over_pipe(64 << 10, config(4));

    // Sixteen `hset`s of 1 MiB on one key, written without reading any
    // answer. From the second on, each answers with the previous 1 MiB
    // value. The server's task blocks writing an answer the client does
    // not read, stops reading, and the client's writes block in turn:
    // both sides wait on a full window. Only this stream is stuck.
    let mut stalled = client.open().await.unwrap();
    let mut frames = BytesMut::new();
    for seed in 0..16 {
        // Uncompressed frames, built by hand: quick to make.
        let value = random_bytes(1 << 20, seed);
        let payload = CommandRequest::new_hset("stall", "k", value).encode_to_vec();
        frames.put_u32(payload.len() as u32);
        frames.extend_from_slice(&payload);
    }
    let writer = tokio::spawn(async move { stalled.write_all(&frames).await });

    // The other streams of the connection work as usual meanwhile.
    side_by_side(&client, 3, 300 << 10).await;
    assert!(!writer.is_finished(), "16 MiB cannot fit in the windows");

    // Dropping the stuck stream resets it: the server's task sees the
    // reset, ends, and the whole connection can close.
    writer.abort();
    within(10, client.close()).await;
    // Whether the server's end sees a clean close or a closed pipe depends
    // on what it was writing when the client went.
    let _ = within(10, server).await.unwrap();
}
// ANCHOR_END: stall
