//! The API server's audit log, read back by tests.
//!
//! The harness starts kube-apiserver with a policy that records every
//! request at `Metadata` level, once, when the response is complete
//! (<https://kubernetes.io/docs/tasks/debug/debug-cluster/audit/>), as one
//! JSON object per line. This is the API server's own account of who did
//! what, independent of any counter inside the operator.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

/// The audit policy the API server runs with: `Metadata` for every request,
/// recorded only at `ResponseComplete` (and `Panic`) so each request is one line.
pub const AUDIT_POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted"]
rules:
  - level: Metadata
"#;

/// Verbs that change state (the `verb` of an audit event).
pub const WRITE_VERBS: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];

/// One audit event (`audit.k8s.io/v1` `Event`), the fields tests use.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// Unique id of the request.
    #[serde(rename = "auditID")]
    pub audit_id: String,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, ...
    pub verb: String,
    /// The request path with query.
    #[serde(rename = "requestURI")]
    pub request_uri: String,
    /// Who authenticated.
    pub user: AuditUser,
    /// Whom the request impersonated, if anyone.
    #[serde(default)]
    pub impersonated_user: Option<AuditUser>,
    /// What the request was about (absent for non-resource URLs).
    #[serde(default)]
    pub object_ref: Option<ObjectRef>,
    /// The HTTP status the request ended with.
    #[serde(default)]
    pub response_status: Option<ResponseStatus>,
}

/// `user` / `impersonatedUser` of an audit event.
#[derive(Clone, Debug, Deserialize)]
pub struct AuditUser {
    /// e.g. `system:serviceaccount:bulkhead-system:bulkhead-operator`.
    #[serde(default)]
    pub username: String,
    /// Groups of the user.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// `objectRef` of an audit event.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// Plural resource, e.g. `deployments`.
    #[serde(default)]
    pub resource: String,
    /// Namespace, empty for cluster-scoped objects and cluster-wide requests.
    #[serde(default)]
    pub namespace: String,
    /// Object name, empty for collection requests.
    #[serde(default)]
    pub name: String,
    /// API group, empty for the core group.
    #[serde(default)]
    pub api_group: String,
    /// Subresource, e.g. `status`.
    #[serde(default)]
    pub subresource: String,
}

/// `responseStatus` of an audit event.
#[derive(Clone, Debug, Deserialize)]
pub struct ResponseStatus {
    /// HTTP status code.
    #[serde(default)]
    pub code: u16,
}

impl AuditEvent {
    /// Whether the verb changes state (see [`WRITE_VERBS`]).
    pub fn is_write(&self) -> bool {
        WRITE_VERBS.contains(&self.verb.as_str())
    }

    /// The authenticated user name.
    pub fn username(&self) -> &str {
        &self.user.username
    }

    /// The object reference, or an empty one.
    pub fn object(&self) -> ObjectRef {
        self.object_ref.clone().unwrap_or_default()
    }

    /// The response code, 0 when the event has none.
    pub fn code(&self) -> u16 {
        self.response_status.as_ref().map_or(0, |s| s.code)
    }

    /// One line for messages: `user verb resource[/subresource] namespace/name -> code`.
    pub fn summary(&self) -> String {
        let object = self.object();
        let resource = if object.subresource.is_empty() {
            object.resource
        } else {
            format!("{}/{}", object.resource, object.subresource)
        };
        format!(
            "{} {} {} {}/{} -> {}",
            self.user.username,
            self.verb,
            resource,
            object.namespace,
            object.name,
            self.code()
        )
    }
}

/// A position in the audit log; events after it are those of later requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AuditMark(u64);

/// Reader of the API server's audit log file.
#[derive(Clone, Debug)]
pub struct AuditLog {
    path: PathBuf,
}

impl AuditLog {
    /// The log at `path` (`--audit-log-path`).
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current end of the log.
    pub fn mark(&self) -> Result<AuditMark> {
        let length = std::fs::metadata(&self.path)
            .map(|m| m.len())
            .with_context(|| format!("stat {}", self.path.display()))?;
        Ok(AuditMark(length))
    }

    /// Every complete event written after `mark`.
    pub fn since(&self, mark: AuditMark) -> Result<Vec<AuditEvent>> {
        let mut file = std::fs::File::open(&self.path)
            .with_context(|| format!("open {}", self.path.display()))?;
        file.seek(SeekFrom::Start(mark.0))
            .context("seek in the audit log")?;
        let mut text = String::new();
        file.read_to_string(&mut text)
            .context("read the audit log")?;
        // The API server may be writing the last line right now.
        let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
        complete
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line).with_context(|| format!("parse an audit event: {line}"))
            })
            .collect()
    }

    /// Every complete event so far.
    pub fn all(&self) -> Result<Vec<AuditEvent>> {
        self.since(AuditMark(0))
    }
}
