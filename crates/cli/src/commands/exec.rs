//! `exec` and `shell`: a command in a running workspace, with stdin, a
//! guest pty and the host terminal in raw mode when asked, signals
//! forwarded, and the command's exit status as ours.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use crate::cli::Global;
use crate::commands::workspace::{parse_env, workspace_runtime};
use crate::exit;
use crate::terminal::{window_size, RawMode, SignalForwarder};

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The workspace name.
    pub name: String,

    /// Keep stdin open and stream it to the command (implied when stdin is
    /// not a terminal).
    #[arg(short = 'i', long)]
    pub interactive: bool,

    /// Give the command a pseudo-terminal in the guest; with -i and a
    /// terminal on stdin, the host terminal goes raw until the command ends.
    #[arg(short = 't', long)]
    pub tty: bool,

    /// Environment variable (KEY=VAL); repeatable; wins over --env-file.
    #[arg(short = 'e', long = "env", value_name = "KEY=VAL", value_parser = parse_env)]
    pub env: Vec<(String, String)>,

    /// Read environment variables from a file: KEY=VAL lines, `#` comments,
    /// a bare KEY takes the host's value. Repeatable.
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,

    /// User in the guest: name, uid or uid:gid (default: the workspace's).
    #[arg(short = 'u', long)]
    pub user: Option<String>,

    /// Working directory in the guest.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,

    /// Deadline in seconds; on expiry the command's process group gets
    /// SIGTERM, then SIGKILL, and microagent exits 124.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,

    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "ARGV")]
    pub argv: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ShellArgs {
    /// The workspace name.
    pub name: String,

    /// User in the guest: name, uid or uid:gid (default: the workspace's).
    #[arg(short = 'u', long)]
    pub user: Option<String>,

    /// Working directory in the guest.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
}

/// A login shell: bash when the image has it, else its /bin/sh.
const LOGIN_SHELL: &str = "if [ -x /bin/bash ]; then exec /bin/bash -l; fi; exec /bin/sh -l";

pub fn shell(args: ShellArgs, global: &Global) -> anyhow::Result<u8> {
    exec(
        ExecArgs {
            name: args.name,
            interactive: true,
            tty: true,
            env: Vec::new(),
            env_file: Vec::new(),
            user: args.user,
            cwd: args.cwd,
            timeout: None,
            argv: vec!["/bin/sh".into(), "-c".into(), LOGIN_SHELL.into()],
        },
        global,
    )
}

pub fn exec(args: ExecArgs, global: &Global) -> anyhow::Result<u8> {
    let mut env = std::collections::BTreeMap::new();
    for file in &args.env_file {
        env.extend(read_env_file(file)?);
    }
    env.extend(args.env.iter().cloned());
    if args.tty && !env.contains_key("TERM") {
        // What the guest's programs draw for: the host terminal's type.
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
        env.insert("TERM".into(), term);
    }
    let rt = workspace_runtime(global, &args.name)?;
    let stdin_is_terminal = std::io::stdin().is_terminal();
    let forward_stdin = args.interactive || !stdin_is_terminal;
    let request = vmkit::ExecRequest {
        argv: args.argv.clone(),
        env,
        cwd: args.cwd.clone(),
        user: args.user.clone(),
        tty: args.tty,
        tty_size: args.tty.then(window_size).flatten(),
        timeout_ms: args.timeout.map(|s| s.saturating_mul(1000)),
        ..vmkit::ExecRequest::default()
    };
    let handle = vmkit::ExecHandle::new();
    let options = vmkit::ExecOptions {
        request,
        stdin: forward_stdin.then(|| Box::new(std::io::stdin()) as Box<dyn Read + Send>),
        handle: handle.clone(),
    };
    // Order matters on the way out: the forwarder stops first, then the
    // terminal mode comes back (drops run in reverse).
    let _raw = if args.tty && args.interactive && stdin_is_terminal && !global.json {
        RawMode::enter().context("putting the terminal in raw mode")?
    } else {
        None
    };
    let _forwarder =
        SignalForwarder::start(handle, args.tty).context("installing signal handlers")?;
    let result = if global.json {
        rt.exec(
            &args.name,
            options,
            &mut crate::output::JsonStream::stdout(),
            &mut crate::output::JsonStream::stderr(),
        )
    } else {
        rt.exec(
            &args.name,
            options,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        )
    }
    .map_err(exit::classify)?;
    drop(_forwarder);
    drop(_raw);
    let timed_out = result.timed_out;
    let (code, source) = exit::code_of(&result, false);
    if global.json {
        crate::output::print_result(
            &args.name,
            &result,
            (code, source),
            serde_json::json!({"timedOut": timed_out}),
        );
    } else if timed_out {
        eprintln!(
            "microagent: timed out after {}s",
            args.timeout.unwrap_or_default()
        );
    }
    Ok(code)
}

/// Docker's env-file format: `KEY=VAL` per line, blank lines and `#`
/// comments skipped, a bare `KEY` takes the host's value (skipped if unset).
fn read_env_file(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--env-file {}", path.display()))?;
    parse_env_file(&text, |k| std::env::var(k).ok())
        .map_err(|e| anyhow::anyhow!("--env-file {}: {e}", path.display()))
}

fn parse_env_file(
    text: &str,
    host: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match trimmed.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() && !k.contains(char::is_whitespace) => {
                out.push((k.to_owned(), v.to_owned()))
            }
            Some(_) => return Err(format!("line {}: expected KEY=VAL, got {line:?}", i + 1)),
            None if trimmed.contains(char::is_whitespace) => {
                return Err(format!("line {}: expected KEY=VAL, got {line:?}", i + 1))
            }
            None => {
                if let Some(v) = host(trimmed) {
                    out.push((trimmed.to_owned(), v));
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_read_like_dockers() {
        let text = "# comment\n\nA=1\nB=x=y\nHOSTVAR\nUNSET\n  C=spaced\n";
        let host = |k: &str| (k == "HOSTVAR").then(|| "from-host".to_string());
        let got = parse_env_file(text, host).unwrap();
        assert_eq!(
            got,
            [
                ("A".into(), "1".into()),
                ("B".into(), "x=y".into()),
                ("HOSTVAR".into(), "from-host".into()),
                ("C".into(), "spaced".into()),
            ]
        );
        assert!(parse_env_file("=v\n", |_| None)
            .unwrap_err()
            .contains("line 1"));
        assert!(parse_env_file("A=1\nNOT A KEY\n", |_| None)
            .unwrap_err()
            .contains("line 2"));
    }
}
