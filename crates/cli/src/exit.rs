//! Exit codes. The guest command's own code passes through unchanged
//! (0-255, 128+N when killed by signal N); microagent's own outcomes use the
//! codes Docker and timeout(1) users know (124-127, 130). A guest command can
//! exit with those too, so the code alone is ambiguous there: the JSON
//! result and error lines say which side the code came from
//! ([`Source`], `exitCodeSource`).

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

/// Which side an exit code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The guest command's own exit code (or 128 + its signal).
    Guest,
    /// microagent's: timeout, its own failure, a failed setup, no boot,
    /// interrupted.
    Microagent,
}

impl Source {
    /// The JSON spelling (`exitCodeSource`).
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Guest => "guest",
            Source::Microagent => "microagent",
        }
    }
}

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

/// The exit code for a finished command and where it came from: the
/// guest's own (the shell's convention: its code, or 128 + the signal),
/// else microagent's ([`TIMEOUT`], [`SETUP_FAILED`], or [`INTERNAL`] when the
/// guest reported neither code nor signal).
pub fn code_of(result: &RunResult, setup_failed: bool) -> (u8, Source) {
    if result.timed_out {
        return (TIMEOUT, Source::Microagent);
    }
    if setup_failed {
        return (SETUP_FAILED, Source::Microagent);
    }
    match (result.exit_code, result.signal) {
        (Some(code), _) => ((code & 0xff) as u8, Source::Guest),
        (None, Some(sig)) => ((128 + (sig & 0x7f)) as u8, Source::Guest),
        (None, None) => (INTERNAL, Source::Microagent),
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

    fn exited(code: i32) -> RunResult {
        RunResult {
            exit_code: Some(code),
            ..RunResult::default()
        }
    }

    #[test]
    fn guest_codes_pass_through_and_say_so_even_where_ours_live() {
        for code in [0, 1, 123, 124, 125, 126, 127, 130, 255] {
            assert_eq!(code_of(&exited(code), false), (code as u8, Source::Guest));
        }
        let killed = RunResult {
            signal: Some(9),
            ..RunResult::default()
        };
        assert_eq!(code_of(&killed, false), (137, Source::Guest));
    }

    #[test]
    fn our_outcomes_are_ours() {
        let timed_out = RunResult {
            signal: Some(9),
            timed_out: true,
            ..RunResult::default()
        };
        assert_eq!(code_of(&timed_out, false), (TIMEOUT, Source::Microagent));
        assert_eq!(
            code_of(&exited(3), true),
            (SETUP_FAILED, Source::Microagent)
        );
        assert_eq!(
            code_of(&RunResult::default(), false),
            (INTERNAL, Source::Microagent)
        );
    }

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
