//! The NetworkPolicy matrix, computed by an independent evaluator.
//!
//! NetworkPolicy is enforced by a CNI, and none can run where this suite
//! runs, so the connectivity that Bulkhead's policies allow is computed by
//! network-config-analyzer (IBM's `nca`, pinned in `netpol/requirements.txt`,
//! installed by `netpol/install.sh`) — code that nobody on this project
//! wrote. It is given two tenants (the minimal and the full example), the
//! namespaces around them (gateways, a namespace with no rights, kube-dns
//! and another pod in kube-system) and pods standing in for the servers,
//! and the test asserts every pair of the matrix it returns: each expected
//! path with its exact protocols and ports, and every other pair absent.
//! Egress to addresses (the API server, cloud metadata, the cluster's own
//! ranges, public upstreams, IPv6) is compared range by range.
//!
//! `stored_policies_...` creates both Tenants on the real API server; the
//! operator reconciles them, the real Deployment and ReplicaSet controllers
//! make the server pods, and the evaluator reads the Namespaces,
//! NetworkPolicies and Pods as the API server returns them.
//! `rendered_policies_...` evaluates what `bulkhead-operator render` builds
//! under kind's settings (the API server at 172.18.0.2, inside a closed
//! private range), and the `..._is_caught` tests break one policy to show
//! that the check fails when a hole opens.
//!
//! What the evaluator does not model, so only a real CNI can prove: pods
//! have no addresses in it, so an `ipBlock` never matches a pod (real CNIs
//! differ; the closed ranges cover kind's pod and Service ranges either
//! way); Services and their address translation (the API server rule names
//! endpoint addresses, which the test takes from the settings); host-network
//! pods and node-local traffic such as kubelet probes; and enforcement itself.
//! It also refuses `policyTypes: [Egress, Ingress]` (only `[Ingress, Egress]`
//! in that order), which the operator never writes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bulkhead_envtest::ControlPlane;
use bulkhead_envtest::netpol::{
    Conn, Connectivity, Family, IpRange, Protocol, address_of, canonical, describe, evaluate,
    pause_pod, read_back_world,
};
use bulkhead_envtest::tenants::{example, wait_default_service_account};
use bulkhead_operator::desired::desired_objects;
use bulkhead_operator::render::parse_tenant;
use bulkhead_operator::settings::OperatorSettings;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// The world around the two tenants.

/// The namespace whose pods are the MCP gateway, named as both examples'
/// selectors expect (`kubernetes.io/metadata.name: mcp-gateway`).
const GATEWAY_NAMESPACE: &str = "mcp-gateway";
/// Selected by the full example's `kubernetes.io/metadata.name In (globex-agents)`.
const AGENTS_NAMESPACE: &str = "globex-agents";
/// A namespace with every label of the gateway's but its name (as anyone
/// allowed to create or label namespaces may make one): the examples select
/// by name, so no tenant admits it.
const LOOKALIKE_NAMESPACE: &str = "gateway-lookalike";
/// A namespace without rights and without any policy of its own: no tenant
/// may be reached from it, and everything may reach it (the control that
/// shows the evaluator does not simply deny everything).
const NO_RIGHTS_NAMESPACE: &str = "no-rights";
const KUBE_SYSTEM: &str = "kube-system";

/// MCP port of every tenant server (`bulkhead_crds::server_config::MCP_PORT`).
const MCP_PORT: u16 = 8080;
/// Ranges closed to tenant upstream traffic unless listed exactly, as the
/// README documents them for `spec.network.egress.cidrs` (IPv4 part).
const CLOSED_IPV4_RANGES: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
];

/// What one example Tenant must allow, written from the example file and
/// the README, not from the operator's code.
struct TenantExpectation {
    /// The file in `manifests/examples`.
    example: &'static str,
    /// Namespaces whose pods may call the server (TCP, MCP port only).
    callers: &'static [&'static str],
    /// Upstream ranges (before the closed ranges are taken out) and their TCP ports.
    upstream: &'static [&'static str],
    upstream_ports: &'static [u16],
}

const TENANTS: &[TenantExpectation] = &[
    TenantExpectation {
        example: "minimal.yaml",
        // `matchLabels: {kubernetes.io/metadata.name: mcp-gateway}`: by
        // name, so not the lookalike namespace.
        callers: &[GATEWAY_NAMESPACE],
        upstream: &[],
        upstream_ports: &[],
    },
    TenantExpectation {
        example: "full.yaml",
        callers: &[GATEWAY_NAMESPACE, AGENTS_NAMESPACE],
        upstream: &["0.0.0.0/0"],
        upstream_ports: &[443],
    },
];

/// A pod of the world: namespace, name and whether it belongs to a tenant.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct WorldPod {
    namespace: String,
    name: String,
    /// The tenant id, for the servers.
    tenant: Option<String>,
    /// Matches the tenants' DNS egress rule (kube-system, `k8s-app=kube-dns`).
    kube_dns: bool,
}

impl WorldPod {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// What the expectation depends on: the cluster facts the operator was
/// given, and which example each tenant id was made from.
struct Scenario {
    api_server_cidrs: Vec<String>,
    api_server_port: u16,
    cluster_cidrs: Vec<String>,
    tenants: BTreeMap<String, &'static TenantExpectation>,
}

impl Scenario {
    /// `ids` names the tenant made from each of [`TENANTS`], in order.
    fn new(settings: &OperatorSettings, ids: [&str; 2]) -> Result<Self> {
        Ok(Self {
            api_server_cidrs: settings.api_server_cidrs.clone(),
            api_server_port: u16::try_from(settings.api_server_port)?,
            cluster_cidrs: settings.cluster_cidrs.clone(),
            tenants: ids.iter().map(|id| (*id).to_owned()).zip(TENANTS).collect(),
        })
    }

    fn tenant(&self, id: &str) -> Result<&'static TenantExpectation> {
        self.tenants
            .get(id)
            .copied()
            .ok_or_else(|| anyhow!("a server pod of unknown tenant {id:?}"))
    }
}

fn namespace(name: &str, labels: &[(&str, &str)]) -> Value {
    let mut all: BTreeMap<&str, &str> = labels.iter().copied().collect();
    // Set by the API server on every namespace since Kubernetes 1.22.
    all.insert("kubernetes.io/metadata.name", name);
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": all}})
}

/// Namespaces and pods around the tenants: the same in both variants.
fn surroundings() -> Vec<Value> {
    vec![
        namespace(KUBE_SYSTEM, &[]),
        pause_pod(KUBE_SYSTEM, "coredns-0", &json!({"k8s-app": "kube-dns"})),
        pause_pod(
            KUBE_SYSTEM,
            "metrics-server-0",
            &json!({"k8s-app": "metrics-server"}),
        ),
        namespace(GATEWAY_NAMESPACE, &[("bulkhead.dev/gateway", "true")]),
        pause_pod(
            GATEWAY_NAMESPACE,
            "gateway-0",
            &json!({"app.kubernetes.io/name": "mcp-gateway"}),
        ),
        namespace(AGENTS_NAMESPACE, &[]),
        pause_pod(
            AGENTS_NAMESPACE,
            "agent-0",
            &json!({"app.kubernetes.io/name": "agent"}),
        ),
        namespace(LOOKALIKE_NAMESPACE, &[("bulkhead.dev/gateway", "true")]),
        pause_pod(
            LOOKALIKE_NAMESPACE,
            "lookalike-0",
            &json!({"app.kubernetes.io/name": "lookalike"}),
        ),
        namespace(NO_RIGHTS_NAMESPACE, &[]),
        pause_pod(
            NO_RIGHTS_NAMESPACE,
            "client-0",
            &json!({"app.kubernetes.io/name": "client"}),
        ),
    ]
}

/// Pods standing in for a tenant's server: one per replica, labelled as the
/// Deployment's pod template, in the Deployment's namespace.
fn server_pods(deployment: &Value) -> Result<Vec<Value>> {
    let namespace = deployment["metadata"]["namespace"]
        .as_str()
        .context("the Deployment has no namespace")?;
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    ensure!(
        labels.is_object(),
        "the Deployment's pod template has no labels"
    );
    let replicas = deployment["spec"]["replicas"].as_u64().unwrap_or(1);
    Ok((0..replicas)
        .map(|i| pause_pod(namespace, &format!("mcp-server-{i}"), labels))
        .collect())
}

/// The pods of a set of objects, classified for the expectation.
fn world_pods(objects: &[Value]) -> Result<Vec<WorldPod>> {
    let mut pods = Vec::new();
    for object in objects.iter().filter(|o| o["kind"] == "Pod") {
        let metadata = &object["metadata"];
        let namespace = metadata["namespace"]
            .as_str()
            .context("a Pod without namespace")?;
        let labels = &metadata["labels"];
        pods.push(WorldPod {
            namespace: namespace.to_owned(),
            name: metadata["name"]
                .as_str()
                .context("a Pod without name")?
                .to_owned(),
            tenant: labels["bulkhead.dev/tenant"].as_str().map(str::to_owned),
            kube_dns: namespace == KUBE_SYSTEM && labels["k8s-app"] == "kube-dns",
        });
    }
    pods.sort();
    Ok(pods)
}

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Namespaces, NetworkPolicies and server pods the operator builds for the
/// two example Tenants, built by the same code as `bulkhead-operator render`.
fn rendered_tenants(settings: &OperatorSettings) -> Result<Vec<Value>> {
    let mut objects = Vec::new();
    for (expectation, id) in TENANTS.iter().zip(RENDERED_IDS) {
        let path = repository_root()
            .join("manifests/examples")
            .join(expectation.example);
        let yaml = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
        let tenant = parse_tenant(&yaml)?;
        ensure!(
            tenant.metadata.name.as_deref() == Some(id),
            "{} names another tenant",
            expectation.example
        );
        let built = desired_objects(&tenant, settings)?;
        let mut namespace = serde_json::to_value(&built.namespace)?;
        namespace["metadata"]["labels"]["kubernetes.io/metadata.name"] =
            namespace["metadata"]["name"].clone();
        objects.push(namespace);
        objects.push(serde_json::to_value(&built.network_policy)?);
        objects.extend(server_pods(&serde_json::to_value(&built.deployment)?)?);
    }
    Ok(objects)
}

// ---------------------------------------------------------------------------
// What must hold.

/// The connection one pod must have to another, or `None` for no path.
fn expected_between(
    scenario: &Scenario,
    source: &WorldPod,
    destination: &WorldPod,
) -> Result<Option<Conn>> {
    Ok(match (&source.tenant, &destination.tenant) {
        // A tenant's server reaches only kube-dns among pods: not the other
        // tenant, not its own replicas, not the rest of kube-system.
        (Some(_), _) => destination
            .kube_dns
            .then(|| Conn::ports(&[Protocol::Tcp, Protocol::Udp], &[53])),
        // Only the namespaces the tenant admits, only on the MCP port.
        (None, Some(tenant)) => scenario
            .tenant(tenant)?
            .callers
            .contains(&source.namespace.as_str())
            .then(|| Conn::tcp(MCP_PORT)),
        // No policy applies between the other pods: everything is allowed.
        (None, None) => Some(Conn::All),
    })
}

fn every_address() -> [(IpRange, Conn); 2] {
    [
        (
            IpRange {
                family: Family::V4,
                first: 0,
                last: Family::V4.max(),
            },
            Conn::All,
        ),
        (
            IpRange {
                family: Family::V6,
                first: 0,
                last: Family::V6.max(),
            },
            Conn::All,
        ),
    ]
}

/// The address ranges a pod must reach, and how.
fn expected_egress(pod: &WorldPod, facts: &Scenario) -> Result<Vec<(IpRange, Conn)>> {
    let Some(tenant) = &pod.tenant else {
        return Ok(canonical(&every_address()));
    };
    let expectation = facts.tenant(tenant)?;
    let mut pieces = Vec::new();
    for cidr in &facts.api_server_cidrs {
        pieces.push((IpRange::cidr(cidr)?, Conn::tcp(facts.api_server_port)));
    }
    let closed = CLOSED_IPV4_RANGES
        .iter()
        .copied()
        .chain(facts.cluster_cidrs.iter().map(String::as_str))
        .map(IpRange::cidr)
        .collect::<Result<Vec<_>>>()?;
    for cidr in expectation.upstream {
        for range in IpRange::cidr(cidr)?.minus(&closed) {
            pieces.push((
                range,
                Conn::ports(&[Protocol::Tcp], expectation.upstream_ports),
            ));
        }
    }
    Ok(canonical(&pieces))
}

/// The address ranges that must reach a pod: none for a tenant's server.
fn expected_ingress(pod: &WorldPod) -> Vec<(IpRange, Conn)> {
    if pod.tenant.is_some() {
        Vec::new()
    } else {
        canonical(&every_address())
    }
}

/// A named address, protocol and port, probed for the printed matrix and
/// asserted one by one (the range comparison already covers them; these
/// say the rules in words).
struct Probe {
    label: String,
    address: IpAddr,
    protocol: Protocol,
    port: u16,
    /// Whether a tenant's server may reach it; every other pod may.
    tenant_allowed: fn(&TenantExpectation) -> bool,
}

fn probes(facts: &Scenario) -> Result<Vec<Probe>> {
    let probe = |label: &str, address: IpAddr, protocol, port, tenant_allowed| Probe {
        label: label.to_owned(),
        address,
        protocol,
        port,
        tenant_allowed,
    };
    let never: fn(&TenantExpectation) -> bool = |_| false;
    let api = IpRange::cidr(
        facts
            .api_server_cidrs
            .first()
            .context("no API server range")?,
    )?;
    let api_port = facts.api_server_port;
    let next_after_api = api
        .last
        .checked_add(1)
        .filter(|next| *next <= api.family.max())
        .context("the API server range ends at the last address")?;
    let mut all = vec![
        probe(
            "apiserver",
            address_of(api.family, api.first),
            Protocol::Tcp,
            api_port,
            |_| true,
        ),
        probe(
            "apiserver:443",
            address_of(api.family, api.first),
            Protocol::Tcp,
            443,
            never,
        ),
        probe(
            "apiserver+1",
            address_of(api.family, next_after_api),
            Protocol::Tcp,
            api_port,
            never,
        ),
        probe(
            "metadata:80",
            "169.254.169.254".parse()?,
            Protocol::Tcp,
            80,
            never,
        ),
        probe(
            "metadata:443",
            "169.254.169.254".parse()?,
            Protocol::Tcp,
            443,
            never,
        ),
    ];
    for (i, cidr) in facts.cluster_cidrs.iter().enumerate() {
        let range = IpRange::cidr(cidr)?;
        let address = address_of(range.family, range.first + 1);
        all.push(probe(
            &format!("cluster{i}:443"),
            address,
            Protocol::Tcp,
            443,
            never,
        ));
    }
    let public: IpAddr = "8.8.8.8".parse()?;
    all.extend([
        probe("public:443", public, Protocol::Tcp, 443, |t| {
            t.upstream_ports.contains(&443)
        }),
        probe("public:80", public, Protocol::Tcp, 80, never),
        probe("public:53/udp", public, Protocol::Udp, 53, never),
        probe(
            "192.168.1.1:443",
            "192.168.1.1".parse()?,
            Protocol::Tcp,
            443,
            never,
        ),
        probe(
            "v6public:443",
            "2001:4860:4860::8888".parse()?,
            Protocol::Tcp,
            443,
            never,
        ),
    ]);
    Ok(all)
}

fn expected_probe(scenario: &Scenario, pod: &WorldPod, probe: &Probe) -> Result<bool> {
    match &pod.tenant {
        None => Ok(true),
        Some(tenant) => Ok((probe.tenant_allowed)(scenario.tenant(tenant)?)),
    }
}

/// The matrix as a table: sources down, destinations (pods, then probed
/// addresses) across.
fn matrix_table(pods: &[WorldPod], probes: &[Probe], map: &Connectivity) -> String {
    let mut out = String::from("endpoints:\n");
    for (i, pod) in pods.iter().enumerate() {
        out.push_str(&format!("  P{} = {}\n", i + 1, pod.key()));
    }
    let width = 11;
    out.push_str(&format!("{:<6}", "from"));
    for i in 0..pods.len() {
        out.push_str(&format!("{:<width$}", format!("P{}", i + 1)));
    }
    for probe in probes {
        out.push_str(&format!("{} ", probe.label));
    }
    out.push('\n');
    for (i, source) in pods.iter().enumerate() {
        out.push_str(&format!("{:<6}", format!("P{}", i + 1)));
        for destination in pods {
            let cell = if source == destination {
                "(self)".to_owned()
            } else {
                map.between(&source.key(), &destination.key())
                    .map_or("-".to_owned(), |c| c.to_string())
            };
            out.push_str(&format!("{cell:<width$}"));
        }
        for probe in probes {
            let allowed =
                map.allows_to_address(&source.key(), probe.address, probe.protocol, probe.port);
            out.push_str(&format!(
                "{:<w$} ",
                if allowed { "yes" } else { "no" },
                w = probe.label.len()
            ));
        }
        out.push('\n');
    }
    out
}

/// Asserts the whole matrix; returns every mismatch rather than the first.
fn check_matrix(objects: &[Value], facts: &Scenario) -> Result<()> {
    let pods = world_pods(objects)?;
    let map = evaluate(objects)?;
    let probes = probes(facts)?;
    println!("{}", matrix_table(&pods, &probes, &map));

    let mut failures = Vec::new();
    let known: BTreeSet<String> = pods.iter().map(WorldPod::key).collect();
    for ((source, destination), conn) in &map.between_pods {
        if !known.contains(source) || !known.contains(destination) {
            failures.push(format!(
                "the evaluator reports an unknown pod: {source} -> {destination}: {conn}"
            ));
        }
    }
    for pod in map.egress.keys().chain(map.ingress.keys()) {
        if !known.contains(pod) {
            failures.push(format!("the evaluator reports an unknown pod: {pod}"));
        }
    }
    for source in &pods {
        for destination in pods.iter().filter(|d| *d != source) {
            let expected = expected_between(facts, source, destination)?;
            let actual = map.between(&source.key(), &destination.key());
            if expected.as_ref() != actual {
                failures.push(format!(
                    "{} -> {}: expected {}, the evaluator says {}",
                    source.key(),
                    destination.key(),
                    expected.map_or("no path".to_owned(), |c| c.to_string()),
                    actual.map_or("no path".to_owned(), ToString::to_string),
                ));
            }
        }
        let expected = expected_egress(source, facts)?;
        let actual = map.egress_of(&source.key());
        if expected != actual {
            failures.push(format!(
                "egress of {} to addresses:\nexpected\n{}\nthe evaluator says\n{}",
                source.key(),
                describe(&expected),
                describe(actual)
            ));
        }
        for probe in &probes {
            let expected = expected_probe(facts, source, probe)?;
            let actual =
                map.allows_to_address(&source.key(), probe.address, probe.protocol, probe.port);
            if expected != actual {
                failures.push(format!(
                    "{} -> {} ({} {:?} {}): expected {expected}, the evaluator says {actual}",
                    source.key(),
                    probe.label,
                    probe.address,
                    probe.protocol,
                    probe.port
                ));
            }
        }
        let expected = expected_ingress(source);
        let actual = map.ingress_of(&source.key());
        if expected != actual {
            failures.push(format!(
                "ingress of {} from addresses:\nexpected\n{}\nthe evaluator says\n{}",
                source.key(),
                describe(&expected),
                describe(actual)
            ));
        }
    }
    ensure!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    println!(
        "checked {} pod pairs, {} pods' egress to and ingress from addresses, {} probes",
        pods.len() * (pods.len() - 1),
        pods.len(),
        pods.len() * probes.len()
    );
    Ok(())
}

/// The example Tenants' own names.
const RENDERED_IDS: [&str; 2] = ["acme", "globex"];

/// Cluster settings for the rendered variant: kind's ranges, the API
/// server as one address (so its neighbours are probed too).
fn rendered_settings() -> OperatorSettings {
    OperatorSettings {
        api_server_cidrs: vec!["172.18.0.2/32".to_owned()],
        ..OperatorSettings::default()
    }
}

#[test]
#[ignore = "installs the NetworkPolicy evaluator from PyPI: tests/envtest/run.sh"]
fn rendered_policies_allow_exactly_the_expected_matrix() -> Result<()> {
    let settings = rendered_settings();
    let mut objects = surroundings();
    objects.extend(rendered_tenants(&settings)?);
    check_matrix(&objects, &Scenario::new(&settings, RENDERED_IDS)?)
}

/// The rendered objects with one NetworkPolicy edited.
fn rendered_with_edited_policy(tenant: &str, edit: impl Fn(&mut Value)) -> Result<Vec<Value>> {
    let settings = rendered_settings();
    let mut objects = surroundings();
    objects.extend(rendered_tenants(&settings)?);
    let namespace = format!("{}{tenant}", settings.namespace_prefix);
    let policy = objects
        .iter_mut()
        .find(|o| o["kind"] == "NetworkPolicy" && o["metadata"]["namespace"] == namespace.as_str())
        .context("no NetworkPolicy for the tenant")?;
    edit(policy);
    Ok(objects)
}

fn mismatches(objects: &[Value]) -> Result<String> {
    let settings = rendered_settings();
    match check_matrix(objects, &Scenario::new(&settings, RENDERED_IDS)?) {
        Ok(()) => bail!("the matrix check accepted a policy it must refuse"),
        Err(e) => Ok(format!("{e:#}")),
    }
}

#[test]
#[ignore = "installs the NetworkPolicy evaluator from PyPI: tests/envtest/run.sh"]
fn an_upstream_rule_without_the_closed_ranges_is_caught() -> Result<()> {
    // As if the operator forgot the `except` list of `0.0.0.0/0`.
    let objects = rendered_with_edited_policy("globex", |policy| {
        if let Some(rules) = policy["spec"]["egress"].as_array_mut() {
            for rule in rules {
                if let Some(peers) = rule["to"].as_array_mut() {
                    for peer in peers {
                        if let Some(block) = peer["ipBlock"].as_object_mut() {
                            block.remove("except");
                        }
                    }
                }
            }
        }
    })?;
    let report = mismatches(&objects)?;
    for line in [
        "bulkhead-globex/mcp-server-0 -> metadata:443 (169.254.169.254 Tcp 443): expected false, the evaluator says true",
        "bulkhead-globex/mcp-server-1 -> cluster1:443 (10.96.0.1 Tcp 443): expected false, the evaluator says true",
        "bulkhead-globex/mcp-server-0 -> 192.168.1.1:443",
        "egress of bulkhead-globex/mcp-server-0 to addresses:",
    ] {
        ensure!(report.contains(line), "expected {line:?} in:\n{report}");
    }
    ensure!(
        !report.contains("bulkhead-acme"),
        "acme was not changed:\n{report}"
    );
    Ok(())
}

#[test]
#[ignore = "installs the NetworkPolicy evaluator from PyPI: tests/envtest/run.sh"]
fn an_ingress_rule_admitting_every_namespace_is_caught() -> Result<()> {
    // As if an empty selector had reached the policy.
    let objects = rendered_with_edited_policy("acme", |policy| {
        policy["spec"]["ingress"][0]["from"] = json!([{"namespaceSelector": {}}]);
    })?;
    let report = mismatches(&objects)?;
    for line in [
        "no-rights/client-0 -> bulkhead-acme/mcp-server-0: expected no path, the evaluator says TCP 8080",
        "gateway-lookalike/lookalike-0 -> bulkhead-acme/mcp-server-0: expected no path, the evaluator says TCP 8080",
        "globex-agents/agent-0 -> bulkhead-acme/mcp-server-0: expected no path, the evaluator says TCP 8080",
        "kube-system/metrics-server-0 -> bulkhead-acme/mcp-server-0: expected no path, the evaluator says TCP 8080",
    ] {
        ensure!(report.contains(line), "expected {line:?} in:\n{report}");
    }
    // The other tenant's egress policy still stops it: both ends must allow.
    ensure!(
        !report.contains("bulkhead-globex/mcp-server-0 -> bulkhead-acme"),
        "globex's egress still denies acme:\n{report}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// The same matrix over what the real API server stores.

/// Tenant ids of the stored variant, made from [`TENANTS`] in order.
const STORED_IDS: [&str; 2] = ["netpol-acme", "netpol-globex"];

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn stored_policies_allow_exactly_the_expected_matrix() -> Result<()> {
    let cp = ControlPlane::shared();
    cp.install_bulkhead();
    let admin = cp.admin_client().await?;
    let settings = cp.operator_settings();

    // The full example runs its server under RuntimeClass `gvisor`; without
    // the object the RuntimeClass admission plugin refuses its pods.
    cp.kubectl_apply(&json!({
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {"name": "gvisor"},
        "handler": "runsc",
    }))?;
    let surroundings = surroundings();
    let mut namespaces: BTreeSet<String> = BTreeSet::new();
    for object in surroundings.iter().filter(|o| o["kind"] == "Namespace") {
        cp.kubectl_apply(object)?;
        namespaces.extend(object["metadata"]["name"].as_str().map(str::to_owned));
    }
    // The ServiceAccount admission plugin refuses pods until the namespace's
    // `default` ServiceAccount exists.
    for namespace in &namespaces {
        wait_default_service_account(&admin, namespace).await?;
    }
    for object in surroundings.iter().filter(|o| o["kind"] == "Pod") {
        cp.kubectl_apply(object)?;
    }

    // The servers' pods are made by the real Deployment and ReplicaSet
    // controllers from the Deployment the operator stored (they stay
    // Pending: nothing schedules or runs them, and policy needs neither).
    for (expectation, id) in TENANTS.iter().zip(STORED_IDS) {
        cp.kubectl_apply(&example(expectation.example, id)?)?;
    }
    for id in STORED_IDS {
        let tenant = cp.wait_reconciled(&admin, id).await?;
        let namespace = cp.tenant_namespace(id);
        namespaces.insert(namespace.clone());
        let replicas = usize::try_from(tenant.spec.server.replicas.unwrap_or(1))?;
        let made = cp.wait_server_pods(&admin, id, replicas).await;
        if let Err(error) = made {
            let state = cp.kubectl_ok(&[
                "get",
                "deployments,replicasets,pods,events",
                "-n",
                &namespace,
                "-o",
                "wide",
            ])?;
            let deployments = cp.kubectl_ok(&[
                "get",
                "deployments",
                "-n",
                &namespace,
                "-o",
                "jsonpath={.items[*].status}",
            ])?;
            let status = cp.kubectl_ok(&["get", "tenant", id, "-o", "jsonpath={.status}"])?;
            bail!(
                "{error:#}\nin {namespace}:\n{state}\nDeployment status: {deployments}\nTenant status: {status}"
            );
        }
    }

    let objects = read_back_world(&admin, &namespaces).await?;
    let policies = objects
        .iter()
        .filter(|o| o["kind"] == "NetworkPolicy")
        .count();
    ensure!(
        policies == 2,
        "expected the two tenants' NetworkPolicies, read back {policies}"
    );
    check_matrix(&objects, &Scenario::new(&settings, STORED_IDS)?)
}
