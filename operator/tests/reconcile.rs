//! The reconciler against an in-memory API server: the state of the world
//! after reconcile (objects, owners, status, Events), not the call sequence.

mod reconcile_support;

use std::collections::BTreeMap;
use std::time::Duration;

use bulkhead_crds::Tenant;
use bulkhead_operator::controller::deletion::RETAIN_FINALIZER;
use bulkhead_operator::controller::error_policy;
use bulkhead_operator::controller::reconcile::{CONFLICT_RECHECK, RESYNC};
use bulkhead_operator::desired::deployment::DEPLOYMENT_NAME;
use bulkhead_operator::desired::network_policy::NETWORK_POLICY_NAME;
use bulkhead_operator::labels::{MANAGED_BY_LABEL, TENANT_LABEL};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, Namespace, ResourceQuota, Service, ServiceAccount,
};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Client, Resource, ResourceExt};
use reconcile_support::{tenant, world};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

fn condition<'a>(tenant: &'a Tenant, type_: &str) -> &'a Condition {
    tenant
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .unwrap_or_else(|| panic!("condition {type_} missing: {:?}", tenant.status))
}

fn has_condition(tenant: &Tenant, type_: &str) -> bool {
    tenant
        .status
        .as_ref()
        .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == type_))
}

async fn list_in<K>(client: &Client, namespace: &str) -> Vec<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
}

async fn events_with_reason(client: &Client, reason: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), "default")
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

/// Every child of `tenant` as `(kind, metadata)` read back from the API.
async fn children(client: &Client, tenant_id: &str) -> Vec<(String, kube::api::ObjectMeta)> {
    let ns = format!("bulkhead-{tenant_id}");
    let mut out = Vec::new();
    if let Some(n) = Api::<Namespace>::all(client.clone())
        .get_opt(&ns)
        .await
        .expect("get namespace")
    {
        out.push(("Namespace".to_owned(), n.metadata));
    }
    macro_rules! collect {
        ($($kind:ty),*) => {$(
            for object in list_in::<$kind>(client, &ns).await {
                out.push((<$kind>::kind(&()).into_owned(), object.metadata));
            }
        )*};
    }
    collect!(
        ServiceAccount,
        RoleBinding,
        NetworkPolicy,
        ResourceQuota,
        LimitRange,
        ConfigMap,
        Service,
        Deployment
    );
    out
}

/// Marks the server Deployment Available, as the deployment controller would.
async fn make_server_available(client: &Client, ns: &str) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let live = api.get(DEPLOYMENT_NAME).await.expect("deployment");
    let status = json!({"status": {
        "observedGeneration": live.metadata.generation,
        "replicas": 1, "availableReplicas": 1, "readyReplicas": 1,
        "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                        "message": "Deployment has minimum availability."}]
    }});
    api.patch_status(
        DEPLOYMENT_NAME,
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .expect("patch deployment status");
}

#[tokio::test]
async fn first_reconcile_creates_every_child_with_labels_owner_and_status() {
    let w = world(vec![tenant("acme", "Delete")]).await;
    let done = w.reconcile("acme").await;
    assert_eq!(done.result.expect("reconcile"), Action::requeue(RESYNC));

    let acme = w.tenant("acme").await;
    let uid = acme.uid().expect("uid");
    let kids = children(&w.client, "acme").await;
    let kinds: Vec<&str> = kids.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "RoleBinding",
            "NetworkPolicy",
            "ResourceQuota",
            "LimitRange",
            "ConfigMap",
            "Service",
            "Deployment"
        ]
    );
    for (kind, meta) in &kids {
        let labels = meta.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get(MANAGED_BY_LABEL).map(String::as_str),
            Some("bulkhead"),
            "{kind}"
        );
        assert_eq!(
            labels.get(TENANT_LABEL).map(String::as_str),
            Some("acme"),
            "{kind}"
        );
        let owners = meta.owner_references.clone().unwrap_or_default();
        assert_eq!(owners.len(), 1, "{kind}");
        assert_eq!(owners[0].uid, uid, "{kind}");
        assert_eq!(owners[0].kind, "Tenant", "{kind}");
        assert_eq!(owners[0].controller, Some(true), "{kind}");
        assert_eq!(owners[0].block_owner_deletion, Some(true), "{kind}");
    }
    assert_eq!(done.writes, 10, "one apply per child plus one status write");
    assert_eq!(done.events, 2, "Applied, and the first Ready verdict");

    let status = acme.status.clone().expect("status");
    assert_eq!(status.observed_generation, acme.metadata.generation);
    assert_eq!(status.namespace.as_deref(), Some("bulkhead-acme"));
    assert_eq!(
        status.endpoint.as_deref(),
        Some("http://mcp.bulkhead-acme.svc.cluster.local:8080/mcp")
    );
    for part in ["NamespaceReady", "NetworkIsolated", "CredentialsBound"] {
        let c = condition(&acme, part);
        assert_eq!(c.status, "True", "{part}: {c:?}");
        assert_eq!(c.observed_generation, acme.metadata.generation);
    }
    assert!(
        condition(&acme, "CredentialsBound")
            .message
            .contains("github_token")
    );
    let server = condition(&acme, "ServerAvailable");
    assert_eq!(
        (server.status.as_str(), server.reason.as_str()),
        ("False", "DeploymentProgressing")
    );
    let ready = condition(&acme, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "DeploymentProgressing")
    );
    assert_eq!(condition(&acme, "Reconciling").status, "True");
    assert_eq!(events_with_reason(&w.client, "Applied").await.len(), 1);

    // The deployment controller reports the server Available: Ready turns True.
    make_server_available(&w.client, "bulkhead-acme").await;
    w.reconcile("acme").await.result.expect("reconcile");
    let acme = w.tenant("acme").await;
    let ready = condition(&acme, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "AllPartsReady")
    );
    assert_eq!(condition(&acme, "ServerAvailable").status, "True");
    assert!(!has_condition(&acme, "Reconciling") && !has_condition(&acme, "Stalled"));
    assert_eq!(
        events_with_reason(&w.client, "AllPartsReady").await.len(),
        1
    );
}

#[tokio::test]
async fn second_reconcile_of_an_unchanged_tenant_makes_zero_writes() {
    let w = world(vec![tenant("acme", "Delete")]).await;
    let first = w.reconcile("acme").await;
    first.result.expect("first reconcile");
    let second = w.reconcile("acme").await;
    second.result.expect("second reconcile");
    assert_eq!(
        (second.writes, second.events),
        (0, 0),
        "a no-op reconcile must not write"
    );

    make_server_available(&w.client, "bulkhead-acme").await;
    w.reconcile("acme").await.result.expect("status change");
    let again = w.reconcile("acme").await;
    again.result.expect("no-op");
    assert_eq!(
        (again.writes, again.events),
        (0, 0),
        "a Ready tenant's no-op reconcile must not write"
    );
    assert!(again.reads > 0, "drift detection reads the children");
}

#[tokio::test]
async fn advisories_are_conditions_with_one_warning_event_each_until_the_spec_changes() {
    let mut advised = tenant("acme", "Delete");
    advised["spec"]["network"]["ingressFrom"] = json!([{"matchLabels": {"team": "agents"}}]);
    advised["spec"]["server"] = json!({"replicas": 2});
    advised["spec"]["rateLimits"] = json!({"perCaller": {"requestsPerMinute": 60, "burst": 5}});
    let w = world(vec![advised]).await;
    let first = w.reconcile("acme").await;
    first.result.expect("first reconcile");
    assert_eq!(
        first.writes, 10,
        "applied as written: one apply per child plus the status"
    );
    assert_eq!(
        first.events, 4,
        "Applied, the first Ready verdict and two advisories"
    );
    let acme = w.tenant("acme").await;
    for (type_, says) in [
        (
            "IngressByMutableLabel",
            "spec.network.ingressFrom[0] (team=agents)",
        ),
        (
            "RateLimitsPerReplica",
            "60/min with burst 5 on each replica, up to 120/min with burst 10 in all",
        ),
    ] {
        let c = condition(&acme, type_);
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", type_));
        assert!(c.message.contains(says), "{c:?}");
        let events = events_with_reason(&w.client, type_).await;
        assert_eq!(events.len(), 1, "{type_}");
        assert_eq!(events[0].type_.as_deref(), Some("Warning"));
    }

    let again = w.reconcile("acme").await;
    again.result.expect("no-op");
    assert_eq!((again.writes, again.events), (0, 0), "no Event is repeated");

    let change = json!({"spec": {
        "network": {"ingressFrom": [{"matchLabels": {"kubernetes.io/metadata.name": "agents"}}]},
        "server": {"replicas": 1},
    }});
    Api::<Tenant>::all(w.client.clone())
        .patch("acme", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .expect("spec change");
    w.reconcile("acme")
        .await
        .result
        .expect("reconcile after change");
    let acme = w.tenant("acme").await;
    assert!(
        !has_condition(&acme, "IngressByMutableLabel"),
        "{:?}",
        acme.status
    );
    assert!(
        !has_condition(&acme, "RateLimitsPerReplica"),
        "{:?}",
        acme.status
    );
    assert_eq!(
        events_with_reason(&w.client, "IngressByMutableLabel")
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn a_deleted_or_edited_child_is_healed_by_the_next_reconcile() {
    let w = world(vec![tenant("acme", "Delete")]).await;
    w.reconcile("acme").await.result.expect("reconcile");
    let ns = "bulkhead-acme";
    let policies: Api<NetworkPolicy> = Api::namespaced(w.client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(w.client.clone(), ns);
    let wanted_replicas = deployments
        .get(DEPLOYMENT_NAME)
        .await
        .expect("deployment")
        .spec
        .and_then(|s| s.replicas);

    policies
        .delete(NETWORK_POLICY_NAME, &DeleteParams::default())
        .await
        .expect("delete policy");
    let edit = json!({"spec": {"replicas": 7}});
    deployments
        .patch(
            DEPLOYMENT_NAME,
            &PatchParams::default(),
            &Patch::Merge(&edit),
        )
        .await
        .expect("hand edit");

    let healed = w.reconcile("acme").await;
    healed.result.expect("reconcile");
    assert!(
        policies
            .get_opt(NETWORK_POLICY_NAME)
            .await
            .expect("get")
            .is_some(),
        "policy restored"
    );
    let replicas = deployments
        .get(DEPLOYMENT_NAME)
        .await
        .expect("deployment")
        .spec
        .and_then(|s| s.replicas);
    assert_eq!(replicas, wanted_replicas, "hand edit reverted");
    assert_eq!(
        healed.writes, 2,
        "only the two drifted children are written"
    );
    let note = events_with_reason(&w.client, "Applied")
        .await
        .into_iter()
        .filter_map(|e| e.note)
        .find(|n| n.contains("NetworkPolicy"))
        .expect("Applied event naming the healed children");
    assert!(note.contains("Deployment/mcp-server"), "{note}");
}

#[tokio::test]
async fn an_existing_namespace_not_owned_by_the_tenant_is_never_adopted() {
    let foreign = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "bulkhead-acme", "labels": {"team": "payments"}}});
    let inside = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "payments-config", "namespace": "bulkhead-acme"}, "data": {"k": "v"}});
    let w = world(vec![tenant("acme", "Delete"), foreign, inside]).await;
    let done = w.reconcile("acme").await;
    assert_eq!(
        done.result.expect("reconcile"),
        Action::requeue(CONFLICT_RECHECK)
    );

    let ns = Api::<Namespace>::all(w.client.clone())
        .get("bulkhead-acme")
        .await
        .expect("namespace");
    assert_eq!(
        ns.labels(),
        &BTreeMap::from([("team".to_owned(), "payments".to_owned())])
    );
    assert!(ns.owner_references().is_empty(), "no owner reference added");
    let kids = children(&w.client, "acme").await;
    assert_eq!(
        kids.len(),
        2,
        "only the namespace and its own ConfigMap: {kids:?}"
    );
    let cm: Api<ConfigMap> = Api::namespaced(w.client.clone(), "bulkhead-acme");
    assert!(
        cm.get("payments-config")
            .await
            .expect("kept")
            .labels()
            .is_empty()
    );

    let acme = w.tenant("acme").await;
    let ns_ready = condition(&acme, "NamespaceReady");
    assert_eq!(
        (ns_ready.status.as_str(), ns_ready.reason.as_str()),
        ("False", "NamespaceConflict")
    );
    assert!(
        ns_ready.message.contains("bulkhead-acme"),
        "{}",
        ns_ready.message
    );
    assert_eq!(condition(&acme, "Ready").status, "False");
    assert_eq!(condition(&acme, "Stalled").status, "True");
    let events = events_with_reason(&w.client, "NamespaceConflict").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].type_.as_deref(), Some("Warning"));

    // Re-checking later changes nothing and writes nothing.
    let again = w.reconcile("acme").await;
    assert_eq!((again.writes, again.events), (0, 0));
}

#[tokio::test]
async fn a_namespace_owned_by_another_tenant_uid_is_not_adopted() {
    let other_owner = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "bulkhead-acme", "ownerReferences": [{"apiVersion": "bulkhead.dev/v1alpha1",
            "kind": "Tenant", "name": "acme", "uid": "uid-of-a-deleted-acme", "controller": true}]}});
    let w = world(vec![tenant("acme", "Delete"), other_owner]).await;
    w.reconcile("acme").await.result.expect("reconcile");
    assert_eq!(
        condition(&w.tenant("acme").await, "NamespaceReady").reason,
        "NamespaceConflict"
    );
    assert!(
        list_in::<Deployment>(&w.client, "bulkhead-acme")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn an_owner_reference_of_another_kind_carrying_the_tenant_uid_is_not_ownership() {
    let mut acme = tenant("acme", "Delete");
    acme["metadata"]["uid"] = json!("uid-of-acme");
    let decoy = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "bulkhead-acme", "ownerReferences": [{"apiVersion": "v1",
            "kind": "ConfigMap", "name": "decoy", "uid": "uid-of-acme"}]}});
    let w = world(vec![acme, decoy]).await;
    assert_eq!(w.tenant("acme").await.uid().as_deref(), Some("uid-of-acme"));
    w.reconcile("acme").await.result.expect("reconcile");
    assert_eq!(
        condition(&w.tenant("acme").await, "NamespaceReady").reason,
        "NamespaceConflict"
    );
    assert!(
        list_in::<Deployment>(&w.client, "bulkhead-acme")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn prune_deletes_stale_bulkhead_children_and_never_anything_else() {
    let w = world(vec![tenant("acme", "Delete")]).await;
    w.reconcile("acme").await.result.expect("reconcile");
    let acme = w.tenant("acme").await;
    let owner = acme.controller_owner_ref(&()).expect("owner ref");
    let labels = json!({"app.kubernetes.io/managed-by": "bulkhead", "bulkhead.dev/tenant": "acme"});
    let cms: Api<ConfigMap> = Api::namespaced(w.client.clone(), "bulkhead-acme");
    let svcs: Api<Service> = Api::namespaced(w.client.clone(), "bulkhead-acme");
    let make = |name: &str, labels: Option<&Value>, owned: bool| {
        let mut meta = json!({"name": name});
        if let Some(labels) = labels {
            meta["labels"] = labels.clone();
        }
        if owned {
            meta["ownerReferences"] = json!([owner]);
        }
        meta
    };
    // Left behind by an earlier spec/version: Bulkhead's labels and owner.
    cms.create(
        &Default::default(),
        &serde_json::from_value(json!({"metadata": make("old-config", Some(&labels), true)}))
            .unwrap(),
    )
    .await
    .unwrap();
    svcs.create(
        &Default::default(),
        &serde_json::from_value(json!({"metadata": make("old-svc", Some(&labels), true)})).unwrap(),
    )
    .await
    .unwrap();
    // Someone else's objects in the same namespace.
    cms.create(
        &Default::default(),
        &serde_json::from_value(json!({"metadata": make("user-config", None, false)})).unwrap(),
    )
    .await
    .unwrap();
    cms.create(
        &Default::default(),
        &serde_json::from_value(json!({"metadata": make("copied-labels", Some(&labels), false)}))
            .unwrap(),
    )
    .await
    .unwrap();

    // A no-op reconcile of the same generation does not sweep (no lists).
    let noop = w.reconcile("acme").await;
    assert_eq!(noop.writes, 0);
    assert!(cms.get_opt("old-config").await.unwrap().is_some());

    // A spec change (new generation) sweeps.
    let change = json!({"spec": {"displayName": "Acme Corporation"}});
    Api::<Tenant>::all(w.client.clone())
        .patch("acme", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .expect("spec change");
    w.reconcile("acme")
        .await
        .result
        .expect("reconcile after change");
    assert!(
        cms.get_opt("old-config").await.unwrap().is_none(),
        "stale labelled child pruned"
    );
    assert!(
        svcs.get_opt("old-svc").await.unwrap().is_none(),
        "stale labelled child pruned"
    );
    assert!(
        cms.get_opt("user-config").await.unwrap().is_some(),
        "unlabelled object kept"
    );
    assert!(
        cms.get_opt("copied-labels").await.unwrap().is_some(),
        "labelled but not owned: kept"
    );
    assert!(
        cms.get_opt("bulkhead-server-config")
            .await
            .unwrap()
            .is_some(),
        "wanted child kept"
    );
    assert!(
        svcs.get_opt("mcp").await.unwrap().is_some(),
        "wanted child kept"
    );
    let pruned = events_with_reason(&w.client, "Pruned").await;
    assert_eq!(pruned.len(), 1);
    let acme = w.tenant("acme").await;
    assert_eq!(
        acme.status.and_then(|s| s.observed_generation),
        acme.metadata.generation
    );
}

#[tokio::test]
async fn delete_policy_leaves_removal_to_owner_references() {
    let w = world(vec![tenant("acme", "Delete")]).await;
    w.reconcile("acme").await.result.expect("reconcile");
    assert!(
        !w.tenant("acme")
            .await
            .finalizers()
            .iter()
            .any(|f| f == RETAIN_FINALIZER),
        "no finalizer for Delete"
    );
    let uid = w.tenant("acme").await.uid().expect("uid");
    Api::<Tenant>::all(w.client.clone())
        .delete("acme", &DeleteParams::background())
        .await
        .expect("delete tenant");
    let collected = collect_garbage(&w.client, &uid).await;
    assert_eq!(
        collected, 9,
        "namespace and every child named the Tenant as owner"
    );
    assert!(
        children(&w.client, "acme").await.is_empty(),
        "namespace and every child collected"
    );
}

#[tokio::test]
async fn retain_policy_releases_every_child_before_the_tenant_goes() {
    let w = world(vec![tenant("acme", "Retain")]).await;
    w.reconcile("acme").await.result.expect("reconcile");
    let acme = w.tenant("acme").await;
    assert!(
        acme.finalizers().iter().any(|f| f == RETAIN_FINALIZER),
        "finalizer added for Retain"
    );
    assert_eq!(
        acme.status.as_ref().and_then(|s| s.observed_generation),
        acme.metadata.generation
    );
    let again = w.reconcile("acme").await;
    assert_eq!(
        (again.writes, again.events),
        (0, 0),
        "adding the finalizer converges"
    );
    let uid = acme.uid().expect("uid");
    // Nothing can cascade into a retained namespace: it has no owner and is
    // recognised by the Tenant's UID annotation instead (the no-op reconcile
    // above shows it is not taken for someone else's namespace).
    let namespace = Api::<Namespace>::all(w.client.clone())
        .get("bulkhead-acme")
        .await
        .expect("namespace");
    assert!(namespace.owner_references().is_empty());
    assert_eq!(
        namespace.annotations().get("bulkhead.dev/tenant-uid"),
        Some(&uid)
    );

    // The fake API server deletes at once and ignores finalizers, so the
    // "marked for deletion" state is set up as the API server would leave
    // it: the same objects, the Tenant with a deletionTimestamp.
    let mut objects = snapshot(&w.client).await;
    for object in &mut objects {
        if object["kind"] == "Tenant" {
            object["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
    }
    let deleting = world(objects).await;
    let done = deleting.reconcile("acme").await;
    assert_eq!(done.result.expect("finalize"), Action::await_change());

    assert!(
        Api::<Tenant>::all(deleting.client.clone())
            .get_opt("acme")
            .await
            .unwrap()
            .is_none(),
        "finalizer removed, Tenant gone"
    );
    let kids = children(&deleting.client, "acme").await;
    assert_eq!(kids.len(), 9, "namespace and every child retained");
    for (kind, meta) in kids {
        let owners = meta.owner_references.unwrap_or_default();
        assert!(
            owners.iter().all(|o| o.uid != uid),
            "{kind} still owned by the deleted Tenant"
        );
        assert_eq!(
            meta.labels
                .unwrap_or_default()
                .get(TENANT_LABEL)
                .map(String::as_str),
            Some("acme")
        );
    }
    assert_eq!(
        events_with_reason(&deleting.client, "Retained").await.len(),
        1
    );
}

#[tokio::test]
async fn deleting_after_a_switch_to_delete_keeps_owner_references_for_garbage_collection() {
    let w = world(vec![tenant("acme", "Retain")]).await;
    w.reconcile("acme").await.result.expect("reconcile");
    let uid = w.tenant("acme").await.uid().expect("uid");

    // Policy switched to Delete and the Tenant deleted before the operator
    // saw the switch: the finalizer is still there.
    let mut objects = snapshot(&w.client).await;
    for object in &mut objects {
        if object["kind"] == "Tenant" {
            object["spec"]["deletionPolicy"] = json!("Delete");
            object["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
            assert!(
                object["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|f| f == RETAIN_FINALIZER)),
                "set-up: finalizer present"
            );
        }
    }
    let deleting = world(objects).await;
    let done = deleting.reconcile("acme").await;
    assert_eq!(done.result.expect("finalize"), Action::await_change());

    assert!(
        Api::<Tenant>::all(deleting.client.clone())
            .get_opt("acme")
            .await
            .unwrap()
            .is_none(),
        "finalizer removed, Tenant gone"
    );
    let kids = children(&deleting.client, "acme").await;
    assert_eq!(kids.len(), 9, "nothing deleted by the operator itself");
    for (kind, meta) in &kids {
        let owners = meta.owner_references.clone().unwrap_or_default();
        assert!(
            owners.iter().any(|o| o.uid == uid),
            "{kind} lost its owner reference; garbage collection would keep it"
        );
    }
    assert!(
        events_with_reason(&deleting.client, "Retained")
            .await
            .is_empty(),
        "nothing retained"
    );
    assert_eq!(collect_garbage(&deleting.client, &uid).await, 9);
}

#[tokio::test]
async fn switching_retain_back_to_delete_removes_the_finalizer() {
    let w = world(vec![tenant("acme", "Retain")]).await;
    w.reconcile("acme").await.result.expect("reconcile");
    let change = json!({"spec": {"deletionPolicy": "Delete"}});
    Api::<Tenant>::all(w.client.clone())
        .patch("acme", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .expect("switch policy");
    w.reconcile("acme").await.result.expect("reconcile");
    assert!(w.tenant("acme").await.finalizers().is_empty());
}

#[tokio::test]
async fn an_invalid_spec_is_reported_and_waits_for_a_change_without_touching_the_cluster() {
    let mut bad = tenant("acme", "Delete");
    bad["spec"]["connectors"][0]["credential"] = json!("billing");
    let w = world(vec![bad]).await;
    let done = w.reconcile("acme").await;
    assert_eq!(
        done.result.expect("no error: nothing to retry"),
        Action::await_change()
    );

    assert!(
        children(&w.client, "acme").await.is_empty(),
        "nothing created"
    );
    let acme = w.tenant("acme").await;
    let ready = condition(&acme, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(
        ready.message.contains("spec.connectors[0].credential"),
        "{}",
        ready.message
    );
    assert_eq!(condition(&acme, "Stalled").status, "True");
    assert_eq!(
        acme.status.as_ref().and_then(|s| s.observed_generation),
        acme.metadata.generation
    );
    let events = events_with_reason(&w.client, "InvalidSpec").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].type_.as_deref(), Some("Warning"));

    // The status write triggers another reconcile: it must settle, not loop.
    let again = w.reconcile("acme").await;
    assert_eq!(again.result.expect("reconcile"), Action::await_change());
    assert_eq!((again.writes, again.events), (0, 0));
}

#[tokio::test]
async fn a_child_the_api_server_rejects_as_invalid_stalls_until_the_spec_changes() {
    let w = world(vec![tenant("acme", "Delete")]).await;
    w.faults.reject_writes_to(Some("/deployments/"));
    let done = w.reconcile("acme").await;
    assert_eq!(
        done.result
            .expect("no error: retrying the same spec cannot help"),
        Action::await_change()
    );

    let acme = w.tenant("acme").await;
    let ready = condition(&acme, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "ApplyRejected")
    );
    assert!(
        ready.message.contains("spec.template.spec.nodeSelector"),
        "server's message reported: {}",
        ready.message
    );
    let stalled = condition(&acme, "Stalled");
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "ApplyRejected")
    );
    assert_eq!(
        acme.status.as_ref().and_then(|s| s.observed_generation),
        acme.metadata.generation
    );
    let events = events_with_reason(&w.client, "ApplyRejected").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].type_.as_deref(), Some("Warning"));
    assert!(
        events_with_reason(&w.client, "ReconcileFailed")
            .await
            .is_empty(),
        "not treated as a failure to retry"
    );

    // The status write triggers another reconcile: it settles. Its only
    // write is the Deployment apply the server refuses again.
    let version = acme.resource_version();
    let again = w.reconcile("acme").await;
    assert_eq!(again.result.expect("reconcile"), Action::await_change());
    assert_eq!((again.writes, again.events), (1, 0), "no status churn");
    assert_eq!(w.tenant("acme").await.resource_version(), version);

    // Once the server accepts the object, the Tenant becomes Ready again.
    w.faults.reject_writes_to(None);
    let healed = w.reconcile("acme").await;
    assert!(healed.result.is_ok());
    let acme = w.tenant("acme").await;
    assert!(!has_condition(&acme, "Stalled"));
}

#[tokio::test]
async fn a_malformed_tenant_is_reported_and_does_not_stop_the_others() {
    let mut malformed = tenant("broken", "Delete");
    malformed["spec"]["server"] = json!({"replicas": "lots"});
    let w = world(vec![malformed, tenant("acme", "Delete")]).await;

    // The list the Controller's watch makes still yields both Tenants.
    let guarded: Api<kube::core::DeserializeGuard<Tenant>> = Api::all(w.client.clone());
    let listed = guarded
        .list(&ListParams::default())
        .await
        .expect("list survives a malformed Tenant");
    assert_eq!(listed.items.len(), 2);
    assert_eq!(listed.items.iter().filter(|t| t.0.is_err()).count(), 1);

    let done = w.reconcile("broken").await;
    assert_eq!(
        done.result.expect("reported, not an error"),
        Action::await_change()
    );
    let raw: Api<kube::api::DynamicObject> = Api::all_with(
        w.client.clone(),
        &kube::api::ApiResource::erase::<Tenant>(&()),
    );
    let broken = raw.get("broken").await.expect("broken tenant");
    let conditions = broken.data["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ready = conditions
        .iter()
        .find(|c| c["type"] == "Ready")
        .expect("Ready");
    assert_eq!(ready["reason"], "MalformedTenant");
    assert!(
        ready["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Expected i32"),
        "{ready}"
    );
    assert_eq!(
        events_with_reason(&w.client, "MalformedTenant").await.len(),
        1
    );
    let again = w.reconcile("broken").await;
    assert_eq!(
        (again.writes, again.events),
        (0, 0),
        "reported once per generation"
    );

    w.reconcile("acme")
        .await
        .result
        .expect("the well-formed Tenant reconciles");
    assert_eq!(children(&w.client, "acme").await.len(), 9);
}

#[tokio::test]
async fn transient_api_errors_back_off_per_tenant_without_blocking_others() {
    let w = world(vec![tenant("acme", "Delete"), tenant("globex", "Delete")]).await;
    w.faults.fail_writes_in(Some("bulkhead-acme"));

    let mut delays = Vec::new();
    for _ in 0..4 {
        let failed = w.reconcile("acme").await;
        let error = failed.result.expect_err("writes into bulkhead-acme fail");
        assert_eq!(error.metric_label(), "api_server_error");
        let object = std::sync::Arc::new(w.fetch("acme").await);
        delays.push(error_policy(object, &error, w.ctx.clone()));
    }
    let expected: Vec<Action> = [1, 2, 4, 8]
        .map(|s| Action::requeue(Duration::from_secs(s)))
        .to_vec();
    assert_eq!(delays, expected, "exponential back-off");
    assert_eq!(
        events_with_reason(&w.client, "ReconcileFailed").await.len(),
        1,
        "one Event, repeated as a series"
    );

    // Meanwhile another Tenant is unaffected.
    w.reconcile("globex")
        .await
        .result
        .expect("globex reconciles");
    assert_eq!(children(&w.client, "globex").await.len(), 9);

    // The failures are counted by a bounded reason, never by tenant.
    let metrics = w.ctx.metrics.encode().expect("metrics");
    assert!(
        metrics.contains("bulkhead_operator_reconcile_errors_total{reason=\"api_server_error\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bulkhead_operator_reconciles_total{outcome=\"Applied\"} 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("acme") && !metrics.contains("globex"),
        "{metrics}"
    );

    // Recovery resets acme's back-off.
    w.faults.fail_writes_in(None);
    w.reconcile("acme").await.result.expect("acme recovers");
    assert_eq!(children(&w.client, "acme").await.len(), 9);
    w.faults.fail_writes_in(Some("bulkhead-acme"));
    let object = std::sync::Arc::new(w.fetch("acme").await);
    let error = bulkhead_operator::controller::error::Error::UnnamedChild {
        kind: "test".into(),
    };
    assert_eq!(
        error_policy(object, &error, w.ctx.clone()),
        Action::requeue(Duration::from_secs(1))
    );
}

#[tokio::test]
async fn two_tenants_reconciled_side_by_side_share_nothing() {
    let w = world(vec![tenant("acme", "Delete"), tenant("globex", "Delete")]).await;
    let (a, g) = tokio::join!(w.reconcile("acme"), w.reconcile("globex"));
    a.result.expect("acme");
    g.result.expect("globex");
    let acme = w.tenant("acme").await;
    let globex = w.tenant("globex").await;
    assert_ne!(acme.uid(), globex.uid());

    for (me, other) in [(&acme, &globex), (&globex, &acme)] {
        let id = me.name_any();
        let ns = format!("bulkhead-{id}");
        let kids = children(&w.client, &id).await;
        assert_eq!(kids.len(), 9);
        for (kind, meta) in &kids {
            if kind != "Namespace" {
                assert_eq!(meta.namespace.as_deref(), Some(ns.as_str()), "{kind}");
            }
            assert_eq!(
                meta.labels.as_ref().and_then(|l| l.get(TENANT_LABEL)),
                Some(&id),
                "{kind}"
            );
            let owners = meta.owner_references.clone().unwrap_or_default();
            assert!(
                owners.iter().all(|o| Some(&o.uid) == me.uid().as_ref()),
                "{kind}"
            );
        }
        // No object of one tenant mentions the other tenant's namespace.
        let other_ns = format!("bulkhead-{}", other.name_any());
        for object in snapshot_namespace(&w.client, &ns).await {
            assert!(!object.to_string().contains(&other_ns), "{object}");
        }
        assert_ne!(
            me.status.as_ref().and_then(|s| s.endpoint.clone()),
            other.status.as_ref().and_then(|s| s.endpoint.clone())
        );
    }
}

/// Every object in the cluster that the tests care about, as JSON.
async fn snapshot(client: &Client) -> Vec<Value> {
    let mut objects = Vec::new();
    for t in Api::<Tenant>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
    {
        objects.push(serde_json::to_value(t).unwrap());
    }
    for n in Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
    {
        let ns = n.name_any();
        objects.push(serde_json::to_value(n).unwrap());
        objects.extend(snapshot_namespace(client, &ns).await);
    }
    objects
}

async fn snapshot_namespace(client: &Client, ns: &str) -> Vec<Value> {
    let mut objects = Vec::new();
    macro_rules! collect {
        ($($kind:ty),*) => {$(
            for object in list_in::<$kind>(client, ns).await {
                objects.push(serde_json::to_value(object).unwrap());
            }
        )*};
    }
    collect!(
        ServiceAccount,
        RoleBinding,
        NetworkPolicy,
        ResourceQuota,
        LimitRange,
        ConfigMap,
        Service,
        Deployment
    );
    objects
}

/// The garbage collector's rule, for the one owner a test deleted: every
/// object whose owner references all name `deleted_uid` is deleted.
/// Returns how many objects were collected.
async fn collect_garbage(client: &Client, deleted_uid: &str) -> usize {
    let orphaned = |meta: &kube::api::ObjectMeta| {
        let owners = meta.owner_references.clone().unwrap_or_default();
        !owners.is_empty() && owners.iter().all(|o| o.uid == deleted_uid)
    };
    let mut collected = 0;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in namespaces.list(&ListParams::default()).await.unwrap().items {
        let name = ns.name_any();
        macro_rules! collect {
            ($($kind:ty),*) => {$(
                let api: Api<$kind> = Api::namespaced(client.clone(), &name);
                for object in list_in::<$kind>(client, &name).await {
                    if orphaned(&object.metadata) {
                        api.delete(&object.name_any(), &DeleteParams::background()).await.unwrap();
                        collected += 1;
                    }
                }
            )*};
        }
        collect!(
            ServiceAccount,
            RoleBinding,
            NetworkPolicy,
            ResourceQuota,
            LimitRange,
            ConfigMap,
            Service,
            Deployment
        );
        if orphaned(&ns.metadata) {
            namespaces
                .delete(&name, &DeleteParams::background())
                .await
                .unwrap();
            collected += 1;
        }
    }
    collected
}

#[tokio::test]
async fn a_field_the_spec_no_longer_sets_gets_applied_away() {
    let mut sandboxed = tenant("acme", "Delete");
    sandboxed["spec"]["server"] = json!({"runtimeClassName": "gvisor"});
    let w = world(vec![sandboxed]).await;
    w.reconcile("acme").await.result.expect("reconcile");
    let deployments: Api<Deployment> = Api::namespaced(w.client.clone(), "bulkhead-acme");
    let digest = |d: &Deployment| d.annotations().get("bulkhead.dev/applied-digest").cloned();
    let before = deployments.get("mcp-server").await.expect("deployment");
    assert!(
        digest(&before).is_some(),
        "applied objects carry their digest"
    );

    // Removing a field leaves nothing missing from the live object, which
    // still has it; the changed digest is what makes the operator apply.
    let change = json!({"spec": {"server": {"runtimeClassName": null}}});
    Api::<Tenant>::all(w.client.clone())
        .patch("acme", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .expect("edit spec");
    w.reconcile("acme").await.result.expect("reconcile");
    let after = deployments.get("mcp-server").await.expect("deployment");
    assert_ne!(
        digest(&after),
        digest(&before),
        "the Deployment was applied again"
    );
    assert_eq!(w.reconcile("acme").await.writes, 0, "and then converges");
}
