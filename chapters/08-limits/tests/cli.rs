//! The binaries as a user runs them: `kvs` in the background, `kvc` for
//! each command, both in a temporary folder that holds the development
//! certificates `kvs` generates.

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    path::Path,
    process::{Child, Command, Output, Stdio},
};

use tempfile::TempDir;

/// A running `kvs`, killed when dropped.
struct Server {
    child: Child,
    addr: String,
    dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ANCHOR: start_kvs
/// Starts `kvs` on a free port, in a new folder, and waits for the line
/// that says it is listening.
fn start_kvs(extra_args: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvs"))
        .args(["--addr", "127.0.0.1:0"])
        .args(extra_args)
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kvs starts");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("kvs listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_owned();
    Server { child, addr, dir }
}
// ANCHOR_END: start_kvs

/// Runs `kvc` in `dir`, where it finds `dev-certs/ca.pem`.
fn kvc(dir: &Path, addr: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvc"))
        .arg("--addr")
        .arg(addr)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("kvc runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn kvc_talks_to_kvs() {
    let server = start_kvs(&[]);
    let run = |args: &[&str]| {
        let output = kvc(server.dir.path(), &server.addr, args);
        assert!(output.status.success(), "kvc {args:?}: {}", stderr(&output));
        stdout(&output)
    };

    assert_eq!(run(&["hset", "fruit", "apple", "int:3"]), "(nil)\n");
    assert_eq!(run(&["hset", "fruit", "apple", "int:4"]), "3\n");
    assert_eq!(
        run(&["hmset", "fruit", "pear", "ripe", "kiwi", "bool:true"]),
        "1) (nil)\n2) (nil)\n"
    );
    assert_eq!(run(&["hget", "fruit", "pear"]), "\"ripe\"\n");
    assert_eq!(
        run(&["hgetall", "fruit"]),
        "\"apple\" => 4\n\"kiwi\" => true\n\"pear\" => \"ripe\"\n"
    );
    assert_eq!(
        run(&["hmget", "fruit", "kiwi", "plum"]),
        "1) true\n2) (nil)\n"
    );
    assert_eq!(run(&["hexist", "fruit", "plum"]), "false\n");
    assert_eq!(
        run(&["hmexist", "fruit", "pear", "plum"]),
        "1) true\n2) false\n"
    );
    assert_eq!(run(&["hdel", "fruit", "pear"]), "\"ripe\"\n");
    assert_eq!(
        run(&["hmdel", "fruit", "kiwi", "plum"]),
        "1) true\n2) (nil)\n"
    );
    assert_eq!(run(&["hset", "bin", "b", "bytes:00ff"]), "(nil)\n");
    assert_eq!(run(&["hget", "bin", "b"]), "b\"\\0\\xff\"\n");
    assert_eq!(run(&["hset", "n", "f", "float:2.5"]), "(nil)\n");
    assert_eq!(run(&["hget", "n", "f"]), "2.5\n");
}

#[test]
fn kvc_reports_errors_from_the_server() {
    let server = start_kvs(&[]);
    let output = kvc(server.dir.path(), &server.addr, &["hget", "fruit", "plum"]);
    assert!(!output.status.success());
    assert_eq!(
        stderr(&output),
        "error 404: key `plum` not found in table `fruit`\n"
    );
    assert!(stdout(&output).is_empty());
}

#[test]
fn kvc_explains_an_unreachable_server() {
    // A port that was free a moment ago: nobody listens on it.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    kv::DevCerts::generate(&["localhost"])
        .unwrap()
        .write_to(&dir.path().join("dev-certs"))
        .unwrap();
    let output = kvc(dir.path(), &addr, &["hget", "t", "k"]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.starts_with(&format!("error: cannot connect to {addr}: ")),
        "{message}"
    );
}

// ANCHOR: pubsub_cli
#[test]
fn kvc_subscribe_prints_messages_until_ctrl_c() {
    let server = start_kvs(&[]);
    let dir = server.dir.path();
    let mut subscriber = Command::new(env!("CARGO_BIN_EXE_kvc"))
        .args(["--addr", &server.addr, "subscribe", "news"])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kvc starts");
    // Subscribed once it says so.
    let mut said = BufReader::new(subscriber.stderr.take().unwrap());
    let mut line = String::new();
    said.read_line(&mut line).unwrap();
    assert!(line.starts_with("subscribed to news as "), "{line}");
    let id = line
        .split_whitespace()
        .nth(4)
        .unwrap()
        .trim_end_matches(';');

    let output = kvc(dir, &server.addr, &["publish", "news", "hello", "int:42"]);
    assert_eq!(stdout(&output), "1\n", "one subscriber reached");
    let mut heard = BufReader::new(subscriber.stdout.take().unwrap());
    let mut message = String::new();
    heard.read_line(&mut message).unwrap();
    assert_eq!(message, "\"hello\" 42\n");

    // Another connection cannot end the subscription.
    let output = kvc(dir, &server.addr, &["unsubscribe", "news", id]);
    assert!(!output.status.success());
    assert!(stderr(&output).starts_with("error 404: no subscription"));

    // Ctrl-C: kvc unsubscribes on its own connection and exits cleanly.
    let pid = subscriber.id().to_string();
    let kill = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(kill.success());
    assert!(subscriber.wait().unwrap().success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut said, &mut rest).unwrap();
    assert_eq!(rest, "unsubscribed\n");
    let output = kvc(dir, &server.addr, &["publish", "news", "anyone?"]);
    assert_eq!(stdout(&output), "0\n");
}
// ANCHOR_END: pubsub_cli

// ANCHOR: bad_limits
#[test]
fn kvs_refuses_limits_that_cannot_work() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_kvs"))
        .args(["--addr", "127.0.0.1:0", "--max-streams", "100"])
        .args(["--connection-window", "1000000"])
        .current_dir(dir.path())
        .output()
        .expect("kvs runs");
    assert!(!output.status.success());
    assert!(stdout(&output).is_empty(), "it never listened");
    let stderr = stderr(&output);
    for part in [
        "invalid configuration",
        "a connection window of 1000000 bytes is too small for 100 streams: it needs at least \
         52428800",
    ] {
        assert!(stderr.contains(part), "{part}\n{stderr}");
    }
}
// ANCHOR_END: bad_limits

#[test]
fn kvc_rejects_a_badly_typed_value_before_connecting() {
    let output = kvc(
        Path::new("."),
        "127.0.0.1:1",
        &["hset", "t", "k", "int:many"],
    );
    assert_eq!(output.status.code(), Some(2), "a usage error");
    assert!(stderr(&output).contains("`many` is not an int"));
}

// ANCHOR: mutual_tls_cli
#[test]
fn kvs_with_ca_wants_a_client_certificate() {
    let server = start_kvs(&["--ca", "dev-certs/ca.pem"]);
    let dir = server.dir.path();

    let output = kvc(dir, &server.addr, &["hexist", "t", "k"]);
    assert!(!output.status.success(), "refused without a certificate");
    assert!(
        stderr(&output).contains("CertificateRequired"),
        "{}",
        stderr(&output)
    );

    let identity = [
        "--cert",
        "dev-certs/client.pem",
        "--key",
        "dev-certs/client.key",
    ];
    let output = kvc(
        dir,
        &server.addr,
        &[&identity[..], &["hexist", "t", "k"]].concat(),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "false\n");
}
// ANCHOR_END: mutual_tls_cli

#[test]
fn kvc_refuses_a_server_it_cannot_trust() {
    let server = start_kvs(&[]);
    // A folder with certificates of another CA than the server's.
    let other = tempfile::tempdir().unwrap();
    kv::DevCerts::generate(&["localhost"])
        .unwrap()
        .write_to(&other.path().join("dev-certs"))
        .unwrap();
    let output = kvc(other.path(), &server.addr, &["hget", "t", "k"]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.starts_with(&format!("error: cannot set up TLS with {}: ", server.addr)),
        "{message}"
    );
}
