//! Fixture images built by the tests themselves: layers crafted entry by
//! entry (including hostile ones a normal tar writer would refuse), a
//! busybox layer from Debian's busybox-static, and writers for OCI image
//! layouts and `docker save` archives.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

/// Debian's static busybox (package busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";

/// The mtime every fixture entry gets unless told otherwise.
pub const FIXTURE_MTIME: u64 = 1_600_000_000;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// Compresses `tar`.
    pub fn apply(self, tar: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => tar.to_vec(),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(tar).expect("gzip");
                e.finish().expect("gzip")
            }
            Compression::Zstd => zstd::encode_all(tar, 3).expect("zstd"),
        }
    }
}

/// Builds one layer tarball entry by entry. Names are written verbatim,
/// so hostile names (`../x`, `/abs`) can be crafted.
pub struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerBuilder {
    /// An empty layer.
    pub fn new() -> LayerBuilder {
        let mut tar = tar::Builder::new(Vec::new());
        tar.mode(tar::HeaderMode::Complete);
        LayerBuilder { tar }
    }

    fn header(
        kind: tar::EntryType,
        name: &str,
        mode: u32,
        uid: u64,
        gid: u64,
        size: u64,
    ) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        let bytes = name.as_bytes();
        assert!(bytes.len() < 100, "fixture names stay below 100 bytes");
        let field = &mut h.as_old_mut().name;
        field.fill(0);
        field[..bytes.len()].copy_from_slice(bytes);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_size(size);
        h.set_mtime(FIXTURE_MTIME);
        h
    }

    fn push(&mut self, mut h: tar::Header, data: &[u8]) -> &mut Self {
        h.set_cksum();
        self.tar.append(&h, data).expect("append to in-memory tar");
        self
    }

    /// A directory.
    pub fn dir(&mut self, name: &str, mode: u32, uid: u64, gid: u64) -> &mut Self {
        let h = Self::header(tar::EntryType::Directory, name, mode, uid, gid, 0);
        self.push(h, &[])
    }

    /// A regular file.
    pub fn file(&mut self, name: &str, content: &[u8], mode: u32, uid: u64, gid: u64) -> &mut Self {
        let h = Self::header(
            tar::EntryType::Regular,
            name,
            mode,
            uid,
            gid,
            content.len() as u64,
        );
        self.push(h, content)
    }

    /// A regular file with a given mtime.
    pub fn file_mtime(&mut self, name: &str, content: &[u8], mode: u32, mtime: u64) -> &mut Self {
        let mut h = Self::header(
            tar::EntryType::Regular,
            name,
            mode,
            0,
            0,
            content.len() as u64,
        );
        h.set_mtime(mtime);
        self.push(h, content)
    }

    /// A regular file whose header claims `size` bytes but carries none
    /// (for size-bound tests; the archive is truncated on purpose).
    pub fn file_claiming(&mut self, name: &str, size: u64) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Regular, name, 0o644, 0, 0, 0);
        h.set_size(size);
        h.set_cksum();
        self.tar.get_mut().extend_from_slice(h.as_bytes());
        self
    }

    /// A symlink.
    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Symlink, name, 0o777, 0, 0, 0);
        h.set_link_name_literal(target).expect("link name");
        self.push(h, &[])
    }

    /// A hard link to an earlier entry.
    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Link, name, 0o644, 0, 0, 0);
        h.set_link_name_literal(target).expect("link name");
        self.push(h, &[])
    }

    /// A character device.
    pub fn char_device(&mut self, name: &str, major: u32, minor: u32, mode: u32) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Char, name, mode, 0, 0, 0);
        h.set_device_major(major).expect("major");
        h.set_device_minor(minor).expect("minor");
        self.push(h, &[])
    }

    /// A FIFO.
    pub fn fifo(&mut self, name: &str, mode: u32) -> &mut Self {
        let h = Self::header(tar::EntryType::Fifo, name, mode, 0, 0, 0);
        self.push(h, &[])
    }

    /// Deletes `path` from lower layers (`dir/.wh.name`).
    pub fn whiteout(&mut self, path: &str) -> &mut Self {
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), path),
        };
        self.file(&format!("{dir}.wh.{name}"), &[], 0o644, 0, 0)
    }

    /// Hides everything lower layers put in `dir` (`dir/.wh..wh..opq`).
    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        self.file(&format!("{dir}/.wh..wh..opq"), &[], 0o644, 0, 0)
    }

    /// A regular file carrying extended attributes in a PAX header
    /// (`SCHILY.xattr.*`, as GNU tar and Go's archive/tar write them).
    pub fn file_with_xattrs(
        &mut self,
        name: &str,
        content: &[u8],
        mode: u32,
        xattrs: &[(&str, &[u8])],
    ) -> &mut Self {
        let keys: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
            .collect();
        let records: Vec<(&str, &[u8])> = keys.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        self.file_with_pax(name, content, mode, &records)
    }

    /// A regular file preceded by a PAX header with `records` (any keys:
    /// `uid`, `LIBARCHIVE.xattr.*`, ...).
    pub fn file_with_pax(
        &mut self,
        name: &str,
        content: &[u8],
        mode: u32,
        records: &[(&str, &[u8])],
    ) -> &mut Self {
        let mut data = Vec::new();
        for (k, v) in records {
            let body_len = format!(" {k}=").len() + v.len() + 1;
            // The length field counts its own digits.
            let mut len = body_len + 1;
            while len.to_string().len() + body_len != len {
                len = len.to_string().len() + body_len;
            }
            data.extend_from_slice(format!("{len} {k}=").as_bytes());
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        let h = Self::header(
            tar::EntryType::XHeader,
            "PaxHeaders/x",
            0o644,
            0,
            0,
            data.len() as u64,
        );
        self.push(h, &data);
        self.file(name, content, mode, 0, 0)
    }

    /// The finished (uncompressed) tarball.
    pub fn finish(self) -> Vec<u8> {
        self.tar.into_inner().expect("finish tar")
    }
}

/// A tar entry with a raw name and link (the tar crate's setters refuse
/// `..` and `/`): for archives that hostile peers send.
pub fn raw_entry(
    b: &mut tar::Builder<Vec<u8>>,
    kind: tar::EntryType,
    name: &[u8],
    link: &[u8],
    data: &[u8],
) {
    let mut h = tar::Header::new_old();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

/// A layer with Debian's static busybox at `/bin/busybox`, its applets as
/// absolute symlinks to it, and a minimal `/etc`.
pub fn busybox_layer() -> LayerBuilder {
    let bin = std::fs::read(BUSYBOX)
        .unwrap_or_else(|e| panic!("{BUSYBOX}: {e}: run scripts/setup (installs busybox-static)"));
    let mut l = LayerBuilder::new();
    for d in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "root", "tmp", "var",
    ] {
        l.dir(d, if d == "tmp" { 0o1777 } else { 0o755 }, 0, 0);
    }
    l.file("bin/busybox", &bin, 0o755, 0, 0);
    for applet in busybox_applets() {
        if applet != "bin/busybox" {
            l.symlink(&applet, "/bin/busybox");
        }
    }
    l.file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        0o644,
        0,
        0,
    );
    l.file("etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644, 0, 0);
    l
}

/// Applet paths (`bin/sh`, `usr/bin/env`, ...) as busybox lists them.
pub fn busybox_applets() -> Vec<String> {
    let out = Command::new(BUSYBOX)
        .arg("--list-full")
        .output()
        .expect("running busybox --list-full");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_string())
        .filter(|l| !l.is_empty() && !l.contains(".."))
        .collect()
}

/// An image to write: layers (uncompressed tarballs and how to compress
/// each) and the runtime config.
pub struct ImageSpec {
    /// Bottom first.
    pub layers: Vec<(Vec<u8>, Compression)>,
    /// The `config` object of the image config (`Env`, `Cmd`, ...).
    pub config: serde_json::Value,
    /// GOARCH, default `amd64`.
    pub architecture: String,
}

impl ImageSpec {
    /// An amd64 image of `layers` with `config`.
    pub fn new(layers: Vec<(Vec<u8>, Compression)>, config: serde_json::Value) -> ImageSpec {
        ImageSpec {
            layers,
            config,
            architecture: "amd64".into(),
        }
    }

    fn config_json(&self) -> Vec<u8> {
        let diff_ids: Vec<String> = self.layers.iter().map(|(t, _)| digest(t)).collect();
        serde_json::to_vec(&serde_json::json!({
            "architecture": self.architecture,
            "os": "linux",
            "config": self.config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .expect("config json")
    }
}

/// `sha256:<hex>`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn put_blob(dir: &Path, bytes: &[u8]) -> (String, usize) {
    let d = digest(bytes);
    let p = dir.join("blobs/sha256").join(&d[7..]);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("blobs dir");
    std::fs::write(&p, bytes).expect("write blob");
    (d, bytes.len())
}

/// Adds `spec` to the OCI image layout at `dir` (created if needed) under
/// `tag`. Returns the manifest digest.
pub fn write_oci_layout(dir: &Path, tag: &str, spec: &ImageSpec) -> String {
    std::fs::create_dir_all(dir).expect("layout dir");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("oci-layout");
    let (cd, cs) = put_blob(dir, &spec.config_json());
    let layers: Vec<serde_json::Value> = spec
        .layers
        .iter()
        .map(|(tar, c)| {
            let (d, s) = put_blob(dir, &c.apply(tar));
            serde_json::json!({"mediaType": c.media_type(), "digest": d, "size": s})
        })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": layers,
    }))
    .expect("manifest json");
    let (md, ms) = put_blob(dir, &manifest);
    let index_path = dir.join("index.json");
    let mut index: serde_json::Value = std::fs::read(&index_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({"schemaVersion": 2, "manifests": []}));
    let manifests = index["manifests"].as_array_mut().expect("manifests array");
    manifests.retain(|m| m["annotations"]["org.opencontainers.image.ref.name"] != tag);
    manifests.push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": md,
        "size": ms,
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }));
    std::fs::write(&index_path, serde_json::to_vec(&index).expect("index json"))
        .expect("index.json");
    md
}

/// Adds a multi-platform image to the OCI layout at `dir` under `tag`: one
/// manifest per `(os/arch[/variant], spec)` behind an image index. Returns
/// the index digest and the manifest digests in order.
pub fn write_oci_index(
    dir: &Path,
    tag: &str,
    images: &[(&str, &ImageSpec)],
) -> (String, Vec<String>) {
    let mut entries = Vec::new();
    let mut digests = Vec::new();
    for (i, (platform, spec)) in images.iter().enumerate() {
        let inner_tag = format!("{tag}-platform-{i}");
        let md = write_oci_layout(dir, &inner_tag, spec);
        let size = std::fs::metadata(dir.join("blobs/sha256").join(&md[7..]))
            .expect("manifest blob")
            .len();
        let mut parts = platform.split('/');
        let (os, arch, variant) = (
            parts.next().expect("os"),
            parts.next().expect("arch"),
            parts.next(),
        );
        let mut p = serde_json::json!({"os": os, "architecture": arch});
        if let Some(v) = variant {
            p["variant"] = v.into();
        }
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md,
            "size": size,
            "platform": p,
        }));
        digests.push(md);
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }))
    .expect("index json");
    let (id, is) = put_blob(dir, &index);
    // Only the index is tagged in the layout's index.json.
    let index_path = dir.join("index.json");
    let mut top: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).expect("index.json"))
            .expect("index.json");
    let manifests = top["manifests"].as_array_mut().expect("manifests array");
    manifests.retain(|m| {
        let name = m["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .unwrap_or("");
        name != tag && !name.starts_with(&format!("{tag}-platform-"))
    });
    manifests.push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": id,
        "size": is,
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }));
    std::fs::write(&index_path, serde_json::to_vec(&top).expect("index json")).expect("index.json");
    (id, digests)
}

/// Writes `spec` as a `docker save` archive (layers uncompressed, as
/// docker writes them). Returns the config digest (the image ID).
pub fn write_docker_archive(file: &Path, repo_tag: &str, spec: &ImageSpec) -> String {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(FIXTURE_MTIME);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data).expect("append");
    };
    let config = spec.config_json();
    let config_digest = digest(&config);
    let config_name = format!("{}.json", &config_digest[7..]);
    add(&config_name, &config);
    let mut layer_names = Vec::new();
    for (i, (tar, _)) in spec.layers.iter().enumerate() {
        let name = format!("layer{i}/layer.tar");
        add(&name, tar);
        layer_names.push(name);
    }
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name,
        "RepoTags": [repo_tag],
        "Layers": layer_names,
    }]))
    .expect("manifest");
    add("manifest.json", &manifest);
    std::fs::write(file, b.into_inner().expect("tar")).expect("write docker archive");
    config_digest
}

/// The busybox image every test that just needs "an image" uses, written as
/// an OCI layout under `tag`; returns the manifest digest.
pub fn busybox_oci_layout(dir: &Path, tag: &str) -> String {
    let spec = ImageSpec::new(
        vec![(busybox_layer().finish(), Compression::Gzip)],
        serde_json::json!({
            "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/root",
        }),
    );
    write_oci_layout(dir, tag, &spec)
}
