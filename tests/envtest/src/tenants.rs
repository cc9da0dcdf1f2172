//! Tenants for tests: the repository's examples under a test's own id,
//! applied with kubectl, and bounded waits for what the operator does.
//!
//! Tests in one binary share one operator and run in parallel, so each test
//! names its Tenants with its own prefix.

use std::future::Future;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bulkhead_crds::Tenant;
use bulkhead_operator::desired::{TenantObjects, desired_objects, namespace_name};
use bulkhead_operator::labels::TENANT_LABEL;
use bulkhead_operator::settings::OperatorSettings;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use crate::audit::{AuditEvent, AuditMark};
use crate::binaries::repository_root;
use crate::control_plane::{ControlPlane, POD_CIDR, SERVICE_CIDR};
use crate::install::OPERATOR_USER;

/// How long a Tenant may take to be reconciled on a busy 2-core machine.
pub const RECONCILE_TIMEOUT: Duration = Duration::from_secs(60);

/// The name of the Tenant CustomResourceDefinition.
pub const TENANT_CRD: &str = "tenants.bulkhead.dev";
/// How long a CRD change may take to reach the API server's handlers.
pub const CRD_TIMEOUT: Duration = Duration::from_secs(30);

/// `manifests/examples/<file>` as a Tenant renamed to `id`.
pub fn example(file: &str, id: &str) -> Result<Tenant> {
    let path = repository_root().join("manifests/examples").join(file);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let mut tenant: Tenant =
        yaml_serde::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    tenant.metadata.name = Some(id.to_owned());
    Ok(tenant)
}

/// `manifests/examples/<file>` renamed to `id`, as JSON to edit freely
/// (with `apiVersion` and `kind`, so it can be sent as is).
pub fn example_json(file: &str, id: &str) -> Result<Value> {
    let mut value = serde_json::to_value(example(file, id)?)?;
    value["apiVersion"] = json!("bulkhead.dev/v1alpha1");
    value["kind"] = json!("Tenant");
    Ok(value)
}

/// Tenants as plain JSON objects: reads and writes that the operator's
/// types could not hold (a malformed Tenant does not deserialize).
pub fn tenants_dynamic(client: &Client) -> Api<DynamicObject> {
    let resource =
        ApiResource::from_gvk(&GroupVersionKind::gvk("bulkhead.dev", "v1alpha1", "Tenant"));
    Api::all_with(client.clone(), &resource)
}

/// The API server's verdict on creating the Tenant `object` (dry run):
/// `Ok(Err(message))` when it refuses it as invalid (422), `Err` for any
/// other failure.
pub async fn accepted(client: &Client, object: &Value) -> Result<std::result::Result<(), String>> {
    let object: DynamicObject = serde_json::from_value(object.clone())?;
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    Ok(
        match tenants_dynamic(client).create(&dry_run, &object).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 422 => Err(status.message),
            Err(error) => return Err(error.into()),
        },
    )
}

/// Waits (at most [`RECONCILE_TIMEOUT`]) for ServiceAccount `default` of
/// `namespace`: the ServiceAccount admission plugin refuses pods until the
/// controller manager has made it.
pub async fn wait_default_service_account(client: &Client, namespace: &str) -> Result<()> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    wait_for(
        &format!("ServiceAccount {namespace}/default"),
        RECONCILE_TIMEOUT,
        || async { Ok(accounts.get_opt("default").await?.map(drop)) },
    )
    .await
}

/// Replaces the Tenant CRD's `spec` schema by one that preserves anything,
/// as an older, laxer CRD would have; [`ControlPlane::apply_manifests`]
/// restores it.
async fn relax_tenant_crd(admin: &Client) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    let mut lax = crds.get(TENANT_CRD).await?;
    lax.metadata.managed_fields = None;
    for version in &mut lax.spec.versions {
        let schema = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .context("CRD without schema")?;
        let mut relaxed = serde_json::to_value(&*schema)?;
        relaxed["properties"]["spec"] =
            json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
        *schema = serde_json::from_value(relaxed)?;
    }
    crds.replace(TENANT_CRD, &PostParams::default(), &lax)
        .await?;
    Ok(())
}

/// Waits until `check` returns `Some`, polling every 200 ms for at most
/// `timeout`; the error names `what` and the last error `check` returned.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => last_error = Some(error),
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(error) => bail!("timed out after {timeout:?} waiting for {what}: {error:#}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl ControlPlane {
    /// Stores `objects` (Tenants the installed CRD refuses) the way they
    /// reach a real cluster: under a laxer CRD whose `spec` preserves
    /// anything, as stored objects are not re-validated when a stricter CRD
    /// is applied. `probe` is a Tenant the installed CRD refuses: once the
    /// API server accepts it (dry run) the lax CRD is served. The installed
    /// CRD is restored whatever happened, and the call returns once the API
    /// server refuses `probe` again (each wait at most [`CRD_TIMEOUT`]).
    ///
    /// Tests that apply Tenants on the same control plane meanwhile would
    /// see the lax CRD: callers keep them apart.
    pub async fn store_under_lax_crd(
        &self,
        admin: &Client,
        probe: &Value,
        objects: &[&Value],
    ) -> Result<()> {
        let stored = async {
            relax_tenant_crd(admin).await?;
            wait_for("the lax CRD to be served", CRD_TIMEOUT, || async {
                Ok(accepted(admin, probe).await?.is_ok().then_some(()))
            })
            .await?;
            for object in objects {
                self.kubectl_apply(object)?;
            }
            Ok::<_, anyhow::Error>(())
        }
        .await;
        // Restore the installed CRD whatever happened.
        self.apply_manifests()?;
        wait_for(
            "the installed CRD to be served again",
            CRD_TIMEOUT,
            || async { Ok(accepted(admin, probe).await?.is_err().then_some(())) },
        )
        .await?;
        stored
    }

    /// Waits (at most [`RECONCILE_TIMEOUT`]) until exactly `count` pods of
    /// tenant `id` (by the operator's tenant label) stand in its namespace,
    /// and returns them.
    pub async fn wait_server_pods(
        &self,
        admin: &Client,
        id: &str,
        count: usize,
    ) -> Result<Vec<Pod>> {
        let namespace = self.tenant_namespace(id);
        let pods: Api<Pod> = Api::namespaced(admin.clone(), &namespace);
        let selector = format!("{TENANT_LABEL}={id}");
        wait_for(
            &format!("{count} server pods in {namespace}"),
            RECONCILE_TIMEOUT,
            || async {
                let listed = pods.list(&ListParams::default().labels(&selector)).await?;
                Ok((listed.items.len() == count).then_some(listed.items))
            },
        )
        .await
    }

    /// The settings the harness gives every operator it starts, so tests
    /// can build what the operator builds.
    pub fn operator_settings(&self) -> OperatorSettings {
        OperatorSettings {
            api_server_cidrs: vec!["127.0.0.1/32".to_owned()],
            api_server_port: i32::from(self.api_port()),
            cluster_cidrs: vec![POD_CIDR.to_owned(), SERVICE_CIDR.to_owned()],
            ..OperatorSettings::default()
        }
    }

    /// The namespace the operator gives tenant `id`.
    pub fn tenant_namespace(&self, id: &str) -> String {
        namespace_name(id, &self.operator_settings())
    }

    /// Every child the operator should create for `tenant` as it is stored
    /// (with its uid, so owner references are included).
    pub fn desired_children(&self, tenant: &Tenant) -> Result<TenantObjects> {
        desired_objects(tenant, &self.operator_settings())
            .map_err(|invalid| anyhow::anyhow!("{invalid}"))
    }

    /// `kubectl apply -f -` of `object` (as YAML) as the admin.
    pub fn kubectl_apply<T: serde::Serialize>(&self, object: &T) -> Result<String> {
        let yaml = yaml_serde::to_string(object).context("serialize for kubectl")?;
        let mut child = self
            .kubectl()
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("run kubectl apply")?;
        child
            .stdin
            .take()
            .context("kubectl's standard input")?
            .write_all(yaml.as_bytes())
            .context("write to kubectl")?;
        let output = child.wait_with_output().context("wait for kubectl")?;
        if !output.status.success() {
            bail!(
                "kubectl apply failed ({}):\n{}\n---\n{yaml}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Waits until the operator has reported on the Tenant's current
    /// generation (`status.observedGeneration` equals `metadata.generation`
    /// and the conditions are there) and returns the Tenant.
    pub async fn wait_reconciled(&self, client: &Client, id: &str) -> Result<Tenant> {
        let tenants: Api<Tenant> = Api::all(client.clone());
        wait_for(
            &format!("Tenant {id} to be reconciled"),
            RECONCILE_TIMEOUT,
            || async {
                let Some(tenant) = tenants.get_opt(id).await? else {
                    return Ok(None);
                };
                let observed = tenant.status.as_ref().and_then(|s| s.observed_generation);
                let has_conditions = tenant
                    .status
                    .as_ref()
                    .is_some_and(|s| !s.conditions.is_empty());
                Ok(
                    (observed.is_some()
                        && observed == tenant.metadata.generation
                        && has_conditions)
                        .then_some(tenant),
                )
            },
        )
        .await
        .with_context(|| self.operator_log_hint())
    }

    /// Deletes Tenant `id` if it exists (cleanup at the end of a test).
    pub async fn delete_tenant(&self, client: &Client, id: &str) -> Result<()> {
        let tenants: Api<Tenant> = Api::all(client.clone());
        match tenants.delete(id, &Default::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(error) => Err(error).with_context(|| format!("delete Tenant {id}")),
        }
    }

    fn operator_log_hint(&self) -> String {
        match self.installation_cell().get() {
            Some(Ok(installation)) => format!(
                "operator log tail:\n{}",
                installation.operator().log_tail(20)
            ),
            _ => "Bulkhead is not installed on this control plane".to_owned(),
        }
    }
}

/// Names of a Tenant's children, `kind/namespace/name`, for messages.
pub fn child_names(objects: &TenantObjects) -> Vec<String> {
    let mut names = vec![format!("Namespace/{}", objects.namespace.name_any())];
    let namespaced = [
        ("ServiceAccount", objects.service_account.metadata.clone()),
        ("RoleBinding", objects.role_binding.metadata.clone()),
        ("NetworkPolicy", objects.network_policy.metadata.clone()),
        ("ResourceQuota", objects.resource_quota.metadata.clone()),
        ("LimitRange", objects.limit_range.metadata.clone()),
        ("ConfigMap", objects.config_map.metadata.clone()),
        ("Service", objects.service.metadata.clone()),
        ("Deployment", objects.deployment.metadata.clone()),
    ];
    for (kind, meta) in namespaced {
        names.push(format!(
            "{kind}/{}/{}",
            meta.namespace.unwrap_or_default(),
            meta.name.unwrap_or_default()
        ));
    }
    names
}

/// Makes the operator reconcile `id` again without changing its spec (an
/// annotation numbered `round` changes, the generation does not), waits
/// until that reconcile has read the last child it checks (the Deployment in
/// `ns`) plus a 3 s grace period, and returns the audit events since just
/// before.
pub async fn reconcile_again(
    cp: &ControlPlane,
    admin: &Client,
    id: &str,
    ns: &str,
    round: u32,
) -> Result<(AuditMark, Vec<AuditEvent>)> {
    let mark = cp.audit().mark()?;
    Api::<Tenant>::all(admin.clone())
        .patch(
            id,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"envtest.bulkhead.dev/poke": round.to_string()}}})),
        )
        .await?;
    wait_for(
        &format!("the operator to read {id}'s Deployment again"),
        RECONCILE_TIMEOUT,
        || async {
            Ok(cp
                .audit()
                .since(mark)?
                .iter()
                .any(|e| {
                    e.username() == OPERATOR_USER
                        && e.verb == "get"
                        && e.object().resource == "deployments"
                        && e.object().namespace == ns
                })
                .then_some(()))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok((mark, cp.audit().since(mark)?))
}
