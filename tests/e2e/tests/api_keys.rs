//! Caller identity does not cross tenants: an API key issued for tenant A
//! is refused by tenant B's server, through the Service, on a real cluster.

use anyhow::ensure;
use bulkhead_e2e::run;

#[tokio::test]
#[ignore = "needs a kind cluster: run tests/e2e/run.sh"]
async fn one_tenants_api_key_is_refused_by_another() {
    run(|env| async move {
        let a = env.create_tenant("a", env.tenant_spec()?).await?;
        let b = env.create_tenant("b", env.tenant_spec()?).await?;
        let gateway = env.create_namespace("gateway", true).await?;

        env.store_caller_key(&gateway, &a.api_key).await?;
        let own = env.probe_mcp_tools_list(&gateway, &a.endpoint).await?;
        ensure!(
            own.field("tools-list-status") == Some("200"),
            "tenant A refused its own key, so B refusing it would prove nothing: {own}"
        );
        let cross = env.probe_mcp_tools_list(&gateway, &b.endpoint).await?;
        ensure!(
            cross.connected() && cross.field("initialize-status") == Some("401"),
            "tenant B did not answer A's key with 401: {cross}"
        );

        env.store_caller_key(&gateway, &b.api_key).await?;
        let b_own = env.probe_mcp_tools_list(&gateway, &b.endpoint).await?;
        ensure!(
            b_own.field("tools-list-status") == Some("200"),
            "tenant B refused its own key: {b_own}"
        );
        Ok(())
    })
    .await;
}
