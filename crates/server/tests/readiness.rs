//! `/readyz` answers 503 on a full disk (a backend that merely answers is not ready), and 200
//! again once there is room, with sends working again. (That the check commits a write is
//! tested on each store: `readiness_check_commits_a_write`.)
//!
//! The disk is a small tmpfs mounted for the test, which takes root (CI runs as root);
//! elsewhere the test says it was skipped.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use confab_server::Server;
use serde_json::Value;

mod common;

use common::{TestServer, test_config};

/// A tmpfs of `size` at `dir`, unmounted when dropped.
struct SmallDisk<'a>(&'a Path);

impl<'a> SmallDisk<'a> {
    fn mount(dir: &'a Path, size: &str) -> Option<Self> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk(dir))
    }
}

impl Drop for SmallDisk<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}

/// Writes `path` until the disk has no room left.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    while f.write_all(&[0]).is_ok() {}
    let _ = f.sync_all();
}

/// Polls `/readyz` until it answers `want` (the answer is reused for a second).
async fn ready_becomes(s: &TestServer, want: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = s.http.get(s.url("/readyz")).send().await.unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {status} ({body}), expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn readyz_fails_while_the_disk_is_full_and_recovers() {
    let root = tempfile::tempdir().unwrap();
    let Some(_disk) = SmallDisk::mount(root.path(), "4m") else {
        eprintln!(
            "skipped: cannot mount a tmpfs (needs root): the full-disk readiness test did not run"
        );
        return;
    };
    let data = root.path().join("data");
    let mut config = test_config(data.clone());
    config.sqlite.min_free_disk_bytes = 1024 * 1024;
    let server = Server::start(config.clone()).await.expect("server starts");
    let mut s = TestServer {
        addr: server.addr,
        server: Some(server),
        dir: tempfile::tempdir().unwrap(),
        config,
        http: reqwest::Client::new(),
    };
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    assert_eq!(ready_becomes(&s, 200).await, "ready");

    let filler = root.path().join("filler");
    fill(&filler);
    let body = ready_becomes(&s, 503).await;
    let body: Value = serde_json::from_str(&body).expect("a JSON error body");
    assert_eq!(body["error"]["code"], "unavailable");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("store:"), "{message}");

    std::fs::remove_file(&filler).unwrap();
    ready_becomes(&s, 200).await;

    // The store took writes again: a message is stored and acknowledged.
    let (mut a, _) = s.connect(&alice).await;
    a.send_message(&bob.id, "after-full", "room again").await;
    drop(a);
    s.server.take().unwrap().shutdown().await.unwrap();
}
