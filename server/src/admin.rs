//! The admin listener: `/healthz`, `/readyz` and `/metrics`. It is a
//! separate port so the NetworkPolicy can open it to probes and Prometheus
//! without opening the MCP port, and MCP callers cannot reach it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use crate::audit::AuditHealth;
use crate::authentication::Authenticator;
use crate::metrics::Metrics;

/// What readiness depends on.
#[derive(Default)]
pub struct Readiness {
    /// How callers are verified: API keys read, the OAuth issuer's
    /// metadata and keys fetched.
    pub auth: Authenticator,
    /// Set once every declared credential has been read.
    pub credentials_loaded: AtomicBool,
    /// Set when shutdown starts, so the Service stops routing here.
    pub draining: AtomicBool,
    /// Whether the audit trail still takes lines; once a write to stdout
    /// has failed the server stays not ready.
    pub audit: AuditHealth,
}

impl Readiness {
    /// Ready: configuration loaded (we are running), keys and credentials
    /// read, the OAuth issuer reached once, the audit trail writable, not
    /// shutting down.
    pub fn is_ready(&self) -> bool {
        self.not_ready_reasons().is_empty()
    }

    /// What keeps the server from being ready, one line each (the OAuth
    /// reason names the issuer, the audit reason the write error); empty
    /// when ready.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        let mut reasons = self.auth.not_ready_reasons();
        if !self.credentials_loaded.load(Ordering::Acquire) {
            reasons.push("credentials not loaded yet".to_owned());
        }
        if let Some(reason) = self.audit.not_ready_reason() {
            reasons.push(reason);
        }
        if self.draining.load(Ordering::Acquire) {
            reasons.push("shutting down".to_owned());
        }
        reasons
    }
}

/// State of the admin listener.
pub struct AdminState {
    /// Readiness inputs.
    pub readiness: Arc<Readiness>,
    /// Metrics to expose.
    pub metrics: Arc<Metrics>,
}

/// Liveness: `ok`, except once the audit trail has failed. A process
/// cannot reopen its stdout, so only a restart (the kubelet's, on this
/// probe failing) brings the server back into service.
async fn healthz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    match state.readiness.audit.not_ready_reason() {
        None => (StatusCode::OK, "ok".to_owned()),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {reason}"),
        ),
    }
}

async fn readyz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let reasons = state.readiness.not_ready_reasons();
    if reasons.is_empty() {
        (StatusCode::OK, "ready".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}", reasons.join("; ")),
        )
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// The router for the admin listener.
pub fn router(state: Arc<AdminState>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", axum::routing::get(healthz))
        .route("/readyz", axum::routing::get(readyz))
        .route("/metrics", axum::routing::get(metrics))
        .with_state(state)
}
