//! Tests of the built `confab` binary: start-up line, clean shutdown on SIGTERM, and a crash
//! (SIGKILL) under steady sending that must lose no acknowledged message.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use confab_testkit::ws::Ws;
use serde_json::{Value, json};

mod common;

use common::{Node, post};

/// `confab serve` on a free port with its data in `data_dir`.
fn start(data_dir: &Path) -> Node {
    Node::start([OsStr::new("--data-dir"), data_dir.as_os_str()])
}

/// Sends a signal to the node's process.
fn signal(node: &Node, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &node.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// Creates `name` and returns (token, user_id).
async fn user(addr: SocketAddr, name: &str) -> (String, String) {
    post(
        addr,
        "/v1/users",
        json!({"username": name, "password": "password1"}),
    )
    .await;
    let s = post(
        addr,
        "/v1/sessions",
        json!({"username": name, "password": "password1"}),
    )
    .await;
    (
        s["token"].as_str().unwrap().to_owned(),
        s["user_id"].as_str().unwrap().to_owned(),
    )
}

/// A socket past `hello`.
async fn connect(addr: SocketAddr, token: &str) -> Ws {
    let mut ws = Ws::connect(addr).await;
    ws.hello(token, None).await;
    ws
}

#[tokio::test]
async fn prints_its_address_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = start(dir.path());
    let (alice, _) = user(node.addr, "alice").await;
    let (_, bob_id) = user(node.addr, "bob").await;
    let mut ws = connect(node.addr, &alice).await;
    ws.send(json!({"type": "send", "to": bob_id, "client_id": "c", "body": "kept"}))
        .await;
    while ws.next().await["type"] != "sent" {}

    signal(&node, "-TERM");
    // The socket is closed with 1001.
    assert_eq!(ws.closed().await, Some(1001));
    let status = node.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    // The WAL was folded into the database on the way out.
    let wal = dir.path().join("confab.db-wal");
    assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0);

    let node = start(dir.path());
    let s = post(
        node.addr,
        "/v1/sessions",
        json!({"username": "bob", "password": "password1"}),
    )
    .await;
    let (_, inbox) = Ws::caught_up(node.addr, s["token"].as_str().unwrap(), None).await;
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0]["body"], "kept");
}

/// mimalloc asks the kernel for huge pages, whose zeroing at first touch was a sixth of the
/// server's CPU while sockets connected; the binary turns them off for itself.
#[cfg(target_os = "linux")]
#[test]
fn the_server_runs_without_transparent_huge_pages() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.child.id())).unwrap();
    let thp = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(str::trim);
    // Kernels before 5.0 do not report the flag; there is nothing to check on them.
    if let Some(thp) = thp {
        assert_eq!(thp, "0", "THP_enabled in /proc/PID/status");
    }
}

/// Every WebSocket holds a file descriptor. Started with a soft open-file limit of 100 under a
/// hard one of 320, the server raises the soft one, says it can hold 320 - 256 = 64 sockets,
/// holds that many, and refuses the next with a 503 that says why, instead of failing its
/// `accept`s and leaving the client to time out.
#[cfg(unix)]
#[tokio::test]
async fn the_open_file_limit_caps_connections_with_a_clear_refusal() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        // 256 kept back, 8 for plain HTTP, 64 for WebSockets.
        .arg(r#"ulimit -n 328 && ulimit -Sn 100 && exec "$0" serve --listen 127.0.0.1:0 --data-dir "$1" --max-http-connections 8 --max-http-connections-per-address 100"#)
        .arg(env!("CARGO_BIN_EXE_confab"))
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("confab listening on http://")
        .unwrap_or_else(|| panic!("server did not start: {line:?}"))
        .parse()
        .unwrap();
    let node = Node { child, addr };
    let limits =
        std::fs::read_to_string(format!("/proc/{}/limits", node.child.id())).unwrap_or_default();
    if let Some(open_files) = limits.lines().find(|l| l.starts_with("Max open files")) {
        let numbers: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
        assert_eq!(numbers, ["328", "328"], "soft and hard limit: {open_files}");
    }

    let (token, _) = user(addr, "alice").await;
    let mut held = Vec::new();
    for _ in 0..64 {
        held.push(connect(addr, &token).await);
    }
    let refused = |refused: confab_testkit::ws::Refused| {
        assert_eq!(refused.status, 503);
        refused.body
    };
    let body = refused(Ws::try_connect(addr).await.unwrap_err());
    assert!(body.contains("limit of 64 connections"), "{body}");

    // A socket that closes gives its place to the next.
    drop(held.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Ws::try_connect(addr).await {
            Ok(ws) => {
                held.push(ws);
                break;
            }
            Err(e) => {
                refused(e);
                assert!(std::time::Instant::now() < deadline, "no place freed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(held);
    drop(node);
    let log = log.join().unwrap();
    assert!(
        log.contains(
            "up to 64 WebSocket connections and 8 plain-HTTP connections (100 per client \
             address) (open-file limit 328, 256 kept"
        ),
        "{log}"
    );
    assert!(
        log.contains("connection refused: at the connection limit"),
        "{log}"
    );
}

#[tokio::test]
async fn sigkill_under_load_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let addr = node.addr;
    let (alice, alice_id) = user(addr, "alice").await;
    let (bob, bob_id) = user(addr, "bob").await;

    // Several senders keep a window of sends in flight until the process dies.
    let mut senders = Vec::new();
    for k in 0..4 {
        let (token, to) = if k % 2 == 0 {
            (alice.clone(), bob_id.clone())
        } else {
            (bob.clone(), alice_id.clone())
        };
        senders.push(tokio::spawn(async move {
            let mut ws = connect(addr, &token).await;
            let mut acked: HashMap<String, Value> = HashMap::new();
            let mut i = 0u64;
            let mut inflight = 0;
            loop {
                while inflight < 16 {
                    let frame = json!({"type": "send", "to": to, "client_id": format!("{k}-{i}"), "body": format!("{k}/{i}")});
                    if !ws.try_send(frame).await {
                        return acked;
                    }
                    i += 1;
                    inflight += 1;
                }
                match ws.next_or_close().await.ok() {
                    None => return acked,
                    Some(f) if f["type"] == "sent" => {
                        inflight -= 1;
                        acked.insert(f["client_id"].as_str().unwrap().to_owned(), f);
                    }
                    Some(f) if f["type"] == "error" => {
                        // rate limited: count it as not in flight any more
                        inflight -= 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Some(_) => {}
                }
            }
        }));
    }
    // Bob's reading device acks as it goes.
    let reader = {
        let bob = bob.clone();
        tokio::spawn(async move {
            let mut ws = connect(addr, &bob).await;
            while let Ok(f) = ws.next_or_close().await {
                if f["type"] == "message" {
                    let ack = json!({"type": "ack", "cursor": f["cursor"]});
                    if !ws.try_send(ack).await {
                        break;
                    }
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(node); // SIGKILL
    let mut acked = HashMap::new();
    for s in senders {
        acked.extend(s.await.unwrap());
    }
    reader.await.unwrap();
    assert!(
        acked.len() > 50,
        "only {} messages acked before the kill",
        acked.len()
    );

    let node = start(dir.path());
    // A fresh device of alice sees the whole conversation: every acked message, in order,
    // with gapless seqs.
    let s = post(
        node.addr,
        "/v1/sessions",
        json!({"username": "alice", "password": "password1"}),
    )
    .await;
    let (_, all) = Ws::caught_up(node.addr, s["token"].as_str().unwrap(), None).await;
    let seqs: Vec<u64> = all.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=all.len() as u64).collect::<Vec<_>>());
    let stored: HashMap<&str, &Value> =
        all.iter().map(|m| (m["id"].as_str().unwrap(), m)).collect();
    for (client_id, sent) in &acked {
        let m = stored
            .get(sent["id"].as_str().unwrap())
            .unwrap_or_else(|| panic!("acked message {client_id} lost"));
        assert_eq!(m["seq"], sent["seq"]);
        assert_eq!(m["body"], client_id.replace('-', "/"));
    }

    // Bob's device resumes after its stored cursor and gets each remaining event exactly once.
    let (mut ws, rest) = Ws::caught_up(node.addr, &bob, None).await;
    let cursors: Vec<u64> = rest
        .iter()
        .map(|m| m["cursor"].as_str().unwrap().parse().unwrap())
        .collect();
    let head = all.len() as u64;
    if let Some(first) = cursors.first() {
        assert_eq!(cursors, (*first..=head).collect::<Vec<_>>());
        ws.send(json!({"type": "ack", "cursor": head.to_string()}))
            .await;
        ws.send(json!({"type": "ping"})).await;
        while ws.next().await["type"] != "pong" {}
    }
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, again) = Ws::caught_up(node.addr, &bob, None).await;
    assert!(again.is_empty(), "acked events repeated: {}", again.len());
}

/// One process owns an embedded store: a second `serve` and an `admin seed` on the data dir
/// of a running node fail with an error that says so, and the running node is unharmed.
#[tokio::test]
async fn a_second_process_cannot_open_a_running_nodes_store() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let (alice, _) = user(node.addr, "alice").await;
    for args in [
        vec!["serve", "--listen", "127.0.0.1:0"],
        vec!["admin", "seed", "--count", "1", "--password", "password1"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_confab"))
            .args(&args)
            .arg("--data-dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("confab runs");
        // A `serve` let in would run until stopped: give it 20 s, then fail instead of hanging.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{args:?} opened the running node's store and kept running");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(!status.success(), "{args:?} succeeded");
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(
            stderr.contains("in use by another process"),
            "{args:?}: {stderr}"
        );
    }
    // The node still serves its users.
    let mut ws = connect(node.addr, &alice).await;
    ws.send(json!({"type": "ping"})).await;
    while ws.next().await["type"] != "pong" {}
}

/// `CONFAB_ALLOWED_ORIGINS` takes a comma-separated list: those origins get CORS headers,
/// others 403.
#[tokio::test]
async fn allowed_origins_come_from_the_environment() {
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env(
            "CONFAB_ALLOWED_ORIGINS",
            "https://a.example,https://b.example",
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("confab listening on http://")
        .unwrap_or_else(|| panic!("server did not start: {line:?}"))
        .parse()
        .unwrap();
    let _node = Node { child, addr };
    let http = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, format!("http://{addr}/v1/users"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };
    for origin in ["https://a.example", "https://b.example"] {
        let r = preflight(origin).await.unwrap();
        assert!(r.status().is_success(), "{origin}: {}", r.status());
        assert_eq!(r.headers()["access-control-allow-origin"], origin);
    }
    let r = preflight("https://c.example").await.unwrap();
    assert_eq!(r.status(), 403);
}

#[test]
fn serve_refuses_an_origin_no_browser_sends() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--allowed-origin", "https://chat.example.com/"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .expect("confab runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--allowed-origin"), "{stderr}");
    assert!(stderr.contains("no path or trailing slash"), "{stderr}");
}

#[test]
fn serve_refuses_an_out_of_range_commit_batch() {
    refuses_out_of_range("--commit-batch");
}

#[test]
fn serve_refuses_an_out_of_range_wal_bound() {
    refuses_out_of_range("--wal-restart-mib");
}

/// `serve` refuses an out-of-range bound with a message naming the flag, before touching the
/// data dir.
fn refuses_out_of_range(flag: &str) {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["0", "65537"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_confab"))
            .args(["serve", "--listen", "127.0.0.1:0", flag, bad])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .expect("confab runs");
        assert!(!out.status.success(), "{flag} {bad} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(flag), "{stderr}");
        assert!(!dir.path().join("data").exists(), "no store was created");
    }
}

/// `--session-ttl` takes `30d`, `12h`, `90m`, `45s`: the login's `expires_at` is that far ahead.
#[tokio::test]
async fn the_session_ttl_sets_when_tokens_expire() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start([
        OsStr::new("--data-dir"),
        dir.path().as_os_str(),
        OsStr::new("--session-ttl"),
        OsStr::new("90m"),
    ]);
    post(
        node.addr,
        "/v1/users",
        json!({"username": "alice", "password": "password1"}),
    )
    .await;
    let before = now_ms();
    let s = post(
        node.addr,
        "/v1/sessions",
        json!({"username": "alice", "password": "password1"}),
    )
    .await;
    let ttl = 90 * 60 * 1000;
    let expires_at = s["expires_at"].as_i64().expect("expires_at");
    assert!((before + ttl..=now_ms() + ttl).contains(&expires_at), "{s}");
}

/// A malformed session ttl, from the flag or the environment, stops `serve` with a message
/// naming the flag, before touching the data dir.
#[test]
fn serve_refuses_a_malformed_session_ttl() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, env) in [(Some("5x"), None), (Some("0s"), None), (None, Some("1w"))] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_confab"));
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path().join("data"));
        if let Some(flag) = flag {
            cmd.args(["--session-ttl", flag]);
        }
        if let Some(env) = env {
            cmd.env("CONFAB_SESSION_TTL", env);
        }
        let out = cmd.output().expect("confab runs");
        assert!(!out.status.success(), "{flag:?} {env:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--session-ttl"), "{stderr}");
        assert!(!dir.path().join("data").exists(), "no store was created");
    }
}

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

/// `bench pairs --spawn --relay` starts the store-less relay instead of `confab serve` and
/// measures against it: every message is answered and delivered.
#[test]
fn bench_pairs_runs_against_the_relay() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_confab"))
        .args([
            "bench", "pairs", "--spawn", "--relay", "-n", "4", "-r", "200",
        ])
        .args(["-d", "1", "-b", "64", "--grace", "3", "--json", "-q"])
        .output()
        .expect("confab runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert!(
        report["server"].as_str().unwrap().contains("relay"),
        "{report}"
    );
    assert_eq!(report["sent"], 200, "{report}");
    assert_eq!(report["delivered"], 200, "{report}");
    assert_eq!(report["undelivered"], 0, "{report}");
    assert!(
        report["server_process"].is_object(),
        "the spawned relay is measured: {report}"
    );
}

/// The relay stores nothing, so `catchup` refuses it as a usage error.
#[test]
fn bench_catchup_refuses_the_relay() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["bench", "catchup", "--spawn", "--relay", "-m", "10", "-q"])
        .output()
        .expect("confab runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("relay stores nothing"), "{stderr}");
}

/// `--relay` only means something with `--spawn`, and the relay takes no `serve` flags.
#[test]
fn bench_refuses_relay_without_spawn_or_with_serve_args() {
    for args in [
        &["bench", "pairs", "--relay"][..],
        &[
            "bench",
            "pairs",
            "--spawn",
            "--relay",
            "--serve-arg=--commit-batch=8",
        ][..],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_confab"))
            .args(args)
            .output()
            .expect("confab runs");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--relay"), "{stderr}");
    }
}

/// `bench group --spawn`: every message reaches every online member's socket (its sender's
/// own included), and the offline member's share is neither expected nor read.
#[test]
fn bench_group_delivers_to_every_online_member() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_confab"))
        .args([
            "bench",
            "group",
            "--spawn",
            "--groups",
            "3",
            "--members",
            "4",
        ])
        .args(["--online", "3", "-r", "30", "-d", "2", "--grace", "5"])
        .args(["--json", "-q"])
        .output()
        .expect("confab runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(report["sent"], 60, "{report}");
    assert_eq!(report["acked"], 60, "{report}");
    assert_eq!(report["expected"], 60 * 3, "{report}");
    assert_eq!(report["delivered"], 60 * 3, "{report}");
    assert_eq!(report["undelivered"], 0, "{report}");
    assert_eq!(report["duplicates"], 0, "{report}");
    assert_eq!(report["latency_ms"]["count"], 60 * 3, "{report}");
    assert_eq!(report["ack_latency_ms"]["count"], 60, "{report}");
    assert_eq!(
        report["replayed"], 9,
        "each online member caught up on its group's `created` event: {report}"
    );
    assert!(
        report["server_process"].is_object(),
        "the spawned server is measured: {report}"
    );
}

/// `bench login-flood --spawn`: the pair's messages all arrive in both phases, and the flood's
/// answers are counted by status; with a low limit (a `serve` flag) the guesses soon get 429.
#[test]
fn bench_login_flood_measures_both_phases() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["bench", "login-flood", "--spawn", "-g", "4", "-d", "1"])
        .args(["-r", "20", "--json", "-q"])
        .arg("--serve-arg=--login-failures-per-minute=2")
        .output()
        .expect("confab runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    for phase in ["quiet", "flood"] {
        assert_eq!(report[phase]["sent"], 20, "{report}");
        assert_eq!(report[phase]["delivered"], 20, "{report}");
    }
    let answers = &report["flood_counts"]["answers"];
    assert_eq!(
        answers["401"], 2,
        "2 failures a minute for the account: {report}"
    );
    assert!(answers["429"].as_u64().unwrap() > 0, "{report}");
}

/// `--trusted-proxy` takes addresses and CIDR ranges, and names itself when given neither.
#[test]
fn serve_refuses_a_trusted_proxy_that_is_no_address() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args([
            "--trusted-proxy",
            "10.0.0.0/8",
            "--trusted-proxy",
            "proxy.local",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .expect("confab runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--trusted-proxy") && stderr.contains("proxy.local"),
        "{stderr}"
    );
}
