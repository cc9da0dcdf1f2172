//! The children of one Tenant handled as one unit, in the manner of
//! operator-rs' `ClusterResources`: [`TenantChildren::apply`] applies the
//! desired set in order, and [`TenantChildren::prune`] then deletes what
//! the Tenant owns but the desired set no longer names. Both walk the
//! desired set through [`TenantObjects::visit`], the one list of kinds.

use std::any::Any;

use futures::future::BoxFuture;
use kube::api::DeleteParams;
use kube::{Client, ResourceExt};

use super::apply::{
    child_name, ensure_child, is_owned_by, list_labelled, read_child, tenant_selector,
};
use super::error::{Error, Result};
use crate::desired::TenantObjects;
use crate::desired::children::{ChildKind, ChildScope, ChildVisitor, child_api, kind_of};

/// Live objects the API server returned, at most one per kind (each kind
/// has exactly one object per Tenant).
#[derive(Default)]
pub struct LiveObjects(Vec<Recorded>);

/// An `Option<K>` for some child kind `K`.
type Recorded = Box<dyn Any + Send + Sync>;

impl LiveObjects {
    /// Records the result of reading or applying a `K`; `None` records that
    /// it does not exist.
    pub fn insert<K: ChildKind>(&mut self, object: Option<K>) {
        self.0.push(Box::new(object));
    }

    /// The live `K`, if one was recorded and exists.
    pub fn get<K: ChildKind>(&self) -> Option<&K> {
        self.0
            .iter()
            .find_map(|o| o.downcast_ref::<Option<K>>())
            .and_then(Option::as_ref)
    }

    /// Removes and returns what was recorded for `K`: `Some(None)` when it
    /// is known not to exist, `None` when nothing was recorded.
    fn take<K: ChildKind>(&mut self) -> Option<Option<K>> {
        let index = self.0.iter().position(|o| o.is::<Option<K>>())?;
        self.0
            .swap_remove(index)
            .downcast::<Option<K>>()
            .ok()
            .map(|b| *b)
    }
}

/// What [`TenantChildren::apply`] did.
pub struct Applied {
    /// `kind/name` of every child that was written (missing or drifted).
    pub written: Vec<String>,
    /// Every child as the API server holds it now.
    pub live: LiveObjects,
}

/// The children of one Tenant in its namespace.
pub struct TenantChildren<'a> {
    client: &'a Client,
    namespace: &'a str,
    tenant_id: &'a str,
    tenant_uid: &'a str,
}

/// One step of a walk, run after the walk in the order it was made.
pub(crate) type Step<'a, T> = BoxFuture<'a, Result<T>>;

/// Runs `steps` one after the other, stopping at the first error.
pub(crate) async fn run_in_order<T>(steps: Vec<Step<'_, T>>) -> Result<Vec<T>> {
    let mut results = Vec::with_capacity(steps.len());
    for step in steps {
        results.push(step.await?);
    }
    Ok(results)
}

impl<'a> TenantChildren<'a> {
    /// The children of Tenant `tenant_id` (UID `tenant_uid`) in `namespace`.
    pub fn new(
        client: &'a Client,
        namespace: &'a str,
        tenant_id: &'a str,
        tenant_uid: &'a str,
    ) -> Self {
        Self {
            client,
            namespace,
            tenant_id,
            tenant_uid,
        }
    }

    /// The tenant namespace.
    pub fn namespace(&self) -> &str {
        self.namespace
    }

    /// Applies every desired child in apply order, each only when missing or
    /// drifted (see [`ensure_child`]). Objects in `known` were read just
    /// before (the namespace, for the adoption check) and are not read again.
    pub async fn apply(&self, desired: &TenantObjects, known: LiveObjects) -> Result<Applied> {
        struct Apply<'a> {
            children: &'a TenantChildren<'a>,
            known: LiveObjects,
            steps: Vec<Step<'a, (Option<String>, Recorded)>>,
        }
        impl<'a> ChildVisitor<'a> for Apply<'a> {
            fn visit<K: ChildKind>(&mut self, desired: &'a K) {
                let known = self.known.take::<K>();
                let (client, namespace) = (self.children.client, self.children.namespace);
                self.steps.push(Box::pin(async move {
                    let api = child_api::<K>(client, namespace);
                    let live = match known {
                        Some(live) => live,
                        None => read_child(&api, &child_name(desired)?).await?,
                    };
                    let ensured = ensure_child(&api, desired, live).await?;
                    let written = ensured
                        .written
                        .then(|| format!("{}/{}", kind_of::<K>(), ensured.object.name_any()));
                    let live: Recorded = Box::new(Some(ensured.object));
                    Ok((written, live))
                }));
            }
        }
        let mut walk = Apply {
            children: self,
            known,
            steps: Vec::new(),
        };
        desired.visit(&mut walk);
        let mut applied = Applied {
            written: Vec::new(),
            live: LiveObjects::default(),
        };
        for (written, live) in run_in_order(walk.steps).await? {
            applied.written.extend(written);
            applied.live.0.push(live);
        }
        Ok(applied)
    }

    /// Deletes this Tenant's namespaced children that `desired` does not
    /// name.
    ///
    /// Only objects carrying both Bulkhead labels for this tenant AND
    /// belonging to this Tenant's UID are candidates, so an object someone
    /// else created (even one with copied labels) is never deleted. Kinds
    /// are swept in reverse apply order: the server goes before its policy
    /// and RBAC. Returns `kind/name` of every deleted object.
    pub async fn prune(&self, desired: &TenantObjects) -> Result<Vec<String>> {
        struct Prune<'a> {
            children: &'a TenantChildren<'a>,
            selector: &'a str,
            steps: Vec<Step<'a, Vec<String>>>,
        }
        impl<'a> ChildVisitor<'a> for Prune<'a> {
            fn visit<K: ChildKind>(&mut self, desired: &'a K) {
                if <K::Scope as ChildScope>::CLUSTER_WIDE {
                    return;
                }
                let (children, selector) = (self.children, self.selector);
                self.steps.push(Box::pin(children.sweep(desired, selector)));
            }
        }
        let selector = tenant_selector(self.tenant_id);
        let mut walk = Prune {
            children: self,
            selector: &selector,
            steps: Vec::new(),
        };
        desired.visit(&mut walk);
        walk.steps.reverse();
        Ok(run_in_order(walk.steps).await?.concat())
    }

    /// Deletes the children of kind `K` other than `wanted`.
    async fn sweep<K: ChildKind>(&self, wanted: &K, selector: &str) -> Result<Vec<String>> {
        let namespace = self.namespace;
        let api = child_api::<K>(self.client, namespace);
        let kind = kind_of::<K>();
        let live = list_labelled(&api, selector, &format!("in {namespace}")).await?;
        let mut deleted = Vec::new();
        for object in live {
            let name = object.name_any();
            if name == wanted.name_any()
                || !is_owned_by(&object, self.tenant_uid)
                || !has_tenant_labels(&object, selector)
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
        Ok(deleted)
    }
}

/// Re-checks the selector's labels on the object itself, so a server (or
/// test double) that ignored the selector can never widen what is deleted.
fn has_tenant_labels(object: &impl kube::Resource, selector: &str) -> bool {
    let labels = object.labels();
    selector.split(',').all(|requirement| {
        requirement
            .split_once('=')
            .is_some_and(|(key, value)| labels.get(key).is_some_and(|v| v == value))
    })
}
