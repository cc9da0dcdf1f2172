//! `bulkhead-server`: parses flags and hands over to the library.

use std::process::ExitCode;

use bulkhead_server::cli::{Cli, Command, LogFormat};
use clap::Parser;

fn init_logging(format: LogFormat) {
    // Diagnostics go to stderr: stdout is the audit stream. rmcp logs every
    // stateless request at info; keep it to warnings by default.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rmcp=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn keygen(caller: &str, namespace: Option<&str>) -> ExitCode {
    if !bulkhead_server::identity::is_valid_caller_id(caller) {
        eprintln!(
            "error: caller id {caller:?} must be 1-253 characters of letters, digits, '-', '_' and '.'"
        );
        return ExitCode::from(2);
    }
    match bulkhead_server::api_keys::generate_api_key() {
        Ok(key) => {
            print!(
                "{}",
                bulkhead_server::api_keys::keygen_instructions(caller, &key, namespace)
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: cannot make an API key: {error}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Keygen { caller, namespace }) = &cli.command {
        return keygen(caller, namespace.as_deref());
    }
    init_logging(cli.serve.log_format);
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
    match runtime.block_on(bulkhead_server::app::run(cli.serve)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "bulkhead-server cannot start");
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
