//! The `Tenant` custom resource (`bulkhead.dev/v1alpha1`, cluster-scoped).
//!
//! The tenant id is `metadata.name`. Every field carries a description so
//! `kubectl explain tenant.spec` is useful.
//!
//! Validation lives in the schema wherever the API server can check it:
//! patterns, enums and bounds on fields, list types for uniqueness, and CEL
//! rules (`x-kubernetes-validations`) for what spans fields. The same rules
//! are checked again in code by [`crate::validation`]; the tests hold the two
//! together. CEL needs Kubernetes 1.31 or later (`isCIDR`, `cidr`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::cidr::{LINK_LOCAL_RANGES, METADATA_ADDRESSES, closed_ranges};

/// A tenant of the hosted MCP service: one namespace-isolated MCP server.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "bulkhead.dev",
    version = "v1alpha1",
    kind = "Tenant",
    shortname = "tnt",
    status = "TenantStatus",
    doc = "A tenant of the hosted MCP service. Its name is the tenant id; the operator gives it the namespace bulkhead-<name> with its own MCP server.",
    validation = Rule::new("self.metadata.name.size() <= 54").message("metadata.name must be at most 54 characters, so that the namespace bulkhead-<name> fits in 63"),
    validation = Rule::new("self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be a DNS-1123 label: lower-case letters, digits and '-', starting and ending with a letter or digit"),
    validation = Rule::new("self.metadata.name != 'system'").message("metadata.name 'system' is reserved: bulkhead-system is the operator's own namespace"),
    printcolumn = r#"{"name":"Namespace","type":"string","jsonPath":".status.namespace"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.connectors) || self.connectors.all(c, !has(c.credential) || (has(self.credentials) && self.credentials.exists(k, k.name == c.credential)))",
        "message": "every connector's credential must be declared in spec.credentials"
    },
    {
        "rule": "!has(self.access) || (has(self.auth) && has(self.auth.oauth)) || self.access.all(r, r.subjects.all(s, !has(s.tokenSubject) && !has(s.group) && !has(s.scope)))",
        "message": "tokenSubject, group and scope subjects need spec.auth.oauth: without it no caller has a token",
        "fieldPath": ".access"
    },
    {
        "rule": "!has(self.access) || !has(self.auth) || !has(self.auth.apiKeys) || self.auth.apiKeys || self.access.all(r, r.subjects.all(s, !has(s.apiKeyCaller)))",
        "message": "apiKeyCaller subjects need spec.auth.apiKeys: true: without it no caller has an API key",
        "fieldPath": ".access"
    }
]))]
pub struct TenantSpec {
    /// Human-readable name of the tenant (no control characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), regex(pattern = r"^[^\x00-\x1f\x7f-\x9f]*$"))]
    pub display_name: Option<String>,
    /// The tenant's MCP server Deployment.
    #[serde(default)]
    pub server: ServerSpec,
    /// Keys of the tenant's credential Secret that the server may read.
    /// Names are unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub credentials: Vec<CredentialRef>,
    /// Upstream APIs the server exposes as MCP tools. Names are unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub connectors: Vec<Connector>,
    /// Who may call the server and where it may connect to.
    #[serde(default)]
    pub network: NetworkSpec,
    /// Resource quota of the tenant's namespace.
    #[serde(default)]
    pub quota: QuotaSpec,
    /// Request rate limits enforced by the server. Each server replica keeps
    /// its own buckets and the Service spreads connections over the
    /// replicas, so with N replicas a caller is admitted at each limit at
    /// least and at N times it at most (more while a rolling update adds a
    /// replica; a restarted replica starts with full buckets). With limits
    /// and more than one replica the Tenant carries the condition
    /// RateLimitsPerReplica.
    #[serde(default)]
    pub rate_limits: RateLimits,
    /// What happens to the namespace when the Tenant is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// How callers prove who they are: API keys, OAuth 2.1 access tokens
    /// from the tenant's authorization server, or both.
    #[serde(default)]
    pub auth: AuthSpec,
    /// Which callers may use which tools. No rule means every authenticated
    /// caller may use every tool; with rules, a caller may use a tool only if
    /// a rule names both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub access: Vec<AccessRule>,
}

/// The tenant's MCP server.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerSpec {
    /// Number of server pods (default 1, at most 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 50))]
    pub replicas: Option<i32>,
    /// Server image; the operator's default image when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 512),
        regex(pattern = r"^[^\s\x0b\x{85}\p{Z}]+$")
    )]
    pub image: Option<String>,
    /// CPU and memory requests and limits of the server container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// RuntimeClass of the server pods (for example gVisor or Kata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub runtime_class_name: Option<String>,
    /// Node labels the server pods must be scheduled on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the server pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,
}

/// One credential the server may read from the tenant's credential Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialRef {
    /// Name connectors use to refer to this credential: a lower-case letter,
    /// then lower-case letters, digits, '-' or '_'.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z]([-_a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Key in the tenant's credential Secret that holds the value.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
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
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.type != 'http' || (has(self.allow) && size(self.allow) > 0)",
        "message": "an http connector needs at least one allowed method and path"
    },
    {
        "rule": "self.type == 'http' || !has(self.allow) || size(self.allow) == 0",
        "message": "only http connectors take an allow-list"
    }
]))]
pub struct Connector {
    /// Connector name, unique within the Tenant; tool names derive from it.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z]([-_a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Kind of upstream API.
    #[serde(rename = "type")]
    pub connector_type: ConnectorType,
    /// The only base URL the connector calls (https, or http for tests),
    /// without user information, query or fragment.
    #[schemars(
        length(max = 2048),
        regex(
            pattern = r"^https?://[^/?#@\s\x00-\x1f\x7f-\x9f\p{Z}]+(/[^?#\s\x00-\x1f\x7f-\x9f\p{Z}]*)?$"
        )
    )]
    pub base_url: String,
    /// Name of a declared credential sent to the upstream, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub credential: Option<String>,
    /// For `http` connectors: the methods and paths that may be called.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub allow: Vec<AllowRule>,
}

/// A method and path pattern an `http` connector may call.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllowRule {
    /// HTTP method, upper case.
    #[schemars(extend("enum" = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]))]
    pub method: String,
    /// Path pattern starting with `/`; `*` matches one path segment and a
    /// trailing `/**` any number of segments. Other segments are non-empty
    /// literals of letters, digits and `-._~!$&'()+,;=:@` (RFC 3986 path
    /// characters without percent-encoding), neither `.` nor `..`.
    #[schemars(
        length(min = 1, max = 512),
        regex(pattern = r"^(/|(/(\*|[-A-Za-z0-9._~!$&'()+,;=:@]+))*(/\*\*)?)$"),
        extend("x-kubernetes-validations" = [{
            "rule": "!self.matches('/[.][.]?(/|$)')",
            "message": "path must not contain '.' or '..' segments"
        }])
    )]
    pub path: String,
}

/// Network access of the tenant's server.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    /// Namespaces (by label selector) whose pods may call the server. Empty
    /// means no namespace may. Each selector must name namespaces with
    /// matchLabels or an `In` expression; an empty selector, or one made only
    /// of NotIn, Exists or DoesNotExist, is refused. Select by the label
    /// kubernetes.io/metadata.name, which the API server sets to the
    /// namespace's name: any other label can be set by whoever may create or
    /// label a namespace, and a selector without the name is reported with
    /// the condition IngressByMutableLabel.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), transform = namespace_selector_rule)]
    pub ingress_from: Vec<LabelSelector>,
    /// Upstream destinations the server may connect to.
    #[serde(default)]
    pub egress: EgressSpec,
}

/// Bounds each `ingressFrom` selector, puts its rule on the list's items and
/// Kubernetes' rule for `values` on each of its `matchExpressions`.
///
/// The rule looks for an `In` expression among `matchExpressions`. With
/// k8s-openapi's `LabelSelector` schema that list and each `operator` are
/// unbounded, and kube-apiserver v1.36 estimates the rule's cost at 1.36
/// times its per-rule budget and refuses the CRD (the local estimate in
/// `crds/tests/schema.rs` did not see it). So at most 16 expressions per
/// selector (`MAX_ITEMS`, checked in code too) and the four operators as an
/// enum (the code refuses any other). On the items, a refusal names the
/// selector (`spec.network.ingressFrom[1]`) as the code validation does.
fn namespace_selector_rule(schema: &mut schemars::Schema) {
    if let Some(items) = schema.get_mut("items").and_then(|i| i.as_object_mut()) {
        selector_rules(items, true);
    }
}

/// The rules of `ingressFrom` (see [`namespace_selector_rule`]) on
/// `spec.auth.oauth.issuerNetwork.namespaceSelector`.
fn issuer_namespace_selector_rule(schema: &mut schemars::Schema) {
    if let Some(selector) = selector_object(schema) {
        selector_rules(selector, true);
    }
}

/// Kubernetes' rules for a label selector's requirements, and the bound on
/// their number, on `spec.auth.oauth.issuerNetwork.podSelector`; an empty
/// pod selector (every pod of the selected namespaces) is allowed.
fn issuer_pod_selector_rule(schema: &mut schemars::Schema) {
    if let Some(selector) = selector_object(schema) {
        selector_rules(selector, false);
    }
}

/// The object schema of an optional selector: the node itself when it
/// carries the properties inline, or its non-null `anyOf` branch.
fn selector_object(
    schema: &mut schemars::Schema,
) -> Option<&mut serde_json::Map<String, serde_json::Value>> {
    let node = schema.as_object_mut()?;
    if node.contains_key("properties") {
        return Some(node);
    }
    node.get_mut("anyOf")?
        .as_array_mut()?
        .iter_mut()
        .filter_map(|branch| branch.as_object_mut())
        .find(|branch| branch.contains_key("properties"))
}

/// Puts the bound on `matchExpressions`, Kubernetes' rules for each
/// requirement and the operator enum on one selector's schema, and when
/// `must_name` is set the rule that it names namespaces.
fn selector_rules(selector: &mut serde_json::Map<String, serde_json::Value>, must_name: bool) {
    if let Some(expressions) = selector
        .get_mut("properties")
        .and_then(|p| p.get_mut("matchExpressions"))
        .and_then(|e| e.as_object_mut())
    {
        expressions.insert("maxItems".to_owned(), serde_json::json!(16));
        if let Some(requirement) = expressions.get_mut("items").and_then(|i| i.as_object_mut()) {
            // Kubernetes' own rule for a label selector requirement
            // (apimachinery `ValidateLabelSelectorRequirement`), which the
            // API server otherwise applies only to the NetworkPolicy built
            // from it, long after the Tenant was accepted.
            requirement.insert(
                "x-kubernetes-validations".to_owned(),
                serde_json::json!([
                    {
                        "rule": "!(self.operator in ['In', 'NotIn']) || (has(self.values) && size(self.values) > 0)",
                        "message": "values must not be empty for In and NotIn",
                        "fieldPath": ".values"
                    },
                    {
                        "rule": "!(self.operator in ['Exists', 'DoesNotExist']) || !has(self.values) || size(self.values) == 0",
                        "message": "values must be empty for Exists and DoesNotExist",
                        "fieldPath": ".values"
                    }
                ]),
            );
            if let Some(operator) = requirement
                .get_mut("properties")
                .and_then(|p| p.get_mut("operator"))
                .and_then(|o| o.as_object_mut())
            {
                operator.insert(
                    "enum".to_owned(),
                    serde_json::json!(["In", "NotIn", "Exists", "DoesNotExist"]),
                );
            }
        }
    }
    if must_name {
        selector.insert(
            "x-kubernetes-validations".to_owned(),
            serde_json::json!([{
                "rule": "(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && self.matchExpressions.exists(e, e.operator == 'In'))",
                "message": "a namespace selector must name namespaces with matchLabels or an In expression: an empty selector would admit every namespace, and NotIn, Exists or DoesNotExist alone admit almost every one"
            }]),
        );
    }
}

/// Reads an optional quantity as the schema types it
/// (`x-kubernetes-int-or-string`): a string or an integer. k8s-openapi's
/// `Quantity` also takes a JSON float, which the API server refuses, so a
/// Tenant read from a file must not pass with one.
fn int_or_string_quantity<'de, D>(deserializer: D) -> Result<Option<Quantity>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "a quantity: a string or an integer")]
    enum IntOrString {
        Int(i64),
        String(String),
    }
    Ok(
        Option::<IntOrString>::deserialize(deserializer)?.map(|value| match value {
            IntOrString::Int(i) => Quantity(i.to_string()),
            IntOrString::String(s) => Quantity(s),
        }),
    )
}

/// Upstream destinations the server may connect to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressSpec {
    /// Destination ranges in CIDR notation. Private, link-local, loopback and
    /// cluster ranges inside them stay closed unless named here exactly.
    /// Each is canonical (no host bits set), e.g. `203.0.113.0/24`; an
    /// IPv4-mapped IPv6 range (`::ffff:0.0.0.0/96`) is refused, write the
    /// IPv4 range instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(length(max = 49)),
        extend(
            "x-kubernetes-list-type" = "set",
            "x-kubernetes-validations" = [{
                "rule": "self.all(c, isCIDR(c) && cidr(c) == cidr(c).masked())",
                "message": "each entry must be an IPv4 or IPv6 range in canonical CIDR notation (no host bits set), e.g. 203.0.113.0/24"
            }]
        )
    )]
    pub cidrs: Vec<String>,
    /// Destination TCP ports (default 443).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(range(min = 1, max = 65535)), extend("x-kubernetes-list-type" = "set"))]
    pub ports: Vec<i32>,
}

/// Resource quota of the tenant's namespace. Unset fields take the
/// operator's defaults.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaSpec {
    /// Total CPU of the namespace (requests and limits), e.g. `4` or `2500m`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "int_or_string_quantity"
    )]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0'))",
        "message": "must be a positive quantity, e.g. 2 or 500m"
    }]))]
    pub cpu: Option<Quantity>,
    /// Total memory of the namespace (requests and limits), e.g. `4Gi`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "int_or_string_quantity"
    )]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0'))",
        "message": "must be a positive quantity, e.g. 4Gi"
    }]))]
    pub memory: Option<Quantity>,
    /// Maximum number of pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub pods: Option<i32>,
    /// Maximum number of Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub services: Option<i32>,
    /// Maximum number of ConfigMaps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub config_maps: Option<i32>,
    /// Maximum number of Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub secrets: Option<i32>,
    /// Maximum number of PersistentVolumeClaims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub persistent_volume_claims: Option<i32>,
}

/// Request rate limits enforced by the server, by each replica on its own
/// (in-memory GCRA buckets); what that means for N replicas is said on
/// [`TenantSpec::rate_limits`], which the CRD shows.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimits {
    /// Budget of each caller across all requests, on each server replica
    /// (with N replicas a caller may get up to N times it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_caller: Option<RateLimit>,
    /// Budget of each caller for one tool, on each server replica (with N
    /// replicas up to N times it); one entry per tool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["tool"]))]
    pub per_tool: Vec<ToolRateLimit>,
}

/// A rate limit: a sustained rate and a burst.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained requests per minute (at least 1).
    #[schemars(range(min = 1, max = 1_000_000))]
    pub requests_per_minute: u32,
    /// Requests allowed at once above the sustained rate (at least 1).
    #[schemars(range(min = 1, max = 100_000))]
    pub burst: u32,
}

/// A rate limit for one tool, applied to each caller separately.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolRateLimit {
    /// Tool name as listed by `tools/list`.
    #[schemars(length(min = 1, max = 128))]
    pub tool: String,
    /// Sustained requests per minute (at least 1).
    #[schemars(range(min = 1, max = 1_000_000))]
    pub requests_per_minute: u32,
    /// Requests allowed at once above the sustained rate (at least 1).
    #[schemars(range(min = 1, max = 100_000))]
    pub burst: u32,
}

/// How callers authenticate to the tenant's server. At least one way must
/// be on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.apiKeys) || self.apiKeys || has(self.oauth)",
    "message": "apiKeys false needs oauth: with neither, no caller can authenticate"
}]))]
pub struct AuthSpec {
    /// Accept Bulkhead API keys (the hashed keys in the tenant's
    /// `bulkhead-api-keys` Secret). Default true.
    #[serde(default = "default_true")]
    pub api_keys: bool,
    /// Accept OAuth 2.1 access tokens (JWT, RFC 9068) issued for this server
    /// by the tenant's authorization server, as the MCP authorization
    /// specification describes. Unset: no tokens are accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth: Option<OAuthSpec>,
}

impl Default for AuthSpec {
    fn default() -> Self {
        Self {
            api_keys: true,
            oauth: None,
        }
    }
}

fn default_true() -> bool {
    true
}

/// The tenant's server as an OAuth 2.1 resource server (MCP authorization;
/// RFC 9728 Protected Resource Metadata, RFC 8707 resource indicators,
/// RFC 9068 JWT access tokens).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuthSpec {
    /// Issuer identifier of the authorization server (RFC 8414): an https
    /// URL without query or fragment, or http on a loopback host for tests,
    /// in canonical form (lower-case scheme and host, no default port).
    /// Its metadata is read from `/.well-known/oauth-authorization-server`
    /// or `/.well-known/openid-configuration` under this URL.
    #[schemars(
        length(max = 2048),
        regex(
            pattern = r#"^(https://[^/?#@A-Z\\\s\x00-\x1f\x7f-\x{10FFFF}]+|http://(localhost|127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}|\[::1\])(:[0-9]{1,5})?)(/[^?#\\"<>`{}\s\x00-\x1f\x7f-\x{10FFFF}]*)?$"#
        ),
        extend("x-kubernetes-validations" = [{
            "rule": DEFAULT_PORT_RULE,
            "message": DEFAULT_PORT_MESSAGE
        }])
    )]
    pub issuer: String,
    /// The server's resource identifier (RFC 8707): the canonical URL
    /// clients use to reach the MCP endpoint from outside, e.g.
    /// `https://mcp.example.com/acme/mcp`. Tokens must carry it in `aud`.
    /// https without user information or fragment, or http on a loopback
    /// host for tests, in canonical form (RFC 3986 section 6.2.2, the URL
    /// Standard serialisation clients request tokens for: ASCII only, with
    /// lower-case scheme and host and no default port).
    #[schemars(
        length(max = 2048),
        regex(
            pattern = r#"^(https://[^/?#@A-Z\\\s\x00-\x1f\x7f-\x{10FFFF}]+|http://(localhost|127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}|\[::1\])(:[0-9]{1,5})?)(/[^?#\\"<>`{}\s\x00-\x1f\x7f-\x{10FFFF}]*)?(\?[^#"<>'\s\x00-\x1f\x7f-\x{10FFFF}]*)?$"#
        ),
        extend("x-kubernetes-validations" = [{
            "rule": DEFAULT_PORT_RULE,
            "message": DEFAULT_PORT_MESSAGE
        }])
    )]
    pub resource: String,
    /// Scopes every token must carry (RFC 6749 scope tokens). Empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(length(min = 1, max = 256), regex(pattern = r"^[\x21\x23-\x5b\x5d-\x7e]+$")),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub required_scopes: Vec<String>,
    /// Claim whose value is the caller id (default `sub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[^\x00-\x1f\x7f-\x9f]+$")
    )]
    pub caller_claim: Option<String>,
    /// Claim whose value is a list (or a space-separated string) of the
    /// caller's groups or roles, used by `spec.access` rules (default
    /// `groups`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[^\x00-\x1f\x7f-\x9f]+$")
    )]
    pub groups_claim: Option<String>,
    /// Claim that must equal the tenant id (`metadata.name`), if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[^\x00-\x1f\x7f-\x9f]+$")
    )]
    pub tenant_claim: Option<String>,
    /// Signing algorithms accepted (asymmetric only; default RS256 and
    /// ES256). `none` and HMAC algorithms are never accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9), extend("x-kubernetes-list-type" = "set"))]
    pub algorithms: Vec<SigningAlgorithm>,
    /// Clock skew allowed when checking `exp` and `nbf`, in seconds
    /// (default 60, at most 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 300))]
    pub clock_skew_seconds: Option<u32>,
    /// Where the server reaches the issuer's metadata and JWKS; the
    /// NetworkPolicy opens exactly this.
    pub issuer_network: IssuerNetwork,
}

/// Asymmetric JWS algorithms (RFC 7518, RFC 8037) an access token may be
/// signed with.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum SigningAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

/// Where the issuer is, for the NetworkPolicy: outside the cluster (CIDRs)
/// or inside it (a namespace selector). Exactly one of `cidrs` and
/// `namespaceSelector`; `podSelector` only with `namespaceSelector`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.cidrs) && size(self.cidrs) > 0) ? !has(self.namespaceSelector) : has(self.namespaceSelector)",
        "message": "exactly one of cidrs (an issuer outside the cluster) and namespaceSelector (an issuer inside it) must be set"
    },
    {
        "rule": "!has(self.podSelector) || has(self.namespaceSelector)",
        "message": "podSelector needs namespaceSelector: it selects the issuer's pods within those namespaces",
        "fieldPath": ".podSelector"
    }
]))]
pub struct IssuerNetwork {
    /// Destination ranges of the issuer, in canonical CIDR notation (no
    /// host bits set), e.g. `203.0.113.10/32`, neither overlapping the
    /// link-local ranges (`169.254.0.0/16`, `fe80::/10`) nor containing a
    /// cloud metadata address (e.g. `fd00:ec2::254`). Private, link-local,
    /// loopback and cluster ranges inside them stay closed unless named
    /// exactly, as for `spec.network.egress.cidrs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(length(max = 49)),
        extend(
            "x-kubernetes-list-type" = "set",
            "x-kubernetes-validations" = [{
                "rule": "self.all(c, isCIDR(c) && cidr(c) == cidr(c).masked())",
                "message": "each entry must be an IPv4 or IPv6 range in canonical CIDR notation (no host bits set), e.g. 203.0.113.10/32"
            }]
        ),
        transform = issuer_cidrs_metadata_rule
    )]
    pub cidrs: Vec<String>,
    /// Namespaces of an in-cluster issuer (by `kubernetes.io/metadata.name`
    /// preferably); its addresses are private, which the server then allows
    /// for the issuer only (cloud metadata addresses never). It must name
    /// namespaces with matchLabels or an `In` expression, as each
    /// `spec.network.ingressFrom` selector must.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = issuer_namespace_selector_rule)]
    pub namespace_selector: Option<LabelSelector>,
    /// Pods of an in-cluster issuer within those namespaces (all of their
    /// pods when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = issuer_pod_selector_rule)]
    pub pod_selector: Option<LabelSelector>,
    /// Destination TCP ports (default 443).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(range(min = 1, max = 65535)), extend("x-kubernetes-list-type" = "set"))]
    pub ports: Vec<i32>,
}

/// CEL rule on `issuer` and `resource`: no default port (`:443` with
/// https, `:80` with http, with leading zeros too) and no empty port, which
/// the URL Standard serialisation drops (RFC 3986 section 6.2.3). The
/// pattern beside it refuses upper-case hosts; the code checks the full
/// canonical form.
const DEFAULT_PORT_RULE: &str =
    "!self.matches('^(https://[^/?#]*:(0*443)?|http://[^/?#]*:(0*80)?)([/?#]|$)')";
const DEFAULT_PORT_MESSAGE: &str =
    "must be in canonical form: no default port (:443 with https, :80 with http) and no empty port";

/// Adds to `issuerNetwork.cidrs` the rule of
/// [`crate::validation::ISSUER_CIDR_RULE`] ([`crate::cidr::Cidr::metadata_reach`]),
/// written from [`CLOSED_RANGES`], [`LINK_LOCAL_RANGES`] and
/// [`METADATA_ADDRESSES`]: a range inside a link-local range, or inside
/// another closed range and containing a metadata address it holds.
fn issuer_cidrs_metadata_rule(schema: &mut schemars::Schema) {
    let mut terms = Vec::new();
    for closed in closed_ranges() {
        let inside = format!("cidr('{closed}').containsCIDR(cidr(c))");
        if LINK_LOCAL_RANGES.iter().any(|l| l.contains(&closed)) {
            terms.push(inside);
            continue;
        }
        let held: Vec<String> = METADATA_ADDRESSES
            .iter()
            .filter(|ip| closed.contains_ip(**ip))
            .map(|ip| format!("cidr(c).containsIP(ip('{ip}'))"))
            .collect();
        if !held.is_empty() {
            terms.push(format!("({inside} && ({}))", held.join(" || ")));
        }
    }
    let rule = serde_json::json!({
        "rule": format!("self.all(c, !isCIDR(c) || !({}))", terms.join(" || ")),
        "message": crate::validation::ISSUER_CIDR_RULE,
    });
    let rules = schema
        .ensure_object()
        .entry("x-kubernetes-validations")
        .or_insert_with(|| serde_json::Value::Array(Vec::new()));
    if let serde_json::Value::Array(rules) = rules {
        rules.push(rule);
    }
}

/// Which callers may use which tools. A caller matches the rule if it
/// matches any of `subjects`; the rule then allows the tools `tools` names.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessRule {
    /// Who the rule is for.
    #[schemars(length(min = 1, max = 32))]
    pub subjects: Vec<AccessSubject>,
    /// Tool names, or patterns where `*` matches any run of characters
    /// (`github_*`, `*`): the characters of MCP tool names (ASCII letters,
    /// digits, '_', '-' and '.'; MCP specification 2025-11-25, "Tool
    /// names") and `*`.
    #[schemars(
        length(min = 1, max = 64),
        inner(length(min = 1, max = 128), regex(pattern = r"^[-_.*A-Za-z0-9]+$"))
    )]
    pub tools: Vec<String>,
}

/// One kind of caller; exactly one field is set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.apiKeyCaller) ? 1 : 0) + (has(self.tokenSubject) ? 1 : 0) + (has(self.group) ? 1 : 0) + (has(self.scope) ? 1 : 0) == 1",
    "message": "exactly one of apiKeyCaller, tokenSubject, group and scope must be set"
}]))]
pub struct AccessSubject {
    /// An API-key caller id (a data key of `bulkhead-api-keys`: letters,
    /// digits, '-', '_' and '.'). Needs `spec.auth.apiKeys`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub api_key_caller: Option<String>,
    /// A token caller: the value of the caller claim (`sub` by default).
    /// Needs `spec.auth.oauth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[^\x00-\x1f\x7f-\x9f]+$")
    )]
    pub token_subject: Option<String>,
    /// A group or role in the token's groups claim. Needs `spec.auth.oauth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[^\x00-\x1f\x7f-\x9f]+$")
    )]
    pub group: Option<String>,
    /// A scope the token carries (an RFC 6749 scope token). Needs
    /// `spec.auth.oauth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[\x21\x23-\x5b\x5d-\x7e]+$")
    )]
    pub scope: Option<String>,
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
    /// Ready, NamespaceReady, NetworkIsolated, CredentialsBound, ServerAvailable;
    /// one entry per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
