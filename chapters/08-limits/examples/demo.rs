//! Runs a few commands against an in-memory service and prints what goes
//! in and what comes out.
//!
//! cargo run --example demo

use kv::{CommandRequest, MemTable, Service};

fn main() {
    let service = Service::new(MemTable::new());

    let requests = [
        CommandRequest::new_hset("fruit", "apple", 3i64),
        CommandRequest::new_hset("fruit", "pear", "ripe"),
        CommandRequest::new_hset("fruit", "apple", 4i64),
        CommandRequest::new_hget("fruit", "apple"),
        CommandRequest::new_hget("fruit", "plum"),
        CommandRequest::new_hgetall("fruit"),
        CommandRequest::new_hdel("fruit", "pear"),
    ];

    for request in requests {
        println!("request:  {:?}", request.request_data);
        let response = service.execute(request);
        println!("response: {response:?}\n");
    }
}
