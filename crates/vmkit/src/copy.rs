//! `cp`: files in and out of a workspace as tar streams.
//!
//! A running workspace copies over its guest channel. A stopped, halted or
//! prepared one gets a maintenance boot: it is started, the copy runs over
//! the same channel, and it is halted again. That costs a boot (about a
//! second under TCG) but keeps one implementation of the copy and of its
//! path checks for every backend; editing the ext4 offline with debugfs
//! would be ext4-only, and debugfs resolves symlinks in the paths it is
//! given from the disk's (hostile) content.
//!
//! What comes out of a guest is hostile: it is unpacked with
//! [`vmkit_archive::extract`] (the rootfs builder's path checks) into a
//! private temporary folder next to the destination, and renamed into
//! place only when complete.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vmkit_archive::{ExtractOptions, Owner};
use vmkit_channel::host::ExecClient;
use vmkit_channel::{ChannelError, CopyInRequest, CopyOutRequest, CopyOwner, CopyStats};
use vmkit_protocol::{ErrorCode, ProtocolError, State};

use crate::{Runtime, VmkitError};

/// How long a copy may wait for the guest between two frames.
const COPY_IDLE: Duration = Duration::from_secs(120);

/// Why a copy failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The guest refused or failed (its message), or the channel broke.
    #[error("{0}")]
    Guest(#[from] ChannelError),
    /// Packing or unpacking on the host failed, or the guest's archive was refused.
    #[error("{0}")]
    Archive(#[from] vmkit_archive::ArchiveError),
    /// The request cannot be served (a missing source, a bad destination).
    #[error("{0}")]
    Invalid(String),
}

impl Runtime {
    /// Runs `f` with an exec client of workspace `name`: at once if it is
    /// running, else around a maintenance boot (start, `f`, halt).
    fn with_guest<T>(
        &self,
        name: &str,
        f: impl FnOnce(&ExecClient) -> Result<T, VmkitError>,
    ) -> Result<T, VmkitError> {
        let store = vmkit_state::StateStore::open(self.state_dir())?;
        let state = store
            .peek(name)?
            .ok_or_else(|| {
                ProtocolError::new(
                    ErrorCode::NotFound,
                    format!("workspace {name:?} does not exist"),
                )
            })?
            .state;
        if state == State::Running {
            return f(&self.driver().exec_client(self.state_dir(), name)?);
        }
        self.start(name)?;
        let result = self
            .driver()
            .exec_client(self.state_dir(), name)
            .map_err(VmkitError::from)
            .and_then(|c| f(&c));
        let halted = self.halt(name);
        let value = result?;
        halted?;
        Ok(value)
    }

    /// Streams the tar archive `tar` into workspace `name` at `guest_path`
    /// (see [`CopyInRequest`] for where it lands; `top` is the archive's
    /// single top-level name, `None` for a raw stream into a folder).
    /// Without `owner`, ownership is kept as the archive says when `keep_owner`, else root's.
    pub fn copy_in(
        &self,
        name: &str,
        guest_path: &str,
        top: Option<&str>,
        tar: &mut dyn Read,
        keep_owner: bool,
        owner: Option<CopyOwner>,
    ) -> Result<CopyStats, VmkitError> {
        let req = CopyInRequest {
            path: guest_path.to_owned(),
            name: top.map(str::to_owned),
            keep_owner,
            owner,
        };
        self.with_guest(name, |c| {
            c.copy_in(&req, tar, COPY_IDLE)
                .map_err(|e| CopyError::from(e).into())
        })
    }

    /// Writes `guest_path` of workspace `name` to `out` as a tar archive
    /// (entries start with its last component). The archive comes from
    /// the guest: unpack it as hostile.
    pub fn copy_out(
        &self,
        name: &str,
        guest_path: &str,
        out: &mut dyn Write,
    ) -> Result<CopyStats, VmkitError> {
        let req = CopyOutRequest {
            path: guest_path.to_owned(),
        };
        self.with_guest(name, |c| {
            c.copy_out(&req, out, COPY_IDLE)
                .map_err(|e| CopyError::from(e).into())
        })
    }

    /// Copies the host file or folder `src` into workspace `name`, as
    /// `docker cp` does: into `guest_dst` if that is an existing folder,
    /// else as `guest_dst`. Ownership is kept when we run as root (else
    /// root's in the guest), unless `owner` says otherwise.
    pub fn copy_to_guest(
        &self,
        name: &str,
        src: &Path,
        guest_dst: &str,
        owner: Option<CopyOwner>,
    ) -> Result<CopyStats, VmkitError> {
        let src = std::path::absolute(src)
            .map_err(|e| CopyError::Invalid(format!("{}: {e}", src.display())))?;
        std::fs::symlink_metadata(&src)
            .map_err(|e| CopyError::Invalid(format!("{}: {e}", src.display())))?;
        let top = top_name(&src)?;
        let (reader, mut writer) = stream_pair()?;
        let failed = Arc::new(AtomicBool::new(false));
        let packer = {
            let (src, top, failed) = (src.clone(), top.clone(), failed.clone());
            std::thread::spawn(move || {
                let r = vmkit_archive::pack(&src, top.as_ref(), &mut writer);
                // Before the writer closes: the reader must not take the
                // end of a failed archive for the end of the copy.
                failed.store(r.is_err(), Ordering::SeqCst);
                r
            })
        };
        let keep = nix::unistd::geteuid().is_root();
        let mut reader = EndChecked {
            inner: reader,
            failed,
        };
        let copied = self.copy_in(name, guest_dst, Some(&top), &mut reader, keep, owner);
        drop(reader);
        let packed = packer.join().unwrap_or_else(|_| {
            Err(vmkit_archive::ArchiveError::Malformed(
                "the packing thread panicked".into(),
            ))
        });
        match (copied, packed) {
            (Ok(stats), Ok(_)) => Ok(stats),
            // The guest gave up first (a full disk): the packer then only
            // saw its pipe close, and the guest's error is the real one.
            (Err(e), Err(pe)) if pe.is_broken_pipe() => Err(e),
            // A packing failure shows up on the guest side as a short
            // archive; the packer's error is the real one.
            (Err(_), Err(e)) | (Ok(_), Err(e)) => Err(CopyError::from(e).into()),
            (Err(e), Ok(_)) => Err(e),
        }
    }

    /// Copies `guest_src` of workspace `name` to the host: into `dst` if
    /// that is an existing folder, else as `dst` (its folder must exist).
    /// Unpacked as hostile into a temporary folder next to the target, then
    /// renamed into place; an existing folder at the target is refused
    /// rather than merged. Files belong to the caller; setuid bits are dropped.
    pub fn copy_from_guest(
        &self,
        name: &str,
        guest_src: &str,
        dst: &Path,
    ) -> Result<CopyStats, VmkitError> {
        self.copy_from_guest_limited(name, guest_src, dst, None)
    }

    /// [`Runtime::copy_from_guest`], refusing (and leaving nothing behind)
    /// once the guest's archive passes `limit` bytes: for callers that must
    /// bound what a guest can put on the host's disk.
    pub fn copy_from_guest_limited(
        &self,
        name: &str,
        guest_src: &str,
        dst: &Path,
        limit: Option<u64>,
    ) -> Result<CopyStats, VmkitError> {
        let top = top_name(Path::new(guest_src))?;
        let dst = std::path::absolute(dst)
            .map_err(|e| CopyError::Invalid(format!("{}: {e}", dst.display())))?;
        let target = if dst.is_dir() { dst.join(&top) } else { dst };
        let parent = target
            .parent()
            .filter(|p| p.is_dir())
            .ok_or_else(|| {
                CopyError::Invalid(format!("{}: its folder does not exist", target.display()))
            })?
            .to_path_buf();
        if std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
            return Err(CopyError::Invalid(format!(
                "{} already exists as a folder; remove it or copy elsewhere",
                target.display()
            ))
            .into());
        }
        let tmp = vmkit_archive::TempDir::new_in(&parent).map_err(CopyError::from)?;
        let (mut reader, writer) = stream_pair()?;
        let unpacker = {
            let root = tmp.path().to_path_buf();
            std::thread::spawn(move || {
                let opts = ExtractOptions {
                    owner: Owner::Extractor,
                    ..ExtractOptions::default()
                };
                let r = vmkit_archive::extract(&mut reader, &root, &opts);
                // Whatever the archive left (padding, or junk after a refusal).
                let _ = std::io::copy(&mut reader, &mut std::io::sink());
                r
            })
        };
        let mut bounded = Bounded {
            inner: writer,
            left: limit.unwrap_or(u64::MAX),
            limit: limit.unwrap_or(u64::MAX),
            exceeded: false,
        };
        let copied = self.copy_out(name, guest_src, &mut bounded);
        let exceeded = bounded.exceeded.then(|| bounded.error().to_string());
        drop(bounded);
        let unpacked = unpacker.join().unwrap_or_else(|_| {
            Err(vmkit_archive::ArchiveError::Malformed(
                "the unpacking thread panicked".into(),
            ))
        });
        if let Some(message) = exceeded {
            // The cut archive's own complaint ("truncated") is only the symptom.
            return Err(CopyError::Invalid(message).into());
        }
        let stats = match (copied, unpacked) {
            (_, Err(e)) => return Err(CopyError::from(e).into()),
            (Err(e), _) => return Err(e),
            (Ok(stats), Ok(_)) => stats,
        };
        let made = tmp.path().join(&top);
        std::fs::symlink_metadata(&made)
            .map_err(|_| CopyError::Invalid(format!("the guest sent no entry named {top:?}")))?;
        std::fs::rename(&made, &target).map_err(|e| {
            CopyError::Invalid(format!("moving the copy to {}: {e}", target.display()))
        })?;
        Ok(stats)
    }
}

/// A writer that fails once more than `left` bytes went through it.
struct Bounded<W> {
    inner: W,
    left: u64,
    limit: u64,
    exceeded: bool,
}

impl<W> Bounded<W> {
    fn error(&self) -> std::io::Error {
        std::io::Error::other(format!(
            "the guest's archive is larger than the limit of {} bytes; nothing was kept",
            self.limit
        ))
    }
}

impl<W: Write> Write for Bounded<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len() as u64;
        if n > self.left {
            self.exceeded = true;
            return Err(self.error());
        }
        let written = self.inner.write(buf)?;
        self.left -= written as u64;
        Ok(written)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The name a copied path has in the archive: its last component.
fn top_name(path: &Path) -> Result<String, CopyError> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| {
            CopyError::Invalid(format!(
                "{}: name a file or folder (with a UTF-8 name), not a root",
                path.display()
            ))
        })
}

/// The read end of a packing pipe that turns the end of a failed archive
/// into an error, so the guest never gets `dataEnd` for a half archive
/// (it then drops what it unpacked).
struct EndChecked {
    inner: UnixStream,
    failed: Arc<AtomicBool>,
}

impl Read for EndChecked {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.inner.read(buf)? {
            0 if self.failed.load(Ordering::SeqCst) => Err(std::io::Error::other(
                "packing the source failed; the copy was abandoned",
            )),
            n => Ok(n),
        }
    }
}

/// A bounded in-process pipe (a socket pair: its buffer is the bound).
fn stream_pair() -> Result<(UnixStream, UnixStream), CopyError> {
    UnixStream::pair().map_err(|e| CopyError::Invalid(format!("socketpair: {e}")))
}
