// ANCHOR: header
//! A future written by hand, and a tiny executor that runs it.
//!
//! cargo run --example executor

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, mpsc},
    task::{Context, Poll, Wake, Waker},
    thread,
    time::{Duration, Instant},
};
// ANCHOR_END: header

// ANCHOR: delay
/// A future that completes once `deadline` has passed.
struct Delay {
    name: &'static str,
    deadline: Instant,
    /// The waker of the task that waits, shared with the timer thread.
    waker: Arc<Mutex<Option<Waker>>>,
    timer_started: bool,
}

impl Delay {
    fn new(name: &'static str, after: Duration) -> Self {
        Self {
            name,
            deadline: Instant::now() + after,
            waker: Arc::new(Mutex::new(None)),
            timer_started: false,
        }
    }
}

impl Future for Delay {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            println!("  poll {}: ready", self.name);
            return Poll::Ready(());
        }
        println!("  poll {}: not yet", self.name);
        // Remember who to wake. Store it on every poll: the future may have
        // moved to another task since the last one.
        *self.waker.lock().unwrap() = Some(cx.waker().clone());
        if !self.timer_started {
            self.timer_started = true;
            let (deadline, waker) = (self.deadline, Arc::clone(&self.waker));
            thread::spawn(move || {
                thread::sleep(deadline.saturating_duration_since(Instant::now()));
                if let Some(waker) = waker.lock().unwrap().take() {
                    waker.wake();
                }
            });
        }
        Poll::Pending
    }
}
// ANCHOR_END: delay

// ANCHOR: executor
type BoxedFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A spawned future, and the way back into the run queue.
struct Task {
    future: Mutex<Option<BoxedFuture>>,
    queue: mpsc::Sender<Arc<Task>>,
}

/// Waking a task puts it back on the run queue: that is all a waker does.
impl Wake for Task {
    fn wake(self: Arc<Self>) {
        let queue = self.queue.clone();
        let _ = queue.send(self);
    }
}

/// Runs tasks on the current thread, polling each one whenever its waker
/// says it can make progress.
struct Executor {
    queue: mpsc::Receiver<Arc<Task>>,
    sender: mpsc::Sender<Arc<Task>>,
}

impl Executor {
    fn new() -> Self {
        let (sender, queue) = mpsc::channel();
        Self { queue, sender }
    }

    fn spawn(&self, future: impl Future<Output = ()> + Send + 'static) {
        let task = Arc::new(Task {
            future: Mutex::new(Some(Box::pin(future))),
            queue: self.sender.clone(),
        });
        self.sender.send(task).unwrap();
    }

    /// Polls tasks as they are woken, until no task can ever be woken again.
    fn run(self) {
        drop(self.sender); // from now on, only tasks and their wakers send
        while let Ok(task) = self.queue.recv() {
            let mut slot = task.future.lock().unwrap();
            let Some(mut future) = slot.take() else {
                continue; // finished already; a late wake-up
            };
            let waker = Waker::from(Arc::clone(&task));
            if future
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
            {
                *slot = Some(future); // wait for the next wake-up
            }
        }
    }
}
// ANCHOR_END: executor

// ANCHOR: main
fn main() {
    let start = Instant::now();
    let executor = Executor::new();

    let lazy = async move {
        println!(
            "[{:>3} ms] the async block runs",
            start.elapsed().as_millis()
        );
    };
    println!("an async block was created, and nothing ran");
    executor.spawn(lazy);

    for (name, millis) in [("slow", 300), ("fast", 100)] {
        executor.spawn(async move {
            Delay::new(name, Duration::from_millis(millis)).await;
            println!("[{:>3} ms] {name} is done", start.elapsed().as_millis());
        });
    }

    executor.run();
    println!(
        "[{:>3} ms] all tasks finished, on one thread",
        start.elapsed().as_millis()
    );
}
// ANCHOR_END: main
