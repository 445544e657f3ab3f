// ANCHOR: args
//! A load generator for `kvs`: C connections of S streams each share N
//! requests, half `hset`, half `hget`, and it prints the throughput and
//! latencies. Each `--shape CxS` runs in turn, `--rounds` times over, so
//! that shapes measured in one run can be compared.
//!
//! cargo run --release --example loadgen -- --shape 1x50 --shape 50x1
//!
//! With `--heavy`, one more connection sets and gets a 16 MB value in a
//! loop meanwhile: the latencies then show whether large requests hold up
//! small ones.
//!
//! Start `kvs` first, in the same folder (it must trust `dev-certs/`).

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use kv::{Client, CommandRequest, ProstClientStream, TlsClientConnector};
use tokio::net::TcpStream;

/// A load generator for the KV server.
#[derive(Parser)]
struct Args {
    /// The server's address.
    #[arg(long, default_value = "127.0.0.1:9527")]
    addr: String,

    /// The CA that signed the server's certificate (PEM).
    #[arg(long, value_name = "PATH", default_value = "dev-certs/ca.pem")]
    ca: PathBuf,

    /// Connections x streams per connection, e.g. 1x50: 50 streams over
    /// one connection. Give it more than once to compare shapes.
    #[arg(long = "shape", value_name = "CxS", value_parser = parse_shape, default_value = "50x1")]
    shapes: Vec<Shape>,

    /// How many times to run each shape, taking turns.
    #[arg(long, default_value_t = 1)]
    rounds: usize,

    /// How many requests to send in all, per shape and round.
    #[arg(short = 'n', long, default_value_t = 100_000)]
    requests: usize,

    /// Also move a 16 MB compressible value back and forth, all along.
    #[arg(long)]
    heavy: bool,
}

/// C connections of S streams each.
#[derive(Clone, Copy)]
struct Shape {
    connections: usize,
    streams: usize,
}

fn parse_shape(text: &str) -> Result<Shape, String> {
    let parse = |n: &str| n.parse::<usize>().ok().filter(|&n| n > 0);
    match text.split_once('x').map(|(c, s)| (parse(c), parse(s))) {
        Some((Some(connections), Some(streams))) => Ok(Shape {
            connections,
            streams,
        }),
        _ => Err(format!("`{text}` is not CxS, such as 1x50")),
    }
}
// ANCHOR_END: args

// ANCHOR: client
/// Opens a TLS connection, multiplexed.
async fn connect(addr: &str, tls: &TlsClientConnector) -> anyhow::Result<Client> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    tcp.set_nodelay(true)?;
    Ok(Client::new(tls.connect(tcp).await?))
}

/// One stream's share of the work; returns each request's latency.
async fn run_stream(id: usize, requests: usize, client: Client) -> anyhow::Result<Vec<Duration>> {
    let mut stream = ProstClientStream::new(client.open().await?);
    let mut latencies = Vec::with_capacity(requests);
    for i in 0..requests {
        // Each hget reads the key that the hset just before it wrote.
        let key = format!("key-{}", i / 2 % 100);
        let request = if i % 2 == 0 {
            CommandRequest::new_hset(format!("load-{id}"), key, i as i64)
        } else {
            CommandRequest::new_hget(format!("load-{id}"), key)
        };
        let start = Instant::now();
        let response = stream.execute(request).await?;
        latencies.push(start.elapsed());
        if !response.is_ok() {
            bail!("error {}: {}", response.status, response.message);
        }
    }
    stream.close().await?;
    Ok(latencies)
}
// ANCHOR_END: client

// ANCHOR: heavy
/// Sets and gets a 16 MB value that compresses well, until `done` is set;
/// returns how many round trips it made.
async fn run_heavy(
    addr: String,
    tls: TlsClientConnector,
    done: Arc<AtomicBool>,
) -> anyhow::Result<usize> {
    let client = connect(&addr, &tls).await?;
    let mut stream = ProstClientStream::new(client.open().await?);
    let value = "a heavy value, ".repeat(16_000_000 / 15);
    let mut trips = 0;
    while !done.load(Ordering::Relaxed) {
        let set = CommandRequest::new_hset("heavy", "k", value.as_str());
        let res = stream.execute(set).await?;
        if !res.is_ok() {
            bail!("error {}: {}", res.status, res.message);
        }
        stream
            .execute(CommandRequest::new_hget("heavy", "k"))
            .await?;
        trips += 1;
    }
    stream.close().await?;
    client.close().await;
    Ok(trips)
}
// ANCHOR_END: heavy

// ANCHOR: main
/// Runs `requests` requests over `shape`; prints one line of results.
async fn run_shape(args: &Args, shape: Shape, tls: &TlsClientConnector) -> anyhow::Result<()> {
    let Shape {
        connections,
        streams,
    } = shape;
    let workers = connections * streams;
    if args.requests < workers {
        bail!("{connections}x{streams} needs at least {workers} requests, one per stream");
    }
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(connect(&args.addr, tls).await?);
    }

    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|id| {
            let client = clients[id % connections].clone();
            tokio::spawn(run_stream(id, args.requests / workers, client))
        })
        .collect();
    let mut latencies = Vec::with_capacity(args.requests);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = start.elapsed();
    for client in clients {
        client.close().await;
    }

    latencies.sort_unstable();
    let total = latencies.len();
    println!(
        "{connections:>5}x{streams:<5} {total:>9} {:>12.0} {:>10.2?} {:>10.2?} {:>10.2?}",
        total as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies[total - 1]
    );
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tls = TlsClientConnector::from_pem_files("localhost", &args.ca, None)?;

    let done = Arc::new(AtomicBool::new(false));
    let heavy = args
        .heavy
        .then(|| tokio::spawn(run_heavy(args.addr.clone(), tls.clone(), Arc::clone(&done))));

    println!(
        "{:<11} {:>9} {:>12} {:>10} {:>10} {:>10}",
        "shape CxS", "requests", "requests/s", "p50", "p99", "max"
    );
    for _ in 0..args.rounds {
        for &shape in &args.shapes {
            run_shape(&args, shape, &tls).await?;
        }
    }

    done.store(true, Ordering::Relaxed);
    if let Some(heavy) = heavy {
        let trips = heavy.await??;
        println!("meanwhile: {trips} round trips of a 16 MB value");
    }
    Ok(())
}
// ANCHOR_END: main
