//! The accept loop of the TCP server.

use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::{DEFAULT_MAX_FRAME, ProstServerStream, Service, Storage, TlsServerAcceptor};

// ANCHOR: config
/// How [`serve`] runs. Later chapters add fields here, not parameters to
/// `serve`; [`ServerConfig::new`] gives each field but `tls` its default.
#[derive(Clone)]
pub struct ServerConfig {
    /// The largest request payload accepted, before and after inflating.
    /// Give the service the same limit for its answers
    /// ([`ServiceBuilder::max_answer`](crate::ServiceBuilder::max_answer)).
    pub max_frame: usize,
    /// The server's certificate and, for mutual TLS, the clients' CA.
    pub tls: TlsServerAcceptor,
}

impl ServerConfig {
    pub fn new(tls: TlsServerAcceptor) -> Self {
        Self {
            max_frame: DEFAULT_MAX_FRAME,
            tls,
        }
    }
}
// ANCHOR_END: config

// ANCHOR: serve
/// Serves every connection that `listener` accepts, each in a task of its
/// own, until the returned future is dropped. Connections are independent:
/// one client's failed handshake, bad frame or sudden disconnect affects
/// no one else.
pub async fn serve<Store>(listener: TcpListener, service: Service<Store>, config: ServerConfig)
where
    Store: Storage + 'static,
{
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors, say. Wait a little rather than
                // spin; the listener itself is still fine.
                warn!(%err, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        info!(%peer, "client connected");
        let (service, tls, max_frame) = (service.clone(), config.tls.clone(), config.max_frame);
        tokio::spawn(async move {
            // The handshake runs here, in the connection's own task, so a
            // slow or broken client never holds up the accept loop.
            let result = match tls.accept(stream).await {
                Ok(stream) => {
                    let connection = ProstServerStream::new(stream, service);
                    connection.max_frame(max_frame).process().await
                }
                Err(err) => Err(err),
            };
            match result {
                Ok(()) => info!(%peer, "client disconnected"),
                Err(err) => warn!(%peer, %err, "connection closed on error"),
            }
        });
    }
}
// ANCHOR_END: serve
