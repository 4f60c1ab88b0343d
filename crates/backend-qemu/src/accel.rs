use vmkit_host::{KvmProbe, KvmVerdict};
use vmkit_protocol::Accelerator;

/// KVM when the probe ran a guest on real KVM, TCG otherwise, with the reason
/// in words for `doctor` and events.
pub fn choose_accelerator(kvm: &KvmProbe) -> (Accelerator, String) {
    match kvm.verdict {
        KvmVerdict::Usable => (Accelerator::Kvm, "KVM ran a probe guest".into()),
        KvmVerdict::Pvm => (
            Accelerator::Tcg,
            "KVM is present but is PVM, where a standard guest kernel cannot run: QEMU will emulate with TCG".into(),
        ),
        KvmVerdict::Absent => (
            Accelerator::Tcg,
            "no usable /dev/kvm: QEMU will emulate with TCG".into(),
        ),
        KvmVerdict::Broken => (
            Accelerator::Tcg,
            "KVM failed a probe guest: QEMU will emulate with TCG".into(),
        ),
    }
}
