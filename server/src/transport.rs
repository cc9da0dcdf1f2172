//! The MCP endpoint: Streamable HTTP on `/mcp`, with the security layers in
//! front of rmcp's stateless service.
//!
//! Order, cheapest refusal first: a place in the audit queue (none, or the
//! audit stream has failed: 503, fail closed), readiness, `Host`/`Origin` (before authentication, so a
//! DNS-rebinding page learns nothing about keys), API key or access token
//! ([`crate::authentication`]), the caller's bound on requests in flight
//! ([`crate::in_flight`]), per-caller rate limit (before the body is
//! read, so one key cannot hold many slow uploads), body size, the JSON-RPC
//! checks of [`crate::jsonrpc`]; then rmcp within the request timeout; then
//! metrics and exactly one audit line, whatever the outcome. The line is
//! owned by a guard (`RequestAudit`), so a request whose future is dropped
//! (the caller closed the connection) or that panics is still audited, and a
//! server shutdown past its grace period ends a request with its own
//! outcome.
//!
//! With OAuth configured the same listener serves the Protected Resource
//! Metadata (RFC 9728) without authentication, behind the same `Host` and
//! `Origin` checks.
//!
//! rmcp runs stateless (`legacy_session_mode: false`) with JSON responses:
//! every POST carries everything needed, so replicas behind one Service need
//! no sticky sessions. rmcp checks `Host` and `Origin` too, from the same
//! lists, as a second line.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::StreamableHttpService;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditLog, AuditRecord, AuditSlot, MAX_FIELD_CHARS, Outcome, digest_arguments};
use crate::authentication::Authenticator;
use crate::handler::TenantServer;
use crate::identity::{AuthMethod, CallContext, CallerId, TenantId};
use crate::in_flight::InFlightLimit;
use crate::jsonrpc;
use crate::metrics::{Metrics, RequestLabels, method_label};
use crate::origin_policy::OriginPolicy;
use crate::rate_limit::{RateLimits, retry_after_seconds};
use crate::refusal::{CLIENT_CLOSED, INVALID_PARAMS, Refusal};
use crate::tools::ToolReport;

/// The rmcp service type this server runs.
pub type McpService = StreamableHttpService<TenantServer, NeverSessionManager>;

/// Everything the MCP endpoint needs.
pub struct McpEndpoint {
    /// The configured tenant.
    pub tenant: TenantId,
    /// How callers are verified.
    pub auth: Authenticator,
    /// Rate limiters.
    pub rate_limits: Arc<RateLimits>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Audit trail.
    pub audit: AuditLog,
    /// Host and Origin checks.
    pub origin_policy: OriginPolicy,
    /// Requests in flight per caller.
    pub in_flight: InFlightLimit,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Time a request may take.
    pub request_timeout: Duration,
    /// The rmcp service.
    pub mcp: McpService,
    /// Cancelled when the shutdown grace period is over: requests still
    /// running end with outcome `shutdown`.
    pub shutdown: CancellationToken,
}

/// What the audit line needs, filled in as the request proceeds.
struct Pending {
    caller: Option<CallerId>,
    method: Option<String>,
    tool: Option<String>,
    args_sha256: Option<String>,
    outcome: Outcome,
    upstream_status: Option<u16>,
    /// What the MCP handler reports, once the request reached it.
    report: Option<Arc<Mutex<ToolReport>>>,
}

impl Pending {
    /// Whether a tool call had begun and not finished.
    fn tool_running(&self) -> bool {
        self.report
            .as_ref()
            .and_then(|r| r.lock().ok().map(|r| r.started && r.outcome.is_none()))
            .unwrap_or(false)
    }
}

/// The one audit line of a request and its count in
/// `bulkhead_mcp_requests_total`: written by [`RequestAudit::write`], or, if
/// the request's future is dropped first, by `Drop` with outcome
/// `client_closed` (`internal_error` while panicking).
struct RequestAudit {
    endpoint: Arc<McpEndpoint>,
    slot: Option<AuditSlot>,
    started: Instant,
    ts: String,
    request_id: Arc<str>,
    pending: Pending,
}

impl RequestAudit {
    fn write(&mut self, http_status: u16) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        let pending = &mut self.pending;
        let tool_cancelled = matches!(
            pending.outcome,
            Outcome::ClientClosed | Outcome::Timeout | Outcome::Shutdown | Outcome::InternalError
        ) && pending.tool_running();
        self.endpoint
            .metrics
            .requests
            .get_or_create(&RequestLabels {
                method: method_label(pending.method.as_deref()),
                outcome: pending.outcome.as_str(),
            })
            .inc();
        slot.write(AuditRecord {
            ts: std::mem::take(&mut self.ts),
            tenant: Arc::from(self.endpoint.tenant.as_str()),
            caller: pending.caller.as_ref().map(|c| Arc::from(c.as_str())),
            auth: pending
                .caller
                .as_ref()
                .map_or(AuthMethod::None, CallerId::method),
            request_id: self.request_id.clone(),
            method: pending.method.take(),
            tool: pending.tool.take(),
            args_sha256: pending.args_sha256.take(),
            outcome: pending.outcome,
            http_status,
            latency_ms: self.started.elapsed().as_secs_f64() * 1000.0,
            upstream_status: pending.upstream_status,
            tool_cancelled,
        });
    }
}

impl Drop for RequestAudit {
    fn drop(&mut self) {
        if self.slot.is_some() {
            let (outcome, status) = if std::thread::panicking() {
                (Outcome::InternalError, 500)
            } else {
                (Outcome::ClientClosed, CLIENT_CLOSED.as_u16())
            };
            self.pending.outcome = outcome;
            self.write(status);
        }
    }
}

/// The JSON-RPC fields the transport needs, read without copying.
#[derive(Deserialize)]
struct Envelope<'a> {
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
    text.chars().take(MAX_FIELD_CHARS).collect()
}

/// The `/mcp` handler: a place in the audit queue, the gates and the MCP
/// handler, then metrics and one audit line whatever the outcome.
pub async fn serve_mcp(State(endpoint): State<Arc<McpEndpoint>>, request: Request) -> Response {
    let started = Instant::now();
    let request_id: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
    let slot = match endpoint.audit.reserve() {
        Ok(slot) => slot,
        Err(unavailable) => {
            let refusal = Refusal::AuditUnavailable(unavailable);
            refusal.observe(&endpoint.metrics, &request_id);
            return refusal.into_response();
        }
    };
    let mut audit = RequestAudit {
        endpoint: endpoint.clone(),
        slot: Some(slot),
        started,
        ts: jiff::Timestamp::now().to_string(),
        request_id: request_id.clone(),
        pending: Pending {
            caller: None,
            method: None,
            tool: None,
            args_sha256: None,
            outcome: Outcome::Ok,
            upstream_status: None,
            report: None,
        },
    };
    let result = tokio::select! {
        // Shutdown first: rmcp ends its requests on the same signal.
        biased;
        () = endpoint.shutdown.cancelled() => Err(Refusal::ShuttingDown),
        result = endpoint.process(request, &request_id, &mut audit.pending) => result,
    };
    let mut response = match result {
        Ok(response) => response,
        Err(refusal) => {
            refusal.observe(&endpoint.metrics, &request_id);
            audit.pending.outcome = refusal.outcome();
            refusal.into_response()
        }
    };
    audit.write(response.status().as_u16());
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

impl McpEndpoint {
    /// The gates, cheapest refusal first, then rmcp within the timeout.
    async fn process(
        &self,
        request: Request,
        request_id: &Arc<str>,
        pending: &mut Pending,
    ) -> Result<Response, Refusal> {
        if !self.auth.is_ready() {
            return Err(Refusal::NotReady);
        }
        self.origin_policy
            .check(request.headers(), request.uri())
            .map_err(Refusal::Forbidden)?;
        let (caller, grants) = match self.auth.authenticate(request.headers()).await {
            Ok(authenticated) => authenticated,
            Err(refused) => {
                pending.caller = refused.caller;
                return Err(refused.refusal);
            }
        };
        pending.caller = Some(caller.clone());
        // Held until this request ends, so one caller cannot hold the audit
        // places of everyone (module `in_flight`).
        let Some(_in_flight) = self.in_flight.try_acquire(&caller) else {
            return Err(Refusal::TooManyInFlight);
        };
        // Before the body is read, so one key cannot hold many slow bodies
        // open (the refusal then carries no id: JSON-RPC 2.0 section 5).
        if let Err(wait) = self.rate_limits.check_caller(&caller) {
            return Err(Refusal::RateLimited {
                id: None,
                retry_after_seconds: retry_after_seconds(wait),
            });
        }
        let (mut parts, body) = request.into_parts();
        let is_post = parts.method == Method::POST;
        let (bytes, id) = if is_post {
            let bytes = self.read_body(&parts.headers, body).await?;
            let id = read_envelope(&bytes, pending)?;
            (bytes, id)
        } else {
            (Bytes::new(), None)
        };
        let context = CallContext {
            tenant: self.tenant.clone(),
            caller,
            grants,
            request_id: request_id.clone(),
            report: Arc::new(Mutex::new(ToolReport::default())),
        };
        parts.extensions.insert(context.clone());
        pending.report = Some(context.report.clone());
        let request = Request::from_parts(parts, Body::from(bytes));
        let Ok(response) =
            tokio::time::timeout(self.request_timeout, self.mcp.handle(request)).await
        else {
            return Err(Refusal::Timeout {
                id,
                seconds: self.request_timeout.as_secs(),
            });
        };
        Ok(judge(response.map(Body::new), is_post, context.report(), pending).await)
    }

    /// The body, at most `max_body_bytes`. The read counts against the
    /// request timeout too, so a caller trickling a body cannot hold a
    /// request open forever.
    async fn read_body(&self, headers: &HeaderMap, body: Body) -> Result<Bytes, Refusal> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > self.max_body_bytes) {
            return Err(Refusal::PayloadTooLarge);
        }
        match tokio::time::timeout(
            self.request_timeout,
            axum::body::to_bytes(body, self.max_body_bytes),
        )
        .await
        {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(error)) if failed_in_transport(&error) => Err(Refusal::BodyAborted),
            Ok(Err(_)) => Err(Refusal::PayloadTooLarge),
            Err(_) => Err(Refusal::BodyTimeout),
        }
    }
}

/// Whether reading a body failed in hyper (the connection closed or broke
/// before the body's end) rather than at the size limit.
fn failed_in_transport(error: &axum::Error) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = current {
        if error.is::<hyper::Error>() {
            return true;
        }
        current = error.source();
    }
    false
}

/// Checks the body with [`jsonrpc::check`] and fills in method, tool and
/// argument digest; returns the JSON-RPC id (raw JSON) for error replies
/// made here.
fn read_envelope(bytes: &[u8], pending: &mut Pending) -> Result<Option<String>, Refusal> {
    let checked = jsonrpc::check(bytes);
    if let Err(invalid) = checked {
        let id = invalid.id.as_ref().map(ToString::to_string);
        if invalid.code != INVALID_PARAMS {
            return Err(Refusal::BadRequest {
                id,
                code: invalid.code,
                message: invalid.message,
            });
        }
        fill_pending(bytes, pending);
        return Err(Refusal::InvalidParams {
            id,
            message: invalid.message,
        });
    }
    Ok(fill_pending(bytes, pending))
}

/// Method, tool and argument digest for the audit line, read without
/// copying; returns the raw id.
fn fill_pending(bytes: &[u8], pending: &mut Pending) -> Option<String> {
    let envelope = serde_json::from_slice::<Envelope<'_>>(bytes).ok()?;
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
    envelope.id.map(|id| id.get().to_owned())
}

/// The outcome of a request rmcp answered: what the tool reported, else
/// what the response says.
async fn judge(
    response: Response,
    is_post: bool,
    report: ToolReport,
    pending: &mut Pending,
) -> Response {
    pending.upstream_status = report.upstream_status;
    if let Some(outcome) = report.outcome {
        pending.outcome = outcome.into();
        return response;
    }
    let status = response.status();
    if status == StatusCode::FORBIDDEN {
        pending.outcome = Outcome::Forbidden;
    } else if status.is_client_error() {
        pending.outcome = Outcome::BadRequest;
    } else if status.is_server_error() {
        // rmcp answers 5xx only when it fails itself (the handler panicked
        // or could not be reached).
        pending.outcome = Outcome::InternalError;
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

/// Protected Resource Metadata (RFC 9728 section 3.2), at the paths
/// [`crate::oauth::ResourceServer::serves_metadata_at`] lists; 404
/// elsewhere under the well-known prefix.
async fn serve_resource_metadata(
    State(endpoint): State<Arc<McpEndpoint>>,
    request: Request,
) -> Response {
    let Some(oauth) = &endpoint.auth.oauth else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if let Err(reason) = endpoint
        .origin_policy
        .check(request.headers(), request.uri())
    {
        return Refusal::Forbidden(reason).into_response();
    }
    if !oauth.serves_metadata_at(request.uri().path()) {
        return StatusCode::NOT_FOUND.into_response();
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        oauth.metadata_document().to_owned(),
    )
        .into_response()
}

/// The router for the MCP listener: `/mcp`, and the Protected Resource
/// Metadata when OAuth is configured.
pub fn router(endpoint: Arc<McpEndpoint>) -> axum::Router {
    let mut router = axum::Router::new().route(
        bulkhead_crds::server_config::MCP_PATH,
        axum::routing::any(serve_mcp),
    );
    if endpoint.auth.oauth.is_some() {
        let prefix = crate::oauth::PROTECTED_RESOURCE_METADATA;
        router = router
            .route(prefix, axum::routing::any(serve_resource_metadata))
            .route(
                &format!("{prefix}/{{*path}}"),
                axum::routing::any(serve_resource_metadata),
            );
    }
    router.with_state(endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

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
