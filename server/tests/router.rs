//! The gates of `/mcp` driven in-process through `Server::router` with
//! `tower::ServiceExt::oneshot`: each refusal gives its HTTP answer and its
//! audit outcome. The real binary on real sockets is tested in `server.rs`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use bulkhead_server::api_keys::{generate_api_key, hash_api_key};
use bulkhead_server::app::Server;
use bulkhead_server::cli::Cli;
use clap::Parser;
use serde_json::Value;
use tower::ServiceExt;

const HOST: &str = "mcp.test";
const WHOAMI: &str =
    r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"whoami","arguments":{}}}"#;

/// Audit lines, shared with the server's audit writer thread.
#[derive(Clone, Default)]
struct AuditBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for AuditBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl AuditBuffer {
    /// The audit line of the request `response` answered, waiting (bounded)
    /// for the writer thread to write it.
    async fn line_for(&self, response: &Response<Body>) -> Value {
        let request_id = response.headers()["x-request-id"].to_str().unwrap();
        for _ in 0..200 {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            let line = text
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .find(|line| line["request_id"] == request_id);
            if let Some(line) = line {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no audit line for request {request_id}");
    }
}

struct Fixture {
    server: Server,
    audit: AuditBuffer,
    key: String,
    dir: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A wired server whose key file holds one key for caller `ci`; with
/// `keys_present` false the key file never appears, so keys never load.
async fn fixture(name: &str, extra_config: &str, keys_present: bool) -> Fixture {
    let dir = std::env::temp_dir().join(format!(
        "bulkhead-router-test-{name}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let key = generate_api_key().unwrap();
    if keys_present {
        std::fs::write(
            dir.join("keys.yaml"),
            format!("ci: {}\n", hash_api_key(&key)),
        )
        .unwrap();
    }
    std::fs::write(dir.join("credentials.yaml"), "{}\n").unwrap();
    std::fs::write(
        dir.join("server.yaml"),
        format!(
            "tenantId: acme\nallowedHosts: [\"{HOST}\"]\nallowedOrigins: [\"https://app.example.com\"]\n\
             apiKeys: {{type: file, path: keys.yaml}}\ncredentials: {{type: file, path: credentials.yaml}}\n{extra_config}"
        ),
    )
    .unwrap();
    let cli = Cli::parse_from([
        "bulkhead-server",
        "--config",
        dir.join("server.yaml").to_str().unwrap(),
        "--secret-poll-seconds",
        "1",
    ]);
    let audit = AuditBuffer::default();
    let server = Server::with_audit(cli.serve, audit.clone()).await.unwrap();
    let fixture = Fixture {
        server,
        audit,
        key,
        dir,
    };
    if keys_present {
        // The key file is read by a background task; wait (bounded) until
        // the endpoint is ready.
        for _ in 0..200 {
            let response = fixture.send(fixture.post()).await;
            if response.status() != StatusCode::SERVICE_UNAVAILABLE {
                return fixture;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the API keys were never loaded");
    }
    fixture
}

impl Fixture {
    /// A POST of `body` as an authenticated MCP client sends it.
    fn post(&self) -> axum::http::request::Builder {
        Request::post("/mcp")
            .header(header::HOST, HOST)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .header(header::AUTHORIZATION, format!("Bearer {}", self.key))
    }

    async fn send(&self, request: axum::http::request::Builder) -> Response<Body> {
        self.send_body(request, WHOAMI).await
    }

    async fn send_body(&self, request: axum::http::request::Builder, body: &str) -> Response<Body> {
        let request = request.body(Body::from(body.to_owned())).unwrap();
        self.server.router().oneshot(request).await.unwrap()
    }

    /// The audit outcome of the request `response` answered.
    async fn outcome(&self, response: &Response<Body>) -> String {
        let line = self.audit.line_for(response).await;
        line["outcome"].as_str().unwrap().to_owned()
    }
}

async fn text(response: Response<Body>) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn a_call_passes_every_gate_and_is_audited_as_ok() {
    let f = fixture("ok", "", true).await;
    let response = f.send(f.post()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let line = f.audit.line_for(&response).await;
    assert_eq!(
        (&line["outcome"], &line["caller"], &line["tool"]),
        (&"ok".into(), &"ci".into(), &"whoami".into())
    );
    assert_eq!(line["auth"], "api_key");
    let body: Value = serde_json::from_str(&text(response).await).unwrap();
    assert_eq!(body["id"], 7);
    assert_eq!(
        body["result"]["structuredContent"],
        serde_json::json!({"tenantId": "acme", "callerId": "ci"})
    );
}

#[tokio::test]
async fn before_the_keys_load_every_request_is_unavailable() {
    let f = fixture("not-ready", "", false).await;
    let response = f.send(f.post()).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    assert_eq!(f.outcome(&response).await, "unavailable");
}

#[tokio::test]
async fn a_foreign_host_or_origin_is_forbidden_before_authentication() {
    let f = fixture("forbidden", "", true).await;
    // A wrong key too: the Host check comes first, so the answer says
    // nothing about keys.
    let request = Request::post("/mcp")
        .header(header::HOST, "evil.example.com")
        .header(header::AUTHORIZATION, "Bearer not-a-key");
    let response = f.send(request).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(f.outcome(&response).await, "forbidden");
    assert_eq!(
        text(response).await,
        "Forbidden: Host header is not allowed"
    );

    let response = f
        .send(f.post().header(header::ORIGIN, "https://evil.example.com"))
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(f.outcome(&response).await, "forbidden");
    assert_eq!(
        text(response).await,
        "Forbidden: Origin header is not allowed"
    );
}

#[tokio::test]
async fn a_missing_or_unknown_key_is_unauthenticated_with_a_challenge() {
    let f = fixture("unauthenticated", "", true).await;
    let response = f
        .send(Request::post("/mcp").header(header::HOST, HOST))
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.headers()[header::WWW_AUTHENTICATE],
        r#"Bearer realm="bulkhead""#
    );
    assert_eq!(f.outcome(&response).await, "unauthenticated");

    let mut request = f.post();
    request
        .headers_mut()
        .unwrap()
        .insert(header::AUTHORIZATION, "Bearer bhk_wrong".parse().unwrap());
    let response = f.send(request).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.headers()[header::WWW_AUTHENTICATE],
        r#"Bearer realm="bulkhead", error="invalid_token""#
    );
    assert_eq!(f.outcome(&response).await, "unauthenticated");
}

#[tokio::test]
async fn an_oversized_or_malformed_body_is_refused() {
    let f = fixture("body", "", true).await;
    let response = f
        .send(f.post().header(header::CONTENT_LENGTH, "2000000"))
        .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(f.outcome(&response).await, "payload_too_large");

    let response = f.send_body(f.post(), "not json").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(f.outcome(&response).await, "bad_request");
    let body: Value = serde_json::from_str(&text(response).await).unwrap();
    assert_eq!(body["error"]["code"], -32700);

    let response = f
        .send_body(f.post(), r#"{"jsonrpc":"1.0","id":3,"method":"ping"}"#)
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(f.outcome(&response).await, "bad_request");
    let body: Value = serde_json::from_str(&text(response).await).unwrap();
    assert_eq!(body["id"], 3);
    assert_eq!(body["error"]["code"], -32600);
}

#[tokio::test]
async fn a_caller_over_its_budget_is_rate_limited_with_retry_after() {
    let limits = "rateLimits:\n  perCaller: {requestsPerMinute: 1, burst: 1}\n";
    // The readiness wait of `fixture` spends the one request of the burst.
    let f = fixture("rate-limited", limits, true).await;
    let response = f.send(f.post()).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(f.outcome(&response).await, "rate_limited");
    let retry_after: u64 = response.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = serde_json::from_str(&text(response).await).unwrap();
    // Refused before the body is read, so the id is not known.
    assert_eq!(body["id"], Value::Null);
    assert_eq!(body["error"]["data"]["retryAfterSeconds"], retry_after);
}
