//! Who a request is for (the tenant) and who sent it (the caller).
//!
//! Both come from verified sources only: the tenant id from the
//! configuration, the caller id from the API-key store or a verified access
//! token. Nothing in a request body or header can construct either.

use std::fmt;
use std::sync::{Arc, Mutex};

use crate::tools::{ToolOutcome, ToolReport};

/// The tenant this process serves, as named in the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

impl TenantId {
    /// Wraps the tenant id read from the configuration.
    pub fn new(id: &str) -> Self {
        Self(Arc::from(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a caller authenticated. Part of the caller's identity: an API-key
/// caller `alice` and a token caller whose claim is `alice` are different
/// callers for rate limits, the response cache and access rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum AuthMethod {
    /// A Bulkhead API key.
    #[serde(rename = "api_key")]
    ApiKey,
    /// An OAuth 2.1 access token (MCP authorization).
    #[serde(rename = "oauth")]
    OAuth,
    /// No authentication: `--insecure-no-auth`, or a request refused before
    /// a caller was verified.
    #[serde(rename = "none")]
    None,
}

impl AuthMethod {
    /// The audit and metric label: `api_key`, `oauth` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ApiKey => "api_key",
            Self::OAuth => "oauth",
            Self::None => "none",
        }
    }
}

/// A verified caller of the tenant's server: how it authenticated and the
/// id that method names (the API-key store's caller id, or the configured
/// claim of a verified access token).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallerId {
    method: AuthMethod,
    id: Arc<str>,
}

impl CallerId {
    /// A caller taken from the API-key store.
    pub fn api_key(id: &str) -> Self {
        Self {
            method: AuthMethod::ApiKey,
            id: Arc::from(id),
        }
    }

    /// A caller named by the caller claim of a verified access token.
    pub fn token(id: &str) -> Self {
        Self {
            method: AuthMethod::OAuth,
            id: Arc::from(id),
        }
    }

    /// The fixed development caller of `--insecure-no-auth`.
    pub fn unauthenticated(id: &str) -> Self {
        Self {
            method: AuthMethod::None,
            id: Arc::from(id),
        }
    }

    /// The id as text (without the method).
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// How the caller authenticated.
    pub fn method(&self) -> AuthMethod {
        self.method
    }
}

impl fmt::Display for CallerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

/// What a verified access token says about its caller besides the id, for
/// access rules (`group` and `scope` subjects). Empty for API-key callers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenGrants {
    /// Values of the configured groups claim.
    pub groups: Vec<String>,
    /// Scopes of the `scope` (or `scp`) claim.
    pub scopes: Vec<String>,
}

/// Whether a caller id is acceptable: caller ids are the data keys of the
/// API-key Secret, so the rule is the Secret data key rule.
pub fn is_valid_caller_id(id: &str) -> bool {
    bulkhead_crds::validation::is_secret_key(id)
}

/// The verified context of one MCP request, put into the HTTP request's
/// extensions by the transport layer and read by the MCP handler.
#[derive(Clone, Debug)]
pub struct CallContext {
    /// The tenant of this process.
    pub tenant: TenantId,
    /// The authenticated caller.
    pub caller: CallerId,
    /// Groups and scopes of the caller's access token.
    pub grants: Arc<TokenGrants>,
    /// Id of this request, as written in the audit line.
    pub request_id: Arc<str>,
    /// Filled in by the handler, read back for the audit line.
    pub report: Arc<Mutex<ToolReport>>,
}

impl CallContext {
    /// Records how a tool call ended.
    pub fn record(&self, outcome: ToolOutcome, upstream_status: Option<u16>) {
        if let Ok(mut report) = self.report.lock() {
            report.outcome = Some(outcome);
            report.upstream_status = upstream_status;
        }
    }

    /// What the handler recorded so far.
    pub fn report(&self) -> ToolReport {
        self.report.lock().map(|r| *r).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_ids_are_limited_to_secret_key_characters() {
        assert!(is_valid_caller_id("ci-bot_1.prod"));
        assert!(!is_valid_caller_id(""));
        assert!(!is_valid_caller_id("a b"));
        assert!(!is_valid_caller_id("a/b"));
        assert!(!is_valid_caller_id(&"a".repeat(254)));
    }
}
