//! `bulkhead-operator`: `run` the controller, print the `crd`, or `render`
//! the objects of a Tenant file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bulkhead_crds::Tenant;
use bulkhead_operator::controller::RunOptions;
use bulkhead_operator::render::{RenderError, render_tenant};
use bulkhead_operator::settings::OperatorSettings;
use clap::{Parser, Subcommand};
use kube::CustomResourceExt;

/// Gives every Tenant its own namespace-isolated MCP server.
#[derive(Debug, Parser)]
#[command(name = "bulkhead-operator", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller against the cluster (in-cluster config or KUBECONFIG).
    Run {
        #[command(flatten)]
        settings: OperatorSettings,
        #[command(flatten)]
        options: RunOptions,
    },
    /// Print the Tenant CustomResourceDefinition as YAML.
    Crd,
    /// Print, as multi-document YAML, every object the operator would apply
    /// for the Tenant in FILE (no cluster needed).
    Render {
        /// A YAML file holding one Tenant, or `-` for standard input.
        file: PathBuf,
        #[command(flatten)]
        settings: OperatorSettings,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { settings, options } => run_controller(settings, options),
        Command::Crd => yaml_serde::to_string(&Tenant::crd())
            .map(|yaml| print!("{yaml}"))
            .map_err(|e| format!("cannot write the CRD as YAML: {e}")),
        Command::Render { file, settings } => {
            render_file(&file, &settings).map(|yaml| print!("{yaml}"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run_controller(settings: OperatorSettings, options: RunOptions) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime
        .block_on(bulkhead_operator::controller::run(settings, options))
        .map_err(|e| format!("{e:#}"))
}

fn render_file(file: &Path, settings: &OperatorSettings) -> Result<String, String> {
    let yaml = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| format!("cannot read standard input: {e}"))?
    } else {
        std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?
    };
    render_tenant(&yaml, settings).map_err(|e| match e {
        // One line per field, so a person can work down the list.
        RenderError::Invalid(invalid) => {
            let lines: Vec<String> = invalid.errors.iter().map(|e| format!("  - {e}")).collect();
            format!("{}: invalid Tenant:\n{}", file.display(), lines.join("\n"))
        }
        other => format!("{}: {other}", file.display()),
    })
}
