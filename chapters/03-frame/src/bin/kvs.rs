// ANCHOR: imports
//! kvs: the KV server.
//!
//! Logs go to stderr (set the level with RUST_LOG, e.g. RUST_LOG=debug).
//! Stdout gets one line, `kvs listening on ADDR`, once the server accepts
//! connections: scripts and tests wait for it.

use std::{io::IsTerminal, path::PathBuf};

use anyhow::Context;
use clap::Parser;
use kv::{DEFAULT_MAX_FRAME, MemTable, RedbStore, ServerConfig, Service, Storage, serve};
use tokio::net::TcpListener;
use tracing::{debug, info};
use tracing_subscriber::EnvFilter;
// ANCHOR_END: imports

// ANCHOR: args
/// The KV server.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:9527")]
    addr: String,

    /// Keep the data in this database file (created if missing) instead of
    /// in memory.
    #[arg(long, value_name = "PATH")]
    db: Option<PathBuf>,

    /// The largest request or answer, in bytes, before and after inflating.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_FRAME)]
    max_frame: usize,
}
// ANCHOR_END: args

// ANCHOR: main
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();

    let listener = TcpListener::bind(&args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    match &args.db {
        Some(path) => {
            let store = RedbStore::open(path)
                .with_context(|| format!("cannot open database {}", path.display()))?;
            info!(path = %path.display(), "storing data in a database file");
            run(listener, store, args.max_frame).await
        }
        None => {
            info!("storing data in memory");
            run(listener, MemTable::new(), args.max_frame).await
        }
    }
}

/// Serves until Ctrl-C. Generic, so each storage gets its own copy.
async fn run<Store: Storage + 'static>(
    listener: TcpListener,
    store: Store,
    max_frame: usize,
) -> anyhow::Result<()> {
    let service = Service::builder(store)
        .max_answer(max_frame)
        .on_executed(|response| debug!(status = response.status, "executed"))
        .build();
    let config = ServerConfig { max_frame };
    println!("kvs listening on {}", listener.local_addr()?);
    tokio::select! {
        () = serve(listener, service, config) => {}
        signal = tokio::signal::ctrl_c() => {
            signal.context("cannot wait for Ctrl-C")?;
            info!("shutting down");
        }
    }
    Ok(())
}
// ANCHOR_END: main
