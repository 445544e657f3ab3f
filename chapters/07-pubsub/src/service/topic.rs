// ANCHOR: imports
//! Publish and subscribe: topics, their subscribers, and the messages
//! between them.
//!
//! Every topic and subscription lives in one table behind one lock. The
//! lock is a plain `std::sync::Mutex`: no code holds it across an
//! `.await`, or for longer than it takes to change the table or to put a
//! message in a few queues, and nothing in that time can wait.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::{
    Notify,
    mpsc::{self, error::TrySendError},
};

use crate::{CommandResponse, KvError, Value};
// ANCHOR_END: imports

// ANCHOR: ids
/// How many messages may wait for a subscriber, unless told otherwise.
pub const DEFAULT_SUBSCRIBER_QUEUE: usize = 128;

/// The most messages a subscriber's queue may be given.
pub const MAX_SUBSCRIBER_QUEUE: usize = 1 << 20;

/// The longest topic name, in bytes: a topic is kept as long as it has
/// subscribers, so its name must not be as large as a frame.
pub const MAX_TOPIC_LEN: usize = 1024;

/// The connection a subscription belongs to: only that connection may end
/// it. All the streams of one connection share its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionId(u64);

impl ConnectionId {
    /// A new id, different from every other in this process.
    pub fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl Default for ConnectionId {
    fn default() -> Self {
        Self::new()
    }
}
// ANCHOR_END: ids

// ANCHOR: broadcaster
/// The topics and their subscribers. Clones share them.
#[derive(Clone)]
pub struct Broadcaster {
    table: Arc<Mutex<Table>>,
    queue: usize,
}

#[derive(Default)]
struct Table {
    next_id: u32,
    /// Each topic's subscribers, by subscription id. A topic is here only
    /// while it has subscribers.
    topics: HashMap<String, HashMap<u32, Mailbox>>,
    /// Each subscription's topic and owner, to check an `Unsubscribe`.
    owners: HashMap<u32, (String, ConnectionId)>,
}

/// The sending end of one subscriber's queue.
struct Mailbox {
    sender: mpsc::Sender<Arc<CommandResponse>>,
    ending: Arc<Ending>,
}

/// How a subscription that fell behind learns it: not through its queue,
/// which is full, but through this, which it shares with its mailbox.
#[derive(Default)]
struct Ending {
    reason: Mutex<Option<KvError>>,
    /// Wakes a subscriber that waits to send, so it stops waiting.
    notify: Notify,
}

impl Broadcaster {
    /// A broadcaster whose subscribers each have a queue of `queue`
    /// messages, from 1 to [`MAX_SUBSCRIBER_QUEUE`].
    pub fn new(queue: usize) -> Self {
        Self {
            table: Arc::default(),
            queue: queue.clamp(1, MAX_SUBSCRIBER_QUEUE),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A thread that panics while it holds a `std` mutex "poisons" it,
        // and `lock` then returns an error. Nothing that runs under this
        // lock can panic halfway through a change (they are inserts and
        // removes on maps), so the table is whole: take it anyway.
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
    // ANCHOR_END: broadcaster

    // ANCHOR: subscribe
    /// Subscribes `owner` to `topic`. The subscription's first item says
    /// its id; it ends when it is dropped or unsubscribed.
    pub fn subscribe(&self, topic: String, owner: ConnectionId) -> Result<Subscription, KvError> {
        if topic.len() > MAX_TOPIC_LEN {
            return Err(KvError::InvalidCommand(format!(
                "a topic name has at most {MAX_TOPIC_LEN} bytes"
            )));
        }
        let (sender, receiver) = mpsc::channel(self.queue);
        let ending = Arc::new(Ending::default());
        let mut table = self.lock();
        // Ids wrap around after 2^32 subscriptions; skip any still in use,
        // and 0, which protobuf sends for "no id".
        let mut id = table.next_id;
        while id == 0 || table.owners.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        table.next_id = id.wrapping_add(1);
        let mailbox = Mailbox {
            sender,
            ending: Arc::clone(&ending),
        };
        table
            .topics
            .entry(topic.clone())
            .or_default()
            .insert(id, mailbox);
        table.owners.insert(id, (topic, owner));
        Ok(Subscription {
            id,
            first: Some(CommandResponse::from(Value::from(i64::from(id)))),
            receiver,
            ending,
            broadcaster: self.clone(),
            done: false,
        })
    }
    // ANCHOR_END: subscribe

    // ANCHOR: publish
    /// Puts a message with `data` in the queue of every subscriber of
    /// `topic`, and returns how many it reached. Never waits: a subscriber
    /// whose queue is full has fallen behind, and its subscription ends.
    pub fn publish(&self, topic: &str, data: Vec<Value>) -> usize {
        let message = Arc::new(CommandResponse::from(data));
        let mut table = self.lock();
        let Some(subscribers) = table.topics.get(topic) else {
            return 0;
        };
        let mut reached = 0;
        let mut behind = Vec::new();
        for (&id, mailbox) in subscribers {
            match mailbox.sender.try_send(Arc::clone(&message)) {
                Ok(()) => reached += 1,
                Err(TrySendError::Full(_)) => behind.push(id),
                // Cannot happen: a subscription leaves the table before its
                // receiver is dropped. Were it to, leaving is right.
                Err(TrySendError::Closed(_)) => behind.push(id),
            }
        }
        for id in behind {
            let queue = self.queue;
            table.remove(id, Some(KvError::Lagged { id, queue }));
        }
        reached
    }
    // ANCHOR_END: publish

    // ANCHOR: unsubscribe
    /// Ends subscription `id` to `topic`, if `owner` made it. Its stream
    /// then ends, after the messages already in its queue.
    pub fn unsubscribe(&self, topic: &str, id: u32, owner: ConnectionId) -> Result<(), KvError> {
        let mut table = self.lock();
        match table.owners.get(&id) {
            Some((t, o)) if t == topic && *o == owner => {
                table.remove(id, None);
                Ok(())
            }
            // Someone else's subscription, or none: the same answer, so
            // that a guess learns nothing.
            _ => Err(KvError::NoSubscription {
                topic: topic.into(),
                id,
            }),
        }
    }

    /// How many subscribers `topic` has.
    pub fn subscribers(&self, topic: &str) -> usize {
        self.lock().topics.get(topic).map_or(0, HashMap::len)
    }
}

impl Table {
    /// Removes subscription `id`, and its topic with it if it was the last
    /// one. `why`, if given, goes to the subscriber (an unsubscribe needs
    /// no reason). One lock covers all of it: a subscribe that comes in
    /// between cannot land in a topic that is being removed.
    fn remove(&mut self, id: u32, why: Option<KvError>) {
        let Some((topic, _)) = self.owners.remove(&id) else {
            return;
        };
        let Some(subscribers) = self.topics.get_mut(&topic) else {
            return;
        };
        let mailbox = subscribers.remove(&id);
        if let (Some(mailbox), Some(why)) = (&mailbox, why) {
            *mailbox
                .ending
                .reason
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(why);
            mailbox.ending.notify.notify_one();
        }
        // Dropping the sender ends the subscriber's stream once its queue
        // is empty.
        drop(mailbox);
        if subscribers.is_empty() {
            self.topics.remove(&topic);
        }
    }
}
// ANCHOR_END: unsubscribe

// ANCHOR: subscription
/// One subscription, as the subscriber sees it: its id first, then the
/// messages published to its topic, in order. Dropping it unsubscribes.
pub struct Subscription {
    id: u32,
    /// The answer that says the id, until it has been taken.
    first: Option<CommandResponse>,
    receiver: mpsc::Receiver<Arc<CommandResponse>>,
    ending: Arc<Ending>,
    broadcaster: Broadcaster,
    done: bool,
}

impl Subscription {
    /// The subscription's id, which `Unsubscribe` names.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Takes the first answer, the id, out; `next` then starts with the
    /// messages. For the service, which runs its hooks on it.
    pub(crate) fn take_first(&mut self) -> CommandResponse {
        self.first.take().unwrap_or_default()
    }

    /// Puts the first answer back, hooks run.
    pub(crate) fn put_first(&mut self, first: CommandResponse) {
        self.first = Some(first);
    }

    /// The next answer to send: the id, then each message. After the last
    /// message, an error answer if the subscription was ended for falling
    /// behind; then `None`. Cancel-safe: a call dropped before it returns
    /// loses nothing.
    pub async fn next(&mut self) -> Option<CommandResponse> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        if self.done {
            return None;
        }
        match self.receiver.recv().await {
            // A copy for this subscriber: the hooks may change it.
            Some(message) => Some(CommandResponse::clone(&message)),
            None => self.take_reason().map(CommandResponse::from),
        }
    }

    /// Completes once the subscription has been ended for falling behind,
    /// while its queue still holds messages. For a sender that waits on a
    /// client that does not read: it can stop waiting, and free the queue.
    /// Once `next` has returned the reason, there is nothing left to free,
    /// and this never completes.
    pub async fn fell_behind(&self) {
        if self.done {
            return std::future::pending().await;
        }
        self.ending.notify.notified().await;
    }

    /// Why someone else ended the subscription, if they did; once. After
    /// it, `next` returns `None`.
    pub fn take_reason(&mut self) -> Option<KvError> {
        self.done = true;
        let mut reason = self.ending.reason.lock().unwrap_or_else(|p| p.into_inner());
        reason.take()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // At once, not when a later publish finds the queue closed. If
        // someone else removed it already, its id may belong to a newer
        // subscription by now: remove only our own.
        let mut table = self.broadcaster.lock();
        let ours = (table.owners.get(&self.id))
            .and_then(|(topic, _)| table.topics.get(topic)?.get(&self.id))
            .is_some_and(|mailbox| Arc::ptr_eq(&mailbox.ending, &self.ending));
        if ours {
            table.remove(self.id, None);
        }
    }
}
// ANCHOR_END: subscription

// ANCHOR: tests
#[cfg(test)]
mod tests {
    use std::{sync::Barrier, thread};

    use super::*;

    fn values(answer: Option<CommandResponse>) -> Vec<Value> {
        answer.expect("an answer").values
    }

    #[tokio::test]
    async fn the_id_comes_before_any_message() {
        let topics = Broadcaster::new(8);
        let mut sub = topics
            .subscribe("news".into(), ConnectionId::new())
            .unwrap();
        // Published before the subscriber reads anything.
        assert_eq!(topics.publish("news", vec!["first".into()]), 1);
        let id = i64::from(sub.id());
        assert_eq!(values(sub.next().await), [Value::from(id)]);
        assert_eq!(values(sub.next().await), [Value::from("first")]);
    }

    #[tokio::test]
    async fn messages_arrive_in_the_order_they_were_published() {
        let topics = Broadcaster::new(100);
        let mut sub = topics.subscribe("n".into(), ConnectionId::new()).unwrap();
        sub.next().await; // the id
        for i in 0..100i64 {
            topics.publish("n", vec![i.into()]);
        }
        for i in 0..100i64 {
            assert_eq!(values(sub.next().await), [Value::from(i)]);
        }
    }

    #[tokio::test]
    async fn a_subscriber_that_does_not_read_holds_up_no_one() {
        let topics = Broadcaster::new(4);
        let owner = ConnectionId::new();
        let mut slow = topics.subscribe("t".into(), owner).unwrap();
        let mut fast = topics.subscribe("t".into(), owner).unwrap();
        fast.next().await; // the id
        for i in 0..10i64 {
            // Never waits, whatever `slow` does.
            let reached = topics.publish("t", vec![i.into()]);
            assert_eq!(reached, if i < 4 { 2 } else { 1 });
            assert_eq!(values(fast.next().await), [Value::from(i)]);
        }
        // The fifth message found `slow`'s queue full: it was dropped then.
        assert_eq!(topics.subscribers("t"), 1);
        slow.next().await; // the id
        for i in 0..4i64 {
            assert_eq!(values(slow.next().await), [Value::from(i)]);
        }
        let last = slow.next().await.expect("a last answer");
        assert_eq!(last.status, 429);
        assert!(last.message.contains("fell more than 4 messages behind"));
        assert!(slow.next().await.is_none());
        // Unsubscribing `fast` is not held up either.
        assert!(topics.unsubscribe("t", fast.id(), owner).is_ok());
    }

    #[tokio::test]
    async fn falling_behind_is_signalled_until_the_reason_has_been_read() {
        use futures::FutureExt;

        let topics = Broadcaster::new(1);
        let mut sub = topics.subscribe("t".into(), ConnectionId::new()).unwrap();
        assert!(sub.fell_behind().now_or_never().is_none(), "not yet");
        topics.publish("t", vec![1i64.into()]);
        topics.publish("t", vec![2i64.into()]); // the queue of one is full
        assert!(
            sub.fell_behind().now_or_never().is_some(),
            "a sender may stop"
        );
        sub.next().await; // the id
        assert_eq!(values(sub.next().await), [Value::from(1i64)]);
        assert_eq!(sub.next().await.unwrap().status, 429);
        // The reason is out: nothing is left to free, nothing to signal.
        assert!(sub.fell_behind().now_or_never().is_none());
    }

    #[test]
    fn only_the_owner_can_unsubscribe_and_only_from_its_topic() {
        let topics = Broadcaster::new(4);
        let (owner, other) = (ConnectionId::new(), ConnectionId::new());
        let sub = topics.subscribe("t".into(), owner).unwrap();
        let err = topics.unsubscribe("t", sub.id(), other).unwrap_err();
        assert_eq!(err.status(), 404);
        assert!(topics.unsubscribe("elsewhere", sub.id(), owner).is_err());
        assert_eq!(topics.subscribers("t"), 1, "still subscribed");
        assert!(topics.unsubscribe("t", sub.id(), owner).is_ok());
        assert_eq!(topics.subscribers("t"), 0);
        assert!(topics.unsubscribe("t", sub.id(), owner).is_err(), "once");
    }

    #[tokio::test]
    async fn unsubscribing_ends_the_stream_after_the_queued_messages() {
        let topics = Broadcaster::new(4);
        let owner = ConnectionId::new();
        let mut sub = topics.subscribe("t".into(), owner).unwrap();
        topics.publish("t", vec!["queued".into()]);
        topics.unsubscribe("t", sub.id(), owner).unwrap();
        sub.next().await; // the id
        assert_eq!(values(sub.next().await), [Value::from("queued")]);
        assert!(sub.next().await.is_none(), "no error: it was asked for");
    }

    #[test]
    fn a_subscription_leaves_as_soon_as_it_is_dropped() {
        let topics = Broadcaster::new(4);
        let sub = topics.subscribe("t".into(), ConnectionId::new()).unwrap();
        assert_eq!(topics.subscribers("t"), 1);
        drop(sub);
        assert_eq!(topics.subscribers("t"), 0);
        assert!(topics.lock().topics.is_empty(), "and its empty topic too");
        assert!(topics.lock().owners.is_empty());
    }

    #[test]
    fn a_topic_goes_with_its_last_subscriber_and_comes_back_with_the_next() {
        let topics = Broadcaster::new(4);
        let a = topics.subscribe("t".into(), ConnectionId::new()).unwrap();
        let b = topics.subscribe("t".into(), ConnectionId::new()).unwrap();
        drop(a);
        assert!(topics.lock().topics.contains_key("t"), "b is still there");
        drop(b);
        assert!(
            !topics.lock().topics.contains_key("t"),
            "gone with the last"
        );
        let _c = topics.subscribe("t".into(), ConnectionId::new()).unwrap();
        assert_eq!(topics.publish("t", vec![]), 1, "c is reached");
    }

    #[test]
    fn a_topic_name_longer_than_the_limit_is_refused() {
        let topics = Broadcaster::new(4);
        let long = "t".repeat(MAX_TOPIC_LEN + 1);
        let err = topics.subscribe(long, ConnectionId::new()).err().unwrap();
        assert_eq!(err.status(), 400);
        assert!(topics.lock().topics.is_empty());
    }

    // A smoke test: with removal and subscription under one lock it cannot
    // fail; it is here to catch a change that splits them.
    #[test]
    fn a_topic_emptied_while_another_subscribes_keeps_the_newcomer() {
        // One thread subscribes and leaves, over and over, so the topic is
        // emptied and removed again and again; another subscribes at the
        // same moments. Removing the empty topic and subscribing take the
        // same lock, so the newcomer always lands in a live topic.
        let topics = Broadcaster::new(4);
        for _ in 0..200 {
            let barrier = Arc::new(Barrier::new(2));
            let leaver = {
                let (topics, barrier) = (topics.clone(), Arc::clone(&barrier));
                thread::spawn(move || {
                    let sub = topics.subscribe("t".into(), ConnectionId::new()).unwrap();
                    barrier.wait();
                    drop(sub);
                })
            };
            barrier.wait();
            let newcomer = topics.subscribe("t".into(), ConnectionId::new()).unwrap();
            leaver.join().unwrap();
            assert_eq!(topics.publish("t", vec![]), 1, "the newcomer is reached");
            drop(newcomer);
        }
    }
}
// ANCHOR_END: tests
