// ANCHOR: imports
//! TLS for both ends of a connection, on tokio-rustls with the `ring`
//! crypto provider.

use std::{path::Path, sync::Arc, time::Duration};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{
    TlsAcceptor, TlsConnector, client,
    rustls::{
        ClientConfig, RootCertStore, ServerConfig,
        crypto::{CryptoProvider, ring},
        server::WebPkiClientVerifier,
    },
    server,
};

use crate::{KvError, network::linger};
// ANCHOR_END: imports

// ANCHOR: constants
/// The ALPN name of our protocol. The client offers it and the server
/// insists on it, so a TLS client of some other protocol that reaches our
/// port by mistake is turned away during the handshake.
pub const ALPN_KV: &[u8] = b"kv";

/// How long a peer may take to complete the TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The crypto provider for every config we build. Passing it explicitly
/// means no process-wide default has to be installed first.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}
// ANCHOR_END: constants

// ANCHOR: pem
/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, KvError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| KvError::pem("certificates", path, err))?;
    if certs.is_empty() {
        return Err(KvError::pem(
            "certificates",
            path,
            "no certificate in the file",
        ));
    }
    Ok(certs)
}

/// Reads the first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, KvError> {
    PrivateKeyDer::from_pem_file(path).map_err(|err| KvError::pem("a private key", path, err))
}

/// The certificates to trust, as rustls wants them.
fn root_store(certs: Vec<CertificateDer<'static>>) -> Result<Arc<RootCertStore>, KvError> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert)?;
    }
    Ok(Arc::new(roots))
}
// ANCHOR_END: pem

// ANCHOR: acceptor
/// The server's side of TLS: turns an accepted connection into an
/// encrypted one. Cheap to clone; every connection task holds a clone.
#[derive(Clone)]
pub struct TlsServerAcceptor {
    inner: TlsAcceptor,
    handshake_timeout: Duration,
}

impl TlsServerAcceptor {
    /// A server that proves its identity with `cert_chain` and `key`. With
    /// `client_ca`, it also asks each client for a certificate and accepts
    /// only those signed by one of these CAs: mutual TLS.
    pub fn new(
        cert_chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        client_ca: Option<Vec<CertificateDer<'static>>>,
    ) -> Result<Self, KvError> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(root_store(ca)?, provider())
                        .build()
                        .map_err(|err| KvError::Tls(format!("bad client CA: {err}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(cert_chain, key)?;
        config.alpn_protocols = vec![ALPN_KV.to_vec()];
        Ok(Self {
            inner: TlsAcceptor::from(Arc::new(config)),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        })
    }

    /// Like [`TlsServerAcceptor::new`], from PEM files.
    pub fn from_pem_files(
        cert_chain: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<Self, KvError> {
        let client_ca = client_ca.map(load_certs).transpose()?;
        Self::new(load_certs(cert_chain)?, load_key(key)?, client_ca)
    }

    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Runs the handshake on `stream`. Fails if it takes too long, if the
    /// client is not a TLS client or not trusted, or if it did not ask for
    /// the `kv` protocol.
    pub async fn accept<S>(&self, stream: S) -> Result<server::TlsStream<S>, KvError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // `into_fallible` gives the connection back when the handshake fails.
        let handshake = self.inner.accept(stream).into_fallible();
        let stream = match tokio::time::timeout(self.handshake_timeout, handshake).await {
            Err(_) => return Err(KvError::Tls("the handshake timed out".into())),
            Ok(Err((err, mut tcp))) => {
                // The alert that says why is on its way. Closing now, with
                // the client's first data unread, could reset the
                // connection and destroy the alert before the client reads
                // it (yamux clients write early).
                linger(&mut tcp).await;
                return Err(KvError::Tls(format!("handshake failed: {err}")));
            }
            Ok(Ok(stream)) => stream,
        };
        // rustls rejects a client that offers only other protocols; one that
        // offers none at all gets here with no protocol chosen.
        if stream.get_ref().1.alpn_protocol() != Some(ALPN_KV) {
            return Err(KvError::Tls(
                "the client did not ask for protocol `kv`".into(),
            ));
        }
        Ok(stream)
    }
}
// ANCHOR_END: acceptor

// ANCHOR: connector
/// The client's side of TLS: encrypts a connection to a server, and checks
/// that the server is who we meant to reach.
#[derive(Clone)]
pub struct TlsClientConnector {
    inner: TlsConnector,
    server_name: ServerName<'static>,
    handshake_timeout: Duration,
}

impl TlsClientConnector {
    /// A client that trusts servers whose certificate was signed by one of
    /// `ca` and names `server_name`. With `identity` (a certificate chain
    /// and its key), it can also prove who it is to a mutual-TLS server.
    pub fn new(
        server_name: &str,
        ca: Vec<CertificateDer<'static>>,
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<Self, KvError> {
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|err| KvError::Tls(format!("bad server name `{server_name}`: {err}")))?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(root_store(ca)?);
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        };
        config.alpn_protocols = vec![ALPN_KV.to_vec()];
        Ok(Self {
            inner: TlsConnector::from(Arc::new(config)),
            server_name,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        })
    }

    /// Like [`TlsClientConnector::new`], from PEM files.
    pub fn from_pem_files(
        server_name: &str,
        ca: &Path,
        identity: Option<(&Path, &Path)>,
    ) -> Result<Self, KvError> {
        let identity = match identity {
            Some((chain, key)) => Some((load_certs(chain)?, load_key(key)?)),
            None => None,
        };
        Self::new(server_name, load_certs(ca)?, identity)
    }

    /// Runs the handshake on `stream`. Fails if it takes too long, if the
    /// server is not trusted, or if it did not agree to the `kv` protocol.
    pub async fn connect<S>(&self, stream: S) -> Result<client::TlsStream<S>, KvError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let handshake = self.inner.connect(self.server_name.clone(), stream);
        let stream = tokio::time::timeout(self.handshake_timeout, handshake)
            .await
            .map_err(|_| KvError::Tls("the handshake timed out".into()))?
            .map_err(|err| KvError::Tls(format!("handshake failed: {err}")))?;
        // A server that chose no protocol is some other TLS server.
        if stream.get_ref().1.alpn_protocol() != Some(ALPN_KV) {
            return Err(KvError::Tls(
                "the server did not agree to protocol `kv`".into(),
            ));
        }
        Ok(stream)
    }
}
// ANCHOR_END: connector
