// ANCHOR: header
//! `Stream`, the async `Iterator`: one written by hand, and what
//! `StreamExt` builds on it.
//!
//! cargo run --example countdown

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use futures::{Stream, StreamExt};
use tokio::time::{Instant, Sleep};
// ANCHOR_END: header

// ANCHOR: countdown
/// Yields `n`, `n - 1`, ..., 1, one number every `period`.
struct Countdown {
    next: u32,
    period: Duration,
    /// The timer for the next number. `Sleep` is not `Unpin`, so it lives
    /// in a `Box`: the box can move, the timer inside it does not.
    tick: Pin<Box<Sleep>>,
}

impl Countdown {
    fn new(from: u32, period: Duration) -> Self {
        Self {
            next: from,
            period,
            tick: Box::pin(tokio::time::sleep(period)),
        }
    }
}

impl Stream for Countdown {
    type Item = u32;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<u32>> {
        if self.next == 0 {
            return Poll::Ready(None);
        }
        // Not time yet: the timer has registered our waker, so `Pending`.
        if self.tick.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let n = self.next;
        self.next -= 1;
        let period = self.period;
        self.tick.as_mut().reset(Instant::now() + period);
        Poll::Ready(Some(n))
    }
}
// ANCHOR_END: countdown

// ANCHOR: main
#[tokio::main]
async fn main() {
    // `next()` turns "poll me" into a future that `.await` can wait on,
    // just like `Iterator::next`, but asynchronous.
    let mut countdown = Countdown::new(3, Duration::from_millis(100));
    while let Some(n) = countdown.next().await {
        println!("{n}...");
    }
    println!("liftoff");

    // The adapters of `StreamExt` work as those of `Iterator` do.
    let evens: Vec<u32> = Countdown::new(6, Duration::from_millis(10))
        .filter(|n| std::future::ready(n % 2 == 0))
        .map(|n| n * 10)
        .collect()
        .await;
    println!("{evens:?}");
}
// ANCHOR_END: main
