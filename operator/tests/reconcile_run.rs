//! `bulkhead-operator run` as a process, against a minimal API server on
//! loopback: startup, leader election, the admin endpoints, and graceful
//! shutdown on SIGTERM that hands the Lease back.
//!
//! The API server here answers only what startup needs (empty lists, watches
//! that stay open, one Lease); reconciling is covered by `reconcile.rs`.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Default)]
struct FakeApi {
    lease: Mutex<Option<Value>>,
    /// Holder identity written by every Lease create or replace, in order.
    holders: Mutex<Vec<Option<String>>>,
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

async fn handle(State(api): State<Arc<FakeApi>>, request: Request) -> Response {
    let method = request.method().clone();
    let uri = request.uri().to_string();
    let body = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    if uri.contains("/leases") {
        let mut lease = api.lease.lock().unwrap();
        if method == Method::GET {
            return match lease.as_ref() {
                Some(l) => json_response(StatusCode::OK, l),
                None => json_response(
                    StatusCode::NOT_FOUND,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
                ),
            };
        }
        let mut object: Value = serde_json::from_slice(&body).unwrap_or_default();
        let version = lease
            .as_ref()
            .and_then(|l| {
                l["metadata"]["resourceVersion"]
                    .as_str()?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0);
        object["metadata"]["resourceVersion"] = json!((version + 1).to_string());
        api.holders
            .lock()
            .unwrap()
            .push(object["spec"]["holderIdentity"].as_str().map(str::to_owned));
        *lease = Some(object.clone());
        let status = if method == Method::POST {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        return json_response(status, &object);
    }
    if uri.contains("watch=") {
        // A watch that stays open and reports nothing.
        let stream = futures::stream::pending::<Result<Vec<u8>, std::io::Error>>();
        return Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from_stream(stream))
            .unwrap();
    }
    json_response(
        StatusCode::OK,
        &json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": []}),
    )
}

async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn run_leads_serves_admin_and_hands_the_lease_back_on_sigterm() {
    let api = Arc::new(FakeApi::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(handle).with_state(api.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let kubeconfig =
        std::env::temp_dir().join(format!("bulkhead-run-test-{}.yaml", std::process::id()));
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: t\n\
             clusters: [{{name: t, cluster: {{server: \"http://{api_addr}\"}}}}]\n\
             users: [{{name: t, user: {{token: test}}}}]\n\
             contexts: [{{name: t, context: {{cluster: t, user: t}}}}]\n"
        ),
    )
    .unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut operator = Command::new(env!("CARGO_BIN_EXE_bulkhead-operator"))
        .args([
            "run",
            "--admin-addr",
            &admin.to_string(),
            "--lease-retry-period-seconds",
            "1",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", "replica-a")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    while http_status(admin, "/readyz").await != Some(200) || api.holders.lock().unwrap().is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "operator did not become ready and leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(http_status(admin, "/healthz").await, Some(200));
    assert_eq!(http_status(admin, "/metrics").await, Some(200));
    assert_eq!(api.holders.lock().unwrap()[0].as_deref(), Some("replica-a"));

    let terminated = Command::new("kill")
        .args(["-TERM", &operator.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = operator.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "operator did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = std::fs::remove_file(&kubeconfig);
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");
    assert_eq!(
        api.holders.lock().unwrap().last(),
        Some(&None),
        "the Lease is handed back so a standby takes over at once"
    );
}
