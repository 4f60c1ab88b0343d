//! The host end of a freeze: the guest's filesystems stay frozen while a
//! [`FrozenGuest`] lives, so the host can copy a consistent disk.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::{connect, deadline_after, recv, send, ChannelError, ExecClient};
use crate::message::{check_frozen, FreezeRequest, Message};

/// A guest whose writable filesystems are frozen (FIFREEZE). Thaw it with
/// [`FrozenGuest::thaw`], which also tells whether the freeze held until
/// then; dropping it closes the connection, which thaws the guest too.
#[derive(Debug)]
pub struct FrozenGuest {
    stream: UnixStream,
    mountpoints: Vec<String>,
}

impl ExecClient {
    /// Freezes the guest's filesystems for at most `hold` (the guest thaws
    /// by itself then, or when this connection ends). `timeout` bounds the
    /// wait for the guest's answer (a guest flushes its page cache first).
    pub fn freeze(&self, hold: Duration, timeout: Duration) -> Result<FrozenGuest, ChannelError> {
        let stream = connect(&self.uds_path, self.port, self.connect_timeout)?;
        freeze_over(stream, hold, timeout)
    }
}

/// [`ExecClient::freeze`] over an already connected stream.
pub fn freeze_over(
    stream: UnixStream,
    hold: Duration,
    timeout: Duration,
) -> Result<FrozenGuest, ChannelError> {
    let request = FreezeRequest {
        timeout_ms: Some(u64::try_from(hold.as_millis()).unwrap_or(u64::MAX)),
    };
    request.hold().map_err(ChannelError::Invalid)?;
    let deadline = deadline_after(timeout);
    send(&stream, &Message::Freeze(request), timeout)?;
    match recv(&stream, deadline, "waiting for the guest to freeze")? {
        Message::Frozen { mountpoints } => {
            // From here on, dropping `guest` closes the stream: the guest thaws.
            let guest = FrozenGuest {
                stream,
                mountpoints,
            };
            check_frozen(&guest.mountpoints).map_err(ChannelError::Protocol)?;
            Ok(guest)
        }
        other => Err(ChannelError::Protocol(format!(
            "expected frozen, got {}",
            other.kind()
        ))),
    }
}

impl FrozenGuest {
    /// Where the frozen filesystems are mounted in the guest, `/` first.
    pub fn mountpoints(&self) -> &[String] {
        &self.mountpoints
    }

    /// Thaws the guest. `Ok` means the freeze held until now; an error
    /// means it did not (it expired, or the channel broke) or the guest
    /// could not thaw: either way a copy made meanwhile is not known to be
    /// consistent.
    pub fn thaw(self, timeout: Duration) -> Result<(), ChannelError> {
        let deadline = deadline_after(timeout);
        // A guest whose freeze expired said so and closed: its `error`
        // may still be read after the send failed.
        let sent = send(&self.stream, &Message::Thaw, timeout);
        match recv(&self.stream, deadline, "waiting for the guest to thaw") {
            Ok(Message::Ack) => sent,
            Ok(other) => Err(ChannelError::Protocol(format!(
                "expected ack, got {}",
                other.kind()
            ))),
            Err(e) => Err(e),
        }
    }
}

impl Drop for FrozenGuest {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{read_message, write_message};

    /// A guest end that answers the freeze with `frozen` and then what
    /// `after_thaw` says; returns what it was asked.
    fn guest(
        frozen: Message,
        after_thaw: Option<Message>,
    ) -> (UnixStream, std::thread::JoinHandle<Vec<String>>) {
        let (host, mut g) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while let Ok(Some(m)) = read_message(&mut g) {
                seen.push(m.kind().to_string());
                let answer = match m {
                    Message::Freeze(_) => Some(frozen.clone()),
                    _ => after_thaw.clone(),
                };
                match answer {
                    Some(a) => write_message(&mut g, &a).unwrap(),
                    None => break,
                }
            }
            seen
        });
        (host, t)
    }

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn freeze_then_thaw_is_acknowledged() {
        let frozen = Message::Frozen {
            mountpoints: vec!["/".into(), "/data".into()],
        };
        let (host, t) = guest(frozen, Some(Message::Ack));
        let f = freeze_over(host, Duration::from_secs(3), T).unwrap();
        assert_eq!(f.mountpoints(), ["/", "/data"]);
        f.thaw(T).unwrap();
        assert_eq!(t.join().unwrap(), ["freeze", "thaw"]);
    }

    #[test]
    fn an_expired_freeze_fails_the_thaw_with_the_guests_reason() {
        let frozen = Message::Frozen {
            mountpoints: vec!["/".into()],
        };
        let expired = Message::Error {
            message: "the freeze expired after 10 ms".into(),
        };
        let (host, _t) = guest(frozen, Some(expired));
        let f = freeze_over(host, Duration::from_millis(10), T).unwrap();
        let err = f.thaw(T).unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
    }

    #[test]
    fn a_frozen_answer_without_the_root_is_refused_and_thaws() {
        let frozen = Message::Frozen {
            mountpoints: vec!["/data".into()],
        };
        let (host, t) = guest(frozen, None);
        let err = freeze_over(host, Duration::from_secs(1), T).unwrap_err();
        assert!(err.to_string().contains("root filesystem"), "{err}");
        // The connection was closed: the guest saw its end (and thaws).
        assert_eq!(t.join().unwrap(), ["freeze"]);
    }

    #[test]
    fn an_old_guest_that_does_not_know_freeze_is_an_error() {
        let (host, mut g) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let _ = read_message(&mut g);
            let no = Message::Error {
                message: "bad frame: malformed frame: unknown variant `freeze`".into(),
            };
            write_message(&mut g, &no).unwrap();
        });
        let err = freeze_over(host, Duration::from_secs(1), T).unwrap_err();
        assert!(matches!(err, ChannelError::Guest(_)), "{err}");
    }

    #[test]
    fn absurd_holds_are_refused_before_sending() {
        let (host, _g) = UnixStream::pair().unwrap();
        let err = freeze_over(host, Duration::from_secs(3600), T).unwrap_err();
        assert!(matches!(err, ChannelError::Invalid(_)), "{err}");
    }
}
