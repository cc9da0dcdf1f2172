//! The two ValidatingAdmissionPolicies of `manifests/`, enforced by the
//! real API server against requests made as the operator's ServiceAccount:
//! every other shape of secret-reader binding, every Deployment that
//! touches a Secret and every write outside Bulkhead's namespaces is
//! refused; everything the operator builds is admitted.

use anyhow::{Context, Result, ensure};
use bulkhead_envtest::tenants::example;
use bulkhead_envtest::{ControlPlane, OPERATOR_GROUPS, OPERATOR_USER};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding, Subject};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// A change to a Deployment, as JSON.
type Edit = Box<dyn Fn(&mut serde_json::Value)>;

const BINDING_GUARD: &str = "bulkhead-secret-reader-binding-guard";
const WRITE_GUARD: &str = "bulkhead-operator-write-guard";

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..PostParams::default()
    }
}

/// The outcome of a request in words: `admitted` or the policy that refused it.
fn outcome<T>(result: kube::Result<T>) -> String {
    match result {
        Ok(_) => "admitted".to_owned(),
        Err(kube::Error::Api(status)) => {
            for policy in [BINDING_GUARD, WRITE_GUARD] {
                if status.message.contains(policy) {
                    return format!("refused by {policy}");
                }
            }
            format!("refused otherwise ({}): {}", status.code, status.message)
        }
        Err(error) => format!("failed: {error}"),
    }
}

async fn as_operator(cp: &ControlPlane) -> Result<Client> {
    cp.client_as_user(OPERATOR_USER, OPERATOR_GROUPS).await
}

fn service_account(name: &str, namespace: &str) -> Subject {
    Subject {
        kind: "ServiceAccount".to_owned(),
        name: name.to_owned(),
        namespace: Some(namespace.to_owned()),
        ..Subject::default()
    }
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn the_secret_reader_can_be_bound_only_as_the_operator_binds_it() -> Result<()> {
    let cp = ControlPlane::shared();
    cp.install_bulkhead();
    let admin = cp.admin_client().await?;
    let (id, other) = ("ad-bind", "ad-bind-other");
    for tenant in [id, other] {
        cp.kubectl_apply(&example("minimal.yaml", tenant)?)?;
    }
    let live = cp.wait_reconciled(&admin, id).await?;
    cp.wait_reconciled(&admin, other).await?;
    let ns = cp.tenant_namespace(id);
    let built = cp.desired_children(&live)?.role_binding;
    let operator = as_operator(cp).await?;
    let bindings: Api<RoleBinding> = Api::namespaced(operator.clone(), &ns);

    let variant = |name: &str, subjects: Vec<Subject>| {
        let mut binding = built.clone();
        binding.metadata = ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(ns.clone()),
            ..ObjectMeta::default()
        };
        binding.subjects = Some(subjects);
        binding
    };
    let own = built.subjects.clone().unwrap_or_default();
    let cases = [
        (
            "the namespace's default ServiceAccount",
            variant("probe-default", vec![service_account("default", &ns)]),
        ),
        (
            "another tenant's server",
            variant(
                "probe-other",
                vec![service_account("mcp-server", &cp.tenant_namespace(other))],
            ),
        ),
        (
            "the operator itself",
            variant(
                "probe-operator",
                vec![service_account("bulkhead-operator", "bulkhead-system")],
            ),
        ),
        (
            "a second subject beside the server",
            variant(
                "probe-two",
                [own.clone(), vec![service_account("default", &ns)]].concat(),
            ),
        ),
        (
            "a group",
            variant(
                "probe-group",
                vec![Subject {
                    kind: "Group".to_owned(),
                    name: "system:authenticated".to_owned(),
                    api_group: Some("rbac.authorization.k8s.io".to_owned()),
                    ..Subject::default()
                }],
            ),
        ),
        (
            "a user",
            variant(
                "probe-user",
                vec![Subject {
                    kind: "User".to_owned(),
                    name: "mallory".to_owned(),
                    api_group: Some("rbac.authorization.k8s.io".to_owned()),
                    ..Subject::default()
                }],
            ),
        ),
        ("no subject", variant("probe-none", Vec::new())),
    ];
    let mut wrong = Vec::new();
    for (what, binding) in &cases {
        let result = outcome(bindings.create(&dry_run(), binding).await);
        if result != format!("refused by {BINDING_GUARD}") {
            wrong.push(format!("binding to {what}: {result}"));
        }
    }
    // Re-pointing the live binding at another subject is refused too.
    let result = outcome(
        bindings
            .patch(
                &built.name_any(),
                &PatchParams { dry_run: true, ..PatchParams::default() },
                &Patch::Merge(json!({"subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}]})),
            )
            .await,
    );
    if result != format!("refused by {BINDING_GUARD}") {
        wrong.push(format!("patching the subject: {result}"));
    }
    // Cluster-wide: the operator may not create ClusterRoleBindings at all
    // (RBAC), and not even an administrator may bind the role cluster-wide.
    let cluster_wide = ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some("probe-cluster-wide".to_owned()),
            ..ObjectMeta::default()
        },
        role_ref: built.role_ref.clone(),
        subjects: Some(own.clone()),
    };
    let by_operator = Api::<ClusterRoleBinding>::all(operator.clone())
        .create(&dry_run(), &cluster_wide)
        .await;
    ensure!(
        matches!(&by_operator, Err(kube::Error::Api(s)) if s.code == 403),
        "the operator could create a ClusterRoleBinding: {by_operator:?}"
    );
    let result = outcome(
        Api::<ClusterRoleBinding>::all(admin.clone())
            .create(&dry_run(), &cluster_wide)
            .await,
    );
    if result != format!("refused by {BINDING_GUARD}") {
        wrong.push(format!("ClusterRoleBinding by the admin: {result}"));
    }
    // The binding exactly as built is admitted.
    let result = outcome(
        bindings
            .create(&dry_run(), &variant("probe-as-built", own))
            .await,
    );
    if result != "admitted" {
        wrong.push(format!("the binding as built: {result}"));
    }
    ensure!(wrong.is_empty(), "binding guard:\n{}", wrong.join("\n"));
    for tenant in [id, other] {
        cp.delete_tenant(&admin, tenant).await?;
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn operator_deployments_touching_a_secret_are_refused() -> Result<()> {
    let cp = ControlPlane::shared();
    cp.install_bulkhead();
    let admin = cp.admin_client().await?;
    let id = "ad-deploy";
    cp.kubectl_apply(&example("full.yaml", id)?)?;
    let live = cp.wait_reconciled(&admin, id).await?;
    let ns = cp.tenant_namespace(id);
    let built = cp.desired_children(&live)?.deployment;
    let deployments: Api<Deployment> = Api::namespaced(as_operator(cp).await?, &ns);
    let template = serde_json::to_value(&built)?;

    // Each case edits the Deployment as built, as JSON.
    let secret_volume = json!({"name": "stolen", "secret": {"secretName": "bulkhead-credentials"}});
    let projected_secret = json!({"name": "stolen", "projected": {"sources": [{"secret": {"name": "bulkhead-api-keys"}}]}});
    let env_from = json!([{"secretRef": {"name": "bulkhead-credentials"}}]);
    let env_ref = json!([{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "bulkhead-credentials", "key": "github_token"}}}]);
    let cases: Vec<(&str, Edit)> = vec![
        (
            "a Secret volume",
            Box::new(move |d| push(d, "/spec/template/spec/volumes", secret_volume.clone())),
        ),
        (
            "a projected Secret",
            Box::new(move |d| push(d, "/spec/template/spec/volumes", projected_secret.clone())),
        ),
        (
            "envFrom a Secret",
            Box::new(move |d| {
                set(
                    d,
                    "/spec/template/spec/containers/0/envFrom",
                    env_from.clone(),
                )
            }),
        ),
        (
            "env from a secretKeyRef",
            Box::new(move |d| set(d, "/spec/template/spec/containers/0/env", env_ref.clone())),
        ),
        (
            "another ServiceAccount",
            Box::new(|d| {
                set(
                    d,
                    "/spec/template/spec/serviceAccountName",
                    json!("default"),
                )
            }),
        ),
        (
            "no ServiceAccount name",
            Box::new(|d| remove(d, "/spec/template/spec/serviceAccountName")),
        ),
        (
            "an init container",
            Box::new(|d| {
                let image = d
                    .pointer("/spec/template/spec/containers/0/image")
                    .cloned()
                    .unwrap_or_default();
                let context = d
                    .pointer("/spec/template/spec/containers/0/securityContext")
                    .cloned()
                    .unwrap_or_default();
                set(
                    d,
                    "/spec/template/spec/initContainers",
                    json!([{"name": "init", "image": image, "securityContext": context}]),
                );
            }),
        ),
    ];
    let mut wrong = Vec::new();
    for (index, (what, edit)) in cases.iter().enumerate() {
        let mut object = template.clone();
        set(
            &mut object,
            "/metadata",
            json!({"name": format!("probe-{index}"), "namespace": ns}),
        );
        edit(&mut object);
        let deployment: Deployment =
            serde_json::from_value(object).with_context(|| what.to_string())?;
        let result = outcome(deployments.create(&dry_run(), &deployment).await);
        if result != format!("refused by {WRITE_GUARD}") {
            wrong.push(format!("{what}: {result}"));
        }
    }
    let mut as_built = built.clone();
    as_built.metadata = ObjectMeta {
        name: Some("probe-as-built".to_owned()),
        namespace: Some(ns.clone()),
        ..ObjectMeta::default()
    };
    let result = outcome(deployments.create(&dry_run(), &as_built).await);
    if result != "admitted" {
        wrong.push(format!("the Deployment as built: {result}"));
    }
    ensure!(
        wrong.is_empty(),
        "write guard on Deployments:\n{}",
        wrong.join("\n")
    );
    cp.delete_tenant(&admin, id).await
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn the_operator_cannot_write_outside_bulkhead_namespaces() -> Result<()> {
    let cp = ControlPlane::shared();
    cp.install_bulkhead();
    let admin = cp.admin_client().await?;
    let operator = as_operator(cp).await?;
    let unmanaged = "ad-unmanaged";
    Api::<Namespace>::all(admin.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(unmanaged.to_owned()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            },
        )
        .await?;
    let config_map = |name: &str| ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    };
    let mut wrong = Vec::new();
    for namespace in [unmanaged, "default", "kube-system", "bulkhead-system"] {
        let result = outcome(
            Api::<ConfigMap>::namespaced(operator.clone(), namespace)
                .create(&dry_run(), &config_map("probe"))
                .await,
        );
        if result != format!("refused by {WRITE_GUARD}") {
            wrong.push(format!("ConfigMap in {namespace}: {result}"));
        }
    }
    let namespaces: Api<Namespace> = Api::all(operator.clone());
    let result = outcome(
        namespaces
            .create(
                &dry_run(),
                &Namespace {
                    metadata: ObjectMeta {
                        name: Some("ad-unlabelled".to_owned()),
                        ..ObjectMeta::default()
                    },
                    ..Namespace::default()
                },
            )
            .await,
    );
    if result != format!("refused by {WRITE_GUARD}") {
        wrong.push(format!("an unlabelled namespace: {result}"));
    }
    // Claiming an existing namespace by adding Bulkhead's label.
    let result = outcome(
        namespaces
            .patch(
                unmanaged,
                &PatchParams {
                    dry_run: true,
                    ..PatchParams::default()
                },
                &Patch::Merge(
                    json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "bulkhead"}}}),
                ),
            )
            .await,
    );
    if result != format!("refused by {WRITE_GUARD}") {
        wrong.push(format!("labelling an existing namespace: {result}"));
    }
    // The same request by the admin is not the guard's business.
    let result = outcome(
        Api::<ConfigMap>::namespaced(admin.clone(), unmanaged)
            .create(&dry_run(), &config_map("probe"))
            .await,
    );
    if result != "admitted" {
        wrong.push(format!("the admin's ConfigMap: {result}"));
    }
    ensure!(
        wrong.is_empty(),
        "write guard on namespaces:\n{}",
        wrong.join("\n")
    );
    Api::<Namespace>::all(admin)
        .delete(unmanaged, &Default::default())
        .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn everything_the_operator_builds_is_admitted() -> Result<()> {
    let cp = ControlPlane::shared();
    cp.install_bulkhead();
    let admin = cp.admin_client().await?;
    let mark = cp.audit().mark()?;
    let mut refused = Vec::new();
    for (file, id) in [
        ("minimal.yaml", "ad-built-min"),
        ("full.yaml", "ad-built-full"),
    ] {
        cp.kubectl_apply(&example(file, id)?)?;
        let live = cp.wait_reconciled(&admin, id).await?;
        let ns = cp.tenant_namespace(id);
        // The operator's own writes for this Tenant: none was refused.
        for event in cp.audit().since(mark)? {
            let object = event.object();
            if event.username() == OPERATOR_USER
                && event.is_write()
                && (object.namespace == ns || object.name == ns || object.name == id)
                && event.code() >= 400
            {
                refused.push(event.summary());
            }
        }
        // And a dry-run server-side apply of every object as built, as the
        // operator, is admitted (UPDATE of the existing children).
        let operator = as_operator(cp).await?;
        let objects = cp.desired_children(&live)?.to_json_in_apply_order()?;
        let params = PatchParams::apply("envtest-dry-run").force().dry_run();
        for object in objects {
            let kind = object["kind"].as_str().unwrap_or_default().to_owned();
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let namespace = object["metadata"]["namespace"].as_str().map(str::to_owned);
            let result = apply_dynamic(&operator, &object, namespace.as_deref(), &params).await;
            if let Err(error) = result {
                refused.push(format!("{kind} {name}: {error:#}"));
            }
        }
    }
    ensure!(refused.is_empty(), "refused:\n{}", refused.join("\n"));
    for id in ["ad-built-min", "ad-built-full"] {
        cp.delete_tenant(&admin, id).await?;
    }
    Ok(())
}

/// Server-side apply of any built object through the discovery-free dynamic API.
async fn apply_dynamic(
    client: &Client,
    object: &serde_json::Value,
    namespace: Option<&str>,
    params: &PatchParams,
) -> Result<()> {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let api_version = object["apiVersion"].as_str().context("apiVersion")?;
    let kind = object["kind"].as_str().context("kind")?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let name = object["metadata"]["name"].as_str().context("name")?;
    api.patch(name, params, &Patch::Apply(object)).await?;
    Ok(())
}

fn set(object: &mut serde_json::Value, pointer: &str, value: serde_json::Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap_or(("", pointer));
    if let Some(serde_json::Value::Object(map)) = object.pointer_mut(parent) {
        map.insert(key.to_owned(), value);
    }
}

fn remove(object: &mut serde_json::Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').unwrap_or(("", pointer));
    if let Some(serde_json::Value::Object(map)) = object.pointer_mut(parent) {
        map.remove(key);
    }
}

fn push(object: &mut serde_json::Value, pointer: &str, value: serde_json::Value) {
    match object.pointer_mut(pointer) {
        Some(serde_json::Value::Array(items)) => items.push(value),
        _ => set(object, pointer, json!([value])),
    }
}
