// ANCHOR: helpers
//! A disk that fills up, then has room again: `kvs --db` refuses writes
//! with a clear 503 meanwhile, takes them again without a restart, and
//! loses none that it acknowledged.
//!
//! The full disk is a limit on the size of the files `kvs` may write
//! (RLIMIT_FSIZE), set when it starts and raised later from here. A test
//! binary of its own, since it changes what the processes it starts
//! inherit.
#![cfg(target_os = "linux")] // raising another process's limit: prlimit

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use kv::{Client, CommandRequest, CommandResponse, RedbStore, TlsClientConnector, Value};
use rustix::process::{Pid, Resource, Rlimit, getrlimit, prlimit, setrlimit};
use tokio::net::TcpStream;

/// The largest file `kvs` may write until the limit is raised.
const MAX_FILE: u64 = 1 << 20;

/// A running `kvs`, killed when dropped.
struct Kvs {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Kvs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `kvs --db kv.redb` in `dir`, with its logs in `log`, and waits
/// for the line that says it is listening. With `max_file`, no file it
/// writes may grow past that many bytes.
fn start_kvs(dir: &Path, log: &str, max_file: Option<u64>) -> Kvs {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kvs"));
    command
        .args(["--addr", "127.0.0.1:0", "--db", "kv.redb"])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join(log)).unwrap());
    if let Some(max) = max_file {
        let hard = getrlimit(Resource::Fsize).maximum;
        let limit = Rlimit {
            current: Some(max),
            maximum: hard,
        };
        // SAFETY: the closure runs between fork and exec, where only
        // async-signal-safe calls are allowed: it makes two system calls
        // and allocates nothing.
        unsafe {
            command.pre_exec(move || {
                // A write past the limit fails with EFBIG, and the kernel
                // also sends SIGXFSZ, which would kill kvs. Ignoring a
                // signal is one of the things that survive exec.
                if libc::signal(libc::SIGXFSZ, libc::SIG_IGN) == libc::SIG_ERR {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(setrlimit(Resource::Fsize, limit)?)
            })
        };
    }
    let mut child = command.spawn().expect("kvs starts");
    let mut line = String::new();
    let stdout = child.stdout.take().unwrap();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("kvs listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .parse()
        .unwrap();
    Kvs { child, addr }
}

/// A client that trusts the development certificates `kvs` made in `dir`.
async fn connect(dir: &Path, addr: SocketAddr) -> Client {
    let ca = dir.join("dev-certs/ca.pem");
    let tls = TlsClientConnector::from_pem_files("localhost", &ca, None).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    Client::new(tls.connect(tcp).await.unwrap())
}
// ANCHOR_END: helpers

// ANCHOR: writer
/// Writes a 16 KiB value under a new key at a time, and remembers which
/// keys were acknowledged.
struct Writer {
    client: Client,
    value: Value,
    written: usize,
    acknowledged: Vec<String>,
}

impl Writer {
    /// Writes the next key, and answers what the server said.
    async fn write(&mut self) -> CommandResponse {
        let key = format!("k{}", self.written);
        self.written += 1;
        let hset = CommandRequest::new_hset("t", &key, self.value.clone());
        let res = self.client.execute(hset).await.unwrap();
        if res.status == 200 {
            self.acknowledged.push(key);
        }
        res
    }

    /// Writes until an answer is `wanted`, and returns it; the answers
    /// before it must have status `meanwhile`. Gives up after 20 seconds.
    async fn until(
        &mut self,
        wanted: impl Fn(&CommandResponse) -> bool,
        meanwhile: u32,
    ) -> CommandResponse {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let res = self.write().await;
            if wanted(&res) {
                return res;
            }
            assert_eq!(res.status, meanwhile, "{res:?}");
            assert!(Instant::now() < deadline, "still {res:?}");
            if meanwhile != 200 {
                // No need to ask much faster than kvs retries.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
// ANCHOR_END: writer

// ANCHOR: disk_full
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_until_there_is_room_and_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kv.redb");
    // Made first: a new database file starts larger than the limit.
    drop(RedbStore::open(&file).unwrap());
    let kvs = start_kvs(dir.path(), "kvs.log", Some(MAX_FILE));
    let value = Value::from(vec![7u8; 16 * 1024]);
    let mut writer = Writer {
        client: connect(dir.path(), kvs.addr).await,
        value: value.clone(),
        written: 0,
        acknowledged: Vec::new(),
    };

    // Until the file cannot grow: then refused, saying why.
    let refused = writer.until(|res| res.status != 200, 200).await;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(!writer.acknowledged.is_empty(), "some fitted");
    for part in ["disk write or read failed", "File too large", "reopens"] {
        assert!(refused.message.contains(part), "{part}: {refused:?}");
    }
    // Still refused once kvs has tried to reopen the database (once a
    // second): the answer no longer says only that it is closed.
    let tried = |res: &CommandResponse| !res.message.contains("closed after a disk error");
    let res = writer.until(tried, 503).await;
    assert_eq!(res.status, 503, "{res:?}");

    // Room again: writes go through on the same connection, so without a
    // restart, once kvs has reopened its database.
    let hard = getrlimit(Resource::Fsize).maximum;
    let room = Rlimit {
        current: hard,
        maximum: hard,
    };
    prlimit(Some(Pid::from_child(&kvs.child)), Resource::Fsize, room).unwrap();
    writer.until(|res| res.status == 200, 503).await;
    let past_the_limit = |_: &CommandResponse| file.metadata().unwrap().len() > MAX_FILE;
    writer.until(past_the_limit, 200).await;
    let Writer {
        client,
        acknowledged,
        ..
    } = writer;
    client.close().await;

    // Killed, as a crash would: every write acknowledged is on disk.
    drop(kvs);
    let kvs = start_kvs(dir.path(), "kvs-again.log", None);
    let client = connect(dir.path(), kvs.addr).await;
    for key in &acknowledged {
        let res = client.execute(CommandRequest::new_hget("t", key)).await;
        assert_eq!(res.unwrap().values, std::slice::from_ref(&value), "{key}");
    }
}
// ANCHOR_END: disk_full
