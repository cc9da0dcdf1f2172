//! The real `bulkhead-server` binary on loopback, driven by rmcp's client
//! and by raw HTTP, against recording loopback upstreams.

mod common;

use std::time::Duration;

use bulkhead_server::api_keys::generate_api_key;
use common::{
    TestServer, Upstream, call, call_body, config, github_connector, http, http_connector,
    post_head, text_of,
};
use serde_json::{Value, json};

#[tokio::test]
async fn two_tenants_stay_isolated() {
    let upstream_a = Upstream::start("A").await;
    let upstream_b = Upstream::start("B").await;
    let key_a = generate_api_key().unwrap();
    let key_b = generate_api_key().unwrap();
    let server_a = TestServer::start(
        "tenant-a",
        &config("tenant-a", &github_connector(&upstream_a.url), ""),
        &[("alice", &key_a)],
        &[("token", "token-of-a")],
        &["--response-cache-seconds", "60"],
    )
    .await;
    let server_b = TestServer::start(
        "tenant-b",
        &config("tenant-b", &github_connector(&upstream_b.url), ""),
        &[("bob", &key_b)],
        &[("token", "token-of-b")],
        &["--response-cache-seconds", "60"],
    )
    .await;

    // A's key means nothing to B.
    assert!(server_b.client(&key_a).await.is_err());
    let refused = server_b
        .post(Some(&key_a), &call_body(1, "whoami", json!({})))
        .await;
    assert_eq!(refused.status(), 401);

    // Identity comes from configuration and key, never from arguments.
    let client_a = server_a.client(&key_a).await.unwrap();
    let who = call(
        &client_a,
        "whoami",
        json!({"tenantId": "tenant-b", "callerId": "bob"}),
    )
    .await;
    assert_eq!(
        who.structured_content.unwrap(),
        json!({"tenantId": "tenant-a", "callerId": "alice"})
    );

    // A fetches a resource twice: the second answer comes from A's cache.
    let args = json!({"owner": "o", "repo": "r", "tenantId": "tenant-b"});
    for _ in 0..2 {
        let result = call(&client_a, "github_get_repository", args.clone()).await;
        assert_eq!(result.is_error, Some(false), "{}", text_of(&result));
        assert_eq!(result.structured_content.unwrap()["data"]["upstream"], "A");
    }
    assert_eq!(upstream_a.seen().len(), 1, "second call should be cached");

    // B asks for the same resource: it reaches B's upstream, never A's cache.
    let client_b = server_b.client(&key_b).await.unwrap();
    let result = call(&client_b, "github_get_repository", args.clone()).await;
    assert_eq!(result.structured_content.unwrap()["data"]["upstream"], "B");
    assert_eq!(upstream_b.seen().len(), 1);

    // Each upstream saw only its own tenant's credential, never a caller key.
    for (upstream, token) in [
        (&upstream_a, "Bearer token-of-a"),
        (&upstream_b, "Bearer token-of-b"),
    ] {
        for seen in upstream.seen() {
            assert_eq!(seen.authorization.as_deref(), Some(token));
            assert_eq!(seen.path_and_query, "/repos/o/r");
        }
    }
    client_a.cancel().await.unwrap();
    client_b.cancel().await.unwrap();

    // Audit lines carry the configured tenant and verified caller, and are
    // all flushed by a SIGTERM shutdown.
    let server_a = server_a.stop().await;
    let server_b = server_b.stop().await;
    let audit_a = server_a.audit();
    assert!(audit_a.iter().all(|l| l["tenant"] == "tenant-a"));
    let calls: Vec<&Value> = audit_a
        .iter()
        .filter(|l| l["method"] == "tools/call")
        .collect();
    assert_eq!(calls.len(), 3);
    assert!(
        calls
            .iter()
            .all(|l| l["caller"] == "alice" && l["outcome"] == "ok")
    );
    assert!(
        calls
            .iter()
            .all(|l| l["args_sha256"].as_str().unwrap().starts_with("sha256:"))
    );
    assert_eq!(calls[1]["upstream_status"], 200);
    let audit_b = server_b.audit();
    assert!(audit_b.iter().all(|l| l["tenant"] == "tenant-b"));
    let unauthenticated: Vec<&Value> = audit_b
        .iter()
        .filter(|l| l["outcome"] == "unauthenticated")
        .collect();
    assert!(!unauthenticated.is_empty());
    assert!(unauthenticated.iter().all(|l| l["caller"].is_null()));
    for text in [
        server_a.audit_text(),
        server_b.audit_text(),
        server_a.stderr(),
        server_b.stderr(),
    ] {
        for secret in [&key_a, &key_b, "token-of-a", "token-of-b"] {
            assert!(!text.contains(secret), "a secret leaked into logs");
        }
    }
}

#[tokio::test]
async fn missing_wrong_and_revoked_keys_are_refused() {
    let upstream = Upstream::start("A").await;
    let alice = generate_api_key().unwrap();
    let bob = generate_api_key().unwrap();
    let server = TestServer::start(
        "keys",
        &config("acme", &http_connector(&upstream.url), ""),
        &[("alice", &alice), ("bob", &bob)],
        &[("token", "t")],
        &[],
    )
    .await;
    let body = call_body(1, "whoami", json!({}));

    let missing = server.post(None, &body).await;
    assert_eq!(missing.status(), 401);
    assert!(
        missing.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    assert_eq!(missing.text().await.unwrap(), "Unauthorized");

    let wrong_key = generate_api_key().unwrap();
    let wrong = server.post(Some(&wrong_key), &body).await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(wrong.text().await.unwrap(), "Unauthorized");

    let ok = server.post(Some(&alice), &body).await;
    assert_eq!(ok.status(), 200);
    let reply: Value = ok.json().await.unwrap();
    assert_eq!(reply["result"]["structuredContent"]["callerId"], "alice");

    // Remove alice from the key file: her key stops working, bob's does not.
    server.rewrite_keys(&[("bob", &bob)]);
    let mut revoked = false;
    for _ in 0..60 {
        if server.post(Some(&alice), &body).await.status() == 401 {
            revoked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(revoked, "a removed key kept working");
    assert_eq!(server.post(Some(&bob), &body).await.status(), 200);

    let metrics = server.metrics().await;
    assert!(
        metrics.contains("bulkhead_auth_failures_total{reason=\"missing\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("bulkhead_auth_failures_total{reason=\"invalid\"}"));
    assert!(!server.audit_text().contains(&wrong_key));
}

#[tokio::test]
async fn rate_limits_refuse_one_caller_and_spare_another() {
    let upstream = Upstream::start("A").await;
    let alice = generate_api_key().unwrap();
    let bob = generate_api_key().unwrap();
    let limits = "rateLimits:\n  perCaller: {requestsPerMinute: 1, burst: 4}\n  perTool: [{tool: whoami, requestsPerMinute: 1, burst: 1}]";
    let server = TestServer::start(
        "limits",
        &config("acme", &http_connector(&upstream.url), limits),
        &[("alice", &alice), ("bob", &bob)],
        &[("token", "t")],
        &[],
    )
    .await;
    let whoami = call_body(1, "whoami", json!({}));
    let ping = r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;

    // Per-tool limit: the second whoami is a tool error with a retry hint.
    let first: Value = server
        .post(Some(&alice), &whoami)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["result"]["isError"], false);
    let second: Value = server
        .post(Some(&alice), &whoami)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(second["result"]["isError"], true);
    assert!(
        second["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("retry after")
    );

    // Per-caller limit: the burst of 4 is used up after two more requests.
    assert_eq!(server.post(Some(&alice), ping).await.status(), 200);
    assert_eq!(server.post(Some(&alice), ping).await.status(), 200);
    let limited = server.post(Some(&alice), ping).await;
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body: Value = limited.json().await.unwrap();
    // Refused before the body is read, so the id is not known.
    assert_eq!(body["id"], Value::Null);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("retry after")
    );

    // Bob has his own budget.
    let bobs: Value = server.post(Some(&bob), &whoami).await.json().await.unwrap();
    assert_eq!(bobs["result"]["structuredContent"]["callerId"], "bob");

    let metrics = server.metrics().await;
    assert!(
        metrics.contains("bulkhead_rate_limited_total{scope=\"caller\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("bulkhead_rate_limited_total{scope=\"tool\"} 1"));
    let server = server.stop().await;
    let outcomes: Vec<String> = server
        .audit()
        .iter()
        .filter(|l| l["caller"] == "alice")
        .map(|l| l["outcome"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(outcomes, ["ok", "rate_limited", "ok", "ok", "rate_limited"]);
}

#[tokio::test]
async fn rotated_credentials_are_used_without_restart() {
    let upstream = Upstream::start("A").await;
    let key = generate_api_key().unwrap();
    let server = TestServer::start(
        "rotation",
        &config("acme", &http_connector(&upstream.url), ""),
        &[("alice", &key)],
        &[("token", "first-token")],
        &[],
    )
    .await;
    let client = server.client(&key).await.unwrap();
    let args = json!({"path": "/v1/items/1"});
    let result = call(&client, "api_request", args.clone()).await;
    assert_eq!(result.is_error, Some(false), "{}", text_of(&result));
    server.rewrite_credentials(&[("token", "second-token")]);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let result = call(&client, "api_request", args).await;
    assert_eq!(result.is_error, Some(false));
    let seen: Vec<Option<String>> = upstream
        .seen()
        .into_iter()
        .map(|s| s.authorization)
        .collect();
    assert_eq!(
        seen,
        [
            Some("Bearer first-token".to_owned()),
            Some("Bearer second-token".to_owned())
        ]
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn transport_refuses_bad_requests_without_falling_over() {
    let upstream = Upstream::start("A").await;
    let key = generate_api_key().unwrap();
    let server = TestServer::start(
        "transport",
        &config("acme", &http_connector(&upstream.url), ""),
        &[("alice", &key)],
        &[("token", "t")],
        &[],
    )
    .await;
    let client = http();
    let whoami = call_body(1, "whoami", json!({}));
    let post = |host: Option<&str>, origin: Option<&str>, body: String| {
        let mut request = client
            .post(&server.mcp_url)
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body);
        if let Some(host) = host {
            request = request.header("host", host);
        }
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };

    // DNS rebinding: a Host the configuration does not list.
    assert_eq!(
        post(Some("evil.example.com"), None, whoami.clone())
            .await
            .unwrap()
            .status(),
        403
    );
    // Unauthenticated rebinding attempts get 403 too (Host is checked first).
    let anonymous = client
        .post(&server.mcp_url)
        .header("host", "evil.example.com")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 403);
    // Browser origins: only the listed one.
    assert_eq!(
        post(None, Some("https://evil.example.com"), whoami.clone())
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        post(None, Some("https://app.example.com"), whoami.clone())
            .await
            .unwrap()
            .status(),
        200
    );
    // Oversized body (limit 4096 bytes).
    let big = call_body(1, "whoami", json!({"pad": "x".repeat(8192)}));
    assert_eq!(post(None, None, big).await.unwrap().status(), 413);
    // The same without a Content-Length: chunked, cut off while streaming.
    let address = server.mcp_address();
    let head = |framing: &str| post_head(&address, &key, framing);
    let mut chunked = head("Transfer-Encoding: chunked");
    for _ in 0..4 {
        chunked.push_str(&format!("800\r\n{}\r\n", "x".repeat(0x800)));
    }
    chunked.push_str("0\r\n\r\n");
    assert_eq!(raw_status(&address, chunked.as_bytes(), None).await, 413);
    // A body that never finishes is cut off at the request timeout (10 s).
    let slow = format!("{}{{\"jsonrpc\"", head("Content-Length: 100"));
    assert_eq!(
        raw_status(&address, slow.as_bytes(), Some(Duration::from_secs(20))).await,
        408
    );
    // Malformed JSON-RPC.
    let malformed = post(None, None, "{not json".into()).await.unwrap();
    assert_eq!(malformed.status(), 400);
    let malformed: Value = malformed.json().await.unwrap();
    assert_eq!(malformed["error"]["code"], -32700);
    for body in [
        r#"{"hello":"world"}"#,
        "[]",
        r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
    ] {
        let not_rpc = post(None, None, body.into()).await.unwrap();
        assert_eq!(not_rpc.status(), 400, "{body}");
        let not_rpc: Value = not_rpc.json().await.unwrap();
        assert_eq!(not_rpc["error"]["code"], -32600, "{body}");
    }
    // Unknown tool: a JSON-RPC invalid-params error.
    let unknown: Value = post(None, None, call_body(3, "drop_tables", json!({})))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(unknown["error"]["code"], -32602);
    // Sessions do not exist: GET is not offered.
    let get = client
        .get(&server.mcp_url)
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
    // Still alive and serving. (Four malformed bodies and the GET count as
    // bad requests.)
    assert_eq!(post(None, None, whoami).await.unwrap().status(), 200);
    let health = client
        .get(format!("{}/healthz", server.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let metrics = server.metrics().await;
    assert!(
        metrics
            .contains("bulkhead_mcp_requests_total{method=\"tools/call\",outcome=\"rpc_error\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("outcome=\"forbidden\""));
    assert!(metrics.contains("outcome=\"payload_too_large\""));
    assert!(
        metrics.contains("bulkhead_mcp_requests_total{method=\"none\",outcome=\"bad_request\"} 5"),
        "{metrics}"
    );
}

#[tokio::test]
async fn upstream_failures_become_clean_tool_errors() {
    let upstream = Upstream::start("A").await;
    let key = generate_api_key().unwrap();
    let server = TestServer::start(
        "upstream",
        &config("acme", &http_connector(&upstream.url), ""),
        &[("alice", &key)],
        &[("token", "upstream-token")],
        &[],
    )
    .await;
    let client = server.client(&key).await.unwrap();
    let forbidden_words = [
        "hunter2",
        "10.1.2.3",
        "upstream-token",
        "127.0.0.1",
        "169.254",
    ];

    let failed = call(&client, "api_request", json!({"path": "/fail/now"})).await;
    assert_eq!(failed.is_error, Some(true));
    let text = text_of(&failed);
    assert!(text.contains("HTTP 500"), "{text}");

    let slow = call(&client, "api_request", json!({"path": "/slow/op"})).await;
    assert_eq!(slow.is_error, Some(true));
    let slow_text = text_of(&slow);
    assert!(slow_text.contains("did not answer"), "{slow_text}");

    let redirected = call(&client, "api_request", json!({"path": "/redirect/x"})).await;
    assert_eq!(redirected.is_error, Some(true));
    let redirect_text = text_of(&redirected);
    assert!(redirect_text.contains("redirect"), "{redirect_text}");

    for path in [
        "/v1/items/../../admin",
        "/v1/items/%2e%2e",
        "//evil.example.com/v1/items/1",
        "/admin",
    ] {
        let refused = call(&client, "api_request", json!({"path": path})).await;
        assert_eq!(refused.is_error, Some(true), "{path}");
    }
    for text in [text, slow_text, redirect_text] {
        for word in forbidden_words {
            assert!(!text.contains(word), "{word} leaked: {text}");
        }
    }
    // Only the three allowed calls reached the upstream.
    let paths: Vec<String> = upstream
        .seen()
        .into_iter()
        .map(|s| s.path_and_query)
        .collect();
    assert_eq!(paths, ["/fail/now", "/slow/op", "/redirect/x"]);

    let metrics = server.metrics().await;
    assert!(
        metrics.contains("bulkhead_upstream_errors_total{connector=\"api\",kind=\"status_5xx\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("kind=\"timeout\""));
    client.cancel().await.unwrap();
    let server = server.stop().await;
    let failed_line = server
        .audit()
        .into_iter()
        .find(|l| l["upstream_status"] == 500)
        .unwrap();
    assert_eq!(failed_line["outcome"], "upstream_error");
    assert_eq!(failed_line["tool"], "api_request");
}

#[tokio::test]
async fn insecure_mode_is_refused_off_loopback() {
    let dir = common::Scratch::new("insecure");
    std::fs::write(dir.0.join("server.yaml"), config("acme", "  []", "")).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead-server"))
        .arg("--config")
        .arg(dir.0.join("server.yaml"))
        .args([
            "--insecure-no-auth",
            "--listen",
            "0.0.0.0:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("only allowed on a loopback"), "{stderr}");
}

/// Sends raw bytes over one TCP connection and returns the response's status
/// code, keeping the connection open (without sending more) until the server
/// answers or `wait` runs out.
async fn raw_status(address: &str, request: &[u8], wait: Option<Duration>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    let mut buffer = [0u8; 1024];
    let read = async {
        while !response.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buffer).await.unwrap();
            assert!(n > 0, "connection closed without a response");
            response.extend_from_slice(&buffer[..n]);
        }
    };
    tokio::time::timeout(wait.unwrap_or(Duration::from_secs(5)), read)
        .await
        .expect("the server answered");
    let status_line = String::from_utf8_lossy(&response);
    status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap()
}
