//! A service on a redb database file, with hooks. Run it twice: the
//! counter it keeps in the database goes on where the last run stopped.
//!
//! cargo run --example persistent [PATH]
//!
//! PATH defaults to `kv-example.redb` in the system's temporary folder.

use std::{
    env,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use kv::{CommandRequest, KvError, RedbStore, Service, value};

fn main() -> Result<(), KvError> {
    let path = env::args()
        .nth(1)
        .map(Into::into)
        .unwrap_or_else(|| env::temp_dir().join("kv-example.redb"));
    println!("database: {}", path.display());

    let commands = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&commands);
    let service = Service::builder(RedbStore::open(&path)?)
        .on_received(move |request| {
            counter.fetch_add(1, Ordering::Relaxed);
            println!("  -> {:?}", request.request_data);
        })
        .on_executed(|response| println!("  <- status {}", response.status))
        .build();

    // Read the number of earlier runs, then store this run's number.
    let response = service.execute(CommandRequest::new_hget("example", "runs"));
    let runs = match response.values.first().and_then(|v| v.value.as_ref()) {
        Some(value::Value::Integer(n)) => *n,
        _ => 0,
    };
    let response = service.execute(CommandRequest::new_hset("example", "runs", runs + 1));
    if !response.is_ok() {
        return Err(KvError::Internal(response.message));
    }

    println!("this is run number {}", runs + 1);
    println!(
        "the hooks saw {} commands",
        commands.load(Ordering::Relaxed)
    );
    Ok(())
}
