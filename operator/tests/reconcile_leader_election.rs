//! Leader election on a Lease against the in-memory API server.

mod reconcile_support;

use std::time::Duration;

use bulkhead_operator::controller::leader::{Attempt, LeaderElector, LeaseSettings};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use reconcile_support::world;
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn elector(client: &Client, identity: &str) -> LeaderElector {
    LeaderElector::new(
        client.clone(),
        LeaseSettings {
            name: "bulkhead-operator".into(),
            namespace: "bulkhead-system".into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_millis(10),
        },
    )
}

async fn holder(client: &Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "bulkhead-system");
    leases
        .get("bulkhead-operator")
        .await
        .expect("lease")
        .spec
        .and_then(|s| s.holder_identity)
}

#[tokio::test]
async fn one_replica_leads_the_other_follows_until_the_lease_is_released() {
    let w = world(vec![]).await;
    let (a, b) = (
        elector(&w.client, "replica-a"),
        elector(&w.client, "replica-b"),
    );
    assert_eq!(a.try_acquire_or_renew().await.expect("a"), Attempt::Leading);
    assert_eq!(
        b.try_acquire_or_renew().await.expect("b"),
        Attempt::Following
    );
    assert_eq!(
        a.try_acquire_or_renew().await.expect("renew"),
        Attempt::Leading
    );
    assert_eq!(holder(&w.client).await.as_deref(), Some("replica-a"));

    a.release().await.expect("release");
    assert_eq!(b.try_acquire_or_renew().await.expect("b"), Attempt::Leading);
    assert_eq!(holder(&w.client).await.as_deref(), Some("replica-b"));
    assert_eq!(
        a.try_acquire_or_renew().await.expect("a"),
        Attempt::Following
    );
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_a_valid_one_is_not() {
    let stale = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "bulkhead-operator", "namespace": "bulkhead-system"},
        "spec": {"holderIdentity": "crashed-replica", "leaseDurationSeconds": 15,
                 "renewTime": "2026-01-01T00:00:00.000000Z", "leaseTransitions": 3}});
    let w = world(vec![stale]).await;
    let b = elector(&w.client, "replica-b");
    assert_eq!(b.try_acquire_or_renew().await.expect("b"), Attempt::Leading);
    let leases: Api<Lease> = Api::namespaced(w.client.clone(), "bulkhead-system");
    let spec = leases
        .get("bulkhead-operator")
        .await
        .expect("lease")
        .spec
        .expect("spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(spec.lease_transitions, Some(4));

    let c = elector(&w.client, "replica-c");
    assert_eq!(
        c.try_acquire_or_renew().await.expect("c"),
        Attempt::Following,
        "b's lease is fresh"
    );
}

#[tokio::test]
async fn losing_the_lease_stops_the_holder() {
    let w = world(vec![]).await;
    let a = elector(&w.client, "replica-a");
    assert!(a.acquire(&CancellationToken::new()).await);
    // Someone else takes the lease over (e.g. after a long pause of ours).
    let leases: Api<Lease> = Api::namespaced(w.client.clone(), "bulkhead-system");
    let mut lease = leases.get("bulkhead-operator").await.expect("lease");
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = Some("replica-b".into());
    }
    leases
        .replace("bulkhead-operator", &Default::default(), &lease)
        .await
        .expect("take over");

    let (shutdown, lost) = (CancellationToken::new(), CancellationToken::new());
    tokio::time::timeout(Duration::from_secs(5), a.keep(&shutdown, &lost))
        .await
        .expect("keep returns once the lease is lost");
    assert!(lost.is_cancelled());
}
