//! The audit trail of the real `bulkhead-server` binary on its exit paths:
//! exactly one line for a caller that leaves early, a request timeout, a
//! shutdown mid-request and an upstream failure, with the upstream call
//! cancelled when the request ends first; and a stdout nobody reads, which
//! must bound memory, refuse requests with 503 instead of losing their lines,
//! and still let SIGTERM end the process within the drain deadline; and a
//! stdout whose reader has gone (`EPIPE`), after which the server refuses
//! every request and is not ready, for good.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bulkhead_server::api_keys::generate_api_key;
use common::{TestServer, call_body, http, post_head, serve_on_loopback};
use serde_json::{Value, json};

/// What a [`DelayedUpstream`] saw: requests begun, answered, and dropped
/// before their answer (the caller went away).
#[derive(Default)]
struct Calls {
    started: AtomicUsize,
    completed: AtomicUsize,
    cancelled: AtomicUsize,
}

/// Counts a request as cancelled unless it was answered.
struct InFlight(Arc<Calls>, bool);

impl Drop for InFlight {
    fn drop(&mut self) {
        let counter = if self.1 {
            &self.0.completed
        } else {
            &self.0.cancelled
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

/// A loopback upstream that answers `/fail/**` with 500 at once and
/// everything else after `delay`.
struct DelayedUpstream {
    url: String,
    calls: Arc<Calls>,
}

#[derive(Clone)]
struct UpstreamState {
    delay: Duration,
    calls: Arc<Calls>,
}

async fn delayed(State(state): State<UpstreamState>, uri: Uri) -> Response {
    if uri.path().starts_with("/fail") {
        return (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response();
    }
    state.calls.started.fetch_add(1, Ordering::SeqCst);
    let mut in_flight = InFlight(state.calls.clone(), false);
    tokio::time::sleep(state.delay).await;
    in_flight.1 = true;
    ([("content-type", "application/json")], r#"{"late":true}"#).into_response()
}

impl DelayedUpstream {
    async fn start(delay: Duration) -> Self {
        let calls = Arc::new(Calls::default());
        let app = axum::Router::new()
            .fallback(delayed)
            .with_state(UpstreamState {
                delay,
                calls: calls.clone(),
            });
        Self {
            url: serve_on_loopback(app).await,
            calls,
        }
    }

    fn count(&self, which: fn(&Calls) -> &AtomicUsize) -> usize {
        which(&self.calls).load(Ordering::SeqCst)
    }

    /// Waits (at most `limit`) until `which` reaches `n`.
    async fn wait_for(&self, which: fn(&Calls) -> &AtomicUsize, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.count(which) < n {
            assert!(Instant::now() < deadline, "the upstream never got there");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A server configuration with an `http` connector `api` on `base`, upstream
/// timeout 30 s and the given request timeout.
fn config(base: &str, request_timeout_seconds: u64) -> String {
    format!(
        r#"
tenantId: acme
allowedHosts: ["127.0.0.1", "localhost"]
allowedOrigins: ["https://app.example.com"]
apiKeys: {{type: file, path: keys.yaml}}
credentials: {{type: file, path: credentials.yaml}}
credentialKeys: [{{name: token, key: token}}]
connectors:
  - name: api
    type: http
    baseUrl: "{base}"
    credential: token
    allowPrivateTargets: true
    allow:
      - {{method: GET, path: "/slow/**"}}
      - {{method: GET, path: "/fail/**"}}
limits: {{maxBodyBytes: 4096, requestTimeoutSeconds: {request_timeout_seconds}, upstreamTimeoutSeconds: 30}}
"#
    )
}

fn slow_call() -> String {
    call_body(1, "api_request", json!({"path": "/slow/op"}))
}

/// A raw JSON-RPC POST with a client-side timeout.
fn post(
    server: &TestServer,
    key: &str,
    body: String,
    timeout: Duration,
) -> reqwest::RequestBuilder {
    post_with(&http(), server, key, body, timeout)
}

fn post_with(
    client: &reqwest::Client,
    server: &TestServer,
    key: &str,
    body: String,
    timeout: Duration,
) -> reqwest::RequestBuilder {
    client
        .post(&server.mcp_url)
        .timeout(timeout)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .bearer_auth(key)
        .body(body)
}

/// The audit lines so far, waiting (at most 5 s) until one has `outcome`.
async fn audit_with(server: &TestServer, outcome: &str) -> Vec<Value> {
    for _ in 0..250 {
        let lines = server.audit();
        if lines.iter().any(|l| l["outcome"] == outcome) {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no {outcome} audit line: {}", server.audit_text());
}

fn assert_cancelled_call(line: &Value, outcome: &str, http_status: u16) {
    assert_eq!(line["outcome"], outcome, "{line}");
    assert_eq!(line["http_status"], http_status, "{line}");
    assert_eq!(line["method"], "tools/call");
    assert_eq!(line["tool"], "api_request");
    assert_eq!(line["caller"], "alice");
    assert_eq!(line["tool_cancelled"], true, "{line}");
    assert!(line["upstream_status"].is_null());
}

async fn start(name: &str, upstream: &DelayedUpstream, timeout: u64, key: &str) -> TestServer {
    TestServer::start(
        name,
        &config(&upstream.url, timeout),
        &[("alice", key)],
        &[("token", "t")],
        &[],
    )
    .await
}

#[tokio::test]
async fn a_caller_that_leaves_early_is_audited_and_its_upstream_call_cancelled() {
    // `curl -m 1` on a call whose upstream answers after 3 s.
    let upstream = DelayedUpstream::start(Duration::from_secs(3)).await;
    let key = generate_api_key().unwrap();
    let server = start("client-closed", &upstream, 30, &key).await;
    let sent = Instant::now();
    let error = post(&server, &key, slow_call(), Duration::from_secs(1))
        .send()
        .await
        .expect_err("the client gives up after 1 s");
    assert!(error.is_timeout(), "{error}");

    let lines = audit_with(&server, "client_closed").await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_cancelled_call(&lines[0], "client_closed", 499);
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "written when the caller left"
    );
    // The upstream request was dropped, not answered.
    upstream
        .wait_for(|c| &c.cancelled, 1, Duration::from_secs(3))
        .await;
    tokio::time::sleep(
        Duration::from_secs(3).saturating_sub(sent.elapsed()) + Duration::from_millis(500),
    )
    .await;
    assert_eq!(upstream.count(|c| &c.completed), 0);
    assert_eq!(upstream.count(|c| &c.started), 1);

    let metrics = server.metrics().await;
    assert!(
        metrics.contains(
            "bulkhead_mcp_requests_total{method=\"tools/call\",outcome=\"client_closed\"} 1"
        ),
        "{metrics}"
    );
    let server = server.stop().await;
    assert_eq!(server.audit().len(), 1, "{}", server.audit_text());
}

/// Sends `head` and then `body_part` on a new connection, waits 300 ms and
/// closes it.
async fn upload_and_leave(addr: &str, head: &str, body_part: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body_part).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_caller_that_leaves_mid_upload_is_audited_as_client_closed() {
    let upstream = DelayedUpstream::start(Duration::from_secs(1)).await;
    let key = generate_api_key().unwrap();
    let server = start("client-closed-upload", &upstream, 30, &key).await;
    let addr = server.mcp_address();
    let head = |framing: &str| post_head("127.0.0.1", &key, framing);
    // Content-Length framing, then chunked, each left unfinished.
    upload_and_leave(
        &addr,
        &head("Content-Length: 1000"),
        b"{\"jsonrpc\":\"2.0\",",
    )
    .await;
    upload_and_leave(
        &addr,
        &head("Transfer-Encoding: chunked"),
        b"20\r\n{\"jsonrpc\":\"2.0\",",
    )
    .await;
    // A body that is too large is still 413.
    let large = server
        .post(Some(&key), &format!("{{\"x\":\"{}\"}}", "a".repeat(8192)))
        .await;
    assert_eq!(large.status(), 413);

    let server = server.stop().await;
    let audit = server.audit();
    assert_eq!(audit.len(), 3, "{}", server.audit_text());
    for line in &audit[..2] {
        assert_eq!(line["outcome"], "client_closed", "{line}");
        assert_eq!(line["http_status"], 499, "{line}");
        assert_eq!(line["caller"], "alice", "{line}");
    }
    assert_eq!(audit[2]["outcome"], "payload_too_large");
    assert_eq!(audit[2]["http_status"], 413);
}

#[tokio::test]
async fn a_request_timeout_is_audited_once_and_cancels_the_upstream_call() {
    let upstream = DelayedUpstream::start(Duration::from_secs(3)).await;
    let key = generate_api_key().unwrap();
    let server = start("timeout", &upstream, 1, &key).await;
    let response = post(&server, &key, slow_call(), Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    upstream
        .wait_for(|c| &c.cancelled, 1, Duration::from_secs(3))
        .await;
    assert_eq!(upstream.count(|c| &c.completed), 0);

    // An upstream failure on the same server: one line, its own outcome.
    let failed = post(
        &server,
        &key,
        call_body(2, "api_request", json!({"path": "/fail/now"})),
        Duration::from_secs(10),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(failed.status(), 200);

    let server = server.stop().await;
    let lines = server.audit();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_cancelled_call(&lines[0], "timeout", 504);
    assert_eq!(lines[1]["outcome"], "upstream_error");
    assert_eq!(lines[1]["upstream_status"], 500);
    assert_eq!(lines[1]["tool_cancelled"], false);
}

#[tokio::test]
async fn a_shutdown_mid_request_ends_it_with_an_audit_line() {
    // The test server's shutdown grace period is 5 s; the upstream takes 20.
    let upstream = DelayedUpstream::start(Duration::from_secs(20)).await;
    let key = generate_api_key().unwrap();
    let server = start("shutdown", &upstream, 60, &key).await;
    let request = post(&server, &key, slow_call(), Duration::from_secs(15)).send();
    let request = tokio::spawn(request);
    upstream
        .wait_for(|c| &c.started, 1, Duration::from_secs(5))
        .await;
    let signalled = Instant::now();
    let server = server.stop().await;
    assert!(
        signalled.elapsed() < Duration::from_secs(9),
        "{:?}",
        signalled.elapsed()
    );
    let response = request.await.unwrap().unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let lines = server.audit();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_cancelled_call(&lines[0], "shutdown", 503);
    upstream
        .wait_for(|c| &c.cancelled, 1, Duration::from_secs(3))
        .await;
    assert_eq!(upstream.count(|c| &c.completed), 0);
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Sends `count` `whoami` calls, `concurrency` at a time; returns how many
/// were served and how many refused with 503 and `Retry-After`.
async fn load(server: &TestServer, key: &str, count: usize, concurrency: usize) -> (usize, usize) {
    use futures::StreamExt;
    let body = call_body(1, "whoami", json!({}));
    let client = http();
    let statuses: Vec<(u16, bool)> = futures::stream::iter(0..count)
        .map(|_| {
            let request = post_with(&client, server, key, body.clone(), Duration::from_secs(10));
            async move {
                let response = request.send().await.unwrap();
                (
                    response.status().as_u16(),
                    response.headers().contains_key("retry-after"),
                )
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let refused = statuses.iter().filter(|(s, r)| *s == 503 && *r).count();
    let served = statuses.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(served + refused, count, "{statuses:?}");
    (served, refused)
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_stopped_stdout_bounds_memory_refuses_requests_and_shutdown_keeps_its_deadline() {
    let upstream = DelayedUpstream::start(Duration::from_secs(1)).await;
    let key = generate_api_key().unwrap();
    let mut server = TestServer::start_with_stdout(
        "blocked-stdout",
        &config(&upstream.url, 10),
        &[("alice", &key)],
        &[("token", "t")],
        &["--audit-queue-lines", "64", "--audit-drain-seconds", "2"],
        true,
    )
    .await;
    // Held open and never read until the process has exited.
    let mut audit_pipe = server.take_stdout().unwrap();

    // Fill the pipe, the writer's buffer and the queue (each line is about
    // 350 bytes: some 400 lines, then 64 queued).
    let (served_first, refused_first) = load(&server, &key, 2_000, 16).await;
    assert!(refused_first > 0, "never refused");
    assert!(
        served_first < 1_000,
        "{served_first} served with stdout stopped"
    );
    let rss_full = rss_kib(server.pid());

    // While stdout stays stopped, every further request is refused and
    // memory does not grow with them.
    let (served_more, refused_more) = load(&server, &key, 5_000, 16).await;
    assert_eq!(served_more, 0);
    assert_eq!(refused_more, 5_000);
    let rss_after = rss_kib(server.pid());
    assert!(
        rss_after < rss_full + 8 * 1024,
        "RSS grew from {rss_full} to {rss_after} KiB"
    );
    assert!(rss_after < 128 * 1024, "RSS {rss_after} KiB");

    let metrics = server.metrics().await;
    let refused = (refused_first + refused_more) as u64;
    assert_eq!(
        metric(
            &metrics,
            "bulkhead_audit_refused_total{reason=\"queue_full\"} "
        ),
        refused,
        "{metrics}"
    );
    let served = served_first as u64;
    assert_eq!(
        metric(
            &metrics,
            "bulkhead_mcp_requests_total{method=\"tools/call\",outcome=\"ok\"} "
        ),
        served
    );

    // SIGTERM: no request in flight, so the drain deadline (2 s) bounds it.
    let signalled = Instant::now();
    let server = server.stop().await;
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(6), "shutdown took {took:?}");
    let stderr = server.stderr();
    let unwritten: u64 = stderr
        .split(" audit lines could not be written")
        .next()
        .and_then(|before| before.rsplit(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of unwritten lines on stderr: {stderr}"));
    assert!(unwritten > 0);

    // Every served request is accounted for: its line is in the pipe, or
    // it is in the count shutdown reported. The count is of lines not
    // confirmed by a flush, so it may include lines of the last, partly
    // taken, write buffer (64 KiB).
    let mut text = String::new();
    audit_pipe.read_to_string(&mut text).unwrap();
    let complete = text.rsplit_once('\n').map_or("", |(lines, _)| lines);
    let written = complete
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["outcome"] == "ok")
        .count() as u64;
    eprintln!(
        "served {served}, refused {refused}, RSS {rss_full} -> {rss_after} KiB, \
         shutdown {took:?}, lines written {written}, reported unwritten {unwritten}"
    );
    assert!(written <= served);
    assert!(
        written + unwritten >= served,
        "{written} written and {unwritten} reported of {served} served"
    );
    assert!(
        unwritten <= served - written + (64 * 1024 / 200),
        "{unwritten} reported, {written} written of {served}"
    );
}

#[tokio::test]
async fn a_closed_stdout_fails_closed_for_good() {
    let upstream = DelayedUpstream::start(Duration::from_secs(1)).await;
    let key = generate_api_key().unwrap();
    let mut server = TestServer::start_with_stdout(
        "closed-stdout",
        &config(&upstream.url, 10),
        &[("alice", &key)],
        &[("token", "t")],
        &[],
        true,
    )
    .await;
    let mut audit_pipe = BufReader::new(server.take_stdout().unwrap());
    let client = http();
    let body = call_body(1, "whoami", json!({}));
    let whoami = || async {
        post_with(
            &client,
            &server,
            &key,
            body.clone(),
            Duration::from_secs(10),
        )
        .send()
        .await
        .unwrap()
    };

    // A few requests are served and their lines read from the pipe.
    for n in 0..3 {
        assert_eq!(whoami().await.status(), 200);
        let mut line = String::new();
        audit_pipe.read_line(&mut line).unwrap();
        let line: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(line["outcome"], "ok", "line {n}");
    }

    // The reader goes away: the next write fails with EPIPE (SIGPIPE is
    // ignored, so the process lives on). Requests already past the audit
    // gate are served; once the failure is seen, requests are refused.
    drop(audit_pipe);
    let mut served_after_close = 0;
    let mut refused = None;
    for _ in 0..100 {
        let response = whoami().await;
        if response.status() == 503 {
            refused = Some(response);
            break;
        }
        assert_eq!(response.status(), 200);
        served_after_close += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = refused.unwrap_or_else(|| panic!("never refused: {}", server.stderr()));
    assert!(served_after_close >= 1, "refused before any write failed");
    assert!(
        served_after_close <= 3,
        "{served_after_close} served after close"
    );
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(
        refused.text().await.unwrap(),
        "Service Unavailable: the audit trail has failed"
    );

    // Stays failed: every further request is refused and /readyz names
    // the audit trail.
    for _ in 0..20 {
        let response = whoami().await;
        assert_eq!(response.status(), 503);
        assert!(response.headers().contains_key("retry-after"));
    }
    let readyz = client
        .get(format!("{}/readyz", server.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(readyz.status(), 503);
    let reason = readyz.text().await.unwrap();
    assert!(
        reason.starts_with("not ready: audit trail failed: cannot write to stdout (Broken pipe"),
        "{reason}"
    );
    // Liveness fails too, so the kubelet restarts the container with a
    // fresh stdout.
    let healthz = client
        .get(format!("{}/healthz", server.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), 503);
    let reason = healthz.text().await.unwrap();
    assert!(
        reason.starts_with("unhealthy: audit trail failed"),
        "{reason}"
    );
    let metrics = server.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "bulkhead_audit_refused_total{reason=\"write_failed\"} "
        ),
        21,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "bulkhead_mcp_requests_total{method=\"tools/call\",outcome=\"ok\"} "
        ),
        3 + served_after_close
    );

    // SIGTERM still ends the process cleanly (exit status 0), and stderr
    // reported the failure once, not per request.
    let server = server.stop().await;
    let stderr = server.stderr();
    assert_eq!(
        stderr.matches("cannot write to the audit stream").count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{served_after_close} audit lines could not be written"
        )),
        "{stderr}"
    );
}
