// ANCHOR: helpers
//! Publish and subscribe end to end: TLS, yamux, several connections.

mod common;

use std::{collections::HashSet, net::SocketAddr, time::Duration};

use common::{CERTS, acceptor, connector, proxy, random_bytes};
use futures::StreamExt;
use kv::{
    Client, CommandRequest, CommandResponse, MemTable, ServerConfig, Service, Subscriber, Value,
    serve,
};
use tokio::net::{TcpListener, TcpStream};

/// A TLS server on a free port whose subscribers may fall `queue`
/// messages behind. Returns its address and its service, to look at.
async fn start_server(queue: usize) -> (SocketAddr, Service) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = Service::builder(MemTable::new())
        .subscriber_queue(queue)
        .build();
    let config = ServerConfig::new(acceptor(&CERTS, false));
    tokio::spawn(serve(listener, service.clone(), config));
    (addr, service)
}

/// A new TLS connection to `addr`.
async fn connect(addr: SocketAddr) -> Client {
    let tcp = TcpStream::connect(addr).await.unwrap();
    Client::new(connector(&CERTS, false).connect(tcp).await.unwrap())
}

/// Publishes one value; returns how many subscribers it reached. A
/// publish that waits for a subscriber fails the test.
async fn publish(client: &Client, topic: &str, value: impl Into<Value>) -> i64 {
    let res = client.execute(CommandRequest::new_publish(topic, [value]));
    let res = tokio::time::timeout(Duration::from_secs(10), res);
    let res = res.await.expect("published in time").unwrap();
    assert!(res.is_ok(), "{res:?}");
    match res.values[0].value {
        Some(kv::value::Value::Integer(reached)) => reached,
        _ => panic!("no count in {res:?}"),
    }
}

/// The next answer of a subscription, within a deadline.
async fn next(subscriber: &mut Subscriber) -> Option<CommandResponse> {
    let next = tokio::time::timeout(Duration::from_secs(10), subscriber.next());
    next.await.expect("an answer in time").map(Result::unwrap)
}
// ANCHOR_END: helpers

// ANCHOR: fan_out
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_on_other_connections_get_every_message_in_order() {
    let (addr, _) = start_server(64).await;
    let mut subscribers = Vec::new();
    for _ in 0..3 {
        let client = connect(addr).await;
        subscribers.push(client.subscribe("news").await.unwrap());
    }
    let ids: HashSet<u32> = subscribers.iter().map(Subscriber::id).collect();
    assert_eq!(ids.len(), 3, "{ids:?}");

    let publisher = connect(addr).await;
    for i in 0..20i64 {
        assert_eq!(publish(&publisher, "news", i).await, 3);
    }
    for subscriber in &mut subscribers {
        for i in 0..20i64 {
            assert_eq!(next(subscriber).await.unwrap().values, [Value::from(i)]);
        }
    }
    assert_eq!(publish(&publisher, "elsewhere", 1).await, 0);
}
// ANCHOR_END: fan_out

// ANCHOR: unsubscribe
#[tokio::test]
async fn only_the_subscribing_connection_can_unsubscribe() {
    let (addr, service) = start_server(64).await;
    let client = connect(addr).await;
    let mut subscriber = client.subscribe("news").await.unwrap();
    let unsubscribe = CommandRequest::new_unsubscribe("news", subscriber.id());

    // Another connection, with the right topic and id: refused.
    let res = connect(addr).await.execute(unsubscribe.clone()).await;
    assert_eq!(res.unwrap().status, 404);
    assert_eq!(service.topics().subscribers("news"), 1);

    // Another stream of the same connection: done, and the subscription's
    // stream ends after what was already published.
    assert_eq!(publish(&client, "news", "before").await, 1);
    assert!(client.execute(unsubscribe).await.unwrap().is_ok());
    assert_eq!(
        next(&mut subscriber).await.unwrap().values,
        [Value::from("before")]
    );
    assert!(next(&mut subscriber).await.is_none());
    assert_eq!(service.topics().subscribers("news"), 0);
}
// ANCHOR_END: unsubscribe

// ANCHOR: disconnect
#[tokio::test]
async fn a_subscription_ends_with_its_stream_or_its_connection() {
    let (addr, service) = start_server(64).await;
    let publisher = connect(addr).await;

    // A subscriber closes its side of the stream. The server drops the
    // subscription before it closes its own side, so once that is seen,
    // the subscription is gone.
    let client = connect(addr).await;
    let mut stream = client.open().await.unwrap();
    let mut frames = kv::ProstClientStream::new(&mut stream);
    let first = frames.execute(CommandRequest::new_subscribe("t")).await;
    assert!(first.unwrap().is_ok());
    assert_eq!(service.topics().subscribers("t"), 1);
    tokio::io::AsyncWriteExt::shutdown(&mut stream)
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest)
        .await
        .unwrap();
    assert_eq!(service.topics().subscribers("t"), 0);
    assert_eq!(publish(&publisher, "t", 1).await, 0);

    // A connection cut under a live subscriber takes its subscriptions
    // with it. The server learns of it when its driver reads the end, so
    // the test waits for that, with a deadline.
    let (via, cut) = proxy(addr).await;
    let mut subscriber = connect(via).await.subscribe("t").await.unwrap();
    assert_eq!(service.topics().subscribers("t"), 1);
    cut.abort();
    let gone = async {
        while service.topics().subscribers("t") > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), gone)
        .await
        .expect("removed once the connection was cut");
    let end = tokio::time::timeout(Duration::from_secs(10), subscriber.next());
    assert!(matches!(end.await.unwrap(), Some(Err(_)) | None));
}
// ANCHOR_END: disconnect

// ANCHOR: slow
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_dropped_and_others_go_on() {
    // Queues of 4 messages, and messages of 64 KiB: the slow subscriber's
    // stream window (256 KiB) and then its queue fill after a few.
    let (addr, service) = start_server(4).await;
    let mut slow = connect(addr).await.subscribe("t").await.unwrap();
    let fast_client = connect(addr).await;
    let mut fast = fast_client.subscribe("t").await.unwrap();
    let publisher = connect(addr).await;

    let mut reached = Vec::new();
    for i in 0..40 {
        // Bytes that do not compress, so each message takes its 64 KiB.
        let big = random_bytes(64 << 10, i);
        reached.push(publish(&publisher, "t", big.clone()).await);
        // The fast subscriber reads each message as it comes.
        let message = next(&mut fast).await.unwrap();
        assert_eq!(message.values, [Value::from(big)]);
    }
    // Publishing never waited for the slow one (`publish` has a deadline);
    // at some point it found its queue full, and from then on reached only
    // the fast one.
    assert_eq!(reached[0], 2);
    assert_eq!(*reached.last().unwrap(), 1, "{reached:?}");
    assert_eq!(service.topics().subscribers("t"), 1);
    // Unsubscribing is not held up by the stuck one either.
    let unsubscribe = CommandRequest::new_unsubscribe("t", fast.id());
    let res = tokio::time::timeout(Duration::from_secs(10), fast_client.execute(unsubscribe));
    assert!(res.await.expect("in time").unwrap().is_ok());

    // The slow subscriber gets what was queued, then a last answer that
    // says why, then the end of the stream.
    let mut last = None;
    while let Some(answer) = next(&mut slow).await {
        last = Some(answer);
    }
    let last = last.unwrap();
    assert_eq!(last.status, 429);
    assert!(last.message.contains("fell more than 4 messages behind"));
}
// ANCHOR_END: slow
