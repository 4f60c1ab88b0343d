//! Exit codes. The guest command's own code passes through unchanged (0-255);
//! microagent's own failures use codes Docker users will recognise.

// The run commands (QEMU backend issue) use the rest.
#![allow(dead_code)]

/// microagent itself failed (bad flags, missing kernel, I/O error).
pub const INTERNAL: u8 = 125;
/// The guest command could not be started (setup failed).
pub const SETUP_FAILED: u8 = 126;
/// The VM did not boot or the guest channel broke.
pub const BOOT_FAILED: u8 = 127;
/// The run hit `--timeout`. Like timeout(1).
pub const TIMEOUT: u8 = 124;

/// Picks the exit code for an error that reached `main`.
pub fn code_for(_err: &anyhow::Error) -> u8 {
    INTERNAL
}
