// ANCHOR: imports
//! kvs: the KV server.
//!
//! Logs go to stderr (set the level with RUST_LOG, e.g. RUST_LOG=debug).
//! Stdout gets one line, `kvs listening on ADDR`, once the server accepts
//! connections: scripts and tests wait for it.
//!
//! Without --cert and --key, kvs uses development certificates from
//! --dev-certs (default `dev-certs/`), and generates them on first use.

use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use clap::Parser;
use kv::{
    DEFAULT_CONNECTION_WINDOW, DEFAULT_MAX_FRAME, DEFAULT_MAX_STREAMS, DEFAULT_SUBSCRIBER_QUEUE,
    DevCertPaths, DevCerts, MAX_SUBSCRIBER_QUEUE, MemTable, RedbStore, ServerConfig, Service,
    Storage, TlsServerAcceptor, serve,
};
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

    /// How many streams a connection may have open at once.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_STREAMS)]
    max_streams: usize,

    /// How many bytes a connection's streams may hold unread, together.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_CONNECTION_WINDOW)]
    connection_window: usize,

    /// How many messages may wait for a subscriber; one that falls further
    /// behind loses its subscription.
    #[arg(long, value_name = "MESSAGES", default_value_t = DEFAULT_SUBSCRIBER_QUEUE)]
    subscriber_queue: usize,

    /// The server's certificate chain (PEM).
    #[arg(long, value_name = "PATH", requires = "key")]
    cert: Option<PathBuf>,

    /// The server certificate's private key (PEM).
    #[arg(long, value_name = "PATH", requires = "cert")]
    key: Option<PathBuf>,

    /// Require client certificates signed by this CA (PEM): mutual TLS.
    #[arg(long, value_name = "PATH")]
    ca: Option<PathBuf>,

    /// Where development certificates are kept when --cert is not given.
    #[arg(long, value_name = "DIR", default_value = "dev-certs")]
    dev_certs: PathBuf,
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
    let config = ServerConfig {
        max_frame: args.max_frame,
        max_streams: args.max_streams,
        connection_window: args.connection_window,
        tls: tls_acceptor(&args)?,
    };
    config.check()?;
    if !(1..=MAX_SUBSCRIBER_QUEUE).contains(&args.subscriber_queue) {
        bail!("--subscriber-queue must be from 1 to {MAX_SUBSCRIBER_QUEUE}");
    }

    let listener = TcpListener::bind(&args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    match &args.db {
        Some(path) => {
            let store = RedbStore::open(path)
                .with_context(|| format!("cannot open database {}", path.display()))?;
            info!(path = %path.display(), "storing data in a database file");
            run(listener, store, config, args.subscriber_queue).await
        }
        None => {
            info!("storing data in memory");
            run(listener, MemTable::new(), config, args.subscriber_queue).await
        }
    }
}

/// Serves until Ctrl-C. Generic, so each storage gets its own copy.
async fn run<Store: Storage + 'static>(
    listener: TcpListener,
    store: Store,
    config: ServerConfig,
    subscriber_queue: usize,
) -> anyhow::Result<()> {
    let service = Service::builder(store)
        .max_answer(config.max_frame)
        .subscriber_queue(subscriber_queue)
        .on_executed(|response| debug!(status = response.status, "executed"))
        .build();
    println!("kvs listening on {}", listener.local_addr()?);
    tokio::select! {
        result = serve(listener, service, config) => result?,
        signal = tokio::signal::ctrl_c() => {
            signal.context("cannot wait for Ctrl-C")?;
            info!("shutting down");
        }
    }
    Ok(())
}
// ANCHOR_END: main

// ANCHOR: tls_acceptor
/// The TLS setup the flags ask for: the given certificate, or development
/// certificates, generated if they do not exist yet.
fn tls_acceptor(args: &Args) -> anyhow::Result<TlsServerAcceptor> {
    let client_ca = args.ca.as_deref();
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        return Ok(TlsServerAcceptor::from_pem_files(cert, key, client_ca)?);
    }

    let paths = DevCertPaths::in_dir(&args.dev_certs);
    if !paths.exist() {
        DevCerts::generate(&["localhost", "127.0.0.1"])?
            .write_to(&args.dev_certs)
            .with_context(|| format!("cannot write to {}", args.dev_certs.display()))?;
        info!(dir = %args.dev_certs.display(), "generated development certificates");
    }
    print_trust_hint(&args.dev_certs);
    Ok(TlsServerAcceptor::from_pem_files(
        &paths.server_cert,
        &paths.server_key,
        client_ca,
    )?)
}

/// Tells the user how a client can trust the development certificates.
fn print_trust_hint(dir: &Path) {
    let ca = DevCertPaths::in_dir(dir).ca_cert;
    let ca = ca.canonicalize().unwrap_or(ca);
    eprintln!("Using development certificates from {}.", dir.display());
    eprintln!("kvc trusts them when run from this folder; from elsewhere, use:");
    eprintln!("    kvc --ca {} ...", ca.display());
}
// ANCHOR_END: tls_acceptor
