// ANCHOR: imports
//! kvs: the KV server.
//!
//! Every setting is a flag (`kvs --help` lists them). Logs go to stderr
//! (set the level with RUST_LOG, e.g. RUST_LOG=debug). Stdout gets `kvs
//! listening on ADDR` once the server accepts connections (scripts and
//! tests wait for it).
//!
//! Without --cert and --key, kvs uses development certificates from
//! --dev-certs (default `dev-certs/`), and generates them on first use.

use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use clap::Parser;
use kv::{
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_SUBSCRIBER_QUEUE, DevCertPaths, DevCerts,
    MAX_SUBSCRIBER_QUEUE, MemTable, RedbStore, ServerConfig, Service, Storage, TlsServerAcceptor,
    limits::parse_seconds, serve,
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

    /// How many connections may be open at once.
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,

    /// How many connections may come from one IP address.
    #[arg(long, value_name = "N", value_parser = at_least_1)]
    max_per_address: Option<usize>,

    /// How many streams a connection may have open at once.
    #[arg(long, value_name = "N")]
    max_streams: Option<usize>,

    /// How many bytes a connection's streams may hold unread, together
    /// [default: the least that works for --max-streams].
    #[arg(long, value_name = "BYTES")]
    connection_window: Option<usize>,

    /// The largest request or answer, in bytes, before and after inflating.
    #[arg(long, value_name = "BYTES", value_parser = at_least_1)]
    max_frame: Option<usize>,

    /// How many messages may wait for a subscriber; one that falls further
    /// behind loses its subscription.
    #[arg(long, value_name = "MESSAGES", value_parser = subscriber_queue)]
    subscriber_queue: Option<usize>,

    /// Seconds a connection must have been quiet before a new client of a
    /// full server may take its place.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    quiet_time: Option<Duration>,

    /// Seconds a client has to finish the TLS handshake.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    handshake_timeout: Option<Duration>,

    /// Seconds a frame may take to arrive, once it has started.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    frame_timeout: Option<Duration>,

    /// Seconds a stream may wait for its next request, and a connection
    /// may stay without streams, before the server closes it.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    idle_timeout: Option<Duration>,

    /// Seconds an answer may wait for the client to read it.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    write_timeout: Option<Duration>,

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

// ANCHOR: parsers
/// Overrides a setting with a flag that was given.
fn set<T>(setting: &mut T, flag: Option<T>) {
    if let Some(value) = flag {
        *setting = value;
    }
}

/// A count or a size of at least 1: with 0, the server would refuse all.
fn at_least_1(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        parsed => parsed.map_err(|err| err.to_string()),
    }
}

/// A subscriber's queue: from 1 to [`MAX_SUBSCRIBER_QUEUE`] messages.
fn subscriber_queue(text: &str) -> Result<usize, String> {
    match text.parse() {
        Ok(queue) if (1..=MAX_SUBSCRIBER_QUEUE).contains(&queue) => Ok(queue),
        Ok(_) => Err(format!("must be from 1 to {MAX_SUBSCRIBER_QUEUE}")),
        Err(err) => Err(err.to_string()),
    }
}
// ANCHOR_END: parsers
// ANCHOR_END: args

// ANCHOR: main
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logs();
    start(&args).await
}

/// Everything that can fail at start fails here, before anything runs;
/// then serves until Ctrl-C.
async fn start(args: &Args) -> anyhow::Result<()> {
    let server = server_config(args)?;
    let listener = TcpListener::bind(&args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;

    match &args.db {
        Some(path) => {
            let store = RedbStore::open(path)
                .with_context(|| format!("cannot open database {}", path.display()))?;
            info!(path = %path.display(), "storing data in a database file");
            run(listener, store, server, args).await
        }
        None => {
            info!("storing data in memory");
            run(listener, MemTable::new(), server, args).await
        }
    }
}

/// Serves until Ctrl-C. Generic, so each storage gets its own copy.
async fn run<Store: Storage + 'static>(
    listener: TcpListener,
    store: Store,
    server: ServerConfig,
    args: &Args,
) -> anyhow::Result<()> {
    let service = Service::builder(store)
        .max_answer(server.max_frame)
        .subscriber_queue(args.subscriber_queue.unwrap_or(DEFAULT_SUBSCRIBER_QUEUE))
        .on_executed(|response| debug!(status = response.status, "executed"))
        .build();
    println!("kvs listening on {}", listener.local_addr()?);
    tokio::select! {
        result = serve(listener, service, server) => result?,
        signal = tokio::signal::ctrl_c() => {
            signal.context("cannot wait for Ctrl-C")?;
            info!("shutting down");
        }
    }
    Ok(())
}
// ANCHOR_END: main

// ANCHOR: logs
/// Logs to stderr; RUST_LOG, if set, says which.
fn init_logs() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
// ANCHOR_END: logs

// ANCHOR: server_config
// ANCHOR: settings
/// The server's settings from the flags, with its TLS set up; a flag not
/// given keeps the default of [`ServerConfig::new`].
fn server_config(args: &Args) -> anyhow::Result<ServerConfig> {
    let handshake_timeout = args.handshake_timeout.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT);
    let tls = tls_acceptor(args)?.handshake_timeout(handshake_timeout);
    let mut server = ServerConfig::new(tls);
    set(&mut server.max_frame, args.max_frame);
    set(&mut server.max_streams, args.max_streams);
    server.connection_window = args.connection_window;
    set(&mut server.max_connections, args.max_connections);
    server.max_per_address = args.max_per_address;
    set(&mut server.quiet_time, args.quiet_time);
    set(&mut server.frame_timeout, args.frame_timeout);
    set(&mut server.idle_timeout, args.idle_timeout);
    set(&mut server.write_timeout, args.write_timeout);
    server.check()?;
    Ok(server)
}
// ANCHOR_END: settings

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
// ANCHOR_END: server_config
