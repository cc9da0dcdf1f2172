//! Loading and checking the server configuration.
//!
//! The format is [`ServerConfig`] from `bulkhead-crds`, the same type the
//! operator serialises, so the two cannot drift. Every value that comes from
//! a Tenant field is checked with that field's rule from
//! `bulkhead_crds::validation` (the rulebook the CRD schema and the operator
//! use), so a configuration the operator renders from a valid Tenant always
//! loads, and one it would refuse never does. Relative paths of `file` and
//! `directory` sources are resolved against the configuration file's
//! directory, so a configuration works from any working directory.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use bulkhead_crds::server_config::{SecretSource, ServerConfig};
use bulkhead_crds::tenant::ConnectorType;
use bulkhead_crds::validation::{
    OAuthFields, check_allow_method, check_allow_path, check_auth_and_access, check_base_url,
    check_oauth, check_rate_limit, check_tool_name, is_dns_label, is_ref_name, is_secret_key,
};

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid server configuration.
    #[error("configuration file {path} is not a valid server configuration: {message}")]
    Parse {
        /// The configuration file.
        path: PathBuf,
        /// What the parser found.
        message: String,
    },
    /// The configuration parses but is inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Reads, resolves and checks the configuration at `path`.
pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut config: ServerConfig = yaml_serde::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    resolve_source(&mut config.api_keys, base);
    resolve_source(&mut config.credentials, base);
    validate(&config)?;
    Ok(config)
}

fn resolve_source(source: &mut SecretSource, base: &Path) {
    match source {
        SecretSource::File { path } | SecretSource::Directory { path } => {
            let p = Path::new(path.as_str());
            if p.is_relative() {
                *path = base.join(p).display().to_string();
            }
        }
        SecretSource::KubernetesSecret { .. } => {}
    }
}

/// Checks what the type system cannot: names that must match, limits that
/// must be positive, URLs that must parse, and every Tenant-derived value
/// against its rule in `bulkhead_crds::validation`.
///
/// # Errors
/// [`ConfigError::Invalid`] naming the first offending value.
pub fn validate(config: &ServerConfig) -> Result<(), ConfigError> {
    let invalid = |m: String| Err(ConfigError::Invalid(m));
    // The tenant id is the Tenant's `metadata.name`, a DNS-1123 label.
    if !is_dns_label(&config.tenant_id) {
        return invalid(format!(
            "tenantId {:?} must be a DNS-1123 label (lower-case letters, digits and '-', starting and ending with a letter or digit)",
            config.tenant_id
        ));
    }
    if config.allowed_hosts.is_empty() {
        return invalid(
            "allowedHosts must name at least one host (the Host header values callers use)".into(),
        );
    }
    for origin in &config.allowed_origins {
        if origin != "null" && !origin.contains("://") {
            return invalid(format!(
                "allowedOrigins entry {origin:?} must be scheme://host[:port]"
            ));
        }
    }
    let limits = &config.limits;
    if limits.max_body_bytes == 0
        || limits.request_timeout_seconds == 0
        || limits.upstream_timeout_seconds == 0
        || limits.header_read_timeout_seconds == 0
        || limits.idle_timeout_seconds == 0
        || limits.http2_keep_alive_seconds == 0
        || limits.max_connections == 0
        || limits.max_requests_in_flight_per_caller == 0
        || limits.http2_max_concurrent_streams == 0
    {
        return invalid(
            "limits.maxBodyBytes, requestTimeoutSeconds, upstreamTimeoutSeconds, headerReadTimeoutSeconds, idleTimeoutSeconds, http2KeepAliveSeconds, maxConnections, maxRequestsInFlightPerCaller and http2MaxConcurrentStreams must be positive"
                .into(),
        );
    }
    // hyper's smallest read buffer; HTTP/2 carries the size as a u32.
    if !(8192..=u32::MAX as usize).contains(&limits.max_header_bytes) {
        return invalid("limits.maxHeaderBytes must be between 8192 and 4294967295".into());
    }
    if config.credential_ttl_seconds == 0 {
        return invalid("credentialTtlSeconds must be positive".into());
    }
    let mut credential_names = HashSet::new();
    for credential in &config.credential_keys {
        if !is_ref_name(&credential.name) {
            return invalid(format!(
                "credential name {:?} must be 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter and not ending in '-' or '_'",
                credential.name
            ));
        }
        if !credential_names.insert(credential.name.as_str()) {
            return invalid(format!(
                "credential name {:?} is used twice",
                credential.name
            ));
        }
        if !is_secret_key(&credential.key) {
            return invalid(format!(
                "credential {:?}: key {:?} is not a valid Secret key (letters, digits, '-', '_' and '.', at most 253 characters)",
                credential.name, credential.key
            ));
        }
    }
    let mut connector_names = HashSet::new();
    for connector in &config.connectors {
        // Connector names become tool name prefixes: the Tenant's own rule.
        if !is_ref_name(&connector.name) {
            return invalid(format!(
                "connector name {:?} must be 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter and not ending in '-' or '_'",
                connector.name
            ));
        }
        if !connector_names.insert(connector.name.as_str()) {
            return invalid(format!("connector name {:?} is used twice", connector.name));
        }
        if let Err(reason) = check_base_url(&connector.base_url) {
            return invalid(format!(
                "connector {:?}: baseUrl {:?} {reason}",
                connector.name, connector.base_url
            ));
        }
        if let Some(credential) = &connector.credential
            && !credential_names.contains(credential.as_str())
        {
            return invalid(format!(
                "connector {:?} uses credential {credential:?}, which credentialKeys does not declare",
                connector.name
            ));
        }
        match connector.connector_type {
            ConnectorType::Http => {
                if connector.allow.is_empty() {
                    return invalid(format!(
                        "http connector {:?} needs at least one allow rule",
                        connector.name
                    ));
                }
                for rule in &connector.allow {
                    if let Err(reason) = check_allow_method(&rule.method) {
                        return invalid(format!("connector {:?}: {reason}", connector.name));
                    }
                    if let Err(reason) = check_allow_path(&rule.path) {
                        return invalid(format!(
                            "connector {:?}: allow path {:?} {reason}",
                            connector.name, rule.path
                        ));
                    }
                    crate::connectors::http::AllowPattern::parse(&rule.method, &rule.path)
                        .map_err(|e| {
                            ConfigError::Invalid(format!("connector {:?}: {e}", connector.name))
                        })?;
                }
            }
            ConnectorType::Github => {
                if !connector.allow.is_empty() {
                    return invalid(format!(
                        "github connector {:?} takes no allow rules (it exposes a fixed set of read-only tools)",
                        connector.name
                    ));
                }
            }
        }
    }
    let limits = &config.rate_limits;
    if let Some(per_caller) = &limits.per_caller
        && let Some((field, reason)) = check_rate_limit(per_caller).into_iter().next()
    {
        return invalid(format!("rateLimits.perCaller.{field} {reason}"));
    }
    let mut tools = HashSet::new();
    for tool in &limits.per_tool {
        if let Err(reason) = check_tool_name(&tool.tool) {
            return invalid(format!("rateLimits.perTool tool {:?} {reason}", tool.tool));
        }
        if !tools.insert(tool.tool.as_str()) {
            return invalid(format!(
                "rateLimits.perTool names tool {:?} more than once",
                tool.tool
            ));
        }
        let limit = bulkhead_crds::tenant::RateLimit {
            requests_per_minute: tool.requests_per_minute,
            burst: tool.burst,
        };
        if let Some((field, reason)) = check_rate_limit(&limit).into_iter().next() {
            return invalid(format!(
                "rateLimits.perTool for {:?}: {field} {reason}",
                tool.tool
            ));
        }
    }
    // `auth` and `access` come from `spec.auth` and `spec.access`: the
    // Tenant's rules, with the defaults the operator fills in.
    if let Some(oauth) = &config.auth.oauth {
        let fields = OAuthFields {
            issuer: &oauth.issuer,
            resource: &oauth.resource,
            required_scopes: &oauth.required_scopes,
            caller_claim: Some(&oauth.caller_claim),
            groups_claim: Some(&oauth.groups_claim),
            tenant_claim: oauth.tenant_claim.as_deref(),
            algorithms: &oauth.algorithms,
            clock_skew_seconds: Some(oauth.clock_skew_seconds),
        };
        if let Some((field, reason)) = check_oauth(&fields).into_iter().next() {
            return invalid(format!("auth.oauth.{field}: {reason}"));
        }
        if oauth.algorithms.is_empty() {
            return invalid(
                "auth.oauth.algorithms must name at least one signing algorithm".into(),
            );
        }
    }
    if let Some((field, reason)) = check_auth_and_access(
        config.auth.api_keys,
        config.auth.oauth.is_some(),
        &config.access,
    )
    .into_iter()
    .next()
    {
        return invalid(format!("{field}: {reason}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
tenantId: acme
allowedHosts: ["localhost"]
apiKeys: {type: file, path: keys.yaml}
credentials: {type: directory, path: /abs/creds}
credentialKeys: [{name: github, key: github_token}]
connectors:
  - {name: github, type: github, baseUrl: "https://api.github.com", credential: github}
  - name: billing
    type: http
    baseUrl: "https://billing.example.com/api"
    allow: [{method: GET, path: "/v1/invoices/*"}]
"#;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("bulkhead-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("server.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let path = write("relative", MINIMAL);
        let config = load(&path).unwrap();
        assert_eq!(
            config.api_keys,
            SecretSource::File {
                path: path
                    .parent()
                    .unwrap()
                    .join("keys.yaml")
                    .display()
                    .to_string()
            }
        );
        assert_eq!(
            config.credentials,
            SecretSource::Directory {
                path: "/abs/creds".into()
            }
        );
    }

    #[test]
    fn undeclared_credentials_are_refused() {
        let path = write(
            "undeclared",
            &MINIMAL.replace("credential: github}", "credential: other}"),
        );
        let error = load(&path).unwrap_err().to_string();
        assert!(error.contains("credentialKeys does not declare"), "{error}");
    }

    #[test]
    fn unknown_fields_and_bad_rules_are_refused() {
        let error = load(&write("unknown", &format!("{MINIMAL}\nsurprise: 1\n")))
            .unwrap_err()
            .to_string();
        assert!(error.contains("surprise"), "{error}");
        let error = load(&write(
            "rule",
            &MINIMAL.replace("/v1/invoices/*", "v1/../x"),
        ))
        .unwrap_err()
        .to_string();
        assert!(error.contains("billing"), "{error}");
    }

    #[test]
    fn empty_allowed_hosts_are_refused() {
        let error = load(&write("hosts", &MINIMAL.replace("[\"localhost\"]", "[]")))
            .unwrap_err()
            .to_string();
        assert!(error.contains("allowedHosts"), "{error}");
    }

    #[test]
    fn allow_paths_the_tenant_rules_refuse_are_refused() {
        // The YAML double-quoted scalar turns "a\\\\b" into a single backslash.
        for path in [
            "/v1/",
            "/v1//x",
            "/v1/%7Euser/x",
            "/v1/a\\\\b",
            "/v1/a b",
            "/v1/../x",
        ] {
            let text = MINIMAL.replace("/v1/invoices/*", path);
            let error = load(&write("paths", &text)).unwrap_err().to_string();
            assert!(
                error.contains("billing") && error.contains("allow path"),
                "{path}: {error}"
            );
            assert!(
                bulkhead_crds::validation::check_allow_path(path).is_err(),
                "{path}"
            );
        }
        for path in [
            "/",
            "/**",
            "/v1/~user/x",
            "/v1/invoices.json",
            "/v1/*/a:b@c",
        ] {
            let text = MINIMAL.replace("/v1/invoices/*", path);
            load(&write("paths-ok", &text)).unwrap_or_else(|e| panic!("{path}: {e}"));
        }
    }

    const OAUTH: &str = r#"
auth:
  apiKeys: true
  oauth:
    issuer: "https://login.example.com/realms/acme"
    resource: "https://mcp.example.com/acme/mcp"
    requiredScopes: ["mcp:tools"]
access:
  - subjects: [{group: ops}, {apiKeyCaller: ci}]
    tools: ["github_*"]
"#;

    #[test]
    fn auth_and_access_follow_the_tenant_rules() {
        load(&write("oauth", &format!("{MINIMAL}{OAUTH}"))).unwrap();
        for (from, to, named) in [
            (
                "https://login.example.com/realms/acme",
                "http://login.example.com",
                "auth.oauth.issuer",
            ),
            (
                "https://mcp.example.com/acme/mcp",
                "https://mcp.example.com/acme/mcp#x",
                "auth.oauth.resource",
            ),
            ("mcp:tools", "mcp tools", "auth.oauth.requiredScopes[0]"),
            (
                "{group: ops}",
                "{group: ops, scope: x}",
                "access[0].subjects[0]",
            ),
            ("github_*", "github/*", "access[0].tools[0]"),
            (
                "apiKeys: true",
                "apiKeys: false",
                "access[0].subjects[1].apiKeyCaller",
            ),
        ] {
            let text = format!("{MINIMAL}{}", OAUTH.replace(from, to));
            let error = load(&write("oauth-bad", &text)).unwrap_err().to_string();
            assert!(error.contains(named), "{to}: {error}");
        }
        // A group subject with no token callers at all.
        let no_oauth =
            format!("{MINIMAL}access:\n  - subjects: [{{group: ops}}]\n    tools: [\"*\"]\n");
        let error = load(&write("no-oauth", &no_oauth)).unwrap_err().to_string();
        assert!(error.contains("access[0].subjects[0].group"), "{error}");
        // Neither way to authenticate.
        let error = load(&write(
            "no-auth",
            &format!("{MINIMAL}auth: {{apiKeys: false}}\n"),
        ))
        .unwrap_err()
        .to_string();
        assert!(error.contains("no caller can authenticate"), "{error}");
        let error = load(&write(
            "no-alg",
            &format!(
                "{MINIMAL}{}",
                OAUTH.replace("requiredScopes", "algorithms: []\n    requiredScopes")
            ),
        ))
        .unwrap_err()
        .to_string();
        assert!(error.contains("auth.oauth.algorithms"), "{error}");
    }

    #[test]
    fn base_urls_and_rate_limits_follow_the_tenant_rules() {
        for url in [
            "https://a:99999/x",
            "https://exa%mple.com",
            "ftp://x",
            "https://u@h",
        ] {
            let text = MINIMAL.replace("https://billing.example.com/api", url);
            let error = load(&write("urls", &text)).unwrap_err().to_string();
            assert!(error.contains("baseUrl"), "{url}: {error}");
        }
        let error = load(&write(
            "burst",
            &format!("{MINIMAL}rateLimits: {{perCaller: {{requestsPerMinute: 1, burst: 0}}}}\n"),
        ))
        .unwrap_err()
        .to_string();
        assert!(error.contains("burst"), "{error}");
    }

    #[test]
    fn limits_written_before_the_connection_limits_load_with_defaults() {
        let old = format!(
            "{MINIMAL}limits: {{maxBodyBytes: 1048576, requestTimeoutSeconds: 30, upstreamTimeoutSeconds: 10}}\n"
        );
        let config = load(&write("old-limits", &old)).unwrap();
        assert_eq!(
            config.limits,
            bulkhead_crds::server_config::TransportLimits::default()
        );
        for (field, value) in [
            ("maxConnections", "0"),
            ("headerReadTimeoutSeconds", "0"),
            ("idleTimeoutSeconds", "0"),
            ("http2KeepAliveSeconds", "0"),
            ("maxHeaderBytes", "100"),
        ] {
            let text = format!(
                "{MINIMAL}limits: {{maxBodyBytes: 1, requestTimeoutSeconds: 1, upstreamTimeoutSeconds: 1, {field}: {value}}}\n"
            );
            let error = load(&write("bad-limits", &text)).unwrap_err().to_string();
            assert!(error.contains(field), "{field}: {error}");
        }
    }
}
