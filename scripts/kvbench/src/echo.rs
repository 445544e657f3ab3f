//! The echo server: for each request frame, a frame of the length that
//! the request asks for. It does no other work, so its numbers are the
//! floor of this machine: what it costs to move these bytes over
//! loopback (and TLS) with the same client.

use bytes::BytesMut;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tokio_rustls::TlsAcceptor;

use crate::{connect::Io, protocol::echo_answers};

/// Serves every connection that `listener` accepts, each in a task.
pub async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>) -> anyhow::Result<()> {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                eprintln!("echo: cannot accept: {err}");
                continue;
            }
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            let result = async {
                tcp.set_nodelay(true)?;
                match tls {
                    Some(tls) => echo(tls.accept(tcp).await?).await,
                    None => echo(tcp).await,
                }
            };
            if let Err(err) = result.await {
                eprintln!("echo: connection from {peer} ended: {err:#}");
            }
        });
    }
}

/// Answers the requests of one connection. Answers to the requests of one
/// read go out in one write (or a few, if they are large).
async fn echo(mut io: impl Io) -> anyhow::Result<()> {
    let mut input = BytesMut::with_capacity(64 * 1024);
    let mut output = BytesMut::new();
    loop {
        echo_answers(&mut input, &mut output)?;
        if output.is_empty() {
            if io.read_buf(&mut input).await? == 0 {
                break;
            }
            continue;
        }
        io.write_all(&output).await?;
        io.flush().await?;
        output.clear();
    }
    io.shutdown().await?;
    Ok(())
}
