//! `microagent kernel ...`: build, install, check and list guest kernels.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use vmkit::kernel::{BuildEvent, BuildOptions, BuildSource, InstalledKernel, KernelStore};

use crate::cli::Global;

#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// Build the guest kernel from source and install it.
    ///
    /// Builds a minimal kernel with everything microagent needs built in (no
    /// modules) from Debian's linux-source-6.1 package, or from --source:
    /// x86_64 by default (this host's architecture), or `--arch aarch64` for
    /// arm64 guests (QEMU -M virt, Apple silicon), cross-compiled with
    /// Debian's gcc-aarch64-linux-gnu. Takes a few minutes; the log is
    /// <state>/kernels/build.log.
    /// A fast no-op when the installed kernel was already built from the
    /// same source and config fragment (use --force to rebuild).
    Build(BuildArgs),
    /// Install your own vmlinux (an uncompressed x86_64 ELF kernel with a
    /// PVH entry note, e.g. built with CONFIG_PVH=y).
    Install {
        /// The vmlinux to copy into the state folder (for aarch64: an
        /// uncompressed arm64 Image).
        #[arg(long, value_name = "PATH")]
        from: PathBuf,
        /// The guest architecture it is for.
        #[arg(long, value_name = "ARCH", value_parser = ARCHES)]
        arch: Option<String>,
    },
    /// Verify the installed kernel against its recorded sha256 and report
    /// what is installed. Exits 1 when it is missing or does not match.
    Check {
        /// The guest architecture to check.
        #[arg(long, value_name = "ARCH", value_parser = ARCHES)]
        arch: Option<String>,
    },
    /// List installed kernels.
    List,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The guest architecture: x86_64 (default on x86_64 hosts) or aarch64.
    #[arg(long, value_name = "ARCH", value_parser = ARCHES)]
    arch: Option<String>,
    /// Build from this kernel source tarball or clean source tree.
    #[arg(long, value_name = "PATH", conflicts_with = "debian")]
    source: Option<PathBuf>,
    /// Build from Debian's linux-source-6.1 package (the default).
    #[arg(long)]
    debian: bool,
    /// Rebuild even if an up-to-date kernel is installed.
    #[arg(long)]
    force: bool,
    /// Parallel compile jobs (default: number of CPUs).
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// Keep the build tree under <state>/kernels/ for inspection.
    #[arg(long)]
    keep_build_dir: bool,
}

/// The guest architectures kernels are built for.
const ARCHES: [&str; 2] = ["x86_64", "aarch64"];

fn store_for(global: &Global, arch: Option<&str>) -> KernelStore {
    match arch {
        Some(arch) => KernelStore::with_arch(&global.state_dir, arch),
        None => KernelStore::new(&global.state_dir),
    }
}

pub fn run(cmd: KernelCommand, global: &Global) -> anyhow::Result<u8> {
    match cmd {
        KernelCommand::Build(args) => build(&store_for(global, args.arch.as_deref()), args, global),
        KernelCommand::Install { from, arch } => {
            let k = store_for(global, arch.as_deref()).install_from(&from)?;
            print_kernel(&k, global, "installed");
            Ok(0)
        }
        KernelCommand::Check { arch } => {
            let report = store_for(global, arch.as_deref()).check()?;
            if global.json {
                crate::output::print_typed("kernelCheck", &report)?;
            } else if report.ok {
                let m = report
                    .manifest
                    .as_ref()
                    .context("a passing check has a manifest")?;
                println!(
                    "ok: {} {} ({}), sha256 {}{}",
                    report.vmlinux.display(),
                    m.version.as_deref().unwrap_or("unknown version"),
                    m.source.describe(),
                    m.sha256,
                    match report.current_build {
                        Some(false) => "; built from an older config fragment, `microagent kernel build` updates it",
                        _ => "",
                    }
                );
            } else {
                eprintln!(
                    "microagent: kernel check failed: {}",
                    report.problem.as_deref().unwrap_or("unknown problem")
                );
            }
            Ok(if report.ok { 0 } else { 1 })
        }
        KernelCommand::List => {
            let kernels = KernelStore::new(&global.state_dir).list()?;
            if global.json {
                for k in &kernels {
                    crate::output::print_typed("kernel", k)?;
                }
            } else if kernels.is_empty() {
                println!("no kernels installed (run `microagent kernel build`)");
            } else {
                for k in &kernels {
                    let m = k.manifest();
                    println!(
                        "{}\t{}\t{}\t{}\t{}",
                        m.arch,
                        m.version.as_deref().unwrap_or("-"),
                        m.source.describe(),
                        m.installed_at.format("%Y-%m-%d %H:%M:%SZ"),
                        k.vmlinux_path().display()
                    );
                }
            }
            Ok(0)
        }
    }
}

fn build(store: &KernelStore, args: BuildArgs, global: &Global) -> anyhow::Result<u8> {
    let options = BuildOptions {
        source: match args.source {
            Some(p) => BuildSource::Path(p),
            None => BuildSource::Debian,
        },
        force: args.force,
        jobs: args.jobs,
        keep_build_dir: args.keep_build_dir,
    };
    let mut reporter = Reporter::new(global.json);
    let result = store.build(&options, &mut |ev| reporter.event(ev));
    reporter.finish();
    let kernel = result?;
    let verb = if reporter.built {
        "built"
    } else {
        "up to date"
    };
    print_kernel(&kernel, global, verb);
    Ok(0)
}

fn print_kernel(k: &InstalledKernel, global: &Global, verb: &str) {
    if global.json {
        let mut v = serde_json::to_value(k).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("type".into(), "kernel".into());
            obj.insert("status".into(), verb.into());
        }
        println!("{v}");
    } else {
        let m = k.manifest();
        println!(
            "{verb}: {} ({}, {}, sha256 {})",
            k.vmlinux_path().display(),
            m.version.as_deref().unwrap_or("unknown version"),
            m.source.describe(),
            &m.sha256[..16.min(m.sha256.len())]
        );
    }
}

/// Shows build progress: a bar on a terminal, phase lines otherwise, JSON
/// lines with `--json`.
pub(crate) struct Reporter {
    json: bool,
    bar: Option<ProgressBar>,
    built: bool,
    last_tenth: u64,
}

impl Reporter {
    pub(crate) fn new(json: bool) -> Self {
        Reporter {
            json,
            bar: None,
            built: false,
            last_tenth: 0,
        }
    }

    pub(crate) fn event(&mut self, ev: BuildEvent) {
        if self.json {
            let line = match &ev {
                BuildEvent::Started {
                    reason,
                    source,
                    estimate,
                    log,
                } => Some(serde_json::json!({
                    "type": "kernelBuild", "event": "started", "reason": reason,
                    "source": source, "estimateSeconds": estimate.as_secs(), "log": log,
                })),
                BuildEvent::Phase(p) => Some(serde_json::json!({
                    "type": "kernelBuild", "event": "phase", "phase": p.to_string(),
                })),
                BuildEvent::Finished { elapsed } => Some(serde_json::json!({
                    "type": "kernelBuild", "event": "finished",
                    "seconds": (elapsed.as_secs_f64() * 10.0).round() / 10.0,
                })),
                BuildEvent::UpToDate | BuildEvent::Step { .. } => None,
            };
            if let Some(line) = line {
                println!("{line}");
            }
            if matches!(ev, BuildEvent::Finished { .. }) {
                self.built = true;
            }
            return;
        }
        match ev {
            BuildEvent::Started { .. } => eprintln!("{ev}"),
            BuildEvent::Phase(p) => {
                let bar = self.bar.get_or_insert_with(new_bar);
                if bar.is_hidden() {
                    eprintln!("kernel build: {p}");
                }
                bar.set_prefix(p.to_string());
            }
            BuildEvent::Step {
                done,
                estimated_total,
                what,
            } => {
                if let Some(bar) = &self.bar {
                    bar.set_length(estimated_total.max(done));
                    bar.set_position(done);
                    bar.set_message(what);
                    // No terminal (CI logs): a line every tenth instead of
                    // minutes of silence.
                    let tenth = (done * 10 / estimated_total.max(1)).min(9);
                    if bar.is_hidden() && tenth > self.last_tenth {
                        self.last_tenth = tenth;
                        eprintln!(
                            "kernel build: compiling, about {}% ({done}/~{estimated_total} steps)",
                            tenth * 10
                        );
                    }
                }
            }
            BuildEvent::UpToDate => {}
            BuildEvent::Finished { .. } => {
                self.built = true;
                self.finish();
                eprintln!("{ev}");
            }
        }
    }

    pub(crate) fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

fn new_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} kernel build: {prefix} [{bar:30}] {pos}/~{len} {elapsed} {wide_msg}",
        )
        .expect("the template is valid")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
