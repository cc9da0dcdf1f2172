//! Fields someone else added to the security-relevant part of a child,
//! found through `metadata.managedFields`, and the JSON patch that removes
//! them.
//!
//! [`super::drift::is_semantic_subset`] only asks whether every desired
//! field is in the live object, because a healthy live object carries more:
//! defaults the API server filled in and fields other controllers own. To a
//! value comparison an added `hostNetwork: true` looks exactly like a
//! defaulted `dnsPolicy: ClusterFirst`. Server-side apply tells them apart:
//! every write records which field manager set which fields
//! (`metadata.managedFields[].fieldsV1`, Kubernetes docs "Server-Side
//! Apply", field management). Defaults have no manager (checked on
//! kube-apiserver v1.36: after an apply of a Deployment, `imagePullPolicy`,
//! `dnsPolicy` and a port's `protocol` appear in no entry), and the
//! controllers that legitimately write to a child do so outside the parts
//! guarded here (the deployment controller's revision annotation and
//! status, the quota controller's status subresource).
//!
//! So inside the guarded parts ([`guarded_fields`]) a field that a manager
//! other than the operator's apply owns, and the operator's apply does not
//! own, was added or taken over by someone else: it is drift. Healing never
//! deletes the object (a NetworkPolicy is never absent):
//!
//! - a foreign field the operator also sets (an atomic list such as a
//!   NetworkPolicy's `egress`, which a hand edit of one port takes over
//!   whole) is taken back by the forced apply, which replaces its value;
//! - a field the operator never sets survives any apply (server-side apply
//!   removes only fields the applier owned and nobody else owns), so it is
//!   removed by an RFC 6902 JSON patch ([`removal_patch`]). Its first
//!   operation tests `metadata.resourceVersion`: the list indices in its
//!   paths were resolved against that version, and after any concurrent
//!   change the API server refuses the whole patch (422) instead of
//!   removing the wrong list item. A patch that only removes gives its
//!   field manager nothing to own, and the API server drops the editor's
//!   entry once it owns nothing, so the operator's apply stays the sole
//!   owner of the guarded parts and the next apply meets no conflict. It
//!   needs only the `patch` verb the operator already holds.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{Value, json};

/// The parts of a child kind where an added field can widen access, as
/// paths of field names from the object's root; empty for other kinds.
///
/// `kind` is the Kubernetes kind name (`NetworkPolicy`).
pub fn guarded_fields(kind: &str) -> &'static [&'static [&'static str]] {
    match kind {
        // Who may talk to the server, and on which ports.
        "NetworkPolicy" => &[&["spec"]],
        // Who gets the Secret-reading ClusterRole.
        "RoleBinding" => &[&["roleRef"], &["subjects"]],
        // What the server process can reach and do: host namespaces,
        // privileges, capabilities, volumes, environment from Secrets. The
        // pod template's metadata stays open to others (`kubectl rollout
        // restart` writes an annotation there), as do `replicas` and status.
        "Deployment" => &[&["spec", "template", "spec"]],
        // How much the tenant may consume.
        "ResourceQuota" | "LimitRange" => &[&["spec"]],
        _ => &[],
    }
}

/// One step of a `fieldsV1` path (Kubernetes `sigs.k8s.io/structured-merge-diff`
/// path elements: `f:<name>`, `k:<keys as JSON>`, `v:<value as JSON>`,
/// `i:<index>`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    /// A field of a struct or map: `f:hostNetwork`.
    Field(String),
    /// The item of a keyed list with these key fields: `k:{"name":"mcp"}`.
    Key(String),
    /// The item of a set-like list with this value: `v:"NET_ADMIN"`.
    Value(String),
    /// The item of a list at this index: `i:0`.
    Index(usize),
}

impl Step {
    fn parse(text: &str) -> Option<Self> {
        let (tag, rest) = text.split_once(':')?;
        match tag {
            "f" => Some(Self::Field(rest.to_owned())),
            "k" => Some(Self::Key(rest.to_owned())),
            "v" => Some(Self::Value(rest.to_owned())),
            "i" => rest.parse().ok().map(Self::Index),
            _ => None,
        }
    }
}

/// A field someone other than the operator owns, as a `fieldsV1` path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FieldPath(Vec<Step>);

impl fmt::Display for FieldPath {
    /// `.spec.template.spec.containers[name=mcp].envFrom`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for step in &self.0 {
            match step {
                Step::Field(name) => write!(f, ".{name}")?,
                Step::Key(keys) | Step::Value(keys) => write!(f, "[{keys}]")?,
                Step::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// The fields inside the guarded parts of `live` (an object as JSON, with
/// `metadata.managedFields`) that some field manager other than
/// `operator_manager`'s apply owns and that apply does not own: what a
/// person or another tool added or took over. A field whose parent is
/// already listed is not listed again. Entries of subresources (`status`)
/// are ignored.
///
/// `guarded` comes from [`guarded_fields`]. An object without
/// `managedFields` (one no manager ever wrote) has no foreign fields.
pub fn foreign_fields(live: &Value, operator_manager: &str, guarded: &[&[&str]]) -> Vec<FieldPath> {
    let Some(entries) = live
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    let mut ours = BTreeSet::new();
    let mut theirs = BTreeSet::new();
    for entry in entries {
        let text = |key: &str| entry.get(key).and_then(Value::as_str).unwrap_or_default();
        if !text("subresource").is_empty() || text("fieldsType") != "FieldsV1" {
            continue;
        }
        let fields = entry.get("fieldsV1").unwrap_or(&Value::Null);
        let owned = if text("manager") == operator_manager && text("operation") == "Apply" {
            &mut ours
        } else {
            &mut theirs
        };
        owned_paths(fields, &mut Vec::new(), owned);
    }
    let guarded: Vec<Vec<Step>> = guarded
        .iter()
        .map(|path| path.iter().map(|f| Step::Field((*f).to_owned())).collect())
        .collect();
    let mut foreign: Vec<FieldPath> = Vec::new();
    // `theirs` is sorted, so a parent comes right before its descendants.
    for path in theirs {
        let in_guarded = guarded.iter().any(|g| path.starts_with(g));
        // The operator owns this field or something inside it: not added.
        let ours_too = ours.iter().any(|o: &Vec<Step>| o.starts_with(&path));
        let under_listed = foreign.last().is_some_and(|p| path.starts_with(&p.0));
        if in_guarded && !ours_too && !under_listed {
            foreign.push(FieldPath(path));
        }
    }
    foreign
}

/// Collects the paths a `fieldsV1` tree owns: each leaf (`{}`), and each
/// node marked with `"."` (the list item or map itself).
fn owned_paths(fields: &Value, prefix: &mut Vec<Step>, out: &mut BTreeSet<Vec<Step>>) {
    let Value::Object(children) = fields else {
        return;
    };
    for (key, child) in children {
        if key == "." {
            out.insert(prefix.clone());
            continue;
        }
        let Some(step) = Step::parse(key) else {
            continue;
        };
        prefix.push(step);
        match child {
            Value::Object(grand) if !grand.is_empty() => owned_paths(child, prefix, out),
            _ => {
                out.insert(prefix.clone());
            }
        }
        prefix.pop();
    }
}

/// Whether `desired` (the object the operator builds, as JSON) sets any of
/// `fields`: then the forced apply takes them back and must run first.
///
/// Key fields `desired` leaves to the API server's defaults (a port's
/// `protocol`) match any value.
pub fn sets_any(desired: &Value, fields: &[FieldPath]) -> bool {
    fields
        .iter()
        .any(|field| resolve(desired, &field.0, true).is_some())
}

/// The RFC 6902 JSON patch removing `fields` from `live`: a `test` of
/// `metadata.resourceVersion`, then one `remove` per field, deepest list
/// index first so earlier removals never shift later paths. Fields
/// `desired` sets are never removed (the apply owns them), nor fields no
/// longer in `live`. `None` when nothing is left to remove.
pub fn removal_patch(live: &Value, desired: &Value, fields: &[FieldPath]) -> Option<Value> {
    let resource_version = live.pointer("/metadata/resourceVersion")?.as_str()?;
    let mut pointers: Vec<Vec<Segment>> = fields
        .iter()
        .filter(|field| resolve(desired, &field.0, true).is_none())
        .filter_map(|field| resolve(live, &field.0, false))
        .collect();
    if pointers.is_empty() {
        return None;
    }
    pointers.sort();
    pointers.dedup();
    let mut ops = vec![json!({
        "op": "test",
        "path": "/metadata/resourceVersion",
        "value": resource_version,
    })];
    ops.extend(
        pointers
            .iter()
            .rev()
            .map(|pointer| json!({"op": "remove", "path": json_pointer(pointer)})),
    );
    Some(Value::Array(ops))
}

/// One segment of a JSON pointer into a concrete object; indices compare
/// as numbers so sorting puts `/items/10` after `/items/9`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Segment {
    Index(usize),
    Name(String),
}

/// Follows `path` through `value`; the pointer segments, or `None` when
/// some step does not exist. With `lenient_keys`, a key field the item
/// does not carry matches (the API server defaults it).
fn resolve(value: &Value, path: &[Step], lenient_keys: bool) -> Option<Vec<Segment>> {
    let mut current = value;
    let mut segments = Vec::with_capacity(path.len());
    for step in path {
        match step {
            Step::Field(name) => {
                current = current.as_object()?.get(name)?;
                segments.push(Segment::Name(name.clone()));
            }
            Step::Index(index) => {
                current = current.as_array()?.get(*index)?;
                segments.push(Segment::Index(*index));
            }
            Step::Key(keys) => {
                let keys: serde_json::Map<String, Value> = serde_json::from_str(keys).ok()?;
                let (index, item) = current.as_array()?.iter().enumerate().find(|(_, item)| {
                    keys.iter().all(|(key, want)| match item.get(key) {
                        Some(have) => same_value(want, have),
                        None => lenient_keys,
                    })
                })?;
                current = item;
                segments.push(Segment::Index(index));
            }
            Step::Value(text) => {
                let want: Value = serde_json::from_str(text).ok()?;
                let (index, item) = current
                    .as_array()?
                    .iter()
                    .enumerate()
                    .find(|(_, item)| same_value(&want, item))?;
                current = item;
                segments.push(Segment::Index(index));
            }
        }
    }
    Some(segments)
}

/// JSON equality that treats `8080` and `8080.0` as the same number.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Renders segments as an RFC 6901 JSON pointer (`~` as `~0`, `/` as `~1`,
/// so a quota key such as `count/secrets` stays one segment).
fn json_pointer(segments: &[Segment]) -> String {
    segments
        .iter()
        .map(|segment| match segment {
            Segment::Index(index) => format!("/{index}"),
            Segment::Name(name) => format!("/{}", name.replace('~', "~0").replace('/', "~1")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! The `managedFields` below are what kube-apiserver v1.36 recorded for
    //! an apply by `bulkhead-operator` followed by `kubectl patch` edits.
    use super::*;

    const OPERATOR: &str = "bulkhead-operator";

    fn entry(manager: &str, operation: &str, subresource: Option<&str>, fields: Value) -> Value {
        let mut entry = json!({
            "manager": manager,
            "operation": operation,
            "apiVersion": "v1",
            "fieldsType": "FieldsV1",
            "fieldsV1": fields,
        });
        if let Some(subresource) = subresource {
            entry["subresource"] = json!(subresource);
        }
        entry
    }

    fn with_managed_fields(mut object: Value, entries: Vec<Value>) -> Value {
        object["metadata"]["resourceVersion"] = json!("4711");
        object["metadata"]["managedFields"] = Value::Array(entries);
        object
    }

    fn paths(fields: &[FieldPath]) -> Vec<String> {
        fields.iter().map(ToString::to_string).collect()
    }

    /// The operator's apply of the server Deployment, as recorded.
    fn deployment_apply(privileged: bool) -> Value {
        let mut security = json!({"f:capabilities": {"f:drop": {}}});
        if privileged {
            security["f:privileged"] = json!({});
        }
        entry(
            OPERATOR,
            "Apply",
            None,
            json!({"f:spec": {"f:replicas": {}, "f:selector": {}, "f:template": {
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {"f:containers": {"k:{\"name\":\"mcp\"}": {
                    ".": {}, "f:image": {}, "f:name": {},
                    "f:ports": {"k:{\"containerPort\":8080,\"protocol\":\"TCP\"}": {
                        ".": {}, "f:containerPort": {}}},
                    "f:securityContext": security}}}}}}),
        )
    }

    fn desired_deployment() -> Value {
        json!({"metadata": {"name": "mcp"}, "spec": {"replicas": 1, "template": {"spec": {
            "containers": [{"name": "mcp", "image": "x", "ports": [{"containerPort": 8080}],
                "securityContext": {"privileged": false, "capabilities": {"drop": ["ALL"]}}}]}}}})
    }

    /// The live Deployment with every server default filled in.
    fn live_deployment(pod_spec_extra: Value, container_extra: Value) -> Value {
        let mut container = json!({"name": "mcp", "image": "x", "imagePullPolicy": "Always",
            "ports": [{"containerPort": 8080, "protocol": "TCP"}], "resources": {},
            "securityContext": {"privileged": false, "capabilities": {"drop": ["ALL"]}},
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File"});
        merge(&mut container, container_extra);
        let mut pod = json!({"containers": [container], "dnsPolicy": "ClusterFirst",
            "restartPolicy": "Always", "schedulerName": "default-scheduler",
            "securityContext": {}, "terminationGracePeriodSeconds": 30});
        merge(&mut pod, pod_spec_extra);
        json!({"metadata": {"name": "mcp",
                "annotations": {"deployment.kubernetes.io/revision": "1"}},
            "spec": {"replicas": 1, "template": {"spec": pod}},
            "status": {"replicas": 1}})
    }

    fn merge(into: &mut Value, extra: Value) {
        if let (Value::Object(into), Value::Object(extra)) = (into, extra) {
            for (key, value) in extra {
                match (into.get_mut(&key), value) {
                    (Some(existing @ Value::Object(_)), value @ Value::Object(_)) => {
                        merge(existing, value);
                    }
                    (_, value) => {
                        into.insert(key, value);
                    }
                }
            }
        }
    }

    fn controller_status() -> Value {
        entry(
            "kube-controller-manager",
            "Update",
            Some("status"),
            json!({"f:metadata": {"f:annotations": {".": {},
                "f:deployment.kubernetes.io/revision": {}}},
                "f:status": {"f:replicas": {}}}),
        )
    }

    #[test]
    fn defaults_and_fields_other_controllers_own_are_not_foreign() {
        let live = with_managed_fields(
            live_deployment(json!({}), json!({})),
            vec![deployment_apply(true), controller_status()],
        );
        assert!(foreign_fields(&live, OPERATOR, guarded_fields("Deployment")).is_empty());
        // Outside the guarded parts a hand edit is none of this module's
        // business: an annotation and a scaled replica count.
        let edited = with_managed_fields(
            live_deployment(json!({}), json!({})),
            vec![
                deployment_apply(true),
                entry(
                    "kubectl-annotate",
                    "Update",
                    None,
                    json!({"f:metadata": {"f:annotations": {"f:note": {}}}}),
                ),
                entry("hpa", "Update", None, json!({"f:spec": {"f:replicas": {}}})),
            ],
        );
        assert!(foreign_fields(&edited, OPERATOR, guarded_fields("Deployment")).is_empty());
        // No managedFields at all: nothing to go by, nothing foreign.
        assert!(foreign_fields(&desired_deployment(), OPERATOR, &[&["spec"]]).is_empty());
    }

    #[test]
    fn a_field_another_manager_shares_with_the_operator_is_not_foreign() {
        let live = with_managed_fields(
            live_deployment(json!({}), json!({})),
            vec![
                deployment_apply(true),
                entry(
                    "someone",
                    "Apply",
                    None,
                    json!({"f:spec": {"f:template": {"f:spec": {"f:containers": {
                        "k:{\"name\":\"mcp\"}": {"f:image": {}}}}}}}),
                ),
            ],
        );
        assert!(foreign_fields(&live, OPERATOR, guarded_fields("Deployment")).is_empty());
    }

    /// `hostNetwork`, `envFrom` with a `secretRef`, `privileged: true` and
    /// `capabilities.add: [NET_ADMIN]` added with `kubectl patch`.
    fn deployment_edited_by_hand() -> Value {
        with_managed_fields(
            live_deployment(
                json!({"hostNetwork": true}),
                json!({"envFrom": [{"secretRef": {"name": "stolen"}}],
                    "securityContext": {"privileged": true,
                        "capabilities": {"add": ["NET_ADMIN"]}}}),
            ),
            vec![
                deployment_apply(false),
                controller_status(),
                entry(
                    "kubectl-patch",
                    "Update",
                    None,
                    json!({"f:spec": {"f:template": {"f:spec": {
                        "f:containers": {"k:{\"name\":\"mcp\"}": {"f:envFrom": {},
                            "f:securityContext": {"f:capabilities": {"f:add": {}},
                                "f:privileged": {}}}},
                        "f:hostNetwork": {}}}}}),
                ),
            ],
        )
    }

    #[test]
    fn host_network_env_from_privileged_and_net_admin_added_by_hand_are_foreign() {
        let live = deployment_edited_by_hand();
        let foreign = foreign_fields(&live, OPERATOR, guarded_fields("Deployment"));
        assert_eq!(
            paths(&foreign),
            [
                r#".spec.template.spec.containers[{"name":"mcp"}].envFrom"#,
                r#".spec.template.spec.containers[{"name":"mcp"}].securityContext.capabilities.add"#,
                r#".spec.template.spec.containers[{"name":"mcp"}].securityContext.privileged"#,
                ".spec.template.spec.hostNetwork",
            ]
        );
        // The operator sets `privileged: false`: the apply takes it back.
        assert!(sets_any(&desired_deployment(), &foreign));
        // The rest it never sets: removed, guarded by the resourceVersion.
        let patch = removal_patch(&live, &desired_deployment(), &foreign);
        assert_eq!(
            patch,
            Some(json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": "4711"},
                {"op": "remove", "path": "/spec/template/spec/hostNetwork"},
                {"op": "remove",
                 "path": "/spec/template/spec/containers/0/securityContext/capabilities/add"},
                {"op": "remove", "path": "/spec/template/spec/containers/0/envFrom"},
            ]))
        );
    }

    #[test]
    fn each_added_pod_template_field_alone_is_foreign() {
        let cases = [
            (
                json!({"hostNetwork": true}),
                json!({}),
                json!({"f:hostNetwork": {}}),
                "/spec/template/spec/hostNetwork",
            ),
            (
                json!({}),
                json!({"envFrom": [{"secretRef": {"name": "s"}}]}),
                json!({"f:containers": {"k:{\"name\":\"mcp\"}": {"f:envFrom": {}}}}),
                "/spec/template/spec/containers/0/envFrom",
            ),
            (
                json!({}),
                json!({"securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}),
                json!({"f:containers": {"k:{\"name\":\"mcp\"}": {"f:securityContext":
                    {"f:capabilities": {"f:add": {}}}}}}),
                "/spec/template/spec/containers/0/securityContext/capabilities/add",
            ),
        ];
        for (pod_extra, container_extra, owned, pointer) in cases {
            let live = with_managed_fields(
                live_deployment(pod_extra, container_extra),
                vec![
                    deployment_apply(true),
                    entry(
                        "kubectl-patch",
                        "Update",
                        None,
                        json!({"f:spec": {"f:template": {"f:spec": owned}}}),
                    ),
                ],
            );
            let foreign = foreign_fields(&live, OPERATOR, guarded_fields("Deployment"));
            assert_eq!(foreign.len(), 1, "{pointer}: {foreign:?}");
            assert!(!sets_any(&desired_deployment(), &foreign), "{pointer}");
            let patch = removal_patch(&live, &desired_deployment(), &foreign);
            assert_eq!(
                patch.as_ref().and_then(|p| p.pointer("/1/path")),
                Some(&json!(pointer))
            );
            assert_eq!(
                patch.as_ref().and_then(Value::as_array).map(Vec::len),
                Some(2)
            );
        }
        // `privileged` alone: the operator sets it, so it is the apply's job.
        let live = with_managed_fields(
            live_deployment(json!({}), json!({"securityContext": {"privileged": true}})),
            vec![
                deployment_apply(false),
                entry(
                    "kubectl-patch",
                    "Update",
                    None,
                    json!({"f:spec": {"f:template": {"f:spec": {"f:containers": {
                        "k:{\"name\":\"mcp\"}": {"f:securityContext": {"f:privileged": {}}}}}}}}),
                ),
            ],
        );
        let foreign = foreign_fields(&live, OPERATOR, guarded_fields("Deployment"));
        assert_eq!(foreign.len(), 1);
        assert!(sets_any(&desired_deployment(), &foreign));
        assert_eq!(removal_patch(&live, &desired_deployment(), &foreign), None);
    }

    #[test]
    fn an_end_port_added_by_hand_takes_over_the_atomic_egress_list() {
        // `egress` is an atomic list: editing one port's `endPort` makes the
        // editor the owner of the whole list.
        let live = with_managed_fields(
            json!({"metadata": {"name": "isolation"}, "spec": {"podSelector": {},
                "policyTypes": ["Ingress", "Egress"],
                "egress": [{"ports": [{"port": 443, "protocol": "TCP", "endPort": 65535}]}]}}),
            vec![
                entry(
                    OPERATOR,
                    "Apply",
                    None,
                    json!({"f:spec": {"f:podSelector": {}, "f:policyTypes": {}}}),
                ),
                entry(
                    "kubectl-patch",
                    "Update",
                    None,
                    json!({"f:spec": {"f:egress": {}}}),
                ),
            ],
        );
        let desired = json!({"spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
            "egress": [{"ports": [{"port": 443}]}]}});
        let foreign = foreign_fields(&live, OPERATOR, guarded_fields("NetworkPolicy"));
        assert_eq!(paths(&foreign), [".spec.egress"]);
        // The forced apply replaces the list; the policy is never removed.
        assert!(sets_any(&desired, &foreign));
        assert_eq!(removal_patch(&live, &desired, &foreign), None);
    }

    #[test]
    fn quota_and_limit_range_keys_added_by_hand_are_foreign() {
        let live = with_managed_fields(
            json!({"metadata": {"name": "quota"},
                "spec": {"hard": {"pods": "5", "count/secrets": "100"}}}),
            vec![
                entry(
                    OPERATOR,
                    "Apply",
                    None,
                    json!({"f:spec": {"f:hard": {"f:pods": {}}}}),
                ),
                entry(
                    "kube-controller-manager",
                    "Update",
                    Some("status"),
                    json!({"f:status": {"f:hard": {".": {}, "f:count/secrets": {}}}}),
                ),
                entry(
                    "kubectl-patch",
                    "Update",
                    None,
                    json!({"f:spec": {"f:hard": {"f:count/secrets": {}}}}),
                ),
            ],
        );
        let desired = json!({"spec": {"hard": {"pods": "5"}}});
        let foreign = foreign_fields(&live, OPERATOR, guarded_fields("ResourceQuota"));
        assert_eq!(paths(&foreign), [".spec.hard.count/secrets"]);
        assert_eq!(
            removal_patch(&live, &desired, &foreign),
            Some(json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": "4711"},
                {"op": "remove", "path": "/spec/hard/count~1secrets"},
            ]))
        );

        let live = with_managed_fields(
            json!({"metadata": {"name": "limits"}, "spec": {"limits": [
                {"type": "Container", "max": {"cpu": "2"}, "maxLimitRequestRatio": {"cpu": "10"}}]}}),
            vec![entry(
                "kubectl-patch",
                "Update",
                None,
                json!({"f:spec": {"f:limits": {}}}),
            )],
        );
        let desired = json!({"spec": {"limits": [{"type": "Container", "max": {"cpu": "2"}}]}});
        let foreign = foreign_fields(&live, OPERATOR, guarded_fields("LimitRange"));
        assert_eq!(paths(&foreign), [".spec.limits"]);
        assert!(sets_any(&desired, &foreign));
    }

    #[test]
    fn role_binding_subjects_taken_over_by_hand_are_foreign() {
        let live = with_managed_fields(
            json!({"metadata": {"name": "secrets"}, "roleRef": {"name": "reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "mcp"},
                    {"kind": "Group", "name": "system:authenticated"}]}),
            vec![
                entry(OPERATOR, "Apply", None, json!({"f:roleRef": {}})),
                entry("kubectl-edit", "Update", None, json!({"f:subjects": {}})),
            ],
        );
        let desired = json!({"roleRef": {"name": "reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "mcp"}]});
        let foreign = foreign_fields(&live, OPERATOR, guarded_fields("RoleBinding"));
        assert_eq!(paths(&foreign), [".subjects"]);
        assert!(sets_any(&desired, &foreign));
        // Kinds without guarded parts are never examined.
        assert!(foreign_fields(&live, OPERATOR, guarded_fields("ConfigMap")).is_empty());
    }

    #[test]
    fn added_list_items_are_removed_whole_and_highest_index_first() {
        let live = with_managed_fields(
            live_deployment(
                json!({}),
                json!({"env": [{"name": "A", "value": "1"}, {"name": "X", "value": "2"},
                    {"name": "B", "value": "3"}, {"name": "Y", "value": "4"}]}),
            ),
            vec![
                entry(
                    OPERATOR,
                    "Apply",
                    None,
                    json!({"f:spec": {"f:template": {"f:spec": {
                    "f:containers": {"k:{\"name\":\"mcp\"}": {".": {}, "f:name": {},
                        "f:env": {
                            "k:{\"name\":\"A\"}": {".": {}, "f:name": {}, "f:value": {}},
                            "k:{\"name\":\"B\"}": {".": {}, "f:name": {}, "f:value": {}}}}}}}}}),
                ),
                entry(
                    "kubectl-patch",
                    "Update",
                    None,
                    json!({"f:spec": {"f:template": {"f:spec": {
                    "f:containers": {"k:{\"name\":\"mcp\"}": {"f:env": {
                        "k:{\"name\":\"X\"}": {".": {}, "f:name": {}, "f:value": {}},
                        "k:{\"name\":\"Y\"}": {".": {}, "f:name": {}, "f:value": {}}}}}}}}}),
                ),
            ],
        );
        let desired = json!({"spec": {"template": {"spec": {"containers": [{"name": "mcp",
            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "3"}]}]}}}});
        let foreign = foreign_fields(&live, OPERATOR, guarded_fields("Deployment"));
        assert_eq!(foreign.len(), 2, "{foreign:?}");
        assert!(!sets_any(&desired, &foreign));
        let patch = removal_patch(&live, &desired, &foreign);
        assert_eq!(
            patch,
            Some(json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": "4711"},
                {"op": "remove", "path": "/spec/template/spec/containers/0/env/3"},
                {"op": "remove", "path": "/spec/template/spec/containers/0/env/1"},
            ]))
        );
    }

    #[test]
    fn an_added_field_already_gone_needs_no_patch() {
        let mut live = deployment_edited_by_hand();
        live["spec"]["template"]["spec"] =
            live_deployment(json!({}), json!({}))["spec"]["template"]["spec"].clone();
        let foreign = foreign_fields(&live, OPERATOR, guarded_fields("Deployment"));
        assert_eq!(removal_patch(&live, &desired_deployment(), &foreign), None);
    }
}
