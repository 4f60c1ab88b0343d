//! Inspecting built ext4 images with `debugfs`, as the issue asks: the
//! checks read the real filesystem, not the staging tree.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// What `debugfs stat` says about an inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub kind: String,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub links: u32,
    pub size: u64,
    pub mtime: i64,
    pub device: Option<(u32, u32)>,
}

fn debugfs(img: &Path, request: &str) -> (String, String) {
    let out = Command::new("/usr/sbin/debugfs")
        .arg("-R")
        .arg(request)
        .arg(img)
        .output()
        .expect("debugfs (e2fsprogs)");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let i = text.find(name)?;
    text[i + name.len()..].split_whitespace().next()
}

/// `None` when the path does not exist in the image.
pub fn stat(img: &Path, path: &str) -> Option<Inode> {
    let (out, err) = debugfs(img, &format!("stat \"{path}\""));
    if err.contains("not found") || !out.contains("Inode:") {
        return None;
    }
    let mtime_hex = field(&out, " mtime: ")
        .expect("mtime")
        .split(':')
        .next()
        .expect("mtime");
    let device = out.find("Device major/minor number: ").map(|i| {
        let s = out[i + 27..].split_whitespace().next().expect("dev");
        let (a, b) = s.split_once(':').expect("major:minor");
        (a.parse().expect("major"), b.parse().expect("minor"))
    });
    Some(Inode {
        kind: field(&out, "Type: ").expect("type").to_string(),
        mode: u32::from_str_radix(field(&out, "Mode: ").expect("mode"), 8).expect("mode"),
        uid: field(&out, "User: ").expect("user").parse().expect("uid"),
        gid: field(&out, "Group: ").expect("group").parse().expect("gid"),
        links: field(&out, "Links: ")
            .expect("links")
            .parse()
            .expect("links"),
        size: field(&out, "Size: ").expect("size").parse().expect("size"),
        mtime: i64::from_str_radix(mtime_hex.trim_start_matches("0x"), 16).expect("mtime"),
        device,
    })
}

/// A file's content.
pub fn cat(img: &Path, path: &str) -> Vec<u8> {
    let out = Command::new("/usr/sbin/debugfs")
        .arg("-R")
        .arg(format!("cat \"{path}\""))
        .arg(img)
        .output()
        .expect("debugfs");
    out.stdout
}

/// A symlink's target.
pub fn readlink(img: &Path, path: &str) -> String {
    let (out, _) = debugfs(img, &format!("stat \"{path}\""));
    let i = out.find("Fast link dest: ").expect("fast symlink");
    out[i + 16..]
        .lines()
        .next()
        .expect("dest")
        .trim()
        .trim_matches('"')
        .to_string()
}

/// An xattr value (as debugfs prints it).
pub fn xattr(img: &Path, path: &str, name: &str) -> String {
    let (out, err) = debugfs(img, &format!("ea_get \"{path}\" {name}"));
    format!("{out}{err}")
}

/// Names in a directory (without `.` and `..`).
pub fn ls(img: &Path, dir: &str) -> Vec<String> {
    let (out, _) = debugfs(img, &format!("ls -p \"{dir}\""));
    let mut names: Vec<String> = out
        .lines()
        .filter_map(|l| l.split('/').nth(5).map(str::to_string))
        .filter(|n| !n.is_empty() && n != "." && n != "..")
        .collect();
    names.sort();
    names
}

/// `e2fsck -fn` passes.
pub fn fsck_clean(img: &Path) {
    let out = Command::new("/usr/sbin/e2fsck")
        .args(["-fn"])
        .arg(img)
        .output()
        .expect("e2fsck");
    assert!(
        out.status.success(),
        "e2fsck: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every path under `root` (for "nothing appeared outside" checks).
pub fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                out.push(p.strip_prefix(root).unwrap().display().to_string());
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&p, root, out);
                }
            }
        }
    }
    walk(root, root, &mut out);
    out.sort();
    out
}
