//! `run`'s startup check against the in-memory API server.

mod reconcile_support;

use bulkhead_operator::controller::check_crd_installed;
use reconcile_support::{world, world_without_tenant_crd};

#[tokio::test]
async fn a_missing_tenant_crd_stops_startup_with_the_install_command() {
    let w = world_without_tenant_crd().await;
    let error = check_crd_installed(&w.client).await.expect_err("no CRD");
    let message = format!("{error:#}");
    assert!(
        message.contains("kubectl apply -f manifests/crds/tenant.yaml"),
        "{message}"
    );
    assert!(message.contains("kubectl apply -k manifests/"), "{message}");
}

#[tokio::test]
async fn an_installed_tenant_crd_passes_the_check() {
    let w = world(vec![]).await;
    check_crd_installed(&w.client).await.expect("CRD installed");
}
