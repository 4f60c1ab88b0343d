use std::env;
use std::path::{Path, PathBuf};

use vmkit_protocol::GuestArch;

use crate::VmkitError;

const NAME: &str = "microagent-init";
/// A guest init is a few MiB; don't read anything much bigger to check it.
const MAX_INIT_BYTES: u64 = 64 << 20;

/// Finds the static guest init binary for this host's architecture; see
/// [`find_guest_init_for`].
pub fn find_guest_init() -> Result<PathBuf, VmkitError> {
    find_guest_init_for(GuestArch::host())
}

/// Finds the static guest init binary for `arch` to put into root disks:
/// `$MICROAGENT_INIT` (host architecture) or `$MICROAGENT_INIT_AARCH64`
/// (an arm64 guest on another host), else where `scripts/build-guest-init
/// [aarch64]` leaves it beside the running `microagent` in a cargo target
/// folder, else next to the executable, else the install locations under
/// `/usr/local/lib` and `/usr/lib` (`microagent-init-aarch64` for a foreign
/// arm64 init). A dynamically linked candidate, or one for another
/// architecture, is passed over: it cannot run as PID 1 (a plain `cargo
/// build` leaves a dynamic one next to `microagent`).
pub fn find_guest_init_for(arch: GuestArch) -> Result<PathBuf, VmkitError> {
    let native = arch == GuestArch::host();
    let var = if native {
        "MICROAGENT_INIT"
    } else {
        "MICROAGENT_INIT_AARCH64"
    };
    if let Some(p) = env::var_os(var) {
        let p = PathBuf::from(p);
        return match check_static(&p, arch) {
            Ok(()) => Ok(p),
            Err(why) => Err(VmkitError::GuestInit(format!(
                "{var}={}: {why}",
                p.display()
            ))),
        };
    }
    let triple = format!("{arch}-unknown-linux-gnu/release");
    let installed = if native {
        NAME.to_string()
    } else {
        format!("{NAME}-{arch}")
    };
    let mut candidates = Vec::new();
    if let Some(dir) = env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(PathBuf::from))
    {
        // target/{debug,release}/microagent -> target/<triple>/release/microagent-init,
        // or target/chroot/<triple>/... for an init built in the toolchain chroot.
        if let Some(target) = dir.parent() {
            candidates.push(target.join(&triple).join(NAME));
            candidates.push(target.join("chroot").join(&triple).join(NAME));
        }
        candidates.push(dir.join(&installed));
    }
    candidates.push(PathBuf::from("/usr/local/lib/microagent").join(&installed));
    candidates.push(PathBuf::from("/usr/lib/microagent").join(&installed));
    let mut rejected = Vec::new();
    for c in candidates.iter().filter(|p| p.is_file()) {
        match check_static(c, arch) {
            Ok(()) => return Ok(c.clone()),
            Err(why) => rejected.push(format!("{} ({why})", c.display())),
        }
    }
    let build = if native {
        "scripts/build-guest-init".to_string()
    } else {
        format!("scripts/build-guest-init {arch}")
    };
    let mut message =
        format!("the {arch} guest init ({NAME}) was not found; build it with {build} or set {var}");
    if !rejected.is_empty() {
        message.push_str(&format!("; passed over: {}", rejected.join(", ")));
    }
    Err(VmkitError::GuestInit(message))
}

/// Checks that `path` is an ELF executable for `arch` with no program
/// interpreter, i.e. statically linked.
fn check_static(path: &Path, arch: GuestArch) -> Result<(), String> {
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if len > MAX_INIT_BYTES {
        return Err(format!("{len} bytes is too large for a guest init"));
    }
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let exe = vmkit_kernel::elf::read_executable(&file)?;
    let machine = match arch {
        GuestArch::X86_64 => vmkit_kernel::elf::EM_X86_64,
        GuestArch::Aarch64 => vmkit_kernel::elf::EM_AARCH64,
    };
    if exe.machine != machine {
        return Err(format!("not an {arch} executable"));
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
        let err = check_static(Path::new("/bin/ls"), GuestArch::X86_64).unwrap_err();
        assert!(err.contains("dynamically linked"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("init");
        std::fs::write(&text, "#!/bin/sh\n").unwrap();
        assert!(check_static(&text, GuestArch::X86_64)
            .unwrap_err()
            .contains("not an ELF"));
    }

    #[test]
    fn busybox_static_passes() {
        check_static(Path::new("/bin/busybox"), GuestArch::X86_64)
            .expect("busybox-static is static");
        let err = check_static(Path::new("/bin/busybox"), GuestArch::Aarch64).unwrap_err();
        assert!(err.contains("not an aarch64 executable"), "{err}");
    }
}
