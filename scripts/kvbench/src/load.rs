//! The load: connections that each send their requests in batches of
//! `depth` and wait for the answers, with the latency of every request
//! kept in an HDR histogram.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use futures::future::try_join_all;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    connect::{Io, Target},
    cpu,
    protocol::{Op, Protocol},
};

/// Keys per connection: `hset` and `hget` take turns over them, so each
/// `hget` finds the value that the `hset` before it stored. With 50
/// connections and 64 KiB values, a server holds 320 MiB of them.
const KEYS: usize = 100;

/// When a run ends.
#[derive(Clone, Copy, Debug)]
pub enum Bound {
    Time(Duration),
    /// Requests in all, shared out between the connections.
    Requests(u64),
}

/// What to send, over how many connections.
pub struct Load {
    pub table: String,
    pub connections: usize,
    /// Requests in flight per connection: sent together, then awaited.
    pub depth: usize,
    pub value: Bytes,
    pub bound: Bound,
}

/// What a run measured.
pub struct Outcome {
    pub requests: u64,
    /// Answers that reported an error.
    pub errors: u64,
    pub elapsed: Duration,
    /// Latencies in microseconds.
    pub latency: Histogram<u64>,
    /// CPU time used meanwhile by the server (if its pid was given) and by
    /// this process.
    pub server_cpu: Option<Duration>,
    pub client_cpu: Option<Duration>,
}

impl Outcome {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

/// What every connection's task shares.
struct Shared {
    protocol: Box<dyn Protocol>,
    load: Load,
    stop: AtomicBool,
    done: AtomicU64,
}

/// Opens the connections, then runs `load` on them all at once and shows
/// its progress. Connecting (and the TLS handshakes) is not measured.
pub async fn run(
    target: &Target,
    protocol: Box<dyn Protocol>,
    load: Load,
    server_pid: Option<u32>,
) -> anyhow::Result<Outcome> {
    let connections = try_join_all((0..load.connections).map(|_| target.connect()))
        .await
        .with_context(|| format!("cannot connect to {}", target.addr))?;
    let quota = match load.bound {
        Bound::Time(_) => u64::MAX,
        Bound::Requests(n) => n.div_ceil(load.connections as u64),
    };
    let shared = Arc::new(Shared {
        protocol,
        load,
        stop: AtomicBool::new(false),
        done: AtomicU64::new(0),
    });
    let cpu = || (server_pid.and_then(cpu::of_process), cpu::of_self());
    let cpu_before = cpu();
    let started = Instant::now();
    let tasks: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(id, io)| tokio::spawn(one_connection(io, id, quota, Arc::clone(&shared))))
        .collect();
    let mut tasks = try_join_all(tasks);

    let progress = progress_bar(shared.load.bound);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let results = loop {
        tokio::select! {
            results = &mut tasks => break results?,
            _ = tick.tick() => {
                let elapsed = started.elapsed();
                let done = shared.done.load(Ordering::Relaxed);
                progress.set_position(match shared.load.bound {
                    Bound::Time(limit) => {
                        if elapsed >= limit {
                            shared.stop.store(true, Ordering::Relaxed);
                        }
                        elapsed.as_millis() as u64
                    }
                    Bound::Requests(_) => done,
                });
                progress.set_message(format!("{:.0} requests/s", done as f64 / elapsed.as_secs_f64()));
            }
        }
    };
    let elapsed = started.elapsed();
    let cpu_after = cpu();
    progress.finish_and_clear();

    let used = |before: Option<Duration>, after: Option<Duration>| after?.checked_sub(before?);
    let mut outcome = Outcome {
        requests: 0,
        errors: 0,
        elapsed,
        latency: Histogram::new(3)?,
        server_cpu: used(cpu_before.0, cpu_after.0),
        client_cpu: used(cpu_before.1, cpu_after.1),
    };
    for result in results {
        let (latency, requests, errors) = result?;
        outcome.latency.add(latency)?;
        outcome.requests += requests;
        outcome.errors += errors;
    }
    Ok(outcome)
}

fn progress_bar(bound: Bound) -> ProgressBar {
    let (len, unit) = match bound {
        Bound::Time(limit) => (limit.as_millis() as u64, "ms"),
        Bound::Requests(n) => (n, "requests"),
    };
    let style = format!("{{bar:30}} {{pos}}/{{len}} {unit}, {{msg}}");
    // Drawn on stderr, and only when that is a terminal.
    ProgressBar::new(len)
        .with_style(ProgressStyle::with_template(&style).expect("a valid template"))
}

// ANCHOR: batch
/// One connection's requests: a batch of `depth` is written while the
/// answers are read, and the next batch goes once all have come. Returns
/// the latencies, the requests sent and the errors among the answers.
async fn one_connection(
    io: Box<dyn Io>,
    id: usize,
    quota: u64,
    shared: Arc<Shared>,
) -> anyhow::Result<(Histogram<u64>, u64, u64)> {
    let Shared { protocol, load, .. } = &*shared;
    let keys: Vec<String> = (0..KEYS).map(|k| format!("key:{id:04}{k:04}")).collect();
    let (mut reader, mut writer) = tokio::io::split(io);
    let mut latency = Histogram::<u64>::new(3)?;
    let (mut out, mut input) = (BytesMut::new(), BytesMut::with_capacity(64 * 1024));
    let (mut sent, mut errors) = (0, 0);
    while sent < quota && !shared.stop.load(Ordering::Relaxed) {
        let batch = (load.depth as u64).min(quota - sent);
        out.clear();
        for i in sent..sent + batch {
            let op = Op {
                set: i % 2 == 0,
                table: &load.table,
                key: &keys[(i / 2) as usize % KEYS],
                value: &load.value,
            };
            protocol.encode(&op, &mut out)?;
        }
        let started = Instant::now();
        // Both at once: a server may answer the first requests before it
        // has read the last, and wait for us to read before it reads on.
        let write = async {
            writer.write_all(&out).await?;
            writer.flush().await?;
            anyhow::Ok(())
        };
        let read = async {
            let mut answered = 0;
            while answered < batch {
                match protocol.decode(&mut input)? {
                    Some(ok) => {
                        answered += 1;
                        errors += u64::from(!ok);
                        latency.record(started.elapsed().as_micros() as u64)?;
                    }
                    None => {
                        if reader.read_buf(&mut input).await? == 0 {
                            bail!("the server closed the connection");
                        }
                    }
                }
            }
            Ok(())
        };
        tokio::try_join!(write, read)?;
        sent += batch;
        shared.done.fetch_add(batch, Ordering::Relaxed);
    }
    // A polite end: the server sees the connection close, not fail.
    let _ = writer.shutdown().await;
    Ok((latency, sent, errors))
}
// ANCHOR_END: batch
