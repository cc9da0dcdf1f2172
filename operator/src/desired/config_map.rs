//! The ConfigMap carrying the server configuration (`server.yaml`).
//!
//! The format is `bulkhead_crds::server_config::ServerConfig`, the one
//! definition the server reads, so operator and server cannot disagree.

use std::collections::BTreeMap;

use bulkhead_crds::server_config::{
    API_KEYS_SECRET_NAME, AuthConfig, CONFIG_FILE_KEY, CONFIG_MAP_NAME, CREDENTIALS_SECRET_NAME,
    ConnectorConfig, CredentialKey, MCP_PORT, OAuthConfig, RateLimitsConfig, SecretSource,
    ServerConfig, TransportLimits, default_algorithms, default_caller_claim,
    default_clock_skew_seconds, default_groups_claim, default_jwks_min_refresh_seconds,
};
use bulkhead_crds::validation::{FieldError, InvalidTenant};
use k8s_openapi::api::core::v1::ConfigMap;

use super::context::BuildContext;
use super::names::SERVICE_NAME;

/// Seconds a credential value is cached by the server before it is read again.
pub const CREDENTIAL_TTL_SECONDS: u64 = 60;

/// The server configuration of a tenant.
pub(crate) fn desired_server_config(ctx: &BuildContext<'_>) -> ServerConfig {
    let spec = &ctx.tenant.spec;
    let secret = |name: &str| SecretSource::KubernetesSecret {
        namespace: ctx.namespace.clone(),
        name: name.to_owned(),
    };
    ServerConfig {
        tenant_id: ctx.tenant_id.to_owned(),
        allowed_hosts: allowed_hosts(&ctx.namespace, &ctx.settings.cluster_domain),
        allowed_origins: Vec::new(),
        api_keys: secret(API_KEYS_SECRET_NAME),
        credentials: secret(CREDENTIALS_SECRET_NAME),
        credential_keys: spec
            .credentials
            .iter()
            .map(|c| CredentialKey {
                name: c.name.clone(),
                key: c.key.clone(),
            })
            .collect(),
        credential_ttl_seconds: CREDENTIAL_TTL_SECONDS,
        connectors: spec
            .connectors
            .iter()
            .map(|c| ConnectorConfig {
                name: c.name.clone(),
                connector_type: c.connector_type,
                base_url: c.base_url.clone(),
                credential: c.credential.clone(),
                allow: c.allow.clone(),
                // In a cluster the NetworkPolicy decides which private
                // ranges are reachable; the server refuses them regardless.
                allow_private_targets: false,
            })
            .collect(),
        rate_limits: RateLimitsConfig {
            per_caller: spec.rate_limits.per_caller,
            per_tool: spec.rate_limits.per_tool.clone(),
        },
        limits: TransportLimits::default(),
        auth: AuthConfig {
            api_keys: spec.auth.api_keys,
            oauth: spec.auth.oauth.as_ref().map(|oauth| OAuthConfig {
                issuer: oauth.issuer.clone(),
                resource: oauth.resource.clone(),
                required_scopes: oauth.required_scopes.clone(),
                caller_claim: oauth
                    .caller_claim
                    .clone()
                    .unwrap_or_else(default_caller_claim),
                groups_claim: oauth
                    .groups_claim
                    .clone()
                    .unwrap_or_else(default_groups_claim),
                tenant_claim: oauth.tenant_claim.clone(),
                algorithms: if oauth.algorithms.is_empty() {
                    default_algorithms()
                } else {
                    oauth.algorithms.clone()
                },
                clock_skew_seconds: oauth
                    .clock_skew_seconds
                    .unwrap_or_else(default_clock_skew_seconds),
                jwks_min_refresh_seconds: default_jwks_min_refresh_seconds(),
                // An in-cluster issuer has a private address; the
                // NetworkPolicy opens only the declared namespaces.
                allow_private_issuer: oauth.issuer_network.namespace_selector.is_some(),
            }),
        },
        access: spec.access.clone(),
    }
}

/// Every Host a caller inside the cluster may use for the Service: the short
/// and qualified names, each with and without the port.
pub fn allowed_hosts(namespace: &str, cluster_domain: &str) -> Vec<String> {
    [
        SERVICE_NAME.to_owned(),
        format!("{SERVICE_NAME}.{namespace}"),
        format!("{SERVICE_NAME}.{namespace}.svc"),
        format!("{SERVICE_NAME}.{namespace}.svc.{cluster_domain}"),
    ]
    .into_iter()
    .flat_map(|host| [format!("{host}:{MCP_PORT}"), host])
    .collect()
}

/// The ConfigMap with `server.yaml`.
///
/// Writing the configuration as YAML cannot fail for a validated Tenant (it
/// holds only strings, numbers and lists); should it ever, the Tenant is
/// reported as unbuildable rather than a half-written ConfigMap applied.
pub(crate) fn desired_config_map(ctx: &BuildContext<'_>) -> Result<ConfigMap, InvalidTenant> {
    let yaml = yaml_serde::to_string(&desired_server_config(ctx)).map_err(|e| InvalidTenant {
        errors: vec![FieldError {
            field: "spec".to_owned(),
            reason: format!("cannot be written as server configuration: {e}"),
        }],
    })?;
    Ok(ConfigMap {
        metadata: ctx.metadata(CONFIG_MAP_NAME, true),
        data: Some(BTreeMap::from([(CONFIG_FILE_KEY.to_owned(), yaml)])),
        ..ConfigMap::default()
    })
}

#[cfg(test)]
mod tests {
    use bulkhead_crds::tenant::{AllowRule, ConnectorType, RateLimit, ToolRateLimit};

    use super::*;
    use crate::desired::fixtures::{FULL, MINIMAL, objects};

    fn server_config(yaml: &str) -> ServerConfig {
        let config_map = objects(yaml).config_map;
        assert_eq!(
            config_map.metadata.name.as_deref(),
            Some("bulkhead-server-config")
        );
        let data = config_map.data.unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), ["server.yaml"]);
        yaml_serde::from_str(&data["server.yaml"]).unwrap()
    }

    #[test]
    fn full_example_configures_identity_secrets_connectors_and_limits() {
        let secret = |name: &str| SecretSource::KubernetesSecret {
            namespace: "bulkhead-globex".into(),
            name: name.into(),
        };
        let rule = |method: &str, path: &str| AllowRule {
            method: method.into(),
            path: path.into(),
        };
        let expected = ServerConfig {
            tenant_id: "globex".into(),
            allowed_hosts: [
                "mcp:8080",
                "mcp",
                "mcp.bulkhead-globex:8080",
                "mcp.bulkhead-globex",
                "mcp.bulkhead-globex.svc:8080",
                "mcp.bulkhead-globex.svc",
                "mcp.bulkhead-globex.svc.cluster.local:8080",
                "mcp.bulkhead-globex.svc.cluster.local",
            ]
            .map(String::from)
            .to_vec(),
            allowed_origins: vec![],
            api_keys: secret("bulkhead-api-keys"),
            credentials: secret("bulkhead-credentials"),
            credential_keys: vec![
                CredentialKey {
                    name: "github".into(),
                    key: "github_token".into(),
                },
                CredentialKey {
                    name: "billing".into(),
                    key: "billing_api_key".into(),
                },
            ],
            credential_ttl_seconds: 60,
            connectors: vec![
                ConnectorConfig {
                    name: "github".into(),
                    connector_type: ConnectorType::Github,
                    base_url: "https://api.github.com".into(),
                    credential: Some("github".into()),
                    allow: vec![],
                    allow_private_targets: false,
                },
                ConnectorConfig {
                    name: "billing".into(),
                    connector_type: ConnectorType::Http,
                    base_url: "https://billing.example.com/api".into(),
                    credential: Some("billing".into()),
                    allow: vec![
                        rule("GET", "/v1/invoices/*"),
                        rule("GET", "/v1/customers/**"),
                        rule("POST", "/v1/invoices/*/reminders"),
                    ],
                    allow_private_targets: false,
                },
            ],
            rate_limits: RateLimitsConfig {
                per_caller: Some(RateLimit {
                    requests_per_minute: 120,
                    burst: 20,
                }),
                per_tool: vec![ToolRateLimit {
                    tool: "billing_post_invoices_reminders".into(),
                    requests_per_minute: 10,
                    burst: 2,
                }],
            },
            limits: TransportLimits::default(),
            auth: AuthConfig::default(),
            access: vec![],
        };
        assert_eq!(server_config(FULL), expected);
    }

    #[test]
    fn minimal_example_reads_only_its_own_namespace_secrets() {
        let config = server_config(MINIMAL);
        assert_eq!(config.tenant_id, "acme");
        for source in [&config.api_keys, &config.credentials] {
            let SecretSource::KubernetesSecret { namespace, .. } = source else {
                panic!("{source:?} is not a Kubernetes Secret");
            };
            assert_eq!(namespace, "bulkhead-acme");
        }
        assert!(config.connectors.is_empty() && config.credential_keys.is_empty());
        assert!(
            config
                .allowed_hosts
                .iter()
                .all(|h| h == "mcp" || h == "mcp:8080" || h.starts_with("mcp.bulkhead-acme"))
        );
    }
}
