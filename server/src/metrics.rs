//! Prometheus metrics, served on the admin port at `/metrics`.
//!
//! Label values come from fixed sets (known MCP methods, the configured tool
//! and connector names, outcome names) so no caller can grow the series
//! count, and no label ever carries a secret or a caller-chosen string.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of `bulkhead_mcp_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// MCP method (a known one, or `other`).
    pub method: &'static str,
    /// How the request ended.
    pub outcome: &'static str,
}

/// Labels carrying a tool name from the tool list (or `unknown`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToolLabels {
    /// Tool name.
    pub tool: String,
}

/// Labels of `bulkhead_auth_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabels {
    /// `missing`, `invalid` or `insufficient_scope`.
    pub reason: &'static str,
}

/// Labels of `bulkhead_rate_limited_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitLabels {
    /// `caller` (all requests) or `tool` (one tool).
    pub scope: &'static str,
}

/// Labels of `bulkhead_upstream_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// Configured connector name.
    pub connector: String,
    /// `status_5xx`, `timeout`, `unreachable`, `redirect`, `refused_target`.
    pub kind: &'static str,
}

/// Labels of `bulkhead_audit_refused_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuditRefusedLabels {
    /// `queue_full` (stdout not keeping up) or `write_failed` (a write to
    /// stdout failed; the trail stays failed).
    pub reason: &'static str,
}

/// Labels of `bulkhead_oauth_jwks_fetches_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JwksFetchLabels {
    /// `ok` or `error`.
    pub outcome: &'static str,
}

/// Labels of `bulkhead_oauth_token_rejections_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenRejectionLabels {
    /// A fixed reason: `expired`, `audience`, `unknown_key`, ...
    pub reason: &'static str,
}

/// Labels of the connection metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `mcp` or `admin`.
    pub listener: &'static str,
}

/// All metrics of the server.
pub struct Metrics {
    registry: Registry,
    /// Requests by MCP method and outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// Tool call latency.
    pub tool_duration: Family<ToolLabels, Histogram>,
    /// Failed authentications.
    pub auth_failures: Family<AuthLabels, Counter>,
    /// Requests refused by a rate limit.
    pub rate_limited: Family<RateLimitLabels, Counter>,
    /// Upstream failures.
    pub upstream_errors: Family<UpstreamLabels, Counter>,
    /// Connections open now, by listener.
    pub connections_open: Family<ListenerLabels, Gauge>,
    /// Connections closed at once because `limits.maxConnections` were
    /// open, by listener.
    pub connections_refused: Family<ListenerLabels, Counter>,
    /// Requests refused because their audit line could not be taken, by
    /// reason.
    pub audit_refused: Family<AuditRefusedLabels, Counter>,
    /// Fetches of the OAuth issuer's JWKS.
    pub jwks_fetches: Family<JwksFetchLabels, Counter>,
    /// Access tokens refused, by reason.
    pub token_rejections: Family<TokenRejectionLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let tool_duration = Family::<ToolLabels, Histogram>::new_with_constructor(|| {
            // 100 µs .. ~26 s
            Histogram::new(exponential_buckets(0.0001, 2.0, 19))
        });
        let auth_failures = Family::<AuthLabels, Counter>::default();
        let rate_limited = Family::<RateLimitLabels, Counter>::default();
        let upstream_errors = Family::<UpstreamLabels, Counter>::default();
        let audit_refused = Family::<AuditRefusedLabels, Counter>::default();
        let jwks_fetches = Family::<JwksFetchLabels, Counter>::default();
        let token_rejections = Family::<TokenRejectionLabels, Counter>::default();
        let mut registry = Registry::with_prefix("bulkhead");
        registry.register(
            "mcp_requests",
            "MCP requests by method and outcome",
            requests.clone(),
        );
        registry.register(
            "tool_duration_seconds",
            "Time spent serving tools/call, by tool",
            tool_duration.clone(),
        );
        registry.register(
            "auth_failures",
            "Requests refused for a missing or unusable API key or access token",
            auth_failures.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit",
            rate_limited.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failed upstream calls by connector and kind",
            upstream_errors.clone(),
        );
        let connections_open = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "connections_open",
            "Connections open now, by listener",
            connections_open.clone(),
        );
        let connections_refused = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed at once because the listener's connection limit was reached",
            connections_refused.clone(),
        );
        registry.register(
            "audit_refused",
            "Requests refused (503) because the audit trail could not take their line (queue full, or stdout failed)",
            audit_refused.clone(),
        );
        registry.register(
            "oauth_jwks_fetches",
            "Fetches of the OAuth issuer's JWKS, by outcome",
            jwks_fetches.clone(),
        );
        registry.register(
            "oauth_token_rejections",
            "Access tokens refused, by reason",
            token_rejections.clone(),
        );
        Self {
            registry,
            connections_open,
            connections_refused,
            requests,
            tool_duration,
            auth_failures,
            rate_limited,
            upstream_errors,
            audit_refused,
            jwks_fetches,
            token_rejections,
        }
    }
}

impl Metrics {
    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

/// Maps a JSON-RPC method to a bounded label value.
pub fn method_label(method: Option<&str>) -> &'static str {
    const KNOWN: &[&str] = &[
        "initialize",
        "ping",
        "tools/list",
        "tools/call",
        "server/discover",
        "notifications/initialized",
        "notifications/cancelled",
        "resources/list",
        "prompts/list",
        "logging/setLevel",
        "completion/complete",
    ];
    match method {
        None => "none",
        Some(m) => KNOWN.iter().copied().find(|k| *k == m).unwrap_or("other"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_supplied_methods_collapse_to_other() {
        assert_eq!(method_label(Some("tools/call")), "tools/call");
        assert_eq!(method_label(Some("x".repeat(100).as_str())), "other");
        assert_eq!(method_label(None), "none");
    }

    #[test]
    fn exposition_names_every_family() {
        let metrics = Metrics::default();
        metrics
            .requests
            .get_or_create(&RequestLabels {
                method: "ping",
                outcome: "ok",
            })
            .inc();
        metrics
            .auth_failures
            .get_or_create(&AuthLabels { reason: "missing" })
            .inc();
        metrics
            .tool_duration
            .get_or_create(&ToolLabels {
                tool: "whoami".into(),
            })
            .observe(0.001);
        metrics
            .audit_refused
            .get_or_create(&AuditRefusedLabels {
                reason: "queue_full",
            })
            .inc();
        let text = metrics.encode();
        assert!(
            text.contains("bulkhead_mcp_requests_total{method=\"ping\",outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(text.contains("bulkhead_auth_failures_total{reason=\"missing\"} 1"));
        assert!(
            text.contains("bulkhead_audit_refused_total{reason=\"queue_full\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("bulkhead_tool_duration_seconds_count{tool=\"whoami\"} 1"),
            "{text}"
        );
    }
}
