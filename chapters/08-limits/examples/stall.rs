// ANCHOR: stall
//! Opens many connections that each send two bytes and then nothing, and
//! holds them; meanwhile, once a second, a real client tries one request.
//! It prints how many stalled connections the server still keeps open,
//! and what the real client got.
//!
//! cargo run --release --example stall -- --connections 1000 --seconds 15
//!
//! Start `kvs` first, in the same folder (the client must trust
//! `dev-certs/`).

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Parser;
use kv::{Client, CommandRequest, TlsClientConnector};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
};

/// Stalled connections, and a client that tries to get in past them.
#[derive(Parser)]
struct Args {
    /// The server's address.
    #[arg(long, default_value = "127.0.0.1:9527")]
    addr: String,

    /// The CA that signed the server's certificate (PEM).
    #[arg(long, value_name = "PATH", default_value = "dev-certs/ca.pem")]
    ca: PathBuf,

    /// How many connections to stall.
    #[arg(long, default_value_t = 1000)]
    connections: usize,

    /// Finish the TLS handshake first, then send two bytes of a yamux
    /// header and stall there (else stall in the handshake).
    #[arg(long)]
    after_handshake: bool,

    /// How long to keep going.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tls = TlsClientConnector::from_pem_files("localhost", &args.ca, None)?;
    // Each stalled connection reports here when the server closes it.
    let (closed, mut closures) = mpsc::unbounded_channel();
    let mut stalled = 0;
    for _ in 0..args.connections {
        let Ok(tcp) = TcpStream::connect(&args.addr).await else {
            break;
        };
        let closed = closed.clone();
        if args.after_handshake {
            let Ok(mut tls) = tls.connect(tcp).await else {
                break;
            };
            if tls.write_all(&[0, 0]).await.is_err() || tls.flush().await.is_err() {
                break;
            }
            tokio::spawn(async move {
                // Whatever the server sends (yamux pings), until it closes.
                while let Ok(1..) = tls.read(&mut [0; 1024]).await {}
                let _ = closed.send(());
            });
        } else {
            // The first two bytes of a TLS record, then nothing.
            let mut tcp = tcp;
            if tcp.write_all(&[0x16, 0x03]).await.is_err() {
                break;
            }
            tokio::spawn(async move {
                let _ = tcp.read(&mut [0; 1024]).await;
                let _ = closed.send(());
            });
        }
        stalled += 1;
    }
    println!("{stalled} connections stalled");
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.tick().await;
    for second in 1..=args.seconds {
        every.tick().await;
        let probe = tokio::time::timeout(Duration::from_secs(1), probe(&args.addr, &tls));
        let outcome = match probe.await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(err)) => format!("error: {err:#}"),
            Err(_) => "no answer within 1 s".into(),
        };
        while closures.try_recv().is_ok() {
            stalled -= 1;
        }
        println!("{second:>3} s: {stalled:>4} stalled still open; a new client: {outcome}");
    }
    Ok(())
}

/// One request on a new connection: what did it get?
async fn probe(addr: &str, tls: &TlsClientConnector) -> anyhow::Result<String> {
    let tcp = TcpStream::connect(addr).await.context("connect")?;
    let client = Client::new(tls.connect(tcp).await?);
    let res = client.execute(CommandRequest::new_hget("t", "k")).await?;
    Ok(format!("answer {} {}", res.status, res.message))
}
// ANCHOR_END: stall
