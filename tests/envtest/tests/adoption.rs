//! Adoption safety on the real API server: a `bulkhead-<id>` namespace that
//! someone else created before the operator got to it is reported as
//! `NamespaceConflict` and nothing in it changes, even when that someone
//! knows the Tenant's UID and tries to copy Bulkhead's ownership marks.
//!
//! The attacker is a ServiceAccount with a ClusterRole of this test's own
//! that may create and edit namespaces, read Tenants (so it knows their
//! UIDs) and write ConfigMaps: a real token, the real authorizer and the
//! real admission chain. Ownership marks (the `bulkhead.dev/tenant-uid`
//! annotation, the `app.kubernetes.io/managed-by=bulkhead` label, an owner
//! reference to a Tenant) are reserved to the operator by
//! `manifests/operator/namespace-ownership-guard.yaml`, for cluster-admins
//! too.
//!
//! The namespaces must exist before the operator sees the Tenants, so this
//! binary does not use the shared operator: it installs the manifests,
//! prepares the attack, and only then starts `bulkhead-operator run`.

mod live_children;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bulkhead_crds::Tenant;
use bulkhead_envtest::tenants::{RECONCILE_TIMEOUT, example, wait_for};
use bulkhead_envtest::{ControlPlane, OperatorOptions};
use bulkhead_operator::labels::{
    MANAGED_BY_LABEL, MANAGED_BY_VALUE, TENANT_LABEL, TENANT_UID_ANNOTATION,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use kube::api::{
    DynamicObject, ListParams, ObjectMeta, Patch, PatchParams, PostParams, ResourceExt,
};
use kube::{Api, Client};
use live_children::{live_children, operator_writes_in};
use serde_json::{Value, json};

/// Name of the policy that reserves ownership marks to the operator.
const OWNERSHIP_GUARD: &str = "bulkhead-namespace-ownership-guard";
/// The attacker: may create namespaces, nothing Bulkhead-specific.
const ATTACKER: &str = "namespace-creator";
/// How long the API server may take to load a new admission policy.
const POLICY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the operator may take to win the leader election.
const LEADING_TIMEOUT: Duration = Duration::from_secs(60);

/// A ServiceAccount in `default` that may create and edit namespaces, read
/// Tenants and write ConfigMaps anywhere, and a client with its token.
async fn attacker(cp: &ControlPlane, admin: &Client) -> Result<Client> {
    let create = PostParams::default();
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(ATTACKER.to_owned()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    Api::<ServiceAccount>::namespaced(admin.clone(), "default")
        .create(&create, &account)
        .await?;
    let rule = |group: &str, resource: &str, verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(vec![resource.to_owned()]),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..PolicyRule::default()
    };
    let role = ClusterRole {
        metadata: ObjectMeta {
            name: Some(ATTACKER.to_owned()),
            ..ObjectMeta::default()
        },
        rules: Some(vec![
            rule(
                "",
                "namespaces",
                &["get", "list", "watch", "create", "update", "patch"],
            ),
            rule("", "configmaps", &["get", "list", "create"]),
            rule("bulkhead.dev", "tenants", &["get", "list", "watch"]),
        ]),
        ..ClusterRole::default()
    };
    Api::<ClusterRole>::all(admin.clone())
        .create(&create, &role)
        .await?;
    let binding = ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(ATTACKER.to_owned()),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "ClusterRole".to_owned(),
            name: ATTACKER.to_owned(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: ATTACKER.to_owned(),
            namespace: Some("default".to_owned()),
            ..Subject::default()
        }]),
    };
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&create, &binding)
        .await?;
    Ok(cp.service_account_client("default", ATTACKER).await?.client)
}

fn namespace(name: &str, metadata: Value) -> Result<Namespace> {
    let mut object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": metadata});
    object["metadata"]["name"] = json!(name);
    Ok(serde_json::from_value(object)?)
}

/// Expects `result` to be the ownership guard's refusal.
fn refused_by_guard<T: std::fmt::Debug>(what: &str, result: kube::Result<T>) -> Result<()> {
    match result {
        Err(kube::Error::Api(status)) if status.message.contains(OWNERSHIP_GUARD) => {
            eprintln!("refused as expected: {what}: {}", status.message);
            Ok(())
        }
        other => bail!("{what} was not refused by {OWNERSHIP_GUARD}: {other:?}"),
    }
}

/// Waits until the guard refuses the attacker's dry-run namespace with the
/// managed-by label (policies load asynchronously; RBAC too).
async fn wait_guard_enforced(namespaces: &Api<Namespace>) -> Result<()> {
    let probe = namespace(
        "ownership-guard-probe",
        json!({"labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE}}),
    )?;
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    wait_for(
        "the namespace ownership guard to be enforced",
        POLICY_TIMEOUT,
        || async {
            Ok(match namespaces.create(&dry_run, &probe).await {
                Err(kube::Error::Api(status)) if status.message.contains(OWNERSHIP_GUARD) => {
                    Some(())
                }
                _ => None,
            })
        },
    )
    .await
}

/// Everything in namespace `ns` that matters here, `kind/name ->
/// resourceVersion`, plus the namespace's own.
async fn snapshot(admin: &Client, ns: &str) -> Result<BTreeMap<String, String>> {
    let mut versions = BTreeMap::new();
    let namespace = Api::<Namespace>::all(admin.clone()).get(ns).await?;
    versions.insert(
        format!("Namespace/{ns}"),
        namespace.resource_version().unwrap_or_default(),
    );
    for (group, version, kind) in [
        ("", "v1", "ConfigMap"),
        ("", "v1", "ServiceAccount"),
        ("", "v1", "Service"),
        ("", "v1", "ResourceQuota"),
        ("", "v1", "LimitRange"),
        ("apps", "v1", "Deployment"),
        ("networking.k8s.io", "v1", "NetworkPolicy"),
        ("rbac.authorization.k8s.io", "v1", "RoleBinding"),
    ] {
        let resource = kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            group, version, kind,
        ));
        let api: Api<DynamicObject> = Api::namespaced_with(admin.clone(), ns, &resource);
        for object in api.list(&ListParams::default()).await? {
            versions.insert(
                format!("{kind}/{}", object.name_any()),
                object.resource_version().unwrap_or_default(),
            );
        }
    }
    Ok(versions)
}

/// Waits for the controllers that put `kube-root-ca.crt` and the `default`
/// ServiceAccount into every namespace, so later snapshots compare only
/// what the operator could have done.
async fn wait_namespace_settled(admin: &Client, ns: &str) -> Result<()> {
    let config_maps: Api<ConfigMap> = Api::namespaced(admin.clone(), ns);
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    wait_for(
        &format!("kube-root-ca.crt and ServiceAccount default in {ns}"),
        RECONCILE_TIMEOUT,
        || async {
            Ok((config_maps.get_opt("kube-root-ca.crt").await?.is_some()
                && accounts.get_opt("default").await?.is_some())
            .then_some(()))
        },
    )
    .await
}

fn condition(tenant: &Tenant, type_: &str) -> Option<(String, String)> {
    tenant
        .status
        .iter()
        .flat_map(|s| &s.conditions)
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn a_namespace_someone_else_created_is_never_adopted_even_with_copied_marks() -> Result<()> {
    let cp = ControlPlane::shared();
    cp.apply_manifests()?;
    let admin = cp.admin_client().await?;
    let mallory = attacker(cp, &admin).await?;
    let as_mallory: Api<Namespace> = Api::all(mallory.clone());
    let as_admin: Api<Namespace> = Api::all(admin.clone());
    wait_guard_enforced(&as_mallory).await?;

    // Three Tenants, stored while no operator runs.
    let (plain, copied, control) = ("adopt-plain", "adopt-copied", "adopt-control");
    for id in [plain, copied, control] {
        cp.kubectl_apply(&example("minimal.yaml", id)?)?;
    }
    // A user who may list Tenants knows their UIDs.
    let tenants: Api<Tenant> = Api::all(mallory.clone());
    let uid = tenants
        .get(copied)
        .await?
        .uid()
        .context("Tenant without uid")?;
    let create = PostParams::default();

    // 1. A namespace of the Tenant's name, created first, plainly.
    let plain_ns = cp.tenant_namespace(plain);
    as_mallory
        .create(
            &create,
            &namespace(&plain_ns, json!({"labels": {"team": "mallory"}}))?,
        )
        .await?;

    // 2. Copying Bulkhead's marks with the Tenant's real UID is refused,
    //    each mark alone and all together, at creation and as an edit, for
    //    the attacker and for a cluster-admin (system:masters) alike.
    let copied_ns = cp.tenant_namespace(copied);
    let all_marks = namespace(
        &copied_ns,
        json!({
            "labels": {
                MANAGED_BY_LABEL: MANAGED_BY_VALUE,
                TENANT_LABEL: copied,
                "pod-security.kubernetes.io/enforce": "restricted",
            },
            "annotations": {TENANT_UID_ANNOTATION: uid},
            "ownerReferences": [{
                "apiVersion": "bulkhead.dev/v1alpha1", "kind": "Tenant",
                "name": copied, "uid": uid, "controller": true,
            }],
        }),
    )?;
    let marks = [
        (
            "the tenant-uid annotation",
            json!({"annotations": {TENANT_UID_ANNOTATION: uid}}),
        ),
        (
            "the managed-by label",
            json!({"labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE}}),
        ),
        (
            "an owner reference to the Tenant",
            json!({"ownerReferences": [{"apiVersion": "bulkhead.dev/v1alpha1",
                "kind": "Tenant", "name": copied, "uid": uid}]}),
        ),
    ];
    for (who, api) in [
        ("the attacker", &as_mallory),
        ("a cluster-admin", &as_admin),
    ] {
        refused_by_guard(
            &format!("{who} creating {copied_ns} with all of Bulkhead's marks"),
            api.create(&create, &all_marks).await,
        )?;
        for (mark, metadata) in &marks {
            refused_by_guard(
                &format!("{who} creating {copied_ns} with {mark}"),
                api.create(&create, &namespace(&copied_ns, metadata.clone())?)
                    .await,
            )?;
        }
    }
    // What is not a mark may be copied: the tenant label and Pod Security.
    as_mallory
        .create(
            &create,
            &namespace(
                &copied_ns,
                json!({"labels": {TENANT_LABEL: copied,
                    "pod-security.kubernetes.io/enforce": "restricted"}}),
            )?,
        )
        .await?;
    for (who, api) in [
        ("the attacker", &as_mallory),
        ("a cluster-admin", &as_admin),
    ] {
        for (mark, metadata) in &marks {
            refused_by_guard(
                &format!("{who} adding {mark} to {copied_ns}"),
                api.patch(
                    &copied_ns,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "metadata": metadata })),
                )
                .await,
            )?;
        }
    }

    // The `status` and `finalize` subresources carry the whole object,
    // metadata included: the marks cannot be set through them either.
    for (mark, metadata) in &marks {
        refused_by_guard(
            &format!("a cluster-admin adding {mark} to {copied_ns} through namespaces/status"),
            as_admin
                .patch_status(
                    &copied_ns,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "metadata": metadata })),
                )
                .await,
        )?;
        let mut live = serde_json::to_value(as_admin.get(&copied_ns).await?)?;
        for (field, value) in metadata.as_object().into_iter().flatten() {
            live["metadata"][field] = value.clone();
        }
        refused_by_guard(
            &format!("a cluster-admin adding {mark} to {copied_ns} through namespaces/finalize"),
            as_admin
                .replace_subresource("finalize", &copied_ns, &PostParams::default(), &live)
                .await,
        )?;
    }

    // Content of the attacker's own in both namespaces.
    for ns in [&plain_ns, &copied_ns] {
        let config_map = ConfigMap {
            metadata: ObjectMeta {
                name: Some("mallory".to_owned()),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([("owner".to_owned(), "mallory".to_owned())])),
            ..ConfigMap::default()
        };
        Api::<ConfigMap>::namespaced(mallory.clone(), ns)
            .create(&create, &config_map)
            .await?;
        wait_namespace_settled(&admin, ns).await?;
    }
    let before = [
        snapshot(&admin, &plain_ns).await?,
        snapshot(&admin, &copied_ns).await?,
    ];

    // Now the operator starts and sees all three Tenants.
    let mark = cp.audit().mark()?;
    let started = Instant::now();
    let operator = cp
        .start_operator(&OperatorOptions::new("adoption-0"))
        .await?;
    operator.wait_leading(&admin, LEADING_TIMEOUT).await?;

    // The control Tenant is served: the guard does not stop the operator
    // from creating its own namespace with every mark.
    let served = cp.wait_reconciled(&admin, control).await?;
    assert_eq!(
        condition(&served, "NamespaceReady"),
        Some(("True".to_owned(), "NamespaceReady".to_owned()))
    );
    let children = live_children(&admin, &cp.desired_children(&served)?).await?;
    let missing: Vec<_> = children.iter().filter(|(_, o)| o.is_none()).collect();
    assert!(missing.is_empty(), "{missing:?}");

    for id in [plain, copied] {
        let tenant = cp.wait_reconciled(&admin, id).await?;
        for (type_, status) in [
            ("NamespaceReady", "False"),
            ("Ready", "False"),
            ("Stalled", "True"),
        ] {
            assert_eq!(
                condition(&tenant, type_),
                Some((status.to_owned(), "NamespaceConflict".to_owned())),
                "{id}: {:?}",
                tenant.status
            );
        }
    }
    eprintln!(
        "operator started and reported both conflicts in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let after = [
        snapshot(&admin, &plain_ns).await?,
        snapshot(&admin, &copied_ns).await?,
    ];
    assert_eq!(
        before, after,
        "something changed in the attacker's namespaces"
    );
    let events = cp.audit().since(mark)?;
    for ns in [&plain_ns, &copied_ns] {
        let writes = operator_writes_in(&events, ns);
        assert!(
            writes.is_empty(),
            "the operator wrote in {ns}:\n{}",
            writes.join("\n")
        );
    }
    drop(operator);
    Ok(())
}
