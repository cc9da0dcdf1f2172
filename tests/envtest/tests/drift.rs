//! Drift that widens access is healed on the real API server: a field the
//! operator never sets but an admin adds with `kubectl patch` (a field
//! manager of its own) to a child's security-relevant spec — `hostNetwork`,
//! `envFrom` with a `secretRef`, a container's `privileged` and
//! `capabilities.add: [NET_ADMIN]`, a NetworkPolicy port's `endPort`, a new
//! ResourceQuota key, a new LimitRange field — is reverted by the next
//! reconcile; afterwards the operator's apply is again the only owner of
//! that spec (`metadata.managedFields`), and a no-op reconcile writes
//! nothing (counted in the audit log).
//!
//! An added RoleBinding subject is not exercised here: the binding guard
//! (`manifests/operator/secret-reader-binding-guard.yaml`) refuses it for
//! admins too; the detection is unit-tested in the operator.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bulkhead_envtest::tenants::{RECONCILE_TIMEOUT, example, reconcile_again, wait_for};
use bulkhead_envtest::{AuditEvent, ControlPlane, OPERATOR_USER};
use bulkhead_operator::controller::foreign::{foreign_fields, guarded_fields};
use bulkhead_operator::desired::TenantObjects;
use bulkhead_operator::labels::FIELD_MANAGER;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{LimitRange, ResourceQuota};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Writes by the operator to anything in namespace `ns`.
fn operator_writes(events: &[AuditEvent], ns: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.username() == OPERATOR_USER && e.is_write() && e.object().namespace == ns)
        .map(AuditEvent::summary)
        .collect()
}

/// Waits until the operator has written nothing in `ns` for 3 s.
async fn wait_quiet(cp: &ControlPlane, ns: &str) -> Result<()> {
    wait_for(
        &format!("the operator to stop writing in {ns}"),
        RECONCILE_TIMEOUT,
        || async {
            let mark = cp.audit().mark()?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok(operator_writes(&cp.audit().since(mark)?, ns)
                .is_empty()
                .then_some(()))
        },
    )
    .await
}

/// One hand edit: `kubectl patch <resource> <name> --type <patch_type> -p <patch>`,
/// and how to tell from the live object (as JSON) that it is gone again.
struct Edit<'a> {
    what: &'a str,
    patch_type: &'a str,
    patch: String,
    healed: fn(&Value) -> bool,
}

/// Tenant `id` from the full example, reconciled; its desired children.
async fn reconciled_tenant(
    cp: &ControlPlane,
    admin: &Client,
    id: &str,
) -> Result<(String, TenantObjects)> {
    cp.kubectl_apply(&example("full.yaml", id)?)?;
    let live = cp.wait_reconciled(admin, id).await?;
    let ns = cp.tenant_namespace(id);
    wait_quiet(cp, &ns).await?;
    Ok((ns, cp.desired_children(&live)?))
}

/// Makes `edit` to the live `K` named like `child` as an admin, then
/// asserts that the operator reverts it, that no field manager but the
/// operator's apply owns anything in the guarded spec afterwards, and
/// that a no-op reconcile then writes nothing.
async fn edit_and_expect_healed<K>(
    cp: &ControlPlane,
    admin: &Client,
    id: &str,
    child: &K,
    edit: &Edit<'_>,
    round: usize,
) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
    K: Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let ns = child.namespace().context("child without namespace")?;
    let name = child.name_any();
    let kind = K::kind(&()).into_owned();
    let resource = K::plural(&()).into_owned();
    let api = Api::<K>::namespaced(admin.clone(), &ns);
    let live_json = |object: &K| serde_json::to_value(object).context("serialise live object");

    let mark = cp.audit().mark()?;
    cp.kubectl_ok(&[
        "-n",
        &ns,
        "patch",
        &resource,
        &name,
        "--type",
        edit.patch_type,
        "-p",
        &edit.patch,
    ])
    .with_context(|| format!("{id}: admin edit {}", edit.what))?;
    let edited = cp.audit().since(mark)?.into_iter().any(|e| {
        e.verb == "patch"
            && e.code() == 200
            && e.object().name == name
            && e.username() != OPERATOR_USER
    });
    ensure!(
        edited,
        "{id}: the admin's {} did not reach {kind}/{name}",
        edit.what
    );

    let healed = wait_for(
        &format!("{id}: the operator to revert {}", edit.what),
        RECONCILE_TIMEOUT,
        || async {
            let object = api.get(&name).await?;
            let json = live_json(&object)?;
            Ok((edit.healed)(&json).then_some(json))
        },
    )
    .await?;
    let heal_writes: Vec<String> = operator_writes(&cp.audit().since(mark)?, &ns);
    ensure!(
        !heal_writes.is_empty(),
        "{id}: {} vanished without a write by the operator",
        edit.what
    );
    eprintln!("{id}: {} healed by {heal_writes:?}", edit.what);

    let foreign = foreign_fields(&healed, FIELD_MANAGER, guarded_fields(&kind));
    ensure!(
        foreign.is_empty(),
        "{id}: after healing {}, other field managers still own {foreign:?}",
        edit.what
    );
    let managers: Vec<(String, String)> = api
        .get(&name)
        .await?
        .managed_fields()
        .iter()
        .map(|m| {
            (
                m.manager.clone().unwrap_or_default(),
                m.operation.clone().unwrap_or_default(),
            )
        })
        .collect();
    ensure!(
        !managers
            .iter()
            .any(|(manager, operation)| manager == FIELD_MANAGER && operation != "Apply"),
        "{id}: the removal left an entry of its own: {managers:?}"
    );

    wait_quiet(cp, &ns).await?;
    let writes = operator_writes(
        &reconcile_again(cp, admin, id, &ns, u32::try_from(round)?)
            .await?
            .1,
        &ns,
    );
    ensure!(
        writes.is_empty(),
        "{id}: a no-op reconcile after healing {} wrote:\n{}",
        edit.what,
        writes.join("\n")
    );
    Ok(())
}

/// The server container in a Deployment as JSON.
fn server_container(deployment: &Value) -> Option<&Value> {
    deployment
        .pointer("/spec/template/spec/containers")?
        .as_array()?
        .iter()
        .find(|c| c["name"] == "server")
}

/// A strategic merge patch setting `fields` on the server container.
fn container_patch(fields: Value) -> String {
    let mut container = json!({"name": "server"});
    if let (Value::Object(container), Value::Object(fields)) = (&mut container, fields) {
        container.extend(fields);
    }
    json!({"spec": {"template": {"spec": {"containers": [container]}}}}).to_string()
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn pod_template_fields_added_by_hand_are_removed() -> Result<()> {
    let cp = ControlPlane::shared();
    cp.install_bulkhead();
    let admin = cp.admin_client().await?;
    let id = "drift-pod";
    let (_, children) = reconciled_tenant(cp, &admin, id).await?;
    let edits = [
        Edit {
            what: "hostNetwork: true",
            patch_type: "merge",
            patch: json!({"spec": {"template": {"spec": {"hostNetwork": true}}}}).to_string(),
            healed: |d| d.pointer("/spec/template/spec/hostNetwork") != Some(&json!(true)),
        },
        Edit {
            what: "envFrom with a secretRef",
            patch_type: "strategic",
            patch: container_patch(
                json!({"envFrom": [{"secretRef": {"name": "kube-root-secrets"}}]}),
            ),
            healed: |d| server_container(d).is_some_and(|c| c.get("envFrom").is_none()),
        },
        Edit {
            what: "privileged: true",
            patch_type: "strategic",
            // The API server refuses `privileged` next to
            // `allowPrivilegeEscalation: false`, so the edit flips both.
            patch: container_patch(json!({"securityContext": {
                "privileged": true, "allowPrivilegeEscalation": true}})),
            healed: |d| {
                server_container(d).is_some_and(|c| {
                    c.pointer("/securityContext/privileged") != Some(&json!(true))
                        && c.pointer("/securityContext/allowPrivilegeEscalation")
                            == Some(&json!(false))
                })
            },
        },
        Edit {
            what: "capabilities.add: [NET_ADMIN]",
            patch_type: "strategic",
            patch: container_patch(
                json!({"securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}),
            ),
            healed: |d| {
                server_container(d)
                    .is_some_and(|c| c.pointer("/securityContext/capabilities/add").is_none())
            },
        },
    ];
    for (round, edit) in edits.iter().enumerate() {
        edit_and_expect_healed::<Deployment>(cp, &admin, id, &children.deployment, edit, round)
            .await?;
    }
    cp.delete_tenant(&admin, id).await
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn an_end_port_added_by_hand_is_removed() -> Result<()> {
    let cp = ControlPlane::shared();
    cp.install_bulkhead();
    let admin = cp.admin_client().await?;
    let id = "drift-netpol";
    let (ns, children) = reconciled_tenant(cp, &admin, id).await?;
    let policy = Api::<NetworkPolicy>::namespaced(admin.clone(), &ns)
        .get(&children.network_policy.name_any())
        .await?;
    let policy = serde_json::to_value(&policy)?;
    // The first egress port given by number: `endPort` turns it into a range.
    let rule = policy["spec"]["egress"]
        .as_array()
        .and_then(|rules| {
            rules
                .iter()
                .position(|r| r.pointer("/ports/0/port").is_some_and(Value::is_number))
        })
        .context("no egress rule with a numbered port")?;
    let edit = Edit {
        what: "endPort: 65535",
        patch_type: "json",
        patch: json!([{"op": "add", "path": format!("/spec/egress/{rule}/ports/0/endPort"),
            "value": 65535}])
        .to_string(),
        healed: |p| {
            ["ingress", "egress"].iter().all(|direction| {
                p["spec"][direction].as_array().is_none_or(|rules| {
                    rules.iter().all(|r| {
                        r["ports"].as_array().is_none_or(|ports| {
                            ports.iter().all(|port| port.get("endPort").is_none())
                        })
                    })
                })
            })
        },
    };
    edit_and_expect_healed(cp, &admin, id, &children.network_policy, &edit, 0).await?;
    cp.delete_tenant(&admin, id).await
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn quota_and_limit_range_fields_added_by_hand_are_removed() -> Result<()> {
    let cp = ControlPlane::shared();
    cp.install_bulkhead();
    let admin = cp.admin_client().await?;
    let id = "drift-quota";
    let (_, children) = reconciled_tenant(cp, &admin, id).await?;
    let quota = Edit {
        what: "a new hard limit count/jobs.batch",
        patch_type: "merge",
        patch: json!({"spec": {"hard": {"count/jobs.batch": "100"}}}).to_string(),
        healed: |q| q.pointer("/spec/hard/count~1jobs.batch").is_none(),
    };
    edit_and_expect_healed::<ResourceQuota>(cp, &admin, id, &children.resource_quota, &quota, 0)
        .await?;
    let limits = Edit {
        what: "maxLimitRequestRatio",
        patch_type: "json",
        patch: json!([{"op": "add", "path": "/spec/limits/0/maxLimitRequestRatio",
            "value": {"cpu": "100"}}])
        .to_string(),
        healed: |l| l.pointer("/spec/limits/0/maxLimitRequestRatio").is_none(),
    };
    edit_and_expect_healed::<LimitRange>(cp, &admin, id, &children.limit_range, &limits, 1).await?;
    cp.delete_tenant(&admin, id).await
}
