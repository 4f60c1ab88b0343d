//! The `microagent` command line: a thin layer over the `vmkit` library.
//!
//! Parsing lives in `cli.rs`, one module per command family under
//! `commands/`; every decision about VMs, images and kernels is the
//! library's. This file only maps results to exit codes.

mod cli;
mod commands;
mod exit;
mod output;
mod terminal;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_tracing(cli.verbose);
    let json = cli.json;
    match cli
        .global()
        .and_then(|global| commands::dispatch(cli.command, &global))
    {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let code = exit::code_for(&err);
            let message = error_chain(&err);
            if json {
                let line = serde_json::json!({
                    "type": "error",
                    "error": message,
                    "exitCode": code,
                    "exitCodeSource": exit::Source::Microagent.as_str(),
                });
                println!("{line}");
            } else {
                // Errors can quote the guest (its error texts): no escapes
                // may reach the terminal.
                let message = vmkit::protocol::terminal_safe(&message);
                eprintln!("microagent: error: {message}");
            }
            ExitCode::from(code)
        }
    }
}

/// The error and its causes, joined with ": ", leaving out a cause whose
/// text its parent already shows (library errors often wrap and repeat).
fn error_chain(err: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !message.contains(&text) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
    }
    message
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
