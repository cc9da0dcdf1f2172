//! The install manifests keep the promises the builders rely on: the
//! operator holds no Secret rights, binds only the secret reader role, and
//! that role grants exactly the two Secrets the server reads.

use std::path::PathBuf;

use bulkhead_crds::server_config::{API_KEYS_SECRET_NAME, CREDENTIALS_SECRET_NAME};
use bulkhead_operator::desired::names::SERVICE_ACCOUNT_NAME;
use bulkhead_operator::desired::{SECRET_READER_CLUSTER_ROLE, desired_objects};
use bulkhead_operator::render::parse_tenant;
use bulkhead_operator::render::render_tenant;
use bulkhead_operator::settings::OperatorSettings;
use serde_json::{Value, json};

fn manifests() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

fn documents(relative: &str) -> (String, Vec<Value>) {
    let text = std::fs::read_to_string(manifests().join(relative)).unwrap();
    let docs = text
        .split("\n---\n")
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .map(|d| yaml_serde::from_str(d).unwrap())
        .collect();
    (text, docs)
}

fn rules_of(relative: &str) -> Vec<Value> {
    let (_, docs) = documents(relative);
    docs[0]["rules"].as_array().unwrap().clone()
}

#[test]
fn operator_cluster_role_never_touches_secrets() {
    for rule in rules_of("operator/clusterrole.yaml") {
        let resources = rule["resources"].as_array().unwrap();
        assert!(!resources.contains(&json!("secrets")), "{rule}");
        assert!(!resources.contains(&json!("*")), "{rule}");
        assert!(
            !rule["verbs"].as_array().unwrap().contains(&json!("*")),
            "{rule}"
        );
        assert!(
            !rule["verbs"]
                .as_array()
                .unwrap()
                .contains(&json!("escalate")),
            "{rule}"
        );
    }
}

#[test]
fn operator_may_bind_only_the_secret_reader_role() {
    let binds: Vec<Value> = rules_of("operator/clusterrole.yaml")
        .into_iter()
        .filter(|r| r["verbs"].as_array().unwrap().contains(&json!("bind")))
        .collect();
    assert_eq!(
        binds,
        [json!({
            "apiGroups": ["rbac.authorization.k8s.io"],
            "resources": ["clusterroles"],
            "verbs": ["bind"],
            "resourceNames": [SECRET_READER_CLUSTER_ROLE],
        })]
    );
}

#[test]
fn secret_reader_grants_get_and_watch_on_the_two_secrets_only() {
    let (_, docs) = documents("operator/secret-reader-clusterrole.yaml");
    assert_eq!(docs[0]["metadata"]["name"], SECRET_READER_CLUSTER_ROLE);
    assert_eq!(
        rules_of("operator/secret-reader-clusterrole.yaml"),
        [json!({
            "apiGroups": [""],
            "resources": ["secrets"],
            "verbs": ["get", "watch"],
            "resourceNames": [CREDENTIALS_SECRET_NAME, API_KEYS_SECRET_NAME],
        })]
    );
}

#[test]
fn every_rbac_rule_has_a_comment_saying_why() {
    for file in [
        "operator/clusterrole.yaml",
        "operator/secret-reader-clusterrole.yaml",
        "operator/leader-election-role.yaml",
        "operator/events-role.yaml",
    ] {
        let (text, _) = documents(file);
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.trim_start().starts_with("- apiGroups:") {
                assert!(
                    lines[i - 1].trim_start().starts_with('#'),
                    "{file}:{}: rule without a comment",
                    i + 1
                );
            }
        }
    }
}

#[test]
fn operator_deployment_is_hardened() {
    let (_, docs) = documents("operator/deployment.yaml");
    let pod = &docs[0]["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(
        container["image"],
        "ghcr.io/bulkhead-dev/bulkhead-operator:0.1.0"
    );
    assert_eq!(container["args"], json!(["run"]));
    assert_eq!(
        container["securityContext"],
        json!({
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        })
    );
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(
        container["resources"]["limits"].is_object()
            && container["resources"]["requests"].is_object()
    );
}

#[test]
fn secret_reader_binding_guard_admits_only_the_bindings_the_builders_make() {
    let (_, docs) = documents("operator/secret-reader-binding-guard.yaml");
    let (policy, binding) = (&docs[0], &docs[1]);
    assert_eq!(policy["kind"], "ValidatingAdmissionPolicy");
    assert_eq!(policy["spec"]["failurePolicy"], "Fail");
    let rule = &policy["spec"]["matchConstraints"]["resourceRules"][0];
    assert_eq!(rule["operations"], json!(["CREATE", "UPDATE"]));
    assert_eq!(
        rule["resources"],
        json!(["rolebindings", "clusterrolebindings"])
    );
    let condition = policy["spec"]["matchConditions"][0]["expression"]
        .as_str()
        .unwrap();
    assert!(condition.contains(&format!("'{SECRET_READER_CLUSTER_ROLE}'")));
    let validations: Vec<&str> = policy["spec"]["validations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["expression"].as_str().unwrap())
        .collect();
    assert!(
        validations
            .iter()
            .any(|v| v.contains(&format!("'{SERVICE_ACCOUNT_NAME}'")))
    );
    assert_eq!(binding["kind"], "ValidatingAdmissionPolicyBinding");
    assert_eq!(binding["spec"]["policyName"], policy["metadata"]["name"]);
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));

    // What the builders bind must pass the guard: one subject, the server's
    // own ServiceAccount, in the RoleBinding's own namespace.
    for example in ["minimal.yaml", "full.yaml"] {
        let yaml = std::fs::read_to_string(manifests().join("examples").join(example)).unwrap();
        let tenant = parse_tenant(&yaml).unwrap();
        let role_binding = desired_objects(&tenant, &OperatorSettings::default())
            .unwrap()
            .role_binding;
        assert_eq!(role_binding.role_ref.kind, "ClusterRole");
        assert_eq!(role_binding.role_ref.name, SECRET_READER_CLUSTER_ROLE);
        let subjects = role_binding.subjects.unwrap();
        assert_eq!(subjects.len(), 1, "{example}");
        assert_eq!(subjects[0].kind, "ServiceAccount");
        assert_eq!(subjects[0].name, SERVICE_ACCOUNT_NAME);
        assert_eq!(subjects[0].namespace, role_binding.metadata.namespace);
    }
}

#[test]
fn every_kustomization_resource_exists() {
    let (_, docs) = documents("kustomization.yaml");
    for resource in docs[0]["resources"].as_array().unwrap() {
        let path = manifests().join(resource.as_str().unwrap());
        assert!(path.is_file(), "{} is missing", path.display());
    }
}

#[test]
fn examples_hold_only_tenants_and_all_render() {
    let mut rendered = 0;
    for entry in std::fs::read_dir(manifests().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        let yaml = std::fs::read_to_string(&path).unwrap();
        render_tenant(&yaml, &OperatorSettings::default())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        rendered += 1;
    }
    assert!(rendered >= 2);
}
