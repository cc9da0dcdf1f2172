//! The per-test environment and its cleanup.
//!
//! Each test gets a fresh run id; every Tenant and namespace it creates is
//! named after that id, labelled [`SUITE_LABEL`], and deleted when the test
//! ends, however it ends (the approach of linkerd's `with_temp_ns`).

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::BuildHasher;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use bulkhead_crds::Tenant;
use futures::FutureExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::cluster::{self, SuiteSettings};
use crate::wait::{self, Check};

/// Label on every namespace the suite creates itself (value: the run id),
/// so leftovers of an interrupted run can be found with a selector.
pub const SUITE_LABEL: &str = "e2e.bulkhead.dev/run";
/// Label that admits a namespace to the Tenants of one run (value: the run
/// id): the fixtures' `spec.network.ingressFrom` selects it.
pub const GATEWAY_LABEL: &str = "e2e.bulkhead.dev/gateway";

/// Time cleanup waits for a Tenant to go before deleting namespaces, so the
/// operator does not recreate a namespace it still owns.
const TENANT_DELETION_TIMEOUT: Duration = Duration::from_secs(90);

/// Something a test created that cleanup removes.
#[derive(Clone, Debug)]
enum Created {
    Tenant(String),
    Namespace(String),
}

impl Created {
    fn name(&self) -> &str {
        match self {
            Self::Tenant(name) | Self::Namespace(name) => name,
        }
    }
}

/// What one test works with: a client for the e2e cluster, the suite's
/// settings and a unique run id that names everything the test creates.
#[derive(Clone)]
pub struct TestEnv {
    client: Client,
    settings: Arc<SuiteSettings>,
    run_id: String,
    created: Arc<Mutex<Vec<Created>>>,
}

/// Runs one e2e test in a fresh [`TestEnv`], then deletes what it created,
/// and fails the test with the whole error chain if it returned an error.
pub async fn run<F, Fut>(test: F)
where
    F: FnOnce(TestEnv) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let env = match TestEnv::connect().await {
        Ok(env) => env,
        Err(error) => panic!("cannot use the e2e cluster: {error:#}"),
    };
    let outcome = AssertUnwindSafe(test(env.clone())).catch_unwind().await;
    env.clean_up().await;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(error)) => panic!("run {}: {error:#}", env.run_id),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

impl TestEnv {
    async fn connect() -> Result<Self> {
        let settings = SuiteSettings::from_env()?;
        let client = cluster::connect(&settings).await?;
        Ok(Self {
            client,
            settings: Arc::new(settings),
            run_id: new_run_id(),
            created: Arc::default(),
        })
    }

    /// A client for the e2e cluster.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The suite's settings.
    pub fn settings(&self) -> &SuiteSettings {
        &self.settings
    }

    /// The id that names everything this test creates.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// A name unique to this test; see [`fixture_name`].
    pub fn name(&self, role: &str) -> String {
        fixture_name(&self.run_id, role)
    }

    /// Creates a plain namespace (no NetworkPolicy, no Pod Security labels)
    /// for probe pods. With `gateway`, it carries [`GATEWAY_LABEL`], which
    /// this test's Tenants admit as callers.
    pub async fn create_namespace(&self, role: &str, gateway: bool) -> Result<String> {
        let name = self.name(role);
        let mut labels =
            std::collections::BTreeMap::from([(SUITE_LABEL.to_owned(), self.run_id.clone())]);
        if gateway {
            labels.insert(GATEWAY_LABEL.to_owned(), self.run_id.clone());
        }
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        self.register(Created::Namespace(name.clone()));
        Api::<Namespace>::all(self.client())
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(name)
    }

    pub(crate) fn register_tenant(&self, name: &str) {
        self.register(Created::Tenant(name.to_owned()));
    }

    /// Makes cleanup delete `namespace` too (for namespaces a Tenant
    /// leaves behind, such as with `deletionPolicy: Retain`).
    pub fn register_namespace(&self, namespace: &str) {
        self.register(Created::Namespace(namespace.to_owned()));
    }

    fn register(&self, created: Created) {
        self.created
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(created);
    }

    /// Deletes Tenants first and waits for them to go (so the operator does
    /// not put their namespaces back), then namespaces. Failures are printed,
    /// not raised: the test's own outcome is what gets reported.
    async fn clean_up(&self) {
        let created =
            std::mem::take(&mut *self.created.lock().unwrap_or_else(PoisonError::into_inner));
        let tenants: Api<Tenant> = Api::all(self.client());
        let namespaces: Api<Namespace> = Api::all(self.client());
        let (tenant_names, namespace_names): (Vec<_>, Vec<_>) = created
            .into_iter()
            .partition(|item| matches!(item, Created::Tenant(_)));
        for item in tenant_names {
            let name = item.name();
            if let Err(error) = delete_and_wait(&tenants, name).await {
                eprintln!("cleanup: Tenant {name}: {error:#}");
            }
        }
        for item in namespace_names {
            let name = item.name();
            if let Err(error) = delete_ignoring_absent(&namespaces, name).await {
                eprintln!("cleanup: namespace {name}: {error:#}");
            }
        }
    }
}

async fn delete_and_wait(tenants: &Api<Tenant>, name: &str) -> Result<()> {
    delete_ignoring_absent(tenants, name).await?;
    wait::until(
        &format!("Tenant {name} to be deleted"),
        TENANT_DELETION_TIMEOUT,
        async || {
            Ok(match tenants.get_opt(name).await? {
                None => Check::Done(()),
                Some(tenant) => Check::Pending(format!(
                    "still present with finalizers {:?}",
                    tenant.metadata.finalizers.unwrap_or_default()
                )),
            })
        },
    )
    .await
}

/// Deletes `name`; an object already gone counts as deleted.
pub async fn delete_ignoring_absent<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error).with_context(|| format!("deleting {name}")),
    }
}

/// The name of what run `run_id` creates for `role`: `e2e-<run id>-<role>`.
pub fn fixture_name(run_id: &str, role: &str) -> String {
    format!("e2e-{run_id}-{role}")
}

/// Six hex digits from the standard library's randomly seeded hasher:
/// enough to keep parallel tests and reruns apart, and short enough that
/// `bulkhead-e2e-<id>-<role>` stays a valid namespace name.
fn new_run_id() -> String {
    let random = RandomState::new().hash_one(std::process::id());
    format!("{:06x}", random & 0x00ff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_six_hex_digits_and_differ() {
        let ids: Vec<String> = (0..32).map(|_| new_run_id()).collect();
        for id in &ids {
            assert_eq!(id.len(), 6, "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                "{id}"
            );
        }
        let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
        assert!(distinct.len() > 1, "every run id was the same: {ids:?}");
    }

    #[test]
    fn fixture_names_are_dns_labels() {
        let name = fixture_name("0a1b2c", "gateway");
        assert_eq!(name, "e2e-0a1b2c-gateway");
        assert!(bulkhead_crds::validation::is_dns_label(&name));
    }
}
