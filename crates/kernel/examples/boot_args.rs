//! Prints the QEMU machine options and kernel command line microagent uses,
//! as shell assignments, so `scripts/boot-stress` boots exactly what the
//! QEMU backend boots.

use vmkit_kernel::boot;

fn main() {
    println!("MACHINE='{}'", boot::qemu_microvm_machine());
    println!("CPU='{}'", boot::qemu_cpu_model());
    println!("CMDLINE_BASE='{}'", boot::kernel_cmdline_base(true));
    println!("TSC_ARGS='{}'", boot::tsc_kernel_args());
}
