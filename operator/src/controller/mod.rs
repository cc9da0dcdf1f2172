//! `bulkhead-operator run`: the controller that turns Tenants into running,
//! isolated MCP servers and keeps them that way.
//!
//! - [`reconcile`]: the pipeline validate → build → apply → prune → status.
//! - [`apply`] and [`drift`]: server-side apply that writes nothing when
//!   nothing drifted, and the label-based prune.
//! - [`status`]: conditions for `kubectl wait`, Argo CD and Flux.
//! - [`deletion`]: owner references for `Delete`, a finalizer for `Retain`.
//! - [`leader`], [`admin`], [`metrics`]: running two replicas safely and
//!   being observable.

pub mod admin;
pub mod apply;
pub mod backoff;
pub mod children;
pub mod context;
pub mod deletion;
pub mod drift;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
use tracing::{error, info, warn};

use crate::desired::TenantObjects;
use crate::desired::children::{ChildKind, KindVisitor};
use crate::labels::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::settings::OperatorSettings;
use admin::AdminState;
use context::Context;
use leader::{LeaderElector, LeaseSettings};
use metrics::Metrics;

pub use reconcile::{error_policy, reconcile};

/// Flags of `bulkhead-operator run` beyond the cluster facts in [`OperatorSettings`].
#[derive(Clone, Debug, clap::Args)]
pub struct RunOptions {
    /// Address of the admin server (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "BULKHEAD_ADMIN_ADDR", default_value = "0.0.0.0:8081")]
    pub admin_addr: SocketAddr,
    /// Elect a leader through a Lease so several replicas can run; turn off
    /// only for a single replica run by hand.
    #[arg(long, env = "BULKHEAD_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the leader election Lease.
    #[arg(long, env = "BULKHEAD_LEASE_NAME", default_value = "bulkhead-operator")]
    pub lease_name: String,
    /// Namespace of the leader election Lease; the operator namespace when unset.
    #[arg(long, env = "BULKHEAD_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// This replica's identity in the Lease and in Events (the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds a Lease stays valid without renewal.
    #[arg(long, env = "BULKHEAD_LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// Seconds the leader may fail to renew before it stops reconciling.
    #[arg(
        long,
        env = "BULKHEAD_LEASE_RENEW_DEADLINE_SECONDS",
        default_value_t = 10
    )]
    pub lease_renew_deadline_seconds: u64,
    /// Seconds between renewals (leader) and attempts (candidates).
    #[arg(long, env = "BULKHEAD_LEASE_RETRY_PERIOD_SECONDS", default_value_t = 2)]
    pub lease_retry_period_seconds: u64,
    /// Tenants reconciled at once (0: no limit).
    #[arg(long, env = "BULKHEAD_CONCURRENCY", default_value_t = 8)]
    pub concurrency: u16,
    /// Log format: `json` (one object per line) or `text`.
    #[arg(long, env = "BULKHEAD_LOG_FORMAT", default_value = "json", value_parser = ["json", "text"])]
    pub log_format: String,
}

/// Runs the controller until SIGTERM/SIGINT, or until leadership is lost
/// (then it returns an error so the pod restarts and rejoins the election).
pub async fn run(settings: OperatorSettings, opts: RunOptions) -> anyhow::Result<()> {
    init_logging(&opts.log_format);
    if opts.lease_renew_deadline_seconds >= opts.lease_duration_seconds {
        bail!("--lease-renew-deadline-seconds must be shorter than --lease-duration-seconds");
    }
    // rustls refuses to guess when more than one crypto backend is compiled
    // in (a test-only dependency brings aws-lc-rs into test builds), so pick
    // ring, the backend kube is configured with, before the first TLS use.
    // An error only means a provider is installed already.
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default()
        .await
        .context("connect to the Kubernetes API (in-cluster service account or KUBECONFIG)")?;
    check_crd_installed(&client).await?;

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    let metrics = Arc::new(Metrics::default());
    let admin_state = Arc::new(AdminState::new(metrics.clone()));
    let admin_task = tokio::spawn(admin::serve(
        opts.admin_addr,
        admin_state.clone(),
        shutdown.clone(),
    ));
    admin_state.set_ready(true);
    info!(admin = %opts.admin_addr, "operator started");

    let identity = opts
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("bulkhead-operator-{}", std::process::id()));
    let lost = CancellationToken::new();
    let elector = opts.leader_election.then(|| {
        LeaderElector::new(
            client.clone(),
            LeaseSettings {
                name: opts.lease_name.clone(),
                namespace: opts
                    .lease_namespace
                    .clone()
                    .unwrap_or_else(|| settings.operator_namespace.clone()),
                identity: identity.clone(),
                lease_duration: Duration::from_secs(opts.lease_duration_seconds),
                renew_deadline: Duration::from_secs(opts.lease_renew_deadline_seconds),
                retry_period: Duration::from_secs(opts.lease_retry_period_seconds),
            },
        )
    });
    let elector = elector.map(Arc::new);

    // Some when this replica may reconcile; inside it, with leader election
    // on, the start of the lease attempt that won (renewals count from it).
    let leading = match &elector {
        Some(elector) => elector.acquire(&shutdown).await.map(Some),
        None => Some(None),
    };
    if let Some(won_at) = leading {
        let keeper = elector.clone().zip(won_at).map(|(elector, won_at)| {
            let (shutdown, lost) = (shutdown.clone(), lost.clone());
            tokio::spawn(async move { elector.keep(&shutdown, &lost, won_at).await })
        });
        let stop = CancellationToken::new();
        let stop_on = {
            let (stop, shutdown, lost) = (stop.clone(), shutdown.clone(), lost.clone());
            async move {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = lost.cancelled() => {}
                }
                stop.cancel();
            }
        };
        tokio::spawn(stop_on);
        let ctx = Arc::new(Context::new(
            client.clone(),
            settings,
            metrics,
            Some(identity),
        ));
        run_controller(ctx, &admin_state, stop, opts.concurrency).await;
        shutdown.cancel();
        if let Some(keeper) = keeper {
            let _finished = keeper.await;
        }
        if let Some(elector) = &elector
            && !lost.is_cancelled()
            && let Err(error) = elector.release().await
        {
            warn!(%error, "could not release the leader lease; it expires on its own");
        }
    }
    shutdown.cancel();
    match admin_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error!(error = %e, "admin server failed"),
        Err(e) => error!(error = %e, "admin server task failed"),
    }
    if lost.is_cancelled() {
        bail!("lost the leader lease; exiting so that a restart rejoins the election");
    }
    info!("operator stopped");
    Ok(())
}

/// Builds and runs the kube-runtime Controller until `stop` fires, letting
/// running reconciles finish.
async fn run_controller(
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

async fn cancel_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the operator");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    info!("shutdown requested; finishing running reconciles");
    shutdown.cancel();
}

/// JSON logs (one object per line, spans included so every line of a
/// reconcile carries its `tenant`), filtered by `RUST_LOG` (default `info`).
fn init_logging(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // Another subcommand or a test may have installed a subscriber already.
    let _already_installed = if format == "json" {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
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
