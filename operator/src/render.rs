//! `bulkhead-operator render`: the objects the controller would apply for a
//! Tenant, as multi-document YAML, without a cluster, and the advisories the
//! controller would report on it.

use std::path::Path;

use bulkhead_crds::{InvalidTenant, Tenant};
use kube::{CustomResourceExt, Resource};

use crate::advisories::{Advisory, advisories};
use crate::desired::{TenantObjects, desired_objects};
use crate::settings::OperatorSettings;

/// Why a Tenant document could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The document is not YAML.
    #[error("not a YAML document: {0}")]
    Yaml(#[source] yaml_serde::Error),
    /// The document is YAML but not a Tenant.
    #[error(
        "expected apiVersion {expected_api_version:?} and kind \"Tenant\", found apiVersion {api_version:?} and kind {kind:?}"
    )]
    NotATenant {
        /// The Tenant apiVersion.
        expected_api_version: String,
        /// apiVersion of the document.
        api_version: String,
        /// kind of the document.
        kind: String,
    },
    /// The document has the Tenant's kind but a field has the wrong shape
    /// (unknown enum value, wrong type, missing required field).
    #[error("invalid Tenant: {0}")]
    Shape(String),
    /// The Tenant parses but breaks a validation rule.
    #[error(transparent)]
    Invalid(#[from] InvalidTenant),
    /// A built object could not be written as YAML (a bug, not bad input).
    #[error("cannot write the objects as YAML: {0}")]
    Output(String),
}

/// Parses one Tenant from YAML, naming the offending field on failure.
pub fn parse_tenant(yaml: &str) -> Result<Tenant, RenderError> {
    let value: serde_json::Value = yaml_serde::from_str(yaml).map_err(RenderError::Yaml)?;
    let text = |key: &str| {
        value
            .get(key)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let expected_api_version = Tenant::api_version(&()).into_owned();
    let (api_version, kind) = (text("apiVersion"), text("kind"));
    if api_version != expected_api_version || kind != Tenant::kind(&()) {
        return Err(RenderError::NotATenant {
            expected_api_version,
            api_version,
            kind,
        });
    }
    let tenant: Tenant = serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let path = e.path().to_string();
        RenderError::Shape(format!("{path}: {}", e.into_inner()))
    })?;
    // Like `kubectl apply` (strict field validation), refuse fields the
    // Tenant does not have instead of silently ignoring a typo.
    let known = serde_json::to_value(&tenant).map_err(|e| RenderError::Output(e.to_string()))?;
    let mut unknown = Vec::new();
    unknown_fields("", &value, &known, &mut unknown);
    if unknown.is_empty() {
        Ok(tenant)
    } else {
        Err(RenderError::Shape(format!(
            "unknown field(s): {}",
            unknown.join(", ")
        )))
    }
}

/// Paths of non-empty values in `given` that did not survive a round trip
/// through the Tenant type (`known`), i.e. fields the Tenant does not have.
fn unknown_fields(
    path: &str,
    given: &serde_json::Value,
    known: &serde_json::Value,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (given, known) {
        (Value::Object(given), Value::Object(known)) => {
            for (key, value) in given {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match known.get(key) {
                    Some(known_value) => unknown_fields(&child, value, known_value, out),
                    None if is_empty(value) => {}
                    None => out.push(child),
                }
            }
        }
        (Value::Array(given), Value::Array(known)) => {
            for (i, (value, known_value)) in given.iter().zip(known).enumerate() {
                unknown_fields(&format!("{path}[{i}]"), value, known_value, out);
            }
        }
        _ => {}
    }
}

/// Values the Tenant type drops when writing (absent options, empty lists).
fn is_empty(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Null => true,
        serde_json::Value::Array(a) => a.is_empty(),
        serde_json::Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// The objects as multi-document YAML, in apply order.
pub fn to_yaml_documents(objects: &TenantObjects) -> Result<String, RenderError> {
    let documents = objects
        .to_json_in_apply_order()
        .map_err(|e| RenderError::Output(e.to_string()))?;
    let mut out = String::new();
    for document in documents {
        out.push_str("---\n");
        out.push_str(
            &yaml_serde::to_string(&document).map_err(|e| RenderError::Output(e.to_string()))?,
        );
    }
    Ok(out)
}

/// What `render` prints for one Tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// Every child as multi-document YAML, in apply order (standard output).
    pub yaml: String,
    /// What the controller would report as advisory conditions (standard
    /// error, one `warning:` line each).
    pub advisories: Vec<Advisory>,
}

impl Rendered {
    /// The advisories as `warning: <condition type>: <message>` lines, as
    /// `render` prints them on standard error.
    pub fn warning_lines(&self) -> Vec<String> {
        self.advisories
            .iter()
            .map(|a| format!("warning: {}: {}", a.kind.as_str(), a.message))
            .collect()
    }
}

/// Parses, validates and builds a Tenant, and gives every child as YAML
/// with the Tenant's advisories.
pub fn render(yaml: &str, settings: &OperatorSettings) -> Result<Rendered, RenderError> {
    let tenant = parse_tenant(yaml)?;
    Ok(Rendered {
        yaml: to_yaml_documents(&desired_objects(&tenant, settings)?)?,
        advisories: advisories(&tenant.spec),
    })
}

/// Parses, validates and builds a Tenant, and prints every child as YAML.
pub fn render_tenant(yaml: &str, settings: &OperatorSettings) -> Result<String, RenderError> {
    render(yaml, settings).map(|rendered| rendered.yaml)
}

/// The Tenant CustomResourceDefinition as YAML.
pub fn crd_yaml() -> Result<String, String> {
    yaml_serde::to_string(&Tenant::crd()).map_err(|e| format!("cannot write the CRD as YAML: {e}"))
}

/// Renders the Tenant in `file` (`-` for standard input); the error is a
/// message for a person, one line per invalid field.
pub fn render_file(file: &Path, settings: &OperatorSettings) -> Result<Rendered, String> {
    let yaml = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| format!("cannot read standard input: {e}"))?
    } else {
        std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?
    };
    render(&yaml, settings).map_err(|e| match e {
        // One line per field, so a person can work down the list.
        RenderError::Invalid(invalid) => {
            let lines: Vec<String> = invalid.errors.iter().map(|e| format!("  - {e}")).collect();
            format!("{}: invalid Tenant:\n{}", file.display(), lines.join("\n"))
        }
        other => format!("{}: {other}", file.display()),
    })
}
