//! `microagent run`.

use std::io;

use clap::Args;
use serde_json::json;

use crate::cli::Global;
use crate::commands::workspace::{
    machine_params, prepare_disks, quiet_runtime, runtime, MachineArgs,
};
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
    let name = args.name.clone().unwrap_or_else(vmkit::new_run_name);
    let params = vmkit::RunParams {
        name: Some(name.clone()),
        setup: args.setup.clone(),
        exec: args.exec.clone(),
        timeout_seconds: args.timeout,
        image: Some(args.image.clone()),
        keep: args.keep,
        machine: machine_params(&args.machine)?,
    };
    rt.check_run(&params).map_err(exit::classify)?;
    let (kernel, rootfs) = prepare_disks(&rt, &args.image, &args.machine, global)?;
    let interrupt = Interrupt::watch(global, &name)?;
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
    if interrupt.stop() {
        if global.json {
            let line = json!({
                "type": "interrupted",
                "name": name,
                "exitCode": exit::INTERRUPTED,
                "exitCodeSource": exit::Source::Microagent.as_str(),
            });
            println!("{line}");
        }
        eprintln!("microagent: interrupted; the VM was stopped and removed");
        return Ok(exit::INTERRUPTED);
    }
    let output = output.map_err(exit::classify)?;
    let (code, source) = exit::code_of(&output.result, output.setup_failed.is_some());
    if global.json {
        let setup = output
            .setup_failed
            .as_ref()
            .map(|s| json!({"index": s.index, "command": s.command}));
        print_result(
            &name,
            &output.result,
            (code, source),
            json!({"timedOut": output.result.timed_out, "setupFailed": setup}),
        );
    } else if output.result.timed_out {
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

/// Ctrl-C, SIGTERM or SIGHUP during a run: end the VM so the run cleans up
/// (removes the workspace unless --keep) instead of dying mid-way. The
/// watcher keeps trying until the run ends, since the signal may arrive
/// before the VM exists.
struct Interrupt {
    hit: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: signal_hook::iterator::Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Interrupt {
    fn watch(global: &Global, name: &str) -> anyhow::Result<Interrupt> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        use std::sync::atomic::{AtomicBool, Ordering};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        let handle = signals.handle();
        let hit = std::sync::Arc::new(AtomicBool::new(false));
        let rt = quiet_runtime(global)?;
        let (flag, name) = (hit.clone(), name.to_owned());
        let thread = std::thread::spawn(move || {
            if signals.forever().next().is_none() {
                return; // closed: the run ended first
            }
            flag.store(true, Ordering::SeqCst);
            while !signals.is_closed() {
                let _ = rt.abort_run(&name);
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
        Ok(Interrupt {
            hit,
            handle,
            thread: Some(thread),
        })
    }

    /// Stops watching; returns whether a signal arrived.
    fn stop(mut self) -> bool {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.hit.load(std::sync::atomic::Ordering::SeqCst)
    }
}
