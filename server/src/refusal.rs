//! Every way the MCP endpoint refuses a request, and what a refusal means
//! to the caller (the HTTP response) and to the audit trail and metrics
//! (the outcome and counters), decided in one place.
//!
//! Refusals before the body is read are plain text, since the caller may
//! not even speak JSON-RPC; refusals of a JSON-RPC message are JSON-RPC
//! errors (JSON-RPC 2.0, section 5.1) carrying the request's `id`.

use std::borrow::Cow;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::api_keys::AuthFailure;
use crate::audit::{AuditUnavailable, Outcome};
use crate::metrics::{AuditRefusedLabels, AuthLabels, Metrics, RateLimitLabels};
use crate::oauth::BearerChallenge;

/// JSON-RPC: the body is not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC: the JSON is not a valid request object.
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC: the params do not fit the method.
pub const INVALID_PARAMS: i64 = -32602;
/// Implementation-defined server error: the caller's rate limit is used up.
pub const RATE_LIMITED: i64 = -32000;
/// Implementation-defined server error: the request timed out.
pub const TIMED_OUT: i64 = -32001;

/// Status of a request whose caller left before the answer: none was
/// sent; 499 is the code nginx logs for it.
pub const CLIENT_CLOSED: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => StatusCode::BAD_REQUEST,
};

/// Why a request was refused.
#[derive(Debug)]
pub enum Refusal {
    /// Callers cannot be verified yet: API keys not loaded, or the OAuth
    /// issuer's keys never fetched (503, `Retry-After: 1`).
    NotReady,
    /// The request could not be audited, so it is not served (503,
    /// `Retry-After: 1`): the audit queue is full, or a write to stdout
    /// failed and the trail stays failed. Counted in
    /// `bulkhead_audit_refused_total{reason}`; it has no audit line.
    AuditUnavailable(AuditUnavailable),
    /// The server is shutting down and the grace period is over
    /// (503, `Retry-After: 1`).
    ShuttingDown,
    /// `Host` or `Origin` is not allowed (403); the text says which.
    Forbidden(&'static str),
    /// No, an unknown API key or an invalid access token (401 with a
    /// `WWW-Authenticate` challenge, RFC 6750 section 3). With OAuth
    /// configured the challenge names the Protected Resource Metadata
    /// (RFC 9728 section 5.1); with API keys only it is
    /// `Bearer realm="bulkhead"`.
    Unauthenticated {
        /// What was wrong.
        failure: AuthFailure,
        /// The OAuth challenges, when OAuth is configured.
        challenge: Option<BearerChallenge>,
    },
    /// A valid access token without a required scope (403 with
    /// `error="insufficient_scope"`, RFC 6750 section 3.1).
    InsufficientScope(BearerChallenge),
    /// The body is larger than the configured limit (413).
    PayloadTooLarge,
    /// The body did not arrive within the request timeout (408).
    BodyTimeout,
    /// The connection closed or broke before the whole body arrived: the
    /// caller left (499, the code nginx logs for it; nobody receives it),
    /// audited as `client_closed`.
    BodyAborted,
    /// The body is not a JSON-RPC 2.0 message (400, JSON-RPC error).
    BadRequest {
        /// The request's `id` as raw JSON, if it could be read.
        id: Option<String>,
        /// [`PARSE_ERROR`] or [`INVALID_REQUEST`].
        code: i64,
        /// What is wrong.
        message: Cow<'static, str>,
    },
    /// The params do not fit the method (HTTP 200 with JSON-RPC error
    /// [`INVALID_PARAMS`], as rmcp answers an unknown tool).
    InvalidParams {
        /// The request's `id` as raw JSON.
        id: Option<String>,
        /// What is wrong.
        message: Cow<'static, str>,
    },
    /// The caller's request budget is used up (429 with `Retry-After`).
    RateLimited {
        /// The request's `id` as raw JSON.
        id: Option<String>,
        /// Seconds until a request is allowed again.
        retry_after_seconds: u64,
    },
    /// The caller already has `maxRequestsInFlightPerCaller` requests in
    /// flight (429 with `Retry-After: 1`); counted in
    /// `bulkhead_rate_limited_total{scope="in_flight"}`.
    TooManyInFlight,
    /// The MCP handler did not finish within the request timeout (504).
    Timeout {
        /// The request's `id` as raw JSON.
        id: Option<String>,
        /// The timeout.
        seconds: u64,
    },
}

impl Refusal {
    /// The audit outcome.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::NotReady | Self::AuditUnavailable(_) => Outcome::Unavailable,
            Self::ShuttingDown => Outcome::Shutdown,
            Self::Forbidden(_) | Self::InsufficientScope(_) => Outcome::Forbidden,
            Self::Unauthenticated { .. } => Outcome::Unauthenticated,
            Self::PayloadTooLarge => Outcome::PayloadTooLarge,
            Self::BodyTimeout | Self::Timeout { .. } => Outcome::Timeout,
            Self::BodyAborted => Outcome::ClientClosed,
            Self::BadRequest { .. } => Outcome::BadRequest,
            Self::InvalidParams { .. } => Outcome::RpcError,
            Self::RateLimited { .. } | Self::TooManyInFlight => Outcome::RateLimited,
        }
    }

    /// Counts the refusal in the metrics that track it and logs the ones a
    /// person may need to look into.
    pub fn observe(&self, metrics: &Metrics, request_id: &str) {
        match self {
            Self::Forbidden(reason) => {
                tracing::warn!(request_id = %request_id, reason, "request refused");
            }
            Self::Unauthenticated { failure, .. } => {
                metrics
                    .auth_failures
                    .get_or_create(&AuthLabels {
                        reason: failure.as_str(),
                    })
                    .inc();
            }
            Self::AuditUnavailable(reason) => {
                metrics
                    .audit_refused
                    .get_or_create(&AuditRefusedLabels {
                        reason: reason.as_str(),
                    })
                    .inc();
            }
            Self::InsufficientScope(_) => {
                metrics
                    .auth_failures
                    .get_or_create(&AuthLabels {
                        reason: AuthFailure::InsufficientScope.as_str(),
                    })
                    .inc();
            }
            Self::RateLimited { .. } => {
                metrics
                    .rate_limited
                    .get_or_create(&RateLimitLabels { scope: "caller" })
                    .inc();
            }
            Self::TooManyInFlight => {
                metrics
                    .rate_limited
                    .get_or_create(&RateLimitLabels { scope: "in_flight" })
                    .inc();
            }
            _ => {}
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::NotReady => unavailable("Service Unavailable: not ready"),
            Self::AuditUnavailable(AuditUnavailable::QueueFull) => {
                unavailable("Service Unavailable: the audit trail is not keeping up")
            }
            Self::AuditUnavailable(AuditUnavailable::WriteFailed) => {
                unavailable("Service Unavailable: the audit trail has failed")
            }
            Self::ShuttingDown => unavailable("Service Unavailable: shutting down"),
            Self::Forbidden(reason) => plain(StatusCode::FORBIDDEN, reason),
            Self::Unauthenticated { failure, challenge } => {
                let value = match (failure, challenge) {
                    (AuthFailure::Missing, Some(c)) => c.missing,
                    (_, Some(c)) => c.invalid,
                    (AuthFailure::Missing, None) => {
                        HeaderValue::from_static(r#"Bearer realm="bulkhead""#)
                    }
                    (_, None) => HeaderValue::from_static(
                        r#"Bearer realm="bulkhead", error="invalid_token""#,
                    ),
                };
                let mut response = plain(StatusCode::UNAUTHORIZED, "Unauthorized");
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, value);
                response
            }
            Self::InsufficientScope(challenge) => {
                let mut response = plain(
                    StatusCode::FORBIDDEN,
                    "Forbidden: the access token lacks a required scope",
                );
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, challenge.insufficient_scope);
                response
            }
            Self::PayloadTooLarge => plain(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large"),
            Self::BodyTimeout => plain(StatusCode::REQUEST_TIMEOUT, "Request Timeout"),
            Self::BodyAborted => plain(CLIENT_CLOSED, "Client Closed Request"),
            Self::BadRequest { id, code, message } => jsonrpc_error(
                StatusCode::BAD_REQUEST,
                id.as_deref(),
                code,
                &message,
                serde_json::Value::Null,
            ),
            Self::InvalidParams { id, message } => jsonrpc_error(
                StatusCode::OK,
                id.as_deref(),
                INVALID_PARAMS,
                &message,
                serde_json::Value::Null,
            ),
            Self::RateLimited {
                id,
                retry_after_seconds: seconds,
            } => {
                let mut response = jsonrpc_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    id.as_deref(),
                    RATE_LIMITED,
                    &format!("rate limit exceeded; retry after {seconds} s"),
                    serde_json::json!({"retryAfterSeconds": seconds}),
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
                response
            }
            Self::TooManyInFlight => {
                let mut response = jsonrpc_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    None,
                    RATE_LIMITED,
                    "too many requests in flight; retry after 1 s",
                    serde_json::json!({"retryAfterSeconds": 1}),
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(1));
                response
            }
            Self::Timeout { id, seconds } => jsonrpc_error(
                StatusCode::GATEWAY_TIMEOUT,
                id.as_deref(),
                TIMED_OUT,
                &format!("request did not finish within {seconds} s"),
                serde_json::Value::Null,
            ),
        }
    }
}

/// 503 with `Retry-After: 1` (RFC 9110 section 10.2.3).
fn unavailable(text: &'static str) -> Response {
    let mut response = plain(StatusCode::SERVICE_UNAVAILABLE, text);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// A JSON-RPC error response; `id` is the request's id as raw JSON.
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
