//! The host end of the control connection the guest init opens at boot:
//! a run's streamed output and checked results, a workspace's `ready`.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vmkit_protocol::RunResult;

use super::{deadline_after, recv, send, sink, ChannelError, HostListener};
use crate::message::{Message, Ready, SetupStep};

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// Setup succeeded and the exec command ran (or could not start: see `error`).
    Completed(RunResult),
    /// A setup command failed; exec did not run.
    SetupFailed(SetupStep),
}

/// Everything a run reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// The setup commands that succeeded, in order.
    pub setup: Vec<SetupStep>,
    /// How it ended.
    pub outcome: RunOutcome,
}

/// The host end of the connection the guest init opens at boot to the
/// control port (see [`crate::BootSpec::control_port`]).
#[derive(Debug)]
pub struct Control {
    stream: UnixStream,
}

impl Control {
    /// Waits up to `timeout` for the guest init to connect to `listener`.
    pub fn accept(listener: &HostListener, timeout: Duration) -> Result<Self, ChannelError> {
        Ok(Control {
            stream: listener.accept(timeout)?,
        })
    }

    /// Wraps an already connected stream (tests, other transports).
    pub fn from_stream(stream: UnixStream) -> Self {
        Control { stream }
    }

    /// Workspace boots: waits for the guest's `ready`.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Ready, ChannelError> {
        let deadline = deadline_after(timeout);
        match recv(&self.stream, deadline, "waiting for the guest to be ready")? {
            Message::Ready(r) => Ok(r),
            other => Err(ChannelError::Protocol(format!(
                "expected ready, got {}",
                other.kind()
            ))),
        }
    }

    /// Run boots: copies the guest's stdout and stderr to the sinks as they
    /// arrive (flushing each chunk) and returns how the run ended. Output is
    /// never buffered here beyond one frame. `setup` is the list of setup
    /// commands the host sent: the guest may report on exactly those, in
    /// order, and the report carries the host's copy of each command, so a
    /// hostile guest cannot make the host hold more than one frame plus a
    /// bounded result per command. `timeout` bounds the whole run; make it
    /// longer than the run's own `timeoutMs`, which the guest enforces.
    ///
    /// On success the guest is acknowledged, and it then powers off.
    pub fn receive_run(
        &mut self,
        setup: &[String],
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
        timeout: Duration,
    ) -> Result<RunReport, ChannelError> {
        let deadline = deadline_after(timeout);
        let mut done = Vec::new();
        let outcome = loop {
            match recv(&self.stream, deadline, "waiting for the run to finish")? {
                Message::Stdout(b) => sink(stdout, &b)?,
                Message::Stderr(b) => sink(stderr, &b)?,
                Message::SetupStarted { index, .. } => {
                    expect_setup_index(index, done.len(), setup.len(), "setupStarted")?;
                }
                Message::SetupResult(step) => {
                    done.push(checked_step(step, done.len(), setup, "setupResult")?);
                }
                Message::SetupFailed(step) => {
                    break RunOutcome::SetupFailed(checked_step(
                        step,
                        done.len(),
                        setup,
                        "setupFailed",
                    )?)
                }
                Message::Result(r) => break RunOutcome::Completed(checked_result(r)?),
                Message::Ping => {
                    send(&self.stream, &Message::Pong, Duration::from_secs(5)).map_err(|e| {
                        // A guest that stops reading is a broken channel, not
                        // a command that ran out of time.
                        ChannelError::Protocol(format!("answering the guest's ping: {e}"))
                    })?
                }
                other => {
                    return Err(ChannelError::Protocol(format!(
                        "unexpected {} during a run",
                        other.kind()
                    )))
                }
            }
        };
        // Best effort: without the ack the guest powers off after its own timeout.
        let _ = send(&self.stream, &Message::Ack, Duration::from_secs(2));
        Ok(RunReport {
            setup: done,
            outcome,
        })
    }

    /// The underlying stream.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }
}

/// The guest may only speak of the next setup command the host sent.
fn expect_setup_index(
    index: u32,
    next: usize,
    sent: usize,
    what: &str,
) -> Result<(), ChannelError> {
    if usize::try_from(index).ok() == Some(next) && next < sent {
        Ok(())
    } else {
        Err(ChannelError::Protocol(format!(
            "{what} for setup command {index}, but the host sent {sent} and expected {}",
            if next < sent {
                format!("command {next}")
            } else {
                "no more".to_owned()
            }
        )))
    }
}

/// A setup report checked against what the host sent, with the host's copy
/// of the command in place of the guest's.
fn checked_step(
    step: SetupStep,
    next: usize,
    setup: &[String],
    what: &str,
) -> Result<SetupStep, ChannelError> {
    expect_setup_index(step.index, next, setup.len(), what)?;
    Ok(SetupStep {
        index: step.index,
        command: setup[next].clone(),
        result: checked_result(step.result)?,
    })
}

/// A guest's result, refused if it is inconsistent, its `error` bounded.
pub(super) fn checked_result(mut result: RunResult) -> Result<RunResult, ChannelError> {
    result
        .validate()
        .map_err(|e| ChannelError::Protocol(e.message))?;
    result.truncate_error();
    Ok(result)
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::frame::{read_message, write_message, FrameError};

    #[test]
    fn run_receiver_streams_and_acks() {
        let (host, guest) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut g = &guest;
            let step = SetupStep {
                index: 0,
                command: "true".into(),
                result: RunResult {
                    exit_code: Some(0),
                    ..Default::default()
                },
            };
            for m in [
                Message::SetupStarted {
                    index: 0,
                    command: "true".into(),
                },
                Message::Stdout(b"a".to_vec()),
                Message::SetupResult(step),
                Message::Stderr(b"b".to_vec()),
                Message::Stdout(b"c".to_vec()),
                Message::Result(RunResult {
                    exit_code: Some(4),
                    ..Default::default()
                }),
            ] {
                write_message(&mut g, &m).unwrap();
            }
            read_message(&mut g).unwrap()
        });
        let mut c = Control::from_stream(host);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let report = c
            .receive_run(&["true".into()], &mut out, &mut err, Duration::from_secs(5))
            .unwrap();
        assert_eq!(out, b"ac");
        assert_eq!(err, b"b");
        assert_eq!(report.setup.len(), 1);
        assert!(matches!(
            report.outcome,
            RunOutcome::Completed(RunResult {
                exit_code: Some(4),
                ..
            })
        ));
        assert_eq!(t.join().unwrap(), Some(Message::Ack));
    }

    #[test]
    fn run_receiver_times_out_on_a_silent_guest() {
        let (host, _guest) = UnixStream::pair().unwrap();
        let mut c = Control::from_stream(host);
        let err = c
            .receive_run(
                &[],
                &mut io::sink(),
                &mut io::sink(),
                Duration::from_millis(100),
            )
            .unwrap_err();
        assert!(matches!(err, ChannelError::Timeout(_)), "{err}");
    }

    #[test]
    fn run_receiver_rejects_garbage() {
        let (host, mut guest) = UnixStream::pair().unwrap();
        guest.write_all(&u32::MAX.to_be_bytes()).unwrap();
        let mut c = Control::from_stream(host);
        let err = c
            .receive_run(
                &[],
                &mut io::sink(),
                &mut io::sink(),
                Duration::from_secs(5),
            )
            .unwrap_err();
        assert!(
            matches!(err, ChannelError::Frame(FrameError::Oversized { .. })),
            "{err}"
        );
    }
}
