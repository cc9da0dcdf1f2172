//! The admin HTTP server: `/metrics`, `/healthz`, `/readyz`.
//!
//! It listens on its own port, separate from anything tenants reach, and
//! serves no tenant data: metrics carry no tenant labels.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bulkhead_crds::Tenant;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::Store;
use tokio_util::sync::CancellationToken;

use super::metrics::{Metrics, ReadyState};
use super::status::ready_condition;

/// State shared by the admin endpoints.
#[derive(Default)]
pub struct AdminState {
    metrics: Arc<Metrics>,
    ready: AtomicBool,
    tenants: OnceLock<Store<DeserializeGuard<Tenant>>>,
}

impl AdminState {
    /// Admin state exposing `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            ready: AtomicBool::new(false),
            tenants: OnceLock::new(),
        }
    }

    /// Marks the operator ready (or not) for `/readyz`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Gives the tenants gauge the controller's cache of Tenants.
    pub fn set_tenant_store(&self, store: Store<DeserializeGuard<Tenant>>) {
        // Set once per process; a second controller would be a bug, and
        // keeping the first store is the safe reaction.
        let _already_set = self.tenants.set(store);
    }
}

/// The admin routes.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves the admin routes on `addr` until `shutdown` fires.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<AdminState>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    if let Some(store) = state.tenants.get() {
        state
            .metrics
            .set_tenant_states(store.state().iter().map(|guard| match &guard.0 {
                Ok(tenant) => {
                    match ready_condition(tenant.status.as_ref()).map(|c| c.status.as_str()) {
                        Some("True") => ReadyState::True,
                        Some("False") => ReadyState::False,
                        _ => ReadyState::Unknown,
                    }
                }
                Err(_) => ReadyState::False,
            }));
    }
    match state.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        "ready".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting").into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get_status(app: Router, path: &str) -> Result<StatusCode, Box<dyn std::error::Error>> {
        let response = app.oneshot(Request::get(path).body(Body::empty())?).await?;
        Ok(response.status())
    }

    #[tokio::test]
    async fn readyz_follows_readiness_and_metrics_are_served()
    -> Result<(), Box<dyn std::error::Error>> {
        let state = Arc::new(AdminState::new(Arc::new(Metrics::default())));
        assert_eq!(
            get_status(router(state.clone()), "/healthz").await?,
            StatusCode::OK
        );
        assert_eq!(
            get_status(router(state.clone()), "/readyz").await?,
            StatusCode::SERVICE_UNAVAILABLE
        );
        state.set_ready(true);
        assert_eq!(
            get_status(router(state.clone()), "/readyz").await?,
            StatusCode::OK
        );
        assert_eq!(get_status(router(state), "/metrics").await?, StatusCode::OK);
        Ok(())
    }
}
