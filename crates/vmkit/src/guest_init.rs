use std::env;
use std::path::{Path, PathBuf};

use crate::VmkitError;

const NAME: &str = "microagent-init";
/// A guest init is a few MiB; don't read anything much bigger to check it.
const MAX_INIT_BYTES: u64 = 64 << 20;

/// Finds the static guest init binary to put into root disks:
/// `$MICROAGENT_INIT`, else where `scripts/build-guest-init` leaves it
/// beside the running `microagent` in a cargo target folder, else next to
/// the executable, else the install locations under `/usr/local/lib` and
/// `/usr/lib`. A dynamically linked candidate is passed over: it cannot run
/// as PID 1 in an image without our libc (a plain `cargo build` leaves one
/// such next to `microagent`).
pub fn find_guest_init() -> Result<PathBuf, VmkitError> {
    if let Some(p) = env::var_os("MICROAGENT_INIT") {
        let p = PathBuf::from(p);
        return match check_static(&p) {
            Ok(()) => Ok(p),
            Err(why) => Err(VmkitError::GuestInit(format!(
                "MICROAGENT_INIT={}: {why}",
                p.display()
            ))),
        };
    }
    let mut candidates = Vec::new();
    if let Some(dir) = env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(PathBuf::from))
    {
        // target/{debug,release}/microagent -> target/<triple>/release/microagent-init
        if let Some(target) = dir.parent() {
            candidates.push(target.join("x86_64-unknown-linux-gnu/release").join(NAME));
        }
        candidates.push(dir.join(NAME));
    }
    candidates.push(PathBuf::from("/usr/local/lib/microagent").join(NAME));
    candidates.push(PathBuf::from("/usr/lib/microagent").join(NAME));
    let mut rejected = Vec::new();
    for c in candidates.iter().filter(|p| p.is_file()) {
        match check_static(c) {
            Ok(()) => return Ok(c.clone()),
            Err(why) => rejected.push(format!("{} ({why})", c.display())),
        }
    }
    let mut message = format!(
        "the guest init ({NAME}) was not found; build it with scripts/build-guest-init or set MICROAGENT_INIT"
    );
    if !rejected.is_empty() {
        message.push_str(&format!("; passed over: {}", rejected.join(", ")));
    }
    Err(VmkitError::GuestInit(message))
}

/// Checks that `path` is an x86_64 ELF executable with no program
/// interpreter, i.e. statically linked.
fn check_static(path: &Path) -> Result<(), String> {
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if len > MAX_INIT_BYTES {
        return Err(format!("{len} bytes is too large for a guest init"));
    }
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let exe = vmkit_kernel::elf::read_executable(&file)?;
    if exe.machine != vmkit_kernel::elf::EM_X86_64 {
        return Err("not an x86_64 executable".into());
    }
    if let Some(interp) = exe.interpreter {
        return Err(format!("dynamically linked (needs {interp})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_and_non_elf_files_are_not_accepted_as_init() {
        // /bin/ls is dynamically linked on Debian; the test binary is too.
        let err = check_static(Path::new("/bin/ls")).unwrap_err();
        assert!(err.contains("dynamically linked"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("init");
        std::fs::write(&text, "#!/bin/sh\n").unwrap();
        assert!(check_static(&text).unwrap_err().contains("not an ELF"));
    }

    #[test]
    fn busybox_static_passes() {
        check_static(Path::new("/bin/busybox")).expect("busybox-static is static");
    }
}
