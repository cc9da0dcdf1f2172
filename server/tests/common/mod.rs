//! Test harness: the real `bulkhead-server` binary on loopback, a recording
//! HTTP upstream on loopback, and helpers to talk MCP to the server.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

/// Serves `app` on a loopback port of its own for the rest of the test;
/// returns its base URL (`http://127.0.0.1:<port>`).
pub async fn serve_on_loopback(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    format!("http://{addr}")
}

/// One request the upstream received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub authorization: Option<String>,
}

/// A loopback HTTP upstream that records every request.
///
/// - `/fail/**`: 500 with a body full of things that must not leak
/// - `/slow/**`: answers after 3 s
/// - `/redirect/**`: 302 to another host
/// - anything else: 200 JSON naming this upstream and the path
pub struct Upstream {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

#[derive(Clone)]
struct UpstreamState {
    label: &'static str,
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn upstream_handler(State(state): State<UpstreamState>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    state.seen.lock().unwrap().push(Seen {
        method: request.method().to_string(),
        path_and_query: request
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        authorization: request
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned()),
    });
    if path.starts_with("/fail") {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "db-password=hunter2 at 10.1.2.3:5432 stack trace",
        )
            .into_response();
    }
    if path.starts_with("/slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if path.starts_with("/redirect") {
        return (
            StatusCode::FOUND,
            [("location", "http://169.254.169.254/latest/meta-data")],
        )
            .into_response();
    }
    (
        [("content-type", "application/json")],
        json!({"upstream": state.label, "path": path, "full_name": "o/r"}).to_string(),
    )
        .into_response()
}

impl Upstream {
    pub async fn start(label: &'static str) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .fallback(upstream_handler)
            .with_state(UpstreamState {
                label,
                seen: seen.clone(),
            });
        Self {
            url: serve_on_loopback(app).await,
            seen,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "bulkhead-server-test-{name}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a YAML map atomically (write + rename), as a rotation would.
pub fn write_map(path: &Path, entries: &[(&str, &str)]) {
    let map: BTreeMap<&str, &str> = entries.iter().copied().collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, yaml_serde::to_string(&map).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn hashed(keys: &[(&str, &str)]) -> Vec<(String, String)> {
    keys.iter()
        .map(|(caller, key)| {
            (
                (*caller).to_owned(),
                bulkhead_server::api_keys::hash_api_key(key),
            )
        })
        .collect()
}

fn write_keys(dir: &Path, keys: &[(&str, &str)]) {
    let hashed = hashed(keys);
    let refs: Vec<(&str, &str)> = hashed
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    write_map(&dir.join("keys.yaml"), &refs);
}

/// The server binary: `BULKHEAD_SERVER_BIN` when set (a copy that a build
/// of another checkout sharing the target directory cannot overwrite while
/// the tests run), else the one cargo built for these tests.
pub fn server_binary() -> PathBuf {
    std::env::var_os("BULKHEAD_SERVER_BIN").map_or_else(
        || env!("CARGO_BIN_EXE_bulkhead-server").into(),
        PathBuf::from,
    )
}

/// A running `bulkhead-server`.
pub struct TestServer {
    child: Child,
    pub mcp_url: String,
    pub admin_url: String,
    pub dir: Scratch,
}

impl TestServer {
    /// Starts the binary with `config` (YAML; `keys.yaml` and
    /// `credentials.yaml` in the scratch dir are referenced relatively),
    /// audit lines to `audit.log` in the scratch dir.
    pub async fn start(
        name: &str,
        config: &str,
        keys: &[(&str, &str)],
        credentials: &[(&str, &str)],
        extra_args: &[&str],
    ) -> Self {
        Self::start_with_stdout(name, config, keys, credentials, extra_args, false).await
    }

    /// As [`TestServer::start`]; with `piped_stdout` the audit stream is a
    /// pipe the test holds ([`TestServer::take_stdout`]) instead of a file.
    pub async fn start_with_stdout(
        name: &str,
        config: &str,
        keys: &[(&str, &str)],
        credentials: &[(&str, &str)],
        extra_args: &[&str],
        piped_stdout: bool,
    ) -> Self {
        bulkhead_server::connectors::upstream::install_crypto_provider();
        let dir = Scratch::new(name);
        std::fs::write(dir.0.join("server.yaml"), config).unwrap();
        write_map(&dir.0.join("credentials.yaml"), credentials);
        write_keys(&dir.0, keys);
        let ready_file = dir.0.join("ready.json");
        let child = Command::new(server_binary())
            .arg("--config")
            .arg(dir.0.join("server.yaml"))
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--ready-file")
            .arg(&ready_file)
            .args([
                "--secret-poll-seconds",
                "1",
                "--shutdown-grace-seconds",
                "5",
            ])
            .args(extra_args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(if piped_stdout {
                Stdio::piped()
            } else {
                std::fs::File::create(dir.0.join("audit.log"))
                    .unwrap()
                    .into()
            })
            .stderr(std::fs::File::create(dir.0.join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        let mut server = Self {
            child,
            mcp_url: String::new(),
            admin_url: String::new(),
            dir,
        };
        for _ in 0..400 {
            if let Ok(text) = std::fs::read_to_string(&ready_file)
                && let Ok(addrs) = serde_json::from_str::<Value>(&text)
            {
                server.mcp_url = format!("http://{}/mcp", addrs["mcp"].as_str().unwrap());
                server.admin_url = format!("http://{}", addrs["admin"].as_str().unwrap());
                break;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("server exited early ({status}): {}", server.stderr());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(
            !server.mcp_url.is_empty(),
            "server did not start: {}",
            server.stderr()
        );
        let client = http();
        for _ in 0..400 {
            if let Ok(r) = client
                .get(format!("{}/readyz", server.admin_url))
                .send()
                .await
                && r.status() == 200
            {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("server never became ready: {}", server.stderr());
    }

    /// The audit pipe of a server started with a piped stdout.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// The server's process id.
    /// `host:port` of the MCP listener, for tests that write raw HTTP.
    pub fn mcp_address(&self) -> String {
        self.mcp_url
            .trim_start_matches("http://")
            .trim_end_matches("/mcp")
            .to_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("stderr.log")).unwrap_or_default()
    }

    pub fn audit_text(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("audit.log")).unwrap_or_default()
    }

    pub fn audit(&self) -> Vec<Value> {
        self.audit_text()
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad audit line {l:?}: {e}"))
            })
            .collect()
    }

    pub fn rewrite_keys(&self, keys: &[(&str, &str)]) {
        write_keys(&self.dir.0, keys);
    }

    pub fn rewrite_credentials(&self, credentials: &[(&str, &str)]) {
        write_map(&self.dir.0.join("credentials.yaml"), credentials);
    }

    /// SIGTERM and wait; the process must exit cleanly.
    pub async fn stop(mut self) -> Self {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        for _ in 0..400 {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "server exited with {status}: {}",
                    self.stderr()
                );
                return self;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("server did not stop on SIGTERM");
    }

    pub async fn metrics(&self) -> String {
        http()
            .get(format!("{}/metrics", self.admin_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// An MCP client with `key` as bearer token.
    pub async fn client(&self, key: &str) -> Result<RunningService<rmcp::RoleClient, ()>, String> {
        let config =
            StreamableHttpClientTransportConfig::with_uri(self.mcp_url.as_str()).auth_header(key);
        ().serve(StreamableHttpClientTransport::from_config(config))
            .await
            .map_err(|e| e.to_string())
    }

    /// A raw JSON-RPC POST.
    pub async fn post(&self, key: Option<&str>, body: &str) -> reqwest::Response {
        let mut request = http()
            .post(&self.mcp_url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .body(body.to_owned());
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send().await.unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP client. Pooled connections idle for more than 1 s are not
/// reused: the server closes an idle keep-alive connection after its
/// header-read timeout (2 s or more in these tests), and a POST sent on a
/// connection the server is closing at that moment fails with an incomplete
/// message (POST is not retried).
pub fn http() -> reqwest::Client {
    bulkhead_server::connectors::upstream::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(1))
        .build()
        .unwrap()
}

/// The head of a raw `POST /mcp` with `Host: host`, the API key `key` and
/// `framing` (`Content-Length: N` or `Transfer-Encoding: chunked`), ending
/// with the blank line; the body is the caller's to write (or not).
pub fn post_head(host: &str, key: &str, framing: &str) -> String {
    format!(
        "POST /mcp HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         {framing}\r\n\r\n"
    )
}

/// `tools/call` body for `name` with `arguments`.
pub fn call_body(id: u64, name: &str, arguments: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": arguments}}).to_string()
}

pub async fn call(
    client: &RunningService<rmcp::RoleClient, ()>,
    name: &str,
    arguments: Value,
) -> CallToolResult {
    let params = CallToolRequestParams::new(name.to_owned())
        .with_arguments(arguments.as_object().cloned().unwrap_or_default());
    client.call_tool(params).await.unwrap()
}

pub fn text_of(result: &CallToolResult) -> String {
    serde_json::to_string(&result.content).unwrap()
}

/// A server configuration for tests.
pub fn config(tenant: &str, connectors: &str, extra: &str) -> String {
    format!(
        r#"
tenantId: {tenant}
allowedHosts: ["127.0.0.1", "localhost"]
allowedOrigins: ["https://app.example.com"]
apiKeys: {{type: file, path: keys.yaml}}
credentials: {{type: file, path: credentials.yaml}}
credentialKeys: [{{name: token, key: token}}]
credentialTtlSeconds: 1
connectors:
{connectors}
limits: {{maxBodyBytes: 4096, requestTimeoutSeconds: 10, upstreamTimeoutSeconds: 1}}
{extra}
"#
    )
}

/// A github connector on `base`, sending credential `token`.
pub fn github_connector(base: &str) -> String {
    format!(
        "  - {{name: github, type: github, baseUrl: \"{base}\", credential: token, allowPrivateTargets: true}}"
    )
}

/// An http connector on `base` with a small allow-list.
pub fn http_connector(base: &str) -> String {
    format!(
        "  - name: api\n    type: http\n    baseUrl: \"{base}\"\n    credential: token\n    allowPrivateTargets: true\n    allow:\n      - {{method: GET, path: \"/v1/items/*\"}}\n      - {{method: GET, path: \"/fail/**\"}}\n      - {{method: GET, path: \"/slow/**\"}}\n      - {{method: GET, path: \"/redirect/**\"}}"
    )
}
