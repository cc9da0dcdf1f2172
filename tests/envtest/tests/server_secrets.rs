//! `bulkhead-server` against the real API server, as it runs in a tenant's
//! pod: the configuration the operator wrote into the tenant's ConfigMap,
//! a TokenRequest token of the tenant's `mcp-server` ServiceAccount (the
//! audience and lifetime of the Deployment's projected token), and nothing
//! but the RBAC the operator bound (`get`/`watch` of two named Secrets).
//! A real MCP client (rmcp) calls it on loopback; a loopback upstream
//! records the credential each tool call carries.
//!
//! The one hand edit to the operator's configuration: the connector may call
//! a private address (`allowPrivateTargets`), because the upstream here is
//! on loopback; in a cluster the NetworkPolicy decides what is reachable.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use axum::extract::{Request, State};
use bulkhead_crds::Tenant;
use bulkhead_crds::server_config::{
    API_KEYS_SECRET_NAME, CONFIG_FILE_KEY, CONFIG_MAP_NAME, CREDENTIALS_SECRET_NAME, MCP_PORT,
    SecretSource, ServerConfig,
};
use bulkhead_crds::tenant::{AllowRule, Connector, ConnectorType, CredentialRef};
use bulkhead_envtest::process::ManagedProcess;
use bulkhead_envtest::server::StartedServer;
use bulkhead_envtest::tenants::{example, wait_for};
use bulkhead_envtest::{AuditEvent, ControlPlane};
use bulkhead_server::api_keys::{generate_api_key, hash_api_key};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::ObjectMeta;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

/// How long the server may take to start and read its Secrets.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a changed Secret may take to reach the server: both Secrets are
/// followed by a watch, so the API server's event arrives within about a
/// second; this bound leaves room for a busy 2-core machine (and is far
/// below the 60 s credential TTL that applies to files).
const WATCH_BOUND: Duration = Duration::from_secs(5);

/// A loopback HTTP upstream that records the `Authorization` header of
/// every request.
struct Upstream {
    url: String,
    seen: Arc<Mutex<Vec<Option<String>>>>,
}

impl Upstream {
    async fn start() -> Result<Self> {
        let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        let app = axum::Router::new()
            .fallback(
                |State(seen): State<Arc<Mutex<Vec<Option<String>>>>>, request: Request| async move {
                    let authorization = request
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    if let Ok(mut seen) = seen.lock() {
                        seen.push(authorization);
                    }
                    (
                        [("content-type", "application/json")],
                        json!({"ok": true}).to_string(),
                    )
                },
            )
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self {
            url: format!("http://{addr}/api"),
            seen,
        })
    }

    fn seen(&self) -> Vec<Option<String>> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// A Tenant with one `http` connector to `upstream` using credential
/// `upstream` (Secret key `upstream_token`).
fn tenant_with_upstream(id: &str, upstream: &str) -> Result<Tenant> {
    let mut tenant = example("minimal.yaml", id)?;
    tenant.spec.credentials = vec![CredentialRef {
        name: "upstream".to_owned(),
        key: "upstream_token".to_owned(),
    }];
    tenant.spec.connectors = vec![Connector {
        name: "api".to_owned(),
        connector_type: ConnectorType::Http,
        base_url: upstream.to_owned(),
        credential: Some("upstream".to_owned()),
        allow: vec![AllowRule {
            method: "GET".to_owned(),
            path: "/v1/items/*".to_owned(),
        }],
    }];
    Ok(tenant)
}

/// A Secret as the platform team creates it (`kubectl apply`).
fn secret(namespace: &str, name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        string_data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// The configuration the operator wrote for `namespace`.
async fn operator_config(cp: &ControlPlane, namespace: &str) -> Result<ServerConfig> {
    let admin = cp.admin_client().await?;
    let maps: Api<ConfigMap> = Api::namespaced(admin, namespace);
    let map = maps.get(CONFIG_MAP_NAME).await?;
    let text = map
        .data
        .and_then(|mut d| d.remove(CONFIG_FILE_KEY))
        .context("no server.yaml in the ConfigMap")?;
    yaml_serde::from_str(&text).context("parse server.yaml")
}

/// A running `bulkhead-server` and how to reach it.
struct RunningServer {
    process: ManagedProcess,
    mcp: SocketAddr,
    admin: SocketAddr,
    /// The Host a caller in the cluster sends (one of `allowedHosts`).
    host: String,
}

impl RunningServer {
    /// Starts the server binary with `config`, authenticated as
    /// ServiceAccount `mcp-server` of `token_namespace` through a kubeconfig
    /// (the in-cluster variables are removed, so it cannot use anything
    /// else).
    async fn start(
        cp: &ControlPlane,
        name: &str,
        config: &ServerConfig,
        token_namespace: &str,
    ) -> Result<Self> {
        let StartedServer {
            process,
            mcp,
            admin,
        } = cp
            .start_server(
                name,
                &yaml_serde::to_string(config)?,
                token_namespace,
                "info,rmcp=warn",
            )
            .await?;
        Ok(Self {
            mcp,
            admin,
            host: format!(
                "mcp.{}.svc.cluster.local:{MCP_PORT}",
                config
                    .allowed_hosts
                    .iter()
                    .find_map(|h| h.strip_prefix("mcp.")?.strip_suffix(".svc"))
                    .context("no mcp.<namespace>.svc in allowedHosts")?
            ),
            process,
        })
    }

    fn http() -> Result<reqwest::Client> {
        bulkhead_server::connectors::upstream::install_crypto_provider();
        Ok(reqwest::Client::builder().no_proxy().build()?)
    }

    /// `/readyz` status code.
    async fn readyz(&self) -> Result<u16> {
        let response = Self::http()?
            .get(format!("http://{}/readyz", self.admin))
            .send()
            .await?;
        Ok(response.status().as_u16())
    }

    /// An MCP client (rmcp, Streamable HTTP) with `key`, sending the Host
    /// a caller inside the cluster sends.
    async fn client(&self, key: &str) -> Result<RunningService<rmcp::RoleClient, ()>> {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::HOST, self.host.parse()?);
        let http = reqwest::Client::builder()
            .no_proxy()
            .default_headers(headers)
            .build()?;
        let config =
            StreamableHttpClientTransportConfig::with_uri(format!("http://{}/mcp", self.mcp))
                .auth_header(key);
        ().serve(StreamableHttpClientTransport::with_client(http, config))
            .await
            .map_err(|e| anyhow::anyhow!("MCP initialize: {e}"))
    }

    /// The last diagnostic lines of its log (the audit lines left out).
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.process.log_path()).unwrap_or_default();
        let diagnostics: Vec<&str> = log
            .lines()
            .filter(|line| !line.contains("\"request_id\""))
            .collect();
        diagnostics[diagnostics.len().saturating_sub(30)..].join("\n")
    }
}

async fn call(
    client: &RunningService<rmcp::RoleClient, ()>,
    name: &str,
    arguments: Value,
) -> Result<CallToolResult> {
    let params = CallToolRequestParams::new(name.to_owned())
        .with_arguments(arguments.as_object().cloned().unwrap_or_default());
    client
        .call_tool(params)
        .await
        .map_err(|e| anyhow::anyhow!("tools/call {name}: {e}"))
}

/// Requests by `user` on Secrets in `namespace`, from the audit log.
fn secret_requests(events: &[AuditEvent], user: &str, namespace: &str) -> Vec<AuditEvent> {
    events
        .iter()
        .filter(|e| {
            e.username() == user
                && e.object().resource == "secrets"
                && e.object().namespace == namespace
        })
        .cloned()
        .collect()
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn the_server_reads_its_own_secrets_follows_rotation_and_is_refused_another_tenants()
-> Result<()> {
    let cp = ControlPlane::shared();
    cp.install_bulkhead();
    let admin = cp.admin_client().await?;
    let upstream = Upstream::start().await?;
    let (a, b) = ("secrets-a", "secrets-b");
    let (ns_a, ns_b) = (cp.tenant_namespace(a), cp.tenant_namespace(b));
    cp.kubectl_apply(&tenant_with_upstream(a, &upstream.url)?)?;
    cp.kubectl_apply(&tenant_with_upstream(b, &upstream.url)?)?;
    cp.wait_reconciled(&admin, a).await?;
    cp.wait_reconciled(&admin, b).await?;

    // The platform team's Secrets.
    let gateway_key = generate_api_key()?;
    let agent_key = generate_api_key()?;
    let apply_keys = |with_agent: bool| -> Result<()> {
        let mut data = vec![("gateway", hash_api_key(&gateway_key))];
        if with_agent {
            data.push(("agent", hash_api_key(&agent_key)));
        }
        let data: Vec<(&str, &str)> = data.iter().map(|(k, v)| (*k, v.as_str())).collect();
        cp.kubectl_apply(&secret(&ns_a, API_KEYS_SECRET_NAME, &data))
            .map(drop)
    };
    apply_keys(true)?;
    cp.kubectl_apply(&secret(
        &ns_a,
        CREDENTIALS_SECRET_NAME,
        &[("upstream_token", "a-token-1")],
    ))?;
    cp.kubectl_apply(&secret(
        &ns_b,
        CREDENTIALS_SECRET_NAME,
        &[("upstream_token", "b-token")],
    ))?;

    let mut config = operator_config(cp, &ns_a).await?;
    ensure!(
        config.credentials
            == SecretSource::KubernetesSecret {
                namespace: ns_a.clone(),
                name: CREDENTIALS_SECRET_NAME.to_owned()
            },
        "{config:?}"
    );
    for connector in &mut config.connectors {
        connector.allow_private_targets = true;
    }
    let user_a = format!("system:serviceaccount:{ns_a}:mcp-server");
    let mark = cp.audit().mark()?;
    let server = RunningServer::start(cp, "a", &config, &ns_a).await?;
    wait_for("the server to be ready", START_TIMEOUT, || async {
        Ok((server.readyz().await? == 200).then_some(()))
    })
    .await
    .with_context(|| server.log_tail())?;

    // Tenant A's keys and credentials, read through the real RBAC.
    let client = server.client(&gateway_key).await?;
    let whoami = call(&client, "whoami", json!({})).await?;
    let identity = whoami.structured_content.clone().unwrap_or_default();
    ensure!(
        identity == json!({"tenantId": a, "callerId": "gateway"}),
        "{identity}"
    );
    let item = json!({"path": "/v1/items/1"});
    let answer = call(&client, "api_request", item.clone()).await?;
    ensure!(answer.is_error == Some(false), "{answer:?}");
    ensure!(
        upstream.seen().last() == Some(&Some("Bearer a-token-1".to_owned())),
        "{:?}",
        upstream.seen()
    );

    // Rotation by the platform: the next calls carry the new value, without
    // a restart, as soon as the watch event arrived.
    cp.kubectl_apply(&secret(
        &ns_a,
        CREDENTIALS_SECRET_NAME,
        &[("upstream_token", "a-token-2")],
    ))?;
    let rotated = Instant::now();
    wait_for(
        "a tool call carrying the rotated credential",
        WATCH_BOUND,
        || async {
            let answer = call(&client, "api_request", item.clone()).await?;
            ensure!(answer.is_error == Some(false), "{answer:?}");
            Ok(
                (upstream.seen().last() == Some(&Some("Bearer a-token-2".to_owned())))
                    .then_some(()),
            )
        },
    )
    .await
    .with_context(|| server.log_tail())?;
    eprintln!(
        "rotated credential used after {:.2} s",
        rotated.elapsed().as_secs_f64()
    );
    let answer = call(&client, "api_request", item.clone()).await?;
    ensure!(answer.is_error == Some(false), "{answer:?}");
    ensure!(
        upstream.seen().last() == Some(&Some("Bearer a-token-2".to_owned())),
        "the old value came back: {:?}",
        upstream.seen()
    );

    // A key removed from bulkhead-api-keys is refused within seconds; the
    // other key keeps working. `kubectl apply` of the Secret written with
    // stringData does not remove a key (the API server merges stringData
    // into data), so the platform removes it as the README says.
    let agent = server.client(&agent_key).await?;
    ensure!(call(&agent, "whoami", json!({})).await?.is_error == Some(false));
    apply_keys(false)?;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns_a);
    let stored = secrets
        .get(API_KEYS_SECRET_NAME)
        .await?
        .data
        .unwrap_or_default();
    ensure!(
        stored.contains_key("agent"),
        "kubectl apply without the key removed it after all: {:?}",
        stored.keys().collect::<Vec<_>>()
    );
    cp.kubectl_ok(&[
        "-n",
        &ns_a,
        "patch",
        "secret",
        API_KEYS_SECRET_NAME,
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/data/agent"}]"#,
    ])?;
    let removed = Instant::now();
    wait_for("the removed key to be refused", WATCH_BOUND, || async {
        Ok(server.client(&agent_key).await.is_err().then_some(()))
    })
    .await
    .with_context(|| server.log_tail())?;
    eprintln!(
        "removed API key refused after {:.1} s",
        removed.elapsed().as_secs_f64()
    );
    ensure!(call(&client, "whoami", json!({})).await?.is_error == Some(false));

    // Everything the server asked the API server for: get and watch of its
    // own two Secrets by name, all allowed (the watch under the
    // resourceNames rule included), nothing else.
    let events = secret_requests(&cp.audit().since(mark)?, &user_a, &ns_a);
    ensure!(!events.is_empty(), "no Secret request by {user_a} audited");
    for event in &events {
        ensure!(
            event.code() == 200
                && ["get", "watch"].contains(&event.verb.as_str())
                && [CREDENTIALS_SECRET_NAME, API_KEYS_SECRET_NAME]
                    .contains(&event.object().name.as_str()),
            "unexpected request: {}",
            event.summary()
        );
    }
    server.process.terminate(Duration::from_secs(10))?;
    let events = secret_requests(&cp.audit().since(mark)?, &user_a, &ns_a);
    ensure!(
        events.iter().any(|e| e.verb == "watch"
            && e.code() == 200
            && e.object().name == API_KEYS_SECRET_NAME),
        "no completed watch of {API_KEYS_SECRET_NAME}: {:#?}",
        events.iter().map(AuditEvent::summary).collect::<Vec<_>>()
    );

    // Pointed at tenant B's Secret by a hand-edited configuration, with
    // A's token: the API server refuses, and the server reports not ready
    // and calls no upstream, rather than serving without credentials.
    let mut pointed = config.clone();
    pointed.credentials = SecretSource::KubernetesSecret {
        namespace: ns_b.clone(),
        name: CREDENTIALS_SECRET_NAME.to_owned(),
    };
    let mark = cp.audit().mark()?;
    let misdirected = RunningServer::start(cp, "a-pointed-at-b", &pointed, &ns_a).await?;
    let refused = wait_for(
        "the API server to refuse A's token for B's Secret",
        START_TIMEOUT,
        || async {
            let refused = secret_requests(&cp.audit().since(mark)?, &user_a, &ns_b)
                .into_iter()
                .find(|e| e.code() == 403);
            Ok(refused)
        },
    )
    .await?;
    ensure!(
        refused.object().name == CREDENTIALS_SECRET_NAME,
        "{}",
        refused.summary()
    );
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let code = misdirected.readyz().await?;
        if code != 503 {
            bail!(
                "/readyz answered {code} without credentials; log:\n{}",
                misdirected.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let seen_before = upstream.seen().len();
    let client = misdirected.client(&gateway_key).await?;
    let answer = call(&client, "api_request", item).await?;
    ensure!(
        answer.is_error == Some(true),
        "a tool call without credentials succeeded: {answer:?}"
    );
    ensure!(
        upstream.seen().len() == seen_before,
        "the upstream was called without credentials: {:?}",
        upstream.seen()
    );
    ensure!(
        secret_requests(&cp.audit().since(mark)?, &user_a, &ns_b)
            .iter()
            .all(|e| e.code() == 403),
        "A's token read something of B's"
    );
    misdirected.process.terminate(Duration::from_secs(10))?;

    for id in [a, b] {
        cp.delete_tenant(&admin, id).await?;
    }
    Ok(())
}
