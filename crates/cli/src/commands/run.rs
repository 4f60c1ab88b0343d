//! `microagent run`.

use std::io;

use clap::Args;
use serde_json::json;

use crate::cli::Global;
use crate::commands::workspace::{machine_params, prepare_disks, runtime, MachineArgs};
use crate::exit;
use crate::output::{print_result, JsonStream};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The image: a registry reference (`alpine`, `host:port/repo:tag`,
    /// `repo@sha256:...`) or a local one (`oci-layout:DIR[:TAG]`,
    /// `docker-archive:FILE.tar`, `rootfs-tar:FILE.tar[.gz|.zst]`).
    #[arg(long, value_name = "REF")]
    pub image: String,

    /// A shell command run before --exec; repeat for several, run in order.
    /// The first one that fails ends the run (exit code 126).
    #[arg(long, value_name = "CMD")]
    pub setup: Vec<String>,

    /// The shell command whose exit code becomes microagent's.
    #[arg(long, value_name = "CMD")]
    pub exec: String,

    /// Whole-run deadline in seconds; on expiry the command is killed and
    /// microagent exits 124.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,

    /// Keep the workspace afterwards (stopped) instead of deleting it.
    #[arg(long)]
    pub keep: bool,

    /// Name of the workspace (default: run-<random>).
    #[arg(long)]
    pub name: Option<String>,

    #[command(flatten)]
    pub machine: MachineArgs,
}

pub fn run(args: RunArgs, global: &Global) -> anyhow::Result<u8> {
    let rt = runtime(global, args.machine.backend)?;
    let (kernel, rootfs) = prepare_disks(&rt, &args.image, args.machine.kernel.as_deref(), global)?;
    let name = args.name.clone().unwrap_or_else(vmkit::new_run_name);
    let params = vmkit::RunParams {
        name: Some(name.clone()),
        setup: args.setup.clone(),
        exec: args.exec.clone(),
        timeout_seconds: args.timeout,
        keep: args.keep,
        machine: machine_params(&args.machine),
    };
    let output = if global.json {
        rt.run(
            &params,
            &kernel,
            &rootfs,
            &mut JsonStream::stdout(),
            &mut JsonStream::stderr(),
        )
    } else {
        rt.run(
            &params,
            &kernel,
            &rootfs,
            &mut io::stdout(),
            &mut io::stderr(),
        )
    };
    let output = output.map_err(exit::classify)?;
    let code = if output.timed_out {
        exit::TIMEOUT
    } else if output.setup_failed.is_some() {
        exit::SETUP_FAILED
    } else {
        exit::code_of(&output.result)
    };
    if global.json {
        let setup = output
            .setup_failed
            .as_ref()
            .map(|s| json!({"index": s.index, "command": s.command}));
        print_result(
            &name,
            &output.result,
            code,
            json!({"timedOut": output.timed_out, "setupFailed": setup}),
        );
    } else if output.timed_out {
        eprintln!(
            "microagent: timed out after {}s",
            args.timeout.unwrap_or_default()
        );
    } else if let Some(step) = &output.setup_failed {
        eprintln!(
            "microagent: setup command {} failed ({}): {}",
            step.index + 1,
            exit::describe(&step.result),
            step.command
        );
    }
    Ok(code)
}
