//! etcd, kube-apiserver and kube-controller-manager on loopback, started
//! once per test binary and shared by its tests.
//!
//! The API server runs as production clusters run it: the `Node,RBAC`
//! authorizers, the default admission plugins (with PodSecurity,
//! ValidatingAdmissionPolicy, NamespaceLifecycle, ServiceAccount,
//! ResourceQuota and LimitRanger named explicitly), a ServiceAccount token
//! issuer and an audit log. The controller manager runs the controllers that
//! need no nodes, each with its own ServiceAccount's credentials.

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;

use crate::audit::{AUDIT_POLICY, AuditLog};
use crate::binaries::Binaries;
use crate::install::Installation;
use crate::nodes::{FakeNode, NODE_NAME_PREFIX, PodRuntime};
use crate::pki::Pki;
use crate::process::{ManagedProcess, Supervisor};

/// The Service address range (`--service-cluster-ip-range`), kind's default.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// The first address of [`SERVICE_CIDR`]: the `kubernetes` Service.
pub const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";
/// The pod address range the operator is told about (no pods get addresses
/// here; it only shapes the NetworkPolicies), kind's default.
pub const POD_CIDR: &str = "10.244.0.0/16";
/// The ServiceAccount token issuer (`--service-account-issuer`).
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// kube-controller-manager's controllers that need no node: garbage
/// collection, namespace deletion, ServiceAccounts and their tokens,
/// Deployments and ReplicaSets, ResourceQuota usage, the
/// `kube-root-ca.crt` ConfigMaps, the aggregated ClusterRoles and the
/// type checking of ValidatingAdmissionPolicies
/// (`kube-controller-manager --help`, `--controllers`, v1.36).
pub const DEFAULT_CONTROLLERS: &[&str] = &[
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "deployment-controller",
    "replicaset-controller",
    "resourcequota-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
    "validatingadmissionpolicy-status-controller",
];

/// Admission plugins enabled in addition to the API server's defaults;
/// these are all defaults already and are named so the intent is visible.
pub const ADMISSION_PLUGINS: &[&str] = &[
    "NamespaceLifecycle",
    "LimitRanger",
    "ServiceAccount",
    "PodSecurity",
    "ResourceQuota",
    "ValidatingAdmissionPolicy",
    "NodeRestriction",
];

/// How long the API server may take to report `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// What to start. The default is etcd, kube-apiserver and
/// kube-controller-manager with [`DEFAULT_CONTROLLERS`], and no pod ever
/// runs; [`Options::with_pods`] adds kube-scheduler and kwok.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// kube-controller-manager's `--controllers`.
    pub controllers: Vec<String>,
    /// Run kube-scheduler (admin kubeconfig), which binds pods to nodes.
    pub scheduler: bool,
    /// Run kwok and register this many fake nodes (`kwok-node-<i>`,
    /// untainted); 0 runs no kwok. See [`crate::nodes`].
    pub kwok_nodes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            controllers: DEFAULT_CONTROLLERS
                .iter()
                .map(|c| (*c).to_owned())
                .collect(),
            scheduler: false,
            kwok_nodes: 0,
        }
    }
}

impl Options {
    /// The default control plane plus kube-scheduler, kwok with `nodes`
    /// fake nodes, and the node lifecycle controller (it lifts the
    /// `not-ready` taint new nodes get): pods get scheduled, Running and
    /// Ready.
    pub fn with_pods(nodes: usize) -> Self {
        let mut options = Self {
            scheduler: true,
            kwok_nodes: nodes.max(1),
            ..Self::default()
        };
        options
            .controllers
            .push("node-lifecycle-controller".to_owned());
        options
    }
}

/// A running control plane. Processes end with the test binary (see
/// [`crate::process`]).
#[derive(Debug)]
pub struct ControlPlane {
    supervisor: Supervisor,
    binaries: Binaries,
    pki: Pki,
    url: String,
    api_port: u16,
    admin_kubeconfig: PathBuf,
    audit: AuditLog,
    startup: Duration,
    etcd: ManagedProcess,
    apiserver: ManagedProcess,
    controller_manager: ManagedProcess,
    pods: PodRuntime,
    options: Options,
    installation: OnceLock<std::result::Result<Installation, String>>,
}

static SHARED: OnceLock<std::result::Result<ControlPlane, String>> = OnceLock::new();

impl ControlPlane {
    /// The test binary's control plane, started on first use with
    /// [`Options::default`]. Blocks while it starts; panics with the cause
    /// (and the components' log tails) if it cannot start, so a missing
    /// binary fails every test instead of skipping it.
    ///
    /// Safe to call from inside a tokio runtime: startup runs on its own
    /// thread and runtime. Make clients in each test with
    /// [`admin_client`](Self::admin_client) and friends: a client is bound
    /// to the runtime that created it.
    pub fn shared() -> &'static Self {
        Self::shared_with(&Options::default())
    }

    /// Like [`shared`](Self::shared), started with `options`. Every test of
    /// a binary must ask for the same options: panics if the shared control
    /// plane was already started with other ones.
    pub fn shared_with(options: &Options) -> &'static Self {
        match SHARED.get_or_init(|| Self::start(options).map_err(|e| format!("{e:#}"))) {
            Ok(control_plane) if control_plane.options == *options => control_plane,
            Ok(control_plane) => panic!(
                "the shared control plane runs with {:?}, not {options:?}",
                control_plane.options
            ),
            Err(error) => panic!("the envtest control plane did not start: {error}"),
        }
    }

    /// Starts a control plane of its own (most tests use [`shared`](Self::shared)).
    pub fn start(options: &Options) -> Result<Self> {
        install_crypto_provider();
        let started = Instant::now();
        let binaries = Binaries::from_env()?;
        let tmpfs = Path::new("/dev/shm");
        let parent = if tmpfs.is_dir() {
            tmpfs.to_owned()
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix("bulkhead-envtest-")
            .tempdir_in(&parent)
            .with_context(|| format!("create a work directory in {}", parent.display()))?
            .keep();
        let supervisor = Supervisor::start(&dir)?;

        let serving_names: Vec<String> = [
            "localhost",
            "127.0.0.1",
            KUBERNETES_SERVICE_IP,
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let pki_dir = mkdir(&dir, "pki")?;
        let pki = Pki::generate(&pki_dir, &serving_names)?;

        let etcd_client_port = free_port()?;
        let etcd_peer_port = free_port()?;
        let api_port = free_port()?;
        let controller_manager_port = free_port()?;
        let logs = mkdir(&dir, "logs")?;

        let etcd_data = mkdir(&dir, "etcd")?;
        let etcd_url = format!("http://127.0.0.1:{etcd_client_port}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
        let mut etcd = Command::new(binaries.etcd());
        etcd.arg("--name=envtest")
            .arg(format!("--data-dir={}", etcd_data.display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=envtest={peer_url}"))
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn");
        let etcd = supervisor.spawn("etcd", etcd, &logs.join("etcd.log"))?;

        let audit_policy = dir.join("audit-policy.yaml");
        std::fs::write(&audit_policy, AUDIT_POLICY).context("write the audit policy")?;
        let audit_log = dir.join("audit.log");
        let mut apiserver = Command::new(binaries.kube_apiserver());
        apiserver
            .arg(format!("--etcd-servers={etcd_url}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={api_port}"))
            .arg(format!("--cert-dir={}", pki_dir.display()))
            .arg(format!(
                "--tls-cert-file={}",
                pki.serving.cert_file.display()
            ))
            .arg(format!(
                "--tls-private-key-file={}",
                pki.serving.key_file.display()
            ))
            .arg(format!("--client-ca-file={}", pki.ca_file.display()))
            .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
            // Loopback may not be an Endpoints address; nothing here needs
            // the `kubernetes` Service's endpoints.
            .arg("--endpoint-reconciler-type=none")
            .arg(format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"))
            .arg(format!(
                "--service-account-key-file={}",
                pki.service_account_pub_file.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.service_account_key_file.display()
            ))
            .arg("--authorization-mode=Node,RBAC")
            .arg(format!(
                "--enable-admission-plugins={}",
                ADMISSION_PLUGINS.join(",")
            ))
            // As kubeadm sets it: privileged pods are PodSecurity's to refuse.
            .arg("--allow-privileged=true")
            .arg(format!("--audit-policy-file={}", audit_policy.display()))
            .arg(format!("--audit-log-path={}", audit_log.display()))
            .arg("--audit-log-mode=blocking")
            .arg("--audit-log-maxsize=0")
            .arg("--profiling=false")
            .arg("--v=1");
        let apiserver = supervisor.spawn(
            "kube-apiserver",
            apiserver,
            &logs.join("kube-apiserver.log"),
        )?;

        let url = format!("https://127.0.0.1:{api_port}");
        let admin_kubeconfig = dir.join("admin.kubeconfig");
        write_kubeconfig(
            &admin_kubeconfig,
            &url,
            &pki.ca_pem,
            json!({
                "client-certificate-data": BASE64.encode(&pki.admin.cert_pem),
                "client-key-data": BASE64.encode(&pki.admin.key_pem),
            }),
        )?;
        let controller_manager_kubeconfig = dir.join("kube-controller-manager.kubeconfig");
        write_kubeconfig(
            &controller_manager_kubeconfig,
            &url,
            &pki.ca_pem,
            json!({
                "client-certificate-data": BASE64.encode(&pki.controller_manager.cert_pem),
                "client-key-data": BASE64.encode(&pki.controller_manager.key_pem),
            }),
        )?;

        let starting = Starting {
            etcd: &etcd,
            apiserver: &apiserver,
            admin_kubeconfig: &admin_kubeconfig,
        };
        block_on(starting.wait_ready())??;
        let api_ready = started.elapsed();

        let mut controller_manager = Command::new(binaries.kube_controller_manager());
        controller_manager
            .arg(format!(
                "--kubeconfig={}",
                controller_manager_kubeconfig.display()
            ))
            .arg(format!(
                "--authentication-kubeconfig={}",
                controller_manager_kubeconfig.display()
            ))
            .arg(format!(
                "--authorization-kubeconfig={}",
                controller_manager_kubeconfig.display()
            ))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={controller_manager_port}"))
            .arg(format!("--cert-dir={}", pki_dir.display()))
            .arg(format!("--controllers={}", options.controllers.join(",")))
            .arg("--use-service-account-credentials=true")
            .arg(format!(
                "--service-account-private-key-file={}",
                pki.service_account_key_file.display()
            ))
            .arg(format!("--root-ca-file={}", pki.ca_file.display()))
            .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
            .arg("--leader-elect=false")
            .arg("--v=1");
        let controller_manager = supervisor.spawn(
            "kube-controller-manager",
            controller_manager,
            &logs.join("kube-controller-manager.log"),
        )?;
        block_on(starting.wait_controllers(&controller_manager))??;
        let pods = crate::nodes::start(
            &supervisor,
            &binaries,
            &admin_kubeconfig,
            options.scheduler,
            options.kwok_nodes,
        )?;

        let startup = started.elapsed();
        eprintln!(
            "envtest: control plane ready in {:.1} s (kube-apiserver /readyz after {:.1} s) at {url}, work directory {}",
            startup.as_secs_f64(),
            api_ready.as_secs_f64(),
            dir.display()
        );
        Ok(Self {
            supervisor,
            binaries,
            pki,
            url,
            api_port,
            admin_kubeconfig,
            audit: AuditLog::new(&audit_log),
            startup,
            etcd,
            apiserver,
            controller_manager,
            pods,
            options: options.clone(),
            installation: OnceLock::new(),
        })
        .and_then(|control_plane| {
            let nodes = (0..options.kwok_nodes)
                .map(|i| FakeNode::named(&format!("{NODE_NAME_PREFIX}{i}")))
                .collect::<Vec<_>>();
            block_on(async {
                let admin = control_plane.admin_client().await?;
                for node in &nodes {
                    control_plane.add_fake_node(&admin, node).await?;
                }
                anyhow::Ok(())
            })??;
            Ok(control_plane)
        })
    }

    /// The options this control plane was started with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    pub(crate) fn pod_runtime(&self) -> &PodRuntime {
        &self.pods
    }

    /// The API server's URL, `https://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The API server's port on 127.0.0.1.
    pub fn api_port(&self) -> u16 {
        self.api_port
    }

    /// Time from start to ready (API server and controller manager).
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// The work directory on tmpfs (certificates, kubeconfigs, logs, etcd data).
    pub fn work_dir(&self) -> &Path {
        self.supervisor.work_dir()
    }

    /// The binaries this control plane runs.
    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// The certificates and keys.
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// A kubeconfig file for the admin (`system:masters`), for `kubectl`.
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// The API server's audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The supervisor, to start further processes that end with the test binary.
    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// Process ids of etcd, kube-apiserver, kube-controller-manager and the
    /// watchdog (each the id of its process group).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![
            self.etcd.pid(),
            self.apiserver.pid(),
            self.controller_manager.pid(),
            self.supervisor.watchdog_pid(),
        ];
        pids.extend(self.pods.scheduler.iter().map(ManagedProcess::pid));
        pids.extend(self.pods.kwok.iter().map(ManagedProcess::pid));
        pids
    }

    /// Fails with a component's log tail if any of them has exited.
    pub fn ensure_running(&self) -> Result<()> {
        self.etcd.ensure_running()?;
        self.apiserver.ensure_running()?;
        self.controller_manager.ensure_running()?;
        for process in self.pods.scheduler.iter().chain(&self.pods.kwok) {
            process.ensure_running()?;
        }
        Ok(())
    }

    /// A new admin client (`system:masters`), bound to the calling runtime.
    pub async fn admin_client(&self) -> Result<Client> {
        Client::try_from(self.admin_config().await?).context("build the admin client")
    }

    /// The admin's client configuration.
    pub async fn admin_config(&self) -> Result<Config> {
        install_crypto_provider();
        let kubeconfig =
            Kubeconfig::read_from(&self.admin_kubeconfig).context("read the admin kubeconfig")?;
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .context("load the admin kubeconfig")
    }

    /// A client that impersonates `user` with `groups` (the admin may
    /// impersonate anyone), so the API server authorizes and admits every
    /// request as that user.
    pub async fn client_as_user(&self, user: &str, groups: &[&str]) -> Result<Client> {
        let mut config = self.admin_config().await?;
        config.auth_info.impersonate = Some(user.to_owned());
        config.auth_info.impersonate_groups =
            Some(groups.iter().map(|g| (*g).to_owned()).collect());
        Client::try_from(config).with_context(|| format!("build a client as {user}"))
    }

    /// A client that authenticates with `token` (and nothing else).
    pub async fn client_with_token(&self, token: &str) -> Result<Client> {
        let mut config = self.admin_config().await?;
        config.auth_info = AuthInfo {
            token: Some(token.to_owned().into()),
            ..AuthInfo::default()
        };
        Client::try_from(config).context("build a client with a bearer token")
    }

    /// A token of ServiceAccount `namespace/name` from the TokenRequest API,
    /// for the API server's audiences, valid for `expiration_seconds`.
    pub async fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
        expiration_seconds: i64,
    ) -> Result<String> {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.admin_client().await?, namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: Vec::new(),
                expiration_seconds: Some(expiration_seconds),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let answer = accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .with_context(|| format!("TokenRequest for ServiceAccount {namespace}/{name}"))?;
        answer
            .status
            .map(|status| status.token)
            .with_context(|| format!("TokenRequest for {namespace}/{name} returned no token"))
    }

    /// A client authenticated as ServiceAccount `namespace/name` with a
    /// real token (one hour), and the token itself.
    pub async fn service_account_client(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<ServiceAccountClient> {
        let token = self.service_account_token(namespace, name, 3600).await?;
        let client = self.client_with_token(&token).await?;
        Ok(ServiceAccountClient { token, client })
    }

    /// Writes a kubeconfig that authenticates with `token` into the work
    /// directory as `<file_name>` and returns its path.
    pub fn kubeconfig_with_token(&self, file_name: &str, token: &str) -> Result<PathBuf> {
        let path = self.work_dir().join(file_name);
        write_kubeconfig(
            &path,
            &self.url,
            &self.pki.ca_pem,
            json!({ "token": token }),
        )?;
        Ok(path)
    }

    /// `kubectl --kubeconfig <admin>`, ready for arguments.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new(self.binaries.kubectl());
        command.arg("--kubeconfig").arg(&self.admin_kubeconfig);
        command
    }

    /// Runs `kubectl` as the admin with `args`; fails with its output
    /// unless it succeeds. Returns standard output.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        let output = self.kubectl().args(args).output().context("run kubectl")?;
        if !output.status.success() {
            bail!(
                "kubectl {} failed ({}):\n{}{}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        String::from_utf8(output.stdout).context("kubectl printed non-UTF-8")
    }

    pub(crate) fn installation_cell(&self) -> &OnceLock<std::result::Result<Installation, String>> {
        &self.installation
    }
}

/// A client as a ServiceAccount, with the token it authenticates with.
#[derive(Clone)]
pub struct ServiceAccountClient {
    /// The bearer token (from TokenRequest).
    pub token: String,
    /// A client that sends it.
    pub client: Client,
}

/// The parts of a control plane that exist while it starts.
struct Starting<'a> {
    etcd: &'a ManagedProcess,
    apiserver: &'a ManagedProcess,
    admin_kubeconfig: &'a Path,
}

impl Starting<'_> {
    async fn client(&self) -> Result<Client> {
        let kubeconfig =
            Kubeconfig::read_from(self.admin_kubeconfig).context("read the admin kubeconfig")?;
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .context("load the admin kubeconfig")?;
        Client::try_from(config).context("build the admin client")
    }

    /// Polls `/readyz` until it answers `ok`.
    async fn wait_ready(&self) -> Result<()> {
        let client = self.client().await?;
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            self.etcd.ensure_running()?;
            self.apiserver.ensure_running()?;
            let request = http::Request::get("/readyz").body(Vec::new())?;
            match client.request_text(request).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => last = body,
                Err(error) => last = error.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!(
            "kube-apiserver was not ready within {READY_TIMEOUT:?}: {last}\nkube-apiserver log:\n{}\netcd log:\n{}",
            self.apiserver.log_tail(30),
            self.etcd.log_tail(10)
        )
    }

    /// Waits until the controller manager works: the ServiceAccount
    /// controller has created `default/default`.
    async fn wait_controllers(&self, controller_manager: &ManagedProcess) -> Result<()> {
        let client = self.client().await?;
        let accounts: Api<ServiceAccount> = Api::namespaced(client, "default");
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            controller_manager.ensure_running()?;
            if accounts.get_opt("default").await?.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!(
            "kube-controller-manager created no ServiceAccount default/default within {READY_TIMEOUT:?}; log:\n{}",
            controller_manager.log_tail(30)
        )
    }
}

/// Runs `future` to completion on a fresh current-thread runtime on its own
/// thread, so it works whether or not the caller is inside a runtime.
pub fn block_on<F>(future: F) -> Result<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("build a tokio runtime")
                .map(|runtime| runtime.block_on(future))
        });
        match worker.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Makes ring rustls' process-wide provider, as kube is built with, so
/// clients work even where another dependency enables aws-lc-rs too (rustls
/// then cannot choose on its own). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A free TCP port on 127.0.0.1 (bound, then released for the component).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(listener.local_addr()?.port())
}

fn mkdir(parent: &Path, name: &str) -> Result<PathBuf> {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

/// Writes a one-context kubeconfig (JSON, which is YAML) for `server`.
fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &str,
    user: serde_json::Value,
) -> Result<()> {
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "envtest",
            "cluster": {
                "server": server,
                "certificate-authority-data": BASE64.encode(ca_pem),
            },
        }],
        "users": [{ "name": "envtest", "user": user }],
        "contexts": [{ "name": "envtest", "context": { "cluster": "envtest", "user": "envtest" } }],
        "current-context": "envtest",
    });
    std::fs::write(path, serde_json::to_vec_pretty(&kubeconfig)?)
        .with_context(|| format!("write {}", path.display()))
}
