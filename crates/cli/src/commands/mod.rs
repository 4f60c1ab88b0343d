//! One module per command family. Each exposes its clap types and a `run`
//! that returns the process exit code.

pub mod copy;
pub mod doctor;
pub mod exec;
pub mod image;
pub mod kernel;
pub mod mcp;
pub mod network;
pub mod relay;
pub mod rootfs;
pub mod run;
pub mod snapshot;
pub mod workspace;

use std::io;

use crate::cli::{Command, Global};

/// Runs a parsed command.
pub fn dispatch(command: Command, global: &Global) -> anyhow::Result<u8> {
    match command {
        Command::Run(args) => run::run(args, global),
        Command::Create(args) => workspace::create(args, global),
        Command::Start(args) => workspace::start(args, global),
        Command::Exec(args) => exec::exec(args, global),
        Command::Shell(args) => exec::shell(args, global),
        Command::Cp(args) => copy::cp(args, global),
        Command::Halt(args) => workspace::halt(args, global),
        Command::Stop(args) => workspace::stop(args, global),
        Command::Kill(args) => workspace::kill(args, global),
        Command::Delete(args) => workspace::delete(args, global),
        Command::Pause(args) => snapshot::pause(args, global),
        Command::Resume(args) => snapshot::resume(args, global),
        Command::Snapshot(cmd) => snapshot::run(cmd, global),
        Command::List => workspace::list(global),
        Command::Status(args) => workspace::status(args, global),
        Command::Events(args) => workspace::events(args, global),
        Command::Logs(args) => workspace::logs(args, global),
        Command::Egress(args) => network::egress(args, global),
        Command::Gc => workspace::gc(global),
        Command::ChannelRelay(args) => relay::relay(args),
        Command::Supervisor => {
            let code =
                vmkit::supervisor::serve(io::stdin().lock(), io::stdout().lock(), io::stderr());
            Ok(code as u8)
        }
        Command::Kernel(cmd) => kernel::run(cmd, global),
        Command::Image(cmd) => image::run(cmd, global),
        Command::Rootfs(cmd) => rootfs::run(cmd, global),
        Command::Mcp(args) => mcp::run(args, global),
        Command::Doctor(args) => doctor::run(args, global),
        Command::Version => {
            if global.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "type": "version",
                        "version": env!("CARGO_PKG_VERSION"),
                        "jsonOutputVersion": crate::output::JSON_OUTPUT_VERSION,
                    })
                );
            } else {
                println!("microagent {}", env!("CARGO_PKG_VERSION"));
            }
            Ok(0)
        }
    }
}
