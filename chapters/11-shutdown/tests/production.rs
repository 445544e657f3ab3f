// ANCHOR: helpers
//! The real `kvs` binary, run with flags as an operator would: a graceful
//! shutdown under load.

use std::{
    io::{BufRead, BufReader, Lines},
    net::SocketAddr,
    path::Path,
    process::{Child, ChildStdout, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use kv::{Client, CommandRequest, TlsClientConnector, Value};
use tokio::net::TcpStream;

/// A running `kvs`, killed when dropped, and the lines of its stdout.
struct Kvs {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    addr: SocketAddr,
}

impl Drop for Kvs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `kvs` on a free port in `dir`, with the flags in `settings` and
/// its logs going to `kvs.log`, and waits for the line that says it is
/// listening.
fn start_kvs(dir: &Path, settings: &[&str]) -> Kvs {
    let logs = std::fs::File::create(dir.join("kvs.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvs"))
        .args(["--addr", "127.0.0.1:0"])
        .args(settings)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(logs)
        .spawn()
        .expect("kvs starts");
    let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
    let mut kvs = Kvs {
        child,
        stdout,
        addr: unknown,
    };
    while kvs.addr == unknown {
        let line = kvs.stdout.next().expect("kvs prints its address").unwrap();
        if let Some(addr) = line.strip_prefix("kvs listening on ") {
            kvs.addr = addr.parse().unwrap();
        }
    }
    kvs
}

/// A client that trusts the development certificates `kvs` made in `dir`.
async fn connect(dir: &Path, addr: SocketAddr) -> Client {
    let ca = dir.join("dev-certs/ca.pem");
    let tls = TlsClientConnector::from_pem_files("localhost", &ca, None).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    Client::new(tls.connect(tcp).await.unwrap())
}

/// Sends `signal` (TERM, INT) to the process.
fn kill(child: &Child, signal: &str) {
    let pid = child.id().to_string();
    let status = Command::new("kill").args([signal, &pid]).status().unwrap();
    assert!(status.success());
}
// ANCHOR_END: helpers

// ANCHOR: shutdown_under_load
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_answer_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let settings = ["--db", "kv.redb", "--grace", "5"];
    let mut kvs = start_kvs(dir.path(), &settings);

    // Four clients write keys of their own, one request at a time, and
    // keep the ones that were acknowledged.
    let received = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (client, received) = (connect(dir.path(), kvs.addr).await, Arc::clone(&received));
        clients.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for n in 0.. {
                let key = format!("c{c}-{n}");
                let set = CommandRequest::new_hset("load", &key, n);
                let Ok(res) = client.execute(set).await else {
                    break;
                };
                received.fetch_add(1, Ordering::Relaxed);
                if res.status != 200 {
                    // Told that the server is shutting down.
                    assert_eq!(res.status, 503, "{res:?}");
                    break;
                }
                acknowledged.push((key, n));
            }
            acknowledged
        }));
    }
    // SIGTERM in the middle of the load.
    let load = async {
        while received.load(Ordering::Relaxed) < 400 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), load)
        .await
        .expect("the load runs");
    let signalled = Instant::now();
    kill(&kvs.child, "-TERM");
    let mut acknowledged = Vec::new();
    for client in clients {
        acknowledged.extend(client.await.unwrap());
    }
    let status = tokio::task::block_in_place(|| kvs.child.wait()).unwrap();
    assert!(status.success(), "{status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "within the grace"
    );

    // Every answer the server sent arrived...
    let last = kvs.stdout.next().unwrap().unwrap();
    let received = received.load(Ordering::Relaxed);
    assert_eq!(last, format!("kvs stopped after {received} answers"));
    // ...and every write it acknowledged is in the database.
    let kvs = start_kvs(dir.path(), &settings);
    let client = connect(dir.path(), kvs.addr).await;
    for (key, n) in &acknowledged {
        let res = client.execute(CommandRequest::new_hget("load", key)).await;
        assert_eq!(res.unwrap().values, [Value::from(*n)], "{key}");
    }
    assert!(acknowledged.len() >= 400 - 4, "{}", acknowledged.len());
}
// ANCHOR_END: shutdown_under_load
