//! Pulling from registries into the local store.
//!
//! Anonymous, bearer-token (the client answers the registry's challenge) and
//! basic auth (from the auth file), over `registry_http`, which bounds
//! every body while reading it and scopes credentials. One deadline covers
//! the whole pull ([`Limits::pull_deadline`]). Manifests are bounded and verified,
//! indexes resolved to the wanted platform, and every blob is streamed to a
//! temp file while hashed and counted, then checked against its descriptor
//! before it gets its final name. Layers download in parallel.

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest as _, Sha256};

use crate::apply::Limits;
use crate::auth::credentials_for;
use crate::error::{IoContext, RootfsError};
use crate::oci::{
    sha256_digest, verify_bytes, Descriptor, ManifestOrIndex, Platform, MAX_JSON_BYTES,
    MT_DOCKER_LIST, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_OCI_MANIFEST,
};
use crate::reference::RegistryRef;
use crate::registry_http::{read_bounded, RegistryClient};
use crate::store::{ImageStore, StoredImage};

/// Layers fetched at once.
const PARALLEL_DOWNLOADS: usize = 4;

fn reg_err(r: &RegistryRef, message: impl std::fmt::Display) -> RootfsError {
    RootfsError::Registry {
        registry: r.registry.clone(),
        message: message.to_string(),
    }
}

/// Pulls `image` for `platform` into `store` and records the reference.
/// Runs its own small runtime on a separate thread, so it may be called
/// from synchronous code and from inside another runtime alike.
pub(crate) fn pull(
    store: &ImageStore,
    image: &RegistryRef,
    platform: &Platform,
    limits: &Limits,
    progress: bool,
) -> Result<StoredImage, RootfsError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| RootfsError::io("starting the download runtime", e))?;
            // One deadline for the whole pull: a registry dripping a byte
            // at a time cannot stretch it.
            rt.block_on(async {
                tokio::time::timeout(
                    limits.pull_deadline,
                    pull_async(store, image, platform, limits, progress),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(reg_err(
                        image,
                        format!(
                            "the pull did not finish within its deadline of {}s (MICROAGENT_PULL_TIMEOUT sets it, in seconds)",
                            limits.pull_deadline.as_secs()
                        ),
                    ))
                })
            })
        })
        .join()
        .unwrap_or_else(|_| Err(reg_err(image, "the download thread panicked")))
    })
}

async fn pull_async(
    store: &ImageStore,
    image: &RegistryRef,
    platform: &Platform,
    limits: &Limits,
    progress: bool,
) -> Result<StoredImage, RootfsError> {
    let _lock = store.lock(false)?;
    let credentials = credentials_for(&image.registry)?;
    let client = Arc::new(RegistryClient::new(image, credentials).map_err(|e| reg_err(image, e))?);
    let accepted = [
        MT_OCI_MANIFEST,
        MT_OCI_INDEX,
        MT_DOCKER_MANIFEST,
        MT_DOCKER_LIST,
    ];
    let top = image
        .digest
        .clone()
        .unwrap_or_else(|| image.tag.clone().unwrap_or_else(|| "latest".into()));
    let bytes = client
        .manifest(&top, &accepted, MAX_JSON_BYTES)
        .await
        .map_err(|e| {
            let mut msg = format!("fetching manifest of {image}: {e}");
            if msg.contains("uthoriz") {
                let file = crate::auth::auth_file_path()
                    .map_or("~/.microagent/auth.json".into(), |p| {
                        p.display().to_string()
                    });
                msg.push_str(&format!(
                    " (credentials come from {file}; REGISTRY_AUTH_FILE names another file)"
                ));
            }
            reg_err(image, msg)
        })?;
    let top_digest = sha256_digest(&bytes);
    if let Some(want) = &image.digest {
        verify_bytes(&bytes, want, None, &format!("manifest of {image}"))?;
    }
    let mut doc = ManifestOrIndex::parse(&bytes, &format!("manifest {top_digest}"))?;
    let mut manifest_digest = top_digest.clone();
    let mut manifest_bytes = bytes.to_vec();
    if doc.is_index() {
        let chosen = doc.select(platform, &image.to_string())?;
        chosen.check(&format!("index entry of {image}"), MAX_JSON_BYTES)?;
        let bytes = client
            .manifest(&chosen.digest, &accepted, chosen.size as u64)
            .await
            .map_err(|e| reg_err(image, format!("fetching manifest {}: {e}", chosen.digest)))?;
        verify_bytes(
            &bytes,
            &chosen.digest,
            Some(chosen.size as u64),
            &format!("manifest {}", chosen.digest),
        )?;
        doc = ManifestOrIndex::parse(&bytes, &format!("manifest {}", chosen.digest))?;
        if doc.is_index() {
            return Err(RootfsError::malformed(
                format!("manifest {}", chosen.digest),
                "nested index",
            ));
        }
        manifest_digest = chosen.digest.clone();
        manifest_bytes = bytes.to_vec();
    }
    let (config, layers) = doc.image_parts(&format!("manifest {manifest_digest}"))?;
    if layers.len() > limits.max_layers {
        return Err(RootfsError::limit(
            format!("layer count of {image} ({})", layers.len()),
            limits.max_layers,
        ));
    }
    config.check("image config descriptor", MAX_JSON_BYTES)?;
    let mut total = 0u64;
    for (i, l) in layers.iter().enumerate() {
        total =
            total.saturating_add(l.check(&format!("layer {i} of {image}"), limits.max_blob_bytes)?);
    }

    // The config, checked against the platform asked for.
    if !store.has_blob(&config.digest, config.size as u64) {
        let what = format!("config {}", config.digest);
        let resp = client
            .blob(&config.digest)
            .await
            .map_err(|e| reg_err(image, format!("fetching {what}: {e}")))?;
        let buf = read_bounded(resp, config.size as u64, &what)
            .await
            .map_err(|e| reg_err(image, e))?;
        verify_bytes(
            &buf,
            &config.digest,
            Some(config.size as u64),
            &format!("config {}", config.digest),
        )?;
        store.put_blob_bytes(&config.digest, &buf, "image config")?;
    }

    let bar = if progress && std::io::stdout().is_terminal() {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(format!("pulling {image}"));
        bar
    } else {
        ProgressBar::hidden()
    };

    let sem = Arc::new(tokio::sync::Semaphore::new(PARALLEL_DOWNLOADS));
    let mut tasks = tokio::task::JoinSet::new();
    for layer in layers.iter().cloned() {
        if store.has_blob(&layer.digest, layer.size as u64) {
            bar.inc(layer.size as u64);
            continue;
        }
        let (client, sem, bar, store, image) = (
            client.clone(),
            sem.clone(),
            bar.clone(),
            store.clone(),
            image.clone(),
        );
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await.map_err(|e| reg_err(&image, e))?;
            download_blob(&client, &store, &image, &layer, &bar).await
        });
    }
    while let Some(res) = tasks.join_next().await {
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tasks.abort_all();
                bar.abandon();
                return Err(e);
            }
            Err(e) => {
                tasks.abort_all();
                return Err(reg_err(image, format!("download task failed: {e}")));
            }
        }
    }
    bar.finish_and_clear();

    // The manifest last: a record is only written once all it names is here.
    store.put_blob_bytes(&manifest_digest, &manifest_bytes, "manifest")?;
    let record = StoredImage {
        reference: image.to_string(),
        manifest_digest,
        platform: platform.to_string(),
        size: total,
        pulled_at: chrono::Utc::now().to_rfc3339(),
    };
    store.put(&record)?;
    Ok(record)
}

async fn download_blob(
    client: &RegistryClient,
    store: &ImageStore,
    image: &RegistryRef,
    layer: &Descriptor,
    bar: &ProgressBar,
) -> Result<(), RootfsError> {
    let size = layer.size as u64;
    let tmp = store.tmp_dir()?;
    let file = tempfile::NamedTempFile::new_in(&tmp)
        .ctx(|| format!("creating a file in {}", tmp.display()))?;
    let fetch_err = |e: String| reg_err(image, format!("fetching layer {}: {e}", layer.digest));
    let mut resp = client.blob(&layer.digest).await.map_err(fetch_err)?;
    let mut hasher = Sha256::new();
    let mut got = 0u64;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    while let Some(chunk) = resp.chunk().await.map_err(|e| fetch_err(e.to_string()))? {
        got += chunk.len() as u64;
        if got > size {
            return Err(RootfsError::DigestMismatch {
                what: format!("layer {}", layer.digest),
                expected: format!("{size} bytes"),
                actual: format!("more than {size} bytes"),
            });
        }
        hasher.update(&chunk);
        out.write_all(&chunk).ctx(|| "writing layer".to_string())?;
        bar.inc(chunk.len() as u64);
    }
    let file = out
        .into_inner()
        .map_err(|e| RootfsError::io("writing layer", e.into_error()))?;
    if got != size {
        return Err(RootfsError::DigestMismatch {
            what: format!("layer {}", layer.digest),
            expected: format!("{size} bytes"),
            actual: format!("{got} bytes"),
        });
    }
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if actual != layer.digest {
        return Err(RootfsError::DigestMismatch {
            what: format!("layer {}", layer.digest),
            expected: layer.digest.clone(),
            actual,
        });
    }
    store.commit_blob(file, &layer.digest)
}
