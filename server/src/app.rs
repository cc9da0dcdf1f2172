//! Wiring: configuration, secret sources, tools, listeners, and an orderly
//! shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::serve::ListenerExt;
use bulkhead_crds::server_config::{SecretSource, ServerConfig};
use rmcp::transport::streamable_http_server::StreamableHttpServerConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::{AdminState, Readiness};
use crate::api_keys::ApiKeyStore;
use crate::audit::AuditLog;
use crate::cli::ServeOptions;
use crate::config::{self, ConfigError};
use crate::connectors::upstream::{UpstreamSetupError, install_crypto_provider};
use crate::credentials::{
    CredentialProvider, CredentialStore, SourceCredentialProvider, WatchedCredentialProvider,
};
use crate::handler::TenantServer;
use crate::identity::TenantId;
use crate::metrics::Metrics;
use crate::rate_limit::RateLimits;
use crate::response_cache::ResponseCache;
use crate::secret_source::SecretLocation;
use crate::tools::{ToolCatalog, ToolServices};
use crate::transport::{self, McpEndpoint, OriginPolicy};

/// Entries the response cache holds at most (each at most
/// [`crate::tools::MAX_CACHED_BODY_BYTES`], so at most 16 MiB in all).
const RESPONSE_CACHE_ENTRIES: usize = 256;

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

/// Runs the server until SIGTERM or SIGINT.
pub async fn run(options: ServeOptions) -> Result<(), StartError> {
    install_crypto_provider();
    let config = config::load(&options.config)?;
    if options.insecure_no_auth {
        if !options.listen.ip().is_loopback() {
            return Err(StartError::InsecureNotLoopback(options.listen));
        }
        tracing::warn!(
            "INSECURE: --insecure-no-auth is set. Every request is accepted without an API key as caller \"anonymous\". Local development only."
        );
    }
    let client = if uses_kubernetes(&config) {
        Some(
            kube::Client::try_default()
                .await
                .map_err(StartError::Kubernetes)?,
        )
    } else {
        None
    };
    let shutdown = CancellationToken::new();
    let tenant = TenantId::new(&config.tenant_id);
    let metrics = Arc::new(Metrics::default());
    let (audit, audit_writer) =
        AuditLog::start(std::io::stdout()).map_err(StartError::AuditWriter)?;
    let poll = Duration::from_secs(options.secret_poll_seconds.max(1));

    let keys = (!options.insecure_no_auth).then(|| {
        ApiKeyStore::follow(
            SecretLocation::new(config.api_keys.clone(), client.clone())
                .watch(poll, shutdown.clone()),
        )
    });
    let credential_location = SecretLocation::new(config.credentials.clone(), client.clone());
    // A Secret is followed by its watch (as the API keys are), so the call
    // after a rotation carries the new value; files are re-read after the TTL.
    let (credential_provider, credential_ttl): (Arc<dyn CredentialProvider>, Duration) =
        match &config.credentials {
            SecretSource::KubernetesSecret { namespace, name } => (
                Arc::new(WatchedCredentialProvider::new(
                    format!("Secret {namespace}/{name}"),
                    credential_location.watch(poll, shutdown.clone()),
                )),
                Duration::ZERO,
            ),
            SecretSource::File { .. } | SecretSource::Directory { .. } => (
                Arc::new(SourceCredentialProvider::new(credential_location)),
                Duration::from_secs(config.credential_ttl_seconds),
            ),
        };
    let credentials = CredentialStore::new(
        tenant.clone(),
        &config.credential_keys,
        credential_provider,
        credential_ttl,
    );
    let readiness = Arc::new(Readiness {
        keys: keys.clone(),
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
    let catalog = Arc::new(ToolCatalog::new(&config)?);
    let handler = TenantServer::new(
        catalog,
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
    );
    let mcp_cancel = CancellationToken::new();
    let mcp_config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .with_allowed_hosts(config.allowed_hosts.clone())
        .with_allowed_origins(config.allowed_origins.clone())
        .enforce_origin_validation()
        .with_max_request_body_bytes(config.limits.max_body_bytes)
        .with_cancellation_token(mcp_cancel.clone());
    let mcp = transport::McpService::new(move || Ok(handler.clone()), Arc::default(), mcp_config);
    let endpoint = Arc::new(McpEndpoint {
        tenant: tenant.clone(),
        keys,
        rate_limits,
        metrics: metrics.clone(),
        audit,
        origin_policy: OriginPolicy::new(&config.allowed_hosts, &config.allowed_origins),
        max_body_bytes: config.limits.max_body_bytes,
        request_timeout: Duration::from_secs(config.limits.request_timeout_seconds),
        mcp,
    });

    let mcp_listener = bind(options.listen).await?;
    let admin_listener = bind(options.admin_listen).await?;
    let mcp_addr = mcp_listener.local_addr().map_err(StartError::Serve)?;
    let admin_addr = admin_listener.local_addr().map_err(StartError::Serve)?;
    if let Some(path) = &options.ready_file {
        let text =
            serde_json::json!({"mcp": mcp_addr.to_string(), "admin": admin_addr.to_string()});
        std::fs::write(path, text.to_string()).map_err(|source| StartError::ReadyFile {
            path: path.clone(),
            source,
        })?;
    }
    tracing::info!(tenant = %tenant, mcp = %format!("http://{mcp_addr}/mcp"), admin = %admin_addr, "serving");

    let stop_accepting = CancellationToken::new();
    let mcp_server = {
        let stop = stop_accepting.clone();
        // TCP_NODELAY: without it small responses wait for delayed ACKs
        // (about 40 ms each).
        let listener = mcp_listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(
            axum::serve(listener, transport::router(endpoint))
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .into_future(),
        )
    };
    let admin_server = {
        let stop = shutdown.clone();
        let state = Arc::new(AdminState {
            readiness: readiness.clone(),
            metrics,
        });
        tokio::spawn(
            axum::serve(admin_listener, crate::admin::router(state))
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .into_future(),
        )
    };

    wait_for_signal().await;
    tracing::info!("shutting down: no new connections, waiting for in-flight requests");
    readiness.draining.store(true, Ordering::Release);
    stop_accepting.cancel();
    let grace = Duration::from_secs(options.shutdown_grace_seconds);
    match tokio::time::timeout(grace, mcp_server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => tracing::error!(%error, "MCP listener failed"),
        Ok(Err(error)) => tracing::error!(%error, "MCP listener task failed"),
        Err(_) => tracing::warn!(
            seconds = grace.as_secs(),
            "in-flight requests did not finish within the grace period; cancelling them"
        ),
    }
    mcp_cancel.cancel();
    shutdown.cancel();
    if let Ok(Err(error)) = admin_server.await {
        tracing::error!(%error, "admin listener failed");
    }
    audit_writer.finish().await;
    tracing::info!("stopped");
    Ok(())
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
