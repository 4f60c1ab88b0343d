//! Just enough ELF reading to tell a bootable x86_64 `vmlinux` from
//! anything else. Input is untrusted (a user's file): every offset and count
//! is bounded before use and nothing here panics on malformed data.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

const EM_X86_64: u16 = 62;
const ET_EXEC: u16 = 2;
const PT_NOTE: u32 = 4;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the PVH entry point QEMU's `-kernel` and
/// Firecracker use to start an uncompressed vmlinux.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Real kernels have a handful of program headers.
const MAX_PHNUM: u16 = 64;
/// The notes of a vmlinux are well under a page; bound what we read.
const MAX_NOTE_SEGMENT: u64 = 1 << 20;

/// What the ELF check learned about a kernel image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    /// Whether the image carries a PVH entry note.
    pub pvh_entry: bool,
}

/// The first 64 bytes of a kernel image (every header microagent checks
/// fits) and the file's length; a shorter file is an error naming `what`.
pub(crate) fn read_header(file: &File, what: &str) -> Result<([u8; 64], u64), String> {
    let len = file
        .metadata()
        .map_err(|e| format!("cannot stat it: {e}"))?
        .len();
    let mut hdr = [0u8; 64];
    if len < hdr.len() as u64 {
        return Err(format!("it is {len} bytes long, too short to be {what}"));
    }
    read_exact_at(file, &mut hdr, 0)?;
    Ok((hdr, len))
}

/// Checks that `file` is a little-endian 64-bit x86_64 executable ELF with
/// a PVH entry note. The error is a sentence for the user.
pub fn check_x86_64_vmlinux(file: &File, path: &Path) -> Result<ElfInfo, String> {
    let (hdr, len) = read_header(file, "an ELF kernel image")?;
    if &hdr[..4] != b"\x7fELF" {
        // The x86 boot protocol puts "HdrS" at 0x202 of a bzImage.
        let mut magic = [0u8; 4];
        let is_bzimage =
            len >= 0x206 && file.read_exact_at(&mut magic, 0x202).is_ok() && &magic == b"HdrS";
        let hint = if is_bzimage {
            " (it looks like a compressed bzImage; pass the uncompressed vmlinux from the kernel build tree)"
        } else {
            ""
        };
        return Err(format!("it is not an ELF file{hint}"));
    }
    if hdr[4] != 2 {
        return Err("it is a 32-bit ELF file; a 64-bit x86_64 vmlinux is needed".into());
    }
    if hdr[5] != 1 {
        return Err("it is a big-endian ELF file; an x86_64 vmlinux is needed".into());
    }
    let e_type = u16::from_le_bytes([hdr[16], hdr[17]]);
    let e_machine = u16::from_le_bytes([hdr[18], hdr[19]]);
    if e_machine != EM_X86_64 {
        return Err(format!(
            "it is an ELF file for machine {e_machine}, not x86_64 ({EM_X86_64})"
        ));
    }
    if e_type != ET_EXEC {
        return Err(format!(
            "it is an ELF file of type {e_type}, not an executable (2) like a vmlinux"
        ));
    }
    let e_phoff = u64::from_le_bytes(hdr[32..40].try_into().expect("8 bytes"));
    let e_phentsize = u16::from_le_bytes([hdr[54], hdr[55]]);
    let e_phnum = u16::from_le_bytes([hdr[56], hdr[57]]);
    if e_phnum == 0 || e_phnum > MAX_PHNUM || e_phentsize < 56 {
        return Err(format!(
            "its program header table is implausible ({e_phnum} entries of {e_phentsize} bytes)"
        ));
    }
    let mut pvh_entry = false;
    for i in 0..u64::from(e_phnum) {
        let off = i
            .checked_mul(u64::from(e_phentsize))
            .and_then(|o| o.checked_add(e_phoff))
            .filter(|o| o.checked_add(56).is_some_and(|end| end <= len))
            .ok_or_else(|| "its program header table lies outside the file".to_string())?;
        let mut ph = [0u8; 56];
        read_exact_at(file, &mut ph, off)?;
        let p_type = u32::from_le_bytes(ph[0..4].try_into().expect("4 bytes"));
        if p_type != PT_NOTE {
            continue;
        }
        let p_offset = u64::from_le_bytes(ph[8..16].try_into().expect("8 bytes"));
        let p_filesz = u64::from_le_bytes(ph[32..40].try_into().expect("8 bytes"));
        if p_filesz > MAX_NOTE_SEGMENT || p_offset.checked_add(p_filesz).is_none_or(|e| e > len) {
            return Err("a note segment lies outside the file".into());
        }
        let mut notes = vec![0u8; p_filesz as usize];
        read_exact_at(file, &mut notes, p_offset)?;
        if has_pvh_note(&notes) {
            pvh_entry = true;
        }
    }
    if !pvh_entry {
        return Err(format!(
            "it has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY), so QEMU and Firecracker cannot boot it directly; rebuild it with CONFIG_PVH=y ({})",
            path.display()
        ));
    }
    Ok(ElfInfo { pvh_entry })
}

/// Walks ELF notes (`namesz, descsz, type, name, desc`, each padded to 4).
fn has_pvh_note(mut notes: &[u8]) -> bool {
    fn pad4(n: usize) -> Option<usize> {
        n.checked_add(3).map(|n| n & !3)
    }
    while notes.len() >= 12 {
        let namesz = u32::from_le_bytes(notes[0..4].try_into().expect("4 bytes")) as usize;
        let descsz = u32::from_le_bytes(notes[4..8].try_into().expect("4 bytes")) as usize;
        let ntype = u32::from_le_bytes(notes[8..12].try_into().expect("4 bytes"));
        let Some(name_end) = pad4(namesz).and_then(|n| n.checked_add(12)) else {
            return false;
        };
        let Some(end) = pad4(descsz).and_then(|d| d.checked_add(name_end)) else {
            return false;
        };
        if end > notes.len() {
            return false;
        }
        let name = &notes[12..12 + namesz];
        if ntype == XEN_ELFNOTE_PHYS32_ENTRY && name.strip_suffix(b"\0").unwrap_or(name) == b"Xen" {
            return true;
        }
        notes = &notes[end..];
    }
    false
}

fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> Result<(), String> {
    file.read_exact_at(buf, offset)
        .map_err(|e| format!("cannot read it: {e}"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A minimal ELF64 x86_64 executable with one PT_NOTE segment holding
    /// the given notes.
    pub(crate) fn fake_vmlinux(machine: u16, notes: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 64 + 56];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        f[18..20].copy_from_slice(&machine.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = &mut f[64..120];
        ph[0..4].copy_from_slice(&PT_NOTE.to_le_bytes());
        ph[8..16].copy_from_slice(&120u64.to_le_bytes());
        ph[32..40].copy_from_slice(&(notes.len() as u64).to_le_bytes());
        f.extend_from_slice(notes);
        f
    }

    pub(crate) fn pvh_note() -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&4u32.to_le_bytes());
        n.extend_from_slice(&4u32.to_le_bytes());
        n.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
        n.extend_from_slice(b"Xen\0");
        n.extend_from_slice(&0x0100_0000u32.to_le_bytes());
        n
    }

    fn check(bytes: &[u8]) -> Result<ElfInfo, String> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        check_x86_64_vmlinux(&f, Path::new("test"))
    }

    #[test]
    fn accepts_x86_64_with_pvh_note() {
        assert_eq!(
            check(&fake_vmlinux(EM_X86_64, &pvh_note())),
            Ok(ElfInfo { pvh_entry: true })
        );
    }

    #[test]
    fn rejects_other_machines_missing_notes_and_junk() {
        assert!(check(&fake_vmlinux(183, &pvh_note()))
            .unwrap_err()
            .contains("not x86_64"));
        assert!(check(&fake_vmlinux(EM_X86_64, &[]))
            .unwrap_err()
            .contains("PVH"));
        assert!(check(b"#!/bin/sh\necho hi\n")
            .unwrap_err()
            .contains("too short"));
        assert!(check(&[b'x'; 4096]).unwrap_err().contains("not an ELF"));
        let mut bz = vec![0u8; 4096];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert!(check(&bz).unwrap_err().contains("bzImage"));
    }

    #[test]
    fn survives_hostile_headers() {
        // Note sizes that overflow, phnum past the file end, huge offsets.
        let mut bad_note = pvh_note();
        bad_note[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(check(&fake_vmlinux(EM_X86_64, &bad_note)).is_err());
        let mut f = fake_vmlinux(EM_X86_64, &pvh_note());
        f[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(check(&f).is_err());
        let mut f = fake_vmlinux(EM_X86_64, &pvh_note());
        f[56..58].copy_from_slice(&60u16.to_le_bytes());
        assert!(check(&f).is_err());
        let mut f = fake_vmlinux(EM_X86_64, &pvh_note());
        f[64 + 8..64 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(check(&f).is_err());
    }
}
