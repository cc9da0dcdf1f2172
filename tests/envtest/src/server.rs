//! The real `bulkhead-server` binary on loopback, as it runs in a tenant's
//! pod: its configuration file as the operator's ConfigMap carries it and a
//! kubeconfig with the token the kubelet would project for the pod's
//! ServiceAccount, so it reaches the API server with nothing but the RBAC
//! the operator bound.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use bulkhead_crds::server_config::CONFIG_FILE_KEY;
use bulkhead_operator::desired::deployment::TOKEN_EXPIRATION_SECONDS;
use serde_json::Value;

use crate::binaries::server_binary;
use crate::control_plane::ControlPlane;
use crate::process::ManagedProcess;
use crate::tenants::wait_for;

/// How long the server may take to start and write its ready file.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A started server: the process (ended when dropped) and the addresses
/// its ready file names.
pub struct StartedServer {
    pub process: ManagedProcess,
    /// The MCP listener.
    pub mcp: SocketAddr,
    /// The admin listener (`/readyz`, `/livez`, `/metrics`).
    pub admin: SocketAddr,
}

impl ControlPlane {
    /// Starts `bulkhead-server` named `name` (its files under the work
    /// directory's `server-<name>/`, its log at `logs/server-<name>.log`)
    /// with `config` (the configuration file's text, as is), authenticated
    /// as ServiceAccount `mcp-server` of `token_namespace` through a
    /// kubeconfig holding a TokenRequest token with the Deployment's
    /// projected lifetime. The in-cluster and `BULKHEAD_*` variables are
    /// removed, so it uses nothing else. Both listeners are on loopback
    /// port 0; `rust_log` is its `RUST_LOG`. Returns once the ready file is
    /// written (at most [`START_TIMEOUT`]); fails early if the process ends.
    pub async fn start_server(
        &self,
        name: &str,
        config: &str,
        token_namespace: &str,
        rust_log: &str,
    ) -> Result<StartedServer> {
        let dir = self.work_dir().join(format!("server-{name}"));
        std::fs::create_dir_all(&dir)?;
        let config_path = dir.join(CONFIG_FILE_KEY);
        std::fs::write(&config_path, config)?;
        let token = self
            .service_account_token(token_namespace, "mcp-server", TOKEN_EXPIRATION_SECONDS)
            .await?;
        let kubeconfig =
            self.kubeconfig_with_token(&format!("server-{name}.kubeconfig"), &token)?;
        let ready_file = dir.join("ready.json");
        let mut command = Command::new(server_binary()?);
        for (var, _) in std::env::vars_os() {
            let text = var.to_string_lossy();
            if text.starts_with("BULKHEAD_") || text.starts_with("KUBERNETES_") {
                command.env_remove(var);
            }
        }
        command
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", rust_log)
            .arg("--config")
            .arg(&config_path)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--ready-file")
            .arg(&ready_file)
            .args(["--log-format", "json"]);
        let log = self
            .work_dir()
            .join("logs")
            .join(format!("server-{name}.log"));
        let process = self
            .supervisor()
            .spawn(&format!("bulkhead-server {name}"), command, &log)?;
        let addresses: Value = wait_for("the server's ready file", START_TIMEOUT, || async {
            process.ensure_running()?;
            Ok(std::fs::read_to_string(&ready_file)
                .ok()
                .and_then(|text| serde_json::from_str(&text).ok()))
        })
        .await?;
        let parse = |key: &str| -> Result<SocketAddr> {
            addresses[key]
                .as_str()
                .with_context(|| format!("no {key} address in the ready file"))?
                .parse()
                .with_context(|| format!("the {key} address"))
        };
        Ok(StartedServer {
            mcp: parse("mcp")?,
            admin: parse("admin")?,
            process,
        })
    }
}
