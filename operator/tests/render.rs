//! `render`: golden files of the example Tenants, and the errors a person
//! sees for bad input.
//!
//! The golden files under `tests/golden/` are the exact output of
//! `bulkhead-operator render manifests/examples/<name>.yaml`. After an
//! intended change, rewrite them and review the diff:
//!
//! ```text
//! UPDATE_GOLDEN=1 cargo test -p bulkhead-operator --test render
//! git diff operator/tests/golden/
//! ```

use std::path::PathBuf;
use std::process::Command;

use bulkhead_operator::render::{RenderError, parse_tenant, render_tenant};
use bulkhead_operator::settings::OperatorSettings;

fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative)).unwrap()
}

fn check_golden(example: &str) {
    let rendered = render_tenant(
        &read(&format!("manifests/examples/{example}.yaml")),
        &OperatorSettings::default(),
    )
    .unwrap();
    let golden = repo_path(&format!("operator/tests/golden/{example}.yaml"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &rendered).unwrap();
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_default();
    assert!(
        rendered == expected,
        "render of {example} differs from {}; if intended, run UPDATE_GOLDEN=1 cargo test -p bulkhead-operator --test render",
        golden.display()
    );
}

#[test]
fn minimal_example_renders_as_the_golden_file() {
    check_golden("minimal");
}

#[test]
fn full_example_renders_as_the_golden_file() {
    check_golden("full");
}

#[test]
fn oauth_example_renders_as_the_golden_file() {
    check_golden("oauth");
}

/// The OAuth example's ServerConfig and NetworkPolicy as `render` prints
/// them: the resource server settings with defaults applied, the external
/// Host beside the in-cluster ones, and egress to the issuer.
#[test]
fn oauth_example_renders_the_resource_server_and_the_issuer_egress() {
    let rendered = render_tenant(
        &read("manifests/examples/oauth.yaml"),
        &OperatorSettings::default(),
    )
    .unwrap();
    let documents: Vec<serde_json::Value> = rendered
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| yaml_serde::from_str(d).unwrap())
        .collect();
    let of_kind = |kind: &str| documents.iter().find(|d| d["kind"] == kind).unwrap();
    let config: bulkhead_crds::server_config::ServerConfig = yaml_serde::from_str(
        of_kind("ConfigMap")["data"]["server.yaml"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    bulkhead_server::config::validate(&config).unwrap();
    let oauth = config.auth.oauth.unwrap();
    assert_eq!(oauth.issuer, "https://login.example.com/realms/initech");
    assert_eq!(oauth.algorithms.len(), 2);
    assert!(config.allowed_hosts.contains(&"mcp.example.com".to_owned()));
    assert!(
        config
            .allowed_hosts
            .contains(&"mcp.example.com:443".to_owned())
    );
    let egress = of_kind("NetworkPolicy")["spec"]["egress"]
        .as_array()
        .unwrap();
    let issuer = egress.last().unwrap();
    assert_eq!(
        issuer,
        &serde_json::json!({
            "to": [{"ipBlock": {"cidr": "203.0.113.10/32"}}],
            "ports": [{"protocol": "TCP", "port": 443}],
        })
    );
}

#[test]
fn output_is_one_document_per_object_in_apply_order() {
    let rendered = render_tenant(
        &read("manifests/examples/full.yaml"),
        &OperatorSettings::default(),
    )
    .unwrap();
    let kinds: Vec<String> = rendered
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| {
            let value: serde_json::Value = yaml_serde::from_str(d).unwrap();
            value["kind"].as_str().unwrap().to_owned()
        })
        .collect();
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
}

#[test]
fn settings_change_what_is_rendered() {
    let settings = OperatorSettings {
        namespace_prefix: "mcp-".into(),
        server_image: "registry.example.com/bulkhead-server:1.2.3".into(),
        api_server_cidrs: vec!["192.0.2.10/32".into()],
        api_server_port: 443,
        ..OperatorSettings::default()
    };
    let rendered = render_tenant(&read("manifests/examples/minimal.yaml"), &settings).unwrap();
    assert!(rendered.contains("name: mcp-acme"));
    assert!(!rendered.contains("bulkhead-acme"));
    assert!(rendered.contains("image: registry.example.com/bulkhead-server:1.2.3"));
    assert!(rendered.contains("cidr: 192.0.2.10/32"));
}

#[test]
fn unknown_connector_type_names_the_field() {
    let yaml = read("manifests/examples/full.yaml").replace("type: github", "type: gitlab");
    let error = parse_tenant(&yaml).unwrap_err();
    assert!(matches!(error, RenderError::Shape(_)), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("spec.connectors[0].type") && message.contains("gitlab"),
        "{message}"
    );
}

#[test]
fn wrong_field_type_names_the_field() {
    let yaml = read("manifests/examples/full.yaml").replace("replicas: 2", "replicas: two");
    let message = parse_tenant(&yaml).unwrap_err().to_string();
    assert!(message.contains("spec.server.replicas"), "{message}");
}

#[test]
fn a_document_that_is_not_a_tenant_is_refused() {
    let error = parse_tenant("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n").unwrap_err();
    assert!(matches!(error, RenderError::NotATenant { .. }), "{error:?}");
    assert!(error.to_string().contains("ConfigMap"));
}

#[test]
fn text_that_is_not_yaml_is_refused() {
    let error = parse_tenant("spec: [unclosed").unwrap_err();
    assert!(matches!(error, RenderError::Yaml(_)), "{error:?}");
}

fn bulkhead_operator(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_bulkhead-operator"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn cli_prints_what_the_library_renders() {
    let file = repo_path("manifests/examples/full.yaml");
    let (ok, stdout, stderr) = bulkhead_operator(&["render", file.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let library = render_tenant(
        &read("manifests/examples/full.yaml"),
        &OperatorSettings::default(),
    )
    .unwrap();
    assert_eq!(stdout, library);
}

#[test]
fn cli_refuses_an_invalid_tenant_naming_the_field_and_exits_non_zero() {
    let dir = std::env::temp_dir().join(format!("bulkhead-render-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("invalid.yaml");
    let yaml =
        read("manifests/examples/full.yaml").replace("credential: billing", "credential: payroll");
    std::fs::write(&file, yaml).unwrap();
    let (ok, stdout, stderr) = bulkhead_operator(&["render", file.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!ok);
    assert!(
        stdout.is_empty(),
        "nothing is printed for an invalid Tenant: {stdout}"
    );
    assert!(
        stderr.contains("spec.connectors[1].credential")
            && stderr.contains("\"payroll\" is not declared"),
        "{stderr}"
    );
}

#[test]
fn cli_refuses_a_missing_file() {
    let (ok, _, stderr) = bulkhead_operator(&["render", "/nonexistent/tenant.yaml"]);
    assert!(!ok);
    assert!(
        stderr.contains("cannot read /nonexistent/tenant.yaml"),
        "{stderr}"
    );
}

#[test]
fn cli_crd_is_the_committed_manifest() {
    let (ok, stdout, stderr) = bulkhead_operator(&["crd"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout == read("manifests/crds/tenant.yaml"),
        "manifests/crds/tenant.yaml is stale: run cargo run -p bulkhead-operator -- crd > manifests/crds/tenant.yaml"
    );
}

#[test]
fn cli_reads_the_tenant_from_standard_input() {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_bulkhead-operator"))
        .args(["render", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(read("manifests/examples/minimal.yaml").as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        read("operator/tests/golden/minimal.yaml")
    );
}

#[test]
fn unknown_fields_are_refused_with_their_path() {
    let yaml = read("manifests/examples/full.yaml")
        .replace("replicas: 2", "replica: 2")
        .replace(
            "      key: github_token",
            "      key: github_token\n      keyy: x",
        );
    let message = parse_tenant(&yaml).unwrap_err().to_string();
    assert!(
        message.contains("spec.server.replica") && message.contains("spec.credentials[0].keyy"),
        "{message}"
    );
}

#[test]
fn a_tenant_as_kubectl_returns_it_renders() {
    // Server-set metadata, managed fields and status are part of the type.
    let yaml = r#"
apiVersion: bulkhead.dev/v1alpha1
kind: Tenant
metadata:
  name: acme
  uid: 6f1d9c2e-4b1a-4a39-9d57-0c3e1f7b8a21
  resourceVersion: "42"
  generation: 3
  creationTimestamp: "2026-01-01T00:00:00Z"
  managedFields:
    - manager: kubectl
      operation: Apply
      apiVersion: bulkhead.dev/v1alpha1
      fieldsType: FieldsV1
      fieldsV1: {f:spec: {}}
spec:
  network:
    ingressFrom:
      - matchLabels: {bulkhead.dev/gateway: "true"}
status:
  observedGeneration: 3
  namespace: bulkhead-acme
"#;
    let rendered = render_tenant(yaml, &OperatorSettings::default()).unwrap();
    assert!(
        rendered.contains("uid: 6f1d9c2e-4b1a-4a39-9d57-0c3e1f7b8a21"),
        "owner references are set"
    );
}
