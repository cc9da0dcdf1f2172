//! One rulebook: whatever `validation` (and so `render` and the operator)
//! accepts, the server's configuration loader accepts too, and what the
//! loader would refuse, `render` refuses naming the field, so a Tenant never
//! turns into a server that crash-loops on its own configuration.
//!
//! Tenants are generated near the edges of each rule (paths, base URLs,
//! CIDRs of both families including IPv4-mapped ones, names, quantities,
//! rate limits, OAuth issuers and resources, scopes, claims, the issuer's
//! network and access rules) with proptest.

use std::process::Command;

use bulkhead_crds::Tenant;
use bulkhead_crds::server_config::{CONFIG_FILE_KEY, ServerConfig};
use bulkhead_crds::validation::{NamespaceNaming, check_allow_path, validate_tenant};
use bulkhead_operator::render::render_tenant;
use bulkhead_operator::settings::OperatorSettings;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};

fn full_example() -> Value {
    let path = format!(
        "{}/../manifests/examples/full.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    yaml_serde::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The server configuration in `render`'s output (the ConfigMap's `server.yaml`).
fn rendered_server_config(rendered: &str) -> ServerConfig {
    let config_map = rendered
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| yaml_serde::from_str::<Value>(d).unwrap())
        .find(|d| d["kind"] == "ConfigMap")
        .expect("render prints a ConfigMap");
    let text = config_map["data"][CONFIG_FILE_KEY].as_str().unwrap();
    yaml_serde::from_str(text).unwrap()
}

/// `bulkhead-operator render` on `tenant`: (exit status success, stderr).
fn render_cli(name: &str, tenant: &Value) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("bulkhead-rulebook-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tenant.yaml");
    std::fs::write(&file, yaml_serde::to_string(tenant).unwrap()).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_bulkhead-operator"))
        .args(["render", file.to_str().unwrap()])
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// The server configuration of the full example with the billing
/// connector's base URL replaced.
fn server_config_with_base_url(url: &str) -> ServerConfig {
    let mut config = server_config_with_allow_path("/v1/invoices/*");
    let billing = config
        .connectors
        .iter_mut()
        .find(|c| c.name == "billing")
        .unwrap();
    billing.base_url = url.to_owned();
    config
}

/// The server configuration of the full example with one allow path replaced.
fn server_config_with_allow_path(path: &str) -> ServerConfig {
    let rendered = render_tenant(
        &yaml_serde::to_string(&full_example()).unwrap(),
        &OperatorSettings::default(),
    )
    .unwrap();
    let mut config = rendered_server_config(&rendered);
    let billing = config
        .connectors
        .iter_mut()
        .find(|c| c.name == "billing")
        .unwrap();
    billing.allow[0].path = path.to_owned();
    config
}

#[test]
fn the_named_inputs_are_refused_by_render_exactly_as_by_the_server() {
    const PATH: &str = "spec.connectors[1].allow[0].path";
    for path in ["/v1/", "/v1//x", "/v1/%7Euser/x", "/v1/a\\b"] {
        let mut tenant = full_example();
        tenant["spec"]["connectors"][1]["allow"][0]["path"] = json!(path);
        let (ok, stderr) = render_cli("path", &tenant);
        assert!(!ok, "render accepted allow path {path:?}");
        assert!(stderr.contains(PATH), "{path:?}: {stderr}");
        let loader = bulkhead_server::config::validate(&server_config_with_allow_path(path));
        assert!(loader.is_err(), "the server loader accepted {path:?}");
    }
    let mut tenant = full_example();
    tenant["spec"]["network"]["egress"]["cidrs"] = json!(["::ffff:0.0.0.0/96"]);
    let (ok, stderr) = render_cli("cidr", &tenant);
    assert!(!ok, "render accepted ::ffff:0.0.0.0/96");
    assert!(stderr.contains("spec.network.egress.cidrs[0]"), "{stderr}");
}

/// Picks from `valid` nine times in ten and from `edge` otherwise, so
/// enough generated Tenants pass validation for the property to say much.
fn mostly<T: Clone + std::fmt::Debug + 'static>(valid: Vec<T>, edge: Vec<T>) -> BoxedStrategy<T> {
    prop_oneof![
        9 => prop::sample::select(valid),
        1 => prop::sample::select(edge),
    ]
    .boxed()
}

/// Picks from `edge` one time in 40: for the many independent parts of
/// `spec.auth` and `spec.access`, so that a fair share of Tenants with
/// them still passes validation.
fn seldom<T: Clone + std::fmt::Debug + 'static>(valid: Vec<T>, edge: Vec<T>) -> BoxedStrategy<T> {
    prop_oneof![
        39 => prop::sample::select(valid),
        1 => prop::sample::select(edge),
    ]
    .boxed()
}

/// Allow paths built from segments near the rule's edges.
fn allow_path() -> impl Strategy<Value = String> {
    let segment = mostly(
        vec![
            "v1", "invoices", "*", "~user", "a:b@c", "(x)", "'q'", "a=b&c", "+", "a;b", "...",
        ],
        vec![
            "**", "", ".", "..", "%7E", "%2F", "a\\b", "a b", "a\tb", "é", "x?y", "a#b", "a*",
            "[x]", "{y}", "a|b", "\"q\"", "<x>", "^", "`",
        ],
    );
    prop_oneof![
        8 => (prop::collection::vec(segment, 0..5), prop::bool::weighted(0.2)).prop_map(
            |(segments, rest)| {
                let path = format!("/{}", segments.join("/"));
                if rest { format!("{}/**", path.trim_end_matches('/')) } else { path }
            }
        ),
        1 => Just("v1/x".to_owned()),
        1 => Just(format!("/{}", "a".repeat(511))),
        1 => Just(format!("/{}", "a".repeat(512))),
    ]
}

fn base_url() -> impl Strategy<Value = String> {
    mostly(
        vec![
            "https://api.example.com",
            "https://api.example.com/v1",
            "http://127.0.0.1:8080/api",
            "https://[::1]:8443/x",
            "https://a_b.example.com",
            "https://xn--bcher-kva.example",
            "HTTPS://A.COM",
            "https://a:65535/x",
        ],
        vec![
            "https://[::1",
            "https://a:99999/x",
            "https://a:/x",
            "https://:443/x",
            "https://exa%mple.com",
            "https://bücher.example",
            "https://256.1.1.1",
            "https://0x7f.1",
            "https://a..b",
            "https://.",
            "https://a\\b",
            "https://user@a",
            "https://a/?q",
            "https://a/#f",
            "ftp://a",
            "https://a/%zz",
            "https://a/b c",
        ],
    )
    .prop_map(str::to_owned)
}

fn ref_name() -> impl Strategy<Value = String> {
    let long = "a".repeat(63);
    let longer = "a".repeat(64);
    mostly(
        vec![
            "github".to_owned(),
            "billing".to_owned(),
            "a-b_c".to_owned(),
            long,
        ],
        vec![
            "Bad".to_owned(),
            "a-".to_owned(),
            "9a".to_owned(),
            "a.b".to_owned(),
            String::new(),
            longer,
        ],
    )
}

fn secret_key() -> impl Strategy<Value = String> {
    mostly(
        vec![
            "token".to_owned(),
            "a.b".to_owned(),
            "A-Z_9".to_owned(),
            "k".repeat(253),
        ],
        vec![
            "bad key".to_owned(),
            String::new(),
            "a/b".to_owned(),
            "k".repeat(254),
        ],
    )
}

fn tenant_name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-z]([a-z0-9-]{0,8}[a-z0-9])?",
        1 => Just("a".repeat(54)),
        1 => prop::sample::select(vec!["system", "kube-x", "-a", "A", "a.b", ""]).prop_map(str::to_owned),
        1 => Just("a".repeat(55)),
    ]
}

fn cidr() -> impl Strategy<Value = String> {
    mostly(
        vec![
            "0.0.0.0/0",
            "203.0.113.0/24",
            "10.0.0.0/8",
            "::/0",
            "2001:db8::/32",
            "64:ff9b::/96",
            "fe80::/10",
        ],
        vec![
            "10.1.2.3/8",
            "1.2.3.4/33",
            "::ffff:0.0.0.0/96",
            "::ffff:0:0/96",
            "::ffff:10.0.0.0/104",
            "::/129",
            "10.0.0.0",
        ],
    )
    .prop_map(str::to_owned)
}

fn quantity() -> impl Strategy<Value = Value> {
    mostly(
        vec![
            json!("2"),
            json!("500m"),
            json!("4Gi"),
            json!("1e3"),
            json!("1.5"),
            json!(".5"),
        ],
        vec![json!("0"), json!("-1"), json!("lots"), json!(3)],
    )
}

fn rate() -> impl Strategy<Value = u32> {
    mostly(
        vec![1, 2, 100_000, 1_000_000],
        vec![0, 100_001, 1_000_001, u32::MAX],
    )
}

fn connector() -> impl Strategy<Value = Value> {
    (
        ref_name(),
        prop::bool::ANY,
        prop::bool::weighted(0.1),
        base_url(),
        prop::option::weighted(
            0.3,
            prop::sample::select(vec!["github", "billing", "other"]),
        ),
        prop::collection::vec(
            (
                mostly(vec!["GET", "POST", "DELETE"], vec!["TRACE", "get"]),
                allow_path(),
            ),
            1..3,
        ),
    )
        .prop_map(|(name, http, odd_allow, base_url, credential, allow)| {
            // http connectors need an allow-list and github ones take none;
            // now and then the other way round.
            let allow = if http != odd_allow { allow } else { Vec::new() };
            let mut connector = json!({
                "name": name,
                "type": if http { "http" } else { "github" },
                "baseUrl": base_url,
                "allow": allow
                    .into_iter()
                    .map(|(method, path)| json!({"method": method, "path": path}))
                    .collect::<Vec<_>>(),
            });
            if let Some(credential) = credential {
                connector["credential"] = json!(credential);
            }
            connector
        })
}

/// Issuer or resource URLs; `query` adds the resource's query forms.
fn oauth_url(query: bool) -> impl Strategy<Value = String> {
    let mut valid = vec![
        "https://login.example.com",
        "https://login.example.com/realms/acme",
        "https://login.example.com:8443/x",
        "http://localhost:8080",
        "http://127.0.0.1:9000/idp",
        "http://[::1]:3000/mcp",
        "https://[2001:db8::1]/x",
    ];
    let mut edge = vec![
        "http://login.example.com",
        "http://localhost.example.com",
        "http://127.0.0.1.example.com",
        "http://127.1",
        "http://LOCALHOST",
        "https://u@login.example.com",
        "https://login.example.com/#f",
        "https://login.example.com/a b",
        "https://a:99999",
        "https://exa%mple.com",
        "ftp://login.example.com",
        "https://",
        "",
    ];
    if query {
        valid.push("https://mcp.example.com/mcp?v=1");
    } else {
        edge.push("https://login.example.com/?realm=a");
    }
    seldom(valid, edge).prop_map(str::to_owned)
}

fn scope() -> impl Strategy<Value = String> {
    seldom(
        vec!["mcp:tools", "read", "a!#[]~", "github.read"],
        vec!["a b", "a\\b", "a\"b", "", "é"],
    )
    .prop_map(str::to_owned)
}

fn claim() -> impl Strategy<Value = Option<String>> {
    prop::option::of(seldom(
        vec![
            "sub".to_owned(),
            "https://example.com/uid".to_owned(),
            "c".repeat(128),
        ],
        vec![String::new(), "a\u{7}b".to_owned(), "c".repeat(129)],
    ))
}

fn issuer_network() -> impl Strategy<Value = Value> {
    let namespaces = json!({"matchLabels": {"kubernetes.io/metadata.name": "idp"}});
    let pods = json!({"matchLabels": {"app": "idp"}});
    seldom(
        vec![
            json!({"cidrs": ["203.0.113.10/32"]}),
            json!({"cidrs": ["10.20.0.0/16", "0.0.0.0/0"], "ports": [443, 8443]}),
            json!({"namespaceSelector": namespaces, "ports": [8080]}),
            json!({"namespaceSelector": namespaces, "podSelector": pods}),
        ],
        vec![
            json!({}),
            json!({"cidrs": ["203.0.113.10/24"]}),
            json!({"cidrs": ["203.0.113.10/32"], "namespaceSelector": namespaces}),
            json!({"cidrs": ["203.0.113.10/32"], "podSelector": pods}),
            json!({"namespaceSelector": {}}),
            json!({"cidrs": ["203.0.113.10/32"], "ports": [0]}),
        ],
    )
}

fn oauth() -> impl Strategy<Value = Value> {
    (
        oauth_url(false),
        oauth_url(true),
        prop::collection::vec(scope(), 0..3),
        (claim(), claim(), claim()),
        seldom(vec![json!(null), json!(0), json!(300)], vec![json!(301)]),
        issuer_network(),
    )
        .prop_map(
            |(issuer, resource, scopes, (caller, groups, tenant), skew, network)| {
                let mut oauth = json!({
                    "issuer": issuer,
                    "resource": resource,
                    "requiredScopes": scopes,
                    "issuerNetwork": network,
                });
                for (name, claim) in [
                    ("callerClaim", caller),
                    ("groupsClaim", groups),
                    ("tenantClaim", tenant),
                ] {
                    if let Some(claim) = claim {
                        oauth[name] = json!(claim);
                    }
                }
                if !skew.is_null() {
                    oauth["clockSkewSeconds"] = skew;
                }
                oauth
            },
        )
}

fn access_rule() -> impl Strategy<Value = Value> {
    let subject = seldom(
        vec![
            json!({"apiKeyCaller": "ci-release"}),
            json!({"tokenSubject": "alice"}),
            json!({"group": "Ops Team"}),
            json!({"scope": "github.read"}),
        ],
        vec![
            json!({}),
            json!({"group": "ops", "scope": "x"}),
            json!({"apiKeyCaller": "ci/release"}),
            json!({"tokenSubject": "a\u{85}b"}),
            json!({"scope": "a b"}),
        ],
    );
    let tool = seldom(
        vec!["*", "github_*", "github_get_repository", "a.b-c"],
        vec!["github get", "github/*", ""],
    );
    (
        prop::collection::vec(subject, 1..3),
        prop::collection::vec(tool, 1..3),
    )
        .prop_map(|(subjects, tools)| json!({"subjects": subjects, "tools": tools}))
}

fn tenant() -> impl Strategy<Value = Value> {
    (
        tenant_name(),
        prop::collection::vec((ref_name(), secret_key()), 0..3),
        prop::collection::vec(connector(), 0..3),
        prop::collection::vec(cidr(), 0..3),
        (quantity(), quantity()),
        prop::option::of((rate(), rate())),
        prop::collection::vec(
            (
                mostly(vec!["github_get_repository", "t"], vec![""]),
                rate(),
                rate(),
            ),
            0..2,
        ),
        (
            seldom(vec![true], vec![false]),
            prop::option::weighted(0.7, oauth()),
            prop::collection::vec(access_rule(), 0..2),
        ),
    )
        .prop_map(
            |(
                name,
                credentials,
                connectors,
                cidrs,
                (cpu, memory),
                per_caller,
                per_tool,
                (api_keys, oauth, access),
            )| {
                let mut tenant = json!({
                    "apiVersion": "bulkhead.dev/v1alpha1",
                    "kind": "Tenant",
                    "metadata": {"name": name},
                    "spec": {
                        "credentials": credentials
                            .into_iter()
                            .map(|(name, key)| json!({"name": name, "key": key}))
                            .collect::<Vec<_>>(),
                        "connectors": connectors,
                        "network": {"egress": {"cidrs": cidrs}},
                        "quota": {"cpu": cpu, "memory": memory},
                        "rateLimits": {
                            "perTool": per_tool
                                .into_iter()
                                .map(|(tool, rpm, burst)| json!({"tool": tool, "requestsPerMinute": rpm, "burst": burst}))
                                .collect::<Vec<_>>(),
                        },
                    },
                });
                if let Some((rpm, burst)) = per_caller {
                    tenant["spec"]["rateLimits"]["perCaller"] =
                        json!({"requestsPerMinute": rpm, "burst": burst});
                }
                tenant["spec"]["auth"] = json!({"apiKeys": api_keys});
                if let Some(oauth) = oauth {
                    tenant["spec"]["auth"]["oauth"] = oauth;
                }
                tenant["spec"]["access"] = json!(access);
                tenant
            },
        )
}

/// Every Tenant that `validation` accepts renders, and the server's
/// configuration loader accepts what it renders. The test also counts the
/// valid Tenants among those generated, so it cannot pass by generating
/// only invalid ones.
#[test]
fn every_valid_tenant_renders_to_a_configuration_the_server_loads() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const CASES: u32 = 2000;
    let valid = AtomicUsize::new(0);
    let with_connectors = AtomicUsize::new(0);
    let with_oauth_and_access = AtomicUsize::new(0);
    let mut runner = TestRunner::new(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let outcome = runner.run(&tenant(), |tenant| {
        let Ok(parsed) = serde_json::from_value::<Tenant>(tenant.clone()) else {
            // Not of a Tenant's shape (a quantity the type refuses): nothing
            // of it reaches validation.
            return Ok(());
        };
        if validate_tenant(&parsed, &NamespaceNaming::default()).is_err() {
            return Ok(());
        }
        valid.fetch_add(1, Ordering::Relaxed);
        if !parsed.spec.connectors.is_empty() {
            with_connectors.fetch_add(1, Ordering::Relaxed);
        }
        if parsed.spec.auth.oauth.is_some() && !parsed.spec.access.is_empty() {
            with_oauth_and_access.fetch_add(1, Ordering::Relaxed);
        }
        let rendered = render_tenant(
            &yaml_serde::to_string(&tenant).unwrap(),
            &OperatorSettings::default(),
        );
        prop_assert!(
            rendered.is_ok(),
            "validation accepted, render refused: {:?}",
            rendered.err()
        );
        let config = rendered_server_config(&rendered.unwrap());
        let loaded = bulkhead_server::config::validate(&config);
        prop_assert!(
            loaded.is_ok(),
            "the server refuses what render wrote: {:?}\n{tenant:#}",
            loaded.err()
        );
        // What the server builds at start from a loaded configuration.
        let tools = bulkhead_server::tools::ToolCatalog::new(&config);
        prop_assert!(
            tools.is_ok(),
            "the server cannot set up its tools: {:?}",
            tools.err()
        );
        Ok(())
    });
    if let Err(error) = outcome {
        panic!("{error}");
    }
    let (valid, with_connectors, with_oauth_and_access) = (
        valid.into_inner(),
        with_connectors.into_inner(),
        with_oauth_and_access.into_inner(),
    );
    eprintln!(
        "{valid} of {CASES} generated Tenants were valid, {with_connectors} with connectors, {with_oauth_and_access} with oauth and access rules"
    );
    assert!(
        valid >= CASES as usize / 20
            && with_connectors >= CASES as usize / 50
            && with_oauth_and_access >= CASES as usize / 100,
        "too few valid Tenants generated to test anything: {valid} valid, {with_connectors} with connectors, {with_oauth_and_access} with oauth and access, of {CASES}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    /// For an allow path alone: validation refuses it exactly when the
    /// server's loader does.
    #[test]
    fn validation_and_the_server_loader_agree_on_every_allow_path(path in allow_path()) {
        let by_rule = check_allow_path(&path).is_ok();
        let by_loader = bulkhead_server::config::validate(&server_config_with_allow_path(&path)).is_ok();
        prop_assert_eq!(by_rule, by_loader, "{:?}", path);
    }
}

proptest! {
    // Each case builds the connectors' HTTP clients; the URLs come from a
    // pool of a few dozen, which 150 cases cover.
    #![proptest_config(ProptestConfig { cases: 150, failure_persistence: None, ..ProptestConfig::default() })]

    /// For a base URL alone: validation accepts it exactly when the server
    /// loads it and can set up the connector's HTTP client for it.
    #[test]
    fn validation_and_the_server_agree_on_every_base_url(url in base_url()) {
        let by_rule = bulkhead_crds::validation::check_base_url(&url).is_ok();
        let config = server_config_with_base_url(&url);
        let by_server = bulkhead_server::config::validate(&config).is_ok()
            && bulkhead_server::tools::ToolCatalog::new(&config).is_ok();
        prop_assert_eq!(by_rule, by_server, "{:?}", url);
    }
}
