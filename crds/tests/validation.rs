//! One table of invalid Tenants, checked against both halves of validation:
//! the code in `bulkhead_crds::validation` must refuse each one naming the
//! field, and the CRD schema must refuse it too, by a CEL rule (evaluated
//! here with kube's CEL validator), a value keyword (`pattern`, `minimum`,
//! `enum`, ...) or a list type.

use bulkhead_crds::Tenant;
use bulkhead_crds::validation::{NamespaceNaming, validate_tenant};
use kube::CustomResourceExt;
use kube::core::cel::Validator;
use serde_json::{Value, json};

mod tenant_cases;
use tenant_cases::{Schema, cases, valid_cases};

fn example(name: &str) -> Value {
    let path = format!(
        "{}/../manifests/examples/{name}.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    yaml_serde::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn openapi_schema() -> Value {
    let crd = Tenant::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref());
    serde_json::to_value(schema.unwrap()).unwrap()
}

fn code_validation(tenant: &Value) -> Result<(), bulkhead_crds::InvalidTenant> {
    let tenant: Tenant = serde_json::from_value(tenant.clone()).unwrap();
    validate_tenant(&tenant, &NamespaceNaming::default())
}

fn cel_validation(tenant: &Value) -> Result<(), Vec<String>> {
    Validator::new()
        .validate(&openapi_schema(), tenant, None)
        .map_err(|errors| errors.iter().map(ToString::to_string).collect())
}

/// The schema node of a field path such as `spec.connectors[1].allow[0].method`.
fn schema_of<'a>(schema: &'a Value, field: &str) -> &'a Value {
    let mut node = schema;
    for part in field.split('.') {
        let (name, indexed) = match part.split_once('[') {
            Some((name, _)) => (name, true),
            None => (part, false),
        };
        if name != "metadata" {
            node = &node["properties"][name];
        }
        if indexed {
            node = &node["items"];
        }
        assert!(!node.is_null(), "no schema for {field}");
    }
    node
}

/// The value at a field path of a Tenant document.
fn value_at<'a>(tenant: &'a Value, field: &str) -> &'a Value {
    let mut node = tenant;
    for part in field.split('.') {
        match part.split_once('[') {
            Some((name, index)) => {
                node = &node[name][index.trim_end_matches(']').parse::<usize>().unwrap()];
            }
            None => node = &node[part],
        }
    }
    node
}

/// True when the schema's value keywords refuse `value`.
fn keywords_refuse(node: &Value, value: &Value) -> bool {
    let number = |k: &str| node.get(k).and_then(Value::as_f64);
    let refused_by_number = value.as_f64().is_some_and(|v| {
        number("minimum").is_some_and(|min| v < min) || number("maximum").is_some_and(|max| v > max)
    });
    let refused_by_string = value.as_str().is_some_and(|s| {
        let len = s.chars().count() as f64;
        number("minLength").is_some_and(|min| len < min)
            || number("maxLength").is_some_and(|max| len > max)
            || node
                .get("pattern")
                .and_then(Value::as_str)
                .is_some_and(|p| !regex::Regex::new(p).unwrap().is_match(s))
    });
    let refused_by_enum = node
        .get("enum")
        .and_then(Value::as_array)
        .is_some_and(|e| !e.contains(value));
    refused_by_number || refused_by_string || refused_by_enum
}

#[test]
fn the_examples_pass_code_and_cel_validation() {
    for name in ["minimal", "full", "oauth"] {
        let tenant = example(name);
        assert_eq!(code_validation(&tenant), Ok(()), "{name}");
        assert_eq!(cel_validation(&tenant), Ok(()), "{name}");
    }
}

#[test]
fn each_invalid_tenant_is_refused_by_code_naming_the_field() {
    for case in cases() {
        let mut tenant = example("full");
        (case.edit)(&mut tenant);
        let error = code_validation(&tenant).expect_err(case.name);
        assert!(
            error.names_field(case.field),
            "{}: expected an error on {}, got: {error}",
            case.name,
            case.field
        );
        assert!(
            error.to_string().contains(case.field),
            "{}: {error}",
            case.name
        );
    }
}

#[test]
fn each_invalid_tenant_is_refused_by_the_schema() {
    let schema = openapi_schema();
    for case in cases() {
        let mut tenant = example("full");
        (case.edit)(&mut tenant);
        match case.schema {
            Schema::Cel(message) => {
                let errors = cel_validation(&tenant).expect_err(case.name);
                assert!(
                    errors.iter().any(|e| e.contains(message)),
                    "{}: no CEL error mentioning {message:?}: {errors:?}",
                    case.name
                );
            }
            Schema::Keyword => {
                let node = schema_of(&schema, case.field);
                let value = value_at(&tenant, case.field);
                assert!(
                    keywords_refuse(node, value),
                    "{}: schema {node} admits {value}",
                    case.name
                );
                assert_eq!(
                    cel_validation(&tenant),
                    Ok(()),
                    "{}: only the keyword should fail",
                    case.name
                );
            }
            // Evaluated on a real kube-apiserver by the envtest suite
            // (tests/envtest/tests/validation_agreement.rs); here only the
            // rule's presence is checked.
            Schema::CelOnServerOnly(message) => {
                assert!(
                    schema.to_string().contains(message),
                    "{}: no CEL rule's message mentions {message:?}",
                    case.name
                );
            }
            Schema::UniqueList(list) => {
                let node = schema_of(&schema, list);
                let list_type = node["x-kubernetes-list-type"].as_str();
                assert!(
                    matches!(list_type, Some("map" | "set")),
                    "{}: {list} is not a map/set list",
                    case.name
                );
            }
        }
    }
}

#[test]
fn the_cel_rules_accept_what_the_code_accepts() {
    for case in valid_cases() {
        let mut tenant = example("full");
        (case.edit)(&mut tenant);
        assert_eq!(code_validation(&tenant), Ok(()), "{}", case.name);
        assert_eq!(cel_validation(&tenant), Ok(()), "{}", case.name);
    }
}

#[test]
fn every_error_is_reported_at_once() {
    let mut tenant = example("full");
    tenant["metadata"]["name"] = json!("system");
    tenant["spec"]["server"]["replicas"] = json!(-3);
    tenant["spec"]["connectors"][0]["credential"] = json!("nope");
    let error = code_validation(&tenant).unwrap_err();
    let fields: Vec<&str> = error.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "metadata.name",
            "spec.server.replicas",
            "spec.connectors[0].credential"
        ]
    );
    assert_eq!(
        error.errors[2].to_string(),
        "spec.connectors[0].credential: credential \"nope\" is not declared in spec.credentials"
    );
}

#[test]
fn namespace_rules_follow_the_operator_settings() {
    let mut tenant = example("minimal");
    tenant["metadata"]["name"] = json!("system");
    let tenant: Tenant = serde_json::from_value(tenant).unwrap();
    // With another prefix, "system" is an ordinary id...
    let other = NamespaceNaming {
        prefix: "mcp-",
        operator_namespace: "bulkhead-system",
    };
    assert_eq!(validate_tenant(&tenant, &other), Ok(()));
    // ...but an empty prefix must not hand out Kubernetes' own namespaces.
    let bare = NamespaceNaming {
        prefix: "",
        operator_namespace: "bulkhead-system",
    };
    for reserved in ["default", "kube-system", "kube-anything", "bulkhead-system"] {
        let mut t = tenant.clone();
        t.metadata.name = Some(reserved.to_owned());
        let error = validate_tenant(&t, &bare).expect_err(reserved);
        assert!(
            error.names_field("metadata.name") && error.to_string().contains("reserved"),
            "{error}"
        );
    }
    // A longer prefix shortens the longest id.
    let long = NamespaceNaming {
        prefix: "tenant-namespace-prefix-",
        operator_namespace: "bulkhead-system",
    };
    let mut t = tenant.clone();
    t.metadata.name = Some("a".repeat(40));
    assert!(
        validate_tenant(&t, &long)
            .unwrap_err()
            .to_string()
            .contains("at most 63")
    );
}

#[test]
fn lists_longer_than_the_schema_allows_are_refused() {
    let mut tenant = example("full");
    let rule = tenant["spec"]["connectors"][1]["allow"][0].clone();
    tenant["spec"]["connectors"][1]["allow"] = Value::Array(vec![rule; 33]);
    tenant["spec"]["network"]["egress"]["cidrs"] =
        Value::Array((0..65).map(|i| json!(format!("203.0.{i}.0/24"))).collect());
    let requirement = json!({"key": "team", "operator": "In", "values": ["a"]});
    tenant["spec"]["network"]["ingressFrom"][1]["matchExpressions"] =
        Value::Array(vec![requirement; 17]);
    let error = code_validation(&tenant).unwrap_err();
    assert!(error.names_field("spec.connectors[1].allow"), "{error}");
    assert!(
        error.names_field("spec.network.ingressFrom[1].matchExpressions"),
        "{error}"
    );
    assert!(error.names_field("spec.network.egress.cidrs"), "{error}");
    assert!(error.to_string().contains("at most 64"), "{error}");
}

#[test]
fn namespace_selector_requirements_are_checked_in_code() {
    for (requirement, field) in [
        (
            json!({"key": "team", "operator": "In"}),
            "spec.network.ingressFrom[1].matchExpressions[0].values",
        ),
        (
            json!({"key": "team", "operator": "Exists", "values": ["a"]}),
            "spec.network.ingressFrom[1].matchExpressions[0].values",
        ),
        (
            json!({"key": "team", "operator": "Matches", "values": ["a"]}),
            "spec.network.ingressFrom[1].matchExpressions[0].operator",
        ),
    ] {
        let mut tenant = example("full");
        tenant["spec"]["network"]["ingressFrom"][1]["matchExpressions"] = json!([requirement]);
        let error = code_validation(&tenant).unwrap_err();
        assert!(error.names_field(field), "{error}");
    }
}

#[test]
fn quantities_are_judged_alike_by_code_and_cel() {
    use bulkhead_crds::validation::is_positive_quantity;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use tenant_cases::{NOT_POSITIVE_QUANTITIES, POSITIVE_QUANTITIES};
    for (inputs, valid) in [
        (POSITIVE_QUANTITIES, true),
        (NOT_POSITIVE_QUANTITIES, false),
    ] {
        for input in inputs {
            assert_eq!(
                is_positive_quantity(&Quantity((*input).to_owned())),
                valid,
                "code: {input:?}"
            );
            let mut tenant = example("full");
            tenant["spec"]["quota"]["cpu"] = json!(input);
            assert_eq!(cel_validation(&tenant).is_ok(), valid, "CEL: {input:?}");
        }
    }
}

#[test]
fn allow_paths_are_judged_alike_by_code_and_schema() {
    let schema = openapi_schema();
    const FIELD: &str = "spec.connectors[1].allow[0].path";
    let node = schema_of(&schema, FIELD);
    for path in [
        "/",
        "/**",
        "/*",
        "/v1/invoices/*",
        "/v1/*/reminders",
        "/v1/customers/**",
        "/v1/~user/x",
        "/v1/a:b@c/(x)/'q'/a=b&c/+/a;b/...",
        "/v1/",
        "/v1//x",
        "//",
        "/v1/%7Euser/x",
        "/v1/a\\b",
        "/v1/a b",
        "/v1/é",
        "/v1/x?y",
        "/v1/a#b",
        "/v1/**/x",
        "/v1/a*",
        "/v1/./x",
        "/v1/..",
        "v1/x",
    ] {
        let mut tenant = example("full");
        tenant["spec"]["connectors"][1]["allow"][0]["path"] = json!(path);
        let by_code = code_validation(&tenant).is_ok();
        let by_schema = !keywords_refuse(node, &json!(path)) && cel_validation(&tenant).is_ok();
        assert_eq!(by_code, by_schema, "{path:?}");
    }
}

#[test]
fn issuer_and_resource_urls_are_judged_alike_by_code_and_schema() {
    let schema = openapi_schema();
    for (field, urls) in [
        (
            "issuer",
            &[
                "https://login.example.com",
                "https://login.example.com:8443/realms/a",
                "http://localhost",
                "http://localhost:8080/idp",
                "http://127.0.0.1:9000",
                "http://[::1]:3000/x",
                "https://[2001:db8::1]/x",
                "http://login.example.com",
                "http://localhost.example.com",
                "http://127.0.0.1.example.com",
                "http://127.1",
                "http://LOCALHOST",
                "http://localhost:",
                "HTTPS://login.example.com",
                "https://u@login.example.com",
                "https://login.example.com/?q",
                "https://login.example.com/#f",
                "https://login.example.com/a b",
                "https://login.example.com/a\u{a0}b",
                "https:///x",
                "https://",
                "",
                "https://Login.example.com",
                "https://login.example.com:443",
                "https://login.example.com:443/x",
                "https://login.example.com:/x",
                "http://localhost:80/idp",
                "http://127.0.0.1:0080",
                "https://login.example.com:4430/x",
                "http://localhost:443",
                "https://login.example.com\\x",
                "https://login.example.com/a\\b",
            ][..],
        ),
        (
            "resource",
            &[
                "https://mcp.example.com/acme/mcp",
                "https://mcp.example.com/acme/mcp?v=1",
                "https://mcp.example.com?v=1",
                "http://localhost:3000/mcp",
                "http://mcp.example.com/mcp",
                "https://mcp.example.com/mcp#f",
                "https://u:p@mcp.example.com/mcp",
                "https://MCP.Example.COM:443/initech/mcp",
                "https://mcp.example.com:443?v=1",
                "https://mcp.example.com/",
                "https://mcp.example.com/A/B?Q=1",
                "https://[2001:db8::443]:8443/mcp",
            ][..],
        ),
    ] {
        let path = format!("spec.auth.oauth.{field}");
        let node = schema_of(&schema, &path);
        for url in urls {
            let mut tenant = example("oauth");
            tenant["spec"]["auth"]["oauth"][field] = json!(url);
            let by_code = code_validation(&tenant).is_ok();
            let by_schema = !keywords_refuse(node, &json!(url)) && cel_validation(&tenant).is_ok();
            assert_eq!(by_code, by_schema, "{field} {url:?}");
        }
    }
    // What a pattern cannot see: a host the URL Standard refuses or a port
    // above 65535. The schema lets these through and the code refuses them
    // (the operator reports InvalidSpec), as for connector base URLs.
    let node = schema_of(&schema, "spec.auth.oauth.issuer");
    for url in ["https://exa%mple.com", "https://login.example.com:99999"] {
        assert!(!keywords_refuse(node, &json!(url)), "{url}");
        assert!(
            bulkhead_crds::validation::check_issuer_url(url).is_err(),
            "{url}"
        );
    }
}
