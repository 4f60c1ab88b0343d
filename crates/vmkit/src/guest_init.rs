use std::env;
use std::path::PathBuf;

use crate::VmkitError;

const NAME: &str = "microagent-init";

/// Finds the static guest init binary to put into root disks:
/// `$MICROAGENT_INIT`, else next to the running `microagent` executable,
/// else where `scripts/build-guest-init` leaves it in a cargo target folder,
/// else the install locations under `/usr/local/lib` and `/usr/lib`.
pub fn find_guest_init() -> Result<PathBuf, VmkitError> {
    if let Some(p) = env::var_os("MICROAGENT_INIT") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(VmkitError::GuestInit(format!(
                "MICROAGENT_INIT={} is not a file",
                p.display()
            )))
        };
    }
    let mut candidates = Vec::new();
    if let Some(dir) = env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(PathBuf::from))
    {
        candidates.push(dir.join(NAME));
        // target/{debug,release}/microagent -> target/<triple>/release/microagent-init
        if let Some(target) = dir.parent() {
            candidates.push(target.join("x86_64-unknown-linux-gnu/release").join(NAME));
        }
    }
    candidates.push(PathBuf::from("/usr/local/lib/microagent").join(NAME));
    candidates.push(PathBuf::from("/usr/lib/microagent").join(NAME));
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        VmkitError::GuestInit(format!(
            "the guest init ({NAME}) was not found; build it with scripts/build-guest-init or set MICROAGENT_INIT"
        ))
    })
}
