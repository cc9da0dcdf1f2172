//! Two Tenants render to objects that cannot touch each other: no shared
//! namespace, no colliding object, and nothing in one names the other.

use std::collections::BTreeSet;

use bulkhead_operator::desired::{SECRET_READER_CLUSTER_ROLE, desired_objects};
use bulkhead_operator::render::parse_tenant;
use bulkhead_operator::settings::OperatorSettings;
use serde_json::Value;

fn rendered(yaml: &str) -> Vec<Value> {
    let tenant = parse_tenant(yaml).unwrap();
    desired_objects(&tenant, &OperatorSettings::default())
        .unwrap()
        .to_json_in_apply_order()
        .unwrap()
}

fn example(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../manifests/examples/{name}.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// Two tenants: the full example, and a copy with every mention of its id
/// (name and spec) changed to another id.
fn pair() -> [(String, Vec<Value>); 2] {
    let full = example("full");
    let twin = full.replace("globex", "initech");
    [
        ("globex".to_owned(), rendered(&full)),
        ("initech".to_owned(), rendered(&twin)),
    ]
}

fn identity(object: &Value) -> (String, String, String) {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().unwrap_or_default().to_owned(),
        object["kind"].as_str().unwrap().to_owned(),
        meta["name"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn two_tenants_share_no_namespace_and_no_object() {
    let [(_, a), (_, b)] = pair();
    let namespaces = |objects: &[Value]| -> BTreeSet<String> {
        objects
            .iter()
            .map(|o| match o["kind"].as_str() {
                Some("Namespace") => o["metadata"]["name"].as_str().unwrap().to_owned(),
                _ => o["metadata"]["namespace"].as_str().unwrap().to_owned(),
            })
            .collect()
    };
    assert_eq!(
        namespaces(&a),
        BTreeSet::from(["bulkhead-globex".to_owned()])
    );
    assert_eq!(
        namespaces(&b),
        BTreeSet::from(["bulkhead-initech".to_owned()])
    );

    let ids_a: BTreeSet<_> = a.iter().map(identity).collect();
    let ids_b: BTreeSet<_> = b.iter().map(identity).collect();
    assert_eq!(ids_a.len(), a.len(), "duplicate object within one tenant");
    assert!(
        ids_a.is_disjoint(&ids_b),
        "colliding objects: {:?}",
        ids_a.intersection(&ids_b).collect::<Vec<_>>()
    );
}

#[test]
fn no_object_of_one_tenant_names_the_other() {
    let [(id_a, a), (id_b, b)] = pair();
    for (own, objects, other) in [(&id_a, &a, &id_b), (&id_b, &b, &id_a)] {
        for object in objects {
            let text = serde_json::to_string(object).unwrap();
            assert!(
                !text.contains(other.as_str()),
                "{own}'s {:?} mentions {other}",
                identity(object)
            );
        }
    }
}

#[test]
fn rbac_binds_only_the_own_service_account_to_the_secret_reader() {
    for (id, objects) in pair() {
        let binding = objects.iter().find(|o| o["kind"] == "RoleBinding").unwrap();
        let namespace = format!("bulkhead-{id}");
        assert_eq!(binding["metadata"]["namespace"], namespace.as_str());
        assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
        assert_eq!(binding["roleRef"]["name"], SECRET_READER_CLUSTER_ROLE);
        let subjects = binding["subjects"].as_array().unwrap();
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0]["kind"], "ServiceAccount");
        assert_eq!(subjects[0]["namespace"], namespace.as_str());
        // No other object grants anything: the only RBAC object is this binding.
        let rbac: Vec<_> = objects
            .iter()
            .filter(|o| {
                o["apiVersion"]
                    .as_str()
                    .unwrap()
                    .starts_with("rbac.authorization.k8s.io")
            })
            .collect();
        assert_eq!(rbac.len(), 1);
    }
}

#[test]
fn network_policies_admit_no_tenant_namespace() {
    for (id, objects) in pair() {
        let policy = objects
            .iter()
            .find(|o| o["kind"] == "NetworkPolicy")
            .unwrap();
        for rule in policy["spec"]["ingress"].as_array().unwrap() {
            for peer in rule["from"].as_array().unwrap() {
                assert!(peer.get("ipBlock").is_none(), "{id}: ingress by address");
                let selector = &peer["namespaceSelector"];
                assert!(
                    selector.as_object().is_some_and(|s| !s.is_empty()),
                    "{id}: empty namespace selector"
                );
                assert!(
                    !selector.to_string().contains("bulkhead-"),
                    "{id}: admits a tenant namespace"
                );
            }
        }
        // Egress never reaches pods by selector except kube-dns.
        for rule in policy["spec"]["egress"].as_array().unwrap() {
            for peer in rule["to"].as_array().unwrap() {
                if let Some(pods) = peer.get("podSelector") {
                    assert_eq!(pods["matchLabels"]["k8s-app"], "kube-dns", "{id}");
                }
            }
        }
    }
}
