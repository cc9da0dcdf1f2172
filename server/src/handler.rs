//! The MCP handler: `initialize`, `tools/list` and `tools/call` for one
//! tenant, each caller seeing and calling only the tools the access rules
//! ([`crate::access`]) give it. Authentication, the per-caller limit and the audit line happen in
//! [`crate::transport`] before and after this runs; the verified
//! [`CallContext`] arrives in the HTTP request's extensions.

use std::sync::Arc;
use std::time::Instant;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, InitializeResult, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};

use crate::access::AccessPolicy;
use crate::identity::CallContext;
use crate::metrics::{Metrics, RateLimitLabels, ToolLabels};
use crate::rate_limit::{RateLimits, retry_after_seconds};
use crate::tools::{ToolCall, ToolCatalog, ToolOutcome, ToolServices};

/// The handler shared by all requests (rmcp makes one per request in
/// stateless mode; cloning is a reference count).
#[derive(Clone)]
pub struct TenantServer {
    catalog: Arc<ToolCatalog>,
    services: ToolServices,
    rate_limits: Arc<RateLimits>,
    metrics: Arc<Metrics>,
    access: Arc<AccessPolicy>,
}

impl TenantServer {
    /// A handler over `catalog`, showing each caller only the tools
    /// `access` lets it use.
    pub fn new(
        catalog: Arc<ToolCatalog>,
        services: ToolServices,
        rate_limits: Arc<RateLimits>,
        metrics: Arc<Metrics>,
        access: Arc<AccessPolicy>,
    ) -> Self {
        Self {
            catalog,
            services,
            rate_limits,
            metrics,
            access,
        }
    }
}

/// The JSON-RPC error for a tool that does not exist, and for one the
/// caller may not use: the same, so a caller cannot tell the two apart.
fn unknown_tool() -> ErrorData {
    ErrorData::invalid_params(
        "unknown tool; call tools/list for the tools this server offers",
        None,
    )
}

fn call_context(context: &RequestContext<RoleServer>) -> Result<CallContext, ErrorData> {
    context
        .extensions
        .get::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<CallContext>())
        .cloned()
        .ok_or_else(|| ErrorData::internal_error("request context missing", None))
}

impl ServerHandler for TenantServer {
    fn get_info(&self) -> InitializeResult {
        InitializeResult::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(
                Implementation::new("bulkhead-server", env!("CARGO_PKG_VERSION"))
                    .with_title("Bulkhead tenant MCP server"),
            )
            .with_instructions(
                "Tools of one tenant's upstream APIs. `whoami` shows the tenant and caller this server sees.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let call_context = call_context(&context)?;
        Ok(ListToolsResult::with_all_items(
            self.catalog
                .tools()
                .iter()
                .filter(|tool| {
                    self.access
                        .allows(&call_context.caller, &call_context.grants, &tool.name)
                })
                .cloned()
                .collect(),
        ))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.catalog.get(name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let call_context = call_context(&context)?;
        let started = Instant::now();
        let label = self.catalog.label(&request.name);
        if self.catalog.get(&request.name).is_some()
            && !self
                .access
                .allows(&call_context.caller, &call_context.grants, &request.name)
        {
            call_context.record(ToolOutcome::Forbidden, None);
            return Err(unknown_tool());
        }
        let call = if self.catalog.get(&request.name).is_none() {
            None
        } else if let Err(wait) = self
            .rate_limits
            .check_tool(&call_context.caller, &request.name)
        {
            self.metrics
                .rate_limited
                .get_or_create(&RateLimitLabels { scope: "tool" })
                .inc();
            let seconds = retry_after_seconds(wait);
            Some(ToolCall::error(
                format!(
                    "rate limit for tool {} exceeded; retry after {seconds} s",
                    request.name
                ),
                ToolOutcome::RateLimited,
                None,
            ))
        } else {
            Some(
                self.catalog
                    .call(
                        &request.name,
                        request.arguments,
                        &call_context,
                        &self.services,
                    )
                    .await?,
            )
        };
        let Some(call) = call else {
            return Err(unknown_tool());
        };
        self.metrics
            .tool_duration
            .get_or_create(&ToolLabels { tool: label })
            .observe(started.elapsed().as_secs_f64());
        call_context.record(call.outcome, call.upstream_status);
        Ok(call.result.into())
    }
}
