//! The per-tenant server configuration, as the operator writes it into the
//! tenant's ConfigMap and as `bulkhead-server` reads it.
//!
//! The names of the Secrets the server reads and the ports it serves on live
//! here too, so the operator's RBAC, NetworkPolicy and Deployment and the
//! server's own loaders always agree.

use serde::{Deserialize, Serialize};

use crate::tenant::{
    AccessRule, AllowRule, ConnectorType, RateLimit, SigningAlgorithm, ToolRateLimit,
};

/// Name of the Secret, in the tenant's namespace, that holds the upstream
/// credentials (created by the platform team, never read by the operator).
pub const CREDENTIALS_SECRET_NAME: &str = "bulkhead-credentials";
/// Name of the Secret, in the tenant's namespace, that holds the hashed API
/// keys of the tenant's callers (one data key per caller id).
pub const API_KEYS_SECRET_NAME: &str = "bulkhead-api-keys";
/// Name of the ConfigMap that carries the server configuration.
pub const CONFIG_MAP_NAME: &str = "bulkhead-server-config";
/// Key of the configuration file inside the ConfigMap.
pub const CONFIG_FILE_KEY: &str = "server.yaml";
/// Directory the ConfigMap is mounted at in the server pod.
pub const CONFIG_MOUNT_DIR: &str = "/etc/bulkhead";
/// Port that serves MCP (`/mcp`); the only port callers may reach.
pub const MCP_PORT: u16 = 8080;
/// Port that serves `/healthz`, `/readyz` and `/metrics`.
pub const ADMIN_PORT: u16 = 9090;
/// Path of the MCP endpoint.
pub const MCP_PATH: &str = "/mcp";

/// Configuration of one `bulkhead-server` process, serving exactly one tenant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerConfig {
    /// The tenant this process serves. The only source of the tenant id.
    pub tenant_id: String,
    /// Values accepted in the `Host` header (host or host:port).
    pub allowed_hosts: Vec<String>,
    /// Browser origins accepted in the `Origin` header (scheme://host[:port]).
    /// A request with an `Origin` not listed here is refused; requests without
    /// `Origin` (non-browser clients) are accepted.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Where the hashed API keys are read from.
    pub api_keys: SecretSource,
    /// Where the upstream credentials are read from.
    pub credentials: SecretSource,
    /// Credentials the server may use, by name, and the key that holds each
    /// one in the credential source.
    #[serde(default)]
    pub credential_keys: Vec<CredentialKey>,
    /// How long a credential value read from a `file` or `directory` source
    /// is cached before it is read again. A `kubernetesSecret` source is
    /// followed by its watch instead, so a rotated value is used at once.
    #[serde(default = "default_credential_ttl_seconds")]
    pub credential_ttl_seconds: u64,
    /// Upstream APIs exposed as MCP tools.
    #[serde(default)]
    pub connectors: Vec<ConnectorConfig>,
    /// Request rate limits.
    #[serde(default)]
    pub rate_limits: RateLimitsConfig,
    /// Transport limits.
    #[serde(default)]
    pub limits: TransportLimits,
    /// How callers authenticate (default: API keys only).
    #[serde(default)]
    pub auth: AuthConfig,
    /// Which callers may use which tools (`spec.access`); empty: every
    /// authenticated caller may use every tool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access: Vec<AccessRule>,
}

/// How callers authenticate to this server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthConfig {
    /// Accept API keys from the `apiKeys` source.
    #[serde(default = "default_true")]
    pub api_keys: bool,
    /// Accept OAuth 2.1 access tokens; unset: none are accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth: Option<OAuthConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            api_keys: true,
            oauth: None,
        }
    }
}

/// The server as an OAuth 2.1 resource server; the operator fills every
/// field from `spec.auth.oauth`, defaults applied.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OAuthConfig {
    /// Issuer identifier of the authorization server (RFC 8414).
    pub issuer: String,
    /// This server's resource identifier (RFC 8707); required in `aud`.
    pub resource: String,
    /// Scopes every token must carry.
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Claim naming the caller.
    #[serde(default = "default_caller_claim")]
    pub caller_claim: String,
    /// Claim listing the caller's groups or roles.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Claim that must equal the tenant id, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_claim: Option<String>,
    /// Accepted signing algorithms (asymmetric only).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<SigningAlgorithm>,
    /// Allowed clock skew for `exp` and `nbf`, in seconds.
    #[serde(default = "default_clock_skew_seconds")]
    pub clock_skew_seconds: u32,
    /// Smallest interval between two JWKS fetches caused by an unknown
    /// `kid`, in seconds, so a flood of bogus key ids cannot hammer the
    /// issuer.
    #[serde(default = "default_jwks_min_refresh_seconds")]
    pub jwks_min_refresh_seconds: u64,
    /// Permit private addresses (an in-cluster issuer) for the issuer's
    /// metadata and JWKS; cloud metadata addresses stay refused.
    #[serde(default)]
    pub allow_private_issuer: bool,
}

fn default_true() -> bool {
    true
}

/// The `Host` header values a client sends when it reaches the resource
/// `resource` (an `http` or `https` URL): its host, and host:port with the
/// URL's port or the scheme's default (RFC 9110 section 7.2). The host is
/// as the URL Standard writes it (lower case; IPv6 in brackets). Empty for
/// a URL that does not parse or has no host.
pub fn resource_hosts(resource: &str) -> Vec<String> {
    let Ok(url) = url::Url::parse(resource) else {
        return Vec::new();
    };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return Vec::new();
    };
    vec![host.to_owned(), format!("{host}:{port}")]
}

/// Default caller claim: `sub` (RFC 9068 section 2.2).
pub fn default_caller_claim() -> String {
    "sub".to_owned()
}

/// Default groups claim: `groups` (RFC 9068 section 2.2.3.1 / SCIM).
pub fn default_groups_claim() -> String {
    "groups".to_owned()
}

/// Default accepted algorithms: RS256 (required by RFC 9068) and ES256.
pub fn default_algorithms() -> Vec<SigningAlgorithm> {
    vec![SigningAlgorithm::RS256, SigningAlgorithm::ES256]
}

/// Default clock skew, in seconds.
pub fn default_clock_skew_seconds() -> u32 {
    60
}

/// Default smallest interval between unknown-`kid` JWKS fetches, in seconds.
pub fn default_jwks_min_refresh_seconds() -> u64 {
    30
}

/// Where a set of secret values comes from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", tag = "type", deny_unknown_fields)]
pub enum SecretSource {
    /// A Secret in the cluster, read with the pod's own ServiceAccount
    /// (get and watch of that one Secret only).
    #[serde(rename_all = "camelCase")]
    KubernetesSecret {
        /// Namespace of the Secret (the tenant namespace).
        namespace: String,
        /// Name of the Secret.
        name: String,
    },
    /// A local file (API keys: a YAML map of caller id to key hash;
    /// credentials: a YAML map of key to value).
    #[serde(rename_all = "camelCase")]
    File {
        /// Path of the file; relative paths are relative to the
        /// configuration file's directory.
        path: String,
    },
    /// A local directory with one file per key, as a mounted Secret looks.
    #[serde(rename_all = "camelCase")]
    Directory {
        /// Path of the directory; relative paths are relative to the
        /// configuration file's directory.
        path: String,
    },
}

/// A credential the server may use: its name (which connectors refer to) and
/// the key of the credential source that holds it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialKey {
    /// The credential's name, as `connectors[].credential` refers to it.
    pub name: String,
    /// The key in the credential source that holds the value.
    pub key: String,
}

/// One upstream API exposed as MCP tools.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectorConfig {
    /// Connector name; tool names are derived from it.
    pub name: String,
    /// Which connector implementation serves it (`github` or `http`).
    #[serde(rename = "type")]
    pub connector_type: ConnectorType,
    /// The only base URL this connector calls.
    pub base_url: String,
    /// Name of the credential (see `credentialKeys`) sent upstream, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// For `http` connectors: the method and path patterns that may be called.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<AllowRule>,
    /// Permit private, loopback and link-local upstream addresses. Off in
    /// clusters (the NetworkPolicy closes them too); on for local tests.
    #[serde(default)]
    pub allow_private_targets: bool,
}

/// Rate limits applied by the server.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Budget of each caller across all methods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_caller: Option<RateLimit>,
    /// Budget of each caller for one tool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_tool: Vec<ToolRateLimit>,
}

/// Limits on the HTTP transport.
///
/// The connection limits bound what a caller can hold without sending a
/// request: with the defaults, at most `maxConnections` connections of at
/// most `maxHeaderBytes` of buffered headers each (1024 × 32 KiB = 32 MiB),
/// well inside the server container's default memory limit of 256 MiB.
/// Fields added after the first release have defaults, so older
/// configurations load unchanged.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransportLimits {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Time a request may take before it is cancelled, in seconds.
    pub request_timeout_seconds: u64,
    /// Time an upstream call may take, in seconds.
    pub upstream_timeout_seconds: u64,
    /// Time a client has to send a request's headers, in seconds: from
    /// connecting (HTTP/1 and HTTP/2) and, on an HTTP/1 keep-alive
    /// connection, from the end of the previous response. A connection
    /// that misses it is closed.
    #[serde(default = "default_header_read_timeout_seconds")]
    pub header_read_timeout_seconds: u64,
    /// Time a connection may stay open with no request in flight, in
    /// seconds (HTTP/1 keep-alive and HTTP/2); then it is closed (HTTP/2
    /// with a GOAWAY).
    #[serde(default = "default_idle_timeout_seconds")]
    pub idle_timeout_seconds: u64,
    /// HTTP/2 keep-alive: a PING is sent after this many seconds without
    /// traffic, and the connection is closed if it is not acknowledged
    /// within the same time.
    #[serde(default = "default_http2_keep_alive_seconds")]
    pub http2_keep_alive_seconds: u64,
    /// Most connections open at once on one listener. Connections above it
    /// are accepted and closed at once (counted in
    /// `bulkhead_connections_refused_total`), so they cannot queue up.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Largest request head (request line and headers, HTTP/1) or header
    /// list (HTTP/2) accepted, in bytes (at least 8192).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most requests one caller may have in flight at once, from
    /// authentication until the audit line is written. Excess requests are
    /// refused with 429 and `Retry-After`, so one caller cannot hold the
    /// places of the audit queue every request needs.
    #[serde(default = "default_max_requests_in_flight_per_caller")]
    pub max_requests_in_flight_per_caller: usize,
    /// Most HTTP/2 streams (requests) open at once on one connection
    /// (RFC 9113 section 6.5.2, `SETTINGS_MAX_CONCURRENT_STREAMS`).
    #[serde(default = "default_http2_max_concurrent_streams")]
    pub http2_max_concurrent_streams: u32,
}

impl Default for TransportLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            request_timeout_seconds: 30,
            upstream_timeout_seconds: 10,
            header_read_timeout_seconds: default_header_read_timeout_seconds(),
            idle_timeout_seconds: default_idle_timeout_seconds(),
            http2_keep_alive_seconds: default_http2_keep_alive_seconds(),
            max_connections: default_max_connections(),
            max_header_bytes: default_max_header_bytes(),
            max_requests_in_flight_per_caller: default_max_requests_in_flight_per_caller(),
            http2_max_concurrent_streams: default_http2_max_concurrent_streams(),
        }
    }
}

fn default_header_read_timeout_seconds() -> u64 {
    10
}

fn default_idle_timeout_seconds() -> u64 {
    60
}

fn default_http2_keep_alive_seconds() -> u64 {
    30
}

fn default_max_connections() -> usize {
    1024
}

fn default_max_header_bytes() -> usize {
    32 * 1024
}

fn default_max_requests_in_flight_per_caller() -> usize {
    32
}

fn default_http2_max_concurrent_streams() -> u32 {
    32
}

fn default_credential_ttl_seconds() -> u64 {
    60
}

#[cfg(test)]
mod tests {
    use super::resource_hosts;

    #[test]
    fn resource_hosts_carry_the_port_a_client_may_send() {
        assert_eq!(
            resource_hosts("https://MCP.example.com/acme/mcp"),
            ["mcp.example.com", "mcp.example.com:443"]
        );
        assert_eq!(
            resource_hosts("https://mcp.example.com:8443/mcp?x=1"),
            ["mcp.example.com", "mcp.example.com:8443"]
        );
        assert_eq!(
            resource_hosts("http://[::1]:8080/mcp"),
            ["[::1]", "[::1]:8080"]
        );
        assert!(resource_hosts("not a url").is_empty());
    }
}
