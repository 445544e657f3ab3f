//! A key-value server, built one chapter at a time.
//!
//! So far: the protocol ([`CommandRequest`], [`CommandResponse`]), the
//! errors ([`KvError`]), where data lives ([`Storage`], with [`MemTable`]
//! in memory and [`RedbStore`] on disk) and the [`Service`] that turns a
//! request into a response, with hooks that watch and adjust its work. On
//! the network: [frames](FrameCoder) on TLS, many streams of them over one
//! connection, served by [`serve`] and used by [`Client`]. For running
//! it: limits and timeouts in [`ServerConfig`].

mod certs;
mod error;
pub mod limits;
mod network;
mod pb;
mod places;
mod server;
mod service;
mod storage;
mod tls;

pub use certs::{DevCertPaths, DevCerts};
pub use error::KvError;
pub use network::{
    COMPRESSION_LIMIT, Client, DEFAULT_CONNECTION_WINDOW, DEFAULT_MAX_FRAME, DEFAULT_MAX_STREAMS,
    ENTRY_COST, FrameCoder, HEADER_LEN, INLINE_LIMIT, MAX_WIRE_LEN, MuxStream, ProstClientStream,
    ProstServerStream, ProstStream, STREAM_WINDOW, Subscriber, WRITE_BACKPRESSURE, max_entries,
};
pub use pb::abi::{
    CommandRequest, CommandResponse, Hdel, Hexist, Hget, Hgetall, Hmdel, Hmexist, Hmget, Hmset,
    Hset, Kvpair, Publish, Subscribe, Unsubscribe, Value, command_request::RequestData, value,
};
pub use places::DEFAULT_QUIET_TIME;
pub use server::{ServerConfig, serve, serve_connection};
pub use service::{
    Answer, Broadcaster, CommandService, ConnectionId, DEFAULT_SUBSCRIBER_QUEUE, Hook, HookMut,
    MAX_SUBSCRIBER_QUEUE, MAX_TOPIC_LEN, Service, ServiceBuilder, Subscription,
};
pub use storage::{MemTable, RedbStore, Storage, StorageIter, TableRead, TableWrite};
pub use tls::{
    ALPN_KV, DEFAULT_HANDSHAKE_TIMEOUT, TlsClientConnector, TlsServerAcceptor, load_certs, load_key,
};
