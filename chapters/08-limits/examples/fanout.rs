// ANCHOR: args
//! Measures fan-out: one publisher, N subscribers. Prints how many
//! messages reached subscribers per second, and how long each took from
//! publish to arrival. Each `--subscribers N` runs in turn.
//!
//! cargo run --release --example fanout -- --subscribers 1 --subscribers 100 --subscribers 1000
//!
//! Start `kvs` first, in the same folder (it must trust `dev-certs/`).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use futures::StreamExt;
use kv::{Client, CommandRequest, DEFAULT_MAX_STREAMS, Subscriber, TlsClientConnector, value};
use tokio::net::TcpStream;

/// A fan-out load generator for the KV server.
#[derive(Parser)]
struct Args {
    /// The server's address.
    #[arg(long, default_value = "127.0.0.1:9527")]
    addr: String,

    /// The CA that signed the server's certificate (PEM).
    #[arg(long, value_name = "PATH", default_value = "dev-certs/ca.pem")]
    ca: PathBuf,

    /// How many subscribers; give it more than once to compare.
    #[arg(long = "subscribers", value_name = "N", default_value = "100")]
    subscribers: Vec<usize>,

    /// How many messages to publish, one after the other.
    #[arg(short = 'n', long, default_value_t = 2_000)]
    messages: usize,
}
// ANCHOR_END: args

// ANCHOR: subscriber
/// Reads messages until it has `expected` or its subscription ends;
/// returns each message's time from publish to arrival.
async fn listen(
    mut subscriber: Subscriber,
    expected: usize,
    start: Instant,
) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::with_capacity(expected);
    while latencies.len() < expected {
        let Some(message) = subscriber.next().await else {
            break;
        };
        let message = message?;
        if !message.is_ok() {
            // Dropped for falling behind: what it got so far counts.
            break;
        }
        // The publisher put the time since `start` in each message.
        let Some(value::Value::Integer(sent)) =
            message.values.first().and_then(|v| v.value.clone())
        else {
            bail!("a message without a time");
        };
        latencies.push(
            start
                .elapsed()
                .saturating_sub(Duration::from_nanos(sent as u64)),
        );
    }
    Ok(latencies)
}
// ANCHOR_END: subscriber

// ANCHOR: run
async fn connect(addr: &str, tls: &TlsClientConnector) -> anyhow::Result<Client> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    tcp.set_nodelay(true)?;
    Ok(Client::new(tls.connect(tcp).await?))
}

/// One run: `subscribers` subscribers, `DEFAULT_MAX_STREAMS` to a
/// connection, and a publisher on a connection of its own.
async fn run(args: &Args, subscribers: usize, tls: &TlsClientConnector) -> anyhow::Result<()> {
    let topic = format!("fanout-{subscribers}");
    let mut clients = Vec::new();
    let mut listeners = Vec::with_capacity(subscribers);
    let start = Instant::now();
    for i in 0..subscribers {
        if i % DEFAULT_MAX_STREAMS == 0 {
            clients.push(connect(&args.addr, tls).await?);
        }
        let client = clients.last().expect("one per 100 subscribers");
        // Subscribed once this returns: no message can be missed.
        let subscriber = client.subscribe(&topic).await?;
        listeners.push(tokio::spawn(listen(subscriber, args.messages, start)));
    }

    let publisher = connect(&args.addr, tls).await?;
    let publishing = Instant::now();
    for _ in 0..args.messages {
        let sent = start.elapsed().as_nanos() as i64;
        let res = publisher
            .execute(CommandRequest::new_publish(&topic, [sent]))
            .await?;
        if !res.is_ok() {
            bail!("error {}: {}", res.status, res.message);
        }
    }
    let mut latencies = Vec::with_capacity(subscribers * args.messages);
    let mut dropped = 0;
    for listener in listeners {
        let got = listener.await??;
        if got.len() < args.messages {
            dropped += 1;
        }
        latencies.extend(got);
    }
    let elapsed = publishing.elapsed();
    for client in clients {
        client.close().await;
    }
    publisher.close().await;

    latencies.sort_unstable();
    let delivered = latencies.len();
    let at = |p: f64| latencies[((delivered - 1) as f64 * p).round() as usize];
    println!(
        "{subscribers:>11} {delivered:>10} {:>12.0} {:>10.2?} {:>10.2?} {dropped:>8}",
        delivered as f64 / elapsed.as_secs_f64(),
        at(0.50),
        at(0.99),
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.messages == 0 || args.subscribers.contains(&0) {
        bail!("need at least one message and one subscriber");
    }
    let tls = TlsClientConnector::from_pem_files("localhost", &args.ca, None)?;
    println!(
        "{:>11} {:>10} {:>12} {:>10} {:>10} {:>8}",
        "subscribers", "delivered", "delivered/s", "p50", "p99", "dropped"
    );
    for &subscribers in &args.subscribers {
        run(&args, subscribers, &tls).await?;
    }
    Ok(())
}
// ANCHOR_END: run
