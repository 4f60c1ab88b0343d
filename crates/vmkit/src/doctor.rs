//! `microagent doctor`: what this host can do, checked for real, each check
//! with a one-line remedy.

use std::path::Path;

use serde::Serialize;
use vmkit_host::{probe_kvm, tool_version, KvmVerdict, Tool};
use vmkit_protocol::{Accelerator, BackendKind, CheckItem, CheckStatus, HostInfo, ProtocolError};

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

/// Probes the host for the backend `run` would use by default. `state_dir`
/// is where the kernel would be installed.
pub fn doctor(state_dir: &Path) -> DoctorReport {
    doctor_for(state_dir, None)
}

/// Probes the host for the `requested` backend (the host's default when
/// `None`), reached through its [`crate::Driver`] as `run` would reach it.
pub fn doctor_for(state_dir: &Path, requested: Option<BackendKind>) -> DoctorReport {
    let choice = match crate::select_backend(requested) {
        Ok(choice) => choice,
        Err(e) => {
            let kind = requested.unwrap_or(BackendKind::Qemu);
            return DoctorReport {
                checks: vec![item(
                    "backend",
                    CheckStatus::Fail,
                    e.message.clone(),
                    "use a backend this host runs (doctor without --backend shows the default)",
                )],
                backend: kind,
                accelerator: Accelerator::None,
                reason: e.message,
                ready: false,
            };
        }
    };
    let driver = crate::driver_for(choice.kind, None);
    let mut checks = vec![match driver.preflight() {
        Ok(()) => ok("backend", format!("{} ({})", choice.kind, choice.reason)),
        Err(e) => item(
            "backend",
            CheckStatus::Fail,
            format!("{}: {}", choice.kind, e.message),
            "install what the message names",
        ),
    }];
    let host = driver.host();
    if choice.kind == BackendKind::AppleVf {
        let program = vmkit_apple_vf::AppleVfBackend::new().program();
        checks.extend(apple_vf_checks(&host, &program));
        for tool in [Tool::Mke2fs, Tool::Debugfs] {
            checks.push(tool_check(
                tool,
                "brew install e2fsprogs, and put its sbin folder on PATH",
            ));
        }
    } else {
        linux_checks(&mut checks, choice.kind);
    }
    kernel_check(&mut checks, state_dir, choice.kind);
    let (accelerator, reason) = match host {
        Ok(host) => (host.accelerator, host.accelerator_reason),
        Err(e) => (Accelerator::None, e.message),
    };
    let ready = checks.iter().all(|c| c.status != CheckStatus::Fail);
    DoctorReport {
        checks,
        backend: choice.kind,
        accelerator,
        reason,
        ready,
    }
}

/// KVM and the host tools the Linux backends need.
fn linux_checks(checks: &mut Vec<CheckItem>, backend: BackendKind) {
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

    let mut required = vec![
        (Tool::Mke2fs, "apt-get install e2fsprogs"),
        (Tool::Debugfs, "apt-get install e2fsprogs"),
    ];
    if backend == BackendKind::Qemu {
        required.extend([
            (Tool::Qemu, "apt-get install qemu-system-x86"),
            (
                Tool::VhostDeviceVsock,
                "cargo install --locked vhost-device-vsock",
            ),
        ]);
    }
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
    checks.push(match tool_version(Tool::Virtiofsd) {
        Some((path, version)) => ok("virtiofsd", format!("{version} ({})", path.display())),
        None => item(
            "virtiofsd",
            CheckStatus::Warn,
            "not found in PATH: host folders as volumes (-v) do not work with qemu".into(),
            "cargo install --locked virtiofsd (needs libseccomp-dev, libcap-ng-dev)",
        ),
    });
    // Needed for --backend firecracker, optional otherwise.
    let missing = if backend == BackendKind::Firecracker {
        CheckStatus::Fail
    } else {
        CheckStatus::Warn
    };
    checks.push(match tool_version(Tool::Firecracker) {
        Some((path, version)) if kvm.usable() => {
            ok("firecracker", format!("{version} ({})", path.display()))
        }
        Some((path, version)) => item(
            "firecracker",
            missing,
            format!("{version} ({}), but KVM is not usable", path.display()),
            "the firecracker backend needs hardware KVM; use the qemu backend here",
        ),
        None => item(
            "firecracker",
            missing,
            "not found in PATH (needed only for --backend firecracker)".into(),
            "install a firecracker release binary into PATH to use --backend firecracker",
        ),
    });
    checks.push(tap_check());
}

/// Whether a kernel is installed (else `run` builds one first).
fn kernel_check(checks: &mut Vec<CheckItem>, state_dir: &Path, backend: BackendKind) {
    let kernels = vmkit_kernel::KernelStore::new(state_dir);
    let build = if backend == BackendKind::AppleVf {
        "build the arm64 kernel on Linux (`microagent kernel build --arch aarch64`) and `microagent kernel install --from Image`"
    } else {
        "run `microagent kernel build` (about 5 minutes on 2 cores); `run` also builds it on first use"
    };
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

/// Whether the firecracker backend's NIC can be made here (the qemu
/// backend needs none): a real TAP with its packet socket and nftables
/// ingress chain is set up and removed again, as the network helper does.
fn tap_check() -> CheckItem {
    let name = format!("madoc{}", std::process::id() % 1_000_000);
    match vmkit_net::tap::TapLink::create(&name) {
        Ok(tap) => {
            drop(tap);
            ok(
                "tap",
                format!("a TAP device, a packet socket on it and its nftables ingress chain can be made here (tried {name}); the firecracker backend's NIC works"),
            )
        }
        Err(e) => item(
            "tap",
            CheckStatus::Warn,
            format!("{e} (only --backend firecracker needs it)"),
            "run as root, or with CAP_NET_ADMIN and CAP_NET_RAW (the network helper needs both: setcap cap_net_admin,cap_net_raw+ep microagent-net); install nftables",
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
    fn doctor_reports_the_backend_it_was_asked_about() {
        let dir = tempfile::tempdir().unwrap();
        let firecracker = doctor_for(dir.path(), Some(BackendKind::Firecracker));
        assert_eq!(firecracker.backend, BackendKind::Firecracker);
        assert!(firecracker.checks.iter().any(|c| c.name == "firecracker"));
        assert!(!firecracker
            .checks
            .iter()
            .any(|c| c.name == "qemu-system-x86_64"));
        let qemu = doctor_for(dir.path(), Some(BackendKind::Qemu));
        assert_eq!(qemu.backend, BackendKind::Qemu);
        assert_ne!(qemu.accelerator, Accelerator::None);
        if cfg!(target_os = "linux") {
            // apple-vf is reached the same way, and refused here with a reason.
            let vf = doctor_for(dir.path(), Some(BackendKind::AppleVf));
            assert!(!vf.ready);
            assert!(vf.reason.contains("does not run on linux"), "{}", vf.reason);
        }
    }

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
