//! NetworkPolicy on a real CNI: a tenant's MCP server answers only the
//! namespaces its spec admits, and a tenant's pods reach neither the cloud
//! metadata endpoint nor another tenant's pods. Every "blocked" check has a
//! control showing the same target is reachable where no policy stands in
//! the way, so a target that is simply down cannot pass for isolation.

use anyhow::{Context, Result, ensure};
use bulkhead_crds::server_config::{MCP_PATH, MCP_PORT};
use bulkhead_e2e::probes::Probe;
use bulkhead_e2e::{TestEnv, run};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;

#[tokio::test]
#[ignore = "needs a kind cluster: run tests/e2e/run.sh"]
async fn mcp_answers_only_the_namespaces_the_tenant_admits() {
    run(|env| async move {
        let a = env.create_tenant("a", env.tenant_spec()?).await?;
        let b = env.create_tenant("b", env.tenant_spec()?).await?;
        let gateway = env.create_namespace("gateway", true).await?;
        let outsider = env.create_namespace("outsider", false).await?;
        for namespace in [&gateway, &outsider, &b.namespace] {
            env.store_caller_key(namespace, &a.api_key).await?;
        }

        let allowed = env.probe_mcp_tools_list(&gateway, &a.endpoint).await?;
        ensure!(
            allowed.connected()
                && allowed.field("initialize-status") == Some("200")
                && allowed.field("tools-list-status") == Some("200")
                && allowed.logs.contains("whoami"),
            "tools/list from the admitted namespace did not list the tools: {allowed}"
        );

        let from_outsider = env.probe_mcp_tools_list(&outsider, &a.endpoint).await?;
        ensure_blocked(&from_outsider)?;
        let from_other_tenant = env.probe_mcp_tools_list(&b.namespace, &a.endpoint).await?;
        ensure_blocked(&from_other_tenant)?;
        Ok(())
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a kind cluster: run tests/e2e/run.sh"]
async fn tenant_pods_reach_neither_metadata_nor_other_tenants() {
    run(|env| async move {
        let a = env.create_tenant("a", env.tenant_spec()?).await?;
        let b = env.create_tenant("b", env.tenant_spec()?).await?;
        let gateway = env.create_namespace("gateway", true).await?;
        let plain = env.create_namespace("plain", false).await?;
        let metadata_url = env.settings().metadata_url.clone();
        let b_pod_ip = server_pod_ip(&env, &b.namespace).await?;
        let b_server = format!("http://{b_pod_ip}:{MCP_PORT}{MCP_PATH}");

        let control = env.probe_connect(&plain, &metadata_url).await?;
        ensure!(
            control.connected(),
            "the stand-in metadata endpoint is not reachable even from a namespace without \
             NetworkPolicy, so blocking it would prove nothing (tests/e2e/run.sh serves it \
             at 169.254.169.254): {control}"
        );
        let control = env.probe_connect(&gateway, &b_server).await?;
        ensure!(
            control.connected(),
            "tenant B's server pod is not reachable by IP even from an admitted namespace: {control}"
        );

        ensure_blocked(&env.probe_connect(&a.namespace, &metadata_url).await?)?;
        ensure_blocked(&env.probe_connect(&a.namespace, &b_server).await?)?;
        Ok(())
    })
    .await;
}

/// The address of a running server pod of the tenant in `namespace`.
async fn server_pod_ip(env: &TestEnv, namespace: &str) -> Result<String> {
    let deployment = env.server_deployment(namespace).await?;
    let selector = deployment
        .spec
        .and_then(|spec| spec.selector.match_labels)
        .context("the server Deployment has no matchLabels selector")?
        .into_iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods = Api::<Pod>::namespaced(env.client(), namespace)
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    pods.into_iter()
        .filter(|pod| {
            pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                && pod.metadata.deletion_timestamp.is_none()
        })
        .find_map(|pod| pod.status.and_then(|status| status.pod_ip))
        .with_context(|| format!("no running server pod with an IP in {namespace}"))
}

fn ensure_blocked(probe: &Probe) -> Result<()> {
    ensure!(
        probe.blocked(),
        "expected the connection to be blocked (curl exit code 7 or 28): {probe}"
    );
    Ok(())
}
