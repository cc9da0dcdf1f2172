//! The tool list of a tenant's server and what each tool does.
//!
//! The list is fixed at start from the configuration: `whoami`, and for each
//! connector its tools named `<connector>_<tool>`. Tool names are therefore a
//! bounded set, safe to use as metric labels.

use std::collections::HashMap;
use std::sync::Arc;

use bulkhead_crds::server_config::ServerConfig;
use bulkhead_crds::tenant::ConnectorType;
use rmcp::ErrorData;
use rmcp::model::{CallToolResult, ContentBlock, JsonObject, Tool, ToolAnnotations};
use serde_json::{Value, json};

use crate::connectors::github::{GithubTool, decode_file_contents};
use crate::connectors::http::{AllowPattern, HttpRequestArgs, check_allowed, target_url};
use crate::connectors::upstream::{Upstream, UpstreamError, UpstreamSetupError};
use crate::credentials::CredentialStore;
use crate::identity::{CallContext, ToolOutcome};
use crate::metrics::{Metrics, UpstreamLabels};
use crate::response_cache::{CacheKey, CachedResponse, ResponseCache};

/// Largest upstream answer kept in the response cache.
pub const MAX_CACHED_BODY_BYTES: usize = 64 * 1024;

/// Name of the tool that reports the verified identity.
pub const WHOAMI: &str = "whoami";

enum ToolAction {
    Whoami,
    Github {
        upstream: Upstream,
        tool: GithubTool,
    },
    Http {
        upstream: Upstream,
        rules: Arc<Vec<AllowPattern>>,
    },
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
    fn ok(value: Value, upstream_status: Option<u16>) -> Self {
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

/// The tools of this server.
pub struct ToolCatalog {
    tools: Vec<Tool>,
    actions: HashMap<String, ToolAction>,
}

fn schema_object(schema: &Value) -> Arc<JsonObject> {
    Arc::new(schema.as_object().cloned().unwrap_or_default())
}

impl ToolCatalog {
    /// Builds the tool list from the configuration.
    pub fn new(config: &ServerConfig) -> Result<Self, UpstreamSetupError> {
        let timeout = std::time::Duration::from_secs(config.limits.upstream_timeout_seconds);
        let read_only = ToolAnnotations::new().read_only(true);
        let mut tools = vec![
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
            .with_annotations(read_only.clone()),
        ];
        let mut actions = HashMap::from([(WHOAMI.to_owned(), ToolAction::Whoami)]);
        for connector in &config.connectors {
            let upstream = Upstream::new(connector, timeout)?;
            match connector.connector_type {
                ConnectorType::Github => {
                    for tool in GithubTool::ALL {
                        let name = format!("{}_{}", connector.name, tool.suffix());
                        let input = serde_json::to_value(tool.input_schema()).unwrap_or_default();
                        tools.push(
                            Tool::new(
                                name.clone(),
                                format!("{} (connector {})", tool.description(), connector.name),
                                schema_object(&input),
                            )
                            .with_raw_output_schema(schema_object(&json!({
                                "type": "object",
                                "properties": {"data": {"description": "The GitHub API answer"}},
                                "required": ["data"]
                            })))
                            .with_annotations(read_only.clone()),
                        );
                        actions.insert(
                            name,
                            ToolAction::Github {
                                upstream: upstream.clone(),
                                tool,
                            },
                        );
                    }
                }
                ConnectorType::Http => {
                    let rules = connector
                        .allow
                        .iter()
                        .filter_map(|r| AllowPattern::parse(&r.method, &r.path).ok())
                        .collect::<Vec<_>>();
                    let allowed = connector
                        .allow
                        .iter()
                        .map(|r| format!("{} {}", r.method, r.path))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let name = format!("{}_request", connector.name);
                    let input = serde_json::to_value(schemars::schema_for!(HttpRequestArgs))
                        .unwrap_or_default();
                    tools.push(
                        Tool::new(
                            name.clone(),
                            format!(
                                "Call the {} API. Allowed: {allowed}. `*` is one path segment, a trailing `/**` any number.",
                                connector.name
                            ),
                            schema_object(&input),
                        )
                        .with_raw_output_schema(schema_object(&json!({
                            "type": "object",
                            "properties": {
                                "status": {"type": "integer"},
                                "data": {"description": "JSON answer, or text when not JSON"}
                            },
                            "required": ["status", "data"]
                        }))),
                    );
                    actions.insert(
                        name,
                        ToolAction::Http {
                            upstream,
                            rules: Arc::new(rules),
                        },
                    );
                }
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
            ToolAction::Github { upstream, tool } => match tool.url(upstream.base(), arguments) {
                Ok(url) => {
                    let mut call = fetch_json(upstream, context, services, url).await;
                    if *tool == GithubTool::GetFileContents
                        && let Some(data) = call
                            .result
                            .structured_content
                            .as_mut()
                            .and_then(|v| v.get_mut("data"))
                    {
                        decode_file_contents(data);
                        if let Some(value) = &call.result.structured_content {
                            call.result.content = vec![ContentBlock::text(value.to_string())];
                        }
                    }
                    call
                }
                Err(message) => ToolCall::error(message, ToolOutcome::ToolError, None),
            },
            ToolAction::Http { upstream, rules } => {
                call_http(upstream, rules, services, arguments).await
            }
        })
    }
}

fn upstream_failure(
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

/// GET a JSON resource, through the cache scoped by tenant and caller.
async fn fetch_json(
    upstream: &Upstream,
    context: &CallContext,
    services: &ToolServices,
    url: url::Url,
) -> ToolCall {
    let key = CacheKey {
        tenant: context.tenant.clone(),
        caller: context.caller.clone(),
        connector: upstream.name.clone(),
        resource: url.to_string(),
    };
    if let Some(hit) = services.cache.get(&key) {
        return ToolCall::ok(json!({"data": *hit.body}), Some(hit.status));
    }
    let response = upstream
        .send(
            reqwest::Method::GET,
            url,
            &[
                ("accept", "application/vnd.github+json"),
                ("x-github-api-version", "2022-11-28"),
            ],
            None,
            &services.credentials,
        )
        .await;
    match response {
        Ok(response) => match serde_json::from_slice::<Value>(&response.body) {
            Ok(body) => {
                let body = Arc::new(body);
                // Large answers are not cached, which bounds the cache's
                // memory to its entry count times this size.
                if response.body.len() <= MAX_CACHED_BODY_BYTES {
                    services.cache.put(
                        key,
                        CachedResponse {
                            status: response.status,
                            body: body.clone(),
                        },
                    );
                }
                ToolCall::ok(json!({"data": *body}), Some(response.status))
            }
            Err(_) => ToolCall::error(
                format!(
                    "connector {}: the upstream answer is not JSON",
                    upstream.name
                ),
                ToolOutcome::UpstreamError,
                Some(response.status),
            ),
        },
        Err(error) => upstream_failure(upstream, services, &error),
    }
}

async fn call_http(
    upstream: &Upstream,
    rules: &[AllowPattern],
    services: &ToolServices,
    arguments: Value,
) -> ToolCall {
    let args: HttpRequestArgs = match serde_json::from_value(arguments) {
        Ok(args) => args,
        Err(e) => {
            return ToolCall::error(
                format!("invalid arguments: {e}"),
                ToolOutcome::ToolError,
                None,
            );
        }
    };
    let method = args.method.to_ascii_uppercase();
    if let Err(error) = check_allowed(rules, &method, &args.path) {
        return ToolCall::error(error.to_string(), ToolOutcome::ToolError, None);
    }
    let Ok(http_method) = reqwest::Method::from_bytes(method.as_bytes()) else {
        return ToolCall::error("unsupported method", ToolOutcome::ToolError, None);
    };
    let url = target_url(upstream.base(), &args.path, &args.query);
    let body = match (&args.body, method.as_str()) {
        (Some(body), "POST" | "PUT" | "PATCH") => Some(body.to_string().into_bytes()),
        (Some(_), _) => {
            return ToolCall::error(
                format!("{method} requests take no body"),
                ToolOutcome::ToolError,
                None,
            );
        }
        (None, _) => None,
    };
    match upstream
        .send(
            http_method,
            url,
            &[("accept", "application/json")],
            body,
            &services.credentials,
        )
        .await
    {
        Ok(response) => {
            let is_json = response
                .content_type
                .as_deref()
                .is_some_and(|c| c.contains("json"));
            let data = if is_json {
                serde_json::from_slice(&response.body).unwrap_or_else(|_| {
                    Value::String(String::from_utf8_lossy(&response.body).into_owned())
                })
            } else {
                Value::String(String::from_utf8_lossy(&response.body).into_owned())
            };
            ToolCall::ok(
                json!({"status": response.status, "data": data}),
                Some(response.status),
            )
        }
        Err(error) => upstream_failure(upstream, services, &error),
    }
}
