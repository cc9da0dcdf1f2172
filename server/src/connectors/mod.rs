//! Connectors: the upstream APIs a tenant's server exposes as MCP tools.
//!
//! A connector type is one file implementing [`Connector`] and one line in
//! [`connector_for`]; the tool catalog only maps tool names to connectors.

pub mod address;
pub mod github;
pub mod http;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use bulkhead_crds::server_config::ConnectorConfig;
use bulkhead_crds::tenant::ConnectorType;
use futures::future::BoxFuture;
use rmcp::model::{JsonObject, Tool};
use serde_json::Value;

use crate::identity::CallContext;
use crate::metrics::UpstreamLabels;
use crate::tools::{ToolCall, ToolOutcome, ToolServices};
use upstream::{Upstream, UpstreamError, UpstreamSetupError};

/// One configured connector: the tools it offers and how to call them.
pub trait Connector: Send + Sync {
    /// The tools, named `<connector>_<tool>`, in listing order.
    fn tools(&self) -> Vec<Tool>;

    /// Calls `tool`, one of the names [`Connector::tools`] listed, with the
    /// caller's `arguments` (a JSON object). Failures are tool errors in the
    /// result, never an `Err`: the caller reads them and can act.
    fn call<'a>(
        &'a self,
        tool: &'a str,
        arguments: Value,
        context: &'a CallContext,
        services: &'a ToolServices,
    ) -> BoxFuture<'a, ToolCall>;
}

/// The connector a configuration entry describes.
pub fn connector_for(
    config: &ConnectorConfig,
    timeout: Duration,
) -> Result<Arc<dyn Connector>, UpstreamSetupError> {
    let upstream = Upstream::new(config, timeout)?;
    Ok(match config.connector_type {
        ConnectorType::Github => Arc::new(github::GithubConnector::new(upstream)),
        ConnectorType::Http => Arc::new(http::HttpConnector::new(config, upstream)),
    })
}

/// A JSON Schema as the object MCP tool definitions carry.
pub(crate) fn schema_object(schema: &Value) -> Arc<JsonObject> {
    Arc::new(schema.as_object().cloned().unwrap_or_default())
}

/// The tool result for a failed upstream call, counted by connector and kind.
pub(crate) fn upstream_failure(
    upstream: &Upstream,
    services: &ToolServices,
    error: &UpstreamError,
) -> ToolCall {
    services
        .metrics
        .upstream_errors
        .get_or_create(&UpstreamLabels {
            connector: upstream.name.clone(),
            kind: error.metric_kind(),
        })
        .inc();
    let outcome = if error.is_upstream_fault() {
        ToolOutcome::UpstreamError
    } else {
        ToolOutcome::ToolError
    };
    let hint = if error.is_upstream_fault() {
        "; try again later"
    } else {
        ""
    };
    ToolCall::error(
        format!("connector {}: {error}{hint}", upstream.name),
        outcome,
        error.status(),
    )
}
