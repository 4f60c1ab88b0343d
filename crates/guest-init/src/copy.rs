//! `cp` in the guest: a path out as a tar stream, a tar stream in at a
//! path. Both stream in `data` frames of at most [`CHUNK_SIZE`], so memory
//! stays bounded whatever the size of the copy.
//!
//! Copying in uses the same checks as the rootfs builder
//! ([`vmkit_archive`]): the user-named destination is taken as given, but
//! no entry below it can leave it, through `..`, an absolute name, or a
//! symlink (one of the guest's or one the archive made). A new destination
//! is unpacked under a temporary name next to it and renamed into place,
//! so a failed copy (a full disk, a bad archive) leaves nothing behind.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use vmkit_archive::{ExtractOptions, Owner};
use vmkit_channel::{
    read_message, write_message, CopyInRequest, CopyOutRequest, CopyStats, Message, CHUNK_SIZE,
};

use crate::service::Connection;

/// Sends the guest path as a tar stream, then `copyDone`; an `error` if it
/// cannot.
pub fn copy_out<C: Connection>(mut conn: C, req: &CopyOutRequest) {
    let outcome = (|| -> Result<CopyStats, String> {
        let path = absolute(&req.path)?;
        let name = path
            .file_name()
            .ok_or_else(|| format!("cannot copy {}: name a file or folder below /", req.path))?
            .to_owned();
        std::fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", req.path))?;
        let mut out = FrameWriter {
            conn: &mut conn,
            buf: Vec::with_capacity(CHUNK_SIZE),
        };
        let stats = vmkit_archive::pack(&path, &name, &mut out).map_err(|e| e.to_string())?;
        out.flush()
            .map_err(|e| format!("sending the archive: {e}"))?;
        Ok(CopyStats {
            entries: stats.entries,
            bytes: stats.bytes,
        })
    })();
    let reply = match outcome {
        Ok(stats) => Message::CopyDone(stats),
        Err(message) => Message::Error { message },
    };
    let _ = write_message(&mut conn, &reply);
    conn.shutdown();
}

/// Receives a tar stream and unpacks it at the request's path, then
/// answers `copyDone`, or `error` (nothing of a new destination stays).
pub fn copy_in<C: Connection>(mut conn: C, req: &CopyInRequest, frame_timeout: Duration) {
    let _ = conn.set_read_timeout(Some(frame_timeout));
    let outcome = receive(&mut conn, req);
    let reply = match outcome {
        Ok(stats) => Message::CopyDone(stats),
        Err(message) => Message::Error { message },
    };
    let _ = write_message(&mut conn, &reply);
    conn.shutdown();
}

fn absolute(path: &str) -> Result<PathBuf, String> {
    if !path.starts_with('/') || path.contains('\0') {
        return Err(format!("guest path must be absolute, got {path:?}"));
    }
    Ok(PathBuf::from(path))
}

/// Where a copy lands, decided before any byte is read.
enum Target {
    /// Unpack straight into this existing folder (a raw stream, or a
    /// folder merged into one of the same name, as `docker cp` does).
    Into(PathBuf),
    /// Unpack into a fresh temporary folder inside `parent`, then rename
    /// its `name` to `dest`.
    Fresh {
        parent: PathBuf,
        name: String,
        dest: PathBuf,
    },
}

fn target(req: &CopyInRequest) -> Result<Target, String> {
    let path = absolute(&req.path)?;
    let is_dir = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_dir());
    let Some(name) = &req.name else {
        if !is_dir(&path) {
            return Err(format!(
                "{}: not a folder (a tar stream unpacks into an existing folder)",
                req.path
            ));
        }
        return Ok(Target::Into(path));
    };
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(format!(
            "copy name must be one path component, got {name:?}"
        ));
    }
    if is_dir(&path) {
        let dest = path.join(name);
        let existing = std::fs::symlink_metadata(&dest).ok();
        if existing.is_some_and(|m| m.is_dir()) {
            return Ok(Target::Into(path));
        }
        return Ok(Target::Fresh {
            parent: path,
            name: name.clone(),
            dest,
        });
    }
    let parent = path
        .parent()
        .filter(|p| is_dir(p))
        .ok_or_else(|| format!("{}: its folder does not exist", req.path))?
        .to_path_buf();
    Ok(Target::Fresh {
        parent,
        name: name.clone(),
        dest: path,
    })
}

fn receive<C: Connection>(conn: &mut C, req: &CopyInRequest) -> Result<CopyStats, String> {
    let target = target(req)?;
    let opts = ExtractOptions {
        owner: match (req.owner, req.keep_owner) {
            (Some(o), _) => Owner::Fixed(o.uid, o.gid),
            (None, true) => Owner::Archive,
            (None, false) => Owner::Fixed(0, 0),
        },
        ..ExtractOptions::default()
    };
    let mut input = FrameReader {
        conn,
        buf: Vec::new(),
        at: 0,
        ended: false,
    };
    let describe = |e: vmkit_archive::ArchiveError| match e.raw_os_error() {
        Some(libc::ENOSPC) => format!("the guest disk is full: {e}"),
        _ => e.to_string(),
    };
    let stats = match target {
        Target::Into(dir) => {
            let s = vmkit_archive::extract(&mut input, &dir, &opts).map_err(describe)?;
            input.drain()?;
            s
        }
        Target::Fresh { parent, name, dest } => {
            let tmp = vmkit_archive::TempDir::new_in(&parent).map_err(|e| e.to_string())?;
            let s = vmkit_archive::extract(&mut input, tmp.path(), &opts).map_err(describe)?;
            input.drain()?;
            let made = tmp.path().join(&name);
            std::fs::symlink_metadata(&made)
                .map_err(|_| format!("the archive has no entry named {name:?}"))?;
            std::fs::rename(&made, &dest)
                .map_err(|e| format!("moving the copy to {}: {e}", dest.display()))?;
            s
        }
    };
    Ok(CopyStats {
        entries: stats.entries,
        bytes: stats.bytes,
    })
}

/// The tar stream out, cut into `data` frames.
struct FrameWriter<'a, C: Connection> {
    conn: &'a mut C,
    buf: Vec<u8>,
}

impl<C: Connection> Write for FrameWriter<'_, C> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = b.len().min(CHUNK_SIZE - self.buf.len());
        self.buf.extend_from_slice(&b[..n]);
        if self.buf.len() == CHUNK_SIZE {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.buf);
        write_message(self.conn, &Message::Data(chunk)).map_err(io::Error::other)?;
        self.buf.reserve(CHUNK_SIZE);
        Ok(())
    }
}

/// The tar stream in, from `data` frames up to `dataEnd`.
struct FrameReader<'a, C: Connection> {
    conn: &'a mut C,
    buf: Vec<u8>,
    at: usize,
    ended: bool,
}

impl<C: Connection> FrameReader<'_, C> {
    /// Reads what the archive left unread (tar padding) up to `dataEnd`.
    fn drain(&mut self) -> Result<(), String> {
        let mut sink = [0u8; 8192];
        loop {
            match self.read(&mut sink) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(format!("reading the archive: {e}")),
            }
        }
    }
}

impl<C: Connection> Read for FrameReader<'_, C> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.buf.len() {
            if self.ended {
                return Ok(0);
            }
            match read_message(self.conn) {
                Ok(Some(Message::Data(b))) => {
                    self.buf = b;
                    self.at = 0;
                }
                Ok(Some(Message::DataEnd)) => self.ended = true,
                Ok(Some(other)) => {
                    return Err(io::Error::other(format!(
                        "unexpected {} in a copy",
                        other.kind()
                    )))
                }
                Ok(None) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the host closed the connection before the end of the archive",
                    ))
                }
                Err(e) => return Err(io::Error::other(e.to_string())),
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
