// ANCHOR: args
//! A load generator for `kvs`: C connections share N requests, half
//! `hset`, half `hget`, and it prints the throughput and latencies.
//!
//! cargo run --release --example loadgen -- -c 50 -n 100000
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
use kv::{CommandRequest, ProstClientStream, TlsClientConnector};
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

    /// How many connections send requests at the same time.
    #[arg(short = 'c', long, default_value_t = 50)]
    connections: usize,

    /// How many requests to send in all.
    #[arg(short = 'n', long, default_value_t = 100_000)]
    requests: usize,

    /// Also move a 16 MB compressible value back and forth, all along.
    #[arg(long)]
    heavy: bool,
}
// ANCHOR_END: args

// ANCHOR: client
/// One connection's share of the work; returns each request's latency.
async fn run_client(
    id: usize,
    requests: usize,
    addr: String,
    tls: TlsClientConnector,
) -> anyhow::Result<Vec<Duration>> {
    let tcp = TcpStream::connect(&addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let mut client = ProstClientStream::new(tls.connect(tcp).await?);
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
        let response = client.execute(request).await?;
        latencies.push(start.elapsed());
        if !response.is_ok() {
            bail!("error {}: {}", response.status, response.message);
        }
    }
    client.close().await?;
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
    let tcp = TcpStream::connect(&addr).await?;
    let mut client = ProstClientStream::new(tls.connect(tcp).await?);
    let value = "a heavy value, ".repeat(16_000_000 / 15);
    let mut trips = 0;
    while !done.load(Ordering::Relaxed) {
        let set = CommandRequest::new_hset("heavy", "k", value.as_str());
        let res = client.execute(set).await?;
        if !res.is_ok() {
            bail!("error {}: {}", res.status, res.message);
        }
        client
            .execute(CommandRequest::new_hget("heavy", "k"))
            .await?;
        trips += 1;
    }
    client.close().await?;
    Ok(trips)
}
// ANCHOR_END: heavy

// ANCHOR: main
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.connections == 0 || args.requests < args.connections {
        bail!("need at least one connection, and a request per connection");
    }
    let tls = TlsClientConnector::from_pem_files("localhost", &args.ca, None)?;

    let done = Arc::new(AtomicBool::new(false));
    let heavy = args
        .heavy
        .then(|| tokio::spawn(run_heavy(args.addr.clone(), tls.clone(), Arc::clone(&done))));

    let start = Instant::now();
    let per_client = args.requests / args.connections;
    let clients: Vec<_> = (0..args.connections)
        .map(|id| tokio::spawn(run_client(id, per_client, args.addr.clone(), tls.clone())))
        .collect();
    let mut latencies = Vec::with_capacity(args.requests);
    for client in clients {
        latencies.extend(client.await??);
    }
    let elapsed = start.elapsed();
    done.store(true, Ordering::Relaxed);
    if let Some(heavy) = heavy {
        let trips = heavy.await??;
        println!("meanwhile: {trips} round trips of a 16 MB value");
    }

    latencies.sort_unstable();
    let total = latencies.len();
    println!(
        "{total} requests over {} connections in {elapsed:.2?}",
        args.connections
    );
    println!(
        "throughput: {:.0} requests/s",
        total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "latency: p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies[total - 1]
    );
    Ok(())
}
// ANCHOR_END: main
