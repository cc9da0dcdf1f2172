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

/// How the schema refuses a case.
enum Schema {
    /// A CEL rule fails with a message containing this text.
    Cel(&'static str),
    /// A value keyword of the field's schema refuses the value.
    Keyword,
    /// The list is a `map` or `set` list, so the API server refuses duplicates.
    UniqueList(&'static str),
}

struct Case {
    name: &'static str,
    edit: fn(&mut Value),
    field: &'static str,
    schema: Schema,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "upper-case id",
            edit: |t| t["metadata"]["name"] = json!("Acme"),
            field: "metadata.name",
            schema: Schema::Cel("DNS-1123 label"),
        },
        Case {
            name: "id with a dot",
            edit: |t| t["metadata"]["name"] = json!("acme.corp"),
            field: "metadata.name",
            schema: Schema::Cel("DNS-1123 label"),
        },
        Case {
            name: "id starting with '-'",
            edit: |t| t["metadata"]["name"] = json!("-acme"),
            field: "metadata.name",
            schema: Schema::Cel("DNS-1123 label"),
        },
        Case {
            name: "id too long for the namespace",
            edit: |t| t["metadata"]["name"] = json!("a".repeat(55)),
            field: "metadata.name",
            schema: Schema::Cel("at most 54"),
        },
        Case {
            name: "reserved id system",
            edit: |t| t["metadata"]["name"] = json!("system"),
            field: "metadata.name",
            schema: Schema::Cel("reserved"),
        },
        Case {
            name: "undeclared credential",
            edit: |t| t["spec"]["connectors"][1]["credential"] = json!("payroll"),
            field: "spec.connectors[1].credential",
            schema: Schema::Cel("must be declared"),
        },
        Case {
            name: "credential with no credentials at all",
            edit: |t| {
                t["spec"].as_object_mut().unwrap().remove("credentials");
            },
            field: "spec.connectors[0].credential",
            schema: Schema::Cel("must be declared"),
        },
        Case {
            name: "CIDR prefix too long",
            edit: |t| t["spec"]["network"]["egress"]["cidrs"][0] = json!("10.0.0.0/33"),
            field: "spec.network.egress.cidrs[0]",
            schema: Schema::Cel("canonical CIDR"),
        },
        Case {
            name: "CIDR with host bits",
            edit: |t| t["spec"]["network"]["egress"]["cidrs"][0] = json!("203.0.113.7/24"),
            field: "spec.network.egress.cidrs[0]",
            schema: Schema::Cel("canonical CIDR"),
        },
        Case {
            name: "host name instead of a CIDR",
            edit: |t| t["spec"]["network"]["egress"]["cidrs"][0] = json!("example.com/32"),
            field: "spec.network.egress.cidrs[0]",
            schema: Schema::Cel("canonical CIDR"),
        },
        Case {
            name: "address without a prefix",
            edit: |t| t["spec"]["network"]["egress"]["cidrs"][0] = json!("203.0.113.7"),
            field: "spec.network.egress.cidrs[0]",
            schema: Schema::Cel("canonical CIDR"),
        },
        Case {
            name: "duplicate connector",
            edit: |t| t["spec"]["connectors"][1]["name"] = json!("github"),
            field: "spec.connectors[1].name",
            schema: Schema::UniqueList("spec.connectors"),
        },
        Case {
            name: "duplicate credential",
            edit: |t| t["spec"]["credentials"][1]["name"] = json!("github"),
            field: "spec.credentials[1].name",
            schema: Schema::UniqueList("spec.credentials"),
        },
        Case {
            name: "duplicate egress port",
            edit: |t| t["spec"]["network"]["egress"]["ports"] = json!([443, 443]),
            field: "spec.network.egress.ports[1]",
            schema: Schema::UniqueList("spec.network.egress.ports"),
        },
        Case {
            name: "duplicate tool rate limit",
            edit: |t| {
                let first = t["spec"]["rateLimits"]["perTool"][0].clone();
                t["spec"]["rateLimits"]["perTool"]
                    .as_array_mut()
                    .unwrap()
                    .push(first);
            },
            field: "spec.rateLimits.perTool[1].tool",
            schema: Schema::UniqueList("spec.rateLimits.perTool"),
        },
        Case {
            name: "negative replicas",
            edit: |t| t["spec"]["server"]["replicas"] = json!(-1),
            field: "spec.server.replicas",
            schema: Schema::Keyword,
        },
        Case {
            name: "too many replicas",
            edit: |t| t["spec"]["server"]["replicas"] = json!(51),
            field: "spec.server.replicas",
            schema: Schema::Keyword,
        },
        Case {
            name: "image with a space",
            edit: |t| t["spec"]["server"]["image"] = json!("registry.example.com/server latest"),
            field: "spec.server.image",
            schema: Schema::Keyword,
        },
        Case {
            name: "invalid runtime class",
            edit: |t| t["spec"]["server"]["runtimeClassName"] = json!("Kata_QEMU"),
            field: "spec.server.runtimeClassName",
            schema: Schema::Keyword,
        },
        Case {
            name: "upper-case credential name",
            edit: |t| {
                t["spec"]["credentials"][0]["name"] = json!("GitHub");
                t["spec"]["connectors"][0]["credential"] = json!("GitHub");
            },
            field: "spec.credentials[0].name",
            schema: Schema::Keyword,
        },
        Case {
            name: "credential key with a space",
            edit: |t| t["spec"]["credentials"][0]["key"] = json!("github token"),
            field: "spec.credentials[0].key",
            schema: Schema::Keyword,
        },
        Case {
            name: "connector name with a slash",
            edit: |t| t["spec"]["connectors"][0]["name"] = json!("git/hub"),
            field: "spec.connectors[0].name",
            schema: Schema::Keyword,
        },
        Case {
            name: "base URL that is not http(s)",
            edit: |t| t["spec"]["connectors"][0]["baseUrl"] = json!("ftp://api.github.com"),
            field: "spec.connectors[0].baseUrl",
            schema: Schema::Keyword,
        },
        Case {
            name: "base URL with user information",
            edit: |t| {
                t["spec"]["connectors"][0]["baseUrl"] = json!("https://user:secret@api.github.com")
            },
            field: "spec.connectors[0].baseUrl",
            schema: Schema::Keyword,
        },
        Case {
            name: "http connector without allow-list",
            edit: |t| {
                t["spec"]["connectors"][1]
                    .as_object_mut()
                    .unwrap()
                    .remove("allow");
            },
            field: "spec.connectors[1].allow",
            schema: Schema::Cel("at least one allowed"),
        },
        Case {
            name: "github connector with allow-list",
            edit: |t| {
                t["spec"]["connectors"][0]["allow"] = json!([{"method": "GET", "path": "/user"}])
            },
            field: "spec.connectors[0].allow",
            schema: Schema::Cel("only http connectors"),
        },
        Case {
            name: "unknown HTTP method",
            edit: |t| t["spec"]["connectors"][1]["allow"][0]["method"] = json!("TRACE"),
            field: "spec.connectors[1].allow[0].method",
            schema: Schema::Keyword,
        },
        Case {
            name: "relative path",
            edit: |t| t["spec"]["connectors"][1]["allow"][0]["path"] = json!("v1/invoices"),
            field: "spec.connectors[1].allow[0].path",
            schema: Schema::Keyword,
        },
        Case {
            name: "'**' before the end",
            edit: |t| t["spec"]["connectors"][1]["allow"][0]["path"] = json!("/v1/**/invoices"),
            field: "spec.connectors[1].allow[0].path",
            schema: Schema::Keyword,
        },
        Case {
            name: "partial '*' segment",
            edit: |t| t["spec"]["connectors"][1]["allow"][0]["path"] = json!("/v1/inv*"),
            field: "spec.connectors[1].allow[0].path",
            schema: Schema::Keyword,
        },
        Case {
            name: "dot-dot segment",
            edit: |t| t["spec"]["connectors"][1]["allow"][0]["path"] = json!("/v1/../admin"),
            field: "spec.connectors[1].allow[0].path",
            schema: Schema::Cel("'..'"),
        },
        Case {
            name: "trailing '/' (an empty last segment)",
            edit: |t| t["spec"]["connectors"][1]["allow"][0]["path"] = json!("/v1/"),
            field: "spec.connectors[1].allow[0].path",
            schema: Schema::Keyword,
        },
        Case {
            name: "empty segment in the middle",
            edit: |t| t["spec"]["connectors"][1]["allow"][0]["path"] = json!("/v1//x"),
            field: "spec.connectors[1].allow[0].path",
            schema: Schema::Keyword,
        },
        Case {
            name: "percent-encoded segment",
            edit: |t| t["spec"]["connectors"][1]["allow"][0]["path"] = json!("/v1/%7Euser/x"),
            field: "spec.connectors[1].allow[0].path",
            schema: Schema::Keyword,
        },
        Case {
            name: "backslash in a segment",
            edit: |t| t["spec"]["connectors"][1]["allow"][0]["path"] = json!("/v1/a\\b"),
            field: "spec.connectors[1].allow[0].path",
            schema: Schema::Keyword,
        },
        Case {
            name: "IPv4-mapped IPv6 egress range",
            edit: |t| t["spec"]["network"]["egress"]["cidrs"][0] = json!("::ffff:0.0.0.0/96"),
            field: "spec.network.egress.cidrs[0]",
            schema: Schema::Cel("canonical CIDR notation"),
        },
        Case {
            name: "empty namespace selector",
            edit: |t| t["spec"]["network"]["ingressFrom"][1] = json!({}),
            field: "spec.network.ingressFrom[1]",
            schema: Schema::Cel("admit every namespace"),
        },
        Case {
            name: "selector with empty matchLabels",
            edit: |t| t["spec"]["network"]["ingressFrom"][0] = json!({"matchLabels": {}}),
            field: "spec.network.ingressFrom[0]",
            schema: Schema::Cel("admit every namespace"),
        },
        Case {
            name: "selector of only NotIn and Exists",
            edit: |t| {
                t["spec"]["network"]["ingressFrom"][1] = json!({"matchExpressions": [
                    {"key": "team", "operator": "NotIn", "values": ["blocked"]},
                    {"key": "kubernetes.io/metadata.name", "operator": "Exists"},
                ]})
            },
            field: "spec.network.ingressFrom[1]",
            schema: Schema::Cel("alone admit almost every one"),
        },
        Case {
            name: "port zero",
            edit: |t| t["spec"]["network"]["egress"]["ports"][0] = json!(0),
            field: "spec.network.egress.ports[0]",
            schema: Schema::Keyword,
        },
        Case {
            name: "port above 65535",
            edit: |t| t["spec"]["network"]["egress"]["ports"][0] = json!(70000),
            field: "spec.network.egress.ports[0]",
            schema: Schema::Keyword,
        },
        Case {
            name: "negative cpu quota",
            edit: |t| t["spec"]["quota"]["cpu"] = json!("-1"),
            field: "spec.quota.cpu",
            schema: Schema::Cel("positive quantity"),
        },
        Case {
            name: "memory quota that is no quantity",
            edit: |t| t["spec"]["quota"]["memory"] = json!("lots"),
            field: "spec.quota.memory",
            schema: Schema::Cel("positive quantity"),
        },
        Case {
            name: "negative pod quota",
            edit: |t| t["spec"]["quota"]["pods"] = json!(-1),
            field: "spec.quota.pods",
            schema: Schema::Keyword,
        },
        Case {
            name: "zero requests per minute",
            edit: |t| t["spec"]["rateLimits"]["perCaller"]["requestsPerMinute"] = json!(0),
            field: "spec.rateLimits.perCaller.requestsPerMinute",
            schema: Schema::Keyword,
        },
        Case {
            name: "zero burst",
            edit: |t| t["spec"]["rateLimits"]["perTool"][0]["burst"] = json!(0),
            field: "spec.rateLimits.perTool[0].burst",
            schema: Schema::Keyword,
        },
        Case {
            name: "display name with a control character",
            edit: |t| t["spec"]["displayName"] = json!("Acme\u{1b}[2J Corp"),
            field: "spec.displayName",
            schema: Schema::Keyword,
        },
        Case {
            name: "display name too long",
            edit: |t| t["spec"]["displayName"] = json!("x".repeat(257)),
            field: "spec.displayName",
            schema: Schema::Keyword,
        },
    ]
}

#[test]
fn the_examples_pass_code_and_cel_validation() {
    for name in ["minimal", "full"] {
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
    let mut tenant = example("full");
    tenant["spec"]["network"]["egress"]["cidrs"] =
        json!(["203.0.113.0/24", "2001:db8::/32", "10.20.0.0/16"]);
    tenant["spec"]["quota"]["cpu"] = json!(3);
    tenant["spec"]["quota"]["memory"] = json!("1536Mi");
    tenant["spec"]["connectors"][1]["allow"][0]["path"] = json!("/v1/invoices.json");
    tenant["metadata"]["name"] = json!("a".repeat(54));
    assert_eq!(code_validation(&tenant), Ok(()));
    assert_eq!(cel_validation(&tenant), Ok(()));
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
    let error = code_validation(&tenant).unwrap_err();
    assert!(error.names_field("spec.connectors[1].allow"), "{error}");
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
    let accepted = [
        "2", "500m", "4Gi", "0.5", "1.5Gi", "1e3", "2E6", "1k", "100M",
    ];
    let refused = [
        "-1", "0", "0m", "0.0", "abc", "1Xi", "Gi", "", "1e", "1.2.3", "+-1",
    ];
    for (inputs, valid) in [(&accepted[..], true), (&refused[..], false)] {
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
