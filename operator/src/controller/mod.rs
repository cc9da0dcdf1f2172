//! `bulkhead-operator run`: the controller that turns Tenants into running,
//! isolated MCP servers and keeps them that way.
//!
//! - [`reconcile`]: finalize, or converge through validate → build →
//!   check ownership → apply → prune → report; [`context`] is what every
//!   reconcile shares.
//! - [`children`]: the desired children applied and pruned as one unit;
//!   [`apply`] and [`drift`]: server-side apply that writes nothing when
//!   nothing drifted; [`foreign`]: fields someone else added where that
//!   widens access, found through `managedFields` and removed.
//! - [`status`]: conditions for `kubectl wait`, Argo CD and Flux.
//! - [`deletion`]: owner references for `Delete`, a finalizer for `Retain`.
//! - [`run`]: the process (logging, signals, leader election);
//!   [`leader`], [`admin`], [`metrics`]: running two replicas safely and
//!   being observable.

pub mod admin;
pub mod apply;
pub mod backoff;
pub mod children;
pub mod context;
pub mod deletion;
pub mod drift;
pub mod error;
pub mod foreign;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod run;
pub mod status;

use std::sync::Arc;

use anyhow::{Context as _, bail};
use bulkhead_crds::Tenant;
use futures::{Stream, StreamExt};
use kube::api::ListParams;
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::controller::Controller;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::desired::TenantObjects;
use crate::desired::children::{ChildKind, KindVisitor};
use crate::labels::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use admin::AdminState;
use context::Context;

pub use reconcile::{error_policy, reconcile};

/// Builds and runs the kube-runtime Controller until `stop` fires, letting
/// running reconciles finish.
pub(crate) async fn run_controller(
    ctx: Arc<Context>,
    admin: &AdminState,
    stop: CancellationToken,
    concurrency: u16,
) {
    let client = ctx.client.clone();
    // DeserializeGuard: one Tenant this version cannot parse is reported on
    // its own status instead of failing the list/watch of all Tenants.
    let tenants: Api<DeserializeGuard<Tenant>> = Api::all(client.clone());
    let controller = Controller::new(tenants, watcher::Config::default().any_semantic())
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency));
    admin.set_tenant_store(controller.store());
    watch_children(controller, &client)
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "controller event");
            }
        })
        .await;
}

/// The Tenants a child names as owners, as the Controller's queue keys them.
///
/// Tenants are cluster-scoped, so the key carries no namespace. kube-runtime's
/// `owns_stream` would key them with the child's namespace instead; those keys
/// differ from the Tenant watch's, so the runner would not merge them and
/// could reconcile one Tenant twice at the same time.
fn owning_tenants<K: Resource>(child: K) -> Vec<ObjectRef<DeserializeGuard<Tenant>>> {
    let group = Tenant::group(&());
    let kind = Tenant::kind(&());
    child
        .owner_references()
        .iter()
        .filter(|owner| {
            owner.kind == kind
                && owner
                    .api_version
                    .split_once('/')
                    .is_some_and(|(owner_group, _)| owner_group == group)
        })
        .map(|owner| ObjectRef::new(&owner.name))
        .collect()
}

/// The controller of Tenants (guarded, see [`run_controller`]).
type TenantController = Controller<DeserializeGuard<Tenant>>;

/// Adds a watch of every child kind to the Tenant controller.
fn watch_children(controller: TenantController, client: &Client) -> TenantController {
    type AddWatch = Box<dyn FnOnce(TenantController) -> TenantController>;
    struct Watches<'a> {
        client: &'a Client,
        add: Vec<AddWatch>,
    }
    impl KindVisitor for Watches<'_> {
        fn visit<K: ChildKind>(&mut self) {
            let triggers = child_triggers::<K>(self.client);
            self.add.push(Box::new(move |controller: TenantController| {
                controller.watches_stream(triggers, owning_tenants)
            }));
        }
    }
    let mut watches = Watches {
        client,
        add: Vec::new(),
    };
    TenantObjects::visit_kinds(&mut watches);
    watches
        .add
        .into_iter()
        .fold(controller, |controller, add| add(controller))
}

/// Watch of one child kind, used only to trigger reconciles of the owning
/// Tenant: metadata only (reconcile reads the object it compares), and only
/// objects labelled as Bulkhead's, so the operator neither transfers nor
/// holds anything else.
fn child_triggers<K: ChildKind>(
    client: &Client,
) -> impl Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static {
    let config =
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
    // `Api<PartialObjectMeta<K>>` makes the watch metadata-only.
    let api = Api::<PartialObjectMeta<K>>::all(client.clone());
    watcher(api, config).default_backoff().touched_objects()
}

/// Fails with installation instructions when the Tenant CRD is missing.
pub async fn check_crd_installed(client: &Client) -> anyhow::Result<()> {
    let tenants: Api<DeserializeGuard<Tenant>> = Api::all(client.clone());
    match tenants.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => bail!(
            "the Tenant CRD (tenants.bulkhead.dev) is not installed; install it with \
             `kubectl apply -f manifests/crds/tenant.yaml` (or the whole operator with `kubectl apply -k manifests/`)"
        ),
        Err(e) => Err(e).context("list Tenants to check that the CRD is installed"),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::api::ObjectMeta;

    use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};

    use super::*;

    fn owner(api_version: &str, kind: &str, name: &str) -> OwnerReference {
        OwnerReference {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
            name: name.to_owned(),
            uid: format!("uid-{name}"),
            controller: Some(true),
            ..OwnerReference::default()
        }
    }

    #[test]
    fn a_child_maps_to_its_tenant_without_a_namespace_and_ignores_other_owners() {
        let child = ServiceAccount {
            metadata: ObjectMeta {
                name: Some("bulkhead-server".into()),
                namespace: Some("bulkhead-acme".into()),
                owner_references: Some(vec![
                    owner("bulkhead.dev/v1alpha1", "Tenant", "acme"),
                    owner("apps/v1", "Deployment", "other"),
                    owner("example.com/v1", "Tenant", "lookalike"),
                    owner("v1", "Tenant", "core-lookalike"),
                ]),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        let refs = owning_tenants(child);
        assert_eq!(refs.len(), 1, "{refs:?}");
        assert_eq!(refs[0].name, "acme");
        assert_eq!(refs[0].namespace, None);
        // The key the Tenant watch itself produces, so the runner dedupes.
        assert_eq!(refs[0], ObjectRef::<DeserializeGuard<Tenant>>::new("acme"));
    }

    #[test]
    fn a_child_without_a_tenant_owner_triggers_nothing() {
        let child = Namespace {
            metadata: ObjectMeta {
                name: Some("bulkhead-acme".into()),
                owner_references: Some(vec![owner("apps/v1", "ReplicaSet", "x")]),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        assert!(owning_tenants(child).is_empty());
        assert!(owning_tenants(ConfigMap::default()).is_empty());
    }
}
