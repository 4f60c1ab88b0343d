//! The PID 1 chores: filesystems, device links, hostname, loopback, the boot
//! spec, extra disks, placed files, and power-off.

use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use vmkit_channel::{config_device_from_cmdline, read_config, BootSpec, DiskMount, FileSpec};

use crate::log;

/// Mounts /proc, /sys, /dev, /dev/pts, /dev/shm, /run and /tmp (skipping any
/// already mounted, e.g. /dev by CONFIG_DEVTMPFS_MOUNT), then the /dev links.
/// Failures are logged, not fatal: a command may still work without /dev/shm.
pub fn mount_basics() {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let table: [(&str, &str, &str, MsFlags, Option<&str>); 7] = [
        (
            "proc",
            "/proc",
            "proc",
            nosuid_nodev | MsFlags::MS_NOEXEC,
            None,
        ),
        (
            "sysfs",
            "/sys",
            "sysfs",
            nosuid_nodev | MsFlags::MS_NOEXEC,
            None,
        ),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("gid=5,mode=0620,ptmxmode=0666"),
        ),
        (
            "tmpfs",
            "/dev/shm",
            "tmpfs",
            nosuid_nodev,
            Some("mode=1777"),
        ),
        ("tmpfs", "/run", "tmpfs", nosuid_nodev, Some("mode=0755")),
        ("tmpfs", "/tmp", "tmpfs", nosuid_nodev, Some("mode=1777")),
    ];
    // Read once, as soon as /proc is there (the first entry mounts it): it
    // tells what the kernel mounted already (devtmpfs with
    // CONFIG_DEVTMPFS_MOUNT); our own mounts need no re-check.
    let mut mountinfo: Option<String> = None;
    for (source, target, fstype, flags, data) in table {
        if mountinfo.is_none() {
            mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok();
        }
        if mountinfo
            .as_deref()
            .is_some_and(|info| lists_mountpoint(info, target))
        {
            continue;
        }
        if let Err(e) = std::fs::create_dir_all(target) {
            log(&format!("mkdir {target}: {e}"));
        }
        if let Err(e) = mount(Some(source), target, Some(fstype), flags, data) {
            log(&format!("mount {fstype} on {target}: {e}"));
        }
    }
    for (link, to) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
        ("/dev/ptmx", "pts/ptmx"),
    ] {
        if std::fs::symlink_metadata(link).is_err() {
            if let Err(e) = symlink(to, link) {
                log(&format!("symlink {link}: {e}"));
            }
        }
    }
}

/// Whether `path` is a mount point according to `mountinfo`, the text of
/// /proc/self/mountinfo.
fn lists_mountpoint(mountinfo: &str, path: &str) -> bool {
    mountinfo
        .lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|mp| mp == path))
}

/// Makes sure fds 0-2 exist: if the kernel found no /dev/console on the root
/// disk, init starts without them, and the first file we open would become
/// "stderr".
pub fn ensure_console() {
    // SAFETY: fcntl(F_GETFD) only queries the descriptor table.
    let missing = unsafe { libc::fcntl(2, libc::F_GETFD) } < 0;
    if !missing {
        return;
    }
    if let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
        for target in 0..3 {
            if fd != target {
                // SAFETY: `fd` is open; dup2 onto 0-2, which are unused.
                unsafe {
                    libc::dup2(fd, target);
                }
            }
        }
        if fd > 2 {
            // SAFETY: `fd` is ours and duplicated above.
            unsafe {
                libc::close(fd);
            }
        }
    }
}

/// Sets the hostname and, when missing, a matching /etc/hosts.
pub fn set_hostname(name: &str) {
    if let Err(e) = nix::unistd::sethostname(name) {
        log(&format!("sethostname {name}: {e}"));
    }
    if !Path::new("/etc/hosts").exists() {
        let _ = std::fs::write(
            "/etc/hosts",
            format!("127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t{name}\n"),
        );
    }
}

/// Sets the wall clock (a guest restored from a snapshot wakes with the
/// time it was saved at).
pub fn set_clock_ns(ns_since_epoch: u64) {
    let t = nix::sys::time::TimeSpec::new(
        (ns_since_epoch / 1_000_000_000) as i64,
        (ns_since_epoch % 1_000_000_000) as i64,
    );
    if let Err(e) = nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, t) {
        log(&format!("setting the clock: {e}"));
    }
}

/// Brings `lo` up; the kernel then gives it 127.0.0.1 itself.
pub fn loopback_up() -> io::Result<()> {
    crate::network::interface_up("lo")
}

/// Reads the boot spec from the device named on the kernel command line, or,
/// failing that, from the first virtio disk carrying the config magic.
pub fn load_boot_spec() -> Result<BootSpec, String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if let Some(dev) = config_device_from_cmdline(&cmdline) {
        let f = std::fs::File::open(dev).map_err(|e| format!("config disk {dev}: {e}"))?;
        return read_config(f).map_err(|e| format!("config disk {dev}: {e}"));
    }
    let mut names: Vec<String> = std::fs::read_dir("/sys/block")
        .map_err(|e| format!("/sys/block: {e}"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("vd") && n != "vda")
        .collect();
    names.sort();
    for n in names {
        if let Ok(f) = std::fs::File::open(format!("/dev/{n}")) {
            if let Ok(spec) = read_config(f) {
                return Ok(spec);
            }
        }
    }
    Err("no microagent.config= on the kernel command line and no config disk found".into())
}

/// The boot spec again, after a restore from a snapshot: the host wrote
/// the new workspace's spec (its hostname) to the config disk, but this
/// guest's page cache still holds the old blocks, so they are dropped
/// first (BLKFLSBUF).
pub fn reload_boot_spec() -> Result<BootSpec, String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let dev = config_device_from_cmdline(&cmdline)
        .ok_or("no microagent.config= on the kernel command line")?;
    let f = std::fs::File::open(dev).map_err(|e| format!("config disk {dev}: {e}"))?;
    /// `_IO(0x12, 97)`: flush the block device's buffers.
    const BLKFLSBUF: libc::c_ulong = 0x1261;
    // SAFETY: BLKFLSBUF takes no argument; the descriptor is open and ours.
    unsafe {
        libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&f), BLKFLSBUF as _, 0);
    }
    read_config(f).map_err(|e| format!("config disk {dev}: {e}"))
}

/// Mounts the extra disks in order; stops at the first failure.
pub fn mount_disks(disks: &[DiskMount]) -> Result<(), String> {
    for d in disks {
        std::fs::create_dir_all(&d.mountpoint)
            .map_err(|e| format!("mkdir {}: {e}", d.mountpoint))?;
        let mut flags = MsFlags::empty();
        if d.read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        let fstype = d.fs_type.as_deref().unwrap_or("ext4");
        mount(
            Some(d.device.as_str()),
            d.mountpoint.as_str(),
            Some(fstype),
            flags,
            None::<&str>,
        )
        .map_err(|e| format!("mounting {} ({fstype}) at {}: {e}", d.device, d.mountpoint))?;
    }
    Ok(())
}

/// Writes the boot spec's files.
pub fn place_files(files: &[FileSpec]) -> Result<(), String> {
    for f in files {
        let path = Path::new(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
        }
        std::fs::write(path, &f.content).map_err(|e| format!("writing {}: {e}", f.path))?;
        let mode = f.mode.unwrap_or(0o644);
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {}: {e}", f.path))?;
    }
    Ok(())
}

/// `_IOWR('X', 119, int)` and `_IOWR('X', 120, int)` from linux/fs.h (not in libc).
const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;

/// Makes every read-write extra disk complete and consistent on its device,
/// journal included, so the host may kill the VM the moment it has the
/// result without losing or tearing what the commands wrote there. A freeze
/// (then thaw) checkpoints the journal, so even tools that do not replay it
/// (debugfs) see the data; where freezing is unsupported, syncfs.
pub fn flush_disks(disks: &[DiskMount]) {
    for d in disks.iter().filter(|d| !d.read_only) {
        let Ok(dir) = std::fs::File::open(&d.mountpoint) else {
            continue;
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&dir);
        // SAFETY: FIFREEZE/FITHAW take no argument memory; `fd` is an open
        // directory on the filesystem for the duration of the calls.
        unsafe {
            if libc::ioctl(fd, FIFREEZE, 0) == 0 {
                libc::ioctl(fd, FITHAW, 0);
            } else {
                libc::syncfs(fd);
            }
        }
    }
}

/// Milliseconds since boot, from /proc/uptime.
pub fn uptime_ms() -> Option<u64> {
    uptime_us().map(|us| us / 1000)
}

/// Microseconds since boot (CLOCK_BOOTTIME, which /proc/uptime reports),
/// readable before /proc is mounted.
pub fn uptime_us() -> Option<u64> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).ok()?;
    Some(t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
}

/// Stops everything, flushes disks and ends the VM. Never returns.
pub fn poweroff(disks: &[DiskMount]) -> ! {
    // SAFETY: kill(-1) signals every process but init itself.
    unsafe {
        libc::kill(-1, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    // The reaper collects them; wait until none is left or time is up.
    while Instant::now() < deadline && has_other_processes() {
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above.
    unsafe {
        libc::kill(-1, libc::SIGKILL);
    }
    nix::unistd::sync();
    for d in disks.iter().rev() {
        let _ = umount2(d.mountpoint.as_str(), MntFlags::MNT_DETACH);
    }
    let _ = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    );
    nix::unistd::sync();
    use nix::sys::reboot::{reboot, RebootMode};
    // Without ACPI power-off (Firecracker, which says so on the command
    // line, or any VM without ACPI) a power-off halts the CPU and the VM
    // lingers; a reboot ends it there (reboot=k), and under QEMU
    // (-no-reboot) too.
    let reboot_asked = std::fs::read_to_string("/proc/cmdline").is_ok_and(|c| {
        c.split_ascii_whitespace()
            .any(|a| a == vmkit_channel::CMDLINE_EXIT_BY_REBOOT)
    });
    let mode = if !reboot_asked && Path::new("/sys/firmware/acpi").exists() {
        RebootMode::RB_POWER_OFF
    } else {
        RebootMode::RB_AUTOBOOT
    };
    let e = reboot(mode);
    log(&format!("{mode:?} failed: {e:?}"));
    let _ = reboot(RebootMode::RB_AUTOBOOT);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Whether any user process other than PID 1 remains (kernel threads have
/// an empty cmdline and are not ours to stop).
fn has_other_processes() -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(|e| e.ok()?.file_name().into_string().ok()?.parse::<u32>().ok())
        .filter(|&pid| pid != 1)
        .any(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty()))
}
