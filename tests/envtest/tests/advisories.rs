//! Advisories on the real API server with the real operator binary: a
//! Tenant whose ingress selects namespaces by a label anyone who may label
//! a namespace can set, and one whose rate limits are served by several
//! replicas, are applied as written and carry a condition and a Warning
//! Event saying so; a spec that no longer gives cause loses the condition.

use anyhow::{Context, Result};
use bulkhead_crds::Tenant;
use bulkhead_envtest::ControlPlane;
use bulkhead_envtest::tenants::{RECONCILE_TIMEOUT, example, wait_for};
use bulkhead_operator::advisories::{AdvisoryKind, NAMESPACE_NAME_LABEL};
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

/// Where the Events of the cluster-scoped Tenant are recorded.
const EVENT_NAMESPACE: &str = "default";

/// The Tenant once the operator has reported on `generation` or later.
async fn reported(admin: &Client, id: &str, generation: i64) -> Result<Tenant> {
    let tenants: Api<Tenant> = Api::all(admin.clone());
    wait_for(
        &format!("the operator to report on generation {generation} of {id}"),
        RECONCILE_TIMEOUT,
        || async {
            let tenant = tenants.get(id).await?;
            let observed = tenant.status.as_ref().and_then(|s| s.observed_generation);
            let done =
                observed.is_some_and(|o| o >= generation) && observed == tenant.metadata.generation;
            Ok(done.then_some(tenant))
        },
    )
    .await
}

fn condition(tenant: &Tenant, kind: AdvisoryKind) -> Option<&Condition> {
    tenant
        .status
        .iter()
        .flat_map(|s| &s.conditions)
        .find(|c| c.type_ == kind.as_str())
}

/// The notes of the Warning Events about `id` with the advisory's reason,
/// once there is at least one.
async fn warning_events(admin: &Client, id: &str, kind: AdvisoryKind) -> Result<Vec<String>> {
    let events: Api<Event> = Api::namespaced(admin.clone(), EVENT_NAMESPACE);
    let selector = format!(
        "involvedObject.name={id},involvedObject.kind=Tenant,reason={},type=Warning",
        kind.as_str()
    );
    wait_for(
        &format!("a Warning Event {} about {id}", kind.as_str()),
        RECONCILE_TIMEOUT,
        || async {
            let list = events
                .list(&ListParams::default().fields(&selector))
                .await?;
            let notes: Vec<String> = list.items.into_iter().filter_map(|e| e.message).collect();
            Ok((!notes.is_empty()).then_some(notes))
        },
    )
    .await
}

/// Merge-patches the Tenant's spec and returns the new generation.
async fn patch_spec(admin: &Client, id: &str, spec: Value) -> Result<i64> {
    let tenants: Api<Tenant> = Api::all(admin.clone());
    let patched = tenants
        .patch(
            id,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "spec": spec })),
        )
        .await
        .with_context(|| format!("patch Tenant {id}"))?;
    patched
        .metadata
        .generation
        .context("a stored Tenant has a generation")
}

fn label_selector(key: &str, value: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some([(key.to_owned(), value.to_owned())].into()),
        match_expressions: None,
    }
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn ingress_by_a_label_is_reported_until_the_selector_names_the_namespace() -> Result<()> {
    let cp = ControlPlane::shared();
    cp.install_bulkhead();
    let admin = cp.admin_client().await?;
    let id = "adv-label";
    let mut tenant = example("minimal.yaml", id)?;
    tenant.spec.network.ingress_from = vec![label_selector("bulkhead.dev/gateway", "true")];
    cp.kubectl_apply(&tenant)?;

    let live = reported(&admin, id, 1).await?;
    let advisory = condition(&live, AdvisoryKind::IngressByMutableLabel)
        .with_context(|| format!("no IngressByMutableLabel: {:?}", live.status))?;
    assert_eq!(advisory.status, "True", "{advisory:?}");
    assert_eq!(advisory.reason, "IngressByMutableLabel", "{advisory:?}");
    assert_eq!(advisory.observed_generation, live.metadata.generation);
    for part in [
        "spec.network.ingressFrom[0] (bulkhead.dev/gateway=true)",
        "anyone who may create a namespace, or label one",
        NAMESPACE_NAME_LABEL,
    ] {
        assert!(advisory.message.contains(part), "{part:?} in {advisory:?}");
    }
    assert!(
        condition(&live, AdvisoryKind::RateLimitsPerReplica).is_none(),
        "no limits, one replica: {:?}",
        live.status
    );
    // Applied as written: the policy admits the labelled namespaces.
    let ns = cp.tenant_namespace(id);
    let policy = Api::<NetworkPolicy>::namespaced(admin.clone(), &ns)
        .get("bulkhead-tenant-isolation")
        .await?;
    let peers = serde_json::to_value(&policy)?["spec"]["ingress"][0]["from"].clone();
    assert_eq!(
        peers,
        json!([{"namespaceSelector": {"matchLabels": {"bulkhead.dev/gateway": "true"}}}])
    );
    let notes = warning_events(&admin, id, AdvisoryKind::IngressByMutableLabel).await?;
    assert!(
        notes
            .iter()
            .any(|n| n.contains("bulkhead.dev/gateway=true")),
        "{notes:?}"
    );

    // Selected by name: the condition goes.
    let generation = patch_spec(
        &admin,
        id,
        json!({"network": {"ingressFrom": [{"matchLabels": {NAMESPACE_NAME_LABEL: "mcp-gateway"}}]}}),
    )
    .await?;
    let live = reported(&admin, id, generation).await?;
    assert!(
        condition(&live, AdvisoryKind::IngressByMutableLabel).is_none(),
        "{:?}",
        live.status
    );
    let conditions: Vec<&str> = live
        .status
        .iter()
        .flat_map(|s| &s.conditions)
        .map(|c| c.type_.as_str())
        .collect();
    assert!(conditions.contains(&"NetworkIsolated"), "{conditions:?}");
    cp.delete_tenant(&admin, id).await
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn rate_limits_over_several_replicas_are_reported_until_one_replica_serves_them() -> Result<()>
{
    let cp = ControlPlane::shared();
    cp.install_bulkhead();
    let admin = cp.admin_client().await?;
    let id = "adv-replicas";
    // Two replicas, a per-caller and a per-tool limit, ingress by name.
    let tenant = example("full.yaml", id)?;
    cp.kubectl_apply(&tenant)?;

    let live = reported(&admin, id, 1).await?;
    let advisory = condition(&live, AdvisoryKind::RateLimitsPerReplica)
        .with_context(|| format!("no RateLimitsPerReplica: {:?}", live.status))?;
    assert_eq!(advisory.status, "True", "{advisory:?}");
    for part in [
        "spec.server.replicas is 2",
        "spec.rateLimits.perCaller (120/min with burst 20 on each replica, up to 240/min with burst 40 in all)",
        "spec.rateLimits.perTool[0] for billing_post_invoices_reminders (10/min with burst 2 on each replica, up to 20/min with burst 4 in all)",
    ] {
        assert!(advisory.message.contains(part), "{part:?} in {advisory:?}");
    }
    assert!(
        condition(&live, AdvisoryKind::IngressByMutableLabel).is_none(),
        "the full example selects by name: {:?}",
        live.status
    );
    let notes = warning_events(&admin, id, AdvisoryKind::RateLimitsPerReplica).await?;
    assert!(
        notes.iter().any(|n| n.contains("up to 240/min")),
        "{notes:?}"
    );

    let generation = patch_spec(&admin, id, json!({"server": {"replicas": 1}})).await?;
    let live = reported(&admin, id, generation).await?;
    assert!(
        condition(&live, AdvisoryKind::RateLimitsPerReplica).is_none(),
        "{:?}",
        live.status
    );
    cp.delete_tenant(&admin, id).await
}
