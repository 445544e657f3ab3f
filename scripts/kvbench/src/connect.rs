//! Connections to the three servers: TCP, TLS on it if asked, and for
//! `kvs` one yamux stream on that, opened by the last chapter's client.

use std::{path::Path, sync::Arc};

use anyhow::Context;
use kv::{Client, TlsClientConnector, load_certs, load_key};
use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_rustls::{
    TlsAcceptor, TlsConnector,
    rustls::{ClientConfig, RootCertStore, ServerConfig, crypto::ring},
};

/// A byte stream to a server, whatever carries it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How to reach a server.
pub enum Tls {
    Plain,
    /// `kvs`: its own client, which asks for the `kv` protocol.
    Kv(TlsClientConnector),
    /// Redis and the echo server: TLS, and nothing more.
    Bare(TlsConnector, ServerName<'static>),
}

pub struct Target {
    pub addr: String,
    pub tls: Tls,
    /// One yamux stream per connection, as `kvs` wants.
    pub multiplexed: bool,
}

impl Target {
    pub async fn connect(&self) -> anyhow::Result<Box<dyn Io>> {
        let tcp = TcpStream::connect(&self.addr).await?;
        // Requests go out at once, not when the kernel's timer says.
        tcp.set_nodelay(true)?;
        let io: Box<dyn Io> = match &self.tls {
            Tls::Plain => Box::new(tcp),
            Tls::Kv(connector) => Box::new(connector.connect(tcp).await?),
            Tls::Bare(connector, name) => Box::new(connector.connect(name.clone(), tcp).await?),
        };
        if !self.multiplexed {
            return Ok(io);
        }
        // The stream holds on to its client, and so to the connection.
        Ok(Box::new(Client::new(io).open().await?))
    }
}

/// TLS for a client that trusts the CA in `ca` (PEM), with ring as the
/// crypto provider, as in the chapters.
pub fn bare_connector(
    ca: &Path,
    domain: &str,
) -> anyhow::Result<(TlsConnector, ServerName<'static>)> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert)?;
    }
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(domain.to_owned()).context("a bad server name")?;
    Ok((TlsConnector::from(Arc::new(config)), name))
}

/// TLS for the echo server, from a certificate chain and key (PEM).
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(load_certs(cert)?, load_key(key)?)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
