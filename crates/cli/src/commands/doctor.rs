//! `microagent doctor`.

use vmkit_protocol::CheckStatus;

use crate::cli::Global;

pub fn run(global: &Global) -> anyhow::Result<u8> {
    let report = vmkit::doctor::doctor(&global.state_dir);
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
