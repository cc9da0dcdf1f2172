//! Validation of a Tenant in code: the same rules the CRD schema states (as
//! patterns, bounds and CEL rules), checked again by the operator.
//!
//! This module is the one rulebook for a Tenant's fields. The rules for
//! single fields ([`check_base_url`], [`check_allow_method`],
//! [`check_allow_path`], [`check_rate_limit`], [`check_tool_name`],
//! [`is_ref_name`], [`is_secret_key`], [`is_dns_label`]) and of the
//! authentication and access sections ([`check_oauth`],
//! [`check_auth_and_access`] and the single-value rules they use) are
//! public because
//! the server's configuration loader applies them too: whatever `render` and
//! the operator accept, the server starts with, and what the server would
//! refuse never reaches a cluster.
//!
//! The API server enforces the schema only on clusters where the CRD is
//! installed at this version and only for requests it sees; a Tenant read
//! from a file (`bulkhead-operator render`), stored under an older CRD, or on
//! a cluster whose CEL library lacks a function still passes through here
//! before anything is built from it. Every problem is reported at once, each
//! with the path of the field and the reason.

use std::collections::{BTreeSet, HashSet};
use std::fmt;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::cidr::Cidr;
use crate::tenant::{
    AccessRule, AccessSubject, Connector, ConnectorType, IssuerNetwork, RateLimit,
    SigningAlgorithm, Tenant,
};

/// Longest namespace name Kubernetes accepts (a DNS-1123 label).
pub const MAX_NAMESPACE_LEN: usize = 63;
/// Namespace prefix the CRD schema's length rule assumes (`bulkhead-`).
pub const SCHEMA_NAMESPACE_PREFIX: &str = "bulkhead-";
/// Longest tenant id the CRD schema admits: the id plus the default prefix
/// must fit a namespace name.
pub const MAX_TENANT_ID_LEN: usize = MAX_NAMESPACE_LEN - SCHEMA_NAMESPACE_PREFIX.len();
/// Largest number of server replicas a Tenant may ask for.
pub const MAX_REPLICAS: i32 = 50;
/// Longest credential or connector name.
pub const MAX_REF_NAME_LEN: usize = 63;
/// Longest allow-list path pattern.
pub const MAX_PATH_LEN: usize = 512;
/// Longest connector base URL.
pub const MAX_BASE_URL_LEN: usize = 2048;
/// Largest sustained rate of a rate limit, in requests per minute (the
/// schema's `maximum`).
pub const MAX_REQUESTS_PER_MINUTE: u32 = 1_000_000;
/// Largest burst of a rate limit (the schema's `maximum`).
pub const MAX_BURST: u32 = 100_000;
/// Longest tool name of a per-tool rate limit.
pub const MAX_TOOL_NAME_LEN: usize = 128;
/// Longest issuer or resource URL.
pub const MAX_OAUTH_URL_LEN: usize = 2048;
/// Longest scope token (required scope or `scope` subject).
pub const MAX_SCOPE_LEN: usize = 256;
/// Longest claim name (`callerClaim`, `groupsClaim`, `tenantClaim`).
pub const MAX_CLAIM_NAME_LEN: usize = 128;
/// Longest `tokenSubject` or `group` value of an access subject.
pub const MAX_SUBJECT_LEN: usize = 256;
/// Longest tool name or pattern of an access rule (MCP specification
/// 2025-11-25, "Tool names": 1 to 128 characters).
pub const MAX_TOOL_PATTERN_LEN: usize = 128;
/// Largest clock skew allowed for `exp` and `nbf`, in seconds.
pub const MAX_CLOCK_SKEW_SECONDS: u32 = 300;
/// Largest number of entries of each list in the spec, as the schema's
/// `maxItems` states them. Bounded lists keep the CEL rules' cost within
/// the API server's budget.
pub const MAX_ITEMS: &[(&str, usize)] = &[
    ("spec.server.tolerations", 32),
    ("spec.credentials", 32),
    ("spec.connectors", 32),
    ("spec.connectors[].allow", 32),
    ("spec.network.ingressFrom", 16),
    ("spec.network.ingressFrom[].matchExpressions", 16),
    ("spec.network.egress.cidrs", 64),
    ("spec.network.egress.ports", 32),
    ("spec.rateLimits.perTool", 64),
    ("spec.auth.oauth.requiredScopes", 16),
    ("spec.auth.oauth.algorithms", 9),
    ("spec.auth.oauth.issuerNetwork.cidrs", 16),
    ("spec.auth.oauth.issuerNetwork.ports", 8),
    (
        "spec.auth.oauth.issuerNetwork.namespaceSelector.matchExpressions",
        16,
    ),
    (
        "spec.auth.oauth.issuerNetwork.podSelector.matchExpressions",
        16,
    ),
    ("spec.access", 64),
    ("spec.access[].subjects", 32),
    ("spec.access[].tools", 64),
];
/// HTTP methods an `http` connector's allow-list may name.
pub const ALLOWED_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

/// One problem with one field of a Tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `spec.connectors[1].credential`.
    pub field: String,
    /// Why the value is refused, and what would be accepted.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// A Tenant that cannot be built: every field error found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid Tenant: {}", join(&self.errors))]
pub struct InvalidTenant {
    /// The problems, in field order.
    pub errors: Vec<FieldError>,
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl InvalidTenant {
    /// True when some error concerns `field` exactly.
    pub fn names_field(&self, field: &str) -> bool {
        self.errors.iter().any(|e| e.field == field)
    }
}

/// How the operator names tenant namespaces; tenant ids are checked against it.
#[derive(Clone, Copy, Debug)]
pub struct NamespaceNaming<'a> {
    /// Prefix of every tenant namespace (`bulkhead-` by default).
    pub prefix: &'a str,
    /// Namespace the operator runs in; no tenant may take it.
    pub operator_namespace: &'a str,
}

impl Default for NamespaceNaming<'_> {
    fn default() -> Self {
        Self {
            prefix: SCHEMA_NAMESPACE_PREFIX,
            operator_namespace: "bulkhead-system",
        }
    }
}

/// Collects field errors while walking a Tenant.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            reason: reason.into(),
        });
    }
}

/// Checks every rule of the Tenant schema, and the namespace naming rules
/// that depend on how the operator is configured.
pub fn validate_tenant(tenant: &Tenant, naming: &NamespaceNaming<'_>) -> Result<(), InvalidTenant> {
    let mut errors = Errors::default();
    validate_id(tenant.metadata.name.as_deref(), naming, &mut errors);
    validate_spec(tenant, &mut errors);
    if errors.0.is_empty() {
        Ok(())
    } else {
        Err(InvalidTenant { errors: errors.0 })
    }
}

/// True for a DNS-1123 label: lower-case letters, digits and `-`, starting
/// and ending with a letter or digit, at most 63 characters.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAMESPACE_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// True for a DNS-1123 subdomain as Kubernetes validates names such as a
/// RuntimeClass's (apimachinery `IsDNS1123Subdomain`): at most 253
/// characters, dot-separated parts of lower-case letters, digits and `-`,
/// each starting and ending with a letter or digit. Kubernetes sets no
/// length limit on the parts.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

fn validate_id(id: Option<&str>, naming: &NamespaceNaming<'_>, errors: &mut Errors) {
    const FIELD: &str = "metadata.name";
    let Some(id) = id else {
        errors.add(FIELD, "is required: it is the tenant id");
        return;
    };
    if !is_dns_label(id) {
        errors.add(
            FIELD,
            format!(
                "{id:?} is not a DNS-1123 label (lower-case letters, digits and '-', starting and ending with a letter or digit)"
            ),
        );
        return;
    }
    let namespace = format!("{}{id}", naming.prefix);
    if namespace.len() > MAX_NAMESPACE_LEN {
        errors.add(
            FIELD,
            format!(
                "{id:?} is too long: namespace {namespace:?} would have {} characters, at most {MAX_NAMESPACE_LEN} are allowed",
                namespace.len()
            ),
        );
    } else if !is_dns_label(&namespace) {
        errors.add(
            FIELD,
            format!("{id:?} would give the invalid namespace name {namespace:?}"),
        );
    } else if namespace == naming.operator_namespace {
        errors.add(
            FIELD,
            format!("{id:?} is reserved: namespace {namespace:?} is the operator's own namespace"),
        );
    } else if matches!(
        namespace.as_str(),
        "default" | "kube-system" | "kube-public" | "kube-node-lease"
    ) || namespace.starts_with("kube-")
    {
        errors.add(
            FIELD,
            format!("{id:?} is reserved: namespace {namespace:?} belongs to Kubernetes itself"),
        );
    }
}

/// Largest number of entries of the list at `path` (see [`MAX_ITEMS`]).
fn max_items(path: &str) -> usize {
    MAX_ITEMS
        .iter()
        .find(|(p, _)| *p == path)
        .map_or(usize::MAX, |(_, max)| *max)
}

fn check_len(field: &str, schema_path: &str, len: usize, errors: &mut Errors) {
    let max = max_items(schema_path);
    if len > max {
        errors.add(
            field,
            format!("has {len} entries, at most {max} are allowed"),
        );
    }
}

fn validate_spec(tenant: &Tenant, errors: &mut Errors) {
    let spec = &tenant.spec;
    for (path, len) in [
        ("spec.server.tolerations", spec.server.tolerations.len()),
        ("spec.credentials", spec.credentials.len()),
        ("spec.connectors", spec.connectors.len()),
        ("spec.network.ingressFrom", spec.network.ingress_from.len()),
        ("spec.network.egress.cidrs", spec.network.egress.cidrs.len()),
        ("spec.network.egress.ports", spec.network.egress.ports.len()),
        ("spec.rateLimits.perTool", spec.rate_limits.per_tool.len()),
    ] {
        check_len(path, path, len, errors);
    }
    for (i, connector) in spec.connectors.iter().enumerate() {
        check_len(
            &format!("spec.connectors[{i}].allow"),
            "spec.connectors[].allow",
            connector.allow.len(),
            errors,
        );
    }
    if let Some(name) = &spec.display_name
        && (name.chars().count() > 256 || name.chars().any(char::is_control))
    {
        errors.add(
            "spec.displayName",
            "must be at most 256 characters without control characters",
        );
    }

    let server = &spec.server;
    if let Some(replicas) = server.replicas
        && !(0..=MAX_REPLICAS).contains(&replicas)
    {
        errors.add(
            "spec.server.replicas",
            format!("{replicas} is out of range: must be between 0 and {MAX_REPLICAS}"),
        );
    }
    if let Some(image) = &server.image
        && (image.is_empty()
            || image.chars().count() > 512
            || image.chars().any(char::is_whitespace))
    {
        errors.add(
            "spec.server.image",
            "must be a non-empty image reference without spaces",
        );
    }
    if let Some(class) = &server.runtime_class_name
        && !is_dns_subdomain(class)
    {
        errors.add(
            "spec.server.runtimeClassName",
            format!("{class:?} is not a valid RuntimeClass name (DNS-1123 subdomain)"),
        );
    }

    let mut credential_names = BTreeSet::new();
    for (i, credential) in spec.credentials.iter().enumerate() {
        let field = format!("spec.credentials[{i}]");
        validate_ref_name(&format!("{field}.name"), &credential.name, errors);
        if !credential_names.insert(credential.name.as_str()) {
            errors.add(
                format!("{field}.name"),
                format!(
                    "credential {:?} is declared more than once",
                    credential.name
                ),
            );
        }
        if !is_secret_key(&credential.key) {
            errors.add(
                format!("{field}.key"),
                format!(
                    "{:?} is not a valid Secret key (letters, digits, '-', '_' and '.', at most 253 characters)",
                    credential.key
                ),
            );
        }
    }

    let mut connector_names = BTreeSet::new();
    for (i, connector) in spec.connectors.iter().enumerate() {
        let field = format!("spec.connectors[{i}]");
        validate_ref_name(&format!("{field}.name"), &connector.name, errors);
        if !connector_names.insert(connector.name.as_str()) {
            errors.add(
                format!("{field}.name"),
                format!("connector {:?} is declared more than once", connector.name),
            );
        }
        validate_connector(&field, connector, &credential_names, errors);
    }

    for (i, selector) in spec.network.ingress_from.iter().enumerate() {
        validate_selector(
            &format!("spec.network.ingressFrom[{i}]"),
            "spec.network.ingressFrom[].matchExpressions",
            selector,
            true,
            errors,
        );
    }
    validate_cidrs(
        "spec.network.egress.cidrs",
        &spec.network.egress.cidrs,
        errors,
    );
    validate_ports(
        "spec.network.egress.ports",
        &spec.network.egress.ports,
        errors,
    );

    let quota = &spec.quota;
    for (name, value) in [("cpu", &quota.cpu), ("memory", &quota.memory)] {
        if let Some(quantity) = value
            && !is_positive_quantity(quantity)
        {
            errors.add(
                format!("spec.quota.{name}"),
                format!(
                    "{:?} is not a positive quantity (e.g. \"2\", \"500m\", \"4Gi\")",
                    quantity.0
                ),
            );
        }
    }
    for (name, value) in [
        ("pods", quota.pods),
        ("services", quota.services),
        ("configMaps", quota.config_maps),
        ("secrets", quota.secrets),
        ("persistentVolumeClaims", quota.persistent_volume_claims),
    ] {
        if let Some(count) = value
            && count < 0
        {
            errors.add(format!("spec.quota.{name}"), format!("{count} is negative"));
        }
    }

    if let Some(limit) = &spec.rate_limits.per_caller {
        validate_rate_limit("spec.rateLimits.perCaller", limit, errors);
    }
    let mut tools = BTreeSet::new();
    for (i, tool) in spec.rate_limits.per_tool.iter().enumerate() {
        let field = format!("spec.rateLimits.perTool[{i}]");
        if let Err(reason) = check_tool_name(&tool.tool) {
            errors.add(format!("{field}.tool"), reason);
        } else if !tools.insert(tool.tool.as_str()) {
            errors.add(
                format!("{field}.tool"),
                format!("tool {:?} has more than one rate limit", tool.tool),
            );
        }
        validate_rate_limit(
            &field,
            &RateLimit {
                requests_per_minute: tool.requests_per_minute,
                burst: tool.burst,
            },
            errors,
        );
    }

    if let Some(oauth) = &spec.auth.oauth {
        let fields = OAuthFields {
            issuer: &oauth.issuer,
            resource: &oauth.resource,
            required_scopes: &oauth.required_scopes,
            caller_claim: oauth.caller_claim.as_deref(),
            groups_claim: oauth.groups_claim.as_deref(),
            tenant_claim: oauth.tenant_claim.as_deref(),
            algorithms: &oauth.algorithms,
            clock_skew_seconds: oauth.clock_skew_seconds,
        };
        for (field, reason) in check_oauth(&fields) {
            errors.add(format!("spec.auth.oauth.{field}"), reason);
        }
        validate_issuer_network(&oauth.issuer_network, errors);
    }
    for (field, reason) in
        check_auth_and_access(spec.auth.api_keys, spec.auth.oauth.is_some(), &spec.access)
    {
        errors.add(format!("spec.{field}"), reason);
    }
}

/// Canonical CIDRs, each listed once. The schema's `set` list compares the
/// strings, so `::/0` and `0:0:0:0:0:0:0:0/0` are two entries for the API
/// server and here too (the NetworkPolicy just carries the range twice).
fn validate_cidrs(field: &str, cidrs: &[String], errors: &mut Errors) {
    let mut seen = BTreeSet::new();
    for (i, cidr) in cidrs.iter().enumerate() {
        let field = format!("{field}[{i}]");
        match cidr.parse::<Cidr>() {
            Ok(_) => {
                if !seen.insert(cidr.as_str()) {
                    errors.add(field, format!("{cidr} is listed more than once"));
                }
            }
            Err(e) => errors.add(field, e.to_string()),
        }
    }
}

/// TCP ports, each listed once (a `set` list in the schema).
fn validate_ports(field: &str, ports: &[i32], errors: &mut Errors) {
    let mut seen = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let field = format!("{field}[{i}]");
        if !(1..=65535).contains(port) {
            errors.add(field, format!("{port} is not a TCP port (1-65535)"));
        } else if !seen.insert(*port) {
            errors.add(field, format!("port {port} is listed more than once"));
        }
    }
}

/// A label selector the NetworkPolicy will carry: at most 16 expressions,
/// each valid for its operator (apimachinery
/// `ValidateLabelSelectorRequirement`), and when `must_name` is set, one
/// that names namespaces (matchLabels or an `In` expression).
fn validate_selector(
    field: &str,
    schema_path: &str,
    selector: &LabelSelector,
    must_name: bool,
    errors: &mut Errors,
) {
    check_len(
        &format!("{field}.matchExpressions"),
        schema_path,
        selector.match_expressions.as_ref().map_or(0, Vec::len),
        errors,
    );
    let has_labels = selector
        .match_labels
        .as_ref()
        .is_some_and(|l| !l.is_empty());
    let has_in = selector
        .match_expressions
        .iter()
        .flatten()
        .any(|requirement| requirement.operator == "In");
    if must_name && !has_labels && !has_in {
        errors.add(
            field,
            "a namespace selector must name namespaces with matchLabels or an In expression: an empty selector would admit every namespace, and NotIn, Exists or DoesNotExist alone admit almost every one",
        );
    }
    // The API server checks these when the NetworkPolicy is applied; here
    // they are refused before anything is built.
    for (j, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        let field = format!("{field}.matchExpressions[{j}]");
        let has_values = requirement.values.as_ref().is_some_and(|v| !v.is_empty());
        match requirement.operator.as_str() {
            "In" | "NotIn" if !has_values => errors.add(
                format!("{field}.values"),
                "must not be empty for In and NotIn",
            ),
            "Exists" | "DoesNotExist" if has_values => errors.add(
                format!("{field}.values"),
                "must be empty for Exists and DoesNotExist",
            ),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errors.add(
                format!("{field}.operator"),
                format!("{other:?} is not one of In, NotIn, Exists, DoesNotExist"),
            ),
        }
    }
}

/// Why an issuer range may not reach link-local or cloud metadata
/// addresses; the schema's rule on `issuerNetwork.cidrs` gives it too.
pub const ISSUER_CIDR_RULE: &str = "an issuer range must not lie inside the link-local ranges 169.254.0.0/16 and fe80::/10, nor inside another closed range (such as fc00::/7 or 100.64.0.0/10) while containing a cloud metadata address (such as fd00:ec2::254): the server never fetches from them, and the NetworkPolicy would open them to the tenant's pods";

/// Where the issuer is: exactly one of `cidrs` and `namespaceSelector`,
/// `podSelector` only with `namespaceSelector`; the CIDRs, ports and
/// selectors under the rules of `spec.network`, and no range reaching
/// link-local or cloud metadata addresses ([`Cidr::metadata_reach`]).
fn validate_issuer_network(network: &IssuerNetwork, errors: &mut Errors) {
    const FIELD: &str = "spec.auth.oauth.issuerNetwork";
    for (name, len) in [
        ("cidrs", network.cidrs.len()),
        ("ports", network.ports.len()),
    ] {
        let path = format!("{FIELD}.{name}");
        check_len(&path, &path, len, errors);
    }
    if network.cidrs.is_empty() == network.namespace_selector.is_none() {
        errors.add(
            FIELD,
            "exactly one of cidrs (an issuer outside the cluster) and namespaceSelector (an issuer inside it) must be set",
        );
    }
    if network.pod_selector.is_some() && network.namespace_selector.is_none() {
        errors.add(
            format!("{FIELD}.podSelector"),
            "podSelector needs namespaceSelector: it selects the issuer's pods within those namespaces",
        );
    }
    validate_cidrs(&format!("{FIELD}.cidrs"), &network.cidrs, errors);
    for (i, cidr) in network.cidrs.iter().enumerate() {
        if let Some(reach) = cidr.parse::<Cidr>().ok().and_then(|c| c.metadata_reach()) {
            errors.add(
                format!("{FIELD}.cidrs[{i}]"),
                format!("{cidr} {reach}: {ISSUER_CIDR_RULE}"),
            );
        }
    }
    validate_ports(&format!("{FIELD}.ports"), &network.ports, errors);
    for (name, selector, must_name) in [
        ("namespaceSelector", &network.namespace_selector, true),
        ("podSelector", &network.pod_selector, false),
    ] {
        if let Some(selector) = selector {
            let field = format!("{FIELD}.{name}");
            validate_selector(
                &field,
                &format!("{field}.matchExpressions"),
                selector,
                must_name,
                errors,
            );
        }
    }
}

/// The OAuth settings that both `spec.auth.oauth` and the server
/// configuration's `auth.oauth` carry, borrowed for [`check_oauth`].
/// Claims and the clock skew are `None` where the Tenant leaves the
/// default.
#[derive(Clone, Copy, Debug)]
pub struct OAuthFields<'a> {
    /// Issuer identifier (RFC 8414).
    pub issuer: &'a str,
    /// Resource identifier (RFC 8707).
    pub resource: &'a str,
    /// Scopes every token must carry.
    pub required_scopes: &'a [String],
    /// Claim naming the caller.
    pub caller_claim: Option<&'a str>,
    /// Claim listing the caller's groups.
    pub groups_claim: Option<&'a str>,
    /// Claim that must equal the tenant id.
    pub tenant_claim: Option<&'a str>,
    /// Accepted signing algorithms.
    pub algorithms: &'a [SigningAlgorithm],
    /// Allowed clock skew, in seconds.
    pub clock_skew_seconds: Option<u32>,
}

/// The problems of the OAuth settings, each with its field relative to the
/// `oauth` object (`issuer`, `requiredScopes[1]`, ...): the issuer by
/// [`check_issuer_url`], the resource by [`check_resource_url`], scope
/// tokens by [`check_scope_token`] and each listed once, claim names by
/// [`check_claim_name`], algorithms each listed once (the type admits only
/// asymmetric ones), a clock skew of at most [`MAX_CLOCK_SKEW_SECONDS`],
/// and the list bounds of [`MAX_ITEMS`].
pub fn check_oauth(oauth: &OAuthFields<'_>) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if let Err(reason) = check_issuer_url(oauth.issuer) {
        problems.push(("issuer".to_owned(), format!("{:?} {reason}", oauth.issuer)));
    }
    if let Err(reason) = check_resource_url(oauth.resource) {
        problems.push((
            "resource".to_owned(),
            format!("{:?} {reason}", oauth.resource),
        ));
    }
    for (name, len) in [
        ("requiredScopes", oauth.required_scopes.len()),
        ("algorithms", oauth.algorithms.len()),
    ] {
        let max = max_items(&format!("spec.auth.oauth.{name}"));
        if len > max {
            problems.push((
                name.to_owned(),
                format!("has {len} entries, at most {max} are allowed"),
            ));
        }
    }
    let mut scopes = BTreeSet::new();
    for (i, scope) in oauth.required_scopes.iter().enumerate() {
        let field = format!("requiredScopes[{i}]");
        if let Err(reason) = check_scope_token(scope) {
            problems.push((field, format!("{scope:?} {reason}")));
        } else if !scopes.insert(scope.as_str()) {
            problems.push((field, format!("scope {scope:?} is listed more than once")));
        }
    }
    for (name, claim) in [
        ("callerClaim", oauth.caller_claim),
        ("groupsClaim", oauth.groups_claim),
        ("tenantClaim", oauth.tenant_claim),
    ] {
        if let Some(claim) = claim
            && let Err(reason) = check_claim_name(claim)
        {
            problems.push((name.to_owned(), format!("{claim:?} {reason}")));
        }
    }
    let mut algorithms = HashSet::new();
    for (i, algorithm) in oauth.algorithms.iter().enumerate() {
        if !algorithms.insert(algorithm) {
            problems.push((
                format!("algorithms[{i}]"),
                format!("{algorithm:?} is listed more than once"),
            ));
        }
    }
    if let Some(skew) = oauth.clock_skew_seconds
        && skew > MAX_CLOCK_SKEW_SECONDS
    {
        problems.push((
            "clockSkewSeconds".to_owned(),
            format!("{skew} is more than {MAX_CLOCK_SKEW_SECONDS} seconds"),
        ));
    }
    problems
}

/// True for a host a test issuer or resource may use over plain http: the
/// literal `localhost`, an IPv4 address in 127.0.0.0/8 written as four
/// decimal parts, or `[::1]`, with an optional port of 1 to 5 digits.
fn is_loopback_authority(authority: &str) -> bool {
    let (host, port) = match authority.strip_prefix("[::1]") {
        Some(rest) => ("[::1]", rest),
        None => authority.split_at(authority.find(':').unwrap_or(authority.len())),
    };
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|digits| {
            (1..=5).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
        });
    let decimal_part =
        |p: &str| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
    let host_ok = host == "localhost"
        || host == "[::1]"
        || host.strip_prefix("127.").is_some_and(|rest| {
            let parts: Vec<&str> = rest.split('.').collect();
            parts.len() == 3 && parts.iter().all(|p| decimal_part(p))
        });
    host_ok && port_ok
}

/// An issuer or resource URL: https (http on a loopback host only), a host
/// that parses as a URL host, no user information or fragment, a query only
/// when `query_allowed`, at most [`MAX_OAUTH_URL_LEN`] characters and no
/// whitespace or control characters, written in canonical form: as the URL
/// Standard serialises it, which is what clients request tokens for.
fn check_oauth_url(url: &str, query_allowed: bool) -> Result<(), String> {
    if url.chars().count() > MAX_OAUTH_URL_LEN
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err("must be at most 2048 characters without spaces".to_owned());
    }
    let (rest, https) = match url.strip_prefix("https://") {
        Some(rest) => (rest, true),
        None => (
            url.strip_prefix("http://")
                .ok_or("must start with https:// (or http:// on a loopback host)")?,
            false,
        ),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err("has no host".to_owned());
    }
    if authority.contains('@') {
        return Err("must not carry user information".to_owned());
    }
    if rest.contains('#') {
        return Err("must not carry a fragment".to_owned());
    }
    if !query_allowed && rest.contains('?') {
        return Err("must not carry a query".to_owned());
    }
    if !https && !is_loopback_authority(authority) {
        return Err(
            "must use https; http only on a loopback host (localhost, 127.x.y.z or [::1]) for tests"
                .to_owned(),
        );
    }
    let parsed = match url::Url::parse(url) {
        Ok(parsed) if parsed.host_str().is_some_and(|h| !h.is_empty()) => parsed,
        Ok(_) => return Err("has no host".to_owned()),
        Err(_) => {
            return Err(
                "is not a valid URL: check the host name and the port (1-65535)".to_owned(),
            );
        }
    };
    let canonical = parsed.as_str();
    // An empty path stands for `/` (RFC 3986 section 6.2.3); the MCP
    // specification writes the bare origin without the slash.
    let (origin, tail) = url.split_at(url.len() - rest.len() + authority.len());
    let empty_path_for_slash = !tail.starts_with('/') && canonical == format!("{origin}/{tail}");
    if url == canonical || empty_path_for_slash {
        Ok(())
    } else {
        Err(format!(
            "is not in canonical form (RFC 3986 section 6.2.2, as clients serialise it per the URL Standard; MCP authorization, canonical server URI): lower-case scheme and host, no default port (443 for https, 80 for http), no fragment; write {canonical:?}"
        ))
    }
}

/// An issuer identifier (RFC 8414 section 2: "a URL that uses the https
/// scheme and has no query or fragment components"): https, or http on a
/// loopback host (`localhost`, `127.x.y.z`, `[::1]`) for tests; no user
/// information, query or fragment; at most [`MAX_OAUTH_URL_LEN`]
/// characters without whitespace or control characters; in canonical form
/// (lower-case scheme and host, no default port), since the metadata's
/// `issuer` and every token's `iss` must equal it verbatim and providers
/// publish the canonical form.
///
/// # Errors
/// The reason, to follow the quoted URL in a message; for a URL that is
/// valid but not canonical it names the canonical form.
pub fn check_issuer_url(url: &str) -> Result<(), String> {
    check_oauth_url(url, false)
}

/// A resource identifier (RFC 8707 section 2: an absolute URI that "MUST
/// NOT include a fragment component"): https, or http on a loopback host for
/// tests; no user information or fragment; at most [`MAX_OAUTH_URL_LEN`]
/// characters without whitespace or control characters; in canonical form
/// as the URL Standard serialises it (lower-case scheme and host, no default
/// port, IDNA host, normalised path), since clients (the MCP TypeScript SDK
/// among them) request tokens for that form and `aud` is compared verbatim.
/// A bare origin may omit the `/` of its empty path.
///
/// # Errors
/// The reason, to follow the quoted URL in a message; for a URL that is
/// valid but not canonical it names the canonical form.
pub fn check_resource_url(url: &str) -> Result<(), String> {
    check_oauth_url(url, true)
}

/// A scope token (RFC 6749 section 3.3: `%x21 / %x23-5B / %x5D-7E`, so
/// printable ASCII without space, `"` and `\`), 1 to [`MAX_SCOPE_LEN`]
/// characters.
///
/// # Errors
/// The reason, to follow the quoted scope in a message.
pub fn check_scope_token(scope: &str) -> Result<(), &'static str> {
    if scope.is_empty() || scope.len() > MAX_SCOPE_LEN {
        return Err("must be 1 to 256 characters");
    }
    if scope
        .bytes()
        .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
    {
        Ok(())
    } else {
        Err("is not an RFC 6749 scope token (printable ASCII without spaces, '\"' and '\\')")
    }
}

/// A JWT claim name: 1 to [`MAX_CLAIM_NAME_LEN`] characters without control
/// characters (RFC 7519 section 4 allows any string; the bound keeps logs
/// and configuration readable).
///
/// # Errors
/// The reason, to follow the quoted name in a message.
pub fn check_claim_name(claim: &str) -> Result<(), &'static str> {
    bounded_text(claim, MAX_CLAIM_NAME_LEN)
        .map_err(|()| "must be a claim name of 1 to 128 characters without control characters")
}

fn bounded_text(value: &str, max: usize) -> Result<(), ()> {
    let len = value.chars().count();
    if (1..=max).contains(&len) && !value.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(())
    }
}

/// A tool name or pattern of an access rule: 1 to [`MAX_TOOL_PATTERN_LEN`]
/// characters of MCP tool names (ASCII letters, digits, `_`, `-` and `.`;
/// MCP specification 2025-11-25, "Tool names") and `*`, which matches any
/// run of characters.
///
/// # Errors
/// The reason, to follow the quoted pattern in a message.
pub fn check_tool_pattern(pattern: &str) -> Result<(), &'static str> {
    if !pattern.is_empty()
        && pattern.len() <= MAX_TOOL_PATTERN_LEN
        && pattern
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'*'))
    {
        Ok(())
    } else {
        Err(
            "must be a tool name or pattern of 1 to 128 ASCII letters, digits, '_', '-', '.' and '*'",
        )
    }
}

/// The problems of one access subject, each with its field relative to the
/// subject (`""` for the subject itself): exactly one field set; an
/// `apiKeyCaller` a Secret key ([`is_secret_key`], as caller ids are); a
/// `tokenSubject` or `group` of 1 to [`MAX_SUBJECT_LEN`] characters without
/// control characters; a `scope` a scope token ([`check_scope_token`]).
pub fn check_access_subject(subject: &AccessSubject) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    let set = [
        subject.api_key_caller.is_some(),
        subject.token_subject.is_some(),
        subject.group.is_some(),
        subject.scope.is_some(),
    ]
    .into_iter()
    .filter(|set| *set)
    .count();
    if set != 1 {
        problems.push((
            "",
            "exactly one of apiKeyCaller, tokenSubject, group and scope must be set".to_owned(),
        ));
    }
    if let Some(caller) = &subject.api_key_caller
        && !is_secret_key(caller)
    {
        problems.push((
            "apiKeyCaller",
            format!(
                "{caller:?} is not an API-key caller id (a key of the API-key Secret: letters, digits, '-', '_' and '.', at most 253 characters)"
            ),
        ));
    }
    for (name, value) in [
        ("tokenSubject", &subject.token_subject),
        ("group", &subject.group),
    ] {
        if let Some(value) = value
            && bounded_text(value, MAX_SUBJECT_LEN).is_err()
        {
            problems.push((
                name,
                format!("{value:?} must be 1 to 256 characters without control characters"),
            ));
        }
    }
    if let Some(scope) = &subject.scope
        && let Err(reason) = check_scope_token(scope)
    {
        problems.push(("scope", format!("{scope:?} {reason}")));
    }
    problems
}

/// The problems of the authentication methods and the access rules
/// together, each with its field relative to the spec (`auth`,
/// `access[0].subjects[1].tokenSubject`, ...): at least one way to
/// authenticate (`api_keys` or `oauth`); every rule within the list bounds
/// of [`MAX_ITEMS`], its subjects by [`check_access_subject`] and its tools
/// by [`check_tool_pattern`]; an `apiKeyCaller` subject only with API keys
/// on and `tokenSubject`, `group` and `scope` subjects only with OAuth, as
/// no caller could ever match them otherwise.
pub fn check_auth_and_access(
    api_keys: bool,
    oauth: bool,
    access: &[AccessRule],
) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if !api_keys && !oauth {
        problems.push((
            "auth".to_owned(),
            "apiKeys false needs oauth: with neither, no caller can authenticate".to_owned(),
        ));
    }
    let too_long = |field: String, schema_path: &str, len: usize, problems: &mut Vec<_>| {
        let max = max_items(schema_path);
        if len > max {
            problems.push((
                field,
                format!("has {len} entries, at most {max} are allowed"),
            ));
        }
    };
    too_long(
        "access".to_owned(),
        "spec.access",
        access.len(),
        &mut problems,
    );
    for (i, rule) in access.iter().enumerate() {
        let field = format!("access[{i}]");
        for (name, len) in [
            ("subjects", rule.subjects.len()),
            ("tools", rule.tools.len()),
        ] {
            if len == 0 {
                problems.push((format!("{field}.{name}"), "must not be empty".to_owned()));
            }
            too_long(
                format!("{field}.{name}"),
                &format!("spec.access[].{name}"),
                len,
                &mut problems,
            );
        }
        for (j, subject) in rule.subjects.iter().enumerate() {
            let field = format!("{field}.subjects[{j}]");
            for (name, reason) in check_access_subject(subject) {
                let field = if name.is_empty() {
                    field.clone()
                } else {
                    format!("{field}.{name}")
                };
                problems.push((field, reason));
            }
            if subject.api_key_caller.is_some() && !api_keys {
                problems.push((
                    format!("{field}.apiKeyCaller"),
                    "apiKeyCaller subjects need spec.auth.apiKeys: true: without it no caller has an API key".to_owned(),
                ));
            }
            for (name, set) in [
                ("tokenSubject", subject.token_subject.is_some()),
                ("group", subject.group.is_some()),
                ("scope", subject.scope.is_some()),
            ] {
                if set && !oauth {
                    problems.push((
                        format!("{field}.{name}"),
                        "tokenSubject, group and scope subjects need spec.auth.oauth: without it no caller has a token".to_owned(),
                    ));
                }
            }
        }
        for (j, tool) in rule.tools.iter().enumerate() {
            if let Err(reason) = check_tool_pattern(tool) {
                problems.push((format!("{field}.tools[{j}]"), format!("{tool:?} {reason}")));
            }
        }
    }
    problems
}

/// True for a credential or connector name (the names connectors and tools
/// use): a lower-case letter first, then lower-case letters, digits, `-` or
/// `_`, not ending in `-` or `_`, at most [`MAX_REF_NAME_LEN`] characters.
/// The server checks its configuration with the same rule.
pub fn is_ref_name(name: &str) -> bool {
    name.len() <= MAX_REF_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !name.ends_with(['-', '_'])
}

fn validate_ref_name(field: &str, name: &str, errors: &mut Errors) {
    if !is_ref_name(name) {
        errors.add(
            field,
            format!(
                "{name:?} is not a valid name (lower-case letter first, then lower-case letters, digits, '-' or '_', at most {MAX_REF_NAME_LEN} characters)"
            ),
        );
    }
}

/// True for a key of a Secret's data: letters, digits, `-`, `_` and `.`, at
/// most 253 characters. Caller ids are keys of the API-key Secret, so the
/// server checks them with this rule too.
pub fn is_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn validate_connector(
    field: &str,
    connector: &Connector,
    credentials: &BTreeSet<&str>,
    errors: &mut Errors,
) {
    if let Err(reason) = check_base_url(&connector.base_url) {
        errors.add(
            format!("{field}.baseUrl"),
            format!("{:?} {reason}", connector.base_url),
        );
    }
    if let Some(credential) = &connector.credential
        && !credentials.contains(credential.as_str())
    {
        errors.add(
            format!("{field}.credential"),
            format!("credential {credential:?} is not declared in spec.credentials"),
        );
    }
    match connector.connector_type {
        ConnectorType::Http if connector.allow.is_empty() => errors.add(
            format!("{field}.allow"),
            "an http connector needs at least one allowed method and path",
        ),
        ConnectorType::Github if !connector.allow.is_empty() => errors.add(
            format!("{field}.allow"),
            "only http connectors take an allow-list; github connectors expose a fixed set of read-only tools",
        ),
        _ => {}
    }
    for (j, rule) in connector.allow.iter().enumerate() {
        let rule_field = format!("{field}.allow[{j}]");
        if let Err(reason) = check_allow_method(&rule.method) {
            errors.add(format!("{rule_field}.method"), reason);
        }
        if let Err(reason) = check_allow_path(&rule.path) {
            errors.add(
                format!("{rule_field}.path"),
                format!("{:?} {reason}", rule.path),
            );
        }
    }
}

/// A connector's base URL: `https://` (or `http://`) with a host that
/// parses as a URL host (WHATWG URL Standard, as the server's HTTP client
/// reads it), no user information, query or fragment, at most
/// [`MAX_BASE_URL_LEN`] characters and no whitespace or control characters.
///
/// # Errors
/// The reason, to follow the quoted URL in a message.
pub fn check_base_url(url: &str) -> Result<(), &'static str> {
    if url.chars().count() > MAX_BASE_URL_LEN
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err("must be at most 2048 characters without spaces");
    }
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("must start with https:// (or http://)")?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err("has no host");
    }
    if authority.contains('@') {
        return Err("must not carry user information; name a credential instead");
    }
    if rest.contains(['?', '#']) {
        return Err("must not carry a query or fragment");
    }
    match url::Url::parse(url) {
        Ok(parsed) if parsed.host_str().is_some_and(|h| !h.is_empty()) => Ok(()),
        Ok(_) => Err("has no host"),
        Err(_) => Err("is not a valid URL: check the host name and the port (1-65535)"),
    }
}

/// An HTTP method an `http` connector's allow-list may name: one of
/// [`ALLOWED_METHODS`], upper case.
///
/// # Errors
/// The reason, naming the method.
pub fn check_allow_method(method: &str) -> Result<(), String> {
    if ALLOWED_METHODS.contains(&method) {
        Ok(())
    } else {
        Err(format!(
            "{method:?} is not one of {}",
            ALLOWED_METHODS.join(", ")
        ))
    }
}

/// True for a character a literal allow-list path segment may hold: an RFC
/// 3986 `pchar` (section 3.3) other than `%` (no percent-encoding, so a
/// pattern means one path only) and `*` (the wildcard).
fn is_literal_segment_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()+,;=:@".contains(c)
}

/// An allow-list path pattern: `/`, or `/`-separated segments each of which
/// is `*` (one segment), `**` (any number of segments; last only) or a
/// non-empty literal of RFC 3986 path characters without `%` and other than
/// `.` and `..`; at most [`MAX_PATH_LEN`] characters. So no empty segment
/// (`/v1/`, `/v1//x`), no percent-encoding (`/v1/%7Euser`), no backslash,
/// query, fragment, whitespace or control character.
///
/// The CRD schema states the same rule as a `pattern` and a CEL rule.
///
/// # Errors
/// The reason, to follow the quoted path in a message.
pub fn check_allow_path(path: &str) -> Result<(), &'static str> {
    let rest = path.strip_prefix('/').ok_or("must start with '/'")?;
    if path.chars().count() > MAX_PATH_LEN {
        return Err("must be at most 512 characters");
    }
    if rest.is_empty() {
        return Ok(());
    }
    let segments: Vec<&str> = rest.split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "" => return Err("must not contain an empty segment ('//' or a trailing '/')"),
            "**" if i + 1 != segments.len() => {
                return Err("may use '**' only as the last segment");
            }
            "*" | "**" => {}
            "." | ".." => return Err("must not contain '.' or '..' segments"),
            s if s.contains('*') => return Err("may use '*' only as a whole path segment"),
            s if s.contains('%') => {
                return Err("must not contain percent-encoding: write each character as itself");
            }
            s if !s.chars().all(is_literal_segment_char) => {
                return Err(
                    "may contain only letters, digits and - . _ ~ ! $ & ' ( ) + , ; = : @ in a segment (no '\\', '?', '#', spaces or other characters)",
                );
            }
            _ => {}
        }
    }
    Ok(())
}

/// The problems of a rate limit, each with the name of its field
/// (`requestsPerMinute` or `burst`): a sustained rate of 1 to
/// [`MAX_REQUESTS_PER_MINUTE`] per minute and a burst of 1 to [`MAX_BURST`].
pub fn check_rate_limit(limit: &RateLimit) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if limit.requests_per_minute == 0 {
        problems.push((
            "requestsPerMinute",
            "must be at least 1 (remove the connector or tool to forbid it)".to_owned(),
        ));
    } else if limit.requests_per_minute > MAX_REQUESTS_PER_MINUTE {
        problems.push((
            "requestsPerMinute",
            format!("must be at most {MAX_REQUESTS_PER_MINUTE}"),
        ));
    }
    if limit.burst == 0 {
        problems.push(("burst", "must be at least 1".to_owned()));
    } else if limit.burst > MAX_BURST {
        problems.push(("burst", format!("must be at most {MAX_BURST}")));
    }
    problems
}

/// The tool name of a per-tool rate limit: 1 to [`MAX_TOOL_NAME_LEN`] characters.
///
/// # Errors
/// The reason.
pub fn check_tool_name(tool: &str) -> Result<(), &'static str> {
    if tool.is_empty() || tool.chars().count() > MAX_TOOL_NAME_LEN {
        Err("must name a tool (1 to 128 characters)")
    } else {
        Ok(())
    }
}

fn validate_rate_limit(field: &str, limit: &RateLimit, errors: &mut Errors) {
    for (name, reason) in check_rate_limit(limit) {
        errors.add(format!("{field}.{name}"), reason);
    }
}

/// True for a Kubernetes quantity greater than zero: a decimal number, with
/// an optional `+` sign, and an optional binary (`Ki`..`Ei`) or decimal
/// (`m`, `k`..`E`) suffix or a decimal exponent (`1e3`), as the API server's
/// `isQuantity` accepts (apimachinery `resource.ParseQuantity`).
pub fn is_positive_quantity(quantity: &Quantity) -> bool {
    const SUFFIXES: &[&str] = &[
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E", "",
    ];
    let s = quantity.0.strip_prefix('+').unwrap_or(&quantity.0);
    let is_digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    let exponent_split = s.rfind(['e', 'E']).and_then(|i| {
        let exponent = &s[i + 1..];
        let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
        (!digits.is_empty() && is_digits(digits)).then_some(&s[..i])
    });
    let Some(number) =
        exponent_split.or_else(|| SUFFIXES.iter().find_map(|suffix| s.strip_suffix(suffix)))
    else {
        return false;
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    !(whole.is_empty() && fraction.is_empty())
        && is_digits(whole)
        && is_digits(fraction)
        && number.bytes().any(|b| (b'1'..=b'9').contains(&b))
}
