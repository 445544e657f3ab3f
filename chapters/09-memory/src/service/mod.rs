//! The service: turns a [`CommandRequest`] into a [`CommandResponse`].

mod command_service;
mod topic;

use std::sync::Arc;

pub use topic::{
    Broadcaster, ConnectionId, DEFAULT_SUBSCRIBER_QUEUE, Delivery, MAX_SUBSCRIBER_QUEUE,
    MAX_TOPIC_LEN, Subscription,
};

use bytes::{Bytes, BytesMut};

use crate::{
    CommandRequest, CommandResponse, ConnectionBudget, DEFAULT_MAX_FRAME, FrameCoder, KvError,
    MemTable, RequestData, Storage, Value,
};

// ANCHOR: command_service
/// A command that knows how to run itself against a storage.
pub trait CommandService {
    /// Runs the command. An `Err` becomes an error response, and so does
    /// an answer that would be larger than `max_answer` bytes.
    fn execute(self, store: &impl Storage, max_answer: usize) -> Result<CommandResponse, KvError>;
}
// ANCHOR_END: command_service

// ANCHOR: hook_types
/// A hook that looks at something without changing it.
pub type Hook<T> = Box<dyn Fn(&T) + Send + Sync>;
/// A hook that may change what it is given.
pub type HookMut<T> = Box<dyn Fn(&mut T) + Send + Sync>;
// ANCHOR_END: hook_types

// ANCHOR: service
/// The KV service. Cloning it is cheap (one reference count), and every
/// clone serves from the same storage, so each thread or connection can
/// hold its own clone.
///
/// Hooks run in this order for every answer, error answers included:
/// `on_received` (with the request, when there is one: a frame that does
/// not decode has none), `on_executed`, `on_before_send`, and once the
/// answer has left, `on_after_send`. A subscription's first answer, its
/// id, is such an answer. A published message passes `on_before_send`
/// once, when it is published (it is encoded once, for every subscriber),
/// and `on_after_send` for each subscriber it reaches. The last answer of
/// a subscription that fell behind passes `on_before_send` and
/// `on_after_send`.
pub struct Service<S = MemTable> {
    inner: Arc<ServiceInner<S>>,
}

/// What all clones of a [`Service`] share.
struct ServiceInner<S> {
    store: S,
    topics: Broadcaster,
    max_answer: usize,
    on_received: Vec<Hook<CommandRequest>>,
    on_executed: Vec<Hook<CommandResponse>>,
    on_before_send: Vec<HookMut<CommandResponse>>,
    on_after_send: Vec<Box<dyn Fn() + Send + Sync>>,
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
    /// A service with no hooks. Use [`Service::builder`] to add some.
    pub fn new(store: S) -> Self {
        Self::builder(store).build()
    }

    pub fn builder(store: S) -> ServiceBuilder<S> {
        ServiceBuilder {
            inner: ServiceInner {
                store,
                topics: Broadcaster::new(DEFAULT_SUBSCRIBER_QUEUE),
                max_answer: DEFAULT_MAX_FRAME,
                on_received: Vec::new(),
                on_executed: Vec::new(),
                on_before_send: Vec::new(),
                on_after_send: Vec::new(),
            },
        }
    }

    /// Runs one request to completion. Never panics on a bad request:
    /// every problem is reported in the response.
    ///
    /// Calls the `on_received`, `on_executed` and `on_before_send` hooks;
    /// whoever sends the response calls [`Service::after_send`]. For a
    /// `Subscribe`, the answer is only the first one, with the id, and the
    /// subscription ends with it: a server uses [`Service::call`].
    pub fn execute(&self, request: CommandRequest) -> CommandResponse {
        match self.call(request, ConnectionId::new(), &ConnectionBudget::unlimited()) {
            Answer::One(response) => response,
            Answer::Stream(mut subscription) => subscription.take_first(),
        }
    }

    /// Runs one request made on connection `connection`, whose budget
    /// holds what its subscriptions' queues hold: one answer for most
    /// commands, a stream of them for `Subscribe`.
    pub fn call(
        &self,
        request: CommandRequest,
        connection: ConnectionId,
        budget: &ConnectionBudget,
    ) -> Answer {
        let inner = &self.inner;
        for hook in &inner.on_received {
            hook(&request);
        }
        // `request_data` moves into the match: nothing is cloned.
        let response = match request.request_data {
            Some(RequestData::Subscribe(cmd)) => {
                match (inner.topics).subscribe(cmd.topic, connection, budget.clone()) {
                    Ok(mut subscription) => {
                        // The id answer passes the hooks like any answer.
                        let first = self.answer(subscription.take_first());
                        subscription.put_first(first);
                        return Answer::Stream(subscription);
                    }
                    Err(err) => Err(err),
                }
            }
            Some(RequestData::Unsubscribe(cmd)) => (inner.topics)
                .unsubscribe(&cmd.topic, cmd.id, connection)
                .map(|()| CommandResponse::ok()),
            Some(RequestData::Publish(cmd)) => self.publish(&cmd.topic, cmd.data),
            request_data => dispatch(
                CommandRequest { request_data },
                &inner.store,
                inner.max_answer,
            ),
        };
        Answer::One(self.answer(response.unwrap_or_else(CommandResponse::from)))
    }

    /// Publishes a message with `data` to `topic`, encoded once, after the
    /// `on_before_send` hooks; answers how many subscribers it reached.
    fn publish(&self, topic: &str, data: Vec<Value>) -> Result<CommandResponse, KvError> {
        let topics = &self.inner.topics;
        if topics.subscribers(topic) == 0 {
            return Ok(Value::from(0i64).into());
        }
        let mut message = CommandResponse::from(data);
        self.before_send(&mut message);
        let mut frame = BytesMut::new();
        message.encode_frame(&mut frame)?;
        // Queues may hold the frame for long: a buffer of its own size,
        // not one that grew (or was compressed into) larger.
        let frame = Bytes::copy_from_slice(&frame);
        let reached = topics.publish(topic, frame);
        Ok(Value::from(reached as i64).into())
    }

    /// The topics and their subscribers.
    pub fn topics(&self) -> &Broadcaster {
        &self.inner.topics
    }

    /// The answer to a request that could not be run at all (its frame did
    /// not decode, say), through the same hooks as any other answer.
    pub fn refuse(&self, err: &KvError) -> CommandResponse {
        self.answer(err.into())
    }

    /// Runs the `on_executed` and `on_before_send` hooks on an answer.
    fn answer(&self, mut response: CommandResponse) -> CommandResponse {
        for hook in &self.inner.on_executed {
            hook(&response);
        }
        self.before_send(&mut response);
        response
    }

    /// Runs the `on_before_send` hooks: on every answer, and on each
    /// message that a subscription delivers.
    pub fn before_send(&self, response: &mut CommandResponse) {
        for hook in &self.inner.on_before_send {
            hook(response);
        }
    }

    /// Whether the storage may block (see [`Storage::blocks`]).
    pub(crate) fn blocks(&self) -> bool {
        self.inner.store.blocks()
    }

    /// Runs the `on_after_send` hooks. The code that sends a response
    /// calls this once the response has left.
    pub fn after_send(&self) {
        for hook in &self.inner.on_after_send {
            hook();
        }
    }
}
// ANCHOR_END: service

// ANCHOR: answer
/// What a request gets: one answer, or, for `Subscribe`, a stream of them
/// whose first is the subscription's id.
pub enum Answer {
    One(CommandResponse),
    Stream(Subscription),
}
// ANCHOR_END: answer

// ANCHOR: builder
/// Builds a [`Service`] with hooks. Each `on_*` method adds one hook;
/// hooks of the same kind run in the order they were added.
pub struct ServiceBuilder<S> {
    inner: ServiceInner<S>,
}

impl<S: Storage> ServiceBuilder<S> {
    /// The largest answer, in bytes, that a command may build (default
    /// [`DEFAULT_MAX_FRAME`]). A server sets it to its frame limit, so
    /// that clients with the same limit can read every answer.
    pub fn max_answer(mut self, max: usize) -> Self {
        self.inner.max_answer = max;
        self
    }

    /// How many messages may wait for one subscriber (default
    /// [`DEFAULT_SUBSCRIBER_QUEUE`], at most [`MAX_SUBSCRIBER_QUEUE`]). A
    /// subscriber that falls further behind loses its subscription, with a
    /// last answer that says so.
    pub fn subscriber_queue(mut self, messages: usize) -> Self {
        self.inner.topics = Broadcaster::new(messages);
        self
    }

    /// Called with each request before it is executed.
    pub fn on_received(mut self, hook: impl Fn(&CommandRequest) + Send + Sync + 'static) -> Self {
        self.inner.on_received.push(Box::new(hook));
        self
    }

    /// Called with each response as soon as the command has run.
    pub fn on_executed(mut self, hook: impl Fn(&CommandResponse) + Send + Sync + 'static) -> Self {
        self.inner.on_executed.push(Box::new(hook));
        self
    }

    /// Called with each response just before it is sent; may change it.
    pub fn on_before_send(
        mut self,
        hook: impl Fn(&mut CommandResponse) + Send + Sync + 'static,
    ) -> Self {
        self.inner.on_before_send.push(Box::new(hook));
        self
    }

    /// Called after each response has been sent.
    pub fn on_after_send(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.inner.on_after_send.push(Box::new(hook));
        self
    }

    pub fn build(self) -> Service<S> {
        Service {
            inner: Arc::new(self.inner),
        }
    }
}
// ANCHOR_END: builder

// ANCHOR: dispatch
/// Finds the command inside a request and runs it.
fn dispatch(
    request: CommandRequest,
    store: &impl Storage,
    max: usize,
) -> Result<CommandResponse, KvError> {
    match request.request_data {
        Some(RequestData::Hget(cmd)) => cmd.execute(store, max),
        Some(RequestData::Hgetall(cmd)) => cmd.execute(store, max),
        Some(RequestData::Hmget(cmd)) => cmd.execute(store, max),
        Some(RequestData::Hset(cmd)) => cmd.execute(store, max),
        Some(RequestData::Hmset(cmd)) => cmd.execute(store, max),
        Some(RequestData::Hdel(cmd)) => cmd.execute(store, max),
        Some(RequestData::Hmdel(cmd)) => cmd.execute(store, max),
        Some(RequestData::Hexist(cmd)) => cmd.execute(store, max),
        Some(RequestData::Hmexist(cmd)) => cmd.execute(store, max),
        // `Service::call` runs these before it gets here.
        Some(RequestData::Subscribe(_) | RequestData::Unsubscribe(_) | RequestData::Publish(_)) => {
            Err(KvError::InvalidCommand("not a storage command".into()))
        }
        None => Err(KvError::InvalidCommand(
            "the request holds no command".into(),
        )),
    }
}
// ANCHOR_END: dispatch

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Mutex,
            atomic::{AtomicUsize, Ordering},
        },
        thread,
    };

    use super::*;
    use crate::{Kvpair, Value};

    #[test]
    fn a_request_without_a_command_is_rejected() {
        let service = Service::new(MemTable::new());
        let res = service.execute(CommandRequest::default());
        assert_eq!(res.status, 400);
        assert_eq!(res.message, "invalid command: the request holds no command");
    }

    // ANCHOR: hooks_test
    #[test]
    fn hooks_run_in_order_and_see_the_right_things() {
        let events = Arc::new(Mutex::new(Vec::new()));
        let log = |events: &Arc<Mutex<Vec<String>>>| {
            let events = Arc::clone(events);
            move |event: String| events.lock().unwrap().push(event)
        };
        let (received, executed, before, after) =
            (log(&events), log(&events), log(&events), log(&events));

        let service = Service::builder(MemTable::new())
            .on_received(move |req| received(format!("received {:?}", req.request_data)))
            .on_executed(move |res| executed(format!("executed {}", res.status)))
            .on_before_send(move |res| {
                before(format!("before_send {}", res.status));
                res.message = "checked".into();
            })
            .on_after_send(move || after("after_send".into()))
            .build();

        let res = service.execute(CommandRequest::new_hget("t", "k"));
        assert_eq!(
            res.message, "checked",
            "on_before_send changed the response"
        );
        service.after_send();

        assert_eq!(
            *events.lock().unwrap(),
            [
                r#"received Some(Hget(Hget { table: "t", key: "k" }))"#,
                "executed 404",
                "before_send 404",
                "after_send",
            ]
        );
    }
    // ANCHOR_END: hooks_test

    #[test]
    fn hooks_of_one_kind_all_run_in_the_order_they_were_added() {
        let calls = Arc::new(AtomicUsize::new(0));
        let (first, second) = (Arc::clone(&calls), Arc::clone(&calls));
        let service = Service::builder(MemTable::new())
            .on_before_send(move |res| {
                first.fetch_add(1, Ordering::SeqCst);
                res.status = 201;
            })
            .on_before_send(move |res| {
                second.fetch_add(1, Ordering::SeqCst);
                res.status += 1;
            })
            .build();

        for _ in 0..3 {
            let res = service.execute(CommandRequest::new_hexist("t", "k"));
            assert_eq!(res.status, 202);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 6);
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
