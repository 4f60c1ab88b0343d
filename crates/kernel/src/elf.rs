//! Just enough ELF reading to tell a bootable x86_64 `vmlinux` from
//! anything else, and a static executable (a guest init) from a dynamic
//! one. Input is untrusted (a user's file): every offset and count
//! is bounded before use and nothing here panics on malformed data.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// `e_machine` of x86_64.
pub const EM_X86_64: u16 = 62;
/// `e_machine` of arm64.
pub const EM_AARCH64: u16 = 183;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const PT_INTERP: u32 = 3;
const PT_NOTE: u32 = 4;
/// Longest program interpreter path read (Linux allows PATH_MAX).
const MAX_INTERP: u64 = 4096;
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

/// The fields of a little-endian ELF64 header that the checks here use.
struct Header {
    e_type: u16,
    e_machine: u16,
    phoff: u64,
    phentsize: u16,
    phnum: u16,
}

/// One program header: its type and where its bytes are in the file.
struct ProgramHeader {
    p_type: u32,
    offset: u64,
    filesz: u64,
}

/// Reads and bounds the header of a little-endian 64-bit ELF file of
/// `len` bytes. `what` names the expected kind of file in errors.
fn read_header(file: &File, len: u64, what: &str) -> Result<Header, String> {
    let mut hdr = [0u8; 64];
    let head = hdr.len().min(usize::try_from(len).unwrap_or(usize::MAX));
    read_exact_at(file, &mut hdr[..head], 0)?;
    if head >= 4 && &hdr[..4] != b"\x7fELF" {
        return Err("it is not an ELF file".into());
    }
    if head < hdr.len() {
        return Err(format!("it is {len} bytes long, too short to be {what}"));
    }
    if hdr[4] != 2 {
        return Err(format!("it is a 32-bit ELF file; {what} must be 64-bit"));
    }
    if hdr[5] != 1 {
        return Err(format!(
            "it is a big-endian ELF file; {what} must be little-endian"
        ));
    }
    let header = Header {
        e_type: u16::from_le_bytes([hdr[16], hdr[17]]),
        e_machine: u16::from_le_bytes([hdr[18], hdr[19]]),
        phoff: u64::from_le_bytes(hdr[32..40].try_into().expect("8 bytes")),
        phentsize: u16::from_le_bytes([hdr[54], hdr[55]]),
        phnum: u16::from_le_bytes([hdr[56], hdr[57]]),
    };
    if header.phnum == 0 || header.phnum > MAX_PHNUM || header.phentsize < 56 {
        return Err(format!(
            "its program header table is implausible ({} entries of {} bytes)",
            header.phnum, header.phentsize
        ));
    }
    Ok(header)
}

/// Reads the program headers, each checked to lie inside the file.
fn program_headers(file: &File, len: u64, h: &Header) -> Result<Vec<ProgramHeader>, String> {
    (0..u64::from(h.phnum))
        .map(|i| {
            let off = i
                .checked_mul(u64::from(h.phentsize))
                .and_then(|o| o.checked_add(h.phoff))
                .filter(|o| o.checked_add(56).is_some_and(|end| end <= len))
                .ok_or_else(|| "its program header table lies outside the file".to_string())?;
            let mut ph = [0u8; 56];
            read_exact_at(file, &mut ph, off)?;
            let segment = ProgramHeader {
                p_type: u32::from_le_bytes(ph[0..4].try_into().expect("4 bytes")),
                offset: u64::from_le_bytes(ph[8..16].try_into().expect("8 bytes")),
                filesz: u64::from_le_bytes(ph[32..40].try_into().expect("8 bytes")),
            };
            if segment
                .offset
                .checked_add(segment.filesz)
                .is_none_or(|e| e > len)
            {
                return Err("a segment lies outside the file".to_string());
            }
            Ok(segment)
        })
        .collect()
}

fn file_len(file: &File) -> Result<u64, String> {
    Ok(file
        .metadata()
        .map_err(|e| format!("cannot stat it: {e}"))?
        .len())
}

/// The first 64 bytes of a kernel image (every header microagent checks
/// fits) and the file's length; a shorter file is an error naming `what`.
pub(crate) fn read_head(file: &File, what: &str) -> Result<([u8; 64], u64), String> {
    let len = file_len(file)?;
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
    let len = file_len(file)?;
    let header = read_header(file, len, "an x86_64 vmlinux").map_err(|e| {
        // The x86 boot protocol puts "HdrS" at 0x202 of a bzImage.
        let mut magic = [0u8; 4];
        let is_bzimage =
            len >= 0x206 && file.read_exact_at(&mut magic, 0x202).is_ok() && &magic == b"HdrS";
        if is_bzimage {
            format!("{e} (it looks like a compressed bzImage; pass the uncompressed vmlinux from the kernel build tree)")
        } else {
            e
        }
    })?;
    if header.e_machine != EM_X86_64 {
        return Err(format!(
            "it is an ELF file for machine {}, not x86_64 ({EM_X86_64})",
            header.e_machine
        ));
    }
    if header.e_type != ET_EXEC {
        return Err(format!(
            "it is an ELF file of type {}, not an executable (2) like a vmlinux",
            header.e_type
        ));
    }
    let mut pvh_entry = false;
    for segment in program_headers(file, len, &header)? {
        if segment.p_type != PT_NOTE {
            continue;
        }
        if segment.filesz > MAX_NOTE_SEGMENT {
            return Err("a note segment is implausibly large".into());
        }
        let mut notes = vec![0u8; segment.filesz as usize];
        read_exact_at(file, &mut notes, segment.offset)?;
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

/// How an ELF executable runs: for which machine, and with which program
/// interpreter (`PT_INTERP`, the dynamic loader); a static binary has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executable {
    /// `e_machine` ([`EM_X86_64`], [`EM_AARCH64`], ...).
    pub machine: u16,
    /// The requested program interpreter, if any.
    pub interpreter: Option<String>,
}

/// Reads an ELF64 executable's (`ET_EXEC`, or `ET_DYN` for static-pie)
/// machine and program interpreter. The error is a sentence for the user.
pub fn read_executable(file: &File) -> Result<Executable, String> {
    let len = file_len(file)?;
    let header = read_header(file, len, "an executable")?;
    if header.e_type != ET_EXEC && header.e_type != ET_DYN {
        return Err(format!(
            "it is an ELF file of type {}, not an executable",
            header.e_type
        ));
    }
    let mut interpreter = None;
    for segment in program_headers(file, len, &header)? {
        if segment.p_type != PT_INTERP {
            continue;
        }
        if segment.filesz > MAX_INTERP {
            return Err("its program interpreter path is implausibly long".into());
        }
        let mut path = vec![0u8; segment.filesz as usize];
        read_exact_at(file, &mut path, segment.offset)?;
        let path = path.strip_suffix(b"\0").unwrap_or(&path);
        interpreter = Some(String::from_utf8_lossy(path).into_owned());
    }
    Ok(Executable {
        machine: header.e_machine,
        interpreter,
    })
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
            .contains("not an ELF"));
        assert!(check(b"\x7fELF\x02\x01").unwrap_err().contains("too short"));
        assert!(check(&[b'x'; 4096]).unwrap_err().contains("not an ELF"));
        let mut bz = vec![0u8; 4096];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert!(check(&bz).unwrap_err().contains("bzImage"));
    }

    #[test]
    fn executables_report_their_interpreter() {
        let read = |p: &str| read_executable(&File::open(p).unwrap());
        // busybox-static is static; /bin/ls on Debian is not.
        let busybox = read("/bin/busybox").unwrap();
        assert_eq!(busybox.interpreter, None);
        assert_eq!(busybox.machine, EM_X86_64);
        let ls = read("/bin/ls").unwrap();
        assert!(ls.interpreter.unwrap().contains("ld-linux"));
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"#!/bin/sh\n").unwrap();
        assert!(read_executable(&f).unwrap_err().contains("not an ELF"));
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&[b'x'; 4096]).unwrap();
        assert!(read_executable(&f).unwrap_err().contains("not an ELF"));
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
