// ANCHOR: imports
//! The accept loop of the TCP server.

use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::{DEFAULT_MAX_FRAME, ProstServerStream, Service, Storage};
// ANCHOR_END: imports

// ANCHOR: config
/// How [`serve`] runs. Later chapters add fields here, not parameters to
/// `serve`; each field has a default.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The largest request payload accepted, before and after inflating.
    /// Give the service the same limit for its answers
    /// ([`ServiceBuilder::max_answer`](crate::ServiceBuilder::max_answer)).
    pub max_frame: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_frame: DEFAULT_MAX_FRAME,
        }
    }
}
// ANCHOR_END: config

// ANCHOR: serve
/// Serves every connection that `listener` accepts, each in a task of its
/// own, until the returned future is dropped. Connections are independent:
/// one client's bad frame or sudden disconnect affects no one else.
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
        let connection =
            ProstServerStream::new(stream, service.clone()).max_frame(config.max_frame);
        tokio::spawn(async move {
            match connection.process().await {
                Ok(()) => info!(%peer, "client disconnected"),
                Err(err) => warn!(%peer, %err, "connection closed on error"),
            }
        });
    }
}
// ANCHOR_END: serve
