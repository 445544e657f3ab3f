// ANCHOR: helpers
//! The real `kvs` binary, run from a configuration file as an operator
//! would: a graceful shutdown under load, the metrics endpoint, the logs.

use std::{
    io::{BufRead, BufReader, Lines},
    net::SocketAddr,
    path::Path,
    process::{Child, ChildStdout, Command, ExitStatus, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use kv::{Client, CommandRequest, KvsConfig, TlsClientConnector, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A running `kvs`, killed when dropped, and the lines of its stdout.
struct Kvs {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
}

impl Drop for Kvs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `kvs --config kvs.toml` in `dir`, with `settings` as the file
/// and its logs going to `kvs.log`, and waits for the line that says it is
/// listening.
fn start_kvs(dir: &Path, settings: &str, envs: &[(&str, &str)]) -> Kvs {
    std::fs::write(dir.join("kvs.toml"), settings).unwrap();
    let logs = std::fs::File::create(dir.join("kvs.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvs"))
        .args(["--config", "kvs.toml"])
        .envs(envs.iter().copied())
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
        metrics: None,
    };
    while kvs.addr == unknown {
        let line = kvs.stdout.next().expect("kvs prints its address").unwrap();
        if let Some(addr) = line.strip_prefix("kvs metrics on ") {
            kvs.metrics = Some(addr.parse().unwrap());
        } else if let Some(addr) = line.strip_prefix("kvs listening on ") {
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

/// Waits for the process to exit, for at most 20 seconds.
fn wait(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "kvs did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
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
    let settings = "listen = \"127.0.0.1:0\"\ndb = \"kv.redb\"\n[shutdown]\ngrace = 5\n";
    let mut kvs = start_kvs(dir.path(), settings, &[]);

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
    let kvs = start_kvs(dir.path(), settings, &[]);
    let client = connect(dir.path(), kvs.addr).await;
    for (key, n) in &acknowledged {
        let res = client.execute(CommandRequest::new_hget("load", key)).await;
        assert_eq!(res.unwrap().values, [Value::from(*n)], "{key}");
    }
    assert!(acknowledged.len() >= 400 - 4, "{}", acknowledged.len());
}
// ANCHOR_END: shutdown_under_load

// ANCHOR: metrics
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_logs_show_the_traffic_but_no_data() {
    let dir = tempfile::tempdir().unwrap();
    let settings = "listen = \"127.0.0.1:0\"\n\
                    [metrics]\nlisten = \"127.0.0.1:0\"\n\
                    [log]\nformat = \"json\"\nfilter = \"debug\"\n";
    let mut kvs = start_kvs(dir.path(), settings, &[("RUST_LOG", "kv=debug")]);
    let client = connect(dir.path(), kvs.addr).await;
    let set = CommandRequest::new_hset("secret-table", "secret-key", "secret-value");
    assert_eq!(client.execute(set).await.unwrap().status, 200);
    let get = CommandRequest::new_hget("secret-table", "missing-key");
    assert_eq!(client.execute(get).await.unwrap().status, 404);

    let mut scrape = TcpStream::connect(kvs.metrics.unwrap()).await.unwrap();
    scrape
        .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut page = String::new();
    scrape.read_to_string(&mut page).await.unwrap();
    for series in [
        "kv_requests_total{command=\"hset\",status=\"200\"} 1",
        "kv_requests_total{command=\"hget\",status=\"404\"} 1",
        "kv_request_duration_seconds_bucket{command=\"hget\",le=\"1\"} 1",
        "kv_connections_total 1",
        "kv_connections_open 1",
        "kv_received_bytes_total ",
        "kv_sent_bytes_total ",
        "kv_storage_bytes ",
    ] {
        assert!(page.contains(series), "{series} not in\n{page}");
    }

    client.close().await;
    kill(&kvs.child, "-INT");
    let status = tokio::task::block_in_place(|| wait(&mut kvs.child));
    assert!(status.success(), "{status}");
    let logs = std::fs::read_to_string(dir.path().join("kvs.log")).unwrap();
    let json: Vec<_> = logs.lines().filter(|line| line.starts_with('{')).collect();
    assert!(
        json.iter()
            .any(|line| line.contains("\"command\":\"hset\"")),
        "a request span in\n{logs}"
    );
    assert!(
        !page.contains("secret") && !logs.contains("secret"),
        "{logs}"
    );
}
// ANCHOR_END: metrics

// ANCHOR: print_config
#[test]
fn print_config_writes_a_file_that_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let kvs = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_kvs"))
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let printed = kvs(&["--print-config", "--max-streams", "7"]);
    let config: KvsConfig = toml::from_str(&printed).unwrap();
    assert_eq!(config.limits.max_streams, 7);
    assert!(config.limits.max_connections.is_some(), "worked out");
    assert!(config.limits.max_memory.is_some(), "worked out");

    std::fs::write(dir.path().join("kvs.toml"), &printed).unwrap();
    assert_eq!(kvs(&["--config", "kvs.toml", "--print-config"]), printed);
}
// ANCHOR_END: print_config
