//! The connection to the e2e cluster and the suite's settings.
//!
//! The suite creates and deletes Tenants and namespaces, so it refuses to
//! run unless the kubeconfig context of a throwaway cluster is named
//! explicitly; it never falls back to the current context.

use anyhow::{Context, Result};
use kube::Client;
use kube::config::{Config, KubeConfigOptions};

/// Kubeconfig context of the throwaway cluster (run.sh sets it).
pub const CONTEXT_ENV: &str = "BULKHEAD_E2E_KUBE_CONTEXT";
/// Namespace the operator is installed in.
pub const OPERATOR_NAMESPACE_ENV: &str = "BULKHEAD_E2E_OPERATOR_NAMESPACE";
/// Image of the short-lived pods that probe the network (needs `sh` and `curl`).
pub const CURL_IMAGE_ENV: &str = "BULKHEAD_E2E_CURL_IMAGE";
/// URL of the stand-in cloud metadata endpoint that run.sh serves at
/// 169.254.169.254 outside the nodes.
pub const METADATA_URL_ENV: &str = "BULKHEAD_E2E_METADATA_URL";

/// The operator's namespace unless [`OPERATOR_NAMESPACE_ENV`] says otherwise.
pub const DEFAULT_OPERATOR_NAMESPACE: &str = "bulkhead-system";
/// Pinned curl image; run.sh loads the same tag into kind.
pub const DEFAULT_CURL_IMAGE: &str = "curlimages/curl:8.16.0";
/// Cloud metadata address every tenant must be kept away from.
pub const DEFAULT_METADATA_URL: &str = "http://169.254.169.254/";

/// Settings of one suite run, read from the environment.
#[derive(Clone, Debug)]
pub struct SuiteSettings {
    /// Kubeconfig context of the cluster under test.
    pub context: String,
    /// Namespace of the operator's Deployment.
    pub operator_namespace: String,
    /// Image of the probe pods.
    pub curl_image: String,
    /// URL of the stand-in metadata endpoint.
    pub metadata_url: String,
}

impl SuiteSettings {
    /// Reads the settings; fails when no e2e context is named.
    pub fn from_env() -> Result<Self> {
        let context = std::env::var(CONTEXT_ENV).with_context(|| {
            format!(
                "{CONTEXT_ENV} is not set. The e2e suite creates and deletes Tenants and \
                 namespaces, so it only runs against a cluster named explicitly: run \
                 tests/e2e/run.sh, or set {CONTEXT_ENV} to the kubeconfig context of a \
                 throwaway cluster that has the operator installed"
            )
        })?;
        let var_or = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|value| !value.is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        Ok(Self {
            context,
            operator_namespace: var_or(OPERATOR_NAMESPACE_ENV, DEFAULT_OPERATOR_NAMESPACE),
            curl_image: var_or(CURL_IMAGE_ENV, DEFAULT_CURL_IMAGE),
            metadata_url: var_or(METADATA_URL_ENV, DEFAULT_METADATA_URL),
        })
    }
}

/// A client for exactly the context named in the settings.
pub async fn connect(settings: &SuiteSettings) -> Result<Client> {
    let options = KubeConfigOptions {
        context: Some(settings.context.clone()),
        ..KubeConfigOptions::default()
    };
    let config = Config::from_kubeconfig(&options)
        .await
        .with_context(|| format!("loading kubeconfig context {:?}", settings.context))?;
    Client::try_from(config)
        .with_context(|| format!("building a client for context {:?}", settings.context))
}
