//! `microagent doctor`.

use clap::Args;
use vmkit::protocol::{BackendKind, CheckStatus};

use crate::cli::Global;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Check for this backend instead of the host's default (qemu on
    /// Linux, apple-vf on macOS): the same backend lookup `run` does.
    #[arg(long, value_parser = crate::commands::workspace::parse_backend)]
    pub backend: Option<BackendKind>,
}

pub fn run(args: DoctorArgs, global: &Global) -> anyhow::Result<u8> {
    let report = vmkit::doctor::doctor_for(&global.state_dir, args.backend);
    if global.json {
        crate::output::print_typed("doctor", &report)?;
    } else {
        for c in &report.checks {
            let mark = match c.status {
                CheckStatus::Ok => "ok  ",
                CheckStatus::Warn => "warn",
                CheckStatus::Fail => "FAIL",
            };
            println!("[{mark}] {:<20} {}", c.name, c.detail);
            if let Some(remedy) = &c.remedy {
                println!("       {:<20} -> {remedy}", "");
            }
        }
        println!();
        println!(
            "run will use: {} with {} ({})",
            report.backend, report.accelerator, report.reason
        );
    }
    Ok(if report.ready { 0 } else { 1 })
}
