//! Installing Bulkhead as a user does, and running the real operator.
//!
//! `kubectl apply -k manifests/` (the README's command, with the kubectl
//! built from the pinned release), then the `bulkhead-operator run` binary
//! as a local process authenticated with a TokenRequest token of the
//! `bulkhead-operator` ServiceAccount. So the operator has exactly the
//! rights `manifests/` gives it: a missing verb fails a test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::binaries::{operator_binary, repository_root};
use crate::control_plane::{ControlPlane, POD_CIDR, SERVICE_CIDR, block_on, free_port};
use crate::process::ManagedProcess;

/// The operator's namespace (`manifests/operator/namespace.yaml`).
pub const OPERATOR_NAMESPACE: &str = "bulkhead-system";
/// The operator's ServiceAccount (`manifests/operator/serviceaccount.yaml`).
pub const OPERATOR_SERVICE_ACCOUNT: &str = "bulkhead-operator";
/// The user name the API server gives the operator's token.
pub const OPERATOR_USER: &str = "system:serviceaccount:bulkhead-system:bulkhead-operator";
/// The groups the API server gives the operator's token.
pub const OPERATOR_GROUPS: &[&str] = &[
    "system:serviceaccounts",
    "system:serviceaccounts:bulkhead-system",
    "system:authenticated",
];
/// The leader election Lease (`--lease-name` default).
pub const LEASE_NAME: &str = "bulkhead-operator";
/// Identity of the operator every test binary shares.
pub const SHARED_OPERATOR_IDENTITY: &str = "envtest-operator-0";

/// How long the operator may take to win the leader election.
const LEADING_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the admission policies may take to be enforced after install.
const POLICY_TIMEOUT: Duration = Duration::from_secs(30);

/// Bulkhead installed from `manifests/`, with the shared operator leading.
#[derive(Debug)]
pub struct Installation {
    operator: Operator,
    install_time: Duration,
}

impl Installation {
    /// The shared operator process (identity [`SHARED_OPERATOR_IDENTITY`]).
    pub fn operator(&self) -> &Operator {
        &self.operator
    }

    /// Time to apply the manifests and get the operator leading.
    pub fn install_time(&self) -> Duration {
        self.install_time
    }
}

/// How to run one `bulkhead-operator run` process.
#[derive(Clone, Debug)]
pub struct OperatorOptions {
    /// `--identity` (the Lease holder name).
    pub identity: String,
    /// Further arguments after the harness's own (later flags win).
    pub extra_args: Vec<String>,
}

impl OperatorOptions {
    /// A replica called `identity`, with the harness's cluster settings.
    pub fn new(identity: &str) -> Self {
        Self {
            identity: identity.to_owned(),
            extra_args: Vec::new(),
        }
    }
}

/// A running `bulkhead-operator run` process.
#[derive(Debug)]
pub struct Operator {
    process: ManagedProcess,
    identity: String,
    admin_addr: SocketAddr,
    kubeconfig: PathBuf,
}

impl Operator {
    /// Its `--identity`.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Its admin server (`/metrics`, `/healthz`, `/readyz`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The kubeconfig it runs with (the ServiceAccount token).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The process (pid, log, signals).
    pub fn process(&self) -> &ManagedProcess {
        &self.process
    }

    /// The last `lines` lines of its log (JSON lines, stdout and stderr).
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// Waits until this replica holds the leader Lease.
    pub async fn wait_leading(&self, admin: &Client, timeout: Duration) -> Result<()> {
        let leases: Api<Lease> = Api::namespaced(admin.clone(), OPERATOR_NAMESPACE);
        let deadline = Instant::now() + timeout;
        let mut holder = None;
        while Instant::now() < deadline {
            self.process.ensure_running()?;
            holder = leases
                .get_opt(LEASE_NAME)
                .await?
                .and_then(|lease| lease.spec?.holder_identity);
            if holder.as_deref() == Some(self.identity.as_str()) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!(
            "operator {} did not lead within {timeout:?} (holder: {holder:?}); log:\n{}",
            self.identity,
            self.log_tail(30)
        )
    }
}

impl ControlPlane {
    /// Bulkhead installed on the shared control plane, with the shared
    /// operator leading: installed on first use, blocking meanwhile; panics
    /// with the cause if installation fails.
    pub fn install_bulkhead(&self) -> &Installation {
        let installation = self.installation_cell().get_or_init(|| {
            block_on(self.install())
                .and_then(|installed| installed)
                .map_err(|e| format!("{e:#}"))
        });
        match installation {
            Ok(installation) => installation,
            Err(error) => panic!("installing Bulkhead failed: {error}"),
        }
    }

    async fn install(&self) -> Result<Installation> {
        let started = Instant::now();
        self.apply_manifests()?;
        let admin = self.admin_client().await?;
        self.wait_admission_policies(&admin).await?;
        let operator = self
            .start_operator(&OperatorOptions::new(SHARED_OPERATOR_IDENTITY))
            .await?;
        operator.wait_leading(&admin, LEADING_TIMEOUT).await?;
        let install_time = started.elapsed();
        eprintln!(
            "envtest: Bulkhead installed and operator {SHARED_OPERATOR_IDENTITY} leading in {:.1} s",
            install_time.as_secs_f64()
        );
        Ok(Installation {
            operator,
            install_time,
        })
    }

    /// `kubectl apply -k manifests/`, then waits for the Tenant CRD to be
    /// Established. Calls are serialised: tests of one binary run in
    /// parallel, and two concurrent first applies both try to create
    /// `bulkhead-system`, so one of them fails with AlreadyExists.
    pub fn apply_manifests(&self) -> Result<()> {
        static APPLYING: Mutex<()> = Mutex::new(());
        let _one_at_a_time = APPLYING.lock().unwrap_or_else(PoisonError::into_inner);
        let manifests = repository_root().join("manifests");
        let manifests = manifests.to_string_lossy();
        self.kubectl_ok(&["apply", "-k", &manifests])?;
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "crd/tenants.bulkhead.dev",
            "--timeout=60s",
        ])?;
        Ok(())
    }

    /// Waits until both ValidatingAdmissionPolicies refuse what they must
    /// (the API server loads new policies asynchronously), probing with
    /// dry-run requests that store nothing.
    async fn wait_admission_policies(&self, admin: &Client) -> Result<()> {
        let as_operator = self.client_as_user(OPERATOR_USER, OPERATOR_GROUPS).await?;
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        let binding = ClusterRoleBinding {
            metadata: ObjectMeta {
                name: Some("envtest-policy-probe".to_owned()),
                ..ObjectMeta::default()
            },
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".to_owned(),
                kind: "ClusterRole".to_owned(),
                name: "bulkhead-tenant-secret-reader".to_owned(),
            },
            subjects: Some(vec![Subject {
                kind: "Group".to_owned(),
                name: "system:authenticated".to_owned(),
                api_group: Some("rbac.authorization.k8s.io".to_owned()),
                ..Subject::default()
            }]),
        };
        let config_map = ConfigMap {
            metadata: ObjectMeta {
                name: Some("envtest-policy-probe".to_owned()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        };
        let bindings: Api<ClusterRoleBinding> = Api::all(admin.clone());
        let config_maps: Api<ConfigMap> = Api::namespaced(as_operator, "default");
        let deadline = Instant::now() + POLICY_TIMEOUT;
        loop {
            // Refused by the policy itself, not for some other reason.
            let binding_refused = matches!(
                bindings.create(&dry_run, &binding).await,
                Err(kube::Error::Api(status)) if status.message.contains("bulkhead-secret-reader-binding-guard")
            );
            let write_refused = matches!(
                config_maps.create(&dry_run, &config_map).await,
                Err(kube::Error::Api(status)) if status.message.contains("bulkhead-operator-write-guard")
            );
            if binding_refused && write_refused {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the admission policies were not enforced within {POLICY_TIMEOUT:?} \
                     (binding guard: {binding_refused}, write guard: {write_refused})"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Starts `bulkhead-operator run` authenticated as the
    /// `bulkhead-operator` ServiceAccount (a 24-hour TokenRequest token in a
    /// kubeconfig of its own), with leader election on as in production, the
    /// admin server on a free loopback port, and the cluster settings of
    /// this control plane. Returns once the process is started; see
    /// [`Operator::wait_leading`].
    pub async fn start_operator(&self, options: &OperatorOptions) -> Result<Operator> {
        let binary = operator_binary()?;
        let token = self
            .service_account_token(OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT, 86_400)
            .await?;
        let kubeconfig = self
            .kubeconfig_with_token(&format!("operator-{}.kubeconfig", options.identity), &token)?;
        let admin_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let mut command = Command::new(binary);
        // Settings come from flags only, never from the caller's environment.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("BULKHEAD_")
                || name == "POD_NAME"
                || name == "KUBERNETES_SERVICE_HOST"
            {
                command.env_remove(name);
            }
        }
        command
            .env("KUBECONFIG", &kubeconfig)
            .arg("run")
            .arg(format!("--admin-addr={admin_addr}"))
            .arg(format!("--identity={}", options.identity))
            .arg("--leader-election=true")
            .arg("--log-format=json")
            .arg("--api-server-cidr=127.0.0.1/32")
            .arg(format!("--api-server-port={}", self.api_port()))
            .arg(format!("--cluster-cidr={POD_CIDR}"))
            .arg(format!("--cluster-cidr={SERVICE_CIDR}"))
            .args(&options.extra_args);
        let log = self
            .work_dir()
            .join("logs")
            .join(format!("operator-{}.log", options.identity));
        let process = self.supervisor().spawn(
            &format!("bulkhead-operator {}", options.identity),
            command,
            &log,
        )?;
        Ok(Operator {
            process,
            identity: options.identity.clone(),
            admin_addr,
            kubeconfig,
        })
    }
}
