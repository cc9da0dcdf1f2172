//! Deleting a Tenant on the real API server, with the real garbage
//! collector and namespace controller: `Delete` removes the namespace and
//! everything in it; `Retain` keeps the namespace, its contents and the
//! Secrets the platform team put there, with no owner reference left to the
//! deleted Tenant, and a new Tenant of the same name does not adopt them.

mod live_children;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bulkhead_crds::Tenant;
use bulkhead_crds::tenant::DeletionPolicy;
use bulkhead_envtest::tenants::{RECONCILE_TIMEOUT, example, wait_for};
use bulkhead_envtest::{ControlPlane, OPERATOR_USER};
use bulkhead_operator::labels::TENANT_UID_ANNOTATION;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use live_children::{LiveChild, live_children, operator_writes_in, resource_versions};
use serde_json::json;

/// How long the garbage collector and the namespace controller may take to
/// remove a namespace and its contents on a busy 2-core machine.
const GONE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a retained namespace is watched for a late cascade after its
/// Tenant is gone (the garbage collector acts within a second or two).
const SETTLE: Duration = Duration::from_secs(8);
/// The Retain finalizer (`operator/src/controller/deletion.rs`).
const RETAIN_FINALIZER: &str = "bulkhead.dev/retain-namespace";
/// The garbage collector's user (kube-controller-manager runs each
/// controller with its own ServiceAccount's credentials).
const GARBAGE_COLLECTOR: &str = "system:serviceaccount:kube-system:generic-garbage-collector";
/// Name of the policy that refuses foreground deletions of Retain Tenants.
const RETAIN_DELETION_GUARD: &str = "bulkhead-retain-deletion-guard";
/// Name of the policy that reserves ownership marks to the operator.
const OWNERSHIP_GUARD: &str = "bulkhead-namespace-ownership-guard";

/// The tenant's credentials as the platform team stores them: no owner, no
/// Bulkhead labels.
fn platform_secret() -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("bulkhead-credentials".to_owned()),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([(
            "github_token".to_owned(),
            "platform-secret".to_owned(),
        )])),
        ..Secret::default()
    }
}

async fn apply_reconciled(cp: &ControlPlane, admin: &Client, tenant: &Tenant) -> Result<Tenant> {
    let id = tenant.name_any();
    cp.kubectl_apply(tenant)?;
    let live = cp.wait_reconciled(admin, &id).await?;
    // Reconciled means applied: the namespace exists and NamespaceReady is True.
    let ready = live
        .status
        .iter()
        .flat_map(|s| &s.conditions)
        .find(|c| c.type_ == "NamespaceReady")
        .map(|c| c.status.clone());
    ensure!(ready.as_deref() == Some("True"), "{id}: {:?}", live.status);
    Ok(live)
}

async fn wait_tenant_gone(admin: &Client, id: &str) -> Result<()> {
    let tenants: Api<Tenant> = Api::all(admin.clone());
    wait_for(
        &format!("Tenant {id} to be gone"),
        RECONCILE_TIMEOUT,
        || async { Ok(tenants.get_opt(id).await?.is_none().then_some(())) },
    )
    .await
}

fn missing(children: &[LiveChild]) -> Vec<&str> {
    children
        .iter()
        .filter(|(_, object)| object.is_none())
        .map(|(name, _)| name.as_str())
        .collect()
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn delete_removes_the_namespace_and_everything_in_it() -> Result<()> {
    let cp = ControlPlane::shared();
    cp.install_bulkhead();
    let admin = cp.admin_client().await?;
    let id = "deletion-delete";
    let live = apply_reconciled(cp, &admin, &example("minimal.yaml", id)?).await?;
    assert_eq!(live.spec.deletion_policy, DeletionPolicy::Delete);
    // Delete needs no finalizer: the Tenant can go even with no operator.
    assert!(live.finalizers().is_empty(), "{:?}", live.finalizers());
    let ns = cp.tenant_namespace(id);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    secrets
        .create(&PostParams::default(), &platform_secret())
        .await?;
    let objects = cp.desired_children(&live)?;
    let before = live_children(&admin, &objects).await?;
    assert!(missing(&before).is_empty(), "{:?}", missing(&before));

    let mark = cp.audit().mark()?;
    let started = Instant::now();
    cp.delete_tenant(&admin, id).await?;
    wait_tenant_gone(&admin, id).await?;
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    wait_for(
        &format!("namespace {ns} to be removed"),
        GONE_TIMEOUT,
        || async { Ok(namespaces.get_opt(&ns).await?.is_none().then_some(())) },
    )
    .await?;
    eprintln!(
        "{id}: Tenant, namespace and contents gone {:.1} s after the delete",
        started.elapsed().as_secs_f64()
    );
    let after = live_children(&admin, &objects).await?;
    let left: Vec<&str> = after
        .iter()
        .filter(|(_, object)| object.is_some())
        .map(|(name, _)| name.as_str())
        .collect();
    assert!(left.is_empty(), "still there: {left:?}");
    assert!(secrets.get_opt("bulkhead-credentials").await?.is_none());
    // It was the garbage collector that deleted the namespace, following
    // its owner reference; the operator deleted nothing.
    let events = cp.audit().since(mark)?;
    assert!(
        events.iter().any(|e| e.username() == GARBAGE_COLLECTOR
            && e.verb == "delete"
            && e.object().resource == "namespaces"
            && e.object().name == ns),
        "no delete of {ns} by {GARBAGE_COLLECTOR}"
    );
    let by_operator: Vec<String> = events
        .iter()
        .filter(|e| e.username() == OPERATOR_USER && e.verb == "delete")
        .filter(|e| e.object().namespace == ns || e.object().name == ns)
        .map(|e| e.summary())
        .collect();
    assert!(by_operator.is_empty(), "{}", by_operator.join("\n"));
    Ok(())
}

/// Waits until the garbage collector follows owner references to Tenants.
///
/// It discovers new resource types on a timer (every 30 s), so right after
/// the CRD is installed it does not yet act on Tenant deletions at all,
/// which would let a deletion test pass without any race against it. A
/// ConfigMap owned by a Tenant that never existed is deleted once it does.
async fn wait_gc_follows_tenants(admin: &Client, probe: &str) -> Result<()> {
    let config_maps: Api<ConfigMap> = Api::namespaced(admin.clone(), "default");
    let orphan: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": probe, "ownerReferences": [{
            "apiVersion": "bulkhead.dev/v1alpha1", "kind": "Tenant",
            "name": probe, "uid": "00000000-0000-0000-0000-000000000000",
        }]},
    }))?;
    config_maps.create(&PostParams::default(), &orphan).await?;
    let started = Instant::now();
    wait_for(
        "the garbage collector to follow owner references to Tenants",
        GONE_TIMEOUT,
        || async { Ok(config_maps.get_opt(probe).await?.is_none().then_some(())) },
    )
    .await?;
    eprintln!(
        "garbage collector follows Tenants (waited {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Deletes a Retain Tenant in the background and checks that the namespace, the
/// platform's Secret and every child stay, released from the Tenant.
/// Returns the children as they stayed.
async fn delete_retained(
    cp: &ControlPlane,
    admin: &Client,
    id: &str,
) -> Result<(Tenant, Vec<LiveChild>)> {
    let mut tenant = example("minimal.yaml", id)?;
    tenant.spec.deletion_policy = DeletionPolicy::Retain;
    let live = apply_reconciled(cp, admin, &tenant).await?;
    let uid = live.uid().context("stored Tenant without uid")?;
    assert!(
        live.finalizers().iter().any(|f| f == RETAIN_FINALIZER),
        "{id}: {:?}",
        live.finalizers()
    );
    let ns = cp.tenant_namespace(id);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    let secret = secrets
        .create(&PostParams::default(), &platform_secret())
        .await?;
    let objects = cp.desired_children(&live)?;
    let before = live_children(admin, &objects).await?;
    assert!(missing(&before).is_empty(), "{:?}", missing(&before));

    wait_gc_follows_tenants(admin, &format!("{id}-gc-probe")).await?;
    let mark = cp.audit().mark()?;
    Api::<Tenant>::all(admin.clone())
        .delete(id, &DeleteParams::background())
        .await?;
    wait_tenant_gone(admin, id).await?;
    // Give the garbage collector time to cascade, should anything still
    // point at the Tenant; nothing may disappear meanwhile.
    let deadline = Instant::now() + SETTLE;
    while Instant::now() < deadline {
        let now = live_children(admin, &objects).await?;
        assert!(
            missing(&now).is_empty(),
            "{id}: deleted after the Tenant went: {:?}",
            missing(&now)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = live_children(admin, &objects).await?;
    for (name, object) in &after {
        let object = object.as_ref().context("checked above")?;
        let before_uid = before
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, o)| o.as_ref()?.metadata.uid.clone());
        assert_eq!(object.metadata.uid, before_uid, "{name} was recreated");
        assert!(
            object.metadata.deletion_timestamp.is_none(),
            "{name} is terminating"
        );
        let owners = object.owner_references();
        assert!(
            owners.iter().all(|o| o.uid != uid),
            "{name} still points at the deleted Tenant: {owners:?}"
        );
    }
    let kept = secrets.get("bulkhead-credentials").await?;
    assert_eq!(kept.metadata.uid, secret.metadata.uid);
    // The garbage collector deleted nothing there (not even to lose a race
    // that the checks above could not see, e.g. a child it deleted and the
    // operator recreated).
    let collected: Vec<String> = cp
        .audit()
        .since(mark)?
        .iter()
        .filter(|e| e.username() == GARBAGE_COLLECTOR && e.verb == "delete")
        .filter(|e| e.object().namespace == ns || e.object().name == ns)
        .map(|e| e.summary())
        .collect();
    assert!(collected.is_empty(), "{}", collected.join("\n"));
    Ok((live, after))
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn retain_keeps_the_namespace_and_a_new_tenant_of_the_same_name_does_not_adopt_it()
-> Result<()> {
    let cp = ControlPlane::shared();
    cp.install_bulkhead();
    let admin = cp.admin_client().await?;
    let id = "deletion-retain";
    let ns = cp.tenant_namespace(id);
    let (old, retained) = delete_retained(cp, &admin, id).await?;
    let old_uid = old.uid().context("uid")?;
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    let namespace = namespaces.get(&ns).await?;
    assert_eq!(
        namespace.annotations().get(TENANT_UID_ANNOTATION),
        Some(&old_uid)
    );
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    let secret_version = secrets
        .get("bulkhead-credentials")
        .await?
        .metadata
        .resource_version;

    // A new Tenant of the same name (the default policy, Delete).
    let mark = cp.audit().mark()?;
    cp.kubectl_apply(&example("minimal.yaml", id)?)?;
    let new = cp.wait_reconciled(&admin, id).await?;
    let new_uid = new.uid().context("uid")?;
    assert_ne!(new_uid, old_uid);
    let conditions = &new.status.as_ref().context("status")?.conditions;
    let reason_of = |type_: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    assert_eq!(
        reason_of("NamespaceReady"),
        Some(("False".to_owned(), "NamespaceConflict".to_owned())),
        "{conditions:?}"
    );
    assert_eq!(
        reason_of("Stalled"),
        Some(("True".to_owned(), "NamespaceConflict".to_owned())),
        "{conditions:?}"
    );
    // Nothing in the retained namespace changed, and the operator wrote
    // nothing there (counted in the API server's audit log).
    let objects = cp.desired_children(&old)?;
    let now = live_children(&admin, &objects).await?;
    assert_eq!(resource_versions(&now), resource_versions(&retained));
    assert_eq!(
        secrets
            .get("bulkhead-credentials")
            .await?
            .metadata
            .resource_version,
        secret_version
    );
    let writes = operator_writes_in(&cp.audit().since(mark)?, &ns);
    assert!(
        writes.is_empty(),
        "the operator wrote:\n{}",
        writes.join("\n")
    );

    // Not even a cluster-admin can hand the retained namespace to the new
    // Tenant by re-pointing its annotation: only the operator sets it.
    let repoint = namespaces
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {TENANT_UID_ANNOTATION: new_uid}}})),
        )
        .await;
    match repoint {
        Err(kube::Error::Api(status)) if status.message.contains(OWNERSHIP_GUARD) => {}
        other => panic!(
            "re-pointing {ns} to the new Tenant was not refused by {OWNERSHIP_GUARD}: {other:?}"
        ),
    }

    cp.delete_tenant(&admin, id).await?;
    wait_tenant_gone(&admin, id).await?;
    namespaces.delete(&ns, &DeleteParams::default()).await?;
    Ok(())
}

/// A foreground deletion makes the garbage collector delete every dependent
/// of the Tenant at once, racing the operator's release: without
/// `manifests/operator/retain-deletion-guard.yaml` it deleted seven of the
/// eight children in the retained namespace (the NetworkPolicy among them)
/// and left the Deployment running. So it is refused, and the Tenant and its
/// children stay until it is deleted in the background.
#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn a_retain_tenant_cannot_be_deleted_in_the_foreground() -> Result<()> {
    let cp = ControlPlane::shared();
    cp.install_bulkhead();
    let admin = cp.admin_client().await?;
    let id = "deletion-retain-fg";
    let mut tenant = example("minimal.yaml", id)?;
    tenant.spec.deletion_policy = DeletionPolicy::Retain;
    let live = apply_reconciled(cp, &admin, &tenant).await?;
    wait_gc_follows_tenants(&admin, &format!("{id}-gc-probe")).await?;
    let objects = cp.desired_children(&live)?;
    let before = live_children(&admin, &objects).await?;
    let tenants: Api<Tenant> = Api::all(admin.clone());
    // The API server loads new policies asynchronously: probe with dry runs.
    let dry_run_foreground = DeleteParams {
        dry_run: true,
        ..DeleteParams::foreground()
    };
    wait_for(
        "the Retain deletion guard to be enforced",
        RECONCILE_TIMEOUT,
        || async {
            Ok(match tenants.delete(id, &dry_run_foreground).await {
                Err(kube::Error::Api(status)) if status.message.contains(RETAIN_DELETION_GUARD) => {
                    Some(())
                }
                _ => None,
            })
        },
    )
    .await?;
    // `kubectl delete --cascade=foreground`, as Argo CD deletes.
    match tenants.delete(id, &DeleteParams::foreground()).await {
        Err(kube::Error::Api(status)) if status.message.contains(RETAIN_DELETION_GUARD) => {}
        other => panic!("a foreground deletion of {id} was not refused: {other:?}"),
    }
    let stored = tenants.get(id).await?;
    assert!(stored.metadata.deletion_timestamp.is_none());
    assert_eq!(
        resource_versions(&live_children(&admin, &objects).await?),
        resource_versions(&before)
    );
    // The orphan policy only removes owner references; it stays allowed
    // (dry run here: the background deletion below is the one to keep).
    tenants
        .delete(
            id,
            &DeleteParams {
                dry_run: true,
                ..DeleteParams::orphan()
            },
        )
        .await?;
    cp.delete_tenant(&admin, id).await?;
    wait_tenant_gone(&admin, id).await?;
    let after = live_children(&admin, &objects).await?;
    assert!(missing(&after).is_empty(), "{:?}", missing(&after));
    Api::<Namespace>::all(admin.clone())
        .delete(&cp.tenant_namespace(id), &DeleteParams::default())
        .await?;
    Ok(())
}
