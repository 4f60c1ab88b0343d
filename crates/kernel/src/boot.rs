//! How to boot the guest kernel on each backend: machine options and the
//! kernel command line, and why.
//!
//! # QEMU (`-M microvm`), TCG or KVM
//!
//! ```text
//! qemu-system-x86_64 -M microvm,acpi=on,pit=on,pic=on,rtc=on
//!     -accel tcg -cpu max            # KVM: -accel kvm -cpu host
//!     -m 512M -smp N -nodefaults -no-user-config -display none -no-reboot
//!     -kernel ~/.microagent/kernels/x86_64/vmlinux
//!     -append "console=ttyS0 reboot=t panic=-1 tsc_early_khz=<host TSC kHz>
//!              tsc=reliable root=/dev/vda rw init=..."
//!     -serial file:console.log (or chardev)
//!     -drive id=root,file=root.ext4,format=raw,if=none
//!     -device virtio-blk-device,drive=root ...
//! ```
//!
//! - [`qemu_microvm_machine`]: `acpi=on` because microvm powers off through
//!   ACPI (the guest's `reboot(POWER_OFF)` ends QEMU) and describes its
//!   virtio-mmio devices in ACPI; with `acpi=off` QEMU instead appends
//!   `virtio_mmio.device=` to the command line, which this kernel also
//!   accepts, but power-off then halts instead of exiting. `rtc=on` gives
//!   the guest the wall-clock time at boot (TLS needs a sane date);
//!   `pit=on` lets the kernel calibrate the TSC when no frequency is given.
//! - [`qemu_cpu_model`]: `max` under TCG (TSC-deadline APIC timer, and the
//!   SSE4.2/POPCNT/AVX that today's userspace binaries assume); `host`
//!   under KVM.
//! - [`kernel_cmdline_base`]: `console=ttyS0`, then `reboot=t` (a guest
//!   reboot triple-faults, which `-no-reboot` turns into QEMU exiting),
//!   `panic=-1` (a panic reboots at once, so QEMU exits instead of
//!   hanging), and [`tsc_kernel_args`]: `tsc_early_khz=<host TSC kHz>
//!   tsc=reliable`, the boot-hang fix explained below. Under TCG the guest
//!   TSC is the host TSC; under KVM (no TSC scaling, as microagent runs
//!   QEMU) it runs at the host TSC rate too, so the same arguments are
//!   right for both accelerators.
//!
//! # Firecracker (KVM)
//!
//! Boot source `kernel_image_path` = the same `vmlinux`, `boot_args` =
//! [`firecracker_cmdline_base`] plus `root=/dev/vda rw init=...`:
//! `console=ttyS0 reboot=k panic=-1 pci=off`. Firecracker appends
//! `virtio_mmio.device=` entries for its devices itself (this kernel has
//! `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`), `reboot=k` resets through the
//! i8042 port Firecracker watches to stop the VM, and kvm-clock provides
//! the TSC frequency, so no TCG arguments are needed. Firecracker's
//! documented way for a guest to end the VM is a reboot through the i8042
//! (`reboot=k`), not ACPI power-off: a guest init that must work on both
//! backends can always `reboot(RB_AUTOBOOT)`, which ends QEMU too (guest
//! reboot + `-no-reboot`; checked here). The `virtio_mmio.device=` path was
//! checked with QEMU `-M microvm,acpi=off`, which announces its devices the
//! same way (there power-off only halts, which is why QEMU uses `acpi=on`).
//!
//! # The TCG boot hang and its fix
//!
//! Symptom: about 1 boot in 8 stopped for good after "Mountpoint-cache
//! hash table entries" under `-M microvm` with TCG; on a busy host far
//! more (measured here without the fix at load average 4-6 on 2 cores:
//! 2 of 20, then 14 of 20 and 19 of 20 boots hung).
//!
//! Cause, from the hung guests' serial logs and registers:
//! 1. microvm's ACPI tables are "hardware-reduced", so Linux
//!    (`acpi_generic_reduced_hw_init`) skips the legacy PIC and the PIT
//!    tick, and microvm has neither HPET nor ACPI PM timer. The only timer
//!    left is the local APIC TSC-deadline timer, which needs the TSC
//!    frequency.
//! 2. Without kvm-clock the kernel measures that frequency against the PIT
//!    (`quick_pit_calibrate`, then `pit_calibrate_tsc`). Those loops reject
//!    any sample where reading the PIT took "too long", treating it as an
//!    SMI. Under TCG every port read is an exit into QEMU and the vCPU
//!    thread competes with the host's other work, so now and then every
//!    attempt is rejected: every hung boot logged "tsc: Unable to calibrate
//!    against PIT / No reference (HPET/PMTIMER) available / Marking TSC
//!    unstable", and no good boot did.
//! 3. With no TSC frequency there is no tick at all, so `calibrate_delay`
//!    spins forever waiting for jiffies to move (the hung vCPU's RIP was
//!    in `calibrate_delay`, interrupts enabled, LAPIC timer masked).
//!    `noapictimer`, `clocksource=hpet`, `lpj=`, `no_timer_check` cannot
//!    help: they all still need a tick or a TSC frequency.
//!
//! Fix: under TCG the guest's `rdtsc` returns the host's TSC, so the host
//! knows the guest's TSC frequency exactly. [`tsc_kernel_args`] measures it
//! once per process and passes `tsc_early_khz=`, which the kernel uses
//! instead of calibrating; the calibration can no longer fail, and the
//! PIT is not needed at all (with `pit=off` the unfixed kernel hangs every
//! time, the fixed one boots every time). `tsc=reliable` is also needed
//! with more than one vCPU: TCG's CPU does not advertise an invariant TSC
//! (QEMU refuses `invtsc` under TCG), so Linux would otherwise mark the TSC
//! unstable and fall back to the 4 ms jiffies clock; the guest TSC really
//! is the host's constant, synchronized TSC.
//!
//! Measured with the fix (`scripts/boot-stress 50`, same busy host):
//! 50 ok, 0 hung, median 0.70 s with 1 vCPU; 50 ok, 0 hung, median 1.08 s
//! with 2 vCPUs. QEMU `-M pc` never hung because its (non-reduced) ACPI
//! brings a PIT tick, HPET and PM timer: the calibration had a fallback.

use std::sync::OnceLock;

/// The QEMU `-M` value for the microvm machine (add `,memory-backend=...`
/// as needed).
pub const QEMU_MICROVM_MACHINE: &str = "microvm,acpi=on,pit=on,pic=on,rtc=on";

/// The QEMU `-M` value; see the module docs for why each option is there.
pub fn qemu_microvm_machine() -> &'static str {
    QEMU_MICROVM_MACHINE
}

/// The QEMU `-cpu` value under TCG (under KVM use `host`).
pub fn qemu_cpu_model() -> &'static str {
    "max"
}

/// The kernel command line every QEMU boot (TCG or KVM) starts with:
/// serial console (when `console`, else `quiet`), reboot/panic behaviour
/// that makes the VM exit, and the TSC arguments that keep TCG boots from
/// hanging ([`tsc_kernel_args`]). Callers append `root=`, `init=` and
/// their own arguments.
pub fn kernel_cmdline_base(console: bool) -> String {
    let mut parts = Vec::new();
    if console {
        parts.push("console=ttyS0");
    } else {
        parts.push("quiet");
    }
    parts.extend(["reboot=t", "panic=-1"]);
    let mut line = parts.join(" ");
    line.push(' ');
    line.push_str(&tsc_kernel_args());
    line
}

/// The kernel command line base for arm64 guests under QEMU `-M virt`:
/// the PL011 console (`ttyAMA0`) and `panic=-1`. No TSC arguments: the
/// architected timer's frequency is in the device tree. A guest reboot or
/// power-off goes through PSCI, which ends QEMU under `-no-reboot`.
pub fn qemu_virt_cmdline_base(console: bool) -> String {
    let console = if console { "console=ttyAMA0" } else { "quiet" };
    format!("{console} panic=-1")
}

/// The QEMU `-M` value for arm64 guests: the `virt` board (GIC, PSCI,
/// PL011, PL031 RTC, a generic ECAM PCI host for the virtio devices).
pub const QEMU_VIRT_MACHINE: &str = "virt";

/// The QEMU `-cpu` value for arm64 guests under TCG: a Cortex-A72
/// (ARMv8.0). `max` would add pointer authentication, whose emulation
/// under TCG makes every function return expensive.
pub fn qemu_aarch64_cpu_model() -> &'static str {
    "cortex-a72"
}

/// The kernel command line base for Firecracker (see the module docs).
pub fn firecracker_cmdline_base(console: bool) -> String {
    let mut parts = Vec::new();
    if console {
        parts.push("console=ttyS0");
    } else {
        parts.push("quiet");
    }
    parts.extend(["reboot=k", "panic=-1", "pci=off"]);
    parts.join(" ")
}

/// `tsc_early_khz=<host TSC kHz> tsc=reliable` (see "The TCG boot hang"
/// in the module docs); part of [`kernel_cmdline_base`]. When the host TSC
/// frequency cannot be known (no invariant TSC, not x86_64), only
/// `tsc=reliable`, and the kernel falls back to calibrating.
pub fn tsc_kernel_args() -> String {
    match host_tsc_khz() {
        Some(khz) => format!("tsc_early_khz={khz} tsc=reliable"),
        None => "tsc=reliable".to_string(),
    }
}

/// The host's TSC frequency in kHz, which is the TCG guest's TSC
/// frequency. `$MICROAGENT_TSC_KHZ` overrides; otherwise measured against
/// the monotonic clock (about 130 ms) once per host boot: the result is
/// kept in a runtime folder (`/run/microagent` for root,
/// `$XDG_RUNTIME_DIR/microagent` otherwise), which is a tmpfs emptied at
/// every reboot, so a VM start does not pay for the measurement again.
/// `None` when the host TSC is not invariant or this is not an x86_64 host.
pub fn host_tsc_khz() -> Option<u64> {
    static KHZ: OnceLock<Option<u64>> = OnceLock::new();
    *KHZ.get_or_init(|| {
        if let Some(v) = std::env::var("MICROAGENT_TSC_KHZ")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|v| plausible_khz(*v))
        {
            return Some(v);
        }
        let cache = tsc_cache_path();
        if let Some(v) = cache.as_deref().and_then(read_tsc_cache) {
            return Some(v);
        }
        let measured = measure::tsc_khz();
        if let (Some(path), Some(v)) = (cache.as_deref(), measured) {
            write_tsc_cache(path, v);
        }
        measured
    })
}

fn tsc_cache_path() -> Option<std::path::PathBuf> {
    let dir = if nix::unistd::getuid().is_root() {
        std::path::PathBuf::from("/run/microagent")
    } else {
        std::path::PathBuf::from(std::env::var_os("XDG_RUNTIME_DIR")?).join("microagent")
    };
    Some(dir.join("host-tsc-khz"))
}

/// Trusts the cache only if it is ours and nobody else could have written it.
fn read_tsc_cache(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.uid() != nix::unistd::getuid().as_raw() || meta.mode() & 0o022 != 0 {
        return None;
    }
    std::fs::read_to_string(path)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|v| plausible_khz(*v))
}

/// Best effort: a cache that cannot be written only costs the next start
/// another measurement.
fn write_tsc_cache(path: &std::path::Path, khz: u64) {
    use std::os::unix::fs::DirBuilderExt;
    let Some(dir) = path.parent() else { return };
    if std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .is_err()
    {
        return;
    }
    let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir) else {
        return;
    };
    if std::io::Write::write_all(&mut tmp, khz.to_string().as_bytes()).is_ok() {
        let _ = tmp.persist(path);
    }
}

/// 100 MHz .. 10 GHz: anything else is a measuring error.
fn plausible_khz(khz: u64) -> bool {
    (100_000..=10_000_000).contains(&khz)
}

#[cfg(target_arch = "x86_64")]
mod measure {
    use std::time::{Duration, Instant};

    /// Median of five 25 ms measurements of TSC ticks per millisecond,
    /// only on hosts whose kernel reports a constant, non-stop TSC (else
    /// the guest's TSC rate is not one number). Each end of a measurement
    /// is known to well under a microsecond, so the result is within a few
    /// parts per million (tens of ppm on a very busy host).
    pub(super) fn tsc_khz() -> Option<u64> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
        let flags = cpuinfo.lines().find(|l| l.starts_with("flags"))?;
        let has = |f: &str| flags.split_whitespace().any(|w| w == f);
        if !has("constant_tsc") || !has("nonstop_tsc") {
            return None;
        }
        let mut samples = Vec::with_capacity(5);
        for _ in 0..5 {
            let (t0, i0) = sample();
            std::thread::sleep(Duration::from_millis(25));
            let (t1, i1) = sample();
            let ns = i1.duration_since(i0).as_nanos();
            if ns == 0 || t1 <= t0 {
                return None;
            }
            samples.push(u128::from(t1 - t0) * 1_000_000 / ns);
        }
        samples.sort_unstable();
        let khz = u64::try_from(samples[2]).ok()?;
        super::plausible_khz(khz).then_some(khz)
    }

    /// A TSC reading paired with `Instant::now()`: the narrowest of many
    /// `rdtsc; now; rdtsc` brackets (a wide one means the thread was
    /// preempted or interrupted in between).
    fn sample() -> (u64, Instant) {
        let mut best: Option<(u64, u64, Instant)> = None;
        for _ in 0..200 {
            let a = rdtsc();
            let now = Instant::now();
            let b = rdtsc();
            let width = b.wrapping_sub(a);
            if best.is_none_or(|(w, _, _)| width < w) {
                best = Some((width, a.wrapping_add(width / 2), now));
            }
            if width < 500 {
                break;
            }
        }
        let (_, tsc, now) = best.expect("the loop runs at least once");
        (tsc, now)
    }

    fn rdtsc() -> u64 {
        // SAFETY: RDTSC has no memory effects and every x86_64 CPU has it;
        // the kernel permits it in user mode unless a process opted out
        // with PR_SET_TSC, which microagent does not do.
        #[allow(unused_unsafe)]
        unsafe {
            core::arch::x86_64::_rdtsc()
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod measure {
    pub(super) fn tsc_khz() -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines() {
        assert!(kernel_cmdline_base(true).starts_with("console=ttyS0 reboot=t panic=-1 "));
        assert!(kernel_cmdline_base(true).ends_with(&tsc_kernel_args()));
        assert!(!kernel_cmdline_base(false).contains("console="));
        assert!(firecracker_cmdline_base(true).contains("reboot=k"));
        assert!(qemu_microvm_machine().starts_with("microvm,"));
        assert!(qemu_microvm_machine().contains("acpi=on"));
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn tsc_args_carry_the_host_tsc_frequency() {
        let args = tsc_kernel_args();
        assert!(args.ends_with("tsc=reliable"), "{args}");
        if let Some(khz) = host_tsc_khz() {
            assert!(plausible_khz(khz));
            assert!(args.contains(&format!("tsc_early_khz={khz}")), "{args}");
        }
    }
}

#[cfg(test)]
mod tsc_cache_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn cache_round_trips_and_distrusts_what_others_could_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/host-tsc-khz");
        write_tsc_cache(&path, 2_599_998);
        assert_eq!(read_tsc_cache(&path), Some(2_599_998));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(
            read_tsc_cache(&path),
            None,
            "world-writable cache is ignored"
        );
        std::fs::write(&path, "12").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            read_tsc_cache(&path),
            None,
            "implausible values are ignored"
        );
        assert_eq!(read_tsc_cache(&dir.path().join("absent")), None);
    }
}
