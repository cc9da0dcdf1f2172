//! Loading and checking the server configuration.
//!
//! The format is [`ServerConfig`] from `bulkhead-crds`, the same type the
//! operator serialises, so the two cannot drift. Relative paths of `file` and
//! `directory` sources are resolved against the configuration file's
//! directory, so a configuration works from any working directory.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use bulkhead_crds::server_config::{SecretSource, ServerConfig};
use bulkhead_crds::tenant::ConnectorType;

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
/// must be positive, URLs that must parse.
pub fn validate(config: &ServerConfig) -> Result<(), ConfigError> {
    let invalid = |m: String| Err(ConfigError::Invalid(m));
    if config.tenant_id.trim().is_empty() {
        return invalid("tenantId must not be empty".into());
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
    {
        return invalid(
            "limits.maxBodyBytes, requestTimeoutSeconds and upstreamTimeoutSeconds must be positive"
                .into(),
        );
    }
    if config.credential_ttl_seconds == 0 {
        return invalid("credentialTtlSeconds must be positive".into());
    }
    let credential_names: HashSet<&str> = config
        .credential_keys
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    let mut connector_names = HashSet::new();
    for connector in &config.connectors {
        // Connector names become tool name prefixes: the Tenant's own rule.
        if !bulkhead_crds::validation::is_ref_name(&connector.name) {
            return invalid(format!(
                "connector name {:?} must be 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter and not ending in '-' or '_'",
                connector.name
            ));
        }
        if !connector_names.insert(connector.name.as_str()) {
            return invalid(format!("connector name {:?} is used twice", connector.name));
        }
        let url = url::Url::parse(&connector.base_url).map_err(|e| {
            ConfigError::Invalid(format!(
                "connector {:?}: baseUrl {:?} is not a URL: {e}",
                connector.name, connector.base_url
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return invalid(format!(
                "connector {:?}: baseUrl must be an http(s) URL with a host",
                connector.name
            ));
        }
        if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
            return invalid(format!(
                "connector {:?}: baseUrl must not carry user info or a query; use a credential",
                connector.name
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
                    crate::connectors::http::AllowPattern::parse(&rule.method, &rule.path)
                        .map_err(|e| {
                            ConfigError::Invalid(format!("connector {:?}: {e}", connector.name))
                        })?;
                }
            }
            ConnectorType::Github => {}
        }
    }
    let limits = &config.rate_limits;
    if let Some(per_caller) = &limits.per_caller
        && per_caller.requests_per_minute == 0
    {
        return invalid("rateLimits.perCaller.requestsPerMinute must be positive".into());
    }
    for tool in &limits.per_tool {
        if tool.requests_per_minute == 0 {
            return invalid(format!(
                "rateLimits.perTool for {:?}: requestsPerMinute must be positive",
                tool.tool
            ));
        }
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
}
