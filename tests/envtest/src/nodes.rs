//! Pods without a kubelet: kube-scheduler places pods on fake nodes and
//! kwok ("Kubernetes WithOut Kubelet", sigs.k8s.io/kwok) plays the
//! kubelet's part of their status, so Deployments become Available through
//! the real deployment and ReplicaSet controllers.
//!
//! What kwok does is exactly the Stages in `tests/envtest/kwok/stages.yaml`
//! (the ones kwokctl runs by default): a node gets Ready conditions and
//! capacity and a Lease that kwok renews, a scheduled pod becomes Running
//! and Ready with a pod IP at once (no image is pulled, no container runs,
//! no probe is executed), a deleted pod is removed at once. Both run with
//! the admin kubeconfig: they stand in for cluster components, not for
//! anything Bulkhead grants.
//!
//! The API server taints every new node `node.kubernetes.io/not-ready`
//! (admission plugin TaintNodesByCondition); the controller manager's node
//! lifecycle controller removes the taint once the node reports Ready, so
//! [`crate::Options::with_pods`] runs that controller too.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Node, NodeSpec, Taint};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::binaries::Binaries;
use crate::control_plane::{ControlPlane, POD_CIDR, free_port};
use crate::process::{ManagedProcess, Supervisor};

/// The Stages kwok runs (kwok v0.8.0's node and pod "fast" stages).
pub const KWOK_STAGES: &str = include_str!("../kwok/stages.yaml");
/// The annotation that puts a node under kwok's management
/// (`--manage-nodes-with-annotation-selector`).
pub const KWOK_NODE_ANNOTATION: &str = "kwok.x-k8s.io/node";
/// Its value.
pub const KWOK_NODE_ANNOTATION_VALUE: &str = "fake";
/// Label every fake node carries, so they can be listed.
pub const FAKE_NODE_LABEL: &str = "type";
/// Its value.
pub const FAKE_NODE_LABEL_VALUE: &str = "kwok";
/// Name prefix of the nodes [`crate::Options::kwok_nodes`] registers.
pub const NODE_NAME_PREFIX: &str = "kwok-node-";

/// The node Lease duration kwok maintains (the kubelet's default).
const NODE_LEASE_SECONDS: u32 = 40;
/// How long a fake node may take to report Ready.
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The scheduler and kwok processes of a control plane.
#[derive(Debug)]
pub(crate) struct PodRuntime {
    pub(crate) scheduler: Option<ManagedProcess>,
    pub(crate) kwok: Option<ManagedProcess>,
}

/// Starts kube-scheduler (if `scheduler`) and kwok (if `kwok_nodes > 0`).
pub(crate) fn start(
    supervisor: &Supervisor,
    binaries: &Binaries,
    admin_kubeconfig: &Path,
    scheduler: bool,
    kwok_nodes: usize,
) -> Result<PodRuntime> {
    let logs = supervisor.work_dir().join("logs");
    let scheduler = if scheduler {
        let mut command = Command::new(binaries.kube_scheduler());
        command
            .arg(format!("--kubeconfig={}", admin_kubeconfig.display()))
            .arg(format!(
                "--authentication-kubeconfig={}",
                admin_kubeconfig.display()
            ))
            .arg(format!(
                "--authorization-kubeconfig={}",
                admin_kubeconfig.display()
            ))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", free_port()?))
            .arg("--leader-elect=false")
            .arg("--v=1");
        Some(supervisor.spawn("kube-scheduler", command, &logs.join("kube-scheduler.log"))?)
    } else {
        None
    };
    let kwok = if kwok_nodes > 0 {
        let stages = supervisor.work_dir().join("kwok-stages.yaml");
        std::fs::write(&stages, KWOK_STAGES).context("write the kwok stages")?;
        let mut command = Command::new(binaries.kwok());
        command
            .arg(format!("--kubeconfig={}", admin_kubeconfig.display()))
            .arg(format!("--config={}", stages.display()))
            .arg(format!(
                "--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}={KWOK_NODE_ANNOTATION_VALUE}"
            ))
            .arg(format!("--cidr={POD_CIDR}"))
            .arg("--node-ip=127.0.0.1")
            // Renew each node's Lease as a kubelet does (kwokctl's default),
            // so the node lifecycle controller sees live nodes.
            .arg(format!("--node-lease-duration-seconds={NODE_LEASE_SECONDS}"));
        Some(supervisor.spawn("kwok", command, &logs.join("kwok.log"))?)
    } else {
        None
    };
    Ok(PodRuntime { scheduler, kwok })
}

/// A fake node to register: its name, labels and taints.
#[derive(Clone, Debug, Default)]
pub struct FakeNode {
    /// `metadata.name`.
    pub name: String,
    /// Labels in addition to [`FAKE_NODE_LABEL`] and `kubernetes.io/hostname`.
    pub labels: BTreeMap<String, String>,
    /// `spec.taints`.
    pub taints: Vec<Taint>,
}

impl FakeNode {
    /// An untainted node called `name`.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }
}

impl ControlPlane {
    /// Registers `node` as a Node under kwok's management and waits until
    /// kwok reports it Ready. Fails if this control plane runs no kwok.
    pub async fn add_fake_node(&self, client: &Client, node: &FakeNode) -> Result<Node> {
        if self.pod_runtime().kwok.is_none() {
            bail!("this control plane runs no kwok (Options::kwok_nodes is 0)");
        }
        let mut labels = node.labels.clone();
        labels.insert(FAKE_NODE_LABEL.to_owned(), FAKE_NODE_LABEL_VALUE.to_owned());
        labels.insert("kubernetes.io/hostname".to_owned(), node.name.clone());
        labels.insert("kubernetes.io/os".to_owned(), "linux".to_owned());
        let object = Node {
            metadata: ObjectMeta {
                name: Some(node.name.clone()),
                labels: Some(labels),
                annotations: Some(BTreeMap::from([(
                    KWOK_NODE_ANNOTATION.to_owned(),
                    KWOK_NODE_ANNOTATION_VALUE.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                taints: (!node.taints.is_empty()).then(|| node.taints.clone()),
                ..NodeSpec::default()
            }),
            status: None,
        };
        let nodes: Api<Node> = Api::all(client.clone());
        match nodes.create(&PostParams::default(), &object).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => return Err(error).with_context(|| format!("create Node {}", node.name)),
        }
        let deadline = Instant::now() + NODE_READY_TIMEOUT;
        loop {
            if let Some(kwok) = &self.pod_runtime().kwok {
                kwok.ensure_running()?;
            }
            let live = nodes.get(&node.name).await?;
            let ready = live
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if ready {
                return Ok(live);
            }
            if Instant::now() > deadline {
                let log = self
                    .pod_runtime()
                    .kwok
                    .as_ref()
                    .map(|k| k.log_tail(20))
                    .unwrap_or_default();
                bail!(
                    "kwok did not make Node {} Ready within {NODE_READY_TIMEOUT:?}; kwok log:\n{log}",
                    node.name
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The kube-scheduler process, if this control plane runs one.
    pub fn scheduler(&self) -> Option<&ManagedProcess> {
        self.pod_runtime().scheduler.as_ref()
    }

    /// The kwok process, if this control plane runs one.
    pub fn kwok(&self) -> Option<&ManagedProcess> {
        self.pod_runtime().kwok.as_ref()
    }
}
