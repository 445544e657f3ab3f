// ANCHOR: helpers
//! TLS: who trusts whom, and what happens when trust fails.

mod common;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use common::{CERTS, acceptor, certs, connector};
use kv::{
    ALPN_KV, Client, CommandRequest, DevCerts, FrameCoder, KvError, MemTable, ServerConfig,
    Service, TlsClientConnector, TlsServerAcceptor, Value, serve,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{
    TlsConnector,
    rustls::{ClientConfig, RootCertStore, crypto::ring},
};

async fn start_server(tls: TlsServerAcceptor) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = Service::new(MemTable::new());
    tokio::spawn(serve(listener, service, ServerConfig::new(tls)));
    addr
}

/// Connects with `tls` and runs one `hset` then one `hget`.
async fn round_trip(addr: SocketAddr, tls: &TlsClientConnector) -> Result<Value, KvError> {
    let tcp = TcpStream::connect(addr).await?;
    let client = Client::new(tls.connect(tcp).await?);
    let set = CommandRequest::new_hset("t", "k", "secret");
    client.execute(set).await?;
    let res = client.execute(CommandRequest::new_hget("t", "k")).await?;
    Ok(res.values[0].clone())
}

async fn assert_still_serving(addr: SocketAddr) {
    let value = round_trip(addr, &connector(&CERTS, false)).await.unwrap();
    assert_eq!(value, Value::from("secret"));
}
// ANCHOR_END: helpers

// ANCHOR: round_trips
#[tokio::test]
async fn tls_round_trip_negotiates_alpn_kv() {
    let addr = start_server(acceptor(&CERTS, false)).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector(&CERTS, false).connect(tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ALPN_KV));

    let client = Client::new(tls);
    let res = client
        .execute(CommandRequest::new_hset("t", "k", 1i64))
        .await;
    assert!(res.unwrap().is_ok());
    client.close().await;
}

#[tokio::test]
async fn mutual_tls_round_trip() {
    let addr = start_server(acceptor(&CERTS, true)).await;
    let value = round_trip(addr, &connector(&CERTS, true)).await.unwrap();
    assert_eq!(value, Value::from("secret"));
}
// ANCHOR_END: round_trips

// ANCHOR: rejections
#[tokio::test]
async fn a_mutual_tls_server_rejects_a_client_without_a_certificate() {
    let addr = start_server(acceptor(&CERTS, true)).await;
    // In TLS 1.3 the client finishes its side of the handshake before the
    // server has checked it, so the refusal may arrive with the first read.
    let err = round_trip(addr, &connector(&CERTS, false))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("CertificateRequired"), "{err}");
}

#[tokio::test]
async fn a_client_rejects_a_wrong_server_name() {
    let addr = start_server(acceptor(&CERTS, false)).await;
    let ca = certs(&CERTS.ca_cert);
    let tls = TlsClientConnector::new("kv.example.com", ca, None).unwrap();
    let err = round_trip(addr, &tls).await.unwrap_err();
    assert!(
        err.to_string()
            .contains(r#"certificate not valid for name "kv.example.com""#),
        "{err}"
    );
}

#[tokio::test]
async fn a_client_rejects_a_server_signed_by_another_ca() {
    let other = DevCerts::generate(&["localhost"]).unwrap();
    let addr = start_server(acceptor(&other, false)).await;
    let err = round_trip(addr, &connector(&CERTS, false))
        .await
        .unwrap_err();
    // Both CAs carry the same name, so the client finds "its" CA as the
    // issuer, and then the signature does not verify with that CA's key.
    assert!(
        err.to_string()
            .contains("invalid peer certificate: BadSignature"),
        "{err}"
    );
}

#[tokio::test]
async fn the_server_insists_on_alpn_kv() {
    let addr = start_server(acceptor(&CERTS, false)).await;
    // A client like ours in every way but one: it asks for no protocol.
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(certs(&CERTS.ca_cert));
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = "localhost".try_into().unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await;

    // The server hangs up right after the handshake.
    let client = Client::new(tls.unwrap());
    let res = client.execute(CommandRequest::new_hget("t", "k")).await;
    assert!(res.is_err(), "{res:?}");
    assert_still_serving(addr).await;
}

#[tokio::test]
async fn the_client_insists_on_alpn_kv_too() {
    // A TLS server like ours in every way but one: it speaks no protocol.
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs(&CERTS.server_cert), common::key(&CERTS.server_key))
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _tls = tokio_rustls::TlsAcceptor::from(Arc::new(config))
            .accept(tcp)
            .await;
    });

    let tcp = TcpStream::connect(addr).await.unwrap();
    let err = connector(&CERTS, false).connect(tcp).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "TLS error: the server did not agree to protocol `kv`"
    );
}
// ANCHOR_END: rejections

// ANCHOR: misbehaving_clients
#[tokio::test]
async fn a_plain_tcp_client_is_turned_away_and_the_server_goes_on() {
    let addr = start_server(acceptor(&CERTS, false)).await;
    let mut plain = TcpStream::connect(addr).await.unwrap();
    let mut frame = bytes::BytesMut::new();
    CommandRequest::new_hget("t", "k")
        .encode_frame(&mut frame)
        .unwrap();
    plain.write_all(&frame).await.unwrap();

    // The server answers with a TLS alert, not a frame, and hangs up.
    let mut answer = Vec::new();
    plain.read_to_end(&mut answer).await.unwrap();
    assert!(answer.len() < 10, "at most a TLS alert: {answer:?}");
    assert_still_serving(addr).await;
}

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_dropped() {
    let tls = acceptor(&CERTS, false).handshake_timeout(Duration::from_millis(200));
    let addr = start_server(tls).await;
    let mut stalled = TcpStream::connect(addr).await.unwrap();

    // Others are served while the stalled handshake waits...
    assert_still_serving(addr).await;
    // ...and the server hangs up once the timeout has passed.
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut answer));
    closed.await.expect("closed by the server").unwrap();
    assert!(answer.is_empty());
}
// ANCHOR_END: misbehaving_clients

// ANCHOR: pem_errors
#[test]
fn unreadable_pem_files_are_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let err = TlsServerAcceptor::from_pem_files(&missing, &missing, None)
        .err()
        .unwrap();
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "cannot load certificates from `{}`",
            missing.display()
        )),
        "{message}"
    );

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a PEM file\n").unwrap();
    let err = kv::load_certs(&garbage).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot load certificates from `{}`: no certificate in the file",
            garbage.display()
        )
    );
    let err = kv::load_key(&garbage).unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "cannot load a private key from `{}`",
            garbage.display()
        )),
        "{err}"
    );
}
// ANCHOR_END: pem_errors
