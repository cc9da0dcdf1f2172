//! The table of Tenant cases that both halves of validation must judge
//! alike: invalid Tenants (edits of `manifests/examples/full.yaml`, each
//! naming the field at fault and how the CRD schema refuses it) and valid
//! ones. `crds/tests/validation.rs` checks them against the code and a local
//! evaluation of the schema; `tests/envtest/tests/validation_agreement.rs`
//! sends them to a real kube-apiserver. Test data only: each test crate
//! includes this file as a module.

use serde_json::{Value, json};

/// How the schema refuses a case.
pub enum Schema {
    /// A CEL rule fails with a message containing this text.
    Cel(&'static str),
    /// A value keyword of the field's schema refuses the value.
    Keyword,
    /// The list is a `map` or `set` list, so the API server refuses duplicates.
    UniqueList(&'static str),
    /// A CEL rule fails on kube-apiserver with a message containing this
    /// text, where kube's local CEL evaluation passes it: there `cidr()`
    /// takes a prefix length with a leading zero, Go's `netip` does not.
    CelOnServerOnly(&'static str),
}

/// One invalid Tenant.
pub struct Case {
    /// What is wrong, in a few words.
    pub name: &'static str,
    /// Turns the full example into the invalid Tenant.
    pub edit: fn(&mut Value),
    /// The field the code validation names (`InvalidTenant::names_field`).
    pub field: &'static str,
    /// How the schema refuses it.
    pub schema: Schema,
}

/// Gives the full example `spec.auth.oauth` (an issuer outside the
/// cluster) and `spec.access` rules of each kind of subject, the way
/// `manifests/examples/oauth.yaml` does.
pub fn with_oauth(t: &mut Value) {
    t["spec"]["auth"] = json!({
        "apiKeys": true,
        "oauth": {
            "issuer": "https://login.example.com/realms/globex",
            "resource": "https://mcp.example.com/globex/mcp",
            "requiredScopes": ["mcp:tools"],
            "tenantClaim": "tenant",
            "algorithms": ["RS256", "ES256"],
            "issuerNetwork": {"cidrs": ["203.0.113.10/32"], "ports": [443]},
        },
    });
    t["spec"]["access"] = json!([
        {"subjects": [{"group": "globex-platform"}, {"tokenSubject": "alice"}], "tools": ["*"]},
        {"subjects": [{"scope": "github.read"}, {"apiKeyCaller": "ci-release"}], "tools": ["github_get_*"]},
    ]);
}

/// `with_oauth`, then the issuer named by an in-cluster namespace selector
/// instead of CIDRs.
pub fn with_in_cluster_issuer(t: &mut Value) {
    with_oauth(t);
    t["spec"]["auth"]["oauth"]["issuerNetwork"] = json!({
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keycloak"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "keycloak"}},
        "ports": [8080],
    });
}

/// The invalid Tenants.
pub fn cases() -> Vec<Case> {
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
            name: "letter outside ASCII in a segment",
            edit: |t| t["spec"]["connectors"][1]["allow"][0]["path"] = json!("/v1/é"),
            field: "spec.connectors[1].allow[0].path",
            schema: Schema::Keyword,
        },
        Case {
            name: "path of 513 characters",
            edit: |t| {
                t["spec"]["connectors"][1]["allow"][0]["path"] =
                    json!(format!("/{}", "a".repeat(512)))
            },
            field: "spec.connectors[1].allow[0].path",
            schema: Schema::Keyword,
        },
        Case {
            name: "IPv4-mapped IPv6 range of all IPv4",
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
            name: "unknown selector operator",
            edit: |t| {
                t["spec"]["network"]["ingressFrom"][1] = json!({"matchExpressions": [
                    {"key": "team", "operator": "Matches", "values": ["a"]},
                    {"key": "team", "operator": "In", "values": ["a"]},
                ]})
            },
            field: "spec.network.ingressFrom[1].matchExpressions[0].operator",
            schema: Schema::Keyword,
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
        // Found by sending generated Tenants to kube-apiserver
        // (tests/envtest/tests/validation_agreement.rs): each was judged
        // differently by the API server and by the code.
        Case {
            name: "IPv4-mapped IPv6 range",
            edit: |t| t["spec"]["network"]["egress"]["cidrs"][0] = json!("::ffff:10.0.0.0/104"),
            field: "spec.network.egress.cidrs[0]",
            schema: Schema::Cel("canonical CIDR"),
        },
        Case {
            name: "CIDR prefix with a leading zero",
            edit: |t| t["spec"]["network"]["egress"]["cidrs"][0] = json!("10.0.0.0/08"),
            field: "spec.network.egress.cidrs[0]",
            schema: Schema::CelOnServerOnly("canonical CIDR"),
        },
        Case {
            name: "In expression without values",
            edit: |t| {
                t["spec"]["network"]["ingressFrom"][1]["matchExpressions"] =
                    json!([{"key": "team", "operator": "In"}])
            },
            field: "spec.network.ingressFrom[1].matchExpressions[0].values",
            schema: Schema::Cel("must not be empty for In and NotIn"),
        },
        Case {
            name: "Exists expression with values",
            edit: |t| {
                t["spec"]["network"]["ingressFrom"][1]["matchExpressions"] = json!([
                    {"key": "team", "operator": "Exists", "values": ["a"]},
                    {"key": "tier", "operator": "In", "values": ["x"]},
                ])
            },
            field: "spec.network.ingressFrom[1].matchExpressions[0].values",
            schema: Schema::Cel("must be empty for Exists and DoesNotExist"),
        },
        Case {
            name: "requests per minute above the bound",
            edit: |t| t["spec"]["rateLimits"]["perCaller"]["requestsPerMinute"] = json!(1_000_001),
            field: "spec.rateLimits.perCaller.requestsPerMinute",
            schema: Schema::Keyword,
        },
        Case {
            name: "burst above the bound",
            edit: |t| t["spec"]["rateLimits"]["perTool"][0]["burst"] = json!(100_001),
            field: "spec.rateLimits.perTool[0].burst",
            schema: Schema::Keyword,
        },
        Case {
            name: "path with a no-break space",
            edit: |t| t["spec"]["connectors"][1]["allow"][0]["path"] = json!("/v1/in\u{a0}voices"),
            field: "spec.connectors[1].allow[0].path",
            schema: Schema::Keyword,
        },
        Case {
            name: "path with a C1 control character",
            edit: |t| t["spec"]["connectors"][1]["allow"][0]["path"] = json!("/v1/in\u{85}voices"),
            field: "spec.connectors[1].allow[0].path",
            schema: Schema::Keyword,
        },
        Case {
            name: "base URL with a line separator",
            edit: |t| {
                t["spec"]["connectors"][1]["baseUrl"] =
                    json!("https://billing.example.com/a\u{2028}b")
            },
            field: "spec.connectors[1].baseUrl",
            schema: Schema::Keyword,
        },
        Case {
            name: "image with an ideographic space",
            edit: |t| {
                t["spec"]["server"]["image"] = json!("registry.example.com/server\u{3000}latest")
            },
            field: "spec.server.image",
            schema: Schema::Keyword,
        },
        // spec.auth and spec.access.
        Case {
            name: "issuer over http to a public host",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["issuer"] =
                    json!("http://login.example.com/realms/globex");
            },
            field: "spec.auth.oauth.issuer",
            schema: Schema::Keyword,
        },
        Case {
            name: "http issuer on a host that starts like localhost",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["issuer"] = json!("http://localhost.example.com");
            },
            field: "spec.auth.oauth.issuer",
            schema: Schema::Keyword,
        },
        Case {
            name: "issuer with a query",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["issuer"] =
                    json!("https://login.example.com/?realm=globex");
            },
            field: "spec.auth.oauth.issuer",
            schema: Schema::Keyword,
        },
        Case {
            name: "issuer with a fragment",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["issuer"] = json!("https://login.example.com/#globex");
            },
            field: "spec.auth.oauth.issuer",
            schema: Schema::Keyword,
        },
        Case {
            name: "issuer with user information",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["issuer"] = json!("https://admin@login.example.com");
            },
            field: "spec.auth.oauth.issuer",
            schema: Schema::Keyword,
        },
        Case {
            name: "resource with a fragment",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["resource"] =
                    json!("https://mcp.example.com/globex/mcp#x");
            },
            field: "spec.auth.oauth.resource",
            schema: Schema::Keyword,
        },
        Case {
            name: "resource over http to a public host",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["resource"] = json!("http://mcp.example.com/globex/mcp");
            },
            field: "spec.auth.oauth.resource",
            schema: Schema::Keyword,
        },
        Case {
            name: "resource with an upper-case host",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["resource"] =
                    json!("https://MCP.Example.COM/initech/mcp");
            },
            field: "spec.auth.oauth.resource",
            schema: Schema::Keyword,
        },
        Case {
            name: "resource with the default https port",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["resource"] =
                    json!("https://mcp.example.com:443/initech/mcp");
            },
            field: "spec.auth.oauth.resource",
            schema: Schema::Cel("no default port"),
        },
        Case {
            name: "resource with the default port written with a leading zero",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["resource"] = json!("https://mcp.example.com:0443");
            },
            field: "spec.auth.oauth.resource",
            schema: Schema::Cel("no default port"),
        },
        Case {
            name: "resource with an empty port",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["resource"] =
                    json!("https://mcp.example.com:/initech/mcp");
            },
            field: "spec.auth.oauth.resource",
            schema: Schema::Cel("no default port"),
        },
        Case {
            name: "loopback resource with the default http port",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["resource"] = json!("http://localhost:80/mcp");
            },
            field: "spec.auth.oauth.resource",
            schema: Schema::Cel("no default port"),
        },
        Case {
            name: "resource with a backslash after the host",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["resource"] =
                    json!("https://mcp.example.com\\evil.com/mcp");
            },
            field: "spec.auth.oauth.resource",
            schema: Schema::Keyword,
        },
        Case {
            name: "resource with a backslash in the path",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["resource"] =
                    json!("https://mcp.example.com/initech\\mcp");
            },
            field: "spec.auth.oauth.resource",
            schema: Schema::Keyword,
        },
        Case {
            name: "resource with a non-ASCII path, which clients percent-encode",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["resource"] = json!("https://mcp.example.com/é/mcp");
            },
            field: "spec.auth.oauth.resource",
            schema: Schema::Keyword,
        },
        Case {
            name: "resource with a quote in the query, which clients percent-encode",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["resource"] = json!("https://mcp.example.com/mcp?a='b'");
            },
            field: "spec.auth.oauth.resource",
            schema: Schema::Keyword,
        },
        Case {
            name: "issuer with an upper-case host",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["issuer"] =
                    json!("https://Login.Example.com/realms/globex");
            },
            field: "spec.auth.oauth.issuer",
            schema: Schema::Keyword,
        },
        Case {
            name: "issuer with the default https port",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["issuer"] =
                    json!("https://login.example.com:443/realms/globex");
            },
            field: "spec.auth.oauth.issuer",
            schema: Schema::Cel("no default port"),
        },
        Case {
            name: "required scope with a space",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["requiredScopes"] = json!(["mcp tools"]);
            },
            field: "spec.auth.oauth.requiredScopes[0]",
            schema: Schema::Keyword,
        },
        Case {
            name: "required scope with a backslash",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["requiredScopes"] = json!(["mcp\\tools"]);
            },
            field: "spec.auth.oauth.requiredScopes[0]",
            schema: Schema::Keyword,
        },
        Case {
            name: "duplicate required scope",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["requiredScopes"] = json!(["mcp:tools", "mcp:tools"]);
            },
            field: "spec.auth.oauth.requiredScopes[1]",
            schema: Schema::UniqueList("spec.auth.oauth.requiredScopes"),
        },
        Case {
            name: "empty caller claim",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["callerClaim"] = json!("");
            },
            field: "spec.auth.oauth.callerClaim",
            schema: Schema::Keyword,
        },
        Case {
            name: "tenant claim with a control character",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["tenantClaim"] = json!("ten\u{7}ant");
            },
            field: "spec.auth.oauth.tenantClaim",
            schema: Schema::Keyword,
        },
        Case {
            name: "groups claim of 129 characters",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["groupsClaim"] = json!("g".repeat(129));
            },
            field: "spec.auth.oauth.groupsClaim",
            schema: Schema::Keyword,
        },
        Case {
            name: "clock skew above 300 seconds",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["clockSkewSeconds"] = json!(301);
            },
            field: "spec.auth.oauth.clockSkewSeconds",
            schema: Schema::Keyword,
        },
        Case {
            name: "duplicate algorithm",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["algorithms"] = json!(["ES256", "ES256"]);
            },
            field: "spec.auth.oauth.algorithms[1]",
            schema: Schema::UniqueList("spec.auth.oauth.algorithms"),
        },
        Case {
            name: "issuer network with neither CIDRs nor a namespace selector",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["issuerNetwork"] = json!({"ports": [443]});
            },
            field: "spec.auth.oauth.issuerNetwork",
            schema: Schema::Cel("exactly one of cidrs"),
        },
        Case {
            name: "issuer network with both CIDRs and a namespace selector",
            edit: |t| {
                with_in_cluster_issuer(t);
                t["spec"]["auth"]["oauth"]["issuerNetwork"]["cidrs"] = json!(["203.0.113.10/32"]);
            },
            field: "spec.auth.oauth.issuerNetwork",
            schema: Schema::Cel("exactly one of cidrs"),
        },
        Case {
            name: "issuer pod selector without a namespace selector",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["issuerNetwork"]["podSelector"] =
                    json!({"matchLabels": {"app": "idp"}});
            },
            field: "spec.auth.oauth.issuerNetwork.podSelector",
            schema: Schema::Cel("podSelector needs namespaceSelector"),
        },
        Case {
            name: "issuer CIDR with host bits",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["issuerNetwork"]["cidrs"] = json!(["203.0.113.10/24"]);
            },
            field: "spec.auth.oauth.issuerNetwork.cidrs[0]",
            schema: Schema::Cel("canonical CIDR"),
        },
        Case {
            name: "issuer CIDR of the link-local range",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["issuerNetwork"]["cidrs"] =
                    json!(["203.0.113.10/32", "169.254.0.0/16"]);
            },
            field: "spec.auth.oauth.issuerNetwork.cidrs[1]",
            schema: Schema::Cel("must not lie inside the link-local ranges"),
        },
        Case {
            name: "issuer CIDR of the instance metadata address",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["issuerNetwork"]["cidrs"] =
                    json!(["203.0.113.10/32", "169.254.169.254/32"]);
            },
            field: "spec.auth.oauth.issuerNetwork.cidrs[1]",
            schema: Schema::Cel("must not lie inside the link-local ranges"),
        },
        Case {
            name: "issuer CIDR inside the IPv6 link-local range",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["issuerNetwork"]["cidrs"] =
                    json!(["203.0.113.10/32", "fe80::/64"]);
            },
            field: "spec.auth.oauth.issuerNetwork.cidrs[1]",
            schema: Schema::Cel("must not lie inside the link-local ranges"),
        },
        Case {
            name: "issuer CIDR of the IPv6 instance metadata address",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["issuerNetwork"]["cidrs"] =
                    json!(["203.0.113.10/32", "fd00:ec2::254/128"]);
            },
            field: "spec.auth.oauth.issuerNetwork.cidrs[1]",
            schema: Schema::Cel("must not lie inside the link-local ranges"),
        },
        Case {
            name: "issuer CIDR containing the IPv6 instance metadata address",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["issuerNetwork"]["cidrs"] =
                    json!(["203.0.113.10/32", "fd00::/8"]);
            },
            field: "spec.auth.oauth.issuerNetwork.cidrs[1]",
            schema: Schema::Cel("must not lie inside the link-local ranges"),
        },
        Case {
            name: "issuer CIDR containing the EKS Pod Identity agent",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["issuerNetwork"]["cidrs"] =
                    json!(["203.0.113.10/32", "fd00:ec2::/120"]);
            },
            field: "spec.auth.oauth.issuerNetwork.cidrs[1]",
            schema: Schema::Cel("must not lie inside the link-local ranges"),
        },
        Case {
            name: "issuer CIDR of the unique-local range, holding the IPv6 metadata address",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["issuerNetwork"]["cidrs"] =
                    json!(["203.0.113.10/32", "fc00::/7"]);
            },
            field: "spec.auth.oauth.issuerNetwork.cidrs[1]",
            schema: Schema::Cel("must not lie inside the link-local ranges"),
        },
        Case {
            name: "issuer CIDR containing Alibaba Cloud's metadata address",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["issuerNetwork"]["cidrs"] =
                    json!(["203.0.113.10/32", "100.100.100.0/24"]);
            },
            field: "spec.auth.oauth.issuerNetwork.cidrs[1]",
            schema: Schema::Cel("must not lie inside the link-local ranges"),
        },
        Case {
            name: "duplicate issuer port",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["issuerNetwork"]["ports"] = json!([443, 443]);
            },
            field: "spec.auth.oauth.issuerNetwork.ports[1]",
            schema: Schema::UniqueList("spec.auth.oauth.issuerNetwork.ports"),
        },
        Case {
            name: "issuer namespace selector of only Exists",
            edit: |t| {
                with_in_cluster_issuer(t);
                t["spec"]["auth"]["oauth"]["issuerNetwork"]["namespaceSelector"] =
                    json!({"matchExpressions": [{"key": "idp", "operator": "Exists"}]});
            },
            field: "spec.auth.oauth.issuerNetwork.namespaceSelector",
            schema: Schema::Cel("admit every namespace"),
        },
        Case {
            name: "issuer pod selector In expression without values",
            edit: |t| {
                with_in_cluster_issuer(t);
                t["spec"]["auth"]["oauth"]["issuerNetwork"]["podSelector"] =
                    json!({"matchExpressions": [{"key": "app", "operator": "In"}]});
            },
            field: "spec.auth.oauth.issuerNetwork.podSelector.matchExpressions[0].values",
            schema: Schema::Cel("must not be empty for In and NotIn"),
        },
        Case {
            name: "access subject with two fields",
            edit: |t| {
                with_oauth(t);
                t["spec"]["access"][0]["subjects"][0] =
                    json!({"group": "globex-platform", "scope": "admin"});
            },
            field: "spec.access[0].subjects[0]",
            schema: Schema::Cel("exactly one of apiKeyCaller"),
        },
        Case {
            name: "access subject with no field",
            edit: |t| {
                with_oauth(t);
                t["spec"]["access"][0]["subjects"][0] = json!({});
            },
            field: "spec.access[0].subjects[0]",
            schema: Schema::Cel("exactly one of apiKeyCaller"),
        },
        Case {
            name: "token subject without oauth",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"] = json!({"apiKeys": true});
                t["spec"]["access"] =
                    json!([{"subjects": [{"tokenSubject": "alice"}], "tools": ["*"]}]);
            },
            field: "spec.access[0].subjects[0].tokenSubject",
            schema: Schema::Cel("need spec.auth.oauth"),
        },
        Case {
            name: "group without oauth",
            edit: |t| {
                t["spec"]["access"] = json!([{"subjects": [{"apiKeyCaller": "ci"}, {"group": "ops"}], "tools": ["*"]}]);
            },
            field: "spec.access[0].subjects[1].group",
            schema: Schema::Cel("need spec.auth.oauth"),
        },
        Case {
            name: "API-key caller with API keys off",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["apiKeys"] = json!(false);
            },
            field: "spec.access[1].subjects[1].apiKeyCaller",
            schema: Schema::Cel("need spec.auth.apiKeys"),
        },
        Case {
            name: "neither API keys nor oauth",
            edit: |t| t["spec"]["auth"] = json!({"apiKeys": false}),
            field: "spec.auth",
            schema: Schema::Cel("no caller can authenticate"),
        },
        Case {
            name: "tool pattern with a space",
            edit: |t| {
                with_oauth(t);
                t["spec"]["access"][1]["tools"][0] = json!("github get");
            },
            field: "spec.access[1].tools[0]",
            schema: Schema::Keyword,
        },
        Case {
            name: "tool pattern with a slash",
            edit: |t| {
                with_oauth(t);
                t["spec"]["access"][1]["tools"][0] = json!("github/*");
            },
            field: "spec.access[1].tools[0]",
            schema: Schema::Keyword,
        },
        Case {
            name: "API-key caller with a slash",
            edit: |t| {
                with_oauth(t);
                t["spec"]["access"][1]["subjects"][1]["apiKeyCaller"] = json!("ci/release");
            },
            field: "spec.access[1].subjects[1].apiKeyCaller",
            schema: Schema::Keyword,
        },
        Case {
            name: "group with a control character",
            edit: |t| {
                with_oauth(t);
                t["spec"]["access"][0]["subjects"][0]["group"] = json!("ops\u{85}");
            },
            field: "spec.access[0].subjects[0].group",
            schema: Schema::Keyword,
        },
        Case {
            name: "token subject of 257 characters",
            edit: |t| {
                with_oauth(t);
                t["spec"]["access"][0]["subjects"][1]["tokenSubject"] = json!("s".repeat(257));
            },
            field: "spec.access[0].subjects[1].tokenSubject",
            schema: Schema::Keyword,
        },
        Case {
            name: "scope subject with a quote",
            edit: |t| {
                with_oauth(t);
                t["spec"]["access"][1]["subjects"][0]["scope"] = json!("github\"read");
            },
            field: "spec.access[1].subjects[0].scope",
            schema: Schema::Keyword,
        },
    ]
}

/// One valid Tenant other than the examples.
pub struct ValidCase {
    /// What it shows, in a few words.
    pub name: &'static str,
    /// Turns the full example into the valid Tenant.
    pub edit: fn(&mut Value),
}

/// Valid Tenants near the rules of the invalid ones.
pub fn valid_cases() -> Vec<ValidCase> {
    vec![
        ValidCase {
            name: "IPv4 and IPv6 ranges",
            edit: |t| {
                t["spec"]["network"]["egress"]["cidrs"] =
                    json!(["203.0.113.0/24", "2001:db8::/32", "10.20.0.0/16"])
            },
        },
        ValidCase {
            name: "integer cpu quota",
            edit: |t| t["spec"]["quota"]["cpu"] = json!(3),
        },
        ValidCase {
            name: "fractional memory quota",
            edit: |t| t["spec"]["quota"]["memory"] = json!("1536Mi"),
        },
        ValidCase {
            name: "path segment with a dot",
            edit: |t| t["spec"]["connectors"][1]["allow"][0]["path"] = json!("/v1/invoices.json"),
        },
        ValidCase {
            name: "longest id",
            edit: |t| t["metadata"]["name"] = json!("a".repeat(54)),
        },
        // Found by sending generated Tenants to kube-apiserver, as above.
        ValidCase {
            name: "RuntimeClass name with a 64-character part",
            edit: |t| t["spec"]["server"]["runtimeClassName"] = json!("r".repeat(64)),
        },
        ValidCase {
            name: "path of 512 characters",
            edit: |t| {
                t["spec"]["connectors"][1]["allow"][0]["path"] =
                    json!(format!("/{}", "a".repeat(511)))
            },
        },
        ValidCase {
            name: "path of every character a literal segment takes",
            edit: |t| {
                t["spec"]["connectors"][1]["allow"][0]["path"] =
                    json!("/v1/a:b@c/(x)/'q'/a=b&c/+/a;b/-._~!$,/...")
            },
        },
        ValidCase {
            name: "tool name of 128 characters, 256 bytes",
            edit: |t| t["spec"]["rateLimits"]["perTool"][0]["tool"] = json!("é".repeat(128)),
        },
        ValidCase {
            name: "longest CIDR notation",
            edit: |t| {
                t["spec"]["network"]["egress"]["cidrs"] =
                    json!(["0000:0000:0000:0000:0000:0000:255.255.255.255/128"])
            },
        },
        ValidCase {
            name: "one range written two ways",
            edit: |t| {
                t["spec"]["network"]["egress"]["cidrs"] = json!(["::/0", "0:0:0:0:0:0:0:0/0"])
            },
        },
        ValidCase {
            name: "rate limits at their bounds",
            edit: |t| {
                t["spec"]["rateLimits"]["perCaller"] =
                    json!({"requestsPerMinute": 1_000_000, "burst": 100_000})
            },
        },
        ValidCase {
            name: "oauth with an issuer outside the cluster and access rules",
            edit: with_oauth,
        },
        ValidCase {
            name: "oauth with an in-cluster issuer",
            edit: with_in_cluster_issuer,
        },
        ValidCase {
            name: "http issuer and resource on loopback hosts, for tests",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["issuer"] = json!("http://127.0.0.1:8080/idp");
                t["spec"]["auth"]["oauth"]["resource"] = json!("http://localhost:3000/mcp");
            },
        },
        ValidCase {
            name: "http resource on the IPv6 loopback",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["resource"] = json!("http://[::1]:8080/mcp");
            },
        },
        ValidCase {
            name: "resource with a port and a query",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["resource"] =
                    json!("https://mcp.example.com:8443/globex/mcp?v=1");
            },
        },
        ValidCase {
            name: "resource and issuer as bare origins, with and without the slash",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["issuer"] = json!("https://login.example.com/");
                t["spec"]["auth"]["oauth"]["resource"] = json!("https://mcp.example.com");
            },
        },
        ValidCase {
            name: "upper case in the path, ports that only start like the default ones",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["issuer"] = json!("http://127.0.0.1:8080/Realms/A");
                t["spec"]["auth"]["oauth"]["resource"] =
                    json!("https://mcp.example.com:4430/Initech/MCP");
            },
        },
        ValidCase {
            name: "http loopback resource on port 443, https resource on port 80",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["issuer"] = json!("https://login.example.com:80");
                t["spec"]["auth"]["oauth"]["resource"] = json!("http://localhost:443/mcp");
            },
        },
        ValidCase {
            name: "resource on an IPv6 address ending in 443",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["resource"] = json!("https://[2001:db8::443]/mcp");
            },
        },
        ValidCase {
            name: "issuer CIDRs just outside the link-local and metadata addresses",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["issuerNetwork"]["cidrs"] = json!([
                    "169.255.0.0/16",
                    "169.253.0.0/16",
                    "fec0::/10",
                    "fd00:ec2::300/120",
                    "100.100.101.0/24",
                    "2001:db8::/32"
                ]);
            },
        },
        ValidCase {
            name: "issuer CIDRs wider than the closed ranges, which stay closed",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["issuerNetwork"]["cidrs"] = json!([
                    "0.0.0.0/0",
                    "::/0",
                    "169.0.0.0/8",
                    "fc00::/6",
                    "100.0.0.0/8"
                ]);
            },
        },
        ValidCase {
            name: "tokens only, no API keys",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["apiKeys"] = json!(false);
                t["spec"]["access"][1]["subjects"] = json!([{"scope": "github.read"}]);
            },
        },
        ValidCase {
            name: "API keys only, with access rules for API-key callers",
            edit: |t| {
                t["spec"]["access"] =
                    json!([{"subjects": [{"apiKeyCaller": "ci-release"}], "tools": ["github_*"]}]);
            },
        },
        ValidCase {
            name: "scope token of every character class RFC 6749 allows",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["requiredScopes"] =
                    json!(["read:all/x.y!#$%&'()*+,-[]^_`{|}~", "s".repeat(256)]);
            },
        },
        ValidCase {
            name: "claim names that are URLs, clock skew at its bound",
            edit: |t| {
                with_oauth(t);
                t["spec"]["auth"]["oauth"]["callerClaim"] = json!("https://example.com/claims/uid");
                t["spec"]["auth"]["oauth"]["groupsClaim"] = json!("g".repeat(128));
                t["spec"]["auth"]["oauth"]["clockSkewSeconds"] = json!(300);
            },
        },
        ValidCase {
            name: "tool patterns and subjects of any printable text",
            edit: |t| {
                with_oauth(t);
                t["spec"]["access"][0]["tools"] =
                    json!(["*", "github_*", "a.b-c", "t".repeat(128)]);
                t["spec"]["access"][0]["subjects"] =
                    json!([{"group": "Ops Team (EU) é"}, {"tokenSubject": "s".repeat(256)}]);
            },
        },
    ]
}

/// Quantities both halves accept as a cpu or memory quota.
pub const POSITIVE_QUANTITIES: &[&str] = &[
    "2", "500m", "4Gi", "0.5", "1.5Gi", "1e3", "2E6", "1k", "100M", "+1", "+1500m",
];

/// Strings both halves refuse as a cpu or memory quota.
pub const NOT_POSITIVE_QUANTITIES: &[&str] = &[
    "-1", "0", "0m", "0.0", "abc", "1Xi", "Gi", "", "1e", "1.2.3", "+-1",
];
