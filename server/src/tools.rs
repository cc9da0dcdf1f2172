//! The tool list of a tenant's server and what a tool call returns.
//!
//! The list is fixed at start from the configuration: `whoami`, and for each
//! connector its tools named `<connector>_<tool>`. Tool names are therefore a
//! bounded set, safe to use as metric labels. The catalog only maps names to
//! the connector that serves them ([`crate::connectors`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bulkhead_crds::server_config::ServerConfig;
use rmcp::ErrorData;
use rmcp::model::{CallToolResult, ContentBlock, JsonObject, Tool, ToolAnnotations};
use serde_json::{Value, json};

use crate::connectors::upstream::UpstreamSetupError;
use crate::connectors::{Connector, connector_for, schema_object};
use crate::credentials::CredentialStore;
use crate::identity::CallContext;
use crate::metrics::Metrics;
use crate::response_cache::ResponseCache;

/// Largest upstream answer kept in the response cache.
pub const MAX_CACHED_BODY_BYTES: usize = 64 * 1024;

/// Name of the tool that reports the verified identity.
pub const WHOAMI: &str = "whoami";

/// How a tool call ended, as the handler reports it back to the transport
/// layer for the audit line and the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolOutcome {
    /// The tool returned a result.
    Ok,
    /// The tool refused the input or the call was not allowed.
    ToolError,
    /// The upstream failed (5xx, timeout, unreachable, redirect).
    UpstreamError,
    /// The caller's budget for this tool is used up.
    RateLimited,
}

/// What the handler learnt about a tool call.
#[derive(Clone, Copy, Debug, Default)]
pub struct ToolReport {
    /// How the call ended; `None` if the request was not a tool call or never
    /// reached a tool.
    pub outcome: Option<ToolOutcome>,
    /// HTTP status the upstream answered with, if it was called.
    pub upstream_status: Option<u16>,
    /// The tool call has begun (with `outcome` still `None`: it is running).
    pub started: bool,
}

/// What a tool needs besides its arguments.
#[derive(Clone)]
pub struct ToolServices {
    /// The tenant's upstream credentials.
    pub credentials: CredentialStore,
    /// Cache of upstream GET answers.
    pub cache: ResponseCache,
    /// Metrics (upstream errors).
    pub metrics: Arc<Metrics>,
}

/// The result of one tool call, with what the audit line needs.
pub struct ToolCall {
    /// The MCP result.
    pub result: CallToolResult,
    /// How it ended.
    pub outcome: ToolOutcome,
    /// Upstream HTTP status, if called.
    pub upstream_status: Option<u16>,
}

impl ToolCall {
    /// A structured result.
    pub fn ok(value: Value, upstream_status: Option<u16>) -> Self {
        Self {
            result: CallToolResult::structured(value),
            outcome: ToolOutcome::Ok,
            upstream_status,
        }
    }

    /// A tool error the caller can read and act on.
    pub fn error(
        message: impl Into<String>,
        outcome: ToolOutcome,
        upstream_status: Option<u16>,
    ) -> Self {
        Self {
            result: CallToolResult::error(vec![ContentBlock::text(message.into())]),
            outcome,
            upstream_status,
        }
    }
}

/// Who serves a tool.
enum ToolAction {
    Whoami,
    Connector(Arc<dyn Connector>),
}

/// The tools of this server.
pub struct ToolCatalog {
    tools: Vec<Tool>,
    actions: HashMap<String, ToolAction>,
}

/// The `whoami` tool: identity as the server verified it.
fn whoami_tool() -> Tool {
    Tool::new(
        WHOAMI,
        "Return the tenant this server serves and the caller the API key belongs to.",
        schema_object(&json!({"type": "object", "properties": {}})),
    )
    .with_raw_output_schema(schema_object(&json!({
        "type": "object",
        "properties": {
            "tenantId": {"type": "string"},
            "callerId": {"type": "string"}
        },
        "required": ["tenantId", "callerId"]
    })))
    .with_annotations(ToolAnnotations::new().read_only(true))
}

impl ToolCatalog {
    /// Builds the tool list from the configuration.
    pub fn new(config: &ServerConfig) -> Result<Self, UpstreamSetupError> {
        let timeout = Duration::from_secs(config.limits.upstream_timeout_seconds);
        let mut tools = vec![whoami_tool()];
        let mut actions = HashMap::from([(WHOAMI.to_owned(), ToolAction::Whoami)]);
        for config in &config.connectors {
            let connector = connector_for(config, timeout)?;
            for tool in connector.tools() {
                actions.insert(
                    tool.name.to_string(),
                    ToolAction::Connector(connector.clone()),
                );
                tools.push(tool);
            }
        }
        Ok(Self { tools, actions })
    }

    /// Every tool, in listing order.
    pub fn tools(&self) -> &[Tool] {
        &self.tools
    }

    /// One tool's definition.
    pub fn get(&self, name: &str) -> Option<&Tool> {
        self.tools.iter().find(|t| t.name == name)
    }

    /// The metric label for a tool name: the name if it is listed, else
    /// `unknown`.
    pub fn label(&self, name: &str) -> String {
        if self.actions.contains_key(name) {
            name.to_owned()
        } else {
            "unknown".to_owned()
        }
    }

    /// Runs tool `name`. `Err` only for a tool that does not exist.
    pub async fn call(
        &self,
        name: &str,
        arguments: Option<JsonObject>,
        context: &CallContext,
        services: &ToolServices,
    ) -> Result<ToolCall, ErrorData> {
        let action = self.actions.get(name).ok_or_else(|| {
            ErrorData::invalid_params(
                "unknown tool; call tools/list for the tools this server offers",
                None,
            )
        })?;
        let arguments = Value::Object(arguments.unwrap_or_default());
        Ok(match action {
            // Identity comes from the verified context only; any
            // `tenantId` or `callerId` argument is ignored.
            ToolAction::Whoami => ToolCall::ok(
                json!({"tenantId": context.tenant.as_str(), "callerId": context.caller.as_str()}),
                None,
            ),
            ToolAction::Connector(connector) => {
                connector.call(name, arguments, context, services).await
            }
        })
    }
}
