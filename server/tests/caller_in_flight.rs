//! One caller cannot take the tenant's audit queue: the real binary with a
//! small queue (`--audit-queue-lines 64`), one caller holding many requests
//! with unfinished bodies, and another caller who must still be served.
//!
//! Every request holds an audit place until its line is written, so
//! without the per-caller bound on requests in flight the slow uploads of
//! one API key took every place and every other caller got 503.

mod common;

use std::time::Duration;

use bulkhead_server::api_keys::generate_api_key;
use common::{TestServer, config, post_head};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// More slow uploads than the audit queue has places.
const SLOW_UPLOADS: usize = 80;
const AUDIT_QUEUE_LINES: &str = "64";
/// The default of `limits.maxRequestsInFlightPerCaller`.
const PER_CALLER: usize = 32;

/// A POST whose body never finishes: the head and 17 of 1000 bytes.
async fn slow_upload(addr: &str, key: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = post_head("127.0.0.1", key, "Content-Length: 1000") + "{\"jsonrpc\":\"2.0\",";
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// The status of the first response on `stream`, if one arrives within
/// `wait`.
async fn status_within(stream: &mut TcpStream, wait: Duration) -> Option<u16> {
    let mut buffer = [0u8; 512];
    let read = tokio::time::timeout(wait, stream.read(&mut buffer))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buffer[..read]);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[tokio::test]
async fn many_slow_uploads_of_one_caller_do_not_make_another_caller_wait() {
    let alice = generate_api_key().unwrap();
    let bob = generate_api_key().unwrap();
    let server = TestServer::start(
        "caller-in-flight",
        &config("acme", "  []", ""),
        &[("alice", &alice), ("bob", &bob)],
        &[("token", "t")],
        &["--audit-queue-lines", AUDIT_QUEUE_LINES],
    )
    .await;
    let addr = server.mcp_address();

    let mut uploads = Vec::with_capacity(SLOW_UPLOADS);
    let mut statuses = vec![None; SLOW_UPLOADS];
    for (i, status) in statuses.iter_mut().enumerate() {
        let mut stream = slow_upload(&addr, &alice).await;
        // Past the first PER_CALLER uploads one is refused at once: wait for
        // its answer before sending the next, so that on a loaded machine
        // the refusals' audit lines do not pile up in the small queue
        // faster than the writer writes them.
        if i >= PER_CALLER {
            *status = status_within(&mut stream, Duration::from_secs(2)).await;
        }
        uploads.push(stream);
    }
    // Then read what the others got (well within the request timeout of
    // 10 s): an upload held open has no answer.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (stream, status) in uploads.iter_mut().zip(statuses.iter_mut()) {
        if status.is_none() {
            *status = status_within(stream, Duration::from_millis(20)).await;
        }
    }
    let held = statuses.iter().filter(|s| s.is_none()).count();
    let too_many = statuses.iter().filter(|s| **s == Some(429)).count();
    assert_eq!(held, PER_CALLER, "{statuses:?}");
    assert_eq!(too_many, SLOW_UPLOADS - PER_CALLER, "{statuses:?}");

    // Bob is served while alice's uploads are still open.
    let response = server
        .post(Some(&bob), r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
        .await;
    assert_eq!(response.status(), 200);
    // So is alice once one of her requests is refused or done.
    let refused = server
        .post(Some(&alice), r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#)
        .await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");

    drop(uploads);
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(&format!(
            "bulkhead_rate_limited_total{{scope=\"in_flight\"}} {}",
            SLOW_UPLOADS - PER_CALLER + 1
        )),
        "{metrics}"
    );
    assert!(
        !metrics.contains("bulkhead_audit_refused_total{"),
        "{metrics}"
    );
    let server = server.stop().await;
    let audit = server.audit();
    let rate_limited = audit
        .iter()
        .filter(|l| l["outcome"] == "rate_limited" && l["caller"] == "alice")
        .count();
    assert_eq!(rate_limited, SLOW_UPLOADS - PER_CALLER + 1);
    assert!(
        audit
            .iter()
            .any(|l| l["caller"] == "bob" && l["outcome"] == "ok")
    );
}
