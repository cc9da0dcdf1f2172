//! Tenant fixtures: a Tenant with its Secrets, ready to be called.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use bulkhead_crds::server_config::{API_KEYS_SECRET_NAME, CREDENTIALS_SECRET_NAME};
use bulkhead_crds::{Tenant, TenantSpec};
use bulkhead_server::api_keys::{generate_api_key, hash_api_key};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, ResourceExt};

use bulkhead_operator::labels::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};

use crate::harness::{GATEWAY_LABEL, SUITE_LABEL, TestEnv};
use crate::wait::{self, Check, READY_TIMEOUT};

/// Selector of everything the operator creates.
pub fn managed_by_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")
}
/// Caller id of the API key every fixture Tenant accepts.
pub const CALLER_ID: &str = "e2e-gateway";
/// Credential key the fixture's connector refers to.
const CREDENTIAL_KEY: &str = "github_token";

/// A Tenant created by a test, Ready, with the plaintext API key of its one
/// caller.
pub struct TenantUnderTest {
    /// The tenant id (`metadata.name`).
    pub name: String,
    /// The tenant's namespace, as reported in its status.
    pub namespace: String,
    /// The MCP endpoint, as reported in its status.
    pub endpoint: String,
    /// The plaintext API key of [`CALLER_ID`]; only its hash is stored in
    /// the cluster.
    pub api_key: String,
}

/// The spec every fixture Tenant of run `run_id` starts from: one
/// credential and a GitHub connector (never called), callers admitted from
/// the run's gateway namespaces only, and egress opened as wide as the
/// operator allows (0.0.0.0/0 on ports 80, 443 and 8080) so the network
/// tests show that the exceptions the operator adds — metadata, private and
/// cluster ranges — are what blocks traffic, not a missing port.
pub fn fixture_spec(run_id: &str) -> Result<TenantSpec> {
    serde_json::from_value(serde_json::json!({
        "displayName": format!("Bulkhead e2e run {run_id}"),
        "credentials": [{"name": "github", "key": CREDENTIAL_KEY}],
        "connectors": [{
            "name": "github",
            "type": "github",
            "baseUrl": "https://api.github.com",
            "credential": "github",
        }],
        "network": {
            "ingressFrom": [{"matchLabels": {GATEWAY_LABEL: run_id}}],
            "egress": {"cidrs": ["0.0.0.0/0"], "ports": [80, 443, 8080]},
        },
        "deletionPolicy": "Delete",
    }))
    .context("building the fixture TenantSpec")
}

impl TestEnv {
    /// The spec every fixture of this test starts from; see [`fixture_spec`].
    pub fn tenant_spec(&self) -> Result<TenantSpec> {
        fixture_spec(self.run_id())
    }

    /// Creates Tenant `e2e-<run id>-<role>` with `spec`, creates its
    /// credential and API-key Secrets once the operator has made the
    /// namespace (as the platform team would), and waits until it is Ready.
    pub async fn create_tenant(&self, role: &str, spec: TenantSpec) -> Result<TenantUnderTest> {
        let name = self.name(role);
        let tenants: Api<Tenant> = Api::all(self.client());
        self.register_tenant(&name);
        let mut tenant = Tenant::new(&name, spec);
        tenant.metadata.labels = Some(BTreeMap::from([(
            SUITE_LABEL.to_owned(),
            self.run_id().to_owned(),
        )]));
        tenants
            .create(&PostParams::default(), &tenant)
            .await
            .with_context(|| format!("creating Tenant {name}"))?;

        let namespace = self.wait_for_tenant_namespace(&name).await?;
        let api_key = generate_api_key().context("making an API key for the fixture caller")?;
        self.create_secret(
            &namespace,
            CREDENTIALS_SECRET_NAME,
            BTreeMap::from([(CREDENTIAL_KEY.to_owned(), "e2e-not-a-real-token".to_owned())]),
        )
        .await?;
        self.create_secret(
            &namespace,
            API_KEYS_SECRET_NAME,
            BTreeMap::from([(CALLER_ID.to_owned(), hash_api_key(&api_key))]),
        )
        .await?;

        let ready = self.wait_for_tenant_ready(&name).await?;
        let status = ready.status.unwrap_or_default();
        let endpoint = status
            .endpoint
            .with_context(|| format!("Tenant {name} is Ready but reports no status.endpoint"))?;
        Ok(TenantUnderTest {
            name,
            namespace,
            endpoint,
            api_key,
        })
    }

    /// Waits until the Tenant reports its namespace and that namespace exists.
    pub async fn wait_for_tenant_namespace(&self, name: &str) -> Result<String> {
        let tenants: Api<Tenant> = Api::all(self.client());
        let namespaces: Api<Namespace> = Api::all(self.client());
        wait::until(
            &format!("the namespace of Tenant {name}"),
            READY_TIMEOUT,
            async || {
                let tenant = tenants.get(name).await?;
                let Some(namespace) = tenant.status.and_then(|status| status.namespace) else {
                    return Ok(Check::Pending("no status.namespace yet".to_owned()));
                };
                Ok(match namespaces.get_opt(&namespace).await? {
                    Some(_) => Check::Done(namespace),
                    None => Check::Pending(format!("namespace {namespace} does not exist yet")),
                })
            },
        )
        .await
    }

    /// Waits until the Tenant's `Ready` condition is `True` for its current
    /// generation (what `kubectl wait --for=condition=Ready` checks, plus
    /// observedGeneration so a stale status does not count).
    pub async fn wait_for_tenant_ready(&self, name: &str) -> Result<Tenant> {
        let tenants: Api<Tenant> = Api::all(self.client());
        wait::until(
            &format!("Tenant {name} to be Ready"),
            READY_TIMEOUT,
            async || {
                let tenant = tenants.get(name).await?;
                let generation = tenant.metadata.generation;
                let status = tenant.status.clone().unwrap_or_default();
                let ready = status
                    .conditions
                    .iter()
                    .any(|condition| condition.type_ == "Ready" && condition.status == "True");
                if ready && status.observed_generation == generation {
                    return Ok(Check::Done(tenant));
                }
                let conditions: Vec<String> = status
                    .conditions
                    .iter()
                    .map(|c| format!("{}={} ({}: {})", c.type_, c.status, c.reason, c.message))
                    .collect();
                Ok(Check::Pending(format!(
                    "generation {generation:?}, observedGeneration {:?}, conditions [{}]",
                    status.observed_generation,
                    conditions.join("; ")
                )))
            },
        )
        .await
    }

    /// The one server Deployment the operator made in `namespace`.
    pub async fn server_deployment(&self, namespace: &str) -> Result<Deployment> {
        let deployments: Api<Deployment> = Api::namespaced(self.client(), namespace);
        let mut found = deployments
            .list(&ListParams::default().labels(&managed_by_selector()))
            .await
            .with_context(|| format!("listing Deployments in {namespace}"))?
            .items;
        if found.len() != 1 {
            bail!(
                "expected exactly one Bulkhead Deployment in {namespace}, found {:?}",
                found.iter().map(ResourceExt::name_any).collect::<Vec<_>>()
            );
        }
        Ok(found.remove(0))
    }

    /// The ServiceAccount the tenant's server pods run as, read from the
    /// Deployment the operator made rather than assumed.
    pub async fn server_service_account(&self, namespace: &str) -> Result<String> {
        let deployment = self.server_deployment(namespace).await?;
        deployment
            .spec
            .and_then(|spec| spec.template.spec)
            .and_then(|pod| pod.service_account_name)
            .filter(|name| !name.is_empty())
            .with_context(|| {
                format!("the server Deployment in {namespace} names no serviceAccountName")
            })
    }

    /// Creates an Opaque Secret from string values.
    pub async fn create_secret(
        &self,
        namespace: &str,
        name: &str,
        values: BTreeMap<String, String>,
    ) -> Result<()> {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            },
            string_data: Some(values),
            type_: Some("Opaque".to_owned()),
            ..Secret::default()
        };
        Api::<Secret>::namespaced(self.client(), namespace)
            .create(&PostParams::default(), &secret)
            .await
            .with_context(|| format!("creating Secret {namespace}/{name}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bulkhead_operator::desired::desired_objects;
    use bulkhead_operator::settings::OperatorSettings;

    use super::*;
    use crate::harness::fixture_name;

    /// The longest run id and role the suite uses.
    const RUN_ID: &str = "ffffff";
    const LONGEST_ROLE: &str = "delete";

    fn fixture_tenant(role: &str) -> Tenant {
        let spec = fixture_spec(RUN_ID).expect("fixture spec");
        Tenant::new(&fixture_name(RUN_ID, role), spec)
    }

    #[test]
    fn fixture_tenant_is_accepted_by_the_operators_builders() {
        // A fixture the operator refuses would make every e2e test fail for
        // a reason that has nothing to do with isolation.
        let objects = desired_objects(&fixture_tenant(LONGEST_ROLE), &OperatorSettings::default())
            .unwrap_or_else(|error| panic!("fixture Tenant refused: {error}"));
        assert_eq!(
            objects.namespace.metadata.name.as_deref(),
            Some("bulkhead-e2e-ffffff-delete")
        );
    }

    #[test]
    fn fixture_tenant_admits_only_its_own_runs_gateways() {
        let objects = desired_objects(&fixture_tenant("a"), &OperatorSettings::default())
            .expect("fixture Tenant builds");
        let ingress = objects
            .network_policy
            .spec
            .and_then(|spec| spec.ingress)
            .expect("ingress rules");
        let selectors: Vec<_> = ingress
            .iter()
            .flat_map(|rule| rule.from.clone().unwrap_or_default())
            .map(|peer| peer.namespace_selector.and_then(|s| s.match_labels))
            .collect();
        assert_eq!(
            selectors,
            vec![Some(BTreeMap::from([(
                GATEWAY_LABEL.to_owned(),
                RUN_ID.to_owned()
            )]))]
        );
    }

    #[test]
    fn fixture_spec_opens_egress_wide_so_only_the_exceptions_block() {
        let spec = fixture_spec(RUN_ID).expect("fixture spec");
        assert_eq!(spec.network.egress.cidrs, ["0.0.0.0/0"]);
        // 80: the metadata endpoint; 8080: another tenant's server port.
        assert_eq!(spec.network.egress.ports, [80, 443, 8080]);
    }

    #[test]
    fn managed_by_selector_matches_the_operators_labels() {
        let labels = bulkhead_operator::labels::child_labels("x");
        let (key, value) = managed_by_selector()
            .split_once('=')
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .expect("key=value");
        assert_eq!(labels.get(&key), Some(&value));
    }
}
