//! The MCP endpoint: Streamable HTTP on `/mcp`, with the security layers in
//! front of rmcp's stateless service.
//!
//! Order, cheapest refusal first: readiness, `Host`/`Origin` (before
//! authentication, so a DNS-rebinding page learns nothing about keys), API
//! key, body size, per-caller rate limit; then rmcp within the request
//! timeout; then metrics and one audit line, whatever the outcome.
//!
//! rmcp runs stateless (`legacy_session_mode: false`) with JSON responses:
//! every POST carries everything needed, so replicas behind one Service need
//! no sticky sessions. rmcp checks `Host` and `Origin` too, from the same
//! lists, as a second line.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::StreamableHttpService;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use serde::Deserialize;
use serde_json::value::RawValue;
use url::Url;

use crate::api_keys::{ApiKeyStore, AuthFailure};
use crate::audit::{AuditLog, AuditRecord, Outcome, digest_arguments};
use crate::handler::TenantServer;
use crate::identity::{CallContext, CallerId, TenantId};
use crate::metrics::{AuthLabels, Metrics, RateLimitLabels, RequestLabels, method_label};
use crate::rate_limit::{RateLimits, retry_after_seconds};
use crate::tools::{ToolOutcome, ToolReport};

/// Caller id used with `--insecure-no-auth`.
pub const ANONYMOUS_CALLER: &str = "anonymous";

/// The rmcp service type this server runs.
pub type McpService = StreamableHttpService<TenantServer, NeverSessionManager>;

/// Host and Origin allow-lists (from the configuration).
#[derive(Clone, Debug)]
pub struct OriginPolicy {
    hosts: Vec<(String, Option<u16>)>,
    origins: Vec<AllowedOrigin>,
}

#[derive(Clone, Debug)]
enum AllowedOrigin {
    Null,
    Tuple {
        scheme: String,
        host: String,
        port: Option<u16>,
    },
}

fn split_authority(value: &str) -> Option<(String, Option<u16>)> {
    let authority: axum::http::uri::Authority = value.trim().parse().ok()?;
    Some((
        authority
            .host()
            .trim_matches(['[', ']'])
            .to_ascii_lowercase(),
        authority.port_u16(),
    ))
}

impl OriginPolicy {
    /// Policy from `allowedHosts` and `allowedOrigins`. Entries that do not
    /// parse match nothing.
    pub fn new(hosts: &[String], origins: &[String]) -> Self {
        Self {
            hosts: hosts
                .iter()
                .filter(|h| !h.trim().is_empty())
                .map(|h| {
                    // A bare IPv6 address ("::1") is not an authority; take
                    // it as a host that matches any port.
                    split_authority(h).unwrap_or_else(|| {
                        (h.trim().trim_matches(['[', ']']).to_ascii_lowercase(), None)
                    })
                })
                .collect(),
            origins: origins
                .iter()
                .filter_map(|o| {
                    let o = o.trim();
                    if o == "null" {
                        return Some(AllowedOrigin::Null);
                    }
                    let (base, any_port) = match o.strip_suffix(":*") {
                        Some(base) => (base, true),
                        None => (o, false),
                    };
                    let url = Url::parse(base).ok()?;
                    Some(AllowedOrigin::Tuple {
                        scheme: url.scheme().to_owned(),
                        host: url
                            .host_str()?
                            .trim_matches(['[', ']'])
                            .to_ascii_lowercase(),
                        port: if any_port {
                            None
                        } else {
                            url.port_or_known_default()
                        },
                    })
                })
                .collect(),
        }
    }

    /// `Err` with the reason when `Host` or `Origin` is not allowed. A
    /// request without `Origin` (not from a browser) passes the origin check.
    pub fn check(&self, headers: &HeaderMap, uri: &axum::http::Uri) -> Result<(), &'static str> {
        let host = match headers.get(header::HOST) {
            Some(value) => value.to_str().ok().and_then(split_authority),
            None => uri.authority().and_then(|a| split_authority(a.as_str())),
        }
        .ok_or("Forbidden: Host header is missing or malformed")?;
        let host_ok = self
            .hosts
            .iter()
            .any(|(allowed, port)| *allowed == host.0 && port.is_none_or(|p| host.1 == Some(p)));
        if !host_ok {
            return Err("Forbidden: Host header is not allowed");
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = origin
            .to_str()
            .map_err(|_| "Forbidden: Origin header is not allowed")?;
        let allowed = if origin.trim() == "null" {
            self.origins
                .iter()
                .any(|o| matches!(o, AllowedOrigin::Null))
        } else {
            let url = Url::parse(origin).map_err(|_| "Forbidden: Origin header is not allowed")?;
            let host = url
                .host_str()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_ascii_lowercase();
            let port = url.port_or_known_default();
            self.origins.iter().any(|o| match o {
                AllowedOrigin::Null => false,
                AllowedOrigin::Tuple {
                    scheme,
                    host: h,
                    port: p,
                } => scheme == url.scheme() && *h == host && p.is_none_or(|p| Some(p) == port),
            })
        };
        if allowed {
            Ok(())
        } else {
            Err("Forbidden: Origin header is not allowed")
        }
    }
}

/// Everything the MCP endpoint needs.
pub struct McpEndpoint {
    /// The configured tenant.
    pub tenant: TenantId,
    /// API keys; `None` only with `--insecure-no-auth`.
    pub keys: Option<ApiKeyStore>,
    /// Rate limiters.
    pub rate_limits: Arc<RateLimits>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Audit trail.
    pub audit: AuditLog,
    /// Host and Origin checks.
    pub origin_policy: OriginPolicy,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Time a request may take.
    pub request_timeout: Duration,
    /// The rmcp service.
    pub mcp: McpService,
}

/// What the audit line needs, filled in as the request proceeds.
struct Pending {
    caller: Option<CallerId>,
    method: Option<String>,
    tool: Option<String>,
    args_sha256: Option<String>,
    outcome: Outcome,
    upstream_status: Option<u16>,
}

/// The JSON-RPC fields the transport needs, read without copying.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    jsonrpc: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct CallParams<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
}

/// Audit fields are bounded: a caller cannot grow a line with a huge name.
fn bounded(text: &str) -> String {
    text.chars().take(128).collect()
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

fn jsonrpc_error(
    status: StatusCode,
    id: Option<&str>,
    code: i64,
    message: &str,
    data: serde_json::Value,
) -> Response {
    let id: serde_json::Value = id
        .and_then(|raw| serde_json::from_str(raw).ok())
        .unwrap_or(serde_json::Value::Null);
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": code, "message": message, "data": data}
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The `/mcp` handler.
pub async fn serve_mcp(State(endpoint): State<Arc<McpEndpoint>>, request: Request) -> Response {
    let started = Instant::now();
    let ts = jiff::Timestamp::now().to_string();
    let request_id: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
    let mut pending = Pending {
        caller: None,
        method: None,
        tool: None,
        args_sha256: None,
        outcome: Outcome::Ok,
        upstream_status: None,
    };
    let mut response = endpoint.process(request, &request_id, &mut pending).await;
    let status = response.status();
    endpoint
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            method: method_label(pending.method.as_deref()),
            outcome: pending.outcome.as_str(),
        })
        .inc();
    endpoint.audit.record(AuditRecord {
        ts,
        tenant: Arc::from(endpoint.tenant.as_str()),
        caller: pending.caller.as_ref().map(|c| Arc::from(c.as_str())),
        request_id: request_id.clone(),
        method: pending.method,
        tool: pending.tool,
        args_sha256: pending.args_sha256,
        outcome: pending.outcome,
        http_status: status.as_u16(),
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
        upstream_status: pending.upstream_status,
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

impl McpEndpoint {
    async fn process(
        &self,
        request: Request,
        request_id: &Arc<str>,
        pending: &mut Pending,
    ) -> Response {
        if self.keys.as_ref().is_some_and(|k| !k.is_loaded()) {
            pending.outcome = Outcome::Unavailable;
            let mut response = plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable: not ready",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        if let Err(reason) = self.origin_policy.check(request.headers(), request.uri()) {
            tracing::warn!(request_id = %request_id, reason, "request refused");
            pending.outcome = Outcome::Forbidden;
            return plain(StatusCode::FORBIDDEN, reason);
        }
        let caller = match &self.keys {
            None => CallerId::new(ANONYMOUS_CALLER),
            Some(keys) => {
                let authorization = request
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok());
                match keys.verify_authorization(authorization) {
                    Ok(caller) => caller,
                    Err(failure) => return self.unauthorized(failure, pending),
                }
            }
        };
        pending.caller = Some(caller.clone());

        let (mut parts, body) = request.into_parts();
        let is_post = parts.method == Method::POST;
        let bytes = if is_post {
            let declared = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok());
            if declared.is_some_and(|n| n > self.max_body_bytes) {
                pending.outcome = Outcome::PayloadTooLarge;
                return plain(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large");
            }
            // The body read counts against the request timeout too, so a
            // caller trickling a body cannot hold a request open forever.
            match tokio::time::timeout(
                self.request_timeout,
                axum::body::to_bytes(body, self.max_body_bytes),
            )
            .await
            {
                Ok(Ok(bytes)) => bytes,
                Ok(Err(_)) => {
                    pending.outcome = Outcome::PayloadTooLarge;
                    return plain(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large");
                }
                Err(_) => {
                    pending.outcome = Outcome::Timeout;
                    return plain(StatusCode::REQUEST_TIMEOUT, "Request Timeout");
                }
            }
        } else {
            axum::body::Bytes::new()
        };

        let id = if is_post {
            match self.read_envelope(&bytes, pending) {
                Ok(id) => id,
                Err(response) => {
                    pending.outcome = Outcome::BadRequest;
                    return *response;
                }
            }
        } else {
            None
        };
        let id = id.as_deref();

        if let Err(wait) = self.rate_limits.check_caller(&caller) {
            self.metrics
                .rate_limited
                .get_or_create(&RateLimitLabels { scope: "caller" })
                .inc();
            pending.outcome = Outcome::RateLimited;
            let seconds = retry_after_seconds(wait);
            let mut response = jsonrpc_error(
                StatusCode::TOO_MANY_REQUESTS,
                id,
                -32000,
                &format!("rate limit exceeded; retry after {seconds} s"),
                serde_json::json!({"retryAfterSeconds": seconds}),
            );
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }

        let context = CallContext {
            tenant: self.tenant.clone(),
            caller,
            request_id: request_id.clone(),
            report: Arc::new(Mutex::new(ToolReport::default())),
        };
        parts.extensions.insert(context.clone());
        let request = Request::from_parts(parts, Body::from(bytes));
        let response =
            match tokio::time::timeout(self.request_timeout, self.mcp.handle(request)).await {
                Ok(response) => response.map(Body::new),
                Err(_) => {
                    pending.outcome = Outcome::Timeout;
                    return jsonrpc_error(
                        StatusCode::GATEWAY_TIMEOUT,
                        id,
                        -32001,
                        &format!(
                            "request did not finish within {} s",
                            self.request_timeout.as_secs()
                        ),
                        serde_json::Value::Null,
                    );
                }
            };

        let report = context.report();
        pending.upstream_status = report.upstream_status;
        if let Some(outcome) = report.outcome {
            pending.outcome = match outcome {
                ToolOutcome::Ok => Outcome::Ok,
                ToolOutcome::ToolError => Outcome::ToolError,
                ToolOutcome::UpstreamError => Outcome::UpstreamError,
                ToolOutcome::RateLimited => Outcome::RateLimited,
            };
            return response;
        }
        let status = response.status();
        if status == StatusCode::FORBIDDEN {
            pending.outcome = Outcome::Forbidden;
        } else if status.is_client_error() {
            pending.outcome = Outcome::BadRequest;
        } else if status.is_server_error() {
            pending.outcome = Outcome::RpcError;
        } else if is_post && is_json(&response) {
            // Not a tool call (or an unknown tool): a JSON-RPC error shows
            // only in the body.
            let (parts, body) = response.into_parts();
            let bytes = axum::body::to_bytes(body, usize::MAX)
                .await
                .unwrap_or_default();
            if is_jsonrpc_error(&bytes) {
                pending.outcome = Outcome::RpcError;
            }
            return Response::from_parts(parts, Body::from(bytes));
        }
        response
    }

    /// Fills in method, tool and argument digest; returns the JSON-RPC id
    /// (raw JSON) for error replies made here. A body that is not a JSON-RPC
    /// message gets the JSON-RPC error for it, with HTTP 400.
    fn read_envelope(
        &self,
        bytes: &[u8],
        pending: &mut Pending,
    ) -> Result<Option<String>, Box<Response>> {
        let Ok(envelope) = serde_json::from_slice::<Envelope<'_>>(bytes) else {
            let (code, message) = if serde_json::from_slice::<&RawValue>(bytes).is_err() {
                (-32700, "Parse error: the body is not JSON")
            } else {
                (
                    -32600,
                    "Invalid Request: expected one JSON-RPC 2.0 message object",
                )
            };
            return Err(Box::new(jsonrpc_error(
                StatusCode::BAD_REQUEST,
                None,
                code,
                message,
                serde_json::Value::Null,
            )));
        };
        if envelope.jsonrpc.as_deref() != Some("2.0")
            || (envelope.method.is_none() && envelope.id.is_none())
        {
            return Err(Box::new(jsonrpc_error(
                StatusCode::BAD_REQUEST,
                envelope.id.map(RawValue::get),
                -32600,
                "Invalid Request: expected a JSON-RPC 2.0 message",
                serde_json::Value::Null,
            )));
        }
        pending.method = envelope.method.as_deref().map(bounded);
        if envelope.method.as_deref() == Some("tools/call")
            && let Some(params) = envelope
                .params
                .and_then(|p| serde_json::from_str::<CallParams<'_>>(p.get()).ok())
        {
            pending.tool = params.name.as_deref().map(bounded);
            pending.args_sha256 = Some(digest_arguments(
                params
                    .arguments
                    .map_or(b"{}".as_slice(), |a| a.get().as_bytes()),
            ));
        }
        Ok(envelope.id.map(|id| id.get().to_owned()))
    }

    fn unauthorized(&self, failure: AuthFailure, pending: &mut Pending) -> Response {
        self.metrics
            .auth_failures
            .get_or_create(&AuthLabels {
                reason: failure.as_str(),
            })
            .inc();
        pending.outcome = Outcome::Unauthenticated;
        let challenge = match failure {
            AuthFailure::Missing => r#"Bearer realm="bulkhead""#,
            AuthFailure::Invalid => r#"Bearer realm="bulkhead", error="invalid_token""#,
        };
        let mut response = plain(StatusCode::UNAUTHORIZED, "Unauthorized");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
        response
    }
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

fn is_jsonrpc_error(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Reply<'a> {
        #[serde(borrow, default)]
        error: Option<&'a RawValue>,
    }
    serde_json::from_slice::<Reply<'_>>(body).is_ok_and(|r| r.error.is_some())
}

/// The router for the MCP listener.
pub fn router(endpoint: Arc<McpEndpoint>) -> axum::Router {
    axum::Router::new()
        .route(
            bulkhead_crds::server_config::MCP_PATH,
            axum::routing::any(serve_mcp),
        )
        .with_state(endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(host: &str, origin: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        headers
    }

    #[test]
    fn host_and_origin_must_be_listed() {
        let policy = OriginPolicy::new(
            &[
                "mcp.bulkhead-acme.svc".into(),
                "localhost:8080".into(),
                "::1".into(),
            ],
            &[
                "https://app.example.com".into(),
                "http://localhost:*".into(),
            ],
        );
        let uri = axum::http::Uri::from_static("/mcp");
        assert!(
            policy
                .check(&headers("mcp.bulkhead-acme.svc:8080", None), &uri)
                .is_ok()
        );
        assert!(policy.check(&headers("localhost:8080", None), &uri).is_ok());
        assert!(
            policy
                .check(&headers("localhost:9999", None), &uri)
                .is_err()
        );
        assert!(
            policy
                .check(&headers("evil.example.com", None), &uri)
                .is_err()
        );
        assert!(
            policy
                .check(
                    &headers("localhost:8080", Some("https://app.example.com")),
                    &uri
                )
                .is_ok()
        );
        assert!(
            policy
                .check(
                    &headers("localhost:8080", Some("https://app.example.com:8443")),
                    &uri
                )
                .is_err()
        );
        assert!(
            policy
                .check(
                    &headers("localhost:8080", Some("http://localhost:3000")),
                    &uri
                )
                .is_ok()
        );
        assert!(
            policy
                .check(
                    &headers("localhost:8080", Some("https://evil.example.com")),
                    &uri
                )
                .is_err()
        );
        assert!(
            policy
                .check(&headers("localhost:8080", Some("null")), &uri)
                .is_err()
        );
    }

    #[test]
    fn jsonrpc_errors_are_recognised() {
        assert!(is_jsonrpc_error(
            br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"x"}}"#
        ));
        assert!(!is_jsonrpc_error(
            br#"{"jsonrpc":"2.0","id":1,"result":{}}"#
        ));
    }
}
