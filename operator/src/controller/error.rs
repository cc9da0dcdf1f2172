//! The controller's one error type.
//!
//! Only failures that deserve a retry are errors: an invalid spec or a
//! namespace conflict is reported on the Tenant (condition and Event) and the
//! reconcile returns normally, waiting for a change instead of looping.

/// A reconcile step that failed and is retried with back-off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the Kubernetes API failed.
    #[error("{action} failed: {source}")]
    Kube {
        /// What the controller was doing, e.g. "apply Deployment bulkhead-acme/mcp-server".
        action: String,
        /// The client or API error (boxed: it is large, and errors are rare).
        #[source]
        source: Box<kube::Error>,
    },
    /// An object could not be turned into JSON for comparison or apply.
    #[error("serialise {what}: {source}")]
    Serialize {
        /// The object that could not be serialised.
        what: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// A child changed between being read and the JSON patch removing
    /// fields someone else added to it: the patch's `test` of
    /// `metadata.resourceVersion` failed (the API server answers 422 Invalid,
    /// which here means "stale", not an invalid spec), so the reconcile is
    /// retried against the new version.
    #[error("{what} changed while added fields were being removed")]
    ChangedDuringRemoval {
        /// Kind and name of the child.
        what: String,
    },
    /// A child object the builders produced has no name; a bug in the builders.
    #[error("the {kind} built for the Tenant has no metadata.name")]
    UnnamedChild {
        /// Kind of the child.
        kind: String,
    },
}

impl Error {
    /// Wraps a client error with the action that failed.
    pub fn kube(action: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            action: action.into(),
            source: Box::new(source),
        }
    }

    /// A short, bounded label for the `reason` of the errors metric.
    ///
    /// Values never contain tenant names so the metric's cardinality stays
    /// fixed however many Tenants exist.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube { source, .. } => match source.as_ref() {
                kube::Error::Api(status) => api_status_label(status.code),
                _ => "api_unreachable",
            },
            Self::Serialize { .. } => "serialize",
            Self::ChangedDuringRemoval { .. } => "api_conflict",
            Self::UnnamedChild { .. } => "builder_bug",
        }
    }

    /// `(action, the API server's message)` when the server rejected a
    /// write as invalid (HTTP 422): retrying the same object cannot succeed,
    /// only a spec change can.
    pub fn rejection(&self) -> Option<(&str, &str)> {
        match self {
            Self::Kube { action, source } => match source.as_ref() {
                kube::Error::Api(status) if status.code == 422 => {
                    Some((action.as_str(), status.message.as_str()))
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether the API said the object does not exist (HTTP 404).
    pub fn is_not_found(&self) -> bool {
        match self {
            Self::Kube { source, .. } => {
                matches!(source.as_ref(), kube::Error::Api(status) if status.code == 404)
            }
            _ => false,
        }
    }
}

/// Maps an HTTP status of the API server to a bounded metric label.
fn api_status_label(code: u16) -> &'static str {
    match code {
        401 | 403 => "api_forbidden",
        404 => "api_not_found",
        409 => "api_conflict",
        422 => "api_invalid",
        429 => "api_throttled",
        500..=599 => "api_server_error",
        _ => "api_other",
    }
}

/// Result of a controller step.
pub type Result<T, E = Error> = std::result::Result<T, E>;
