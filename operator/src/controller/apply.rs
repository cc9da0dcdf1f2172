//! Applying children with server-side apply, skipping those already in
//! place, and pruning the ones the spec no longer wants.
//!
//! Every write uses one field manager ([`FIELD_MANAGER`]) with `force`, so
//! the operator owns exactly the fields it sets and wins conflicts over
//! hand edits of those fields (which is what healing means).

use std::collections::BTreeSet;
use std::fmt::Debug;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, LimitRange, ResourceQuota, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::drift::is_semantic_subset;
use super::error::{Error, Result};
use crate::labels::{
    FIELD_MANAGER, MANAGED_BY_LABEL, MANAGED_BY_VALUE, TENANT_LABEL, TENANT_UID_ANNOTATION,
};

/// A child object after [`ensure_child`]: the live state and whether it was written.
#[derive(Debug)]
pub struct Ensured<K> {
    /// The object as the API server holds it now.
    pub object: K,
    /// True when the object was missing or drifted and had to be applied.
    pub written: bool,
}

/// Kind name of a child type, for messages and errors.
pub fn kind_of<K: Resource<DynamicType = ()>>() -> String {
    K::kind(&()).into_owned()
}

/// Kind name of a child object.
pub fn kind_of_val<K: Resource<DynamicType = ()>>(_object: &K) -> String {
    kind_of::<K>()
}

/// Applies `desired` unless `live` already carries every desired field and
/// was last applied from this very `desired`.
///
/// `live` is the object as read just before (None when absent). A missing
/// or drifted child is applied as a whole, so a hand edit of any field the
/// operator sets is reverted while fields it does not set are left alone.
/// The subset check alone cannot see a field the spec no longer wants (say
/// a removed `runtimeClassName`): the live object still has it, so nothing
/// looks missing. So every applied object carries a digest of what was
/// applied ([`APPLIED_DIGEST_ANNOTATION`]); a different digest means the
/// desired object changed and is applied, and server-side apply then drops
/// the fields this field manager no longer sets.
pub async fn ensure_child<K>(api: &Api<K>, desired: &K, live: Option<K>) -> Result<Ensured<K>>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    let name = child_name(desired)?;
    let desired_json = to_json(desired, &name)?;
    let digest = applied_digest(&desired_json);
    if let Some(live) = live {
        let live_json = to_json(&live, &name)?;
        let same_digest = live.annotations().get(APPLIED_DIGEST_ANNOTATION) == Some(&digest);
        if same_digest
            && is_semantic_subset(&desired_json, &live_json)
            && tenant_owners(desired) == tenant_owners(&live)
        {
            return Ok(Ensured {
                object: live,
                written: false,
            });
        }
    }
    let mut applied = desired.clone();
    applied
        .annotations_mut()
        .insert(APPLIED_DIGEST_ANNOTATION.to_owned(), digest);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let object = api
        .patch(&name, &params, &Patch::Apply(&applied))
        .await
        .map_err(|e| Error::kube(format!("apply {} {name}", kind_of::<K>()), e))?;
    Ok(Ensured {
        object,
        written: true,
    })
}

/// Annotation on every applied child: the SHA-256 of the object as the
/// operator built it, before this annotation was added.
pub const APPLIED_DIGEST_ANNOTATION: &str = "bulkhead.dev/applied-digest";

fn applied_digest(desired: &serde_json::Value) -> String {
    // The same built object always serialises to the same bytes (struct
    // fields in declaration order, maps sorted), so equal objects agree.
    let bytes = serde_json::to_vec(desired).unwrap_or_default();
    hex::encode(Sha256::digest(bytes))
}

/// Reads a child by name; `None` when it does not exist.
pub async fn read_child<K>(api: &Api<K>, name: &str) -> Result<Option<K>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    api.get_opt(name)
        .await
        .map_err(|e| Error::kube(format!("read {} {name}", kind_of::<K>()), e))
}

/// Reads the child named like `desired` and applies it if needed.
pub async fn read_and_ensure<K>(api: &Api<K>, desired: &K) -> Result<Ensured<K>>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    let live = read_child(api, &child_name(desired)?).await?;
    ensure_child(api, desired, live).await
}

/// Whether `object` belongs to the Tenant with `tenant_uid`: it names the
/// Tenant among its owners, or (a retained Namespace, which has no owner)
/// carries the Tenant's UID annotation.
///
/// The owner reference must be one to a `bulkhead.dev` Tenant: a reference
/// of another kind that merely carries the Tenant's UID proves nothing, and
/// only references to Tenants are reserved to the operator on Namespaces
/// (`manifests/operator/namespace-ownership-guard.yaml`).
pub fn is_owned_by(object: &impl Resource, tenant_uid: &str) -> bool {
    tenant_owners(object).contains(tenant_uid)
        || object
            .annotations()
            .get(TENANT_UID_ANNOTATION)
            .is_some_and(|uid| uid == tenant_uid)
}

/// UIDs of the Tenants an object names as owners. Compared exactly, not as
/// a subset: a Namespace that must lose its ownerReference (the Tenant
/// switched to `Retain`) is drift even though nothing desired is missing.
fn tenant_owners(object: &impl Resource) -> BTreeSet<&str> {
    object
        .owner_references()
        .iter()
        .filter(|owner| owner.kind == "Tenant" && owner.api_version.starts_with("bulkhead.dev/"))
        .map(|owner| owner.uid.as_str())
        .collect()
}

/// Label selector of every child of one tenant.
pub fn tenant_selector(tenant_id: &str) -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},{TENANT_LABEL}={tenant_id}")
}

/// Names of the children one reconcile wants, by kind.
#[derive(Debug, Default)]
pub struct WantedNames {
    /// `(kind, name)` of every namespaced child the spec wants.
    pub names: BTreeSet<(String, String)>,
}

impl WantedNames {
    /// Records that the spec wants `object`.
    pub fn insert<K: Resource<DynamicType = ()>>(&mut self, object: &K) {
        self.names.insert((kind_of::<K>(), object.name_any()));
    }

    fn wants<K: Resource<DynamicType = ()>>(&self, name: &str) -> bool {
        self.names.contains(&(kind_of::<K>(), name.to_owned()))
    }
}

/// Deletes this tenant's children the spec no longer wants, in `namespace`.
///
/// Only objects carrying both Bulkhead labels for this tenant AND an owner
/// reference to this Tenant's UID are candidates, so an object someone else
/// created (even one with copied labels) is never deleted. Kinds are swept
/// in reverse apply order: the server goes before its policy and RBAC.
/// Returns `kind/name` of every deleted object.
pub async fn prune(
    client: &Client,
    namespace: &str,
    tenant_id: &str,
    tenant_uid: &str,
    wanted: &WantedNames,
) -> Result<Vec<String>> {
    let sweep = Sweep {
        client,
        namespace,
        selector: tenant_selector(tenant_id),
        tenant_uid,
        wanted,
    };
    let mut deleted = Vec::new();
    sweep.kind::<Deployment>(&mut deleted).await?;
    sweep.kind::<Service>(&mut deleted).await?;
    sweep.kind::<ConfigMap>(&mut deleted).await?;
    sweep.kind::<LimitRange>(&mut deleted).await?;
    sweep.kind::<ResourceQuota>(&mut deleted).await?;
    sweep.kind::<NetworkPolicy>(&mut deleted).await?;
    sweep.kind::<RoleBinding>(&mut deleted).await?;
    sweep.kind::<ServiceAccount>(&mut deleted).await?;
    Ok(deleted)
}

/// One prune pass over one tenant namespace.
struct Sweep<'a> {
    client: &'a Client,
    namespace: &'a str,
    selector: String,
    tenant_uid: &'a str,
    wanted: &'a WantedNames,
}

impl Sweep<'_> {
    /// Deletes the unwanted children of kind `K`, recording `kind/name`.
    async fn kind<K>(&self, deleted: &mut Vec<String>) -> Result<()>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug,
    {
        let namespace = self.namespace;
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        let kind = kind_of::<K>();
        let live = api
            .list(&ListParams::default().labels(&self.selector))
            .await
            .map_err(|e| Error::kube(format!("list {kind} in {namespace}"), e))?;
        for object in live.items {
            let name = object.name_any();
            if self.wanted.wants::<K>(&name)
                || !is_owned_by(&object, self.tenant_uid)
                || !has_tenant_labels(&object, &self.selector)
            {
                continue;
            }
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => deleted.push(format!("{kind}/{name}")),
                // Already gone: the goal is reached.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => {
                    return Err(Error::kube(format!("delete {kind} {namespace}/{name}"), e));
                }
            }
        }
        Ok(())
    }
}

/// Re-checks the selector's labels on the object itself, so a server (or
/// test double) that ignored the selector can never widen what is deleted.
fn has_tenant_labels(object: &impl Resource, selector: &str) -> bool {
    let labels = object.labels();
    selector.split(',').all(|requirement| {
        requirement
            .split_once('=')
            .is_some_and(|(key, value)| labels.get(key).is_some_and(|v| v == value))
    })
}

fn child_name<K: Resource<DynamicType = ()>>(object: &K) -> Result<String> {
    object
        .meta()
        .name
        .clone()
        .ok_or_else(|| Error::UnnamedChild {
            kind: kind_of::<K>(),
        })
}

fn to_json<K: Serialize>(object: &K, name: &str) -> Result<serde_json::Value> {
    serde_json::to_value(object).map_err(|source| Error::Serialize {
        what: name.to_owned(),
        source,
    })
}
