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
            .env("MICROAGENT_NET", vmkit_testkit::net::helper_binary())
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
        wait_started(&mut child);
        child
    }

    /// `microagent create NAME --image <busybox> --kernel <kernel> EXTRA...`, which must succeed.
    pub fn create(&self, name: &str, extra: &[&str]) {
        let out = self
            .cmd()
            .args(["create", name, "--image", &self.image])
            .arg("--kernel")
            .arg(&self.kernel)
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
    }

    /// `microagent exec NAME -- /bin/sh -c SCRIPT`, whatever it exits with.
    pub fn sh(&self, name: &str, script: &str) -> Output {
        self.cmd()
            .args(["exec", name, "--", "/bin/sh", "-c", script])
            .output()
            .unwrap()
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

/// A test that fails (panics) between `create` and `delete` would leave
/// its kept workspaces running, detached, after the test binary ends: the
/// environment deletes whatever is left in its state folder.
impl Drop for Env {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.state.path().join("workspaces")) else {
            return;
        };
        for entry in entries.flatten() {
            if let Some(name) = entry.file_name().to_str() {
                let _ = self
                    .cmd()
                    .args(["delete", "--force", name])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// Reads the `started\n` a test command prints first: it is running then.
pub fn wait_started(child: &mut std::process::Child) {
    let mut buf = [0u8; 8];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut buf).unwrap();
    assert_eq!(&buf, b"started\n");
}

pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `--json` lines of a command's stdout, each checked against the
/// published schema (docs/json-output.schema.json).
pub fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}"));
            check_schema(&v);
            v
        })
        .collect()
}

/// The one `--json` line a command printed, checked against the schema.
pub fn json_line(out: &Output) -> Value {
    let mut lines = json_lines(out);
    assert_eq!(lines.len(), 1, "expected one JSON line: {}", describe(out));
    lines.remove(0)
}

/// Panics, naming the rule, when `line` breaks docs/json-output.schema.json.
pub fn check_schema(line: &Value) {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    let validator = VALIDATOR.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/json-output.schema.json"
        );
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema")
    });
    let errors: Vec<String> = validator
        .iter_errors(line)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "line breaks docs/json-output.schema.json: {line}\n{}",
        errors.join("\n")
    );
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

/// The `data` of every `--json` line of `kind` (`stdout`, `stderr`), joined
/// as text.
pub fn stream(lines: &[Value], kind: &str) -> String {
    String::from_utf8_lossy(&stream_bytes(lines, kind)).into_owned()
}

/// The bytes of one stream, decoded from its `--json` lines (text, or
/// base64 with `"encoding":"base64"`; docs/json-output.md).
pub fn stream_bytes(lines: &[Value], kind: &str) -> Vec<u8> {
    use base64::Engine as _;
    let mut out = Vec::new();
    for l in lines.iter().filter(|l| l["type"] == kind) {
        let data = l["data"].as_str().unwrap_or_default();
        match l.get("encoding") {
            Some(e) => {
                assert_eq!(e, "base64", "unknown encoding: {l}");
                out.extend(
                    base64::engine::general_purpose::STANDARD
                        .decode(data)
                        .unwrap_or_else(|err| panic!("bad base64 in {l}: {err}")),
                );
            }
            None => out.extend_from_slice(data.as_bytes()),
        }
    }
    out
}

/// The states of the `--json` event lines, in order.
pub fn event_states(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l["type"] == "event")
        .map(|l| l["state"].as_str().unwrap_or_default().to_owned())
        .collect()
}
