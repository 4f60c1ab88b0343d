//! `microagent doctor`: what this host can do, checked for real, each check
//! with a one-line remedy.

use std::path::Path;

use serde::Serialize;
use vmkit_host::{probe_kvm, tool_version, KvmVerdict, Tool};
use vmkit_protocol::{
    Accelerator, Backend, BackendKind, CheckItem, CheckStatus, HostInfo, ProtocolError,
};

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
    if cfg!(target_os = "macos") {
        return doctor_macos(state_dir);
    }
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
        checks.push(tool_check(tool, remedy));
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

/// macOS: the apple-vf backend. The Swift supervisor is asked for its own
/// view (Virtualization.framework usable, the binary signed with the
/// virtualization entitlement); the root disk tools and the arm64 kernel
/// are checked here.
fn doctor_macos(state_dir: &Path) -> DoctorReport {
    let client = vmkit_apple_vf::AppleVfBackend::new();
    let host = client.host();
    let mut checks = apple_vf_checks(&host, &client.program());
    for tool in [Tool::Mke2fs, Tool::Debugfs] {
        checks.push(tool_check(
            tool,
            "brew install e2fsprogs, and put its sbin folder on PATH",
        ));
    }
    let kernels = vmkit_kernel::KernelStore::new(state_dir);
    checks.push(match kernels.installed() {
        Ok(Some(k)) => ok("kernel", format!("installed at {}", k.vmlinux_path().display())),
        _ => item(
            "kernel",
            CheckStatus::Warn,
            format!("none at {}", kernels.vmlinux_path().display()),
            "build the arm64 kernel on Linux (`microagent kernel build --arch aarch64`) and `microagent kernel install --from Image`",
        ),
    });
    let (accelerator, reason) = match &host {
        Ok(h) => (h.accelerator, h.accelerator_reason.clone()),
        Err(e) => (Accelerator::None, e.message.clone()),
    };
    let ready = checks.iter().all(|c| c.status != CheckStatus::Fail);
    DoctorReport {
        checks,
        backend: BackendKind::AppleVf,
        accelerator,
        reason,
        ready,
    }
}

/// The apple-vf checks from the supervisor's `host` answer: whether the
/// supervisor answered at all, then each check it made itself (the
/// framework, the entitlement).
pub fn apple_vf_checks(host: &Result<HostInfo, ProtocolError>, program: &Path) -> Vec<CheckItem> {
    match host {
        Ok(h) => {
            let mut checks = vec![ok(
                "applevf-supervisor",
                format!("{} answers host", program.display()),
            )];
            checks.extend(h.checks.iter().cloned());
            checks
        }
        Err(e) => vec![item(
            "applevf-supervisor",
            CheckStatus::Fail,
            e.message.clone(),
            "build and sign it with scripts/build-applevf-supervisor, then put it on PATH or set MICROAGENT_APPLEVF_SUPERVISOR",
        )],
    }
}

/// A required tool: its version where found, a failure with `remedy` where not.
fn tool_check(tool: Tool, remedy: &str) -> CheckItem {
    match tool_version(tool) {
        Some((path, version)) => ok(tool.program(), format!("{version} ({})", path.display())),
        None => item(
            tool.program(),
            CheckStatus::Fail,
            "not found in PATH".into(),
            remedy,
        ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use vmkit_protocol::ErrorCode;

    #[test]
    fn apple_vf_checks_carry_the_supervisors_own_and_say_when_it_is_missing() {
        let host = Ok(HostInfo {
            os: "macos".into(),
            arch: "aarch64".into(),
            accelerator: Accelerator::Hvf,
            accelerator_reason: "Virtualization.framework".into(),
            checks: vec![item(
                "entitlement",
                CheckStatus::Fail,
                "not signed with com.apple.security.virtualization".into(),
                "codesign ...",
            )],
        });
        let checks = apple_vf_checks(
            &host,
            Path::new("/usr/local/bin/microagent-applevf-supervisor"),
        );
        let names: Vec<(&str, CheckStatus)> =
            checks.iter().map(|c| (c.name.as_str(), c.status)).collect();
        assert_eq!(
            names,
            [
                ("applevf-supervisor", CheckStatus::Ok),
                ("entitlement", CheckStatus::Fail)
            ]
        );
        let missing = Err(ProtocolError::new(
            ErrorCode::Unavailable,
            "cannot start it",
        ));
        let checks = apple_vf_checks(&missing, Path::new("x"));
        assert_eq!(checks[0].status, CheckStatus::Fail);
        assert!(checks[0]
            .remedy
            .as_deref()
            .unwrap()
            .contains("build-applevf-supervisor"));
    }
}
