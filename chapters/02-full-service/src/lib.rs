//! A key-value server, built one chapter at a time.
//!
//! So far: the protocol ([`CommandRequest`], [`CommandResponse`]), the
//! errors ([`KvError`]), where data lives ([`Storage`], with [`MemTable`]
//! in memory and [`RedbStore`] on disk) and the [`Service`] that turns a
//! request into a response, with hooks that watch and adjust its work.

mod error;
mod pb;
mod service;
mod storage;

pub use error::KvError;
pub use pb::abi::{
    CommandRequest, CommandResponse, Hdel, Hexist, Hget, Hgetall, Hmdel, Hmexist, Hmget, Hmset,
    Hset, Kvpair, Value, command_request::RequestData, value,
};
pub use service::{CommandService, Hook, HookMut, Service, ServiceBuilder};
pub use storage::{MemTable, RedbStore, Storage, StorageIter, TableRead, TableWrite};
