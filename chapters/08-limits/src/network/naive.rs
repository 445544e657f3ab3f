// ANCHOR: naive
//! The tempting way to write `poll_next`, and why it loses data.
//!
//! `read_frame` already reads a frame, so why not call it from `poll_next`?
//! Because `poll_next` is called again after every `Pending`, and each call
//! would start a new `read_frame` future. The future from the call before,
//! with the bytes it had read into its locals, was dropped on `Pending`.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::BytesMut;
use futures::{FutureExt, Stream};
use tokio::io::AsyncRead;

use super::frame::read_frame;
use crate::{CommandRequest, DEFAULT_MAX_FRAME, FrameCoder, KvError};

/// A stream of requests that keeps no state between polls. Do not do this.
pub struct NaiveStream<S> {
    stream: S,
}

impl<S: AsyncRead + Unpin> Stream for NaiveStream<S> {
    type Item = Result<CommandRequest, KvError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let mut buf = BytesMut::new();
        // A new future on every call. If it returns `Pending`, it is
        // dropped at the end of this call, and so are the bytes it read.
        let mut read = Box::pin(read_frame(&mut this.stream, &mut buf, DEFAULT_MAX_FRAME));
        match ready!(read.poll_unpin(cx)) {
            Ok(true) => {
                drop(read);
                Poll::Ready(Some(CommandRequest::decode_frame(
                    &mut buf,
                    DEFAULT_MAX_FRAME,
                )))
            }
            Ok(false) => Poll::Ready(None),
            Err(err) => Poll::Ready(Some(Err(err))),
        }
    }
}
// ANCHOR_END: naive

// ANCHOR: naive_tests
#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::{ProstStream, network::dummy::DummyStream};

    fn wire(requests: &[CommandRequest]) -> BytesMut {
        let mut wire = BytesMut::new();
        for request in requests {
            request.encode_frame(&mut wire).unwrap();
        }
        wire
    }

    #[tokio::test]
    async fn the_naive_stream_works_when_every_read_is_ready() {
        let requests = [
            CommandRequest::new_hget("t", "a"),
            CommandRequest::new_hget("t", "b"),
        ];
        let stream = NaiveStream {
            stream: DummyStream::new(wire(&requests)),
        };
        let received: Vec<_> = stream.map(Result::unwrap).collect().await;
        assert_eq!(received, requests);
    }

    #[tokio::test]
    async fn the_naive_stream_loses_bytes_on_pending() {
        let requests = [
            CommandRequest::new_hget("t", "a"),
            CommandRequest::new_hget("t", "b"),
        ];
        // Each poll now reads one byte, then meets `Pending` and drops it.
        let stream = NaiveStream {
            stream: DummyStream::new(wire(&requests)).trickle(1),
        };
        let received: Vec<_> = stream.collect().await;
        assert!(received.is_empty(), "every byte was lost: {received:?}");
    }

    #[tokio::test]
    async fn prost_stream_keeps_them() {
        let requests = [
            CommandRequest::new_hget("t", "a"),
            CommandRequest::new_hget("t", "b"),
        ];
        let stream = DummyStream::new(wire(&requests)).trickle(1);
        let stream = ProstStream::<_, CommandRequest, CommandRequest>::new(stream);
        let received: Vec<_> = stream.map(Result::unwrap).collect().await;
        assert_eq!(received, requests);
    }
}
// ANCHOR_END: naive_tests
