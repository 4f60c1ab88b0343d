use std::path::Path;
use std::process::Command;

use vmkit_protocol::{ErrorCode, ProtocolError};

/// Gives a workspace its own copy of a root disk: a reflink where the file
/// system offers one, else a sparse copy, written to a temp name and renamed
/// so a failed copy never looks like a disk. coreutils' `cp` already does
/// reflink-then-sparse correctly, so we use it rather than re-implement it.
pub fn clone_disk(src: &Path, dst: &Path) -> Result<(), ProtocolError> {
    let tmp = dst.with_extension("ext4.tmp");
    let status = Command::new("cp")
        .args(["--reflink=auto", "--sparse=always", "--"])
        .arg(src)
        .arg(&tmp)
        .status();
    let fail = |msg: String| {
        let _ = std::fs::remove_file(&tmp);
        ProtocolError::new(ErrorCode::Internal, msg)
    };
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            return Err(fail(format!(
                "copying root disk {} failed ({s})",
                src.display()
            )))
        }
        Err(e) => return Err(fail(format!("running cp: {e}"))),
    }
    std::fs::rename(&tmp, dst).map_err(|e| fail(format!("renaming {}: {e}", tmp.display())))
}
