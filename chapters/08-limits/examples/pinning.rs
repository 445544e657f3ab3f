// ANCHOR: header
//! Why some futures must not move, and how `Pin` keeps them in place.
//!
//! cargo run --example pinning

use std::{
    future::Future,
    pin::{Pin, pin},
    task::{Context, Poll, Waker},
};
// ANCHOR_END: header

// ANCHOR: yield_once
/// A future that is `Pending` once, then ready: a pause in an async fn.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
// ANCHOR_END: yield_once

// ANCHOR: self_referential
/// The future of this function holds `numbers` and, across the `.await`,
/// `first_two`, a reference into `numbers`: a reference into the future
/// itself. Were the future moved while paused, `first_two` would point at
/// the place the array used to be.
async fn sum_of_first_two() -> u32 {
    let numbers = [1, 2, 3];
    let first_two = &numbers[..2];
    YieldOnce(false).await;
    first_two.iter().sum()
}
// ANCHOR_END: self_referential

// ANCHOR: main
fn main() {
    let future = sum_of_first_two();
    println!("the future is {} bytes", size_of_val(&future));

    // `poll` takes `Pin<&mut Self>`. `pin!` pins the future where it is,
    // on this stack frame: from here on it cannot be moved, only polled.
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    let mut polls = 0;
    let sum = loop {
        polls += 1;
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(sum) => break sum,
            Poll::Pending => println!("poll {polls}: pending"),
        }
    };
    println!("poll {polls}: ready, sum = {sum}");

    // A `&mut` to it would not compile: with one, `mem::swap` could move
    // it. `Pin` hands out `&mut` only for types that are `Unpin`.
    // let inner: &mut _ = &mut *future; // error[E0596]: `DerefMut` is not
    //                                   // implemented for `Pin<&mut ...>`
}
// ANCHOR_END: main
