//! A Tenant's life on the real API server with the real operator binary:
//! children, status, a no-op reconcile that writes nothing (counted in the
//! API server's audit log), healing of hand edits and deletions, and a spec
//! change that rolls the server's pod template.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bulkhead_crds::Tenant;
use bulkhead_crds::tenant::CredentialRef;
use bulkhead_envtest::tenants::{
    RECONCILE_TIMEOUT, child_names, example, reconcile_again, wait_for,
};
use bulkhead_envtest::{AuditEvent, ControlPlane, OPERATOR_USER};
use bulkhead_operator::labels::{
    MANAGED_BY_LABEL, MANAGED_BY_VALUE, TENANT_LABEL, TENANT_UID_ANNOTATION,
};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

/// The five condition types every reconciled Tenant reports (DESIGN.md).
const CONDITIONS: [&str; 5] = [
    "Ready",
    "NamespaceReady",
    "NetworkIsolated",
    "CredentialsBound",
    "ServerAvailable",
];

/// Asserts that `object` carries Bulkhead's labels for `id` and the owner
/// references the operator builds for it (`expected`): a controller
/// reference to the Tenant with `uid`, or, for the namespace of a `Retain`
/// Tenant, none but the Tenant's UID annotation.
fn assert_owned<K: Resource>(object: &K, expected: &K, id: &str, uid: &str, what: &str) {
    let labels = object.meta().labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get(MANAGED_BY_LABEL).map(String::as_str),
        Some(MANAGED_BY_VALUE),
        "{what}: {labels:?}"
    );
    assert_eq!(
        labels.get(TENANT_LABEL).map(String::as_str),
        Some(id),
        "{what}: {labels:?}"
    );
    let owners = object.meta().owner_references.clone().unwrap_or_default();
    let wanted = expected.meta().owner_references.clone().unwrap_or_default();
    if wanted.is_empty() {
        assert!(owners.is_empty(), "{what} should have no owner: {owners:?}");
        let annotations = object.meta().annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations.get(TENANT_UID_ANNOTATION).map(String::as_str),
            Some(uid),
            "{what}: {annotations:?}"
        );
    } else {
        assert!(
            owners.iter().any(|o| o.kind == "Tenant"
                && o.name == id
                && o.uid == uid
                && o.controller == Some(true)
                && o.block_owner_deletion == Some(true)),
            "{what} is not owned by Tenant {id} ({uid}): {owners:?}"
        );
    }
}

/// Reads the live child named like `expected` and checks its labels and owners.
async fn check_child<K>(client: &Client, expected: &K, id: &str, uid: &str) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    let namespace = expected.meta().namespace.clone().unwrap_or_default();
    let name = expected.name_any();
    let what = format!("{} {namespace}/{name}", K::kind(&()));
    let live = Api::<K>::namespaced(client.clone(), &namespace)
        .get(&name)
        .await
        .with_context(|| format!("get {what}"))?;
    assert_owned(&live, expected, id, uid, &what);
    Ok(())
}

/// Applies `tenant` with `kubectl apply`, waits for its status and checks
/// all nine children, owned and labelled as the operator builds them.
async fn apply_and_check_children(
    cp: &ControlPlane,
    admin: &Client,
    tenant: &Tenant,
) -> Result<Tenant> {
    let id = tenant.name_any();
    cp.kubectl_apply(tenant)?;
    let live = cp.wait_reconciled(admin, &id).await?;
    let uid = live.uid().context("stored Tenant without uid")?;
    let expected = cp.desired_children(&live)?;
    let ns = cp.tenant_namespace(&id);

    let namespace: Namespace = Api::<Namespace>::all(admin.clone()).get(&ns).await?;
    assert_owned(&namespace, &expected.namespace, &id, &uid, "Namespace");
    let labels = namespace.labels();
    assert_eq!(
        labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("restricted")
    );
    check_child(admin, &expected.service_account, &id, &uid).await?;
    check_child(admin, &expected.role_binding, &id, &uid).await?;
    check_child(admin, &expected.network_policy, &id, &uid).await?;
    check_child(admin, &expected.resource_quota, &id, &uid).await?;
    check_child(admin, &expected.limit_range, &id, &uid).await?;
    check_child(admin, &expected.config_map, &id, &uid).await?;
    check_child(admin, &expected.service, &id, &uid).await?;
    check_child(admin, &expected.deployment, &id, &uid).await?;

    // The real deployment controller acted on it (it is a real Deployment).
    wait_for(
        "the Deployment's first ReplicaSet",
        RECONCILE_TIMEOUT,
        || async {
            let sets = Api::<ReplicaSet>::namespaced(admin.clone(), &ns)
                .list(&ListParams::default())
                .await?;
            Ok((!sets.items.is_empty()).then_some(()))
        },
    )
    .await?;

    let status = live.status.clone().context("no status")?;
    assert_eq!(status.observed_generation, live.metadata.generation);
    assert_eq!(status.namespace.as_deref(), Some(ns.as_str()));
    assert!(status.endpoint.is_some_and(|e| e.contains(&ns)));
    for kind in CONDITIONS {
        let condition = status
            .conditions
            .iter()
            .find(|c| c.type_ == kind)
            .with_context(|| format!("no {kind} condition: {:?}", status.conditions))?;
        assert!(
            !condition.reason.is_empty() && !condition.message.is_empty(),
            "{condition:?}"
        );
        assert_eq!(
            condition.observed_generation, live.metadata.generation,
            "{condition:?}"
        );
    }
    // No kubelet runs here, so no server pod becomes available.
    let available = status
        .conditions
        .iter()
        .find(|c| c.type_ == "ServerAvailable");
    assert_eq!(available.map(|c| c.status.as_str()), Some("False"));
    eprintln!("{id}: children {:?}", child_names(&expected));
    Ok(live)
}

/// Whether an audit event is about Tenant `id`: the Tenant, its namespace,
/// anything in it, or an Event about the Tenant.
fn concerns(event: &AuditEvent, id: &str, ns: &str) -> bool {
    let object = event.object();
    object.namespace == ns
        || (object.resource == "tenants" && object.name == id)
        || (object.resource == "namespaces" && object.name == ns)
        || (object.resource == "events" && object.name.starts_with(&format!("{id}.")))
}

fn operator_writes(events: &[AuditEvent], id: &str, ns: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.username() == OPERATOR_USER && e.is_write() && concerns(e, id, ns))
        .map(AuditEvent::summary)
        .collect()
}

/// Waits until the operator has written nothing about `id` for 3 s.
async fn wait_quiet(cp: &ControlPlane, id: &str, ns: &str) -> Result<()> {
    wait_for(
        &format!("the operator to stop writing for {id}"),
        RECONCILE_TIMEOUT,
        || async {
            let mark = cp.audit().mark()?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok(operator_writes(&cp.audit().since(mark)?, id, ns)
                .is_empty()
                .then_some(()))
        },
    )
    .await
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn examples_get_nine_owned_children_and_a_second_reconcile_writes_nothing() -> Result<()> {
    let cp = ControlPlane::shared();
    cp.install_bulkhead();
    let admin = cp.admin_client().await?;
    for (file, id) in [("minimal.yaml", "lc-minimal"), ("full.yaml", "lc-full")] {
        let tenant = example(file, id)?;
        apply_and_check_children(cp, &admin, &tenant).await?;
        let ns = cp.tenant_namespace(id);
        wait_quiet(cp, id, &ns).await?;
        let (_, events) = reconcile_again(cp, &admin, id, &ns, 1).await?;
        let reads = events
            .iter()
            .filter(|e| e.username() == OPERATOR_USER && concerns(e, id, &ns) && e.verb == "get")
            .count();
        let writes = operator_writes(&events, id, &ns);
        assert!(
            writes.is_empty(),
            "{id}: a no-op reconcile wrote:\n{}",
            writes.join("\n")
        );
        // It did reconcile: it read the namespace and the eight namespaced children.
        assert!(reads >= 9, "{id}: only {reads} reads by the operator");
        eprintln!("{id}: no-op reconcile: {reads} reads, 0 writes");
        // Applying the same file again changes nothing either.
        let mark = cp.audit().mark()?;
        cp.kubectl_apply(&tenant)?;
        let (_, events) = reconcile_again(cp, &admin, id, &ns, 2).await?;
        let mut all = cp.audit().since(mark)?;
        all.extend(events);
        let writes = operator_writes(&all, id, &ns);
        assert!(
            writes.is_empty(),
            "{id}: re-applying the file made the operator write:\n{}",
            writes.join("\n")
        );
    }
    for id in ["lc-minimal", "lc-full"] {
        cp.delete_tenant(&admin, id).await?;
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn hand_edits_and_deletions_of_children_are_healed() -> Result<()> {
    let cp = ControlPlane::shared();
    cp.install_bulkhead();
    let admin = cp.admin_client().await?;
    let id = "lc-heal";
    let live = apply_and_check_children(cp, &admin, &example("full.yaml", id)?).await?;
    let expected = cp.desired_children(&live)?;
    let ns = cp.tenant_namespace(id);
    let by_hand = PatchParams::default();

    // A NetworkPolicy rule: someone opens ingress to everyone.
    let policies: Api<NetworkPolicy> = Api::namespaced(admin.clone(), &ns);
    let policy_name = expected.network_policy.name_any();
    policies
        .patch(
            &policy_name,
            &by_hand,
            &Patch::Merge(json!({"spec": {"ingress": [{}]}})),
        )
        .await?;
    let want = serde_json::to_value(&expected.network_policy.spec)?;
    wait_for(
        "the NetworkPolicy to be healed",
        RECONCILE_TIMEOUT,
        || async {
            let live = policies.get(&policy_name).await?;
            Ok((serde_json::to_value(&live.spec)? == want).then_some(()))
        },
    )
    .await?;

    // The Deployment's securityContext: root and privileged.
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
    let name = expected.deployment.name_any();
    let container = expected
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers[0].name.clone())
        .context("no container")?;
    deployments
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {
                "securityContext": {"runAsNonRoot": false, "runAsUser": 0},
                "containers": [{"name": container, "securityContext": {"privileged": true, "allowPrivilegeEscalation": true}}],
            }}}})),
        )
        .await?;
    let pod = |d: &Deployment| {
        d.spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .unwrap_or_default()
    };
    let want_pod = pod(&expected.deployment);
    wait_for(
        "the Deployment's securityContext to be healed",
        RECONCILE_TIMEOUT,
        || async {
            let live = pod(&deployments.get(&name).await?);
            Ok((live.security_context == want_pod.security_context
                && live.containers[0].security_context == want_pod.containers[0].security_context)
                .then_some(()))
        },
    )
    .await?;

    // A RoleBinding subject: the admission guard refuses any other subject,
    // even from an administrator, so that edit cannot happen at all.
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), &ns);
    let binding = expected.role_binding.name_any();
    let refused = bindings
        .patch(
            &binding,
            &by_hand,
            &Patch::Merge(json!({"subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}]})),
        )
        .await;
    ensure!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.message.contains("bulkhead-secret-reader-binding-guard")),
        "re-binding the secret reader to another subject was not refused by the guard: {refused:?}"
    );

    // Deleted children come back: the RoleBinding, the ConfigMap, the
    // NetworkPolicy and the Deployment.
    let config_maps: Api<ConfigMap> = Api::namespaced(admin.clone(), &ns);
    let config_map = expected.config_map.name_any();
    let before: BTreeMap<&str, String> = BTreeMap::from([
        (
            "RoleBinding",
            bindings.get(&binding).await?.uid().unwrap_or_default(),
        ),
        (
            "ConfigMap",
            config_maps
                .get(&config_map)
                .await?
                .uid()
                .unwrap_or_default(),
        ),
        (
            "NetworkPolicy",
            policies.get(&policy_name).await?.uid().unwrap_or_default(),
        ),
        (
            "Deployment",
            deployments.get(&name).await?.uid().unwrap_or_default(),
        ),
    ]);
    let gone = DeleteParams::default();
    bindings.delete(&binding, &gone).await?;
    config_maps.delete(&config_map, &gone).await?;
    policies.delete(&policy_name, &gone).await?;
    deployments.delete(&name, &gone).await?;
    wait_for(
        "the deleted children to come back",
        RECONCILE_TIMEOUT,
        || async {
            let now = [
                (
                    "RoleBinding",
                    bindings.get_opt(&binding).await?.and_then(|o| o.uid()),
                ),
                (
                    "ConfigMap",
                    config_maps
                        .get_opt(&config_map)
                        .await?
                        .and_then(|o| o.uid()),
                ),
                (
                    "NetworkPolicy",
                    policies.get_opt(&policy_name).await?.and_then(|o| o.uid()),
                ),
                (
                    "Deployment",
                    deployments.get_opt(&name).await?.and_then(|o| o.uid()),
                ),
            ];
            Ok(now
                .iter()
                .all(|(kind, uid)| {
                    uid.as_ref()
                        .is_some_and(|uid| Some(uid) != before.get(kind))
                })
                .then_some(()))
        },
    )
    .await?;
    let restored = bindings.get(&binding).await?;
    assert_eq!(
        serde_json::to_value(&restored.subjects)?,
        serde_json::to_value(&expected.role_binding.subjects)?
    );
    cp.delete_tenant(&admin, id).await
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn a_spec_change_rolls_the_server_pod_template() -> Result<()> {
    let cp = ControlPlane::shared();
    cp.install_bulkhead();
    let admin = cp.admin_client().await?;
    let id = "lc-roll";
    let mut tenant = example("minimal.yaml", id)?;
    let live = apply_and_check_children(cp, &admin, &tenant).await?;
    let ns = cp.tenant_namespace(id);
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
    let name = cp.desired_children(&live)?.deployment.name_any();
    let template = |d: &Deployment| {
        d.spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default()
    };
    let before = template(&deployments.get(&name).await?);

    // A new credential changes the server configuration, hence the template.
    tenant.spec.credentials.push(CredentialRef {
        name: "extra".to_owned(),
        key: "extra_token".to_owned(),
    });
    cp.kubectl_apply(&tenant)?;
    let changed = cp.wait_reconciled(&admin, id).await?;
    assert_eq!(changed.metadata.generation, Some(2));
    let want = template(&cp.desired_children(&changed)?.deployment);
    let after = wait_for("the pod template to change", RECONCILE_TIMEOUT, || async {
        let now = template(&deployments.get(&name).await?);
        Ok((now.metadata.as_ref().and_then(|m| m.annotations.clone())
            == want.metadata.as_ref().and_then(|m| m.annotations.clone()))
        .then_some(now))
    })
    .await?;
    assert_ne!(
        before.metadata.as_ref().and_then(|m| m.annotations.clone()),
        after.metadata.as_ref().and_then(|m| m.annotations.clone()),
        "the pod template's annotations (config checksum) did not change"
    );
    // The real deployment controller rolls it: a second ReplicaSet appears.
    wait_for("a second ReplicaSet", RECONCILE_TIMEOUT, || async {
        let sets = Api::<ReplicaSet>::namespaced(admin.clone(), &ns)
            .list(&ListParams::default())
            .await?;
        Ok((sets.items.len() >= 2).then_some(()))
    })
    .await?;
    cp.delete_tenant(&admin, id).await
}
