//! `bulkhead-operator run` as a process: logging, the signals that stop it,
//! the admin server, and the leader election around the controller.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use kube::Client;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::admin::{self, AdminState};
use super::context::Context;
use super::leader::{LeaderElector, LeaseSettings};
use super::metrics::Metrics;
use super::{check_crd_installed, run_controller};
use crate::settings::OperatorSettings;

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

/// Whether this replica may reconcile.
enum Leadership {
    /// Leader election is off: this replica reconciles alone.
    Unelected,
    /// This replica holds the lease.
    Won {
        /// Keeps and finally releases the lease.
        elector: Arc<LeaderElector>,
        /// Start of the attempt that won; renewals count from it.
        won_at: Instant,
    },
    /// Shutdown was requested before the lease was won.
    ShutDownFirst,
}

/// [`run`] on a new multi-threaded runtime; the error is a message for a
/// person.
pub fn run_blocking(settings: OperatorSettings, options: RunOptions) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime
        .block_on(run(settings, options))
        .map_err(|e| format!("{e:#}"))
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
    let leadership = elect(&client, &opts, &settings, &identity, &shutdown).await;
    let ctx = Arc::new(Context::new(client, settings, metrics, Some(identity)));
    let leading = Leading {
        shutdown: &shutdown,
        lost: &lost,
    };
    leading
        .reconcile(leadership, ctx, &admin_state, opts.concurrency)
        .await;
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

/// Waits for the lease when leader election is on.
async fn elect(
    client: &Client,
    opts: &RunOptions,
    settings: &OperatorSettings,
    identity: &str,
    shutdown: &CancellationToken,
) -> Leadership {
    if !opts.leader_election {
        return Leadership::Unelected;
    }
    let elector = Arc::new(LeaderElector::new(
        client.clone(),
        LeaseSettings {
            name: opts.lease_name.clone(),
            namespace: opts
                .lease_namespace
                .clone()
                .unwrap_or_else(|| settings.operator_namespace.clone()),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(opts.lease_duration_seconds),
            renew_deadline: Duration::from_secs(opts.lease_renew_deadline_seconds),
            retry_period: Duration::from_secs(opts.lease_retry_period_seconds),
        },
    ));
    match elector.acquire(shutdown).await {
        Some(won_at) => Leadership::Won { elector, won_at },
        None => Leadership::ShutDownFirst,
    }
}

/// The two ends of leading: a requested shutdown and a lost lease.
struct Leading<'a> {
    shutdown: &'a CancellationToken,
    lost: &'a CancellationToken,
}

impl Leading<'_> {
    /// Runs the controller while this replica may reconcile, then gives the
    /// lease back unless it was lost.
    async fn reconcile(
        &self,
        leadership: Leadership,
        ctx: Arc<Context>,
        admin_state: &AdminState,
        concurrency: u16,
    ) {
        let (elector, keeper) = match leadership {
            Leadership::ShutDownFirst => return,
            Leadership::Unelected => (None, None),
            Leadership::Won { elector, won_at } => {
                let (shutdown, lost) = (self.shutdown.clone(), self.lost.clone());
                let keeping = elector.clone();
                let keeper = tokio::spawn(async move {
                    keeping.keep(&shutdown, &lost, won_at).await;
                });
                (Some(elector), Some(keeper))
            }
        };
        let stop = CancellationToken::new();
        let stop_on = {
            let (stop, shutdown, lost) = (stop.clone(), self.shutdown.clone(), self.lost.clone());
            async move {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = lost.cancelled() => {}
                }
                stop.cancel();
            }
        };
        tokio::spawn(stop_on);
        run_controller(ctx, admin_state, stop, concurrency).await;
        self.shutdown.cancel();
        if let Some(keeper) = keeper {
            let _finished = keeper.await;
        }
        if let Some(elector) = &elector
            && !self.lost.is_cancelled()
            && let Err(error) = elector.release().await
        {
            warn!(%error, "could not release the leader lease; it expires on its own");
        }
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
