//! `bulkhead-server`: parses flags and hands over to the library.

use std::process::ExitCode;

use bulkhead_server::cli::{self, Cli, Command};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Keygen { caller, namespace }) => cli::keygen(&caller, namespace.as_deref()),
        None => cli::serve(cli.serve),
    }
}
