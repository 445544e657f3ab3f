// ANCHOR: header
//! `async fn` is a plain function that returns a future, and that future
//! runs nothing until it is polled.
//!
//! cargo run --example lazy

use std::future::Future;

use futures::executor::block_on;
// ANCHOR_END: header

// ANCHOR: two_forms
/// The usual way to write it.
async fn add(a: u32, b: u32) -> u32 {
    a + b
}

/// The same function, as the compiler sees it: a plain function that
/// returns a future. The `async` block is that future. It keeps `a` and
/// `b`, and adds them only when it is polled. (Clippy knows the two are
/// the same, and would ask for the `async fn`; here we want both.)
#[allow(clippy::manual_async_fn)]
fn add_by_hand(a: u32, b: u32) -> impl Future<Output = u32> {
    async move { a + b }
}
// ANCHOR_END: two_forms

// ANCHOR: eager_lazy
/// An ordinary function: its body runs when it is called.
fn greet_now(name: &str) -> String {
    println!("  greet_now runs");
    format!("hello, {name}")
}

/// An async fn: calling it only builds a future. The body runs when the
/// future is polled.
async fn greet_later(name: &str) -> String {
    println!("  greet_later runs");
    format!("hello, {name}")
}
// ANCHOR_END: eager_lazy

// ANCHOR: main
fn main() {
    // Both forms are used the same way: call, then drive the future.
    // `block_on` is a small executor from `futures`: it polls one future
    // on this thread until it is ready.
    let three = block_on(add(1, 2));
    let seven = block_on(add_by_hand(3, 4));
    println!("add: {three}, add_by_hand: {seven}");

    println!("1. call greet_now");
    let now = greet_now("eager");
    println!("2. call greet_later");
    let later = greet_later("lazy");
    println!("3. greet_later returned a future; its body has not run");
    let later = block_on(later);
    println!("4. {now:?} and {later:?}");
}
// ANCHOR_END: main

// ANCHOR: tests
#[cfg(test)]
mod tests {
    use std::{
        cell::Cell,
        pin::pin,
        task::{Context, Poll, Waker},
    };

    use super::*;

    #[test]
    fn both_forms_give_the_same_answer() {
        assert_eq!(block_on(add(20, 22)), 42);
        assert_eq!(block_on(add_by_hand(20, 22)), 42);
    }

    #[test]
    fn the_body_runs_at_the_first_poll_not_at_the_call() {
        let ran = Cell::new(false);
        let future = async {
            ran.set(true);
            "done"
        };
        assert!(!ran.get(), "creating the future ran its body");

        let mut future = pin!(future);
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(future.as_mut().poll(&mut cx), Poll::Ready("done"));
        assert!(ran.get());
    }

    #[test]
    fn a_future_that_is_never_polled_never_runs() {
        let ran = Cell::new(false);
        let future = async {
            ran.set(true);
        };
        drop(future);
        assert!(!ran.get());
    }
}
// ANCHOR_END: tests
