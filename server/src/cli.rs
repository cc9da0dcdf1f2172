//! Command-line interface of `bulkhead-server`: the flags, and what each
//! command does ([`serve`], [`keygen`]), so `main.rs` only parses and
//! dispatches.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// The MCP server of one Bulkhead tenant.
#[derive(Debug, Parser)]
#[command(name = "bulkhead-server", version, about)]
pub struct Cli {
    /// What to do; serving is the default.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// How to serve.
    #[command(flatten)]
    pub serve: ServeOptions,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make a new API key for a caller: prints the key once and the hash to
    /// store in the key file or the `bulkhead-api-keys` Secret.
    Keygen {
        /// Caller id (letters, digits, '-', '_', '.').
        #[arg(long)]
        caller: String,
        /// Tenant namespace to put in the kubectl hint.
        #[arg(long)]
        namespace: Option<String>,
    },
}

/// Format of the diagnostic log on stderr.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Options of the server.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeOptions {
    /// Server configuration file (the operator mounts it here).
    #[arg(
        long,
        env = "BULKHEAD_CONFIG",
        default_value = "/etc/bulkhead/server.yaml"
    )]
    pub config: PathBuf,
    /// Address of the MCP listener (`/mcp`).
    #[arg(long, env = "BULKHEAD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Address of the admin listener (`/healthz`, `/readyz`, `/metrics`).
    #[arg(long, env = "BULKHEAD_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
    /// Serve without API keys (every caller is `anonymous`). Local
    /// development only: refused unless `--listen` is a loopback address.
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Write the bound addresses as JSON to this file once listening.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// How often local key and credential files are re-read, in seconds.
    #[arg(long, default_value_t = 5)]
    pub secret_poll_seconds: u64,
    /// Cache successful upstream GET answers this long (0: off).
    #[arg(long, default_value_t = 0)]
    pub response_cache_seconds: u64,
    /// Longest wait for in-flight requests at shutdown, in seconds.
    #[arg(long, default_value_t = 20)]
    pub shutdown_grace_seconds: u64,
    /// Longest wait for the audit stream to take the queued lines at
    /// shutdown, after the grace period, in seconds. With the defaults the
    /// server exits within 20 + 1 + 5 = 26 s of SIGTERM, inside Kubernetes'
    /// default `terminationGracePeriodSeconds` of 30.
    #[arg(long, default_value_t = 5)]
    pub audit_drain_seconds: u64,
    /// Audit lines that may wait for stdout; when that many are waiting,
    /// requests are refused with 503. Each line takes at most 4 KiB
    /// (`audit::MAX_RECORD_BYTES`), so the default bounds the queue at
    /// 16 MiB.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub audit_queue_lines: u32,
    /// Format of the diagnostic log on stderr (stdout carries the audit);
    /// every value in it is escaped and bounded ([`crate::logging`]).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Serving (no subcommand): logging to stderr, a multi-threaded runtime,
/// and [`crate::app::run`] until SIGTERM or SIGINT.
pub fn serve(options: ServeOptions) -> ExitCode {
    crate::logging::init(options.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::app::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "bulkhead-server cannot start");
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `bulkhead-server keygen`: prints a new API key for `caller` and how to
/// install it (exit code 2 for an invalid caller id).
pub fn keygen(caller: &str, namespace: Option<&str>) -> ExitCode {
    if !crate::identity::is_valid_caller_id(caller) {
        eprintln!(
            "error: caller id {caller:?} must be 1-253 characters of letters, digits, '-', '_' and '.'"
        );
        return ExitCode::from(2);
    }
    match crate::api_keys::generate_api_key() {
        Ok(key) => {
            print!(
                "{}",
                crate::api_keys::keygen_instructions(caller, &key, namespace)
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: cannot make an API key: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_shutdown_ends_within_the_pods_termination_grace_period() {
        // The operator leaves `terminationGracePeriodSeconds` at the
        // Kubernetes default (PodSpec API reference: 30 s).
        const KUBERNETES_DEFAULT_GRACE_SECONDS: u64 = 30;
        let options = Cli::parse_from(["bulkhead-server"]).serve;
        let longest = options.shutdown_grace_seconds
            + crate::app::SHUTDOWN_SETTLE.as_secs()
            + options.audit_drain_seconds;
        assert!(longest < KUBERNETES_DEFAULT_GRACE_SECONDS, "{longest} s");
    }

    #[test]
    fn an_empty_audit_queue_is_refused() {
        assert!(Cli::try_parse_from(["bulkhead-server", "--audit-queue-lines", "0"]).is_err());
    }
}
