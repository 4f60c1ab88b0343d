//! The harness every end-to-end test of the CLI shares: a private state
//! folder, the kernel `scripts/setup` built, a busybox image from Debian's
//! busybox-static, and the real `microagent` binary.

#![allow(dead_code)] // Each test file uses a different part.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

pub struct Env {
    pub state: tempfile::TempDir,
    pub kernel: PathBuf,
    pub image: String,
}

/// The busybox OCI layout, written once per test binary.
fn busybox_layout() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("microagent-e2e-busybox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        vmkit_testkit::images::busybox_oci_layout(&dir, "latest");
        dir
    })
}

impl Env {
    pub fn new() -> Env {
        // Short prefix: socket paths live under it.
        let state = tempfile::Builder::new()
            .prefix("ma")
            .tempdir_in("/tmp")
            .unwrap();
        Env {
            state,
            kernel: vmkit_testkit::kernel::kernel_path(),
            image: format!("oci-layout:{}:latest", busybox_layout().display()),
        }
    }

    /// `microagent` with this environment's state folder.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_microagent"));
        c.env("MICROAGENT_STATE_DIR", self.state.path())
            .env_remove("MICROAGENT_LOG")
            .stdin(Stdio::null());
        c
    }

    /// `microagent run --image <busybox> --kernel <kernel> ARGS...`, not started.
    pub fn run_command(&self, args: &[&str]) -> Command {
        let mut c = self.cmd();
        c.arg("run")
            .args(["--image", &self.image])
            .arg("--kernel")
            .arg(&self.kernel)
            .args(args);
        c
    }

    /// Runs `microagent run ... ARGS...` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_command(args).output().unwrap()
    }

    /// Starts a run whose command prints `started` first, and returns once
    /// it has: the guest command is then running.
    pub fn spawn_started(&self, args: &[&str]) -> std::process::Child {
        let mut child = self
            .run_command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut buf = [0u8; 8];
        std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut buf).unwrap();
        assert_eq!(&buf, b"started\n");
        child
    }

    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.cmd().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "microagent {args:?} failed: {}",
            describe(&out)
        );
        out
    }

    pub fn state_path(&self) -> &Path {
        self.state.path()
    }
}

pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

/// Every process whose command line mentions `needle` (e.g. a state dir).
pub fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) && !cmdline.contains("cargo") {
            // Zombies have an empty cmdline, so anything here is running.
            found.push((pid, cmdline));
        }
    }
    found
}

/// The `data` of every `--json` line of `kind` (`stdout`, `stderr`), joined.
pub fn stream(lines: &[Value], kind: &str) -> String {
    lines
        .iter()
        .filter(|l| l["type"] == kind)
        .map(|l| l["data"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The states of the `--json` event lines, in order.
pub fn event_states(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l["type"] == "event")
        .map(|l| l["state"].as_str().unwrap_or_default().to_owned())
        .collect()
}
