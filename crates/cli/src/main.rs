//! The `microagent` command line: a thin layer over the `vmkit` library.
//!
//! Parsing lives in `cli.rs`, one module per command family under
//! `commands/`; every decision about VMs, images and kernels is the
//! library's. This file only maps results to exit codes.

mod cli;
mod commands;
mod exit;
mod output;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let global = cli.global();
    init_tracing(cli.verbose);
    match commands::dispatch(cli.command, &global) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let code = exit::code_for(&err);
            if global.json {
                let line = serde_json::json!({
                    "type": "error",
                    "error": format!("{err:#}"),
                    "exitCode": code,
                });
                println!("{line}");
            } else {
                eprintln!("microagent: error: {err:#}");
            }
            ExitCode::from(code)
        }
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MICROAGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
