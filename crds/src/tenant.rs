//! The `Tenant` custom resource (`bulkhead.dev/v1alpha1`, cluster-scoped).
//!
//! The tenant id is `metadata.name`. Every field carries a description so
//! `kubectl explain tenant.spec` is useful.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A tenant of the hosted MCP service: one namespace-isolated MCP server.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "bulkhead.dev",
    version = "v1alpha1",
    kind = "Tenant",
    shortname = "tnt",
    status = "TenantStatus",
    printcolumn = r#"{"name":"Namespace","type":"string","jsonPath":".status.namespace"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    /// Human-readable name of the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The tenant's MCP server Deployment.
    #[serde(default)]
    pub server: ServerSpec,
    /// Keys of the tenant's credential Secret that the server may read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<CredentialRef>,
    /// Upstream APIs the server exposes as MCP tools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connectors: Vec<Connector>,
    /// Who may call the server and where it may connect to.
    #[serde(default)]
    pub network: NetworkSpec,
    /// Resource quota of the tenant's namespace.
    #[serde(default)]
    pub quota: QuotaSpec,
    /// Request rate limits enforced by the server.
    #[serde(default)]
    pub rate_limits: RateLimits,
    /// What happens to the namespace when the Tenant is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// The tenant's MCP server.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerSpec {
    /// Number of server pods (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Server image; the operator's default image when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPU and memory requests and limits of the server container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// RuntimeClass of the server pods (for example gVisor or Kata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Option<String>,
    /// Node labels the server pods must be scheduled on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the server pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

/// One credential the server may read from the tenant's credential Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialRef {
    /// Name connectors use to refer to this credential.
    pub name: String,
    /// Key in the tenant's credential Secret that holds the value.
    pub key: String,
}

/// Kind of upstream API.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConnectorType {
    /// The GitHub REST API (read-only tools).
    Github,
    /// A generic HTTP API limited to an allow-list of methods and paths.
    Http,
}

/// One upstream API exposed as MCP tools.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Connector {
    /// Connector name, unique within the Tenant; tool names derive from it.
    pub name: String,
    /// Kind of upstream API.
    #[serde(rename = "type")]
    pub connector_type: ConnectorType,
    /// The only base URL the connector calls (https, or http for tests).
    pub base_url: String,
    /// Name of a declared credential sent to the upstream, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// For `http` connectors: the methods and paths that may be called.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<AllowRule>,
}

/// A method and path pattern an `http` connector may call.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllowRule {
    /// HTTP method, upper case.
    pub method: String,
    /// Path pattern starting with `/`; `*` matches one path segment and a
    /// trailing `/**` any number of segments.
    pub path: String,
}

/// Network access of the tenant's server.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    /// Namespaces (by label selector) whose pods may call the server. Empty
    /// means no namespace may; an empty selector is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_from: Vec<LabelSelector>,
    /// Upstream destinations the server may connect to.
    #[serde(default)]
    pub egress: EgressSpec,
}

/// Upstream destinations the server may connect to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressSpec {
    /// Destination ranges in CIDR notation. Private, link-local, loopback and
    /// cluster ranges inside them stay closed unless named here exactly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cidrs: Vec<String>,
    /// Destination TCP ports (default 443).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<i32>,
}

/// Resource quota of the tenant's namespace. Unset fields take the
/// operator's defaults.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaSpec {
    /// Total CPU limit of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Total memory limit of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// Maximum number of pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<i32>,
    /// Maximum number of Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<i32>,
    /// Maximum number of ConfigMaps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_maps: Option<i32>,
    /// Maximum number of Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<i32>,
    /// Maximum number of PersistentVolumeClaims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claims: Option<i32>,
}

/// Request rate limits enforced by the server.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimits {
    /// Budget of each caller across all requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_caller: Option<RateLimit>,
    /// Budget of each caller for one tool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_tool: Vec<ToolRateLimit>,
}

/// A rate limit: a sustained rate and a burst.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained requests per minute.
    pub requests_per_minute: u32,
    /// Requests allowed at once above the sustained rate.
    pub burst: u32,
}

/// A rate limit for one tool, applied to each caller separately.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolRateLimit {
    /// Tool name as listed by `tools/list`.
    pub tool: String,
    /// Sustained requests per minute.
    pub requests_per_minute: u32,
    /// Requests allowed at once above the sustained rate.
    pub burst: u32,
}

/// What happens to the namespace when the Tenant is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the namespace and everything in it.
    #[default]
    Delete,
    /// Keep the namespace and its contents, released from the Tenant.
    Retain,
}

/// Observed state of a Tenant.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The tenant's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// URL of the tenant's MCP endpoint inside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Ready, NamespaceReady, NetworkIsolated, CredentialsBound, ServerAvailable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
