//! Exit codes. The guest command's own code passes through unchanged (0-255);
//! microagent's own failures use the codes Docker users know.

use vmkit::protocol::RunResult;
use vmkit::VmkitError;

/// The run hit `--timeout`. Like timeout(1).
pub const TIMEOUT: u8 = 124;
/// microagent itself failed (bad flags, bad image, I/O error).
pub const INTERNAL: u8 = 125;
/// A `--setup` command failed; `--exec` did not run.
pub const SETUP_FAILED: u8 = 126;
/// The VM did not boot or the guest channel broke.
pub const BOOT_FAILED: u8 = 127;
/// Interrupted by Ctrl-C (or SIGTERM/SIGHUP): 128 + SIGINT, as shells do.
pub const INTERRUPTED: u8 = 130;

/// A library error that knows its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct Classified {
    pub code: u8,
    #[source]
    pub source: VmkitError,
}

/// Attaches the exit code a library error deserves.
pub fn classify(err: VmkitError) -> anyhow::Error {
    let code = if err.is_boot_failure() {
        BOOT_FAILED
    } else {
        INTERNAL
    };
    Classified { code, source: err }.into()
}

/// Picks the exit code for an error that reached `main`.
pub fn code_for(err: &anyhow::Error) -> u8 {
    err.downcast_ref::<Classified>()
        .map_or(INTERNAL, |c| c.code)
}

/// The shell's convention: the exit code, or 128 + the signal.
pub fn code_of(result: &RunResult) -> u8 {
    match (result.exit_code, result.signal) {
        (Some(code), _) => (code & 0xff) as u8,
        (None, Some(sig)) => (128 + (sig & 0x7f)) as u8,
        (None, None) => INTERNAL,
    }
}

/// "exit code 3", "killed by signal 9", or the error (the guest's text,
/// made safe for a terminal).
pub fn describe(result: &RunResult) -> String {
    match (result.exit_code, result.signal, &result.error) {
        (Some(c), _, _) => format!("exit code {c}"),
        (None, Some(s), _) => format!("killed by signal {s}"),
        (None, None, Some(e)) => vmkit::protocol::terminal_safe(e),
        (None, None, None) => "no result".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_error_text_is_described_without_terminal_escapes() {
        let result = RunResult {
            error: Some("could not start \x1b]52;c;cHduZWQ=\x07x".into()),
            ..RunResult::default()
        };
        let text = describe(&result);
        assert_eq!(text, "could not start \\x1b]52;c;cHduZWQ=\\x07x");
    }
}
