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
use bulkhead_operator::settings::OperatorSettings;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::audit::{AuditEvent, AuditMark};
use crate::binaries::repository_root;
use crate::control_plane::{ControlPlane, POD_CIDR, SERVICE_CIDR};
use crate::install::OPERATOR_USER;

/// How long a Tenant may take to be reconciled on a busy 2-core machine.
pub const RECONCILE_TIMEOUT: Duration = Duration::from_secs(60);

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
