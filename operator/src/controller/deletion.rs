//! What happens when a Tenant is deleted.
//!
//! **Delete** (the default) relies on owner references alone: every child,
//! the Namespace included, names the Tenant as its controlling owner, so
//! Kubernetes' garbage collector removes the namespace (and with it
//! everything inside) once the Tenant is gone. No finalizer is involved, so
//! deleting a Tenant works even while the operator is down or uninstalled,
//! and a Tenant can never get stuck in `Terminating` because of Bulkhead.
//!
//! **Retain** needs the operator to act before the Tenant disappears, so
//! only Retain Tenants carry the [`RETAIN_FINALIZER`]. When such a Tenant is
//! deleted, the controller removes this Tenant's owner references from every
//! child (the garbage collector then has nothing to collect) and only then
//! drops the finalizer. The namespace and its contents stay, keeping their
//! Bulkhead labels so people can find them; a new Tenant of the same name
//! will not adopt them (its UID differs), it reports a namespace conflict.
//! Switching a live Tenant from Retain to Delete removes the finalizer again;
//! if the Tenant is deleted before that happened, the finalizer is dropped
//! without releasing anything, so the policy in force at deletion wins.

use std::fmt::Debug;

use bulkhead_crds::Tenant;
use bulkhead_crds::tenant::DeletionPolicy;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::apply::{is_owned_by, list_labelled, tenant_selector};
use super::children::{Step, run_in_order};
use super::error::{Error, Result};
use crate::desired::TenantObjects;
use crate::desired::children::{ChildKind, KindVisitor, child_api, kind_of};
use crate::labels::FIELD_MANAGER;

/// Finalizer that holds a `deletionPolicy: Retain` Tenant until its children
/// are released from it.
pub const RETAIN_FINALIZER: &str = "bulkhead.dev/retain-namespace";

/// Whether the Tenant carries the [`RETAIN_FINALIZER`].
pub fn has_retain_finalizer(tenant: &Tenant) -> bool {
    tenant.finalizers().iter().any(|f| f == RETAIN_FINALIZER)
}

/// Adds or removes the finalizer to match `deletionPolicy`.
///
/// Returns the Tenant as stored after the change, or `None` when nothing
/// had to change.
pub async fn sync_finalizer(api: &Api<Tenant>, tenant: &Tenant) -> Result<Option<Tenant>> {
    let wanted = tenant.spec.deletion_policy == DeletionPolicy::Retain;
    if wanted == has_retain_finalizer(tenant) {
        return Ok(None);
    }
    let mut finalizers: Vec<String> = tenant
        .finalizers()
        .iter()
        .filter(|f| *f != RETAIN_FINALIZER)
        .cloned()
        .collect();
    if wanted {
        finalizers.push(RETAIN_FINALIZER.to_owned());
    }
    patch_finalizers(api, tenant, finalizers).await.map(Some)
}

/// Releases every child of a deleted Retain Tenant, then removes the
/// finalizer so the Tenant can go.
///
/// Returns the `kind/name` of every child that was released.
pub async fn release_children(
    client: &Client,
    tenant: &Tenant,
    tenant_namespace: &str,
) -> Result<Vec<String>> {
    struct Release<'a> {
        client: &'a Client,
        namespace: &'a str,
        selector: &'a str,
        tenant_uid: &'a str,
        steps: Vec<Step<'a, Vec<String>>>,
    }
    impl KindVisitor for Release<'_> {
        fn visit<K: ChildKind>(&mut self) {
            let api = child_api::<K>(self.client, self.namespace);
            let (selector, tenant_uid) = (self.selector, self.tenant_uid);
            self.steps.push(Box::pin(async move {
                release_in(&api, selector, tenant_uid).await
            }));
        }
    }
    let id = tenant.name_any();
    let uid = tenant.uid().unwrap_or_default();
    let selector = tenant_selector(&id);
    let mut walk = Release {
        client,
        namespace: tenant_namespace,
        selector: &selector,
        tenant_uid: &uid,
        steps: Vec::new(),
    };
    TenantObjects::visit_kinds(&mut walk);
    let released = run_in_order(walk.steps).await?.concat();
    drop_retain_finalizer(client, tenant).await?;
    Ok(released)
}

/// Gives the tenant namespace back its ownerReference to `tenant`, if it
/// carries the Tenant's UID annotation but no such reference (the namespace
/// of a Retain Tenant). Used when a Tenant switched to Delete is deleted
/// before the operator applied the switch: once the Tenant is gone, the
/// garbage collector removes the namespace as the policy in force asks.
pub async fn reclaim_namespace(client: &Client, tenant: &Tenant, namespace: &str) -> Result<()> {
    let uid = tenant.uid().unwrap_or_default();
    let Some(owner) = tenant.controller_owner_ref(&()) else {
        return Ok(());
    };
    let api: Api<Namespace> = Api::all(client.clone());
    let Some(live) = api
        .get_opt(namespace)
        .await
        .map_err(|e| Error::kube(format!("read Namespace {namespace}"), e))?
    else {
        return Ok(());
    };
    // Only a namespace that belongs to this Tenant by its annotation alone.
    if !is_owned_by(&live, &uid) || live.owner_references().iter().any(|o| o.uid == uid) {
        return Ok(());
    }
    let mut owners = live.owner_references().to_vec();
    owners.push(OwnerReference {
        block_owner_deletion: Some(true),
        ..owner
    });
    set_owner_references(&api, &live, &owners)
        .await
        .map_err(|e| Error::kube(format!("hand Namespace {namespace} back to its Tenant"), e))
}

/// Replaces `object`'s owner references. The resourceVersion makes the patch
/// fail instead of overwriting owner references someone else changed
/// meanwhile; the retry re-reads.
async fn set_owner_references<K>(
    api: &Api<K>,
    object: &K,
    owners: &[OwnerReference],
) -> kube::Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let patch = json!({
        "metadata": {
            "resourceVersion": object.resource_version(),
            "ownerReferences": if owners.is_empty() { serde_json::Value::Null } else { json!(owners) },
        }
    });
    api.patch(&object.name_any(), &merge_params(), &Patch::Merge(&patch))
        .await
        .map(drop)
}

/// Removes the [`RETAIN_FINALIZER`] from a Tenant being deleted, leaving its
/// children's owner references alone.
///
/// Used on its own when the policy was switched to Delete after the
/// finalizer was added: the garbage collector then removes the children.
pub async fn drop_retain_finalizer(client: &Client, tenant: &Tenant) -> Result<()> {
    let remaining = tenant
        .finalizers()
        .iter()
        .filter(|f| *f != RETAIN_FINALIZER)
        .cloned()
        .collect();
    let api: Api<Tenant> = Api::all(client.clone());
    match patch_finalizers(&api, tenant, remaining).await {
        // Not found: removing the last finalizer completed the deletion.
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes this Tenant's owner reference from every labelled object of one kind.
async fn release_in<K: ChildKind>(
    api: &Api<K>,
    selector: &str,
    tenant_uid: &str,
) -> Result<Vec<String>> {
    let kind = kind_of::<K>();
    let objects = list_labelled(api, selector, "to release").await?;
    let mut released = Vec::new();
    for object in objects.iter().filter(|o| is_owned_by(*o, tenant_uid)) {
        let name = object.name_any();
        let remaining: Vec<_> = object
            .owner_references()
            .iter()
            .filter(|owner| owner.uid != tenant_uid)
            .cloned()
            .collect();
        set_owner_references(api, object, &remaining)
            .await
            .map_err(|e| Error::kube(format!("release {kind} {name} from its Tenant"), e))?;
        released.push(format!("{kind}/{name}"));
    }
    Ok(released)
}

async fn patch_finalizers(
    api: &Api<Tenant>,
    tenant: &Tenant,
    finalizers: Vec<String>,
) -> Result<Tenant> {
    let name = tenant.name_any();
    let patch = json!({
        "metadata": {
            "resourceVersion": tenant.resource_version(),
            "finalizers": finalizers,
        }
    });
    api.patch(&name, &merge_params(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::kube(format!("update finalizers of Tenant {name}"), e))
}

fn merge_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}
