//! TLS helpers for the integration tests. Certificates are generated when
//! a test runs, so none is stored in the repository and none can expire.

use std::{net::SocketAddr, sync::LazyLock};

use kv::{DevCerts, TlsClientConnector, TlsServerAcceptor};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// One set of certificates for every test in a test binary.
pub static CERTS: LazyLock<DevCerts> =
    LazyLock::new(|| DevCerts::generate(&["localhost", "127.0.0.1"]).unwrap());

pub fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

pub fn key(pem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// A server with `certs`' server certificate; with `mutual`, it requires
/// a client certificate signed by `certs`' CA.
#[allow(dead_code)] // not every test binary uses every helper
pub fn acceptor(certs_: &DevCerts, mutual: bool) -> TlsServerAcceptor {
    let client_ca = mutual.then(|| certs(&certs_.ca_cert));
    TlsServerAcceptor::new(
        certs(&certs_.server_cert),
        key(&certs_.server_key),
        client_ca,
    )
    .unwrap()
}

/// A client that trusts `certs`' CA, expects the name `localhost`, and,
/// with `identity`, presents `certs`' client certificate.
#[allow(dead_code)]
pub fn connector(certs_: &DevCerts, identity: bool) -> TlsClientConnector {
    let identity = identity.then(|| (certs(&certs_.client_cert), key(&certs_.client_key)));
    TlsClientConnector::new("localhost", certs(&certs_.ca_cert), identity).unwrap()
}

/// Bytes that do not compress (a xorshift sequence), different for each
/// seed: large values that stay large on the wire.
#[allow(dead_code)]
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ seed;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A TCP proxy for one connection to `server`. Aborting the task it
/// returns cuts that connection at once.
#[allow(dead_code)]
pub async fn proxy(server: SocketAddr) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut client, _) = listener.accept().await.unwrap();
        let mut upstream = TcpStream::connect(server).await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    });
    (addr, task)
}
