//! Host probes: what this machine can actually do.
//!
//! The presence of `/dev/kvm` proves little: on a PVM host (software nested
//! virtualisation, module `kvm_pvm`) the device opens, VMs and vCPUs can be
//! created, and yet a standard guest kernel dies on its first XRSTOR. So
//! [`probe_kvm`] runs a few real guest instructions and also recognises PVM,
//! and [`tools`] asks each external program for its version.

mod kvm;
mod tools;

pub use kvm::{probe_kvm, KvmProbe, KvmVerdict};
pub use tools::{find_in_path, tool_version, Tool};
