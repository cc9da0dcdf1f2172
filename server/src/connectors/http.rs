//! The `http` connector: requests to one configured base URL, limited to an
//! allow-list of method and path patterns.
//!
//! A caller-supplied path must be a plain absolute path: no scheme or
//! authority, no `.`/`..` segments (also not percent-encoded), no encoded
//! slashes or backslashes, no query or fragment (the `query` argument carries
//! those). The URL built from it is checked once more to be on the base URL's
//! origin and under its path.

use std::collections::BTreeMap;

use bulkhead_crds::server_config::ConnectorConfig;
use bulkhead_crds::validation::{check_allow_method, check_allow_path};
use futures::future::BoxFuture;
use rmcp::model::Tool;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

use super::upstream::Upstream;
use super::{Connector, schema_object, upstream_failure};
use crate::identity::CallContext;
use crate::tools::{ToolCall, ToolOutcome, ToolServices};

/// One segment of an allow pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// trailing `**`: any number of segments.
    Rest,
}

/// A parsed allow rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowPattern {
    method: String,
    segments: Vec<Segment>,
}

/// Why a pattern or a request path was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    /// The allow rule itself is malformed.
    #[error("allow rule {method} {path:?}: {reason}")]
    BadRule {
        /// Method of the rule.
        method: String,
        /// Path pattern of the rule.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The requested path is not a plain absolute path.
    #[error("path refused: {0}")]
    Unsafe(&'static str),
    /// No allow rule matches.
    #[error("{method} {path} is not in this connector's allow-list")]
    NotAllowed {
        /// Requested method.
        method: String,
        /// Requested path.
        path: String,
    },
}

impl AllowPattern {
    /// Parses a rule: upper-case method, path starting with `/`, `*` for one
    /// segment and a trailing `/**` for any number. Both are checked by the
    /// Tenant rulebook ([`check_allow_method`], [`check_allow_path`]), so the
    /// server refuses exactly the rules the CRD schema and the operator do.
    ///
    /// # Errors
    /// [`PathError::BadRule`] with the rulebook's reason.
    pub fn parse(method: &str, path: &str) -> Result<Self, PathError> {
        let bad = |reason| PathError::BadRule {
            method: method.to_owned(),
            path: path.to_owned(),
            reason,
        };
        check_allow_method(method).map_err(bad)?;
        check_allow_path(path).map_err(|reason| bad(format!("path {reason}")))?;
        let segments = path
            .split('/')
            // The empty part before the leading '/', and the one after it
            // when the path is "/": the rulebook refuses all other empty
            // segments, and '**' anywhere but last.
            .filter(|s| !s.is_empty())
            .map(|s| match s {
                "**" => Segment::Rest,
                "*" => Segment::One,
                literal => Segment::Literal(literal.to_owned()),
            })
            .collect();
        Ok(Self {
            method: method.to_owned(),
            segments,
        })
    }

    fn matches(&self, method: &str, segments: &[&str]) -> bool {
        if self.method != method {
            return false;
        }
        let mut rest = segments;
        for pattern in &self.segments {
            match pattern {
                Segment::Rest => return true,
                Segment::One => match rest.split_first() {
                    Some((_, tail)) => rest = tail,
                    None => return false,
                },
                Segment::Literal(l) => match rest.split_first() {
                    Some((s, tail)) if s == l => rest = tail,
                    _ => return false,
                },
            }
        }
        rest.is_empty()
    }
}

/// Splits a caller-supplied path into segments, refusing anything but a
/// plain absolute path.
pub fn safe_segments(path: &str) -> Result<Vec<&str>, PathError> {
    let rest = path
        .strip_prefix('/')
        .ok_or(PathError::Unsafe("the path must start with '/'"))?;
    if rest.starts_with('/') || path.contains("://") {
        return Err(PathError::Unsafe(
            "absolute URLs and other hosts are not allowed",
        ));
    }
    if path.contains(['?', '#']) {
        return Err(PathError::Unsafe(
            "pass query parameters in `query`, not in the path",
        ));
    }
    if path.contains('\\') || path.chars().any(char::is_control) || path.contains(' ') {
        return Err(PathError::Unsafe(
            "backslashes, spaces and control characters are not allowed",
        ));
    }
    let bytes = path.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            let decoded = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
            match decoded {
                None => return Err(PathError::Unsafe("malformed percent-encoding")),
                Some(b'.' | b'/' | b'\\' | b'%' | b';') => {
                    return Err(PathError::Unsafe(
                        "encoded dots, slashes, backslashes, semicolons and percent signs are not allowed",
                    ));
                }
                // Encoded control characters (NUL truncates paths in some
                // servers) and overlong UTF-8 lead bytes (0xC0/0xC1, never
                // valid; `%c0%ae` is a classic encoded dot).
                Some(0x00..=0x1f | 0x7f | 0xc0 | 0xc1) => {
                    return Err(PathError::Unsafe(
                        "encoded control characters and overlong UTF-8 are not allowed",
                    ));
                }
                Some(_) => {}
            }
        }
    }
    let segments: Vec<&str> = if rest.is_empty() {
        vec![]
    } else {
        rest.split('/').collect()
    };
    for (i, s) in segments.iter().enumerate() {
        // `..;` and `..;jsessionid=x` are `..` to servlet containers, which
        // strip path parameters before normalising; refuse every segment
        // that starts with two dots, and path parameters altogether.
        if *s == "." || s.starts_with("..") {
            return Err(PathError::Unsafe(
                "'.' segments and segments starting with '..' are not allowed",
            ));
        }
        if s.contains(';') {
            return Err(PathError::Unsafe("path parameters (';') are not allowed"));
        }
        if s.is_empty() && i + 1 != segments.len() {
            return Err(PathError::Unsafe("empty path segments are not allowed"));
        }
    }
    Ok(segments)
}

/// Checks `method path` against the allow-list.
pub fn check_allowed(rules: &[AllowPattern], method: &str, path: &str) -> Result<(), PathError> {
    let segments = safe_segments(path)?;
    let trimmed: Vec<&str> = segments.iter().copied().filter(|s| !s.is_empty()).collect();
    if rules.iter().any(|r| r.matches(method, &trimmed)) {
        Ok(())
    } else {
        Err(PathError::NotAllowed {
            method: method.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// The URL for `path` (already checked) under `base`, with `query`.
pub fn target_url(base: &Url, path: &str, query: &BTreeMap<String, String>) -> Url {
    let mut url = base.clone();
    let joined = format!("{}{}", base.path().trim_end_matches('/'), path);
    url.set_path(&joined);
    url.set_fragment(None);
    url.set_query(None);
    if !query.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in query {
            pairs.append_pair(k, v);
        }
    }
    url
}

/// Arguments of the `<connector>_request` tool.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct HttpRequestArgs {
    /// HTTP method; one the allow-list permits for the path.
    #[serde(default = "default_method")]
    pub method: String,
    /// Absolute path below the connector's base URL, e.g. `/v1/invoices/42`.
    pub path: String,
    /// Query parameters.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// JSON request body (for POST, PUT, PATCH).
    #[serde(default)]
    pub body: Option<serde_json::Value>,
}

fn default_method() -> String {
    "GET".to_owned()
}

/// An `http` connector: one `<connector>_request` tool, limited to the
/// configured allow-list.
pub struct HttpConnector {
    upstream: Upstream,
    tool: String,
    rules: Vec<AllowPattern>,
    /// The allow-list as configured, for the tool description.
    allowed: String,
}

impl HttpConnector {
    /// The connector for `config` over `upstream`. Allow rules that do not
    /// parse (the configuration validation refuses them) match nothing.
    pub fn new(config: &ConnectorConfig, upstream: Upstream) -> Self {
        Self {
            tool: format!("{}_request", config.name),
            rules: config
                .allow
                .iter()
                .filter_map(|r| AllowPattern::parse(&r.method, &r.path).ok())
                .collect(),
            allowed: config
                .allow
                .iter()
                .map(|r| format!("{} {}", r.method, r.path))
                .collect::<Vec<_>>()
                .join(", "),
            upstream,
        }
    }
}

impl Connector for HttpConnector {
    fn tools(&self) -> Vec<Tool> {
        let input =
            serde_json::to_value(schemars::schema_for!(HttpRequestArgs)).unwrap_or_default();
        vec![
            Tool::new(
                self.tool.clone(),
                format!(
                    "Call the {} API. Allowed: {}. `*` is one path segment, a trailing `/**` any number.",
                    self.upstream.name, self.allowed
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
        ]
    }

    fn call<'a>(
        &'a self,
        _tool: &'a str,
        arguments: Value,
        _context: &'a CallContext,
        services: &'a ToolServices,
    ) -> BoxFuture<'a, ToolCall> {
        Box::pin(call_http(&self.upstream, &self.rules, services, arguments))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Vec<AllowPattern> {
        vec![
            AllowPattern::parse("GET", "/v1/invoices/*").unwrap(),
            AllowPattern::parse("GET", "/v1/reports/**").unwrap(),
            AllowPattern::parse("POST", "/v1/search").unwrap(),
        ]
    }

    #[test]
    fn patterns_match_one_segment_or_a_trailing_rest() {
        let rules = rules();
        assert!(check_allowed(&rules, "GET", "/v1/invoices/42").is_ok());
        assert!(check_allowed(&rules, "GET", "/v1/invoices/42/lines").is_err());
        assert!(check_allowed(&rules, "GET", "/v1/invoices").is_err());
        assert!(check_allowed(&rules, "GET", "/v1/reports/2024/q1").is_ok());
        assert!(check_allowed(&rules, "POST", "/v1/search").is_ok());
        assert!(check_allowed(&rules, "DELETE", "/v1/invoices/42").is_err());
    }

    #[test]
    fn traversal_and_foreign_targets_are_refused() {
        let rules = rules();
        for path in [
            "/v1/invoices/../../admin",
            "/v1/reports/../../admin",
            "/v1/reports/%2e%2e/admin",
            "/v1/reports/%2E%2E/admin",
            "/v1/invoices/a%2fb",
            "/v1/reports/a%5c..",
            "//evil.example.com/v1/invoices/1",
            "https://evil.example.com/v1/invoices/1",
            "v1/invoices/1",
            "/v1/invoices/1?admin=1",
            "/v1/reports/x\\..\\admin",
            "/v1/reports/%zz",
            "/v1/reports/..;/..;/admin",
            "/v1/invoices/..;",
            "/v1/reports/..;jsessionid=x/admin",
            "/v1/reports/..%00/admin",
            "/v1/reports/%c0%ae%c0%ae/admin",
            "/v1/reports/%C0%AE./admin",
            "/v1/reports/a%3b/admin",
            "/v1/reports/a;b",
        ] {
            assert!(check_allowed(&rules, "GET", path).is_err(), "{path}");
        }
    }

    #[test]
    fn bad_rules_are_refused() {
        assert!(AllowPattern::parse("GET", "v1").is_err());
        assert!(AllowPattern::parse("get", "/v1").is_err());
        assert!(AllowPattern::parse("GET", "/v1/**/x").is_err());
        assert!(AllowPattern::parse("GET", "/v1/../x").is_err());
        // The rulebook's rules beyond the structure of a pattern.
        for path in [
            "/v1/",
            "/v1//x",
            "/v1/%7Euser",
            "/v1/a\\b",
            "/v1/a b",
            "/v1/é",
        ] {
            assert!(AllowPattern::parse("GET", path).is_err(), "{path}");
        }
        assert_eq!(
            AllowPattern::parse("TRACE", "/v1").unwrap_err().to_string(),
            format!(
                "allow rule TRACE \"/v1\": {}",
                check_allow_method("TRACE").unwrap_err()
            )
        );
    }

    #[test]
    fn target_urls_stay_under_the_base_path() {
        let base = Url::parse("https://api.example.com/api/").unwrap();
        let mut query = BTreeMap::new();
        query.insert("q".to_owned(), "a&b=c".to_owned());
        let url = target_url(&base, "/v1/invoices/42", &query);
        assert_eq!(
            url.as_str(),
            "https://api.example.com/api/v1/invoices/42?q=a%26b%3Dc"
        );
    }
}
