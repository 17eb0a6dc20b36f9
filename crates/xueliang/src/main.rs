//! The `xueliang` command.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = xueliang::cli::Cli::parse();
    xueliang::cli::main(cli)
}
