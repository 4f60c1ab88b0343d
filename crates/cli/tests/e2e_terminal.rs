//! Interactive exec end to end: a real terminal (tmux) driving
//! `microagent exec -it`, and signal forwarding without a tty.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{describe, Env};

fn started_workspace(env: &Env, name: &str) {
    env.create(name, &[]);
    env.ok(&["start", name]);
}

/// A tmux server of its own (its socket in the test's state folder), so
/// tests never touch anyone's tmux.
struct Tmux {
    socket: std::path::PathBuf,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket);
        c
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert!(out.status.success(), "tmux {args:?}: {}", describe(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "t"])
    }

    /// Waits until the pane shows `text` (what a person would wait for).
    fn wait_for(&self, text: &str) -> String {
        self.wait_until(text, |screen| screen.contains(text))
    }

    /// Waits for a line that is exactly `line` (command output, not the
    /// echo of the command that printed it).
    fn wait_for_line(&self, line: &str) -> String {
        self.wait_until(line, |screen| screen.lines().any(|l| l.trim() == line))
    }

    /// Waits for the root shell's prompt (`... #`; tmux trims the space after it).
    fn wait_for_prompt(&self) -> String {
        self.wait_until("a prompt", |screen| {
            screen.lines().any(|l| l.trim_end().ends_with('#'))
        })
    }

    fn wait_until(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the terminal never showed {what:?}; it shows:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pane's size as `stty size` prints it: "ROWS COLS".
    fn pane_size(&self) -> String {
        self.run(&[
            "display-message",
            "-p",
            "-t",
            "t",
            "#{pane_height} #{pane_width}",
        ])
        .trim()
        .to_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        self.run(&args);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

#[test]
fn exec_it_in_tmux_follows_the_terminal_and_restores_it() {
    let env = Env::new();
    started_workspace(&env, "tty");
    let dir = env.state_path();
    let tmux = Tmux {
        socket: dir.join("tmux.sock"),
    };
    let bin = Path::new(env!("CARGO_BIN_EXE_microagent"));
    let (before, after) = (dir.join("stty-before"), dir.join("stty-after"));
    // The pane's shell records the terminal mode, runs the session, then
    // records the exit status and the mode again.
    let script = format!(
        "stty -g > {b}; MICROAGENT_STATE_DIR={s} {bin} exec -it tty -- sh; \
         echo \"EXIT=$?\"; stty -g > {a}; exec sleep 1000",
        b = shell_quote(&before),
        a = shell_quote(&after),
        s = shell_quote(dir),
        bin = shell_quote(bin),
    );
    tmux.run(&[
        "-f",
        "/dev/null",
        "new-session",
        "-d",
        "-s",
        "t",
        "-x",
        "91",
        "-y",
        "27",
        "sh",
        "-c",
        &script,
    ]);
    tmux.run(&["set-option", "-t", "t", "window-size", "manual"]);
    tmux.wait_for_prompt();
    let size = tmux.pane_size();
    assert!(size.ends_with(" 91"), "{size}");
    tmux.keys(&["stty size", "Enter"]);
    tmux.wait_for_line(&size);

    tmux.run(&["resize-window", "-t", "t", "-x", "120", "-y", "33"]);
    let size = tmux.pane_size();
    assert!(size.ends_with(" 120"), "{size}");
    tmux.keys(&["clear; stty size", "Enter"]);
    tmux.wait_for_line(&size);

    // Ctrl-C reaches the guest's foreground job through its pty, not us.
    tmux.keys(&["clear; sleep 100; echo slept-$?", "Enter"]);
    // Wait until the sleep runs, seen from a second exec.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !env
        .cmd()
        .args(["exec", "tty", "--", "pidof", "sleep"])
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "the sleep never started");
    }
    let started = Instant::now();
    tmux.keys(&["C-c"]);
    tmux.keys(&["echo back-at-prompt", "Enter"]);
    tmux.wait_for_line("back-at-prompt");
    assert!(started.elapsed() < Duration::from_secs(60));

    tmux.keys(&["exit 3", "Enter"]);
    tmux.wait_for("EXIT=3");
    let wait_file = |p: &Path| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !p.exists() || std::fs::read_to_string(p).unwrap().is_empty() {
            assert!(Instant::now() < deadline, "{} never written", p.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::read_to_string(p).unwrap()
    };
    assert_eq!(
        wait_file(&before),
        wait_file(&after),
        "the host terminal's mode was not restored"
    );
    env.ok(&["kill", "tty"]);
}

#[test]
fn sigint_without_a_tty_reaches_the_command_and_sets_the_exit_code() {
    let env = Env::new();
    started_workspace(&env, "sig");
    let mut child = env
        .cmd()
        .args([
            "exec",
            "sig",
            "--",
            "sh",
            "-c",
            "echo started; exec sleep 100",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_started(&mut child);
    let running = env.ok(&["exec", "sig", "--", "pidof", "sleep"]);
    assert!(!running.stdout.is_empty());

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", describe(&out));

    // The guest's sleep is gone, seen from a second exec.
    let after = env
        .cmd()
        .args(["exec", "sig", "--", "pidof", "sleep"])
        .output()
        .unwrap();
    assert_eq!(after.status.code(), Some(1), "{}", describe(&after));
    env.ok(&["kill", "sig"]);
}
