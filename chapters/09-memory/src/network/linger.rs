// ANCHOR: linger
//! A close that does not destroy the last answer.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long `linger` goes on reading.
const LINGER: Duration = Duration::from_secs(2);

/// Stops writing, then reads and drops what the peer still sends, for a
/// moment. Closing a socket while received data is unread makes the
/// kernel reset the connection, and the reset can destroy the answer we
/// just sent before the peer has read it.
pub async fn linger<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let mut sink = [0; 4096];
    let linger = async {
        let _ = stream.shutdown().await;
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    let _ = tokio::time::timeout(LINGER, linger).await;
}
// ANCHOR_END: linger
