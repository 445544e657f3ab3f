//! The service on the network: frames on any byte stream, and the two
//! ends of a connection.

mod client_stream;
#[cfg(test)]
mod dummy;
mod frame;
mod linger;
mod multiplex;
#[cfg(test)]
mod naive;
mod server_stream;
mod stream;

pub use client_stream::ProstClientStream;
pub use frame::{
    COMPRESSION_LIMIT, DEFAULT_MAX_FRAME, ENTRY_COST, FrameCoder, HEADER_LEN, INLINE_ENTRIES,
    INLINE_LIMIT, MAX_WIRE_LEN, max_entries,
};
pub(crate) use linger::linger;
pub use multiplex::{
    Client, DEFAULT_CONNECTION_WINDOW, DEFAULT_MAX_STREAMS, MuxStream, STREAM_WINDOW, Subscriber,
};
pub(crate) use multiplex::{connection_window, window_headroom, yamux_config};
pub use server_stream::ProstServerStream;
pub use stream::{ProstStream, WRITE_BACKPRESSURE};
