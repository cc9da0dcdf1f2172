//! The generated CRD is a valid structural schema that documents every field,
//! and its CEL rules compile within the API server's cost budget.

use bulkhead_crds::Tenant;
use kube::CustomResourceExt;
use kube::core::cel::{compile_schema, estimate_rule_cost};
use serde_json::Value;

fn openapi_schema() -> Value {
    let crd = Tenant::crd();
    let version = &crd.spec.versions[0];
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .unwrap();
    serde_json::to_value(schema).unwrap()
}

/// Calls `visit(path, node)` on every schema node below `node`.
fn walk(path: &str, node: &Value, visit: &mut dyn FnMut(&str, &Value)) {
    visit(path, node);
    if let Some(properties) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            walk(&format!("{path}.{name}"), child, visit);
        }
    }
    if let Some(items) = node.get("items") {
        walk(&format!("{path}[]"), items, visit);
    }
    if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
        walk(&format!("{path}{{}}"), values, visit);
    }
}

#[test]
fn every_schema_node_is_structural() {
    let schema = openapi_schema();
    let mut problems = Vec::new();
    walk("", &schema, &mut |path, node| {
        let typed = node.get("type").is_some()
            || node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
            || node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        if !typed {
            problems.push(format!("{path}: no type"));
        }
        for keyword in ["anyOf", "oneOf", "allOf", "not", "$ref"] {
            if node.get(keyword).is_some() {
                problems.push(format!("{path}: uses {keyword}"));
            }
        }
        if node.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("map") {
            let required = node["items"]["required"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for key in node["x-kubernetes-list-map-keys"].as_array().unwrap() {
                if !required.contains(key) {
                    problems.push(format!("{path}: list-map key {key} is not required"));
                }
            }
        }
    });
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn every_property_has_a_description() {
    let schema = openapi_schema();
    let mut missing = Vec::new();
    walk("", &schema, &mut |path, node| {
        for (name, child) in node
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let described = child
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| !d.trim().is_empty());
            if !described {
                missing.push(format!("{path}.{name}"));
            }
        }
    });
    assert!(missing.is_empty(), "undescribed: {missing:#?}");
    let root = schema["description"].as_str().unwrap();
    assert!(
        root.contains("tenant") && !root.contains("Auto-generated"),
        "{root}"
    );
}

#[test]
fn every_cel_rule_compiles_within_the_cost_budget() {
    let schema = openapi_schema();
    let mut rules = 0;
    let mut problems = Vec::new();
    walk("", &schema, &mut |path, node| {
        let Some(validations) = node
            .get("x-kubernetes-validations")
            .and_then(Value::as_array)
        else {
            return;
        };
        let compiled = compile_schema(node);
        for error in compiled.compilation_errors() {
            problems.push(format!("{path}: {error:?}"));
        }
        for validation in validations {
            rules += 1;
            let rule = validation["rule"].as_str().unwrap();
            assert!(
                validation["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{path}: {rule} has no message"
            );
            for warning in estimate_rule_cost(rule, &compiled) {
                problems.push(format!("{path}: {rule}: {warning:?}"));
            }
        }
    });
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(
        rules >= 10,
        "expected the schema's CEL rules, found {rules}"
    );
}

#[test]
fn crd_identity_matches_the_design() {
    let crd = Tenant::crd();
    assert_eq!(crd.metadata.name.as_deref(), Some("tenants.bulkhead.dev"));
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(crd.spec.names.short_names, Some(vec!["tnt".to_owned()]));
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.subresources.as_ref().unwrap().status.is_some());
    let columns: Vec<&str> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["Namespace", "Ready", "Age"]);
}

#[test]
fn list_bounds_in_the_schema_match_the_code() {
    let schema = openapi_schema();
    for (path, max) in bulkhead_crds::validation::MAX_ITEMS {
        let mut node = &schema;
        for part in path.split('.') {
            let (name, items) = part.strip_suffix("[]").map_or((part, false), |n| (n, true));
            node = &node["properties"][name];
            if items {
                node = &node["items"];
            }
        }
        assert_eq!(node["maxItems"].as_u64(), Some(*max as u64), "{path}");
    }
}

#[test]
fn tenant_id_rules_on_metadata_name_match_the_code() {
    use bulkhead_crds::validation::{MAX_TENANT_ID_LEN, SCHEMA_NAMESPACE_PREFIX};
    let schema = openapi_schema();
    let rules: Vec<&str> = schema["x-kubernetes-validations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["rule"].as_str().unwrap())
        .collect();
    assert_eq!(SCHEMA_NAMESPACE_PREFIX.len() + MAX_TENANT_ID_LEN, 63);
    assert!(
        rules.contains(&format!("self.metadata.name.size() <= {MAX_TENANT_ID_LEN}").as_str()),
        "{rules:?}"
    );
    assert!(
        rules.contains(&"self.metadata.name != 'system'"),
        "{rules:?}"
    );
}

#[test]
fn the_rule_checks_above_can_fail() {
    // A control for `every_cel_rule_compiles_within_the_cost_budget`: a
    // rule that does not parse, and an unbounded list comprehension, are
    // both reported.
    let broken = serde_json::json!({
        "type": "object",
        "x-kubernetes-validations": [{"rule": "self.all(", "message": "m"}],
    });
    assert!(!compile_schema(&broken).compilation_errors().is_empty());
    let unbounded = serde_json::json!({
        "type": "array",
        "items": {"type": "array", "items": {"type": "string"}},
    });
    let warnings = estimate_rule_cost(
        "self.all(a, a.all(b, self.exists(c, c.exists(d, d == b))))",
        &compile_schema(&unbounded),
    );
    assert!(!warnings.is_empty());
}

#[test]
fn rate_limit_bounds_in_the_schema_match_the_code() {
    use bulkhead_crds::validation::{MAX_BURST, MAX_REQUESTS_PER_MINUTE, MAX_TOOL_NAME_LEN};
    let schema = openapi_schema();
    let limits = &schema["properties"]["spec"]["properties"]["rateLimits"]["properties"];
    for node in [&limits["perCaller"], &limits["perTool"]["items"]] {
        let fields = &node["properties"];
        assert_eq!(fields["requestsPerMinute"]["minimum"].as_f64(), Some(1.0));
        assert_eq!(
            fields["requestsPerMinute"]["maximum"].as_f64(),
            Some(f64::from(MAX_REQUESTS_PER_MINUTE))
        );
        assert_eq!(fields["burst"]["minimum"].as_f64(), Some(1.0));
        assert_eq!(
            fields["burst"]["maximum"].as_f64(),
            Some(f64::from(MAX_BURST))
        );
    }
    assert_eq!(
        limits["perTool"]["items"]["properties"]["tool"]["maxLength"].as_u64(),
        Some(MAX_TOOL_NAME_LEN as u64)
    );
}
