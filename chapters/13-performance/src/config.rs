// ANCHOR: imports
//! The configuration files of `kvs` and `kvc`: TOML, every key optional.
//!
//! A key that is missing takes its default; a key we do not know is an
//! error, so a misspelt setting is never silently ignored.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{
    DEFAULT_CONNECTION_MEMORY, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_FRAME, DEFAULT_MAX_STREAMS,
    DEFAULT_QUIET_TIME, DEFAULT_SUBSCRIBER_QUEUE, KvError, MAX_SUBSCRIBER_QUEUE,
    limits::{
        DEFAULT_FRAME_TIMEOUT, DEFAULT_GRACE, DEFAULT_IDLE_TIMEOUT, DEFAULT_WRITE_TIMEOUT,
        MAX_TIMEOUT,
    },
    network::{connection_window, yamux_config},
    server::least_connection_memory,
};
// ANCHOR_END: imports

// ANCHOR: server
/// Everything `kvs` can be told, as its configuration file holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KvsConfig {
    /// The address to listen on; port 0 picks a free port.
    pub listen: String,
    /// Keep the data in this database file (created if missing). Without
    /// it, the data lives in memory and is gone when `kvs` stops.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db: Option<PathBuf>,
    pub tls: ServerTls,
    pub limits: Limits,
    pub shutdown: Shutdown,
    pub log: Log,
    pub metrics: Metrics,
}

/// The server's certificate, and the clients' CA for mutual TLS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerTls {
    /// The server's certificate chain (PEM). With `key`; without both,
    /// development certificates from `dev_certs` are used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// The private key of `cert` (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM): mutual TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Where development certificates are kept (and generated on first
    /// use) when `cert` is not given.
    pub dev_certs: PathBuf,
}

/// What one client may make the server hold, and for how long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// How many connections may be open at once. Without it, the limit
    /// follows from how many files the process may open (see
    /// [`default_max_connections`](crate::limits::default_max_connections)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// How many of them may come from one IP address. Without it, any
    /// number: clients behind one NAT or proxy share an address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_per_address: Option<usize>,
    /// Seconds a connection must have been quiet before a new client of a
    /// full server may take its place.
    #[serde(with = "seconds")]
    pub quiet_time: Duration,
    /// How many bytes of data the in-memory store may hold; past it,
    /// writes are refused. Without it, half of the memory the process may
    /// use (see [`default_max_memory`](crate::limits::default_max_memory)).
    /// Not used with `db`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<usize>,
    /// How many streams a connection may have open at once.
    pub max_streams: usize,
    /// The largest request or answer, in bytes, before and after inflating.
    pub max_frame: usize,
    /// How many bytes a connection's streams may hold unread, together.
    /// Without it, the least that works for `max_streams`: 512 KiB per
    /// stream. More lets busy streams go faster, and counts against
    /// `connection_memory`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_window: Option<usize>,
    /// How many bytes one connection may make the server hold: frames
    /// being read, answers waiting, subscription queues. At least three
    /// times `max_frame`.
    pub connection_memory: usize,
    /// How many bytes all connections together may make the server hold;
    /// past it, the connection holding the most is closed. Without it, a
    /// quarter of the memory the process may use (see
    /// [`default_client_memory`](crate::limits::default_client_memory)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_memory: Option<usize>,
    /// How many messages may wait for a subscriber before it is dropped.
    pub subscriber_queue: usize,
    /// Seconds a client has to finish the TLS handshake.
    #[serde(with = "seconds")]
    pub handshake_timeout: Duration,
    /// Seconds a frame may take to arrive, from when the server first
    /// waits for its rest. A 16 MiB frame in 30 s needs about 560 kB/s.
    #[serde(with = "seconds")]
    pub frame_timeout: Duration,
    /// Seconds a stream may wait for its next request, and a connection
    /// may stay without streams, before the server closes it.
    #[serde(with = "seconds")]
    pub idle_timeout: Duration,
    /// Seconds an answer may wait for the client to read it.
    #[serde(with = "seconds")]
    pub write_timeout: Duration,
}

/// How `kvs` stops on Ctrl-C or SIGTERM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Shutdown {
    /// Seconds that requests in flight get to finish before `kvs` exits.
    #[serde(with = "seconds")]
    pub grace: Duration,
}

/// Where the logs go (always to stderr) and what they look like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    /// Which events to log, as in `RUST_LOG` (which wins when it is set).
    pub filter: String,
    /// `text` for people, `json` (one object per line) for log collectors.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Metrics {
    /// Serve metrics over HTTP at this address (any path); port 0 picks a
    /// free port. Without it, there is no endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}
// ANCHOR_END: server

// ANCHOR: defaults
impl Default for KvsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9527".into(),
            db: None,
            tls: ServerTls::default(),
            limits: Limits::default(),
            shutdown: Shutdown::default(),
            log: Log::default(),
            metrics: Metrics::default(),
        }
    }
}

impl Default for ServerTls {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            ca: None,
            dev_certs: "dev-certs".into(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: None,
            max_per_address: None,
            quiet_time: DEFAULT_QUIET_TIME,
            max_memory: None,
            max_streams: DEFAULT_MAX_STREAMS,
            max_frame: DEFAULT_MAX_FRAME,
            connection_window: None,
            connection_memory: DEFAULT_CONNECTION_MEMORY,
            client_memory: None,
            subscriber_queue: DEFAULT_SUBSCRIBER_QUEUE,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            frame_timeout: DEFAULT_FRAME_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
        }
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            grace: DEFAULT_GRACE,
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Self {
            filter: "info".into(),
            format: LogFormat::Text,
        }
    }
}
// ANCHOR_END: defaults

// ANCHOR: load
/// Reads a TOML configuration file. The error names the file, and what
/// `toml` says: the line, the key and what is wrong with it.
pub fn load<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, KvError> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| KvError::Config(format!("cannot read {}: {err}", path.display())))?;
    toml::from_str(&text).map_err(|err| KvError::Config(format!("in {}: {err}", path.display())))
}

/// The configuration as a TOML file, ready to edit and load again.
pub fn to_toml<T: Serialize>(config: &T, title: &str) -> Result<String, KvError> {
    let body = toml::to_string(config).map_err(|err| KvError::Config(err.to_string()))?;
    let mut text = String::new();
    let _ = writeln!(text, "# {title}");
    let _ = writeln!(text, "# Every key is optional; durations are in seconds.\n");
    text.push_str(&body);
    Ok(text)
}
// ANCHOR_END: load

// ANCHOR: check
impl KvsConfig {
    /// Fails with the key and the reason if a value cannot work: `kvs`
    /// checks everything before it starts anything.
    pub fn check(&self) -> Result<(), KvError> {
        let limits = &self.limits;
        let bad = |key: &str, reason: String| Err(KvError::Config(format!("{key}: {reason}")));
        if let Some(max) = limits.max_connections
            && !(1..=tokio::sync::Semaphore::MAX_PERMITS).contains(&max)
        {
            let reason = format!("must be from 1 to {}", tokio::sync::Semaphore::MAX_PERMITS);
            return bad("limits.max_connections", reason);
        }
        if limits.max_per_address == Some(0) {
            return bad("limits.max_per_address", "must be at least 1".into());
        }
        if limits.max_memory == Some(0) {
            return bad("limits.max_memory", "must be at least 1".into());
        }
        if let Err(KvError::Config(reason)) = yamux_config(
            limits.max_streams,
            connection_window(limits.max_streams, limits.connection_window),
        ) {
            return bad("limits.max_streams / limits.connection_window", reason);
        }
        if limits.max_frame == 0 {
            return bad("limits.max_frame", "must be at least 1".into());
        }
        let (frame, streams, window) = (
            limits.max_frame,
            limits.max_streams,
            limits.connection_window,
        );
        let least = least_connection_memory(frame, streams, window);
        if limits.connection_memory < least {
            let reason = format!("must be at least {least} for these frame and window limits");
            return bad("limits.connection_memory", reason);
        }
        if let Some(all) = limits.client_memory
            && all < limits.connection_memory
        {
            let reason = "must be at least limits.connection_memory".into();
            return bad("limits.client_memory", reason);
        }
        if !(1..=MAX_SUBSCRIBER_QUEUE).contains(&limits.subscriber_queue) {
            let reason = format!("must be from 1 to {MAX_SUBSCRIBER_QUEUE}");
            return bad("limits.subscriber_queue", reason);
        }
        let timeouts = [
            ("limits.handshake_timeout", limits.handshake_timeout),
            ("limits.quiet_time", limits.quiet_time),
            ("limits.frame_timeout", limits.frame_timeout),
            ("limits.idle_timeout", limits.idle_timeout),
            ("limits.write_timeout", limits.write_timeout),
            ("shutdown.grace", self.shutdown.grace),
        ];
        for (key, timeout) in timeouts {
            if timeout.is_zero() || timeout > MAX_TIMEOUT {
                return bad(key, "must be more than 0 seconds and at most a year".into());
            }
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return bad("tls.cert / tls.key", "give both or neither".into());
        }
        Ok(())
    }
}
// ANCHOR_END: check

// ANCHOR: client
/// Everything `kvc` can be told, as its configuration file holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KvcConfig {
    /// The server's address.
    pub addr: String,
    /// The name the server's certificate must carry.
    pub domain: String,
    /// The CA that signed the server's certificate (PEM).
    pub ca: PathBuf,
    /// Our own certificate chain (PEM), for a server that wants one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// The private key of `cert` (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Seconds to connect and finish the TLS handshake.
    #[serde(with = "seconds")]
    pub connect_timeout: Duration,
    /// Seconds to wait for an answer.
    #[serde(with = "seconds")]
    pub request_timeout: Duration,
}

impl Default for KvcConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:9527".into(),
            domain: "localhost".into(),
            ca: "dev-certs/ca.pem".into(),
            cert: None,
            key: None,
            connect_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            request_timeout: DEFAULT_WRITE_TIMEOUT,
        }
    }
}

impl KvcConfig {
    /// Like [`KvsConfig::check`].
    pub fn check(&self) -> Result<(), KvError> {
        let bad = |key: &str, reason: &str| Err(KvError::Config(format!("{key}: {reason}")));
        if self.cert.is_some() != self.key.is_some() {
            return bad("cert / key", "give both or neither");
        }
        for timeout in [self.connect_timeout, self.request_timeout] {
            if timeout.is_zero() || timeout > MAX_TIMEOUT {
                let reason = "must be more than 0 seconds and at most a year";
                return bad("connect_timeout / request_timeout", reason);
            }
        }
        Ok(())
    }
}
// ANCHOR_END: client

// ANCHOR: seconds
/// Durations as seconds in the file: `10`, or `0.25` for a quarter of one.
mod seconds {
    use super::*;

    pub fn serialize<S: Serializer>(duration: &Duration, to: S) -> Result<S::Ok, S::Error> {
        to.serialize_f64(duration.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(from: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(from)?;
        Duration::try_from_secs_f64(secs)
            .map_err(|_| serde::de::Error::custom(format!("{secs} is not a number of seconds")))
    }
}
// ANCHOR_END: seconds

// ANCHOR: tests
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_defaults() {
        assert_eq!(
            toml::from_str::<KvsConfig>("").unwrap(),
            KvsConfig::default()
        );
        assert_eq!(
            toml::from_str::<KvcConfig>("").unwrap(),
            KvcConfig::default()
        );
    }

    #[test]
    fn the_printed_configuration_loads_back_the_same() {
        let mut config = KvsConfig {
            db: Some("data.redb".into()),
            ..KvsConfig::default()
        };
        config.limits.max_connections = Some(500);
        config.limits.max_memory = Some(1 << 30);
        config.limits.frame_timeout = Duration::from_millis(250);
        config.log.format = LogFormat::Json;
        config.metrics.listen = Some("127.0.0.1:9100".into());
        let text = to_toml(&config, "kvs").unwrap();
        assert_eq!(toml::from_str::<KvsConfig>(&text).unwrap(), config);
        let client = KvcConfig::default();
        let text = to_toml(&client, "kvc").unwrap();
        assert_eq!(toml::from_str::<KvcConfig>(&text).unwrap(), client);
    }

    #[test]
    fn a_misspelt_key_is_an_error_that_names_it() {
        let err = toml::from_str::<KvsConfig>("[limits]\nmax_stream = 5\n").unwrap_err();
        let message = err.to_string();
        assert!(message.contains("max_stream"), "{message}");
        assert!(message.contains("line 2"), "{message}");
    }

    #[test]
    fn a_bad_value_is_an_error_that_names_the_key() {
        let cases = [
            ("[limits]\nmax_connections = 0", "limits.max_connections"),
            ("[limits]\nmax_memory = 0", "limits.max_memory"),
            ("[limits]\nmax_streams = 0", "limits.max_streams"),
            ("[limits]\nmax_per_address = 0", "limits.max_per_address"),
            ("[limits]\nidle_timeout = 0", "limits.idle_timeout"),
            ("[limits]\nidle_timeout = 1e19", "limits.idle_timeout"),
            ("[limits]\nsubscriber_queue = 0", "limits.subscriber_queue"),
            (
                "[limits]\nconnection_memory = 1000",
                "limits.connection_memory",
            ),
            ("[limits]\nclient_memory = 1000", "limits.client_memory"),
            ("[tls]\ncert = \"a.pem\"", "tls.cert / tls.key"),
        ];
        for (text, key) in cases {
            let config: KvsConfig = toml::from_str(text).unwrap();
            let err = config.check().unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let err = toml::from_str::<KvsConfig>("[limits]\nwrite_timeout = -1").unwrap_err();
        assert!(
            err.to_string().contains("-1 is not a number of seconds"),
            "{err}"
        );
    }

    #[test]
    fn loading_a_file_names_it_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kvs.toml");
        std::fs::write(&path, "listen = 9527\n").unwrap();
        let err = load::<KvsConfig>(&path).unwrap_err().to_string();
        assert!(err.contains("kvs.toml") && err.contains("listen"), "{err}");
        let err = load::<KvsConfig>(&dir.path().join("missing.toml")).unwrap_err();
        assert!(err.to_string().contains("missing.toml"), "{err}");
    }
}
// ANCHOR_END: tests
