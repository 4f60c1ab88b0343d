//! `microagent doctor`: what this host can do, checked for real, each check
//! with a one-line remedy.

use std::path::Path;

use serde::Serialize;
use vmkit_host::{probe_kvm, tool_version, KvmVerdict, Tool};
use vmkit_protocol::{Accelerator, BackendKind, CheckItem, CheckStatus};

/// Everything `doctor` found.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DoctorReport {
    /// Each probe's verdict.
    pub checks: Vec<CheckItem>,
    /// The backend `run` would use.
    pub backend: BackendKind,
    /// The accelerator it would use.
    pub accelerator: Accelerator,
    /// Why.
    pub reason: String,
    /// Whether `run` can work at all (no check failed that it needs).
    pub ready: bool,
}

/// Probes the host. `state_dir` is where the kernel would be installed.
pub fn doctor(state_dir: &Path) -> DoctorReport {
    let mut checks = Vec::new();
    let kvm = probe_kvm();
    checks.push(match kvm.verdict {
        KvmVerdict::Usable => ok("kvm", kvm.detail.clone()),
        KvmVerdict::Absent => item(
            "kvm",
            CheckStatus::Warn,
            kvm.detail.clone(),
            "without KVM, QEMU emulates with TCG (slower); enable virtualisation or load kvm_intel/kvm_amd, and make /dev/kvm accessible",
        ),
        KvmVerdict::Pvm => item(
            "kvm",
            CheckStatus::Warn,
            kvm.detail.clone(),
            "nothing to do: microagent uses QEMU with TCG here; use a host with hardware KVM for speed or for Firecracker",
        ),
        KvmVerdict::Broken => item(
            "kvm",
            CheckStatus::Warn,
            kvm.detail.clone(),
            "check dmesg for KVM errors; microagent falls back to QEMU with TCG",
        ),
    });

    let required = [
        (Tool::Qemu, "apt-get install qemu-system-x86"),
        (
            Tool::VhostDeviceVsock,
            "cargo install --locked vhost-device-vsock",
        ),
        (Tool::Mke2fs, "apt-get install e2fsprogs"),
        (Tool::Debugfs, "apt-get install e2fsprogs"),
    ];
    for (tool, remedy) in required {
        checks.push(match tool_version(tool) {
            Some((path, version)) => ok(tool.program(), format!("{version} ({})", path.display())),
            None => item(
                tool.program(),
                CheckStatus::Fail,
                "not found in PATH".into(),
                remedy,
            ),
        });
    }
    // rotatelogs has no version flag; being there is what matters.
    checks.push(match vmkit_host::find_in_path("rotatelogs") {
        Some(path) => ok(
            "rotatelogs",
            format!("{} (caps the guest console log)", path.display()),
        ),
        None => item(
            "rotatelogs",
            CheckStatus::Fail,
            "not found in PATH".into(),
            "apt-get install apache2-utils",
        ),
    });
    checks.push(match tool_version(Tool::Firecracker) {
        Some((path, version)) if kvm.usable() => {
            ok("firecracker", format!("{version} ({})", path.display()))
        }
        Some((path, version)) => item(
            "firecracker",
            CheckStatus::Warn,
            format!("{version} ({}), but KVM is not usable", path.display()),
            "the firecracker backend needs hardware KVM; use the qemu backend here",
        ),
        None => item(
            "firecracker",
            CheckStatus::Warn,
            "not found in PATH (optional: only for --backend firecracker)".into(),
            "install a firecracker release binary into PATH to use --backend firecracker",
        ),
    });

    let kernels = vmkit_kernel::KernelStore::new(state_dir);
    let build = "run `microagent kernel build` (about 5 minutes on 2 cores); `run` also builds it on first use";
    checks.push(match kernels.installed() {
        Ok(Some(k)) => ok(
            "kernel",
            format!("installed at {}", k.vmlinux_path().display()),
        ),
        Ok(None) => item(
            "kernel",
            CheckStatus::Warn,
            format!("none at {}", kernels.vmlinux_path().display()),
            build,
        ),
        Err(e) => item("kernel", CheckStatus::Warn, e.to_string(), build),
    });

    let (accelerator, reason) = vmkit_qemu::choose_accelerator(&kvm);
    let ready = checks.iter().all(|c| c.status != CheckStatus::Fail);
    DoctorReport {
        checks,
        backend: BackendKind::Qemu,
        accelerator,
        reason,
        ready,
    }
}

fn ok(name: &str, detail: String) -> CheckItem {
    CheckItem {
        name: name.into(),
        status: CheckStatus::Ok,
        detail,
        remedy: None,
    }
}

fn item(name: &str, status: CheckStatus, detail: String, remedy: &str) -> CheckItem {
    CheckItem {
        name: name.into(),
        status,
        detail,
        remedy: Some(remedy.into()),
    }
}
