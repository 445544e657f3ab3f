// ANCHOR: imports
//! What the server tells its operator: metrics through the `metrics`
//! facade, and an HTTP endpoint that serves them to Prometheus.
//!
//! The `metrics` macros do nothing until a recorder is installed (`kvs`
//! installs the Prometheus one), so the library and its tests pay nothing
//! for them. Labels are only ever a command's name or a status: never a
//! table, key or value, which are the users' data.

use std::{
    io,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{CommandRequest, RequestData};
// ANCHOR_END: imports

// ANCHOR: names
// The names of the metrics; `describe` says what each counts.
pub const CONNECTIONS: &str = "kv_connections_total";
pub const CONNECTIONS_OPEN: &str = "kv_connections_open";
pub const CONNECTIONS_REJECTED: &str = "kv_connections_rejected_total";
pub const CONNECTIONS_EVICTED: &str = "kv_connections_evicted_total";
pub const STREAMS_OPEN: &str = "kv_streams_open";
pub const REQUESTS: &str = "kv_requests_total";
pub const REQUEST_SECONDS: &str = "kv_request_duration_seconds";
pub const BYTES_RECEIVED: &str = "kv_received_bytes_total";
pub const BYTES_SENT: &str = "kv_sent_bytes_total";
pub const STORAGE_BYTES: &str = "kv_storage_bytes";

/// The buckets of the latency histogram, in seconds: 25 µs to 1 s.
pub const REQUEST_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 1.0,
];

/// Gives each metric its help text, for a recorder that shows it.
pub fn describe() {
    describe_counter!(CONNECTIONS, "Connections served (not the ones refused).");
    describe_gauge!(CONNECTIONS_OPEN, "Connections served now.");
    describe_counter!(
        CONNECTIONS_REJECTED,
        "Connections turned away, by reason: full, address (over its share), or accept \
         (out of file descriptors, say)."
    );
    describe_counter!(
        CONNECTIONS_EVICTED,
        "Connections closed to make room, by reason: memory (the clients' memory was full, \
         and they held the most) or quiet (the server was full, and they were the quietest)."
    );
    describe_gauge!(STREAMS_OPEN, "Streams open now, on all connections.");
    describe_counter!(REQUESTS, "Requests run, by command and status.");
    describe_histogram!(
        REQUEST_SECONDS,
        metrics::Unit::Seconds,
        "Time to run a request, by command."
    );
    describe_counter!(
        BYTES_RECEIVED,
        metrics::Unit::Bytes,
        "Bytes read from clients."
    );
    describe_counter!(
        BYTES_SENT,
        metrics::Unit::Bytes,
        "Bytes written to clients."
    );
    describe_gauge!(
        STORAGE_BYTES,
        metrics::Unit::Bytes,
        "Bytes of data held in memory, as limits.max_memory counts them."
    );
}
// ANCHOR_END: names

// ANCHOR: request
/// A request's command, for logs and metrics: the name alone, no data.
pub fn command_name(request: &CommandRequest) -> &'static str {
    match &request.request_data {
        Some(RequestData::Hget(_)) => "hget",
        Some(RequestData::Hgetall(_)) => "hgetall",
        Some(RequestData::Hmget(_)) => "hmget",
        Some(RequestData::Hset(_)) => "hset",
        Some(RequestData::Hmset(_)) => "hmset",
        Some(RequestData::Hdel(_)) => "hdel",
        Some(RequestData::Hmdel(_)) => "hmdel",
        Some(RequestData::Hexist(_)) => "hexist",
        Some(RequestData::Hmexist(_)) => "hmexist",
        Some(RequestData::Subscribe(_)) => "subscribe",
        Some(RequestData::Unsubscribe(_)) => "unsubscribe",
        Some(RequestData::Publish(_)) => "publish",
        None => "none",
    }
}

/// Counts a request and records its time.
pub fn request_done(command: &'static str, status: u32, elapsed: Duration) {
    counter!(REQUESTS, "command" => command, "status" => status_label(status)).increment(1);
    metrics::histogram!(REQUEST_SECONDS, "command" => command).record(elapsed.as_secs_f64());
}

/// A status as a label. The set is fixed, so a metric cannot grow without
/// bound whatever the statuses.
fn status_label(status: u32) -> &'static str {
    match status {
        200 => "200",
        400 => "400",
        404 => "404",
        408 => "408",
        413 => "413",
        429 => "429",
        500 => "500",
        503 => "503",
        507 => "507",
        _ => "other",
    }
}
// ANCHOR_END: request

// ANCHOR: open
/// Adds one to a gauge while it lives: an open connection or stream.
pub struct Open(&'static str);

impl Open {
    /// Adds one to `gauge`, until the guard is dropped.
    pub fn new(gauge: &'static str) -> Self {
        gauge!(gauge).increment(1.0);
        Self(gauge)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        gauge!(self.0).decrement(1.0);
    }
}
// ANCHOR_END: open

// ANCHOR: endpoint
/// How many scrapes may be served at once.
const SCRAPERS: usize = 4;
/// The most of a request that is read: its path and headers are ignored.
const MAX_REQUEST_HEAD: u64 = 8 * 1024;
/// How long a scrape may take, from accept to the last byte.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers every HTTP request on `listener` with `render()`, Prometheus's
/// text format, until `shutdown` is cancelled.
///
/// Prometheus sends a plain GET and reads the answer, so this is all of
/// HTTP the endpoint needs. It reads at most a few kilobytes, for at most
/// a few seconds, from at most a few clients at a time: the endpoint must
/// not become a way to exhaust the server. Clients that send nothing, or
/// send their request slowly, cannot keep a new one out: when every place
/// is taken, the client that has waited longest without sending its whole
/// request is closed to make room.
pub async fn serve_metrics<F>(listener: TcpListener, render: F, shutdown: CancellationToken)
where
    F: Fn() -> String + Send + Sync + 'static,
{
    let render = Arc::new(render);
    let mut scrapes: Vec<Scrape> = Vec::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                warn!(%err, "metrics endpoint cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        scrapes.retain(|scrape| !scrape.cancel.is_cancelled());
        if scrapes.len() >= SCRAPERS && !close_an_unfinished_one(&mut scrapes) {
            debug!("metrics endpoint busy: closing a new client");
            continue;
        }
        let scrape = Scrape::default();
        let task = serve_scrape(stream, Arc::clone(&render), scrape.clone());
        scrapes.push(scrape);
        tokio::spawn(task);
    }
}

/// A client of the endpoint: whether its whole request has come, and its
/// end, which the endpoint may bring forward.
#[derive(Clone, Default)]
struct Scrape {
    asked: Arc<std::sync::atomic::AtomicBool>,
    cancel: CancellationToken,
}

/// Closes the oldest client whose request has not all come yet, if there
/// is one. (Those whose request has come are being answered, in moments.)
fn close_an_unfinished_one(scrapes: &mut Vec<Scrape>) -> bool {
    let unfinished = (scrapes.iter()).position(|scrape| !scrape.asked.load(Relaxed));
    let Some(oldest) = unfinished else {
        return false;
    };
    scrapes.remove(oldest).cancel.cancel();
    true
}

/// One client, within the scrape timeout, until it is closed early.
async fn serve_scrape<F>(stream: TcpStream, render: Arc<F>, scrape: Scrape)
where
    F: Fn() -> String + Send + Sync + 'static,
{
    let answer = tokio::time::timeout(SCRAPE_TIMEOUT, answer(stream, &*render, &scrape.asked));
    let answered = tokio::select! {
        answered = answer => matches!(answered, Ok(Ok(()))),
        () = scrape.cancel.cancelled() => false,
    };
    if !answered {
        debug!("a metrics request failed, timed out or was closed for a newer one");
    }
    scrape.cancel.cancel(); // done: its place is free
}

/// Reads one request head (saying so in `asked` once it has all come),
/// then writes the metrics and closes.
async fn answer(
    mut stream: TcpStream,
    render: &(dyn Fn() -> String + Sync),
    asked: &std::sync::atomic::AtomicBool,
) -> io::Result<()> {
    let mut head = Vec::new();
    let mut reader = (&mut stream).take(MAX_REQUEST_HEAD);
    while !head.windows(4).any(|line_end| line_end == b"\r\n\r\n") {
        if reader.read_buf(&mut head).await? == 0 {
            return Err(io::ErrorKind::InvalidData.into());
        }
    }
    asked.store(true, Relaxed);
    let body = render();
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
// ANCHOR_END: endpoint

// ANCHOR: endpoint_test
#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::task::JoinHandle;

    use super::*;

    /// An endpoint on a free port that serves one line, and its shutdown.
    async fn endpoint() -> (SocketAddr, CancellationToken, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let render = || "kv_requests_total 3\n".to_owned();
        let server = tokio::spawn(serve_metrics(listener, render, shutdown.clone()));
        (addr, shutdown, server)
    }

    /// A scrape: a GET, and the whole reply.
    async fn scrape(addr: SocketAddr) -> String {
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        client.read_to_string(&mut reply).await.unwrap();
        reply
    }

    #[tokio::test]
    async fn the_endpoint_answers_a_get_and_ignores_a_flood() {
        let (addr, shutdown, server) = endpoint().await;
        // A client that sends far more than a request head: cut off at
        // once, not when the scrape's time is up.
        let started = std::time::Instant::now();
        let mut flood = TcpStream::connect(addr).await.unwrap();
        let junk = vec![b'x'; 64 * 1024];
        let _ = flood.write_all(&junk).await;
        let mut rest = Vec::new();
        let _ = flood.read_to_end(&mut rest).await;
        assert!(rest.is_empty(), "no answer to a head that never ends");
        assert!(started.elapsed() < SCRAPE_TIMEOUT / 2);

        let reply = scrape(addr).await;
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.ends_with("\r\n\r\nkv_requests_total 3\n"), "{reply}");
        shutdown.cancel();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn slow_clients_cannot_keep_a_scrape_waiting() {
        let (addr, shutdown, server) = endpoint().await;
        // Ten times as many clients as there are places, that send a byte
        // of a request, then nothing.
        let mut slow = Vec::new();
        for _ in 0..10 * SCRAPERS {
            let mut client = TcpStream::connect(addr).await.unwrap();
            client.write_all(b"G").await.unwrap();
            slow.push(client);
        }
        let started = std::time::Instant::now();
        let reply = scrape(addr).await;
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        let waited = started.elapsed();
        assert!(waited < SCRAPE_TIMEOUT / 5, "{waited:?}");
        shutdown.cancel();
        server.await.unwrap();
    }
}
// ANCHOR_END: endpoint_test
