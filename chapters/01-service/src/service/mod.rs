//! The service: turns a [`CommandRequest`] into a [`CommandResponse`].

mod command_service;

use std::sync::Arc;

use crate::{CommandRequest, CommandResponse, KvError, MemTable, RequestData, Storage};

// ANCHOR: command_service
/// A command that knows how to run itself against a storage.
pub trait CommandService {
    /// Runs the command. An `Err` becomes an error response.
    fn execute(self, store: &impl Storage) -> Result<CommandResponse, KvError>;
}
// ANCHOR_END: command_service

// ANCHOR: service
/// The KV service. Cloning it is cheap (one reference count), and every
/// clone serves from the same storage, so each thread or connection can
/// hold its own clone.
pub struct Service<S = MemTable> {
    inner: Arc<ServiceInner<S>>,
}

/// What all clones of a [`Service`] share.
struct ServiceInner<S> {
    store: S,
}

// Written by hand: `#[derive(Clone)]` would require `S: Clone`, but only
// the `Arc` is cloned here.
impl<S> Clone for Service<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S: Storage> Service<S> {
    pub fn new(store: S) -> Self {
        Self {
            inner: Arc::new(ServiceInner { store }),
        }
    }

    /// Runs one request to completion. Never panics on a bad request:
    /// every problem is reported in the response.
    pub fn execute(&self, request: CommandRequest) -> CommandResponse {
        dispatch(request, &self.inner.store).unwrap_or_else(CommandResponse::from)
    }
}
// ANCHOR_END: service

// ANCHOR: dispatch
/// Finds the command inside a request and runs it.
fn dispatch(request: CommandRequest, store: &impl Storage) -> Result<CommandResponse, KvError> {
    match request.request_data {
        Some(RequestData::Hget(cmd)) => cmd.execute(store),
        Some(RequestData::Hgetall(cmd)) => cmd.execute(store),
        Some(RequestData::Hset(cmd)) => cmd.execute(store),
        Some(RequestData::Hmget(_)) => Err(KvError::Unimplemented("hmget")),
        Some(RequestData::Hmset(_)) => Err(KvError::Unimplemented("hmset")),
        Some(RequestData::Hdel(_)) => Err(KvError::Unimplemented("hdel")),
        Some(RequestData::Hmdel(_)) => Err(KvError::Unimplemented("hmdel")),
        Some(RequestData::Hexist(_)) => Err(KvError::Unimplemented("hexist")),
        Some(RequestData::Hmexist(_)) => Err(KvError::Unimplemented("hmexist")),
        None => Err(KvError::InvalidCommand(
            "the request holds no command".into(),
        )),
    }
}
// ANCHOR_END: dispatch

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;
    use crate::{Kvpair, Value};

    #[test]
    fn a_request_without_a_command_is_rejected() {
        let service = Service::new(MemTable::new());
        let res = service.execute(CommandRequest::default());
        assert_eq!(res.status, 400);
        assert_eq!(res.message, "invalid command: the request holds no command");
    }

    #[test]
    fn commands_of_later_chapters_say_so() {
        let service = Service::new(MemTable::new());
        let requests = [
            (CommandRequest::new_hmget("t", ["k"]), "hmget"),
            (
                CommandRequest::new_hmset("t", [Kvpair::new("k", 1i64)]),
                "hmset",
            ),
            (CommandRequest::new_hdel("t", "k"), "hdel"),
            (CommandRequest::new_hmdel("t", ["k"]), "hmdel"),
            (CommandRequest::new_hexist("t", "k"), "hexist"),
            (CommandRequest::new_hmexist("t", ["k"]), "hmexist"),
        ];
        for (request, name) in requests {
            let res = service.execute(request);
            assert_eq!(res.status, 501);
            assert_eq!(
                res.message,
                format!("command `{name}` is not implemented yet")
            );
        }
    }

    // ANCHOR: threads_test
    #[test]
    fn clones_share_one_storage_across_threads() {
        let service = Service::new(MemTable::new());
        let writers: Vec<_> = (0..4i64)
            .map(|n| {
                let service = service.clone();
                thread::spawn(move || {
                    let res = service.execute(CommandRequest::new_hset("t", n.to_string(), n));
                    assert!(res.is_ok(), "{res:?}");
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }

        let res = service.execute(CommandRequest::new_hgetall("t"));
        let expected: Vec<_> = (0..4i64).map(|n| Kvpair::new(n.to_string(), n)).collect();
        assert_eq!(res.pairs, expected);
    }
    // ANCHOR_END: threads_test

    #[test]
    fn service_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Service>();
        assert_send_sync::<Value>();
    }
}
