//! The local API-key file is re-read while callers call: a rewrite in place
//! (truncate, then write) never locks out a caller whose line stays, while
//! removing a line still revokes that key within a poll or two.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bulkhead_server::api_keys::{generate_api_key, hash_api_key};
use common::{TestServer, Upstream, call_body, config, http_connector};
use serde_json::json;

/// The key file's text for `keys` (caller id, raw key).
fn key_file_text(keys: &[(&str, &str)]) -> String {
    keys.iter()
        .map(|(caller, key)| format!("{caller}: {}\n", hash_api_key(key)))
        .collect()
}

/// Rewrites `path` in place as many editors and `>` redirection do: the
/// file is truncated, and the new text arrives in two writes with pauses,
/// so a reader can see it empty or half written.
fn rewrite_in_place(path: &Path, text: &str, pause: Duration) {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    std::thread::sleep(pause);
    let (head, tail) = text.split_at(text.len() / 2);
    file.write_all(head.as_bytes()).unwrap();
    file.flush().unwrap();
    std::thread::sleep(pause / 2);
    file.write_all(tail.as_bytes()).unwrap();
    file.flush().unwrap();
}

async fn status_of(server: &TestServer, key: &str) -> u16 {
    server
        .post(Some(key), &call_body(1, "whoami", json!({})))
        .await
        .status()
        .as_u16()
}

/// Waits (at most `limit`) until `key` answers `status`; returns how long it took.
async fn wait_for_status(
    server: &TestServer,
    key: &str,
    status: u16,
    limit: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if status_of(server, key).await == status {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

async fn start(name: &str, keys: &[(&str, &str)]) -> (TestServer, Upstream) {
    let upstream = Upstream::start("A").await;
    let server = TestServer::start(
        name,
        &config("acme", &http_connector(&upstream.url), ""),
        keys,
        &[("token", "t")],
        &[],
    )
    .await;
    (server, upstream)
}

#[tokio::test]
async fn in_place_rewrites_never_lock_out_a_key_that_stays() {
    let alice = generate_api_key().unwrap();
    let bob = generate_api_key().unwrap();
    let carol = generate_api_key().unwrap();
    let (server, _upstream) = start("keys-rewrite", &[("alice", &alice), ("bob", &bob)]).await;
    assert_eq!(status_of(&server, &alice).await, 200);

    // A writer rewrites the file in place 250 times (about 10 s, spanning
    // several polls), sometimes adding carol, always keeping alice and bob.
    let path = server.dir.0.join("keys.yaml");
    let with_carol = key_file_text(&[("alice", &alice), ("bob", &bob), ("carol", &carol)]);
    let without_carol = key_file_text(&[("alice", &alice), ("bob", &bob)]);
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let done = done.clone();
        std::thread::spawn(move || {
            for i in 0..250 {
                let text = if i % 2 == 0 {
                    &with_carol
                } else {
                    &without_carol
                };
                rewrite_in_place(&path, text, Duration::from_millis(20));
            }
            done.store(true, Ordering::Release);
        })
    };

    // alice calls continuously meanwhile (bounded by count and time).
    let refused = AtomicUsize::new(0);
    let mut calls = 0;
    let start = Instant::now();
    while !done.load(Ordering::Acquire)
        && calls < 20_000
        && start.elapsed() < Duration::from_secs(60)
    {
        if status_of(&server, &alice).await == 401 {
            refused.fetch_add(1, Ordering::Relaxed);
        }
        calls += 1;
    }
    writer.join().unwrap();
    assert!(
        calls > 100,
        "only {calls} calls were made during the rewrites"
    );
    assert_eq!(
        refused.load(Ordering::Relaxed),
        0,
        "alice was refused during in-place rewrites ({calls} calls)"
    );
    assert_eq!(status_of(&server, &bob).await, 200);
}

#[tokio::test]
async fn removing_a_line_in_place_revokes_it_promptly() {
    let alice = generate_api_key().unwrap();
    let bob = generate_api_key().unwrap();
    let (server, _upstream) = start("keys-revoke", &[("alice", &alice), ("bob", &bob)]).await;
    assert_eq!(status_of(&server, &bob).await, 200);

    let path = server.dir.0.join("keys.yaml");
    rewrite_in_place(
        &path,
        &key_file_text(&[("alice", &alice)]),
        Duration::from_millis(5),
    );
    // Polled every second; a change is taken once it reads the same twice.
    let took = wait_for_status(&server, &bob, 401, Duration::from_secs(5)).await;
    assert!(took.is_some(), "bob's removed key kept working");
    assert_eq!(status_of(&server, &alice).await, 200);
}

#[tokio::test]
async fn an_empty_file_keeps_the_keys_and_an_empty_map_or_deletion_revokes_them() {
    let alice = generate_api_key().unwrap();
    let (server, _upstream) = start("keys-empty", &[("alice", &alice)]).await;
    let path = server.dir.0.join("keys.yaml");

    // Truncated and left empty (or only a comment): what an unfinished
    // rewrite looks like, so the last good set stays.
    std::fs::write(&path, "").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(status_of(&server, &alice).await, 200);
    std::fs::write(&path, "# keys\n").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(status_of(&server, &alice).await, 200);
    assert!(
        server.stderr().contains("keeping the last good"),
        "the kept set is not reported: {}",
        server.stderr()
    );

    // Unparsable: kept as well.
    std::fs::write(&path, "alice: [unclosed\n").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(status_of(&server, &alice).await, 200);

    // An explicit empty map means "no callers".
    std::fs::write(&path, "{}\n").unwrap();
    assert!(
        wait_for_status(&server, &alice, 401, Duration::from_secs(5))
            .await
            .is_some(),
        "an empty map did not revoke the keys"
    );

    // Back, then deleted: a deleted file revokes every key too.
    std::fs::write(&path, key_file_text(&[("alice", &alice)])).unwrap();
    assert!(
        wait_for_status(&server, &alice, 200, Duration::from_secs(5))
            .await
            .is_some()
    );
    std::fs::remove_file(&path).unwrap();
    assert!(
        wait_for_status(&server, &alice, 401, Duration::from_secs(5))
            .await
            .is_some(),
        "a deleted key file did not revoke the keys"
    );
}
