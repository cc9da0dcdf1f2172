//! Leader election on a Lease against the in-memory API server.

mod reconcile_support;

use std::time::Duration;

use bulkhead_operator::controller::leader::{Attempt, LeaderElector, LeaseError, LeaseSettings};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use reconcile_support::world;
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn elector(client: &Client, identity: &str) -> LeaderElector {
    elector_with(
        client,
        identity,
        Duration::from_secs(15),
        Duration::from_secs(10),
    )
}

fn elector_with(
    client: &Client,
    identity: &str,
    lease_duration: Duration,
    renew_deadline: Duration,
) -> LeaderElector {
    LeaderElector::new(
        client.clone(),
        LeaseSettings {
            name: "bulkhead-operator".into(),
            namespace: "bulkhead-system".into(),
            identity: identity.into(),
            lease_duration,
            renew_deadline,
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
    let won_at = a.acquire(&CancellationToken::new()).await.expect("leading");
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
    tokio::time::timeout(Duration::from_secs(5), a.keep(&shutdown, &lost, won_at))
        .await
        .expect("keep returns once the lease is lost");
    assert!(lost.is_cancelled());
}

#[tokio::test]
async fn a_hanging_lease_api_stops_the_holder_before_the_lease_can_be_taken_over() {
    let w = world(vec![]).await;
    let lease_duration = Duration::from_secs(3);
    let renew_deadline = Duration::from_millis(500);
    let a = elector_with(&w.client, "replica-a", lease_duration, renew_deadline);
    let won_at = a.acquire(&CancellationToken::new()).await.expect("leading");
    // From now on the API server accepts lease requests and never answers.
    w.faults.hang_requests_to(Some("/leases"));

    let (shutdown, lost) = (CancellationToken::new(), CancellationToken::new());
    tokio::time::timeout(Duration::from_secs(10), a.keep(&shutdown, &lost, won_at))
        .await
        .expect("keep gives up instead of waiting on the hung request");
    assert!(lost.is_cancelled(), "leadership dropped");
    let held_for = won_at.elapsed();
    assert!(
        held_for < lease_duration,
        "stopped after {held_for:?}; another replica may take over after {lease_duration:?}"
    );

    // A single attempt is bounded the same way.
    let attempt = tokio::time::timeout(
        Duration::from_secs(10),
        a.try_acquire_or_renew_until(tokio::time::Instant::now() + Duration::from_millis(100)),
    )
    .await
    .expect("attempt bounded by its deadline");
    assert!(
        matches!(attempt, Err(LeaseError::DeadlineExceeded)),
        "{attempt:?}"
    );
}
