//! Facts about the cluster that the operator is given by flags or
//! environment, because it cannot (or should not) discover them itself.
//!
//! `run` and `render` take the same flags, so what `render` prints is what
//! the controller applies with the same settings.

use bulkhead_crds::cidr::Cidr;

/// Default prefix of every tenant namespace (`bulkhead-<id>`).
pub const DEFAULT_NAMESPACE_PREFIX: &str = "bulkhead-";
/// Default namespace the operator itself runs in.
pub const DEFAULT_OPERATOR_NAMESPACE: &str = "bulkhead-system";
/// Default image of the per-tenant MCP server.
pub const DEFAULT_SERVER_IMAGE: &str = "ghcr.io/bulkhead-dev/bulkhead-server:0.1.0";
/// Default address range of the Kubernetes API server endpoints.
///
/// NetworkPolicy is evaluated after the `kubernetes` Service's virtual IP has
/// been translated, so the rule must name the API server's real endpoint
/// addresses (`kubectl get endpointslices -n default -l
/// kubernetes.io/service-name=kubernetes`). kind puts its control-plane node
/// on the Docker network `172.18.0.0/16`, port 6443.
pub const DEFAULT_API_SERVER_CIDRS: &[&str] = &["172.18.0.0/16"];
/// Default port of the Kubernetes API server endpoints.
pub const DEFAULT_API_SERVER_PORT: i32 = 6443;
/// Default pod and service ranges (kind's defaults): closed to tenant
/// egress unless a Tenant names them exactly.
pub const DEFAULT_CLUSTER_CIDRS: &[&str] = &["10.244.0.0/16", "10.96.0.0/12"];
/// Default DNS domain of the cluster.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// Cluster facts the operator is given by flags or environment.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct OperatorSettings {
    /// Prefix of every tenant namespace; the namespace is `<prefix><tenant id>`.
    #[arg(long, env = "BULKHEAD_NAMESPACE_PREFIX", default_value = DEFAULT_NAMESPACE_PREFIX)]
    pub namespace_prefix: String,
    /// Namespace the operator runs in; no tenant namespace may take its name.
    #[arg(long, env = "BULKHEAD_OPERATOR_NAMESPACE", default_value = DEFAULT_OPERATOR_NAMESPACE)]
    pub operator_namespace: String,
    /// Image of the per-tenant MCP server, unless a Tenant overrides it.
    #[arg(long, env = "BULKHEAD_SERVER_IMAGE", default_value = DEFAULT_SERVER_IMAGE)]
    pub server_image: String,
    /// Address range(s) of the Kubernetes API server endpoints, which tenant
    /// servers may reach to read their own Secrets (repeatable).
    #[arg(
        long = "api-server-cidr",
        env = "BULKHEAD_API_SERVER_CIDRS",
        value_delimiter = ',',
        value_parser = parse_cidr,
        default_values = DEFAULT_API_SERVER_CIDRS
    )]
    pub api_server_cidrs: Vec<String>,
    /// Port of the Kubernetes API server endpoints.
    #[arg(long, env = "BULKHEAD_API_SERVER_PORT", default_value_t = DEFAULT_API_SERVER_PORT)]
    pub api_server_port: i32,
    /// Pod and service address ranges of the cluster, closed to tenant
    /// egress unless a Tenant names them exactly (repeatable).
    #[arg(
        long = "cluster-cidr",
        env = "BULKHEAD_CLUSTER_CIDRS",
        value_delimiter = ',',
        value_parser = parse_cidr,
        default_values = DEFAULT_CLUSTER_CIDRS
    )]
    pub cluster_cidrs: Vec<String>,
    /// DNS domain of the cluster, used in the servers' allowed Host names.
    #[arg(long, env = "BULKHEAD_CLUSTER_DOMAIN", default_value = DEFAULT_CLUSTER_DOMAIN)]
    pub cluster_domain: String,
}

/// Accepts a flag value only if it is a canonical CIDR, so a typo in a
/// cluster range fails at start-up instead of leaving a range open.
fn parse_cidr(value: &str) -> Result<String, String> {
    value
        .parse::<Cidr>()
        .map(|cidr| cidr.to_string())
        .map_err(|e| e.to_string())
}

impl Default for OperatorSettings {
    fn default() -> Self {
        Self {
            namespace_prefix: DEFAULT_NAMESPACE_PREFIX.to_owned(),
            operator_namespace: DEFAULT_OPERATOR_NAMESPACE.to_owned(),
            server_image: DEFAULT_SERVER_IMAGE.to_owned(),
            api_server_cidrs: DEFAULT_API_SERVER_CIDRS
                .iter()
                .map(|c| (*c).to_owned())
                .collect(),
            api_server_port: DEFAULT_API_SERVER_PORT,
            cluster_cidrs: DEFAULT_CLUSTER_CIDRS
                .iter()
                .map(|c| (*c).to_owned())
                .collect(),
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        settings: OperatorSettings,
    }

    #[test]
    fn flag_defaults_equal_the_default_settings() {
        let flags = Flags::try_parse_from(["test"]).unwrap();
        assert_eq!(flags.settings, OperatorSettings::default());
    }

    #[test]
    fn cidr_flags_repeat_and_must_be_canonical() {
        let flags = Flags::try_parse_from([
            "test",
            "--cluster-cidr",
            "10.0.0.0/16",
            "--cluster-cidr",
            "fd00::/108",
            "--api-server-cidr=192.0.2.10/32",
        ])
        .unwrap();
        assert_eq!(flags.settings.cluster_cidrs, ["10.0.0.0/16", "fd00::/108"]);
        assert_eq!(flags.settings.api_server_cidrs, ["192.0.2.10/32"]);
        let error = Flags::try_parse_from(["test", "--cluster-cidr", "10.0.0.1/16"]).unwrap_err();
        assert!(error.to_string().contains("10.0.0.0/16"), "{error}");
    }
}
