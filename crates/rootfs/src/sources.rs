//! Where layers come from: the local store (registry pulls), an OCI image
//! layout folder, a `docker save` archive or a plain rootfs tarball. Each
//! source is first *identified* cheaply (the digest the cache is keyed by),
//! and only opened layer by layer when a build is needed.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::apply::{Limits, Staging};
use crate::error::{IoContext, RootfsError};
use crate::oci::{
    read_bounded, verify_bytes, ConfigFile, Descriptor, ImageConfig, ManifestOrIndex, Platform,
    VerifyingReader, MAX_JSON_BYTES,
};
use crate::reference::validate_digest;
use crate::store::ImageStore;

/// One layer to apply.
pub(crate) struct LayerSource {
    pub file: PathBuf,
    /// Byte range inside `file` (whole file when `None`).
    pub range: Option<(u64, u64)>,
    /// Compressed digest and size to verify while reading (untrusted
    /// sources; store blobs were verified when they were written).
    pub verify: Option<(String, u64)>,
    /// Uncompressed digest to verify (docker archives).
    pub diff_id: Option<String>,
    pub what: String,
}

/// An identified image, ready to build.
pub(crate) struct Resolved {
    /// The digest the cache is keyed by (manifest digest, or for sources
    /// without a manifest, the config or tarball digest).
    pub digest: String,
    pub config: ImageConfig,
    pub layers: Vec<LayerSource>,
}

fn parse_config(bytes: &[u8], what: &str) -> Result<ConfigFile, RootfsError> {
    serde_json::from_slice(bytes).map_err(|e| RootfsError::malformed(what, e))
}

/// An image already in the store, by manifest digest.
pub(crate) fn from_store(
    store: &ImageStore,
    manifest_digest: &str,
    limits: &Limits,
) -> Result<Resolved, RootfsError> {
    let bytes = store.read_blob(manifest_digest, MAX_JSON_BYTES)?;
    verify_bytes(
        &bytes,
        manifest_digest,
        None,
        &format!("manifest {manifest_digest}"),
    )?;
    let m = ManifestOrIndex::parse(&bytes, &format!("manifest {manifest_digest}"))?;
    let (config_desc, layers) = m.image_parts(&format!("manifest {manifest_digest}"))?;
    config_desc.check("image config descriptor", MAX_JSON_BYTES)?;
    let cbytes = store.read_blob(&config_desc.digest, MAX_JSON_BYTES)?;
    verify_bytes(
        &cbytes,
        &config_desc.digest,
        Some(config_desc.size as u64),
        "image config",
    )?;
    let config = parse_config(&cbytes, "image config")?;
    if layers.len() > limits.max_layers {
        return Err(RootfsError::limit("layer count", limits.max_layers));
    }
    let layers = layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let size = l.check(&format!("layer {i}"), limits.max_blob_bytes)?;
            if !store.has_blob(&l.digest, size) {
                return Err(RootfsError::NotFound(format!(
                    "layer {} of image {manifest_digest} is missing from the local store (pull the image again)",
                    l.digest
                )));
            }
            Ok(LayerSource {
                file: store.blob_path(&l.digest),
                range: None,
                verify: None,
                diff_id: None,
                what: format!("layer {i} ({})", l.digest),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Resolved {
        digest: manifest_digest.to_string(),
        config: config.config.unwrap_or_default().normalised(),
        layers,
    })
}

fn layout_blob(dir: &Path, digest: &str) -> Result<PathBuf, RootfsError> {
    validate_digest(digest).map_err(|r| RootfsError::malformed("descriptor", r))?;
    Ok(dir.join("blobs").join("sha256").join(&digest[7..]))
}

fn read_layout_blob(dir: &Path, d: &Descriptor, what: &str) -> Result<Vec<u8>, RootfsError> {
    let size = d.check(what, MAX_JSON_BYTES)?;
    let p = layout_blob(dir, &d.digest)?;
    let f = File::open(&p).ctx(|| format!("opening {what} {}", p.display()))?;
    let bytes = read_bounded(f, MAX_JSON_BYTES, what)?;
    verify_bytes(&bytes, &d.digest, Some(size), what)?;
    Ok(bytes)
}

/// The manifest digest an OCI layout's `tag` (or only manifest) names, for
/// `platform`; cheap (index plus at most one nested index).
pub(crate) fn layout_manifest(
    dir: &Path,
    tag: Option<&str>,
    platform: &Platform,
) -> Result<(Descriptor, Vec<u8>), RootfsError> {
    let what = format!("OCI layout {}", dir.display());
    let index_path = dir.join("index.json");
    let f = File::open(&index_path).ctx(|| format!("opening {}", index_path.display()))?;
    let index = ManifestOrIndex::parse(
        &read_bounded(f, MAX_JSON_BYTES, "index.json")?,
        &format!("{what} index.json"),
    )?;
    let manifests = index.manifests.clone().unwrap_or_default();
    let name_of = |d: &Descriptor| {
        d.annotations
            .as_ref()
            .and_then(|a| a.get("org.opencontainers.image.ref.name"))
            .cloned()
    };
    let chosen: Vec<&Descriptor> = match tag {
        Some(t) => manifests
            .iter()
            .filter(|d| name_of(d).as_deref() == Some(t))
            .collect(),
        None => manifests.iter().collect(),
    };
    let desc = match chosen.as_slice() {
        [one] => (*one).clone(),
        [] => {
            let tags: Vec<String> = manifests.iter().filter_map(name_of).collect();
            return Err(RootfsError::NotFound(format!(
                "{what} has no image tagged {:?} (tags: {})",
                tag.unwrap_or(""),
                tags.join(", ")
            )));
        }
        many if tag.is_none() && many.iter().any(|d| d.platform.is_some()) => {
            index.select(platform, &what)?
        }
        _ => {
            let tags: Vec<String> = manifests.iter().filter_map(name_of).collect();
            return Err(RootfsError::malformed(
                what,
                format!(
                    "holds several images; name one with oci-layout:DIR:TAG (tags: {})",
                    tags.join(", ")
                ),
            ));
        }
    };
    let bytes = read_layout_blob(dir, &desc, &format!("manifest {}", desc.digest))?;
    let doc = ManifestOrIndex::parse(&bytes, &format!("manifest {}", desc.digest))?;
    if doc.is_index() {
        let inner = doc.select(platform, &what)?;
        let bytes = read_layout_blob(dir, &inner, &format!("manifest {}", inner.digest))?;
        return Ok((inner, bytes));
    }
    Ok((desc, bytes))
}

/// An OCI layout image; blobs are verified while read.
pub(crate) fn from_layout(
    dir: &Path,
    manifest: &Descriptor,
    bytes: &[u8],
    limits: &Limits,
) -> Result<Resolved, RootfsError> {
    let m = ManifestOrIndex::parse(bytes, &format!("manifest {}", manifest.digest))?;
    let (config_desc, layers) = m.image_parts(&format!("manifest {}", manifest.digest))?;
    let config = parse_config(
        &read_layout_blob(dir, &config_desc, "image config")?,
        "image config",
    )?;
    if layers.len() > limits.max_layers {
        return Err(RootfsError::limit("layer count", limits.max_layers));
    }
    let layers = layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let size = l.check(&format!("layer {i}"), limits.max_blob_bytes)?;
            Ok(LayerSource {
                file: layout_blob(dir, &l.digest)?,
                range: None,
                verify: Some((l.digest.clone(), size)),
                diff_id: None,
                what: format!("layer {i} ({})", l.digest),
            })
        })
        .collect::<Result<_, RootfsError>>()?;
    Ok(Resolved {
        digest: manifest.digest.clone(),
        config: config.config.unwrap_or_default().normalised(),
        layers,
    })
}

#[derive(Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// A `docker save` archive. Keyed by its config digest (the image ID);
/// each layer is checked against the config's `diff_ids`.
pub(crate) fn from_docker_archive(file: &Path, limits: &Limits) -> Result<Resolved, RootfsError> {
    let what = format!("docker archive {}", file.display());
    let f = File::open(file).ctx(|| format!("opening {}", file.display()))?;
    // The archive is hostile too: its long names are bounded while read.
    let (f, meter) = crate::tar_meter::MeteredReader::new(f);
    let mut archive = tar::Archive::new(f);
    let mut index: HashMap<String, (u64, u64)> = HashMap::new();
    let mut links: HashMap<String, String> = HashMap::new();
    let mut entries = archive
        .entries_with_seek()
        .map_err(|e| RootfsError::malformed(&what, e))?;
    loop {
        meter.start(limits.max_entry_metadata_bytes);
        let next = entries.next();
        meter.stop();
        let Some(entry) = next else { break };
        let entry = entry.map_err(|e| {
            if meter.tripped() {
                RootfsError::limit(
                    format!("metadata of one entry of {what}"),
                    format!("{} bytes", limits.max_entry_metadata_bytes),
                )
            } else {
                RootfsError::malformed(&what, e)
            }
        })?;
        if index.len() + links.len() > 100_000 {
            return Err(RootfsError::limit(format!("{what} entries"), 100_000));
        }
        let name = String::from_utf8_lossy(&entry.path_bytes())
            .trim_start_matches("./")
            .to_string();
        if entry.header().entry_type().is_symlink() {
            if let Some(target) = entry.link_name_bytes() {
                let base = Path::new(&name).parent().unwrap_or(Path::new(""));
                let t = base.join(String::from_utf8_lossy(&target).as_ref());
                links.insert(name, normalize(&t));
            }
            continue;
        }
        index.insert(name, (entry.raw_file_position(), entry.size()));
    }
    let lookup = |name: &str| -> Result<(u64, u64), RootfsError> {
        let name = name.trim_start_matches("./");
        let name = links.get(name).map(String::as_str).unwrap_or(name);
        index
            .get(name)
            .copied()
            .ok_or_else(|| RootfsError::malformed(&what, format!("{name} is missing")))
    };
    let read_member = |name: &str| -> Result<Vec<u8>, RootfsError> {
        let (off, len) = lookup(name)?;
        if len > MAX_JSON_BYTES {
            return Err(RootfsError::limit(
                format!("{what}: {name}"),
                MAX_JSON_BYTES,
            ));
        }
        let mut f = File::open(file).ctx(|| format!("opening {}", file.display()))?;
        f.seek(SeekFrom::Start(off))
            .ctx(|| format!("reading {}", file.display()))?;
        read_bounded(f.take(len), len, name)
    };
    let manifest: Vec<DockerManifestEntry> = serde_json::from_slice(&read_member("manifest.json")?)
        .map_err(|e| RootfsError::malformed(format!("{what} manifest.json"), e))?;
    let entry = match manifest.as_slice() {
        [one] => one,
        [] => {
            return Err(RootfsError::malformed(
                &what,
                "manifest.json lists no image",
            ))
        }
        _ => {
            return Err(RootfsError::malformed(
                &what,
                "holds several images; save one image per archive",
            ))
        }
    };
    let config_bytes = read_member(&entry.config)?;
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&config_bytes)));
    let config = parse_config(&config_bytes, "image config")?;
    let diff_ids = config.rootfs.clone().unwrap_or_default().diff_ids;
    if diff_ids.len() != entry.layers.len() {
        return Err(RootfsError::malformed(
            &what,
            format!(
                "{} layers but {} diff_ids in the config",
                entry.layers.len(),
                diff_ids.len()
            ),
        ));
    }
    if entry.layers.len() > limits.max_layers {
        return Err(RootfsError::limit("layer count", limits.max_layers));
    }
    let layers = entry
        .layers
        .iter()
        .zip(diff_ids)
        .enumerate()
        .map(|(i, (name, diff_id))| {
            validate_digest(&diff_id).map_err(|r| RootfsError::malformed(&what, r))?;
            let (off, len) = lookup(name)?;
            Ok(LayerSource {
                file: file.to_path_buf(),
                range: Some((off, len)),
                verify: None,
                diff_id: Some(diff_id),
                what: format!("layer {i} ({name})"),
            })
        })
        .collect::<Result<_, RootfsError>>()?;
    Ok(Resolved {
        digest,
        config: config.config.unwrap_or_default().normalised(),
        layers,
    })
}

fn normalize(p: &Path) -> String {
    let mut out: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(n) => out.push(n.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    out.join("/")
}

/// A plain rootfs tarball: one layer, no config.
pub(crate) fn from_rootfs_tar(file: &Path, digest: String) -> Resolved {
    Resolved {
        digest,
        config: ImageConfig::default(),
        layers: vec![LayerSource {
            file: file.to_path_buf(),
            range: None,
            verify: None,
            diff_id: None,
            what: format!("rootfs tarball {}", file.display()),
        }],
    }
}

/// Hashes a file (the rootfs tarball's identity).
pub(crate) fn hash_file(file: &Path) -> Result<String, RootfsError> {
    let mut f = File::open(file).ctx(|| format!("opening {}", file.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).ctx(|| format!("reading {}", file.display()))?;
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// Applies one layer: verify the compressed bytes (if asked), detect the
/// compression from the magic bytes, verify the uncompressed bytes (if
/// asked), apply, then drain and check both digests.
pub(crate) fn apply(
    staging: &mut Staging,
    layer: &LayerSource,
    index: usize,
) -> Result<(), RootfsError> {
    let mut f = File::open(&layer.file)
        .ctx(|| format!("opening {} ({})", layer.what, layer.file.display()))?;
    let raw: Box<dyn Read> = match layer.range {
        Some((off, len)) => {
            f.seek(SeekFrom::Start(off))
                .ctx(|| format!("reading {}", layer.what))?;
            Box::new(f.take(len))
        }
        None => Box::new(f),
    };
    let mut compressed = match &layer.verify {
        Some((digest, size)) => VerifyingReader::new(raw, digest, Some(*size), layer.what.clone()),
        // Nothing to check: a reader that never fails verification is
        // simpler than two code paths.
        None => VerifyingReader::unchecked(raw, layer.what.clone()),
    };
    {
        let mut buffered = BufReader::with_capacity(256 << 10, &mut compressed);
        let magic = buffered
            .fill_buf()
            .ctx(|| format!("reading {}", layer.what))?
            .to_vec();
        let decoded: Box<dyn Read + '_> = if magic.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Box::new(
                zstd::stream::read::Decoder::with_buffer(buffered)
                    .map_err(|e| RootfsError::io(format!("reading {}", layer.what), e))?,
            )
        } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z']) || magic.starts_with(b"BZh") {
            return Err(RootfsError::malformed(
                &layer.what,
                "xz and bzip2 layers are not supported (gzip, zstd or plain tar)",
            ));
        } else {
            Box::new(buffered)
        };
        let mut uncompressed = match &layer.diff_id {
            Some(d) => {
                VerifyingReader::new(decoded, d, None, format!("{} (uncompressed)", layer.what))
            }
            None => VerifyingReader::unchecked(decoded, layer.what.clone()),
        };
        staging.apply_layer(&mut uncompressed, index)?;
        uncompressed.finish()?;
    }
    compressed.finish()
}
