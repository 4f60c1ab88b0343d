//! Reading a JSON-lines log a writer may still be appending to (`events`,
//! `egress`): whole lines only, and with `--follow` new ones as they come,
//! across a rotation of the file.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

/// Hands each complete line of `path` to `each`. With `follow`, keeps
/// waiting for more while `alive()` says the writer may still write; a
/// file replaced under us (rotated) is reopened from its start.
pub fn lines(
    path: &Path,
    follow: bool,
    alive: impl Fn() -> bool,
    mut each: impl FnMut(&str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n > 0 && line.ends_with('\n') {
            each(line.trim_end())?;
            continue;
        }
        if !follow || !alive() {
            return Ok(());
        }
        // Half a line: wait for the writer to finish it.
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
        std::thread::sleep(Duration::from_millis(200));
    }
}
