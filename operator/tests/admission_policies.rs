//! The ValidatingAdmissionPolicies in `manifests/` evaluated locally with
//! kube's CEL library: everything the builders make is admitted, and the
//! abuses each policy exists for are refused.

use std::path::PathBuf;

use bulkhead_operator::desired::{TenantObjects, desired_objects};
use bulkhead_operator::render::parse_tenant;
use bulkhead_operator::settings::OperatorSettings;
use kube_cel::{
    AdmissionRequest, GroupVersionKind, GroupVersionResource, VapEvaluator, VapExpression,
};
use serde_json::{Value, json};

/// A way to misuse a Deployment: its name and the edit that makes it.
type Abuse = (&'static str, fn(&mut Value));

/// Where a Deployment keeps its pod spec.
const POD: &str = "/spec/template/spec";
const OPERATOR: &str = "system:serviceaccount:bulkhead-system:bulkhead-operator";

struct Policy {
    match_conditions: Vec<VapExpression>,
    validations: Vec<VapExpression>,
}

fn policy(file: &str) -> Policy {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/operator")
        .join(file);
    let text = std::fs::read_to_string(path).unwrap();
    let first = text.split("\n---\n").next().unwrap();
    let doc: Value = yaml_serde::from_str(first).unwrap();
    assert_eq!(doc["kind"], "ValidatingAdmissionPolicy");
    let expressions = |key: &str| -> Vec<VapExpression> {
        doc["spec"][key]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| VapExpression {
                expression: as_kube_cel_sees_labels(e["expression"].as_str().unwrap()),
                message: e["message"].as_str().map(str::to_owned),
                message_expression: None,
            })
            .collect()
    };
    Policy {
        match_conditions: expressions("matchConditions"),
        validations: expressions("validations"),
    }
}

/// The API server leaves the keys of maps such as `metadata.labels` as they
/// are, but kube-cel, which has no schema here, escapes every object key the
/// way the API server escapes declared field names (`.` -> `__dot__`, ...).
/// So label and annotation keys in the expressions are escaped the same way
/// for the local evaluation; the manifests keep the API server's spelling.
fn as_kube_cel_sees_labels(expression: &str) -> String {
    ["app.kubernetes.io/managed-by", "bulkhead.dev/tenant-uid"]
        .into_iter()
        .fold(expression.to_owned(), |expression, key| {
            let escaped = key
                .replace('_', "__")
                .replace('.', "__dot__")
                .replace('-', "__dash__")
                .replace('/', "__slash__");
            expression.replace(&format!("'{key}'"), &format!("'{escaped}'"))
        })
}

/// One admission request as the API server would present it.
struct Request {
    user: &'static str,
    operation: &'static str,
    group: &'static str,
    kind: &'static str,
    resource: &'static str,
    namespace: Option<Value>,
    object: Option<Value>,
    old_object: Option<Value>,
}

impl Request {
    fn new(operation: &'static str, object: &Value, namespace: Option<&Value>) -> Self {
        let kind = object["kind"].as_str().unwrap();
        let (group, kind, resource) = match kind {
            "Namespace" => ("", "Namespace", "namespaces"),
            "ServiceAccount" => ("", "ServiceAccount", "serviceaccounts"),
            "ConfigMap" => ("", "ConfigMap", "configmaps"),
            "Service" => ("", "Service", "services"),
            "ResourceQuota" => ("", "ResourceQuota", "resourcequotas"),
            "LimitRange" => ("", "LimitRange", "limitranges"),
            "Deployment" => ("apps", "Deployment", "deployments"),
            "NetworkPolicy" => ("networking.k8s.io", "NetworkPolicy", "networkpolicies"),
            "RoleBinding" => ("rbac.authorization.k8s.io", "RoleBinding", "rolebindings"),
            "ClusterRoleBinding" => (
                "rbac.authorization.k8s.io",
                "ClusterRoleBinding",
                "clusterrolebindings",
            ),
            other => panic!("no request mapping for {other}"),
        };
        Self {
            user: OPERATOR,
            operation,
            group,
            kind,
            resource,
            namespace: namespace.cloned(),
            object: (operation != "DELETE").then(|| object.clone()),
            old_object: (operation != "CREATE").then(|| object.clone()),
        }
    }

    fn by(mut self, user: &'static str) -> Self {
        self.user = user;
        self
    }

    fn replacing(mut self, old: Value) -> Self {
        self.old_object = Some(old);
        self
    }
}

/// Whether the API server would admit `request` under `policy`: a policy
/// whose match conditions do not all hold does not apply; otherwise every
/// validation must hold (an evaluation error counts as a refusal, as with
/// `failurePolicy: Fail`).
fn admits(policy: &Policy, request: &Request) -> bool {
    let object = request
        .object
        .as_ref()
        .or(request.old_object.as_ref())
        .unwrap();
    let mut builder = VapEvaluator::builder()
        .request(AdmissionRequest {
            operation: request.operation.to_owned(),
            username: request.user.to_owned(),
            name: object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            namespace: object["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            kind: GroupVersionKind {
                group: request.group.to_owned(),
                version: "v1".to_owned(),
                kind: request.kind.to_owned(),
            },
            resource: GroupVersionResource {
                group: request.group.to_owned(),
                version: "v1".to_owned(),
                resource: request.resource.to_owned(),
            },
            ..AdmissionRequest::default()
        })
        .object(request.object.clone().unwrap_or(Value::Null))
        .namespace_object(request.namespace.clone().unwrap_or(Value::Null));
    if let Some(old) = &request.old_object {
        builder = builder.old_object(old.clone());
    }
    let evaluator = builder.build();
    let matched = evaluator.evaluate(&policy.match_conditions);
    if !matched.iter().all(|r| r.passed) {
        return true;
    }
    let refused: Vec<String> = evaluator
        .evaluate(&policy.validations)
        .into_iter()
        .filter(|r| !r.passed)
        .map(|r| r.message.unwrap_or(r.expression))
        .collect();
    // Shown when an assertion about admission fails.
    for reason in &refused {
        eprintln!("refused: {reason}");
    }
    refused.is_empty()
}

fn objects(example: &str) -> TenantObjects {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/examples")
        .join(example);
    let tenant = parse_tenant(&std::fs::read_to_string(path).unwrap()).unwrap();
    desired_objects(&tenant, &OperatorSettings::default()).unwrap()
}

fn json_of<T: serde::Serialize>(object: &T, kind: &str, api_version: &str) -> Value {
    let mut value = serde_json::to_value(object).unwrap();
    value["kind"] = json!(kind);
    value["apiVersion"] = json!(api_version);
    value
}

fn foreign_namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}})
}

#[test]
fn the_operator_may_write_everything_it_builds() {
    let guard = policy("operator-write-guard.yaml");
    for example in ["minimal.yaml", "full.yaml"] {
        let objects = objects(example);
        let all = objects.to_json_in_apply_order().unwrap();
        let namespace = &all[0];
        assert!(admits(&guard, &Request::new("CREATE", namespace, None)));
        assert!(admits(&guard, &Request::new("UPDATE", namespace, None)));
        for child in &all[1..] {
            for operation in ["CREATE", "UPDATE", "DELETE"] {
                assert!(
                    admits(&guard, &Request::new(operation, child, Some(namespace))),
                    "{example}: {operation} {} refused",
                    child["kind"]
                );
            }
        }
    }
}

#[test]
fn the_operator_may_not_write_outside_tenant_namespaces() {
    let guard = policy("operator-write-guard.yaml");
    let objects = objects("full.yaml");
    let kube_system = foreign_namespace("kube-system");
    let mut config_map = json_of(&objects.config_map, "ConfigMap", "v1");
    config_map["metadata"]["namespace"] = json!("kube-system");
    for operation in ["CREATE", "UPDATE", "DELETE"] {
        let request = Request::new(operation, &config_map, Some(&kube_system));
        assert!(!admits(&guard, &request), "{operation} in kube-system");
        // The guard is about the operator only.
        assert!(admits(&guard, &request.by("kubernetes-admin")));
    }
    // Claiming an existing namespace by labelling it is refused.
    let mut claimed = kube_system.clone();
    claimed["metadata"]["labels"]["app.kubernetes.io/managed-by"] = json!("bulkhead");
    assert!(!admits(
        &guard,
        &Request::new("UPDATE", &claimed, None).replacing(kube_system.clone())
    ));
    assert!(!admits(&guard, &Request::new("CREATE", &kube_system, None)));
}

#[test]
fn the_operator_may_not_deploy_anything_that_reads_secrets() {
    let guard = policy("operator-write-guard.yaml");
    let objects = objects("full.yaml");
    let namespace = json_of(&objects.namespace, "Namespace", "v1");
    let deployment = json_of(&objects.deployment, "Deployment", "apps/v1");
    let abuses: [Abuse; 6] = [
        ("a Secret volume", |d: &mut Value| {
            d.pointer_mut(&format!("{POD}/volumes"))
                .unwrap()
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "stolen", "secret": {"secretName": "bulkhead-credentials"}}));
        }),
        ("a projected Secret", |d: &mut Value| {
            d.pointer_mut(&format!("{POD}/volumes"))
                    .unwrap()
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "stolen", "projected": {"sources": [{"secret": {"name": "x"}}]}}));
        }),
        ("envFrom a Secret", |d: &mut Value| {
            d.pointer_mut(&format!("{POD}/containers/0")).unwrap()["envFrom"] =
                json!([{"secretRef": {"name": "bulkhead-credentials"}}]);
        }),
        ("an env var from a Secret", |d: &mut Value| {
            d.pointer_mut(&format!("{POD}/containers/0")).unwrap()["env"] =
                json!([{"name": "T", "valueFrom": {"secretKeyRef": {"name": "x", "key": "y"}}}]);
        }),
        ("another ServiceAccount", |d: &mut Value| {
            d.pointer_mut(POD).unwrap()["serviceAccountName"] = json!("default");
        }),
        ("an init container", |d: &mut Value| {
            d.pointer_mut(POD).unwrap()["initContainers"] =
                json!([{"name": "x", "image": "busybox"}]);
        }),
    ];
    assert!(admits(
        &guard,
        &Request::new("CREATE", &deployment, Some(&namespace))
    ));
    for (abuse, edit) in abuses {
        let mut changed = deployment.clone();
        edit(&mut changed);
        for operation in ["CREATE", "UPDATE"] {
            assert!(
                !admits(&guard, &Request::new(operation, &changed, Some(&namespace))),
                "{operation} of a Deployment with {abuse} was admitted"
            );
        }
    }
}

#[test]
fn the_secret_reader_role_binds_only_the_namespaces_own_server() {
    let guard = policy("secret-reader-binding-guard.yaml");
    let objects = objects("full.yaml");
    let namespace = json_of(&objects.namespace, "Namespace", "v1");
    let binding = json_of(
        &objects.role_binding,
        "RoleBinding",
        "rbac.authorization.k8s.io/v1",
    );
    assert!(admits(
        &guard,
        &Request::new("CREATE", &binding, Some(&namespace))
    ));

    let mut to_default = binding.clone();
    to_default["subjects"][0]["name"] = json!("default");
    let mut to_other_namespace = binding.clone();
    to_other_namespace["subjects"][0]["namespace"] = json!("bulkhead-acme");
    let mut two_subjects = binding.clone();
    two_subjects["subjects"]
        .as_array_mut()
        .unwrap()
        .push(json!({"kind": "User", "name": "mallory"}));
    let mut cluster_wide = binding.clone();
    cluster_wide["kind"] = json!("ClusterRoleBinding");
    cluster_wide["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("namespace");
    for (case, object) in [
        ("another ServiceAccount", &to_default),
        ("another namespace's server", &to_other_namespace),
        ("a second subject", &two_subjects),
        ("a ClusterRoleBinding", &cluster_wide),
    ] {
        for user in [OPERATOR, "kubernetes-admin"] {
            let request = Request::new("CREATE", object, Some(&namespace)).by(user);
            assert!(!admits(&guard, &request), "{case} by {user} was admitted");
        }
    }
    // Bindings of other roles are not this policy's business.
    let mut other_role = to_default;
    other_role["roleRef"]["name"] = json!("view");
    assert!(admits(
        &guard,
        &Request::new("CREATE", &other_role, Some(&namespace))
    ));
}

#[test]
fn only_the_operator_may_mark_a_namespace_as_bulkheads() {
    let guard = policy("namespace-ownership-guard.yaml");
    // A stored Tenant has a UID, so its namespace carries every mark.
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples/minimal.yaml");
    let mut tenant = parse_tenant(&std::fs::read_to_string(path).unwrap()).unwrap();
    tenant.metadata.uid = Some("0b5e3d5c-uid-of-acme".to_owned());
    let namespace = desired_objects(&tenant, &OperatorSettings::default())
        .unwrap()
        .namespace;
    let built = json_of(&namespace, "Namespace", "v1");
    let name = built["metadata"]["name"].as_str().unwrap().to_owned();
    let plain = foreign_namespace(&name);
    let admin = "kubernetes-admin";

    // The operator creates and updates its namespaces; others create plain ones.
    assert!(admits(&guard, &Request::new("CREATE", &built, None)));
    assert!(admits(
        &guard,
        &Request::new("UPDATE", &built, None).replacing(built.clone())
    ));
    assert!(admits(
        &guard,
        &Request::new("CREATE", &plain, None).by(admin)
    ));

    // Each mark alone, copied by someone else, is refused on create and
    // when added to an existing namespace.
    let mut uid_annotation = plain.clone();
    uid_annotation["metadata"]["annotations"] = built["metadata"]["annotations"].clone();
    let mut managed_label = plain.clone();
    managed_label["metadata"]["labels"]["app.kubernetes.io/managed-by"] = json!("bulkhead");
    let mut tenant_owner = plain.clone();
    tenant_owner["metadata"]["ownerReferences"] = built["metadata"]["ownerReferences"].clone();
    assert!(tenant_owner["metadata"]["ownerReferences"][0]["kind"] == "Tenant");
    for (mark, marked) in [
        ("the tenant-uid annotation", &uid_annotation),
        ("the managed-by label", &managed_label),
        ("a Tenant owner reference", &tenant_owner),
        ("all marks", &built),
    ] {
        assert!(
            !admits(&guard, &Request::new("CREATE", marked, None).by(admin)),
            "creating a namespace with {mark} was admitted"
        );
        assert!(
            !admits(
                &guard,
                &Request::new("UPDATE", marked, None)
                    .by(admin)
                    .replacing(plain.clone())
            ),
            "adding {mark} was admitted"
        );
    }

    // Re-pointing the annotation (say, of a retained namespace) is refused.
    let mut repointed = built.clone();
    repointed["metadata"]["annotations"]["bulkhead.dev/tenant-uid"] = json!("uid-of-a-new-tenant");
    assert!(!admits(
        &guard,
        &Request::new("UPDATE", &repointed, None)
            .by(admin)
            .replacing(built.clone())
    ));

    // Other edits of a Bulkhead namespace, and removing marks (the garbage
    // collector drops owner references of deleted owners), are admitted.
    let mut relabelled = built.clone();
    relabelled["metadata"]["labels"]["team"] = json!("payments");
    let mut orphaned = built.clone();
    orphaned["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("ownerReferences");
    for (edit, changed) in [
        ("another label", &relabelled),
        ("removed owner references", &orphaned),
        ("all marks removed", &plain),
    ] {
        assert!(
            admits(
                &guard,
                &Request::new("UPDATE", changed, None)
                    .by(admin)
                    .replacing(built.clone())
            ),
            "{edit} was refused"
        );
    }
}
