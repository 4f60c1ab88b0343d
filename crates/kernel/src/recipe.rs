//! How the kernel is built and recognised for each guest architecture.
//!
//! - `x86_64`: `make ARCH=x86_64 vmlinux`, the uncompressed ELF booted through
//!   its PVH entry (QEMU `-M microvm`, Firecracker).
//! - `aarch64`: `make ARCH=arm64 Image` (with `CROSS_COMPILE=aarch64-linux-gnu-`
//!   on other hosts: Debian's `gcc-aarch64-linux-gnu`), the uncompressed
//!   arm64 `Image` that QEMU `-M virt` and Virtualization.framework's
//!   `VZLinuxBootLoader` boot directly. It is installed under the same name
//!   (`kernels/aarch64/vmlinux`) so every consumer finds it the same way.

use std::fs::File;
use std::path::Path;

use crate::fragment;

/// One architecture's build.
#[derive(Debug, Clone, Copy)]
pub struct Recipe {
    /// The store's name for it (`x86_64`, `aarch64`).
    pub arch: &'static str,
    /// The kernel's `ARCH=`.
    pub make_arch: &'static str,
    /// The cross toolchain prefix, used when the host is another architecture.
    pub cross_prefix: &'static str,
    /// The config fragment applied on top of `allnoconfig`.
    pub fragment: &'static str,
    /// The make target that produces the image.
    pub make_target: &'static str,
    /// Where the image lands in the build folder.
    pub image: &'static str,
    /// Whether the build needs libelf (x86's objtool does).
    pub needs_libelf: bool,
    /// Checks that a file is a bootable image for this architecture.
    pub check: fn(&File, &Path) -> Result<(), String>,
}

/// The architectures microagent builds guest kernels for.
pub const RECIPES: [Recipe; 2] = [
    Recipe {
        arch: "x86_64",
        make_arch: "x86_64",
        cross_prefix: "x86_64-linux-gnu-",
        fragment: fragment::X86_64_FRAGMENT,
        make_target: "vmlinux",
        image: "vmlinux",
        needs_libelf: true,
        check: |f, p| crate::elf::check_x86_64_vmlinux(f, p).map(|_| ()),
    },
    Recipe {
        arch: "aarch64",
        make_arch: "arm64",
        cross_prefix: "aarch64-linux-gnu-",
        fragment: fragment::AARCH64_FRAGMENT,
        make_target: "Image",
        image: "arch/arm64/boot/Image",
        needs_libelf: false,
        check: check_arm64_image,
    },
];

/// The recipe for `arch`, if microagent builds kernels for it.
pub fn recipe(arch: &str) -> Option<&'static Recipe> {
    RECIPES.iter().find(|r| r.arch == arch)
}

impl Recipe {
    /// `CROSS_COMPILE` for a build on this host: empty when native.
    pub fn cross_compile(&self) -> Option<&'static str> {
        (std::env::consts::ARCH != self.arch).then_some(self.cross_prefix)
    }
}

/// The arm64 boot protocol's image header (Documentation/arm64/booting.rst):
/// 64 bytes, `ARM\x64` at offset 56, the image size at 16.
const ARM64_MAGIC: u32 = 0x644d_5241;

/// Checks that `file` is an uncompressed arm64 `Image`: the header's magic
/// and an image size that fits the file. Untrusted input: bounded reads, no
/// panics.
pub fn check_arm64_image(file: &File, _path: &Path) -> Result<(), String> {
    let (hdr, len) = crate::elf::read_head(file, "an arm64 kernel Image")?;
    let magic = u32::from_le_bytes([hdr[56], hdr[57], hdr[58], hdr[59]]);
    if magic != ARM64_MAGIC {
        return Err(
            "it has no arm64 Image header (a compressed Image.gz or an ELF vmlinux is not bootable directly)"
                .into(),
        );
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&hdr[16..24]);
    let image_size = u64::from_le_bytes(size);
    if image_size != 0 && image_size < len.min(64) {
        return Err(format!(
            "its header's image size {image_size} is implausible"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        let file = File::open(f.path()).unwrap();
        (f, file)
    }

    #[test]
    fn recognises_an_arm64_image_header() {
        let mut hdr = vec![0u8; 4096];
        hdr[16..24].copy_from_slice(&4096u64.to_le_bytes());
        hdr[56..60].copy_from_slice(b"ARM\x64");
        let (_t, f) = file_with(&hdr);
        assert_eq!(check_arm64_image(&f, Path::new("x")), Ok(()));
        hdr[56] = b'X';
        let (_t, f) = file_with(&hdr);
        assert!(check_arm64_image(&f, Path::new("x"))
            .unwrap_err()
            .contains("no arm64 Image header"));
        let (_t, f) = file_with(b"short");
        assert!(check_arm64_image(&f, Path::new("x"))
            .unwrap_err()
            .contains("too short"));
    }

    #[test]
    fn every_recipe_has_its_fragment_and_cross_prefix() {
        for r in RECIPES {
            assert!(
                r.fragment.contains("CONFIG_VIRTIO_VSOCKETS=y"),
                "{}",
                r.arch
            );
            assert!(r.cross_prefix.ends_with("-linux-gnu-"));
        }
        assert_eq!(recipe("aarch64").unwrap().make_arch, "arm64");
        assert!(recipe("riscv64").is_none());
    }
}
