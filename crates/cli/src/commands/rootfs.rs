//! `microagent rootfs ...`: build ext4 root disks from images.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use vmkit::rootfs::{clone_disk, BuildOptions, ImageRef, Platform, PullPolicy, RootfsBuilder};

use crate::cli::Global;

#[derive(Debug, Subcommand)]
pub enum RootfsCommand {
    /// Build an ext4 root disk from an image.
    ///
    /// IMAGE is a registry reference (`alpine`, `127.0.0.1:5000/app:v1`,
    /// `repo@sha256:...`) or a local one: `oci-layout:DIR[:TAG]`,
    /// `docker-archive:FILE.tar`, `rootfs-tar:FILE.tar[.gz|.zst]`. The disk is
    /// cached by the image's digest under the state folder; OUTPUT gets its
    /// own copy (a reflink or sparse copy).
    Build {
        /// The image.
        #[arg(long, value_name = "REF")]
        image: String,
        /// Where to write the ext4.
        #[arg(long, value_name = "PATH.ext4")]
        output: PathBuf,
        /// Disk size (default: the content plus headroom).
        #[arg(long, value_name = "N")]
        size_mib: Option<u64>,
        /// Platform to pick from multi-platform images (default: this host's).
        #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
        platform: Option<String>,
        /// Guest init to inject at /sbin/microagent-init (default: the one
        /// `run` uses: $MICROAGENT_INIT, else microagent-init next to this
        /// program or under /usr/lib/microagent).
        #[arg(long, value_name = "PATH")]
        init: Option<PathBuf>,
        /// When to ask the registry: missing (use a pulled copy if any),
        /// always, never.
        #[arg(long, value_enum, default_value_t = Pull::Missing)]
        pull: Pull,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Pull {
    Missing,
    Always,
    Never,
}

pub fn run(cmd: RootfsCommand, global: &Global) -> anyhow::Result<u8> {
    match cmd {
        RootfsCommand::Build {
            image,
            output,
            size_mib,
            platform,
            init,
            pull,
        } => {
            let started = Instant::now();
            let image = ImageRef::parse(&image)?;
            let init = match init {
                Some(p) => Some(p),
                None => match vmkit::find_guest_init() {
                    Ok(p) => Some(p),
                    Err(e) => {
                        tracing::warn!(
                            "no guest init injected ({e}); the disk will not boot by itself"
                        );
                        None
                    }
                },
            };
            let opts = BuildOptions {
                size_mib,
                platform: platform.as_deref().map(Platform::parse).transpose()?,
                init_binary: init,
                progress: !global.json,
                pull: match pull {
                    Pull::Missing => PullPolicy::Missing,
                    Pull::Always => PullPolicy::Always,
                    Pull::Never => PullPolicy::Never,
                },
                ..Default::default()
            };
            let built = RootfsBuilder::new(&global.state_dir)
                .build(&image, &opts)
                .with_context(|| format!("building a root disk from {image}"))?;
            let build_seconds = started.elapsed().as_secs_f64();
            clone_disk(&built.path, &output)?;
            let seconds = started.elapsed().as_secs_f64();
            if global.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "type": "rootfs",
                        "image": image.to_string(),
                        "path": output,
                        "manifestDigest": built.manifest_digest,
                        "imageConfig": built.image_config,
                        "sizeMib": built.size_mib,
                        "cached": built.cached,
                        "seconds": seconds,
                        "buildSeconds": build_seconds,
                        "copySeconds": seconds - build_seconds,
                    })
                );
            } else {
                println!(
                    "{} ({} MiB, {}) from {image} {} in {:.3}s",
                    output.display(),
                    built.size_mib,
                    if built.cached { "cached" } else { "built" },
                    built.manifest_digest,
                    seconds
                );
            }
            Ok(0)
        }
    }
}
