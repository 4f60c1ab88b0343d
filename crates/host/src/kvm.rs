use std::path::Path;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};

/// What the KVM probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmProbe {
    /// The verdict.
    pub verdict: KvmVerdict,
    /// One line on what was seen (for `doctor`).
    pub detail: String,
}

/// Whether a standard guest kernel can run under this host's KVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmVerdict {
    /// A real guest ran the probe code correctly, on hardware virtualisation.
    Usable,
    /// `/dev/kvm` is missing or cannot be opened.
    Absent,
    /// KVM is there but provided by PVM (`kvm_pvm`): standard kernels fail.
    Pvm,
    /// KVM is there but the probe guest did not run correctly.
    Broken,
}

impl KvmProbe {
    /// Whether the QEMU/Firecracker backends should use KVM.
    pub fn usable(&self) -> bool {
        self.verdict == KvmVerdict::Usable
    }
}

/// Guest code, 16-bit real mode at 0x1000:
/// `mov ax, 0x1234; popcnt ax, ax; out 0x10, al; hlt`.
/// POPCNT is one of the instructions PVM was seen to fail on; the port write
/// proves the result came back right (popcount(0x1234) = 5).
const PROBE_CODE: &[u8] = &[
    0xb8, 0x34, 0x12, // mov ax, 0x1234
    0xf3, 0x0f, 0xb8, 0xc0, // popcnt ax, ax
    0xe6, 0x10, // out 0x10, al
    0xf4, // hlt
];
const PROBE_PORT: u16 = 0x10;
const GUEST_ADDR: u64 = 0x1000;
const MEM_SIZE: usize = 0x1000;

/// Probes `/dev/kvm` for real: create a VM and a vCPU, run a few
/// instructions, and check the host is not PVM.
pub fn probe_kvm() -> KvmProbe {
    probe_kvm_at(Path::new("/sys/module/kvm_pvm"))
}

fn probe_kvm_at(pvm_module: &Path) -> KvmProbe {
    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) => {
            return KvmProbe {
                verdict: KvmVerdict::Absent,
                detail: format!("cannot open /dev/kvm: {e}"),
            }
        }
    };
    // PVM may well run our tiny real-mode probe; what fails is a standard
    // kernel's later use of XSAVE state and friends, so its presence alone
    // decides, and no probe guest is run: making a VM costs ~3 ms on every
    // VM start here.
    if pvm_module.exists() {
        return KvmProbe {
            verdict: KvmVerdict::Pvm,
            detail: "/dev/kvm is PVM (module kvm_pvm, software nested virtualisation): a standard guest kernel dies under it (emulation failure on XRSTOR/INT3/POPCNT)".into(),
        };
    }
    match run_probe_guest(&kvm) {
        Ok(()) => KvmProbe {
            verdict: KvmVerdict::Usable,
            detail: format!(
                "/dev/kvm ran a probe guest (API version {})",
                kvm.get_api_version()
            ),
        },
        Err(e) => KvmProbe {
            verdict: KvmVerdict::Broken,
            detail: format!("/dev/kvm opened but a probe guest failed: {e}"),
        },
    }
}

fn run_probe_guest(kvm: &Kvm) -> Result<(), String> {
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    let mem = GuestMem::new(MEM_SIZE)?;
    mem.write(PROBE_CODE);
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: GUEST_ADDR,
        memory_size: MEM_SIZE as u64,
        userspace_addr: mem.addr(),
        flags: 0,
    };
    // SAFETY: `mem` is a live anonymous mapping of MEM_SIZE bytes that
    // outlives `vm` (declared before it is dropped at the end of this
    // function, after the VM fd), and no other slot overlaps it.
    unsafe { vm.set_user_memory_region(region) }
        .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
    let mut vcpu = vm
        .create_vcpu(0)
        .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)
        .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
    let mut regs = vcpu.get_regs().map_err(|e| format!("KVM_GET_REGS: {e}"))?;
    regs.rip = GUEST_ADDR;
    regs.rflags = 2;
    vcpu.set_regs(&regs)
        .map_err(|e| format!("KVM_SET_REGS: {e}"))?;

    let mut saw_out = false;
    // A handful of exits at most; a loop guard keeps a confused VM finite.
    for _ in 0..16 {
        match vcpu.run().map_err(|e| format!("KVM_RUN: {e}"))? {
            VcpuExit::IoOut(PROBE_PORT, data) => {
                if data.first() != Some(&5) {
                    return Err(format!("POPCNT gave {data:?}, expected 5"));
                }
                saw_out = true;
            }
            VcpuExit::Hlt if saw_out => return Ok(()),
            other => return Err(format!("unexpected exit {other:?}")),
        }
    }
    Err("probe guest did not halt".into())
}

/// An anonymous private mapping, unmapped on drop.
struct GuestMem {
    ptr: *mut libc::c_void,
    len: usize,
}

impl GuestMem {
    fn new(len: usize) -> Result<Self, String> {
        // SAFETY: an anonymous mapping with no address hint touches no
        // existing memory; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        Ok(GuestMem { ptr, len })
    }

    fn write(&self, bytes: &[u8]) {
        assert!(bytes.len() <= self.len);
        // SAFETY: the mapping is `len` bytes, writable, and exclusively ours;
        // the assert keeps the copy inside it.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.cast::<u8>(), bytes.len()) }
    }

    fn addr(&self) -> u64 {
        self.ptr as u64
    }
}

impl Drop for GuestMem {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned and nothing
        // references the mapping once the VM using it is gone.
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This workplace's /dev/kvm is PVM; the probe must say so and must not
    /// call it usable. On a hardware host the same test sees `Usable`.
    #[test]
    fn probe_gives_a_verdict_matching_the_host() {
        let probe = probe_kvm();
        let pvm = Path::new("/sys/module/kvm_pvm").exists();
        let dev = Path::new("/dev/kvm").exists();
        match probe.verdict {
            KvmVerdict::Pvm => assert!(pvm, "{probe:?}"),
            KvmVerdict::Usable => assert!(dev && !pvm, "{probe:?}"),
            KvmVerdict::Absent => assert!(!dev || Kvm::new().is_err(), "{probe:?}"),
            KvmVerdict::Broken => assert!(dev && !pvm, "{probe:?}"),
        }
        assert_eq!(probe.usable(), probe.verdict == KvmVerdict::Usable);
    }

    #[test]
    fn without_the_pvm_module_the_guest_code_decides() {
        let probe = probe_kvm_at(Path::new("/nonexistent/kvm_pvm"));
        if Path::new("/dev/kvm").exists() {
            // Here (PVM) the real-mode guest either runs or fails; either
            // way the verdict comes from running it, not from the file.
            assert!(
                matches!(probe.verdict, KvmVerdict::Usable | KvmVerdict::Broken),
                "{probe:?}"
            );
        } else {
            // No device: nothing to run, and the verdict says so.
            assert_eq!(probe.verdict, KvmVerdict::Absent, "{probe:?}");
        }
    }
}
