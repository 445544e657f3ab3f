// ANCHOR: imports
//! kvc: a command-line client for kvs, in the style of redis-cli.
//!
//! kvc hset fruit apple int:3
//! kvc hget fruit apple
//! kvc subscribe news       (prints messages until Ctrl-C)
//! kvc publish news hello int:42

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use kv::{
    Client, CommandRequest, CommandResponse, KvcConfig, Kvpair, RequestData, TlsClientConnector,
    Value, config, limits::parse_seconds,
};
use tokio::net::TcpStream;
// ANCHOR_END: imports

// ANCHOR: args
const VALUES_HELP: &str = "\
VALUES:
  A value is a string unless it starts with a type:
    int:42  float:2.5  bool:true  bytes:68656c6c6f (hex)  str:int:42 (the string \"int:42\")";

/// A command-line client for the KV server.
#[derive(Parser)]
#[command(version, after_help = VALUES_HELP)]
struct Args {
    /// Read settings from this TOML file; the flags below override it.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,

    /// The server's address [default: 127.0.0.1:9527].
    #[arg(long)]
    addr: Option<String>,

    /// The CA that signed the server's certificate (PEM) [default:
    /// dev-certs/ca.pem].
    #[arg(long, value_name = "PATH")]
    ca: Option<PathBuf>,

    /// The name the server's certificate must carry [default: localhost].
    #[arg(long)]
    domain: Option<String>,

    /// Our own certificate chain (PEM), for a server that wants one.
    #[arg(long, value_name = "PATH", requires = "key")]
    cert: Option<PathBuf>,

    /// The private key of --cert (PEM).
    #[arg(long, value_name = "PATH", requires = "cert")]
    key: Option<PathBuf>,

    /// Seconds to connect and finish the TLS handshake [default: 10].
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    connect_timeout: Option<Duration>,

    /// Seconds to wait for an answer [default: 30].
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    request_timeout: Option<Duration>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Get the value of a key.
    Hget { table: String, key: String },
    /// Get every pair of a table.
    Hgetall { table: String },
    /// Get the values of several keys.
    Hmget {
        table: String,
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Set a key to a value; prints the value it had.
    Hset {
        table: String,
        key: String,
        #[arg(value_parser = parse_value)]
        value: Value,
    },
    /// Set several keys: KEY VALUE [KEY VALUE ...]; prints the old values.
    Hmset {
        table: String,
        #[arg(required = true, value_name = "KEY VALUE")]
        pairs: Vec<String>,
    },
    /// Delete a key; prints the value it had.
    Hdel { table: String, key: String },
    /// Delete several keys; prints the values they had.
    Hmdel {
        table: String,
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Tell whether a key exists.
    Hexist { table: String, key: String },
    /// Tell whether each of several keys exists.
    Hmexist {
        table: String,
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Print each message published to a topic, until Ctrl-C.
    Subscribe { topic: String },
    /// Send values to every subscriber of a topic; prints how many it
    /// reached.
    Publish {
        topic: String,
        #[arg(required = true, value_parser = parse_value)]
        values: Vec<Value>,
    },
    /// End a subscription. Only the connection that made it may, and this
    /// command makes a connection of its own: it shows the refusal. `kvc
    /// subscribe` unsubscribes on Ctrl-C.
    Unsubscribe { topic: String, id: u32 },
    /// Print the settings in effect (file, then flags) as a configuration
    /// file, and exit.
    PrintConfig,
}

impl Args {
    /// The configuration file, if any, with the flags given on top.
    fn config(&self) -> anyhow::Result<KvcConfig> {
        let mut config = match &self.config {
            Some(path) => config::load(path)?,
            None => KvcConfig::default(),
        };
        if let Some(addr) = &self.addr {
            config.addr.clone_from(addr);
        }
        if let Some(ca) = &self.ca {
            config.ca.clone_from(ca);
        }
        if let Some(domain) = &self.domain {
            config.domain.clone_from(domain);
        }
        if self.cert.is_some() {
            config.cert.clone_from(&self.cert);
            config.key.clone_from(&self.key);
        }
        if let Some(timeout) = self.connect_timeout {
            config.connect_timeout = timeout;
        }
        if let Some(timeout) = self.request_timeout {
            config.request_timeout = timeout;
        }
        config.check().with_context(|| match &self.config {
            Some(path) => format!("bad settings in {} or the flags", path.display()),
            None => "bad settings in the flags".into(),
        })?;
        Ok(config)
    }
}
// ANCHOR_END: args

// ANCHOR: parse_value
/// Parses a value typed on the command line (see VALUES_HELP).
fn parse_value(text: &str) -> Result<Value, String> {
    let Some((kind, rest)) = text.split_once(':') else {
        return Ok(text.into());
    };
    let value = match kind {
        "str" => rest.into(),
        "int" => rest
            .parse::<i64>()
            .map_err(|e| format!("`{rest}` is not an int: {e}"))?
            .into(),
        "float" => rest
            .parse::<f64>()
            .map_err(|e| format!("`{rest}` is not a float: {e}"))?
            .into(),
        "bool" => rest
            .parse::<bool>()
            .map_err(|_| format!("`{rest}` is not a bool: use true or false"))?
            .into(),
        "bytes" => Bytes::from(parse_hex(rest)?).into(),
        // Not a type we know: the colon is part of a string.
        _ => text.into(),
    };
    Ok(value)
}

/// Parses hex digits, two per byte. Only digits and `a`-`f` in either
/// case: no sign, no space, no `0x`.
fn parse_hex(hex: &str) -> Result<Vec<u8>, String> {
    let digits = hex
        .chars()
        .map(|c| c.to_digit(16).map(|d| d as u8))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| format!("`{hex}` is not hex"))?;
    if !digits.len().is_multiple_of(2) {
        return Err(format!("`{hex}` has an odd number of hex digits"));
    }
    Ok(digits
        .chunks(2)
        .map(|pair| pair[0] << 4 | pair[1])
        .collect())
}
// ANCHOR_END: parse_value

// ANCHOR: shape
/// How to print a successful response.
#[derive(Debug, PartialEq)]
enum Shape {
    One,
    List,
    Pairs,
    /// A published message: its values on one line.
    Message,
    /// Nothing to show but success.
    Done,
}

impl Command {
    fn into_request(self) -> anyhow::Result<(CommandRequest, Shape)> {
        let request = match self {
            Command::Hget { table, key } => (CommandRequest::new_hget(table, key), Shape::One),
            Command::Hgetall { table } => (CommandRequest::new_hgetall(table), Shape::Pairs),
            Command::Hmget { table, keys } => (CommandRequest::new_hmget(table, keys), Shape::List),
            Command::Hset { table, key, value } => {
                (CommandRequest::new_hset(table, key, value), Shape::One)
            }
            Command::Hmset { table, pairs } => {
                if !pairs.len().is_multiple_of(2) {
                    bail!("hmset needs a value after every key");
                }
                let pairs = pairs
                    .chunks(2)
                    .map(|kv| Ok(Kvpair::new(kv[0].as_str(), parse_value(&kv[1])?)))
                    .collect::<Result<Vec<_>, String>>()
                    .map_err(anyhow::Error::msg)?;
                (CommandRequest::new_hmset(table, pairs), Shape::List)
            }
            Command::Hdel { table, key } => (CommandRequest::new_hdel(table, key), Shape::One),
            Command::Hmdel { table, keys } => (CommandRequest::new_hmdel(table, keys), Shape::List),
            Command::Hexist { table, key } => (CommandRequest::new_hexist(table, key), Shape::One),
            Command::Hmexist { table, keys } => {
                (CommandRequest::new_hmexist(table, keys), Shape::List)
            }
            Command::Subscribe { topic } => (CommandRequest::new_subscribe(topic), Shape::Message),
            Command::Publish { topic, values } => {
                (CommandRequest::new_publish(topic, values), Shape::One)
            }
            Command::Unsubscribe { topic, id } => {
                (CommandRequest::new_unsubscribe(topic, id), Shape::Done)
            }
            Command::PrintConfig => bail!("print-config sends no request"),
        };
        Ok(request)
    }
}
// ANCHOR_END: shape

// ANCHOR: format
/// The text to print for a successful response.
fn format_response(response: &CommandResponse, shape: Shape) -> String {
    let lines: Vec<String> = match shape {
        Shape::One => response.values.iter().map(Value::to_string).collect(),
        Shape::List => (response.values.iter().enumerate())
            .map(|(i, value)| format!("{}) {value}", i + 1))
            .collect(),
        Shape::Pairs => (response.pairs.iter())
            .map(|pair| {
                format!(
                    "{:?} => {}",
                    pair.key,
                    pair.value.clone().unwrap_or_default()
                )
            })
            .collect(),
        Shape::Message => {
            let values: Vec<String> = response.values.iter().map(Value::to_string).collect();
            vec![values.join(" ")]
        }
        Shape::Done => vec!["OK".into()],
    };
    if lines.is_empty() {
        return "(empty)".into();
    }
    lines.join("\n")
}
// ANCHOR_END: format

// ANCHOR: main
#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.config()?;
    if let Command::PrintConfig = args.command {
        print!("{}", config::to_toml(&config, "kvc configuration")?);
        return Ok(ExitCode::SUCCESS);
    }
    let (request, shape) = args.command.into_request()?;
    let addr = &config.addr;
    let identity = config.cert.as_deref().zip(config.key.as_deref());
    let tls = TlsClientConnector::from_pem_files(&config.domain, &config.ca, identity)?;
    let connect = async {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        // Small yamux frames go out at once (see `serve`).
        stream.set_nodelay(true)?;
        tls.connect(stream)
            .await
            .with_context(|| format!("cannot set up TLS with {addr}"))
    };
    let stream = tokio::time::timeout(config.connect_timeout, connect)
        .await
        .with_context(|| format!("cannot connect to {addr}: timed out"))??;
    let client = Client::new(stream);
    if let Some(RequestData::Subscribe(sub)) = request.request_data {
        return subscribe(&client, sub.topic, config.request_timeout).await;
    }
    let response = tokio::time::timeout(config.request_timeout, client.execute(request))
        .await
        .with_context(|| format!("no response from {addr}: timed out"))?
        .with_context(|| format!("no response from {addr}"))?;
    let code = if response.is_ok() {
        println!("{}", format_response(&response, shape));
        ExitCode::SUCCESS
    } else {
        eprintln!("error {}: {}", response.status, response.message);
        ExitCode::FAILURE
    };
    // Only a courtesy to the server, so not worth a long wait.
    let _ = tokio::time::timeout(config.request_timeout, client.close()).await;
    Ok(code)
}
// ANCHOR_END: main

// ANCHOR: subscribe
/// Prints each message published to `topic` until Ctrl-C; then
/// unsubscribes, prints what was already on its way, and returns. Asking
/// (to subscribe, to unsubscribe) waits at most `timeout`.
async fn subscribe(
    client: &Client,
    topic: String,
    timeout: std::time::Duration,
) -> anyhow::Result<ExitCode> {
    let subscribing = tokio::time::timeout(timeout, client.subscribe(&topic));
    let mut messages = subscribing.await.context("cannot subscribe: timed out")??;
    let id = messages.id();
    eprintln!("subscribed to {topic} as {id}; Ctrl-C to stop");
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut stopping = false;
    loop {
        tokio::select! {
            message = messages.next() => match message {
                Some(Ok(message)) if message.is_ok() => {
                    println!("{}", format_response(&message, Shape::Message));
                }
                Some(Ok(message)) => {
                    eprintln!("error {}: {}", message.status, message.message);
                    return Ok(ExitCode::FAILURE);
                }
                Some(Err(err)) => return Err(err.into()),
                // The server ends the stream once we are unsubscribed.
                None if stopping => break,
                None => bail!("the server ended the subscription"),
            },
            signal = &mut ctrl_c, if !stopping => {
                signal.context("cannot wait for Ctrl-C")?;
                stopping = true;
                // On another stream of the same connection: only this
                // connection may end the subscription.
                let unsubscribe = client.execute(CommandRequest::new_unsubscribe(&topic, id));
                let res = tokio::time::timeout(timeout, unsubscribe)
                    .await
                    .context("cannot unsubscribe: timed out")??;
                if !res.is_ok() {
                    bail!("cannot unsubscribe: error {}: {}", res.status, res.message);
                }
            }
        }
    }
    eprintln!("unsubscribed");
    Ok(ExitCode::SUCCESS)
}
// ANCHOR_END: subscribe

// ANCHOR: tests
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_strings_unless_typed() {
        assert_eq!(parse_value("hello"), Ok("hello".into()));
        assert_eq!(parse_value("http://x"), Ok("http://x".into()));
        assert_eq!(parse_value("int:-42"), Ok((-42i64).into()));
        assert_eq!(parse_value("float:2.5"), Ok(2.5.into()));
        assert_eq!(parse_value("bool:true"), Ok(true.into()));
        assert_eq!(parse_value("bytes:00ff"), Ok(vec![0u8, 255].into()));
        assert_eq!(parse_value("str:int:1"), Ok("int:1".into()));
    }

    #[test]
    fn bad_typed_values_are_explained() {
        assert!(parse_value("int:x").unwrap_err().contains("not an int"));
        assert!(
            parse_value("bool:yes")
                .unwrap_err()
                .contains("true or false")
        );
        assert!(parse_value("bytes:abc").unwrap_err().contains("odd number"));
        assert!(parse_value("bytes:zz").unwrap_err().contains("not hex"));
        assert!(parse_value("bytes:aé1").unwrap_err().contains("not hex"));
        for sneaky in ["+f", "-1", " f", "0x", "f\n"] {
            let err = parse_value(&format!("bytes:{sneaky}")).unwrap_err();
            assert!(err.contains("not hex"), "{sneaky:?}: {err}");
        }
        assert_eq!(parse_value("bytes:aBcD"), Ok(vec![0xab, 0xcd].into()));
    }

    #[test]
    fn hmset_needs_pairs() {
        let command = Command::Hmset {
            table: "t".into(),
            pairs: vec!["k".into()],
        };
        let err = command.into_request().unwrap_err();
        assert_eq!(err.to_string(), "hmset needs a value after every key");
    }

    #[test]
    fn responses_print_readably() {
        let one = CommandResponse::from(Value::from("v"));
        assert_eq!(format_response(&one, Shape::One), r#""v""#);
        let list = CommandResponse::from(vec![Value::from(1i64), Value::default()]);
        assert_eq!(format_response(&list, Shape::List), "1) 1\n2) (nil)");
        let pairs = CommandResponse::from(vec![Kvpair::new("a", true)]);
        assert_eq!(format_response(&pairs, Shape::Pairs), r#""a" => true"#);
        let empty = CommandResponse::from(Vec::<Kvpair>::new());
        assert_eq!(format_response(&empty, Shape::Pairs), "(empty)");
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
// ANCHOR_END: tests
