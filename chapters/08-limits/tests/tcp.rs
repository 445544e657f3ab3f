//! The server over real TCP and TLS: every command, large values, hostile
//! input, and many clients at once.

mod common;

use std::{io::Write, net::SocketAddr, time::Duration};

use bytes::{BufMut, BytesMut};
use common::{CERTS, acceptor, connector, random_bytes};
use flate2::{Compression, write::GzEncoder};
use futures::StreamExt;
use kv::{
    Client, CommandRequest, CommandResponse, DEFAULT_MAX_FRAME, FrameCoder, Hmset, Kvpair,
    MemTable, MuxStream, ProstClientStream, ProstStream, ServerConfig, Service, Value, serve,
};
use prost::Message;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

// ANCHOR: start_server
/// Starts a server on a free port. It is ready when this returns: the
/// listening socket exists, so connections queue until they are accepted.
async fn start_server(service: Service, max_frame: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ServerConfig {
        max_frame,
        ..ServerConfig::new(acceptor(&CERTS, false))
    };
    tokio::spawn(serve(listener, service, config));
    addr
}
// ANCHOR_END: start_server

/// A stream on a new TLS connection to the server, for tests that send
/// raw bytes.
async fn connect(addr: SocketAddr) -> MuxStream {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector(&CERTS, false).connect(tcp).await.unwrap();
    Client::new(tls).open().await.unwrap()
}

async fn new_client(addr: SocketAddr) -> ProstClientStream<MuxStream> {
    ProstClientStream::new(connect(addr).await)
}

/// Checks that a new client is served normally, and soon: a server that
/// is stuck fails the test instead of hanging it.
async fn assert_still_serving(addr: SocketAddr) {
    let served = async {
        let mut client = new_client(addr).await;
        let res = client
            .execute(CommandRequest::new_hset("health", "k", "ok"))
            .await
            .unwrap();
        assert!(res.is_ok(), "{res:?}");
        let res = client
            .execute(CommandRequest::new_hget("health", "k"))
            .await
            .unwrap();
        assert_eq!(res.values, [Value::from("ok")]);
    };
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("a new client is served within 10 s");
}

/// Reads one response from a raw stream, or `None` if the server hung up.
async fn read_response(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
) -> Option<CommandResponse> {
    let mut frames = ProstStream::<_, CommandResponse, CommandRequest>::new(stream);
    frames.next().await.map(Result::unwrap)
}

/// A frame with any header bit and payload, valid or not.
fn raw_frame(compressed: bool, payload: &[u8]) -> Vec<u8> {
    let mut frame = BytesMut::new();
    frame.put_u32(u32::from(compressed) << 31 | payload.len() as u32);
    frame.extend_from_slice(payload);
    frame.to_vec()
}

#[tokio::test]
async fn every_command_works_end_to_end() {
    let addr = start_server(Service::new(MemTable::new()), DEFAULT_MAX_FRAME).await;
    let mut c = new_client(addr).await;
    let mut run = async |request| c.execute(request).await.unwrap();

    let res = run(CommandRequest::new_hset("t", "a", 1i64)).await;
    assert_eq!(res.values, [Value::default()]);
    let pairs = [Kvpair::new("b", "two"), Kvpair::new("c", 3.5)];
    let res = run(CommandRequest::new_hmset("t", pairs)).await;
    assert_eq!(res.values, [Value::default(), Value::default()]);
    let res = run(CommandRequest::new_hget("t", "a")).await;
    assert_eq!(res.values, [Value::from(1i64)]);
    let res = run(CommandRequest::new_hmget("t", ["c", "x"])).await;
    assert_eq!(res.values, [Value::from(3.5), Value::default()]);
    let res = run(CommandRequest::new_hgetall("t")).await;
    let expected = [
        Kvpair::new("a", 1i64),
        Kvpair::new("b", "two"),
        Kvpair::new("c", 3.5),
    ];
    assert_eq!(res.pairs, expected);
    let res = run(CommandRequest::new_hexist("t", "b")).await;
    assert_eq!(res.values, [Value::from(true)]);
    let res = run(CommandRequest::new_hmexist("t", ["b", "x"])).await;
    assert_eq!(res.values, [Value::from(true), Value::from(false)]);
    let res = run(CommandRequest::new_hdel("t", "a")).await;
    assert_eq!(res.values, [Value::from(1i64)]);
    let res = run(CommandRequest::new_hmdel("t", ["b", "x"])).await;
    assert_eq!(res.values, [Value::from("two"), Value::default()]);

    let res = run(CommandRequest::new_hget("t", "a")).await;
    assert_eq!(
        (res.status, res.message.as_str()),
        (404, "key `a` not found in table `t`")
    );
    let res = run(CommandRequest::default()).await;
    assert_eq!(res.status, 400);
}

// ANCHOR: after_send_test
#[tokio::test]
async fn after_send_runs_once_per_response_sent() {
    let (sent, mut calls) = tokio::sync::mpsc::unbounded_channel();
    let service = Service::builder(MemTable::new())
        .on_after_send(move || sent.send(()).unwrap())
        .build();
    let addr = start_server(service, DEFAULT_MAX_FRAME).await;

    let mut client = new_client(addr).await;
    for _ in 0..3 {
        client
            .execute(CommandRequest::new_hget("t", "k"))
            .await
            .unwrap();
        let call = tokio::time::timeout(Duration::from_secs(10), calls.recv());
        call.await.expect("after_send was called").unwrap();
    }
    assert!(calls.try_recv().is_err(), "no more calls than responses");
}
// ANCHOR_END: after_send_test

// ANCHOR: large_values
#[tokio::test]
async fn a_4_mib_random_value_round_trips() {
    let addr = start_server(Service::new(MemTable::new()), DEFAULT_MAX_FRAME).await;
    let mut client = new_client(addr).await;
    let value = Value::from(random_bytes(4 << 20, 0));
    client
        .execute(CommandRequest::new_hset("big", "random", value.clone()))
        .await
        .unwrap();
    let res = client
        .execute(CommandRequest::new_hget("big", "random"))
        .await
        .unwrap();
    assert_eq!(res.values, [value]);
}

#[tokio::test]
async fn a_large_compressible_value_is_sent_compressed_and_round_trips() {
    let addr = start_server(Service::new(MemTable::new()), DEFAULT_MAX_FRAME).await;
    let value = Value::from("all work and no play ".repeat(200_000));
    let request = CommandRequest::new_hset("big", "text", value.clone());

    // Send the frame by hand, to see that it goes compressed.
    let mut frame = BytesMut::new();
    request.encode_frame(&mut frame).unwrap();
    assert_eq!(frame[0] & 0x80, 0x80, "the compression bit is set");
    assert!(frame.len() < request.encoded_len() / 50);
    let mut stream = connect(addr).await;
    stream.write_all(&frame).await.unwrap();
    assert!(read_response(&mut stream).await.unwrap().is_ok());

    let res = new_client(addr)
        .await
        .execute(CommandRequest::new_hget("big", "text"))
        .await
        .unwrap();
    assert_eq!(res.values, [value]);
}
// ANCHOR_END: large_values

// ANCHOR: hostile_tests
#[tokio::test]
async fn a_header_claiming_2_gib_gets_413_and_the_server_goes_on() {
    let addr = start_server(Service::new(MemTable::new()), DEFAULT_MAX_FRAME).await;
    let mut stream = connect(addr).await;
    stream
        .write_all(&0x7fff_ffff_u32.to_be_bytes())
        .await
        .unwrap();

    let res = read_response(&mut stream).await.unwrap();
    assert_eq!(res.status, 413);
    assert_eq!(
        res.message,
        "frame of 2147483647 bytes is larger than the limit of 16777216 bytes"
    );
    assert!(read_response(&mut stream).await.is_none(), "stream closed");
    assert_still_serving(addr).await;
}

#[tokio::test]
async fn a_request_over_the_limit_gets_413_while_still_being_sent() {
    let addr = start_server(Service::new(MemTable::new()), 1 << 20).await;
    let mut client = new_client(addr).await;
    let request = CommandRequest::new_hset("t", "k", random_bytes(8 << 20, 0));
    let res = client.execute(request).await.unwrap();
    assert_eq!(res.status, 413, "{}", res.message);
    assert_still_serving(addr).await;
}

#[tokio::test]
async fn a_gzip_bomb_is_refused_and_the_connection_goes_on() {
    let max_frame = 1 << 20;
    let addr = start_server(Service::new(MemTable::new()), max_frame).await;
    let mut gzip = GzEncoder::new(Vec::new(), Compression::fast());
    gzip.write_all(&vec![0; 8 * max_frame]).unwrap();
    let bomb = raw_frame(true, &gzip.finish().unwrap());
    assert!(bomb.len() < max_frame);

    let mut stream = connect(addr).await;
    stream.write_all(&bomb).await.unwrap();
    let res = read_response(&mut stream).await.unwrap();
    assert_eq!(res.status, 400);
    assert_eq!(
        res.message,
        "bad frame: payload inflates to more than 1048576 bytes"
    );

    // The frame was read whole, so the same connection still works.
    let mut frame = BytesMut::new();
    CommandRequest::new_hexist("t", "k")
        .encode_frame(&mut frame)
        .unwrap();
    stream.write_all(&frame).await.unwrap();
    assert_eq!(
        read_response(&mut stream).await.unwrap().values,
        [Value::from(false)]
    );
    assert_still_serving(addr).await;
}

// ANCHOR: entries_test
#[tokio::test]
async fn a_small_frame_of_millions_of_entries_gets_413_and_stores_nothing() {
    let addr = start_server(Service::new(MemTable::new()), DEFAULT_MAX_FRAME).await;
    // An hmset of 8 million empty pairs: 16 MB of protobuf that would
    // decode into half a gigabyte, gzipped into a frame of 16 to 75 kB
    // (best to fastest compression).
    let pairs = 8_000_000;
    let hmset = Hmset {
        table: "t".into(),
        pairs: vec![Kvpair::default(); pairs],
    };
    let mut payload = vec![5 << 3 | 2]; // field 5 (hmset), length-delimited
    prost::encoding::encode_varint(hmset.encoded_len() as u64, &mut payload);
    let mut gzip = GzEncoder::new(Vec::new(), Compression::fast());
    gzip.write_all(&payload).unwrap();
    gzip.write_all(b"\x0a\x01t").unwrap(); // table = "t"
    gzip.write_all(&b"\x12\x00".repeat(pairs)).unwrap(); // the empty pairs
    let frame = raw_frame(true, &gzip.finish().unwrap());
    assert!(frame.len() < 100_000, "{} bytes", frame.len());

    let mut stream = connect(addr).await;
    stream.write_all(&frame).await.unwrap();
    let res = read_response(&mut stream).await.unwrap();
    assert_eq!(res.status, 413);
    assert_eq!(
        res.message,
        "message holds 8000001 entries, more than the limit of 65536"
    );
    drop(stream);

    let mut client = new_client(addr).await;
    let res = client.execute(CommandRequest::new_hgetall("t")).await;
    assert_eq!(res.unwrap().pairs, [], "nothing was stored");
    assert_still_serving(addr).await;
}
// ANCHOR_END: entries_test

#[tokio::test]
async fn bytes_that_are_not_protobuf_get_400() {
    let addr = start_server(Service::new(MemTable::new()), DEFAULT_MAX_FRAME).await;
    let mut stream = connect(addr).await;
    stream
        .write_all(&raw_frame(false, b"\xff\xff\xff\xff"))
        .await
        .unwrap();
    let res = read_response(&mut stream).await.unwrap();
    assert_eq!(res.status, 400);
    assert!(
        res.message.starts_with("cannot decode message"),
        "{}",
        res.message
    );
    assert_still_serving(addr).await;
}

#[tokio::test]
async fn a_frame_cut_off_by_eof_closes_only_that_stream() {
    let addr = start_server(Service::new(MemTable::new()), DEFAULT_MAX_FRAME).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let client = Client::new(connector(&CERTS, false).connect(tcp).await.unwrap());
    let mut stream = client.open().await.unwrap();
    let mut frame = raw_frame(false, &[0; 100]);
    frame.truncate(10);
    stream.write_all(&frame).await.unwrap();
    stream.shutdown().await.unwrap();

    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    assert!(
        rest.is_empty(),
        "the server closed the stream without answering"
    );
    // Another stream of the same connection is served.
    let mut other = ProstClientStream::new(client.open().await.unwrap());
    let res = other.execute(CommandRequest::new_hexist("t", "k")).await;
    assert_eq!(res.unwrap().values, [Value::from(false)]);
}

#[tokio::test]
async fn a_silent_client_does_not_block_others() {
    let addr = start_server(Service::new(MemTable::new()), DEFAULT_MAX_FRAME).await;
    let _silent = connect(addr).await;
    let mut half = connect(addr).await;
    half.write_all(&[0, 0]).await.unwrap();
    assert_still_serving(addr).await;
}
// ANCHOR_END: hostile_tests

// ANCHOR: concurrent_test
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_clients_at_once_lose_no_write() {
    let addr = start_server(Service::new(MemTable::new()), DEFAULT_MAX_FRAME).await;
    let clients: Vec<_> = (0..100)
        .map(|i| {
            tokio::spawn(async move {
                let mut client = new_client(addr).await;
                for j in 0..10 {
                    let key = format!("client{i}-key{j}");
                    let value = Value::from((i * 10 + j) as i64);
                    let set = CommandRequest::new_hset("shared", &key, value.clone());
                    assert!(client.execute(set).await.unwrap().is_ok());
                    let got = client.execute(CommandRequest::new_hget("shared", &key));
                    assert_eq!(got.await.unwrap().values, [value]);
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }

    let mut client = new_client(addr).await;
    let all = client.execute(CommandRequest::new_hgetall("shared")).await;
    assert_eq!(all.unwrap().pairs.len(), 1000);
}
// ANCHOR_END: concurrent_test
