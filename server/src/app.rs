//! The server as a library: [`Server::new`] wires configuration, secret
//! sources, limits, tools and audit; [`Server::router`] is the MCP router;
//! [`Server::run`] binds, serves and drains on shutdown.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bulkhead_crds::server_config::{SecretSource, ServerConfig};
use rmcp::transport::streamable_http_server::StreamableHttpServerConfig;
use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::access::AccessPolicy;
use crate::admin::{AdminState, Readiness};
use crate::api_keys::ApiKeyStore;
use crate::audit::{AuditLog, AuditWriter};
use crate::authentication::Authenticator;
use crate::cli::ServeOptions;
use crate::config::{self, ConfigError};
use crate::connections::{self, ConnectionLimits};
use crate::connectors::upstream::{UpstreamSetupError, install_crypto_provider};
use crate::credentials::{
    CredentialProvider, CredentialStore, SourceCredentialProvider, WatchedCredentialProvider,
};
use crate::handler::TenantServer;
use crate::identity::TenantId;
use crate::in_flight::InFlightLimit;
use crate::metrics::Metrics;
use crate::oauth::{OAuthSetupError, ResourceServer};
use crate::origin_policy::OriginPolicy;
use crate::rate_limit::RateLimits;
use crate::response_cache::ResponseCache;
use crate::secret_source::SecretLocation;
use crate::tools::{ToolCatalog, ToolServices};
use crate::transport::{self, McpEndpoint, McpService};

/// Entries the response cache holds at most (each at most
/// [`crate::tools::MAX_CACHED_BODY_BYTES`], so at most 16 MiB in all).
const RESPONSE_CACHE_ENTRIES: usize = 256;

/// How long requests ended by shutdown get to write their audit lines.
pub(crate) const SHUTDOWN_SETTLE: Duration = Duration::from_secs(1);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `--insecure-no-auth` with a non-loopback listener.
    #[error(
        "--insecure-no-auth is only allowed on a loopback --listen address (got {0}); use API keys anywhere else"
    )]
    InsecureNotLoopback(SocketAddr),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A Kubernetes Secret source is configured but no client is available.
    #[error(
        "the configuration reads Kubernetes Secrets but no Kubernetes client could be built (in a pod: is a ServiceAccount token mounted?): {0}"
    )]
    Kubernetes(kube::Error),
    /// A connector could not be set up.
    #[error(transparent)]
    Connector(#[from] UpstreamSetupError),
    /// The OAuth resource server could not be set up.
    #[error(transparent)]
    OAuth(#[from] OAuthSetupError),
    /// The ready file could not be written.
    #[error("cannot write {path}: {source}")]
    ReadyFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The audit writer thread could not be started.
    #[error("cannot start the audit writer: {0}")]
    AuditWriter(std::io::Error),
    /// Serving failed.
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

fn uses_kubernetes(config: &ServerConfig) -> bool {
    [&config.api_keys, &config.credentials]
        .iter()
        .any(|s| matches!(s, SecretSource::KubernetesSecret { .. }))
}

/// One tenant's server, wired and not yet listening: configuration, API
/// keys, credentials, rate limits, tools and audit.
///
/// [`Server::router`] serves `/mcp` in-process (tests drive it with
/// `tower::ServiceExt::oneshot`); [`Server::run`] binds the listeners,
/// serves until SIGTERM or SIGINT, and drains.
pub struct Server {
    options: ServeOptions,
    tenant: TenantId,
    endpoint: Arc<McpEndpoint>,
    admin: Arc<AdminState>,
    audit_writer: AuditWriter,
    /// Connection limits of both listeners.
    connection_limits: ConnectionLimits,
    /// Ends in-flight MCP requests after the grace period.
    mcp_cancel: CancellationToken,
    /// Stops the background tasks and the admin listener, also when the
    /// server is dropped without running.
    shutdown: DropGuard,
}

impl Server {
    /// Wires the server with audit lines on standard output.
    ///
    /// Starts the background tasks that follow the key and credential
    /// sources, so it must run inside a Tokio runtime.
    pub async fn new(options: ServeOptions) -> Result<Self, StartError> {
        Self::with_audit(options, std::io::stdout()).await
    }

    /// Wires the server with audit lines written to `audit_out`.
    pub async fn with_audit<W>(options: ServeOptions, audit_out: W) -> Result<Self, StartError>
    where
        W: Write + Send + 'static,
    {
        install_crypto_provider();
        let config = config::load(&options.config)?;
        check_insecure_no_auth(&options)?;
        let client = kubernetes_client(&config).await?;
        let shutdown = CancellationToken::new();
        let tenant = TenantId::new(&config.tenant_id);
        let metrics = Arc::new(Metrics::default());
        let (audit, audit_writer) = AuditLog::start(audit_out, options.audit_queue_lines as usize)
            .map_err(StartError::AuditWriter)?;
        let poll = Duration::from_secs(options.secret_poll_seconds.max(1));
        let auth = authenticator(
            &config, &options, &client, &tenant, &metrics, poll, &shutdown,
        )?;
        let credentials = credential_store(&config, client, tenant.clone(), poll, &shutdown);
        let readiness = Arc::new(Readiness {
            auth: auth.clone(),
            audit: audit.health(),
            ..Readiness::default()
        });
        spawn_credential_check(
            credentials.clone(),
            readiness.clone(),
            poll,
            shutdown.clone(),
        );
        let rate_limits = Arc::new(RateLimits::new(&config.rate_limits));
        spawn_limiter_cleanup(rate_limits.clone(), shutdown.clone());
        let handler = TenantServer::new(
            Arc::new(ToolCatalog::new(&config)?),
            ToolServices {
                credentials,
                cache: ResponseCache::new(
                    Duration::from_secs(options.response_cache_seconds),
                    RESPONSE_CACHE_ENTRIES,
                ),
                metrics: metrics.clone(),
            },
            rate_limits.clone(),
            metrics.clone(),
            Arc::new(AccessPolicy::new(&config.access)),
        );
        let mcp_cancel = CancellationToken::new();
        let endpoint = Arc::new(McpEndpoint {
            tenant: tenant.clone(),
            auth,
            rate_limits,
            metrics: metrics.clone(),
            audit,
            origin_policy: OriginPolicy::new(&config.allowed_hosts, &config.allowed_origins),
            in_flight: InFlightLimit::new(config.limits.max_requests_in_flight_per_caller),
            max_body_bytes: config.limits.max_body_bytes,
            request_timeout: Duration::from_secs(config.limits.request_timeout_seconds),
            mcp: mcp_service(&config, handler, mcp_cancel.clone()),
            shutdown: mcp_cancel.clone(),
        });
        Ok(Self {
            options,
            tenant,
            endpoint,
            admin: Arc::new(AdminState { readiness, metrics }),
            audit_writer,
            connection_limits: ConnectionLimits::from(&config.limits),
            mcp_cancel,
            shutdown: shutdown.drop_guard(),
        })
    }

    /// The MCP router (`/mcp`).
    pub fn router(&self) -> axum::Router {
        transport::router(self.endpoint.clone())
    }

    /// The admin router (`/healthz`, `/readyz`, `/metrics`).
    pub fn admin_router(&self) -> axum::Router {
        crate::admin::router(self.admin.clone())
    }

    /// Binds both listeners, serves until SIGTERM or SIGINT, then stops
    /// accepting, waits up to the grace period for in-flight requests, ends
    /// the rest (outcome `shutdown`), and drains the audit trail within
    /// `--audit-drain-seconds`.
    pub async fn run(self) -> Result<(), StartError> {
        let mcp_listener = bind(self.options.listen).await?;
        let admin_listener = bind(self.options.admin_listen).await?;
        let mcp_addr = mcp_listener.local_addr().map_err(StartError::Serve)?;
        let admin_addr = admin_listener.local_addr().map_err(StartError::Serve)?;
        if let Some(path) = &self.options.ready_file {
            write_ready_file(path, mcp_addr, admin_addr)?;
        }
        tracing::info!(tenant = %self.tenant, mcp = %format!("http://{mcp_addr}/mcp"), admin = %admin_addr, "serving");
        let stop_accepting = CancellationToken::new();
        let mut mcp_server = tokio::spawn(connections::serve(
            "mcp",
            mcp_listener,
            self.router(),
            self.connection_limits.clone(),
            self.admin.metrics.clone(),
            stop_accepting.clone(),
        ));
        let admin_server = tokio::spawn(connections::serve(
            "admin",
            admin_listener,
            self.admin_router(),
            self.connection_limits.clone(),
            self.admin.metrics.clone(),
            self.shutdown.token().clone(),
        ));
        wait_for_signal().await;
        tracing::info!("shutting down: no new connections, waiting for in-flight requests");
        self.admin.readiness.draining.store(true, Ordering::Release);
        stop_accepting.cancel();
        let grace = Duration::from_secs(self.options.shutdown_grace_seconds);
        match tokio::time::timeout(grace, &mut mcp_server).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "MCP listener task failed"),
            Err(_) => {
                tracing::warn!(
                    seconds = grace.as_secs(),
                    "in-flight requests did not finish within the grace period; cancelling them"
                );
                self.mcp_cancel.cancel();
                // Requests still running answer at once now (outcome
                // `shutdown`); give them a moment to write their audit lines
                // before the writer is told to finish.
                let _ = tokio::time::timeout(SHUTDOWN_SETTLE, mcp_server).await;
            }
        }
        self.mcp_cancel.cancel();
        drop(self.shutdown);
        if let Err(error) = admin_server.await {
            tracing::error!(%error, "admin listener task failed");
        }
        self.audit_writer
            .finish(Duration::from_secs(self.options.audit_drain_seconds))
            .await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Runs the server until SIGTERM or SIGINT.
pub async fn run(options: ServeOptions) -> Result<(), StartError> {
    Server::new(options).await?.run().await
}

/// `--insecure-no-auth` only on loopback, and loudly.
fn check_insecure_no_auth(options: &ServeOptions) -> Result<(), StartError> {
    if options.insecure_no_auth {
        if !options.listen.ip().is_loopback() {
            return Err(StartError::InsecureNotLoopback(options.listen));
        }
        tracing::warn!(
            "INSECURE: --insecure-no-auth is set. Every request is accepted without an API key as caller \"anonymous\". Local development only."
        );
    }
    Ok(())
}

/// How callers are verified: API keys (unless `auth.apiKeys` is off),
/// OAuth access tokens (when `auth.oauth` is set; the issuer is fetched in
/// the background), or nobody with `--insecure-no-auth`.
fn authenticator(
    config: &ServerConfig,
    options: &ServeOptions,
    client: &Option<kube::Client>,
    tenant: &TenantId,
    metrics: &Arc<Metrics>,
    poll: Duration,
    shutdown: &CancellationToken,
) -> Result<Authenticator, StartError> {
    if options.insecure_no_auth {
        return Ok(Authenticator {
            anonymous: true,
            ..Authenticator::default()
        });
    }
    let api_keys = config.auth.api_keys.then(|| {
        ApiKeyStore::follow(
            SecretLocation::new(config.api_keys.clone(), client.clone())
                .watch(poll, shutdown.clone()),
        )
    });
    let oauth = match &config.auth.oauth {
        Some(oauth) => {
            let server = Arc::new(ResourceServer::new(oauth, tenant.clone(), metrics.clone())?);
            server.spawn_issuer_refresh(shutdown.clone());
            Some(server)
        }
        None => None,
    };
    Ok(Authenticator {
        api_keys,
        oauth,
        anonymous: false,
    })
}

/// A Kubernetes client, only when a Secret source needs one.
async fn kubernetes_client(config: &ServerConfig) -> Result<Option<kube::Client>, StartError> {
    if !uses_kubernetes(config) {
        return Ok(None);
    }
    kube::Client::try_default()
        .await
        .map(Some)
        .map_err(StartError::Kubernetes)
}

/// The credential store over the configured source. A Secret is followed by
/// its watch (as the API keys are), so the call after a rotation carries the
/// new value; files and directories are re-read after the configured TTL.
fn credential_store(
    config: &ServerConfig,
    client: Option<kube::Client>,
    tenant: TenantId,
    poll: Duration,
    shutdown: &CancellationToken,
) -> CredentialStore {
    let location = SecretLocation::new(config.credentials.clone(), client);
    let (provider, ttl): (Arc<dyn CredentialProvider>, Duration) = match &config.credentials {
        SecretSource::KubernetesSecret { namespace, name } => (
            Arc::new(WatchedCredentialProvider::new(
                format!("Secret {namespace}/{name}"),
                location.watch(poll, shutdown.clone()),
            )),
            Duration::ZERO,
        ),
        SecretSource::File { .. } | SecretSource::Directory { .. } => (
            Arc::new(SourceCredentialProvider::new(location)),
            Duration::from_secs(config.credential_ttl_seconds),
        ),
    };
    CredentialStore::new(tenant, &config.credential_keys, provider, ttl)
}

/// rmcp's stateless Streamable HTTP service over `handler`, with the same
/// Host/Origin lists and body limit as the gates in front of it.
fn mcp_service(
    config: &ServerConfig,
    handler: TenantServer,
    cancel: CancellationToken,
) -> McpService {
    let mcp_config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .with_allowed_hosts(config.allowed_hosts.clone())
        .with_allowed_origins(config.allowed_origins.clone())
        .enforce_origin_validation()
        .with_max_request_body_bytes(config.limits.max_body_bytes)
        .with_cancellation_token(cancel);
    McpService::new(move || Ok(handler.clone()), Arc::default(), mcp_config)
}

/// Writes the bound addresses as JSON (`{"mcp": .., "admin": ..}`), for
/// tests and tools that listen on port 0.
fn write_ready_file(path: &Path, mcp: SocketAddr, admin: SocketAddr) -> Result<(), StartError> {
    let text = serde_json::json!({"mcp": mcp.to_string(), "admin": admin.to_string()});
    std::fs::write(path, text.to_string()).map_err(|source| StartError::ReadyFile {
        path: path.to_owned(),
        source,
    })
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// Reads every declared credential until all succeed (readiness), logging
/// which one is missing, never its value.
fn spawn_credential_check(
    credentials: CredentialStore,
    readiness: Arc<Readiness>,
    retry: Duration,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            match credentials.load_all().await {
                Ok(()) => {
                    readiness.credentials_loaded.store(true, Ordering::Release);
                    tracing::info!("credentials loaded");
                    return;
                }
                Err(error) => tracing::warn!(%error, "credentials not available yet; not ready"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(retry) => {}
            }
        }
    });
}

fn spawn_limiter_cleanup(limits: Arc<RateLimits>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = interval.tick() => limits.forget_idle(),
            }
        }
    });
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
