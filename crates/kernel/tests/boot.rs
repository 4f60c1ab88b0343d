//! Boots the installed guest kernel under QEMU TCG (`-M microvm`, the
//! backend's machine options and command line) into a trivial init that
//! prints a marker and powers off. `scripts/setup` installs the kernel;
//! a missing kernel, QEMU or busybox fails the test rather than skipping.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmkit_kernel::boot;

const MARKER: &str = "MICROAGENT-KERNEL-TEST-OK";
/// A boot takes about a second here; the margin is for slow CI machines.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

fn tiny_root(dir: &Path) -> std::path::PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::create_dir_all(tree.join("dev")).unwrap();
    std::fs::copy(
        vmkit_testkit::kernel::busybox_static(),
        tree.join("bin/busybox"),
    )
    .unwrap();
    let init = tree.join("init");
    std::fs::write(
        &init,
        format!("#!/bin/busybox sh\n/bin/busybox echo {MARKER} $(/bin/busybox uname -r)\n/bin/busybox poweroff -f\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
    let image = dir.join("root.ext4");
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&tree)
        .arg(&image)
        .arg("16M")
        .output()
        .expect("mke2fs runs (scripts/setup installs e2fsprogs)");
    assert!(
        out.status.success(),
        "mke2fs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    image
}

/// Boots once; returns the serial console output and the boot time.
fn boot(cpus: u32) -> (String, Duration) {
    let kernel = vmkit_testkit::kernel::kernel_path();
    let dir = tempfile::tempdir().unwrap();
    let image = tiny_root(dir.path());
    let console = dir.path().join("console.log");
    let cmdline = format!(
        "{} root=/dev/vda ro init=/init",
        boot::kernel_cmdline_base(true)
    );
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-M", boot::qemu_microvm_machine(), "-accel", "tcg"])
        .args(["-cpu", boot::qemu_cpu_model(), "-m", "256M"])
        .args(["-smp", &cpus.to_string()])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&kernel)
        .args(["-append", &cmdline])
        .arg("-drive")
        .arg(format!(
            "id=root,file={},format=raw,if=none,readonly=on",
            image.display()
        ))
        .args(["-device", "virtio-blk-device,drive=root"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 starts (scripts/setup installs qemu-system-x86)");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > BOOT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&console).unwrap_or_default();
            panic!("QEMU did not exit within {BOOT_TIMEOUT:?}; console:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(
        status.success(),
        "QEMU exited with {status}; console:\n{log}"
    );
    (log, elapsed)
}

#[test]
fn boots_to_init_and_powers_off_under_tcg() {
    let (log, elapsed) = boot(1);
    let line = log
        .lines()
        .find(|l| l.starts_with(MARKER))
        .unwrap_or_else(|| panic!("no marker on the console:\n{log}"));
    assert!(
        line.trim_end().ends_with("-microagent"),
        "uname -r is not ours: {line}"
    );
    assert!(log.contains("reboot: Power down"), "{log}");
    eprintln!("booted and powered off in {elapsed:?}");
}

#[test]
fn boots_with_two_vcpus_keeping_the_tsc_clocksource() {
    let (log, _) = boot(2);
    assert!(log.contains(MARKER), "no marker on the console:\n{log}");
    assert!(log.contains("smp: Brought up 1 node, 2 CPUs"), "{log}");
    // Without tsc=reliable the kernel marks the TSC unstable with two TCG
    // vCPUs and keeps time with 4 ms jiffies.
    assert!(!log.contains("Marking TSC unstable"), "{log}");
}
