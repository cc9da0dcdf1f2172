//! Applying one child with server-side apply, skipping it when already in
//! place, and deciding whether an object belongs to a Tenant.
//!
//! Every apply uses one field manager ([`FIELD_MANAGER`]) with `force`, so
//! the operator owns exactly the fields it sets and wins conflicts over
//! hand edits of those fields (which is what healing means). Fields someone
//! else added to a child's guarded parts are removed by a JSON patch under
//! the same field manager (see [`super::foreign`]).

use std::collections::BTreeSet;
use std::fmt::Debug;

use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::drift::is_semantic_subset;
use super::error::{Error, Result};
use super::foreign::{foreign_fields, guarded_fields, removal_patch, sets_any};
use crate::desired::children::kind_of;
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

/// Applies `desired` unless `live` already carries every desired field,
/// was last applied from this very `desired`, and holds no field someone
/// else added to its guarded parts; then removes such added fields.
///
/// `live` is the object as read just before (None when absent). A missing
/// or drifted child is applied as a whole, so a hand edit of any field the
/// operator sets is reverted. The subset check alone cannot see a field the
/// spec no longer wants (say a removed `runtimeClassName`): the live object
/// still has it, so nothing looks missing. So every applied object carries
/// a digest of what was applied ([`APPLIED_DIGEST_ANNOTATION`]); a different
/// digest means the desired object changed and is applied, and server-side
/// apply then drops the fields this field manager no longer sets.
///
/// Nor can it see a field added next to the desired ones (`hostNetwork`,
/// a port's `endPort`): in the parts of a child where that widens access
/// ([`guarded_fields`]), `metadata.managedFields` names such fields (see
/// [`super::foreign`]). A foreign field the operator also sets is taken
/// back by the forced apply; one it never sets is then removed by a JSON
/// patch guarded by the live `resourceVersion`. Fields outside the guarded
/// parts (defaults, annotations and status other controllers write) never
/// cause a write.
pub async fn ensure_child<K>(api: &Api<K>, desired: &K, live: Option<K>) -> Result<Ensured<K>>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    let name = child_name(desired)?;
    let kind = kind_of::<K>();
    let guarded = guarded_fields(&kind);
    let desired_json = to_json(desired, &name)?;
    let digest = applied_digest(&desired_json);
    let in_place = match live {
        Some(live) => {
            let live_json = to_json(&live, &name)?;
            let same_digest = live.annotations().get(APPLIED_DIGEST_ANNOTATION) == Some(&digest);
            let foreign = foreign_fields(&live_json, FIELD_MANAGER, guarded);
            let current = same_digest
                && is_semantic_subset(&desired_json, &live_json)
                && tenant_owners(desired) == tenant_owners(&live)
                && !sets_any(&desired_json, &foreign);
            current.then_some((live, live_json, foreign))
        }
        None => None,
    };
    let (object, object_json, foreign, applied) = match in_place {
        Some((live, live_json, foreign)) => (live, live_json, foreign, false),
        None => {
            let mut applied = desired.clone();
            applied
                .annotations_mut()
                .insert(APPLIED_DIGEST_ANNOTATION.to_owned(), digest);
            let params = PatchParams::apply(FIELD_MANAGER).force();
            let object = api
                .patch(&name, &params, &Patch::Apply(&applied))
                .await
                .map_err(|e| Error::kube(format!("apply {kind} {name}"), e))?;
            let object_json = to_json(&object, &name)?;
            let foreign = foreign_fields(&object_json, FIELD_MANAGER, guarded);
            (object, object_json, foreign, true)
        }
    };
    let Some(removal) = removal_patch(&object_json, &desired_json, &foreign) else {
        return Ok(Ensured {
            object,
            written: applied,
        });
    };
    let added: Vec<String> = foreign.iter().map(ToString::to_string).collect();
    tracing::info!(%kind, %name, fields = ?added, "removing fields added by another field manager");
    // `Patch::Json` takes the `json_patch` crate's type; it deserialises
    // from the RFC 6902 array built above.
    let patch = serde_json::from_value(removal).map_err(|source| Error::Serialize {
        what: format!("removal patch for {kind} {name}"),
        source,
    })?;
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    match api.patch(&name, &params, &Patch::Json::<()>(patch)).await {
        Ok(object) => Ok(Ensured {
            object,
            written: true,
        }),
        // A patch that cannot be applied (its `test` of the resourceVersion
        // failed) and a resulting object the API server refuses both come
        // back as 422 Invalid; only the first means "read again and retry".
        Err(kube::Error::Api(status)) if status.code == 422 && changed(api, &object).await? => {
            Err(Error::ChangedDuringRemoval {
                what: format!("{kind} {name}"),
            })
        }
        Err(e) => Err(Error::kube(
            format!("remove added fields of {kind} {name}"),
            e,
        )),
    }
}

/// Whether the live `object` has a newer resourceVersion than `seen`.
async fn changed<K>(api: &Api<K>, seen: &K) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let name = seen.name_any();
    let live = read_child(api, &name).await?;
    Ok(live.and_then(|l| l.resource_version()) != seen.resource_version())
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

/// Lists the objects of kind `K` that carry the labels of `selector`;
/// `purpose` ends the error message (`list Deployment <purpose> failed`).
pub async fn list_labelled<K>(api: &Api<K>, selector: &str, purpose: &str) -> Result<Vec<K>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    api.list(&ListParams::default().labels(selector))
        .await
        .map(|list| list.items)
        .map_err(|e| Error::kube(format!("list {} {purpose}", kind_of::<K>()), e))
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

/// The name of a child the builders made; every builder names its object.
pub fn child_name<K: Resource<DynamicType = ()>>(object: &K) -> Result<String> {
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
