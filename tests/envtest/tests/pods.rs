//! Tenants that become Ready end to end: kube-scheduler places the server
//! pods on fake nodes, kwok makes them Running and Ready, the real
//! deployment and ReplicaSet controllers make the Deployment Available, and
//! the operator reports the Tenant Ready. Read as a platform team reads it:
//! `kubectl wait`, `kubectl get tenants`, kstatus (Flux) and the README's
//! Argo CD health check (Lua, evaluated by a Lua 5.1 interpreter).
//! Then the self-healing a cluster relies on: a Deployment scaled to zero by
//! hand and a deleted server pod.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bulkhead_crds::Tenant;
use bulkhead_envtest::binaries::repository_root;
use bulkhead_envtest::kstatus::{KStatus, kstatus};
use bulkhead_envtest::tenants::{example, wait_for};
use bulkhead_envtest::{ControlPlane, FakeNode, OPERATOR_USER, Options};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Taint};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

/// How long a Tenant may take from apply to Ready: namespace, nine
/// children, scheduling, kwok and the Deployment's rollout, on a busy
/// 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Label and taint of the node the full example's pods must land on
/// (`manifests/examples/full.yaml`: nodeSelector and toleration).
const SANDBOX_KEY: &str = "bulkhead.dev/sandboxed";

fn control_plane() -> &'static ControlPlane {
    ControlPlane::shared_with(&Options::with_pods(2))
}

/// What a platform team provides for the full example: the RuntimeClass
/// `gvisor` it names and a node for sandboxed pods, labelled and tainted.
async fn sandbox_node(cp: &ControlPlane, admin: &Client) -> Result<()> {
    let classes: Api<RuntimeClass> = Api::all(admin.clone());
    let class = RuntimeClass {
        metadata: ObjectMeta {
            name: Some("gvisor".to_owned()),
            ..ObjectMeta::default()
        },
        handler: "runsc".to_owned(),
        ..RuntimeClass::default()
    };
    match classes.create(&PostParams::default(), &class).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => return Err(error).context("create RuntimeClass gvisor"),
    }
    cp.add_fake_node(
        admin,
        &FakeNode {
            name: "kwok-sandboxed-0".to_owned(),
            labels: BTreeMap::from([(SANDBOX_KEY.to_owned(), "true".to_owned())]),
            taints: vec![Taint {
                key: SANDBOX_KEY.to_owned(),
                value: Some("true".to_owned()),
                effect: "NoSchedule".to_owned(),
                ..Taint::default()
            }],
        },
    )
    .await?;
    Ok(())
}

/// `kubectl wait --for=condition=Ready tenant/<id>`, as the README says.
fn kubectl_wait_ready(cp: &ControlPlane, id: &str) -> Result<()> {
    let timeout = format!("--timeout={}s", READY_TIMEOUT.as_secs());
    cp.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        &format!("tenant/{id}"),
        &timeout,
    ])
    .map(drop)
}

/// The Tenant as the API server returns it, as JSON.
fn tenant_json(cp: &ControlPlane, id: &str) -> Result<Value> {
    let text = cp.kubectl_ok(&["get", "tenant", id, "-o", "json"])?;
    serde_json::from_str(&text).context("parse kubectl's Tenant")
}

/// The Argo CD health check from the README's `argocd-cm` example: the Lua
/// under `resource.customizations.health.bulkhead.dev_Tenant: |`.
fn readme_argo_health_script() -> Result<String> {
    let readme = std::fs::read_to_string(repository_root().join("README.md"))?;
    let marker = "resource.customizations.health.bulkhead.dev_Tenant: |";
    let start = readme
        .find(marker)
        .context("the README has no Argo CD health check for Tenant")?;
    let mut script = String::new();
    for line in readme[start + marker.len()..].lines().skip(1) {
        if line.starts_with("```") {
            break;
        }
        script.push_str(line.strip_prefix("  ").unwrap_or(line));
        script.push('\n');
    }
    ensure!(script.contains("return hs"), "no script found: {script}");
    Ok(script)
}

/// Evaluates the README's health check on `object` as Argo CD does: the
/// object is the global `obj`, the script returns `{status, message}`.
fn argo_health(object: &Value) -> Result<(String, String)> {
    let lua = mlua::Lua::new();
    let options = mlua::SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    let obj = mlua::LuaSerdeExt::to_value_with(&lua, object, options)
        .map_err(|e| anyhow::anyhow!("convert the object for Lua: {e}"))?;
    lua.globals()
        .set("obj", obj)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let health: mlua::Table = lua
        .load(readme_argo_health_script()?)
        .eval()
        .map_err(|e| anyhow::anyhow!("the health check failed: {e}"))?;
    let status: String = health.get("status").map_err(|e| anyhow::anyhow!("{e}"))?;
    let message: String = health.get("message").map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((status, message))
}

/// The server pods of `namespace` that are Running and Ready, by name, with
/// the node each runs on.
async fn ready_pods(admin: &Client, namespace: &str) -> Result<BTreeMap<String, String>> {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=bulkhead-server"))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter(|pod| {
            let status = pod.status.clone().unwrap_or_default();
            status.phase.as_deref() == Some("Running")
                && status
                    .conditions
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        })
        .map(|pod| {
            let node = pod.spec.and_then(|spec| spec.node_name).unwrap_or_default();
            (pod.metadata.name.unwrap_or_default(), node)
        })
        .collect())
}

async fn wait_ready_pods(
    admin: &Client,
    namespace: &str,
    count: usize,
) -> Result<BTreeMap<String, String>> {
    wait_for(
        &format!("{count} Running and Ready server pods in {namespace}"),
        READY_TIMEOUT,
        || async {
            let pods = ready_pods(admin, namespace).await?;
            Ok((pods.len() == count).then_some(pods))
        },
    )
    .await
}

fn deployment_available(deployment: &Deployment) -> bool {
    deployment
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Available" && c.status == "True")
        })
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn the_examples_become_ready_as_kubectl_kstatus_and_argo_cd_read_it() -> Result<()> {
    let cp = control_plane();
    cp.install_bulkhead();
    let admin = cp.admin_client().await?;
    sandbox_node(cp, &admin).await?;

    let cases = [
        ("minimal.yaml", "pods-minimal", 1),
        ("full.yaml", "pods-full", 2),
    ];
    for (file, id, _) in cases {
        cp.kubectl_apply(&example(file, id)?)?;
    }
    for (file, id, replicas) in cases {
        kubectl_wait_ready(cp, id).with_context(|| format!("{file} as {id}"))?;
        let namespace = cp.tenant_namespace(id);
        let pods = wait_ready_pods(&admin, &namespace, replicas).await?;
        if file == "full.yaml" {
            // nodeSelector and toleration of the example, applied by the
            // real scheduler: only the sandboxed node qualifies.
            ensure!(
                pods.values().all(|node| node == "kwok-sandboxed-0"),
                "{id}'s pods run on {pods:?}"
            );
        } else {
            ensure!(
                pods.values().all(|node| node.starts_with("kwok-node-")),
                "{id}'s pods run on {pods:?}"
            );
        }
        let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &namespace);
        let deployment = deployments.get("mcp-server").await?;
        ensure!(
            deployment_available(&deployment),
            "{id}: {:?}",
            deployment.status
        );
        ensure!(
            deployment.status.as_ref().and_then(|s| s.ready_replicas) == Some(replicas as i32),
            "{id}: {:?}",
            deployment.status
        );

        let object = tenant_json(cp, id)?;
        let conditions = object["status"]["conditions"]
            .as_array()
            .context("no conditions")?;
        for kind in [
            "Ready",
            "NamespaceReady",
            "NetworkIsolated",
            "CredentialsBound",
            "ServerAvailable",
        ] {
            ensure!(
                conditions
                    .iter()
                    .any(|c| c["type"] == kind && c["status"] == "True"),
                "{id}: {kind} is not True: {conditions:?}"
            );
        }
        ensure!(
            !conditions
                .iter()
                .any(|c| (c["type"] == "Reconciling" || c["type"] == "Stalled")
                    && c["status"] == "True"),
            "{id}: Ready and still Reconciling or Stalled: {conditions:?}"
        );
        let (status, reason) = kstatus(&object);
        ensure!(
            status == KStatus::Current,
            "{id}: kstatus {status:?} ({reason})"
        );
        let (health, message) = argo_health(&object)?;
        ensure!(
            health == "Healthy",
            "{id}: Argo CD health {health} ({message})"
        );
    }

    // `kubectl get tenants`: the printer columns with the live values.
    let table = cp.kubectl_ok(&["get", "tenants"])?;
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    ensure!(
        header == ["NAME", "NAMESPACE", "READY", "AGE"],
        "kubectl get tenants:\n{table}"
    );
    for (_, id, _) in cases {
        let row = lines
            .clone()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|row| row.first() == Some(&id))
            .with_context(|| format!("no row for {id}:\n{table}"))?;
        ensure!(
            row.get(1) == Some(&cp.tenant_namespace(id).as_str()) && row.get(2) == Some(&"True"),
            "{id}'s row: {row:?}\n{table}"
        );
    }

    // The evaluators can disagree: the same object before the operator saw
    // its latest spec, and while the server is still starting.
    let mut stale = tenant_json(cp, "pods-minimal")?;
    stale["metadata"]["generation"] =
        json!(stale["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
    ensure!(kstatus(&stale).0 == KStatus::InProgress);
    ensure!(argo_health(&stale)?.0 == "Progressing");
    let mut starting = tenant_json(cp, "pods-minimal")?;
    for condition in starting["status"]["conditions"]
        .as_array_mut()
        .context("conditions")?
    {
        if condition["type"] == "Ready" {
            condition["status"] = json!("False");
        }
    }
    starting["status"]["conditions"]
        .as_array_mut()
        .context("conditions")?
        .push(json!({"type": "Reconciling", "status": "True", "reason": "ServerStarting"}));
    ensure!(kstatus(&starting).0 == KStatus::InProgress);
    ensure!(argo_health(&starting)?.0 == "Progressing");

    for (_, id, _) in cases {
        cp.delete_tenant(&admin, id).await?;
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn a_deployment_scaled_to_zero_and_a_deleted_pod_are_healed() -> Result<()> {
    let cp = control_plane();
    cp.install_bulkhead();
    let admin = cp.admin_client().await?;
    let id = "pods-heal";
    let namespace = cp.tenant_namespace(id);
    cp.kubectl_apply(&example("minimal.yaml", id)?)?;
    kubectl_wait_ready(cp, id)?;
    wait_ready_pods(&admin, &namespace, 1).await?;

    // Scaled to zero by hand: the operator puts its replica count back.
    let mark = cp.audit().mark()?;
    cp.kubectl_ok(&[
        "scale",
        "deployment/mcp-server",
        "-n",
        &namespace,
        "--replicas=0",
    ])?;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &namespace);
    wait_for("the Deployment scaled back to 1", READY_TIMEOUT, || async {
        let deployment = deployments.get("mcp-server").await?;
        let spec = deployment.spec.as_ref().and_then(|s| s.replicas);
        let ready = deployment.status.as_ref().and_then(|s| s.ready_replicas);
        Ok(
            (spec == Some(1) && ready == Some(1) && deployment_available(&deployment))
                .then_some(()),
        )
    })
    .await?;
    let healed_by_operator = cp.audit().since(mark)?.into_iter().any(|e| {
        e.username() == OPERATOR_USER
            && e.is_write()
            && e.object().resource == "deployments"
            && e.object().namespace == namespace
    });
    ensure!(
        healed_by_operator,
        "the operator did not write the Deployment"
    );
    kubectl_wait_ready(cp, id)?;
    // Whether the ReplicaSet controller removed the first pod before the
    // operator scaled back up is a race; either way one pod serves.
    let after_scale = wait_ready_pods(&admin, &namespace, 1).await?;

    // A deleted pod: the ReplicaSet replaces it (kwok completes the
    // deletion in the kubelet's place), and the Tenant is Ready again.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &namespace);
    let Some(victim) = after_scale.keys().next().cloned() else {
        bail!("no pod to delete");
    };
    let uid = pods.get(&victim).await?.metadata.uid;
    cp.kubectl_ok(&["delete", "pod", &victim, "-n", &namespace, "--wait=true"])?;
    let replaced = wait_ready_pods(&admin, &namespace, 1).await?;
    ensure!(!replaced.contains_key(&victim), "{victim} was not replaced");
    let replacement = replaced.keys().next().context("no replacement")?;
    let owner = pods
        .get(replacement)
        .await?
        .metadata
        .owner_references
        .unwrap_or_default();
    ensure!(
        owner.iter().any(|o| o.kind == "ReplicaSet"),
        "the replacement is not the ReplicaSet's: {owner:?}"
    );
    ensure!(
        pods.get_opt(&victim)
            .await?
            .is_none_or(|p| p.metadata.uid != uid)
    );
    kubectl_wait_ready(cp, id)?;
    let tenant: Api<Tenant> = Api::all(admin.clone());
    let status = tenant.get(id).await?.status.context("no status")?;
    ensure!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "ServerAvailable" && c.status == "True"),
        "{status:?}"
    );
    cp.delete_tenant(&admin, id).await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn a_server_pod_the_api_server_refuses_is_reported_with_the_cause() -> Result<()> {
    let cp = control_plane();
    cp.install_bulkhead();
    let admin = cp.admin_client().await?;
    let id = "pods-refused";
    // A RuntimeClass the cluster does not have: the ReplicaSet controller's
    // pod creations are refused by RuntimeClass admission.
    let mut tenant = example("minimal.yaml", id)?;
    tenant.spec.server.runtime_class_name = Some("no-such-class".to_owned());
    cp.kubectl_apply(&tenant)?;
    let tenants: Api<Tenant> = Api::all(admin.clone());
    let message = wait_for(
        "ServerAvailable=False naming the refused pod's cause",
        READY_TIMEOUT,
        || async {
            let status = tenants.get(id).await?.status.unwrap_or_default();
            Ok(status
                .conditions
                .iter()
                .find(|c| {
                    c.type_ == "ServerAvailable"
                        && c.status == "False"
                        && c.message.contains("no-such-class")
                })
                .map(|c| c.message.clone()))
        },
    )
    .await
    .with_context(|| format!("{:?}", tenant_json(cp, id).map(|t| t["status"].clone())))?;
    ensure!(message.contains("RuntimeClass"), "{message}");
    let object = tenant_json(cp, id)?;
    ensure!(kstatus(&object).0 == KStatus::InProgress, "{object}");
    ensure!(argo_health(&object)?.0 == "Progressing", "{object}");
    cp.delete_tenant(&admin, id).await?;
    Ok(())
}
