//! kvbench: one load generator for the last chapter's `kvs`, for Redis and
//! for an echo server that sets the floor, so that their numbers come
//! from the same client, the same connections and the same requests.
//! `scripts/bench` runs it; see the book's benchmark page.

mod connect;
mod cpu;
mod echo;
mod load;
mod protocol;
mod report;

use std::{
    fs::OpenOptions,
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::{
    connect::{Target, Tls, acceptor, bare_connector},
    load::{Bound, Load},
    protocol::{Echo, Kv, Protocol, Resp},
};

#[derive(Parser)]
#[command(about = "Load for kvs, Redis and an echo server, from one client")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sends load to a server, then prints requests/s and latencies.
    Run(RunArgs),
    /// Serves the echo protocol until stopped.
    Echo(EchoArgs),
    /// Draws the charts and the table of results from `run --out` files.
    Report(report::ReportArgs),
}

/// Which server, and so which protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
enum Server {
    Kvs,
    Redis,
    Echo,
}

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long, value_enum)]
    server: Server,

    #[arg(long, default_value = "127.0.0.1:9527")]
    addr: String,

    /// Use TLS, trusting this CA (PEM). `kvs` needs it.
    #[arg(long, value_name = "PATH")]
    ca: Option<PathBuf>,

    /// The name the server's certificate must have.
    #[arg(long, default_value = "localhost")]
    domain: String,

    #[arg(short, long, default_value_t = 50)]
    connections: usize,

    /// Requests in flight on each connection: sent together, then awaited.
    #[arg(short, long, default_value_t = 1)]
    depth: usize,

    /// Bytes in each value that `hset` stores and `hget` fetches.
    #[arg(short, long, default_value_t = 16)]
    value_size: usize,

    /// How long to run.
    #[arg(short, long, default_value_t = 5.0)]
    seconds: f64,

    /// Send this many requests instead, however long they take.
    #[arg(short = 'n', long, conflicts_with = "seconds")]
    requests: Option<u64>,

    /// Threads of the client's runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,

    /// Append the result, as a line of JSON, to this file.
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,

    /// Which repetition of the matrix this is, for the report.
    #[arg(long, default_value_t = 0)]
    round: usize,

    /// The server's process id: its CPU time per request is reported too
    /// (Linux only). On a busy machine that varies less than requests/s.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
}

#[derive(clap::Args)]
struct EchoArgs {
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: String,

    /// Serve TLS with this certificate chain (PEM); needs `--key`.
    #[arg(long, value_name = "PATH", requires = "key")]
    cert: Option<PathBuf>,

    #[arg(long, value_name = "PATH", requires = "cert")]
    key: Option<PathBuf>,
}

/// One run's result: a line of the `--out` file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    server: Server,
    tls: bool,
    connections: usize,
    depth: usize,
    value_size: usize,
    round: usize,
    requests: u64,
    errors: u64,
    seconds: f64,
    per_second: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    /// CPU time (user and system) per request, of the server if its pid
    /// was given, and of this client.
    server_cpu_us: Option<f64>,
    client_cpu_us: Option<f64>,
    /// When it ran, in seconds since 1970.
    at: u64,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(args.threads.max(1))
                .enable_all()
                .build()?;
            let record = runtime.block_on(run(&args))?;
            println!("{}", summary(&record));
            if let Some(path) = &args.out {
                append(path, &record)?;
            }
            anyhow::ensure!(record.errors == 0, "{} answers were errors", record.errors);
            Ok(())
        }
        Command::Echo(args) => tokio::runtime::Runtime::new()?.block_on(serve_echo(args)),
        Command::Report(args) => report::write(&args),
    }
}

async fn run(args: &RunArgs) -> anyhow::Result<Record> {
    anyhow::ensure!(
        args.connections > 0 && args.depth > 0,
        "connections and depth must be positive"
    );
    let tls = match (&args.ca, args.server) {
        (None, Server::Kvs) => anyhow::bail!("kvs speaks only TLS: give --ca"),
        (None, _) => Tls::Plain,
        (Some(ca), Server::Kvs) => Tls::Kv(kv::TlsClientConnector::from_pem_files(
            &args.domain,
            ca,
            None,
        )?),
        (Some(ca), _) => {
            let (connector, name) = bare_connector(ca, &args.domain)?;
            Tls::Bare(connector, name)
        }
    };
    let target = Target {
        addr: args.addr.clone(),
        tls,
        multiplexed: args.server == Server::Kvs,
    };
    let value = random_bytes(args.value_size);
    // A table per value size: an `hset` then replaces a value of the same
    // size (and kvs answers with it), whatever ran before.
    let table = format!("bench-{}", args.value_size);
    let protocol: Box<dyn Protocol> = match args.server {
        Server::Kvs => Box::new(Kv),
        Server::Redis => Box::new(Resp),
        Server::Echo => Box::new(Echo::like_kv(&table, &value)?),
    };
    let bound = match args.requests {
        Some(n) => Bound::Requests(n),
        None => Bound::Time(Duration::try_from_secs_f64(args.seconds).context("a bad --seconds")?),
    };
    let load = Load {
        table,
        connections: args.connections,
        depth: args.depth,
        value,
        bound,
    };
    let outcome = load::run(&target, protocol, load, args.server_pid).await?;
    let per_request =
        |used: Option<Duration>| Some(used?.as_secs_f64() * 1e6 / outcome.requests.max(1) as f64);
    let quantile = |q| outcome.latency.value_at_quantile(q);
    Ok(Record {
        server: args.server,
        tls: args.ca.is_some(),
        connections: args.connections,
        depth: args.depth,
        value_size: args.value_size,
        round: args.round,
        requests: outcome.requests,
        errors: outcome.errors,
        seconds: outcome.elapsed.as_secs_f64(),
        per_second: outcome.per_second(),
        p50_us: quantile(0.5),
        p99_us: quantile(0.99),
        p999_us: quantile(0.999),
        max_us: outcome.latency.max(),
        server_cpu_us: per_request(outcome.server_cpu),
        client_cpu_us: per_request(outcome.client_cpu),
        at: SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
    })
}

/// Bytes that do not compress, like most large values (images, archives,
/// encrypted data): the worst case for a protocol that compresses.
fn random_bytes(len: usize) -> Bytes {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            // xorshift64: plenty for bytes that must not compress.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

fn summary(record: &Record) -> String {
    let ms = |us: u64| us as f64 / 1000.0;
    format!(
        "{:<5} {:<5} c={:<3} d={:<2} v={:<6} {:>9.0} requests/s  p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  ({} requests in {:.1} s){}",
        format!("{:?}", record.server).to_lowercase(),
        if record.tls { "tls" } else { "plain" },
        record.connections,
        record.depth,
        record.value_size,
        record.per_second,
        ms(record.p50_us),
        ms(record.p99_us),
        ms(record.p999_us),
        record.requests,
        record.seconds,
        match record.server_cpu_us {
            Some(us) => format!(", server CPU {us:.1} µs/request"),
            None => String::new(),
        },
    )
}

fn append(path: &Path, record: &Record) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(file, "{}", serde_json::to_string(record)?)?;
    Ok(())
}

async fn serve_echo(args: EchoArgs) -> anyhow::Result<()> {
    let tls = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => Some(acceptor(cert, key)?),
        _ => None,
    };
    let listener = TcpListener::bind(&args.addr).await?;
    // The line that scripts wait for.
    println!("echo listening on {}", listener.local_addr()?);
    echo::serve(listener, tls).await
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::protocol::Op;

    #[test]
    fn random_values_do_not_compress() {
        let value = random_bytes(64 * 1024);
        let op = Op {
            set: true,
            table: "t",
            key: "k",
            value: &value,
        };
        let mut frame = BytesMut::new();
        Kv.encode(&op, &mut frame).unwrap();
        // The encoder tried gzip, and sent the value as it is: no gain.
        assert_eq!(frame[0] & 0x80, 0);
        assert!(frame.len() > value.len());
    }
}
