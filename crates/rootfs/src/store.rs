//! The local image store under `<state_dir>/images/`: verified blobs by
//! digest (`blobs/sha256/<hex>`) and one small JSON file per pulled
//! reference (`refs/<hash>.json`). Every write is temp + rename, and a blob
//! only reaches its final name after its digest and size were checked.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::{IoContext, RootfsError};
use crate::oci::{verify_bytes, ManifestOrIndex, MAX_JSON_BYTES};
use crate::reference::{validate_digest, RegistryRef};

/// A reference recorded by a pull.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredImage {
    /// The normalised reference as pulled (`127.0.0.1:5000/app:v1`).
    pub reference: String,
    /// The platform manifest's digest.
    pub manifest_digest: String,
    /// `os/arch[/variant]`.
    pub platform: String,
    /// Sum of the compressed layer sizes.
    pub size: u64,
    /// RFC 3339.
    pub pulled_at: String,
}

/// The local image store.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    /// The store of a state folder (created lazily).
    pub fn new(state_dir: &Path) -> ImageStore {
        ImageStore {
            root: state_dir.join("images"),
        }
    }

    /// The store's folder (`<state>/images`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the store lock: shared for pulls and builds (which only add or
    /// read blobs), exclusive for removal (which deletes blobs no record
    /// names, so must not run while a pull has fetched blobs but not yet
    /// recorded them). Released when the returned lock is dropped.
    pub(crate) fn lock(&self, exclusive: bool) -> Result<Flock<fs::File>, RootfsError> {
        fs::create_dir_all(&self.root).ctx(|| format!("creating {}", self.root.display()))?;
        let path = self.root.join("lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .ctx(|| format!("opening {}", path.display()))?;
        let op = if exclusive {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockShared
        };
        Flock::lock(f, op)
            .map_err(|(_, e)| e)
            .ctx(|| format!("locking {}", path.display()))
    }

    /// Where a verified blob lives. `digest` must be valid.
    pub(crate) fn blob_path(&self, digest: &str) -> PathBuf {
        // Never a path outside the blob folder, whatever the input.
        let name = match validate_digest(digest) {
            Ok(()) => &digest[7..],
            Err(_) => "invalid-digest",
        };
        self.root.join("blobs").join("sha256").join(name)
    }

    pub(crate) fn has_blob(&self, digest: &str, size: u64) -> bool {
        fs::metadata(self.blob_path(digest)).is_ok_and(|m| m.len() == size)
    }

    /// A scratch folder on the store's filesystem, for downloads.
    pub(crate) fn tmp_dir(&self) -> Result<PathBuf, RootfsError> {
        let t = self.root.join("tmp");
        fs::create_dir_all(&t).ctx(|| format!("creating {}", t.display()))?;
        fs::create_dir_all(self.root.join("blobs").join("sha256"))
            .ctx(|| format!("creating {}/blobs", self.root.display()))?;
        Ok(t)
    }

    /// Stores small verified content (manifests, configs).
    pub(crate) fn put_blob_bytes(
        &self,
        digest: &str,
        bytes: &[u8],
        what: &str,
    ) -> Result<(), RootfsError> {
        verify_bytes(bytes, digest, None, what)?;
        if self.has_blob(digest, bytes.len() as u64) {
            return Ok(());
        }
        let tmp = self.tmp_dir()?;
        let mut f = tempfile::NamedTempFile::new_in(&tmp)
            .ctx(|| format!("creating a file in {}", tmp.display()))?;
        f.write_all(bytes).ctx(|| "writing blob".to_string())?;
        self.commit_blob(f, digest)
    }

    /// Moves an already verified temp file to its blob name.
    pub(crate) fn commit_blob(
        &self,
        f: tempfile::NamedTempFile,
        digest: &str,
    ) -> Result<(), RootfsError> {
        f.as_file().sync_all().ctx(|| "syncing blob".to_string())?;
        let dst = self.blob_path(digest);
        f.persist(&dst)
            .map_err(|e| RootfsError::io(format!("storing {}", dst.display()), e.error))?;
        Ok(())
    }

    pub(crate) fn read_blob(&self, digest: &str, max: u64) -> Result<Vec<u8>, RootfsError> {
        validate_digest(digest).map_err(|r| RootfsError::malformed("descriptor", r))?;
        let p = self.blob_path(digest);
        let f = fs::File::open(&p).ctx(|| format!("opening blob {digest}"))?;
        crate::oci::read_bounded(f, max, &format!("blob {digest}"))
    }

    fn refs_dir(&self) -> PathBuf {
        self.root.join("refs")
    }

    fn ref_file(&self, reference: &str, platform: &str) -> PathBuf {
        let h = hex::encode(Sha256::digest(format!("{reference}\n{platform}")));
        self.refs_dir().join(format!("{}.json", &h[..32]))
    }

    /// The recorded pull of `reference` for `platform`, if any.
    pub fn get(&self, reference: &RegistryRef, platform: &str) -> Option<StoredImage> {
        let bytes = fs::read(self.ref_file(&reference.to_string(), platform)).ok()?;
        let img: StoredImage = serde_json::from_slice(&bytes).ok()?;
        validate_digest(&img.manifest_digest).ok()?;
        // Trust the record only if its manifest is still here.
        self.blob_path(&img.manifest_digest)
            .is_file()
            .then_some(img)
    }

    pub(crate) fn put(&self, img: &StoredImage) -> Result<(), RootfsError> {
        let dir = self.refs_dir();
        fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        let mut f = tempfile::NamedTempFile::new_in(&dir)
            .ctx(|| format!("creating a file in {}", dir.display()))?;
        serde_json::to_writer_pretty(&mut f, img)
            .map_err(|e| RootfsError::io("writing image record", e.into()))?;
        let dst = self.ref_file(&img.reference, &img.platform);
        f.persist(&dst)
            .map_err(|e| RootfsError::io(format!("storing {}", dst.display()), e.error))?;
        Ok(())
    }

    /// Every recorded pull, sorted by reference.
    pub fn list(&self) -> Result<Vec<StoredImage>, RootfsError> {
        let dir = self.refs_dir();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(RootfsError::io(format!("listing {}", dir.display()), e)),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.ctx(|| format!("listing {}", dir.display()))?;
            if e.path().extension().is_some_and(|x| x == "json") {
                if let Ok(img) = fs::read(e.path())
                    .map_err(|_| ())
                    .and_then(|b| serde_json::from_slice::<StoredImage>(&b).map_err(|_| ()))
                {
                    if validate_digest(&img.manifest_digest).is_ok() {
                        out.push(img);
                    }
                }
            }
        }
        out.sort_by(|a, b| (&a.reference, &a.platform).cmp(&(&b.reference, &b.platform)));
        Ok(out)
    }

    /// Forgets `reference` (every platform) and deletes blobs no remaining
    /// reference needs. Returns the removed records.
    pub fn remove(&self, reference: &RegistryRef) -> Result<Vec<StoredImage>, RootfsError> {
        let _lock = self.lock(true)?;
        self.remove_locked(reference)
    }

    /// [`ImageStore::remove`] under a lock the caller holds exclusively.
    pub(crate) fn remove_locked(
        &self,
        reference: &RegistryRef,
    ) -> Result<Vec<StoredImage>, RootfsError> {
        let name = reference.to_string();
        let mut removed = Vec::new();
        for img in self.list()? {
            if img.reference == name
                || (reference.digest.is_some()
                    && Some(&img.manifest_digest) == reference.digest.as_ref())
            {
                let f = self.ref_file(&img.reference, &img.platform);
                fs::remove_file(&f).ctx(|| format!("removing {}", f.display()))?;
                removed.push(img);
            }
        }
        if removed.is_empty() {
            return Err(RootfsError::NotFound(format!(
                "image {name} is not in the local store"
            )));
        }
        self.gc()?;
        Ok(removed)
    }

    /// The blobs the recorded references need.
    pub(crate) fn live_blobs(&self) -> Result<HashSet<String>, RootfsError> {
        let mut live = HashSet::new();
        for img in self.list()? {
            live.insert(img.manifest_digest.clone());
            if let Ok(bytes) = self.read_blob(&img.manifest_digest, MAX_JSON_BYTES) {
                if let Ok(m) = ManifestOrIndex::parse(&bytes, "manifest") {
                    if let Some(c) = m.config {
                        live.insert(c.digest);
                    }
                    for l in m.layers.unwrap_or_default() {
                        live.insert(l.digest);
                    }
                }
            }
        }
        Ok(live)
    }

    fn gc(&self) -> Result<(), RootfsError> {
        let live = self.live_blobs()?;
        let dir = self.root.join("blobs").join("sha256");
        let Ok(rd) = fs::read_dir(&dir) else {
            return Ok(());
        };
        for e in rd.flatten() {
            let digest = format!("sha256:{}", e.file_name().to_string_lossy());
            if !live.contains(&digest) {
                fs::remove_file(e.path()).ctx(|| format!("removing {}", e.path().display()))?;
            }
        }
        Ok(())
    }
}
