//! Reading a JSON-lines log a writer may still be appending to (a
//! workspace's `events.jsonl`, its `egress.jsonl`): whole lines only, and,
//! when following, new ones as they come, across a rotation of the file.

use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

/// How often a follower looks for new lines.
const POLL: Duration = Duration::from_millis(200);
/// A line longer than this is not one our writers make: it is cut there
/// (the rest of it is read as further lines), so memory stays bounded.
const MAX_LINE: u64 = 1 << 20;

/// Hands each complete line of `path` to `each`. With `follow`, keeps
/// waiting for more while `alive()` says the writer may still write; a file
/// replaced under us (rotated) is reopened from its start. A missing file
/// is waited for while following, and is empty otherwise.
pub(crate) fn lines(
    path: &Path,
    follow: bool,
    alive: &dyn Fn() -> bool,
    each: &mut dyn FnMut(&str) -> io::Result<()>,
) -> io::Result<()> {
    let file = loop {
        match std::fs::File::open(path) {
            Ok(f) => break f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !follow || !alive() {
                    return Ok(());
                }
                std::thread::sleep(POLL);
            }
            Err(e) => return Err(e),
        }
    };
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line)?;
        let whole = line.ends_with(b"\n") || n as u64 == MAX_LINE;
        if n > 0 && whole {
            each(String::from_utf8_lossy(&line).trim_end())?;
            continue;
        }
        if !follow || !alive() {
            return Ok(());
        }
        // Half a line: read it again once the writer has finished it.
        if n > 0 {
            reader.seek(SeekFrom::Current(-(n as i64)))?;
        }
        let rotated = match (std::fs::metadata(path), reader.get_ref().metadata()) {
            (Ok(now), Ok(ours)) => now.ino() != ours.ino(),
            _ => false,
        };
        if rotated {
            reader = BufReader::new(std::fs::File::open(path)?);
            continue;
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_lines_only_and_a_rotation_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        std::fs::write(&path, "one\ntwo\nhal").unwrap();
        let mut seen = Vec::new();
        lines(&path, false, &|| true, &mut |l| {
            seen.push(l.to_string());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, ["one", "two"]);

        // Following: the half line is finished, then the file is rotated.
        let p = path.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
            use std::io::Write;
            f.write_all(b"f\n").unwrap();
            std::thread::sleep(Duration::from_millis(300));
            std::fs::rename(&p, p.with_extension("1")).unwrap();
            std::fs::write(&p, "three\n").unwrap();
        });
        let mut seen = Vec::new();
        lines(&path, true, &|| true, &mut |l| {
            seen.push(l.to_string());
            if l == "three" {
                return Err(io::Error::other("enough"));
            }
            Ok(())
        })
        .unwrap_err();
        writer.join().unwrap();
        assert_eq!(seen, ["one", "two", "half", "three"]);
    }

    #[test]
    fn a_missing_file_is_empty_unless_followed() {
        let dir = tempfile::tempdir().unwrap();
        let mut n = 0;
        lines(&dir.path().join("none"), false, &|| true, &mut |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        lines(&dir.path().join("none"), true, &|| false, &mut |_| Ok(())).unwrap();
        assert_eq!(n, 0);
    }
}
