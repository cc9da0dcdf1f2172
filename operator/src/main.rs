//! `bulkhead-operator`: `run` the controller, print the `crd`, or `render`
//! the objects of a Tenant file. Parses the command line and dispatches;
//! the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use bulkhead_operator::controller::run::{self, RunOptions};
use bulkhead_operator::render;
use bulkhead_operator::settings::OperatorSettings;
use clap::{Parser, Subcommand};

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
    /// for the Tenant in FILE (no cluster needed); advisories the operator
    /// would report on the Tenant go to standard error as `warning:` lines.
    Render {
        /// A YAML file holding one Tenant, or `-` for standard input.
        file: PathBuf,
        #[command(flatten)]
        settings: OperatorSettings,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Run { settings, options } => run::run_blocking(settings, options),
        Command::Crd => render::crd_yaml().map(|yaml| print!("{yaml}")),
        Command::Render { file, settings } => {
            render::render_file(&file, &settings).map(|rendered| {
                // Advisories go to standard error, so the output still
                // pipes into `kubectl apply -f -`.
                for line in rendered.warning_lines() {
                    eprintln!("{line}");
                }
                print!("{}", rendered.yaml);
            })
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
