//! Tenants the operator cannot act on, stored on the real API server: each
//! gets `Stalled=True` with a reason a person can act on, nothing is
//! created for it, and the operator keeps serving every other Tenant.
//!
//! The installed CRD refuses invalid specs itself, so such Tenants are
//! stored the way they reach a real cluster: under an older, laxer CRD (the
//! stored objects are not re-validated when the stricter one is applied),
//! here a CRD whose `spec` preserves anything. One of them breaks a rule
//! of `bulkhead_crds::validation` (reported as `InvalidSpec`), the other
//! does not even deserialize into the operator's types (`MalformedTenant`).
//! No Tenant the current CRD accepts fails to deserialize: the nearest
//! candidate, an int32 field beyond the range of an `i32`, is refused by the
//! API server, which checks `format: int32`.
//!
//! The CRD is swapped for a while, so this file holds one test and runs on
//! its own control plane.

use anyhow::{Context, Result};
use bulkhead_crds::Tenant;
use bulkhead_envtest::ControlPlane;
use bulkhead_envtest::tenants::{
    RECONCILE_TIMEOUT, accepted, example, example_json, tenants_dynamic, wait_for,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, Client};
use serde_json::json;

/// The reason and message of `Stalled` once the operator reported on the
/// Tenant's current generation, checking that `Ready` is False for the same
/// reason. Read as plain JSON: a malformed Tenant does not deserialize into
/// [`Tenant`], here no more than in the operator.
async fn stalled(admin: &Client, id: &str) -> Result<(String, String)> {
    let tenants = tenants_dynamic(admin);
    let conditions = wait_for(
        &format!("the operator to report on {id}"),
        RECONCILE_TIMEOUT,
        || async {
            let tenant = tenants.get(id).await?;
            let status = &tenant.data["status"];
            let current = status["observedGeneration"].as_i64().is_some()
                && status["observedGeneration"].as_i64() == tenant.metadata.generation;
            Ok(current.then(|| status["conditions"].clone()))
        },
    )
    .await?;
    let find = |type_: &str| -> Result<(String, String, String)> {
        let condition = conditions
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == type_)
            .with_context(|| format!("{id}: no {type_}: {conditions}"))?;
        let text = |key: &str| condition[key].as_str().unwrap_or_default().to_owned();
        Ok((text("status"), text("reason"), text("message")))
    };
    let (ready, stalled) = (find("Ready")?, find("Stalled")?);
    assert_eq!(ready.0, "False", "{id}: {ready:?}");
    assert_eq!(stalled.0, "True", "{id}: {stalled:?}");
    assert_eq!(stalled.1, ready.1, "{id}");
    Ok((stalled.1, stalled.2))
}

/// Reads a Tenant through the operator's own types, as a check that it is
/// (or is not) one the operator can parse.
async fn parses(admin: &Client, id: &str) -> Result<std::result::Result<(), String>> {
    let raw = tenants_dynamic(admin).get(id).await?;
    Ok(serde_json::from_value::<Tenant>(serde_json::to_value(raw)?)
        .map(drop)
        .map_err(|e| e.to_string()))
}

async fn served(cp: &ControlPlane, admin: &Client, id: &str) -> Result<()> {
    let tenant = cp.wait_reconciled(admin, id).await?;
    let namespace_ready = tenant
        .status
        .iter()
        .flat_map(|s| &s.conditions)
        .find(|c| c.type_ == "NamespaceReady")
        .map(|c| c.status.clone());
    assert_eq!(
        namespace_ready.as_deref(),
        Some("True"),
        "{id}: {:?}",
        tenant.status
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn unusable_tenants_are_stalled_with_a_reason_and_the_others_are_served() -> Result<()> {
    let cp = ControlPlane::shared();
    cp.install_bulkhead();
    let admin = cp.admin_client().await?;
    cp.kubectl_apply(&example("minimal.yaml", "st-ok")?)?;
    served(cp, &admin, "st-ok").await?;

    // No Tenant the installed CRD accepts is one the operator's types cannot
    // hold: the nearest candidate, an int32 field beyond the range of an
    // i32, is refused by the API server (it checks `format: int32`).
    let mut overflow = example_json("minimal.yaml", "st-overflow")?;
    overflow["spec"]["quota"] = json!({"pods": 3_000_000_000_i64});
    let refused = accepted(&admin, &overflow)
        .await?
        .expect_err("quota.pods 3000000000 was accepted");
    assert!(refused.contains("spec.quota.pods"), "{refused}");

    // Under the installed CRD both spoiled Tenants are refused.
    let mut invalid = example_json("minimal.yaml", "st-invalid")?;
    invalid["spec"]["server"] = json!({"replicas": 500});
    let mut malformed = example_json("minimal.yaml", "st-malformed")?;
    malformed["spec"]["server"] = json!({"replicas": "many"});
    for object in [&invalid, &malformed] {
        let verdict = accepted(&admin, object).await?;
        assert!(
            verdict.is_err(),
            "{}: {verdict:?}",
            object["metadata"]["name"]
        );
    }

    // A laxer CRD: `spec` preserves anything. Store both, then restore.
    cp.store_under_lax_crd(&admin, &malformed, &[&invalid, &malformed])
        .await?;

    // Both are stored as written, and the operator reports each.
    assert!(parses(&admin, "st-invalid").await?.is_ok());
    assert!(parses(&admin, "st-malformed").await?.is_err());
    let (reason, message) = stalled(&admin, "st-invalid").await?;
    assert_eq!(reason, "InvalidSpec", "{message}");
    assert!(message.contains("spec.server.replicas"), "{message}");
    let (reason, message) = stalled(&admin, "st-malformed").await?;
    assert_eq!(reason, "MalformedTenant", "{message}");
    assert!(
        message.contains("\"many\"") && message.contains("Expected i32"),
        "{message}"
    );
    eprintln!("st-invalid and st-malformed stalled: {message}");
    // Nothing was created for them.
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    for id in ["st-invalid", "st-malformed"] {
        let ns = cp.tenant_namespace(id);
        assert!(namespaces.get_opt(&ns).await?.is_none(), "{ns} exists");
    }

    // The operator keeps serving the others: a change to a served Tenant
    // and a new Tenant are both reconciled.
    let mut changed = example("minimal.yaml", "st-ok")?;
    changed.spec.display_name = Some("Still served".to_owned());
    cp.kubectl_apply(&changed)?;
    served(cp, &admin, "st-ok").await?;
    cp.kubectl_apply(&example("full.yaml", "st-after")?)?;
    served(cp, &admin, "st-after").await?;
    let ok = Api::<Tenant>::all(admin.clone()).get("st-ok").await?;
    assert_eq!(ok.metadata.generation, Some(2));

    // Through the plain API: the typed one cannot read back a malformed Tenant.
    let tenants = tenants_dynamic(&admin);
    for id in ["st-ok", "st-after", "st-invalid", "st-malformed"] {
        tenants.delete(id, &Default::default()).await?;
    }
    Ok(())
}
