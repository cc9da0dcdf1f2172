//! The admin listener: `/healthz`, `/readyz` and `/metrics`. It is a
//! separate port so the NetworkPolicy can open it to probes and Prometheus
//! without opening the MCP port, and MCP callers cannot reach it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use crate::api_keys::ApiKeyStore;
use crate::metrics::Metrics;

/// What readiness depends on.
#[derive(Default)]
pub struct Readiness {
    /// The API-key store, when authentication is on.
    pub keys: Option<ApiKeyStore>,
    /// Set once every declared credential has been read.
    pub credentials_loaded: AtomicBool,
    /// Set when shutdown starts, so the Service stops routing here.
    pub draining: AtomicBool,
}

impl Readiness {
    /// Ready: configuration loaded (we are running), keys and credentials
    /// read, not shutting down.
    pub fn is_ready(&self) -> bool {
        self.keys.as_ref().is_none_or(ApiKeyStore::is_loaded)
            && self.credentials_loaded.load(Ordering::Acquire)
            && !self.draining.load(Ordering::Acquire)
    }
}

/// State of the admin listener.
pub struct AdminState {
    /// Readiness inputs.
    pub readiness: Arc<Readiness>,
    /// Metrics to expose.
    pub metrics: Arc<Metrics>,
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
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
