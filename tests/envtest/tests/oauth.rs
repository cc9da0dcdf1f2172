//! The OAuth Tenant on the real control plane: the README's example
//! (`manifests/examples/oauth.yaml`) is accepted by kube-apiserver and
//! reconciled; its stored NetworkPolicy, judged by the independent evaluator
//! (network-config-analyzer, `bulkhead_envtest::netpol`), lets the server
//! reach the issuer exactly where `spec.auth.oauth.issuerNetwork` says —
//! public CIDRs, a private range listed exactly, or in-cluster pods by
//! namespace and pod selector — and nothing wider; its ConfigMap carries the
//! OAuth settings and the resource's host, and loads with the server's own
//! loader.
//!
//! With the issuer out of reach the server pods never become ready. No
//! kubelet runs here (and kwok would mark pods Ready without running them),
//! so the two halves are shown apart: the operator's report on a Deployment
//! that is not available (`Ready=False`, the README's `ServerAvailable`
//! message naming the issuer), and the real `bulkhead-server` started on
//! loopback with the ConfigMap's configuration as is and a token of the
//! pod's ServiceAccount, its Secrets in place, answering `/readyz` with 503
//! and the unreachable issuer as its only reason.
//!
//! Invalid `spec.auth` and `spec.access` are refused by the API server
//! naming the field, and the same Tenants stored under a laxer CRD (as
//! `stalled.rs` does) are reported `InvalidSpec`. The CRD swap takes the
//! write side of [`CRD_SWAP`], so the other tests, which hold the read side,
//! never apply a Tenant under the lax CRD.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bulkhead_crds::Tenant;
use bulkhead_crds::server_config::{
    API_KEYS_SECRET_NAME, CONFIG_FILE_KEY, CONFIG_MAP_NAME, CREDENTIALS_SECRET_NAME, ServerConfig,
};
use bulkhead_crds::tenant::SigningAlgorithm;
use bulkhead_envtest::ControlPlane;
use bulkhead_envtest::binaries::repository_root;
use bulkhead_envtest::netpol::{Conn, IpRange, Protocol, evaluate, pause_pod, read_back_world};
use bulkhead_envtest::tenants::{
    RECONCILE_TIMEOUT, accepted, example, example_json, wait_default_service_account, wait_for,
};
use bulkhead_operator::desired::deployment::DEPLOYMENT_NAME;
use bulkhead_operator::desired::network_policy::NETWORK_POLICY_NAME;
use bulkhead_server::api_keys::{generate_api_key, hash_api_key};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::sync::RwLock;

/// How long the server may take to start and to give up on the issuer once.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Held for writing while the CRD is swapped for a laxer one.
static CRD_SWAP: RwLock<()> = RwLock::const_new(());

/// The issuer of the example, as the README names it.
const ISSUER: &str = "https://login.example.com/realms/initech";
/// The namespace and pod labels of an in-cluster issuer, as the README's
/// `namespaceSelector` example names them.
const ISSUER_NAMESPACE: &str = "keycloak";
const ISSUER_LABEL: (&str, &str) = ("app.kubernetes.io/name", "keycloak");

/// The Tenant in the README's "Connecting a tenant to its identity
/// provider" section, parsed.
fn readme_tenant() -> Result<Value> {
    let readme = std::fs::read_to_string(repository_root().join("README.md"))?;
    let (_, after) = readme
        .split_once("**2. The Tenant** (`manifests/examples/oauth.yaml`):")
        .context("README has no OAuth example Tenant")?;
    let block = after
        .split_once("```yaml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(yaml, _)| yaml)
        .context("README's OAuth example has no yaml block")?;
    yaml_serde::from_str(block).context("parse the README's OAuth example")
}

/// The `ServerAvailable` message the README shows for an unreachable
/// issuer (the line after its `kubectl get tenant ... message}'`).
fn readme_unavailable_message() -> Result<String> {
    let readme = std::fs::read_to_string(repository_root().join("README.md"))?;
    let mut lines = readme.lines();
    lines
        .find(|line| line.contains("kubectl get tenant initech -o jsonpath='{.status.conditions[?(@.type==\"ServerAvailable\")].message}'"))
        .context("README shows no ServerAvailable message")?;
    lines
        .next()
        .map(str::to_owned)
        .context("README's ServerAvailable command has no output")
}

/// The example with its issuer moved: `issuer_network` replaces
/// `spec.auth.oauth.issuerNetwork`.
fn example_with_issuer_at(id: &str, issuer_network: Value) -> Result<Value> {
    let mut tenant = serde_json::to_value(example("oauth.yaml", id)?)?;
    tenant["spec"]["auth"]["oauth"]["issuerNetwork"] = issuer_network;
    Ok(tenant)
}

/// The one pod the Deployment controller made for tenant `id`, as
/// `namespace/name`.
async fn server_pod(cp: &ControlPlane, admin: &Client, id: &str) -> Result<String> {
    let pods = cp.wait_server_pods(admin, id, 1).await?;
    let name = pods
        .first()
        .and_then(|p| p.metadata.name.as_deref())
        .context("unnamed server pod")?;
    Ok(format!("{}/{name}", cp.tenant_namespace(id)))
}

/// The `spec` of the NetworkPolicy stored in `namespace`, as JSON.
async fn stored_policy(admin: &Client, namespace: &str) -> Result<Value> {
    let policies: Api<NetworkPolicy> = Api::namespaced(admin.clone(), namespace);
    Ok(serde_json::to_value(
        policies.get(NETWORK_POLICY_NAME).await?.spec,
    )?)
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn the_readme_example_is_reconciled_and_reaches_its_issuer_exactly() -> Result<()> {
    let _crd = CRD_SWAP.read().await;
    let cp = ControlPlane::shared();
    cp.install_bulkhead();
    let admin = cp.admin_client().await?;

    // The README shows the file as it is.
    let file: Value = yaml_serde::from_str(&std::fs::read_to_string(
        repository_root().join("manifests/examples/oauth.yaml"),
    )?)?;
    assert_eq!(
        readme_tenant()?,
        file,
        "the README's OAuth Tenant differs from manifests/examples/oauth.yaml"
    );

    // The world around the issuer: the issuer's pod, another pod of its
    // namespace, and a pod with the issuer's labels in another namespace;
    // and kube-dns, which every server may reach.
    let keycloak = |name: &str| json!({ISSUER_LABEL.0: ISSUER_LABEL.1, "pod": name});
    let world = [
        pause_pod("kube-system", "coredns-0", &json!({"k8s-app": "kube-dns"})),
        pause_pod(ISSUER_NAMESPACE, "keycloak-0", &keycloak("keycloak-0")),
        pause_pod(ISSUER_NAMESPACE, "admin-0", &json!({"app": "admin"})),
        pause_pod("issuer-lookalike", "keycloak-0", &keycloak("lookalike")),
    ];
    let mut namespaces = BTreeSet::new();
    for name in ["kube-system", ISSUER_NAMESPACE, "issuer-lookalike"] {
        cp.kubectl_apply(
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
        )?;
        wait_default_service_account(&admin, name).await?;
        namespaces.insert(name.to_owned());
    }
    for object in &world {
        cp.kubectl_apply(object)?;
    }

    // The example as written (issuer at 203.0.113.10/32:443), an issuer in
    // a private range listed exactly (on 8443), and one inside the cluster.
    let public = "oauth-public";
    let private = "oauth-private";
    let in_cluster = "oauth-incluster";
    cp.kubectl_apply(&example("oauth.yaml", public)?)?;
    cp.kubectl_apply(&example_with_issuer_at(
        private,
        json!({"cidrs": ["10.20.0.0/16"], "ports": [8443]}),
    )?)?;
    cp.kubectl_apply(&example_with_issuer_at(
        in_cluster,
        json!({
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ISSUER_NAMESPACE}},
            "podSelector": {"matchLabels": {ISSUER_LABEL.0: ISSUER_LABEL.1}},
            "ports": [8080],
        }),
    )?)?;
    let mut servers = Vec::new();
    for id in [public, private, in_cluster] {
        let tenant = cp.wait_reconciled(&admin, id).await?;
        let conditions = tenant.status.map(|s| s.conditions).unwrap_or_default();
        let stalled = conditions.iter().find(|c| c.type_ == "Stalled");
        ensure!(
            stalled.is_none_or(|c| c.status == "False"),
            "{id}: {conditions:?}"
        );
        namespaces.insert(cp.tenant_namespace(id));
        servers.push(server_pod(cp, &admin, id).await?);
    }

    // The issuer rule as stored: the README's rule, exactly.
    let spec = stored_policy(&admin, &cp.tenant_namespace(public)).await?;
    let egress = spec["egress"].as_array().context("no egress rules")?;
    let issuer_rule = json!({
        "to": [{"ipBlock": {"cidr": "203.0.113.10/32"}}],
        "ports": [{"protocol": "TCP", "port": 443}],
    });
    ensure!(
        egress.contains(&issuer_rule),
        "no {issuer_rule} in {egress:#?}"
    );

    // What the policies allow, by the evaluator, over the objects read back.
    let objects = read_back_world(&admin, &namespaces).await?;
    let map = evaluate(&objects)?;
    let [public_pod, private_pod, in_cluster_pod] = servers.as_slice() else {
        bail!("expected three server pods, got {servers:?}");
    };
    let tcp = Protocol::Tcp;
    // The public issuer on 443 (which the example's upstream rule allows as
    // well), never on another port.
    assert!(map.allows_to_address(public_pod, v4(203, 0, 113, 10), tcp, 443));
    assert!(!map.allows_to_address(public_pod, v4(203, 0, 113, 10), tcp, 8443));
    // Inside 10.0.0.0/8, closed to upstreams, exactly the listed range on
    // the listed port; the other two tenants reach nothing there.
    let private_block = IpRange::cidr("10.0.0.0/8")?;
    let in_private = |pod: &str| -> Vec<(IpRange, Conn)> {
        map.egress_of(pod)
            .iter()
            .filter(|(range, _)| {
                range.family == private_block.family
                    && range.first <= private_block.last
                    && private_block.first <= range.last
            })
            .cloned()
            .collect()
    };
    assert_eq!(
        in_private(private_pod),
        vec![(IpRange::cidr("10.20.0.0/16")?, Conn::tcp(8443))]
    );
    assert_eq!(in_private(public_pod), vec![]);
    assert_eq!(in_private(in_cluster_pod), vec![]);
    // Among pods, kube-dns on 53 and, for the in-cluster issuer, its pod on
    // 8080 only: no other pod of its namespace, no pod with its labels
    // elsewhere, no other server.
    for server in &servers {
        let reached: Vec<(String, Conn)> = map
            .between_pods
            .iter()
            .filter(|((source, _), _)| source == server)
            .map(|((_, destination), conn)| (destination.clone(), conn.clone()))
            .collect();
        let mut expected = vec![(
            "kube-system/coredns-0".to_owned(),
            Conn::ports(&[Protocol::Tcp, Protocol::Udp], &[53]),
        )];
        if server == in_cluster_pod {
            expected.insert(
                0,
                (format!("{ISSUER_NAMESPACE}/keycloak-0"), Conn::tcp(8080)),
            );
        }
        assert_eq!(reached, expected, "pods reached by {server}");
    }

    // The configuration: the OAuth section with defaults, the resource's
    // host beside the in-cluster names, the access rules; and it loads.
    let text = config_map_text(&admin, &cp.tenant_namespace(public)).await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(CONFIG_FILE_KEY);
    std::fs::write(&path, &text)?;
    let config: ServerConfig = bulkhead_server::config::load(&path)
        .with_context(|| format!("bulkhead-server refuses the ConfigMap's server.yaml:\n{text}"))?;
    let oauth = config.auth.oauth.as_ref().context("no auth.oauth")?;
    assert_eq!(oauth.issuer, ISSUER);
    assert_eq!(oauth.resource, "https://mcp.example.com/initech/mcp");
    assert_eq!(oauth.required_scopes, ["mcp:tools"]);
    assert_eq!(oauth.caller_claim, "sub");
    assert_eq!(oauth.groups_claim, "groups");
    assert_eq!(oauth.tenant_claim.as_deref(), Some("tenant"));
    assert_eq!(
        oauth.algorithms,
        [SigningAlgorithm::RS256, SigningAlgorithm::ES256]
    );
    assert_eq!(oauth.clock_skew_seconds, 30);
    assert!(!oauth.allow_private_issuer, "{text}");
    assert!(config.auth.api_keys, "{text}");
    for host in ["mcp.example.com", "mcp.example.com:443"] {
        assert!(
            config.allowed_hosts.iter().any(|h| h == host),
            "{host} not in {:?}",
            config.allowed_hosts
        );
    }
    assert_eq!(config.access.len(), 2, "{text}");
    // An issuer in a listed private range or in the cluster may be reached
    // at a private address.
    for id in [private, in_cluster] {
        let text = config_map_text(&admin, &cp.tenant_namespace(id)).await?;
        let config: ServerConfig = yaml_serde::from_str(&text)?;
        assert!(
            config.auth.oauth.is_some_and(|o| o.allow_private_issuer),
            "{id}: {text}"
        );
    }

    for id in [public, private, in_cluster] {
        cp.delete_tenant(&admin, id).await?;
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn with_the_issuer_out_of_reach_the_tenant_is_not_ready_and_names_it() -> Result<()> {
    let _crd = CRD_SWAP.read().await;
    let cp = ControlPlane::shared();
    cp.install_bulkhead();
    let admin = cp.admin_client().await?;
    let id = "oauth-down";
    cp.kubectl_apply(&example("oauth.yaml", id)?)?;
    let namespace = cp.tenant_namespace(id);

    // Nothing runs the pods, so the Deployment never becomes available, as
    // when the server cannot read the issuer's metadata and JWKS. Once the
    // rollout is over (first it reads "the rollout is in progress"), the
    // message is the README's, in this tenant's namespace.
    let expected = readme_unavailable_message()?.replace("bulkhead-initech", &namespace);
    let tenants: Api<Tenant> = Api::all(admin.clone());
    let (ready, available) = wait_for(
        &format!("{id} to report its unavailable server as the README shows it"),
        RECONCILE_TIMEOUT,
        || async {
            let tenant = tenants.get(id).await?;
            let conditions = tenant.status.map(|s| s.conditions).unwrap_or_default();
            let find = |type_: &str| conditions.iter().find(|c| c.type_ == type_).cloned();
            match (find("Ready"), find("ServerAvailable")) {
                (Some(ready), Some(available)) if available.message == expected => {
                    Ok(Some((ready, available)))
                }
                // Kept as the last error, shown if the wait times out.
                (_, available) => bail!("ServerAvailable is {available:?}"),
            }
        },
    )
    .await?;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &namespace);
    let deployment = deployments.get(DEPLOYMENT_NAME).await?;
    let deployment_available = deployment
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Available")
        .map(|c| c.status);
    assert_ne!(deployment_available.as_deref(), Some("True"));

    assert_eq!(available.status, "False", "{available:?}");
    let hint = format!(
        "server pods become ready only after reading the metadata and JWKS of the issuer {ISSUER}: check that spec.auth.oauth.issuerNetwork names where it is"
    );
    assert!(available.message.ends_with(&hint), "{}", available.message);
    assert_eq!(ready.status, "False", "{ready:?}");
    assert!(
        ready.message.contains("ServerAvailable: ") && ready.message.contains(&hint),
        "{}",
        ready.message
    );
    // As `kubectl` shows it, the README's way.
    let shown = cp.kubectl_ok(&[
        "get",
        "tenant",
        id,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"ServerAvailable\")].message}",
    ])?;
    assert_eq!(shown.trim(), available.message);
    eprintln!("{id}: {}", available.message);

    // What such a pod would say: the real server with the ConfigMap's
    // configuration, as the pod's ServiceAccount, its Secrets in place. Its
    // only unmet condition is the issuer (not reachable from here at all).
    cp.kubectl_apply(&secret(
        &namespace,
        API_KEYS_SECRET_NAME,
        &[("ci-release", &hash_api_key(&generate_api_key()?))],
    ))?;
    cp.kubectl_apply(&secret(
        &namespace,
        CREDENTIALS_SECRET_NAME,
        &[("github_token", "a-token")],
    ))?;
    // The configuration as the ConfigMap carries it, the token as the
    // kubelet would project it for ServiceAccount `mcp-server`.
    let config = config_map_text(&admin, &namespace).await?;
    let server = cp.start_server(id, &config, &namespace, "info").await?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    let readyz = format!("http://{}/readyz", server.admin);
    let reachable = format!("not ready: OAuth issuer {ISSUER} not reachable yet: ");
    let body = wait_for(
        "the server's /readyz to name the unreachable issuer alone",
        START_TIMEOUT,
        || async {
            let response = http.get(&readyz).send().await?;
            let status = response.status().as_u16();
            let body = response.text().await?;
            ensure!(status == 503, "/readyz answered {status}: {body}");
            if body.starts_with(&reachable) && !body.contains("; ") {
                Ok(Some(body))
            } else {
                bail!("/readyz: {body}")
            }
        },
    )
    .await?;
    eprintln!("{id}: the server's /readyz: {body}");
    drop(server);
    cp.delete_tenant(&admin, id).await?;
    Ok(())
}

/// A Secret as the platform team creates it (`kubectl apply`).
fn secret(namespace: &str, name: &str, data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(key, value)| ((*key).to_owned(), json!(value)))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": data,
    })
}

/// `server.yaml` of the ConfigMap the operator wrote in `namespace`.
async fn config_map_text(admin: &Client, namespace: &str) -> Result<String> {
    let maps: Api<ConfigMap> = Api::namespaced(admin.clone(), namespace);
    maps.get(CONFIG_MAP_NAME)
        .await?
        .data
        .and_then(|mut d| d.remove(CONFIG_FILE_KEY))
        .context("no server.yaml in the ConfigMap")
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn invalid_auth_is_refused_naming_the_field_and_stored_is_invalid_spec() -> Result<()> {
    let cp = ControlPlane::shared();
    cp.install_bulkhead();
    let admin = cp.admin_client().await?;
    let example_json = |id: &str| example_json("oauth.yaml", id);

    // The example as written is accepted.
    if let Err(message) = accepted(&admin, &example_json("oauth-valid")?).await? {
        bail!("the OAuth example is refused: {message}");
    }
    // Each spoiled one is refused, the message naming the field.
    let mut token_subject = example_json("oauth-no-issuer")?;
    token_subject["spec"]["auth"] = json!({"apiKeys": true});
    token_subject["spec"]["access"] =
        json!([{"subjects": [{"tokenSubject": "alice"}], "tools": ["*"]}]);
    let mut http_issuer = example_json("oauth-http-issuer")?;
    http_issuer["spec"]["auth"]["oauth"]["issuer"] = json!("http://login.example.com/realms/x");
    let mut hmac = example_json("oauth-hmac")?;
    hmac["spec"]["auth"]["oauth"]["algorithms"] = json!(["HS256"]);
    let mut nobody = example_json("oauth-nobody")?;
    nobody["spec"]["auth"] = json!({"apiKeys": false});
    nobody["spec"]["access"] = json!([]);
    let cases = [
        (&token_subject, "spec.access"),
        (&http_issuer, "spec.auth.oauth.issuer"),
        (&hmac, "spec.auth.oauth.algorithms[0]"),
        (&nobody, "spec.auth"),
    ];
    for (object, field) in &cases {
        let name = &object["metadata"]["name"];
        match accepted(&admin, object).await? {
            Ok(()) => bail!("{name} was accepted"),
            Err(message) => {
                eprintln!("{name}: {message}");
                ensure!(
                    message.contains(field),
                    "{name}: the message does not name {field}: {message}"
                );
            }
        }
    }

    // Stored under a laxer CRD, the first two are reported InvalidSpec by
    // the operator, naming the field (the subject, where the schema's rule
    // can only name the list); nothing is created.
    {
        let _swap = CRD_SWAP.write().await;
        cp.store_under_lax_crd(&admin, &token_subject, &[&token_subject, &http_issuer])
            .await?;
    }
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    let stored = [
        (&token_subject, "spec.access[0].subjects[0].tokenSubject"),
        (&http_issuer, "spec.auth.oauth.issuer"),
    ];
    for (object, field) in stored {
        let id = object["metadata"]["name"]
            .as_str()
            .context("unnamed Tenant")?;
        let tenant = cp.wait_reconciled(&admin, id).await?;
        let conditions = tenant.status.map(|s| s.conditions).unwrap_or_default();
        let find = |type_: &str| {
            conditions
                .iter()
                .find(|c| c.type_ == type_)
                .with_context(|| format!("{id}: no {type_}: {conditions:?}"))
        };
        let (stalled, ready) = (find("Stalled")?, find("Ready")?);
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", "InvalidSpec"),
            "{id}: {stalled:?}"
        );
        assert_eq!(ready.status, "False", "{id}: {ready:?}");
        assert!(stalled.message.contains(field), "{id}: {}", stalled.message);
        eprintln!("{id} stalled: {}", stalled.message);
        let ns = cp.tenant_namespace(id);
        assert!(namespaces.get_opt(&ns).await?.is_none(), "{ns} exists");
        cp.delete_tenant(&admin, id).await?;
    }
    Ok(())
}
