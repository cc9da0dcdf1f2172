//! Who a request is for (the tenant) and who sent it (the caller).
//!
//! Both come from verified sources only: the tenant id from the
//! configuration, the caller id from the API-key store. Nothing in a request
//! body or header can construct either.

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

/// A caller of the tenant's server, as named by the API-key store.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallerId(Arc<str>);

impl CallerId {
    /// Wraps a caller id taken from the API-key store (or the fixed
    /// development caller of `--insecure-no-auth`).
    pub fn new(id: &str) -> Self {
        Self(Arc::from(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CallerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
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
    /// Id of this request, as written in the audit line.
    pub request_id: Arc<str>,
    /// Filled in by the handler, read back for the audit line.
    pub report: Arc<Mutex<ToolReport>>,
}

impl CallContext {
    /// Records that a tool call has begun, so a request that ends before it
    /// does can tell that the call was cancelled.
    pub fn start(&self) {
        if let Ok(mut report) = self.report.lock() {
            report.started = true;
        }
    }

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
