//! `microagent image ...`: pull, list and remove images in the local store.

use anyhow::Context;
use clap::Subcommand;

use crate::cli::Global;
use crate::commands::workspace::quiet_runtime;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Pull an image from a registry into the local store.
    ///
    /// REF uses docker's names: `alpine` is `docker.io/library/alpine:latest`;
    /// `host:port/repo:tag` and `repo@sha256:...` work too. Registries on
    /// loopback are spoken to over plain HTTP. Credentials come from
    /// $REGISTRY_AUTH_FILE or ~/.microagent/auth.json (docker's config.json
    /// shape); they go only to the registry's own host, over TLS (or on
    /// loopback). Every body is bounded while read and every blob checked
    /// against its digest and size; the whole pull must end within
    /// $MICROAGENT_PULL_TIMEOUT seconds (default 1800).
    Pull {
        /// The image reference.
        #[arg(value_name = "REF")]
        reference: String,
        /// Platform to pick from multi-platform images (default: this host's).
        #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
        platform: Option<String>,
    },
    /// List pulled images.
    #[command(visible_alias = "list")]
    Ls,
    /// Remove a pulled image, the blobs only it used and disks built from it.
    Rm {
        /// The image reference, as pulled.
        #[arg(value_name = "REF")]
        reference: String,
    },
}

pub fn run(cmd: ImageCommand, global: &Global) -> anyhow::Result<u8> {
    let rt = quiet_runtime(global)?;
    match cmd {
        ImageCommand::Pull {
            reference,
            platform,
        } => {
            let img = rt
                .pull_image(&reference, platform.as_deref(), !global.json)
                .with_context(|| format!("pulling {reference}"))?;
            if global.json {
                let mut v = serde_json::to_value(&img)?;
                v["type"] = "image".into();
                println!("{v}");
            } else {
                println!(
                    "pulled {} ({}) {}",
                    img.reference, img.platform, img.manifest_digest
                );
            }
            Ok(0)
        }
        ImageCommand::Ls => {
            let images = rt.images()?;
            if global.json {
                for img in &images {
                    let mut v = serde_json::to_value(img)?;
                    v["type"] = "image".into();
                    println!("{v}");
                }
            } else {
                println!(
                    "{:<50} {:<14} {:<19} {:>10}  PULLED",
                    "REFERENCE", "PLATFORM", "DIGEST", "SIZE"
                );
                for img in &images {
                    println!(
                        "{:<50} {:<14} {:<19} {:>10}  {}",
                        img.reference,
                        img.platform,
                        img.manifest_digest
                            .get(..19)
                            .unwrap_or(&img.manifest_digest),
                        human_size(img.size),
                        img.pulled_at.get(..19).unwrap_or(&img.pulled_at),
                    );
                }
            }
            Ok(0)
        }
        ImageCommand::Rm { reference } => {
            // Cached disks go too, unless another reference still uses the image.
            for img in &rt.remove_image(&reference)? {
                if global.json {
                    let mut v = serde_json::to_value(img)?;
                    v["type"] = "removed".into();
                    println!("{v}");
                } else {
                    println!("removed {} ({})", img.reference, img.platform);
                }
            }
            Ok(0)
        }
    }
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
