// ANCHOR: imports
//! kvs: the KV server.
//!
//! Settings come from a TOML file (--config), with flags on top; `kvs
//! --print-config` prints the result as a file to start from. Logs go to
//! stderr (RUST_LOG, or the file's log.filter, says which). Stdout gets
//! `kvs metrics on ADDR` if there is a metrics endpoint, then `kvs
//! listening on ADDR` once the server accepts connections (scripts and
//! tests wait for it), and `kvs stopped after N answers` when it has shut
//! down.
//!
//! Ctrl-C or SIGTERM shuts it down gracefully; a second one, at once.

use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use clap::Parser;
use kv::{
    DevCertPaths, DevCerts, KvsConfig, MAX_SUBSCRIBER_QUEUE, MemTable, RedbStore, ServerConfig,
    Service, Storage, TlsServerAcceptor,
    config::{self, LogFormat},
    limits::{default_client_memory, default_max_connections, default_max_memory, parse_seconds},
    serve, telemetry,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;
// ANCHOR_END: imports

// ANCHOR: args
/// The KV server.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Read settings from this TOML file; the flags below override it.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,

    /// Print the settings in effect as a configuration file, and exit.
    #[arg(long)]
    print_config: bool,

    /// The address to listen on; port 0 picks a free port.
    #[arg(long)]
    addr: Option<String>,

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

    /// How many bytes one connection may make the server hold.
    #[arg(long, value_name = "BYTES")]
    connection_memory: Option<usize>,

    /// How many bytes all connections together may make the server hold.
    #[arg(long, value_name = "BYTES")]
    client_memory: Option<usize>,

    /// How many bytes of data may be held in memory (without --db); past
    /// it, writes are refused.
    #[arg(long, value_name = "BYTES", value_parser = at_least_1)]
    max_memory: Option<usize>,

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

    /// Seconds that requests in flight get to finish, on Ctrl-C or SIGTERM,
    /// before kvs exits.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    grace: Option<Duration>,

    /// Serve Prometheus metrics over HTTP at this address.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,

    /// The log format: text or json.
    #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
    log_format: Option<LogFormat>,

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
    #[arg(long, value_name = "DIR")]
    dev_certs: Option<PathBuf>,
}

impl Args {
    /// The configuration file, if any, with the flags given on top, and
    /// the connection and memory limits worked out if neither sets them.
    fn config(&self) -> anyhow::Result<KvsConfig> {
        let mut config = match &self.config {
            Some(path) => config::load(path)?,
            None => KvsConfig::default(),
        };
        let limits = &mut config.limits;
        set(&mut config.listen, self.addr.clone());
        set(&mut config.db, self.db.clone().map(Some));
        set(&mut limits.max_connections, self.max_connections.map(Some));
        set(&mut limits.max_per_address, self.max_per_address.map(Some));
        set(&mut limits.max_streams, self.max_streams);
        set(&mut limits.connection_memory, self.connection_memory);
        set(&mut limits.client_memory, self.client_memory.map(Some));
        set(&mut limits.max_memory, self.max_memory.map(Some));
        set(
            &mut limits.connection_window,
            self.connection_window.map(Some),
        );
        set(&mut limits.max_frame, self.max_frame);
        set(&mut limits.subscriber_queue, self.subscriber_queue);
        set(&mut limits.quiet_time, self.quiet_time);
        set(&mut limits.handshake_timeout, self.handshake_timeout);
        set(&mut limits.frame_timeout, self.frame_timeout);
        set(&mut limits.idle_timeout, self.idle_timeout);
        set(&mut limits.write_timeout, self.write_timeout);
        set(&mut config.shutdown.grace, self.grace);
        set(&mut config.metrics.listen, self.metrics.clone().map(Some));
        set(&mut config.log.format, self.log_format);
        set(&mut config.tls.ca, self.ca.clone().map(Some));
        set(&mut config.tls.dev_certs, self.dev_certs.clone());
        if self.cert.is_some() {
            config.tls.cert.clone_from(&self.cert);
            config.tls.key.clone_from(&self.key);
        }
        limits
            .max_connections
            .get_or_insert_with(default_max_connections);
        limits
            .client_memory
            .get_or_insert_with(default_client_memory);
        limits.max_memory.get_or_insert_with(default_max_memory);
        config.check().with_context(|| match &self.config {
            Some(path) => format!("bad settings in {} or the flags", path.display()),
            None => "bad settings in the flags".into(),
        })?;
        Ok(config)
    }
}

/// Overrides a setting with a flag that was given.
fn set<T>(setting: &mut T, flag: Option<T>) {
    if let Some(value) = flag {
        *setting = value;
    }
}

fn parse_format(text: &str) -> Result<LogFormat, String> {
    match text {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("use text or json".into()),
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
// ANCHOR_END: args

// ANCHOR: main
fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = args.config()?;
    if args.print_config {
        print!("{}", config::to_toml(&config, "kvs configuration")?);
        return Ok(());
    }
    init_logs(&config)?;
    // The runtime is built by hand, rather than by `#[tokio::main]`, to
    // drop it at a time of our choosing: see below.
    let runtime = tokio::runtime::Runtime::new()?;
    let answers = Arc::new(AtomicU64::new(0));
    runtime.block_on(start(&config, Arc::clone(&answers)))?;
    // Dropping the runtime drops every task still running, which only
    // happens when the grace period ran out; with them go the last clones
    // of the service, and redb closes its file. (A job on a blocking
    // thread finishes first.)
    drop(runtime);
    println!(
        "kvs stopped after {} answers",
        answers.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Everything that can fail at start fails here, before anything runs;
/// then serves until a signal, and shuts down.
async fn start(config: &KvsConfig, answers: Arc<AtomicU64>) -> anyhow::Result<()> {
    let server = server_config(config)?;
    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    if let Some(addr) = &config.metrics.listen {
        start_metrics(addr, server.shutdown.clone()).await?;
    }
    watch_signals(server.shutdown.clone())?;

    match &config.db {
        Some(path) => {
            let store = RedbStore::open(path)
                .with_context(|| format!("cannot open database {}", path.display()))?;
            info!(path = %path.display(), "storing data in a database file");
            run(listener, store, server, config, answers).await
        }
        None => {
            let max = config.limits.max_memory.unwrap_or_else(default_max_memory);
            info!(max_bytes = max, "storing data in memory");
            let store = MemTable::with_max_memory(max);
            run(listener, store, server, config, answers).await
        }
    }
}

/// Serves until a signal, then shuts down gracefully, within the grace
/// period. Generic, so each storage gets its own copy.
async fn run<Store: Storage + 'static>(
    listener: TcpListener,
    store: Store,
    server: ServerConfig,
    config: &KvsConfig,
    answers: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let service = Service::builder(store)
        .max_answer(config.limits.max_frame)
        .subscriber_queue(config.limits.subscriber_queue)
        .on_after_send(move || {
            answers.fetch_add(1, Ordering::Relaxed);
        })
        .build();
    let shutdown = server.shutdown.clone();
    println!("kvs listening on {}", listener.local_addr()?);
    let serving = serve(listener, service, server);
    tokio::pin!(serving);
    tokio::select! {
        // Before a signal, `serve` returns only if it cannot start.
        result = &mut serving => result?,
        () = shutdown.cancelled() => {
            match tokio::time::timeout(config.shutdown.grace, serving).await {
                Ok(result) => result?,
                Err(_) => warn!("grace period over: closing the connections left"),
            }
        }
    }
    Ok(())
}
// ANCHOR_END: main

// ANCHOR: signals
/// The first Ctrl-C or SIGTERM cancels `shutdown`; a second one exits at
/// once, for an operator who will not wait.
fn watch_signals(shutdown: CancellationToken) -> anyhow::Result<()> {
    #[cfg(unix)]
    let mut terminate = {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?
    };
    let mut signal = async move || {
        #[cfg(unix)]
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.is_ok(),
            received = terminate.recv() => received.is_some(),
        }
        #[cfg(not(unix))]
        tokio::signal::ctrl_c().await.is_ok()
    };
    tokio::spawn(async move {
        if signal().await {
            info!("shutting down: finishing the requests in flight");
            shutdown.cancel();
        }
        if signal().await {
            eprintln!("kvs: second signal, exiting at once");
            std::process::exit(1);
        }
    });
    Ok(())
}
// ANCHOR_END: signals

// ANCHOR: logs
/// Logs to stderr, as text or JSON lines; RUST_LOG, if set, says which.
fn init_logs(config: &KvsConfig) -> anyhow::Result<()> {
    let filter = match EnvFilter::try_from_default_env() {
        Ok(filter) => filter,
        Err(_) => EnvFilter::try_new(&config.log.filter)
            .with_context(|| format!("log.filter: `{}` is not a filter", config.log.filter))?,
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        // One JSON object per line, with the fields of every span around
        // the event.
        LogFormat::Json => logs.json().with_span_list(true).init(),
    }
    Ok(())
}
// ANCHOR_END: logs

// ANCHOR: metrics
/// Installs the Prometheus recorder and serves it at `addr`.
async fn start_metrics(addr: &str, shutdown: CancellationToken) -> anyhow::Result<()> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(telemetry::REQUEST_SECONDS.into()),
            telemetry::REQUEST_BUCKETS,
        )?
        .install_recorder()?;
    telemetry::describe();
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    println!("kvs metrics on {}", listener.local_addr()?);
    // The recorder asks to be tidied now and then (its histograms).
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(telemetry::serve_metrics(
        listener,
        move || handle.render(),
        shutdown,
    ));
    Ok(())
}
// ANCHOR_END: metrics

// ANCHOR: server_config
/// The server's settings from the configuration, with its TLS set up.
fn server_config(config: &KvsConfig) -> anyhow::Result<ServerConfig> {
    let limits = &config.limits;
    let tls = tls_acceptor(config)?.handshake_timeout(limits.handshake_timeout);
    let mut server = ServerConfig::new(tls);
    server.max_frame = limits.max_frame;
    server.max_streams = limits.max_streams;
    server.connection_window = limits.connection_window;
    server.max_connections = limits
        .max_connections
        .unwrap_or_else(default_max_connections);
    server.max_per_address = limits.max_per_address;
    server.quiet_time = limits.quiet_time;
    server.connection_memory = limits.connection_memory;
    server.client_memory = limits.client_memory.unwrap_or_else(default_client_memory);
    server.frame_timeout = limits.frame_timeout;
    server.idle_timeout = limits.idle_timeout;
    server.write_timeout = limits.write_timeout;
    server.check()?;
    Ok(server)
}

/// The TLS setup the configuration asks for: the given certificate, or
/// development certificates, generated if they do not exist yet.
fn tls_acceptor(config: &KvsConfig) -> anyhow::Result<TlsServerAcceptor> {
    let tls = &config.tls;
    let client_ca = tls.ca.as_deref();
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        return Ok(TlsServerAcceptor::from_pem_files(cert, key, client_ca)?);
    }

    let paths = DevCertPaths::in_dir(&tls.dev_certs);
    if !paths.exist() {
        DevCerts::generate(&["localhost", "127.0.0.1"])?
            .write_to(&tls.dev_certs)
            .with_context(|| format!("cannot write to {}", tls.dev_certs.display()))?;
        info!(dir = %tls.dev_certs.display(), "generated development certificates");
    }
    print_trust_hint(&tls.dev_certs);
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
