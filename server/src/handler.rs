//! The MCP handler: `initialize`, `tools/list` and `tools/call` for one
//! tenant. Authentication, the per-caller limit and the audit line happen in
//! [`crate::transport`] before and after this runs; the verified
//! [`CallContext`] arrives in the HTTP request's extensions. A tool call
//! is cancelled when its HTTP request ends first.

use std::sync::Arc;
use std::time::Instant;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, InitializeResult, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};

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
}

impl TenantServer {
    /// A handler over `catalog`.
    pub fn new(
        catalog: Arc<ToolCatalog>,
        services: ToolServices,
        rate_limits: Arc<RateLimits>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            catalog,
            services,
            rate_limits,
            metrics,
        }
    }
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
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(
            self.catalog.tools().to_vec(),
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
            call_context.start();
            // rmcp cancels `context.ct` when the HTTP request ends before
            // the answer (client gone, request timeout, shutdown): the tool
            // call, and any upstream request it has open, is dropped then.
            tokio::select! {
                call = self.catalog.call(
                    &request.name,
                    request.arguments,
                    &call_context,
                    &self.services,
                ) => Some(call?),
                () = context.ct.cancelled() => {
                    return Err(ErrorData::internal_error("request cancelled", None));
                }
            }
        };
        let Some(call) = call else {
            return Err(ErrorData::invalid_params(
                "unknown tool; call tools/list for the tools this server offers",
                None,
            ));
        };
        self.metrics
            .tool_duration
            .get_or_create(&ToolLabels { tool: label })
            .observe(started.elapsed().as_secs_f64());
        call_context.record(call.outcome, call.upstream_status);
        Ok(call.result.into())
    }
}
