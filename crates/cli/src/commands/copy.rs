//! `cp`: docker's shape, one side `NAME:/path`, the other a host path or
//! `-` (a tar stream on stdin or stdout).

use std::path::PathBuf;

use clap::Args;

use crate::cli::Global;
use crate::commands::workspace::workspace_runtime;
use crate::exit;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  microagent cp ./project ws:/work          (into /work/project if /work is a folder)
  microagent cp ws:/work/out.json ./results/
  microagent cp ws:/var/log - | tar -t       (a tar stream on stdout)
  tar -c . | microagent cp - ws:/work        (a tar stream from stdin, into a folder)

A running workspace copies over its guest channel; a stopped or halted one is
booted for the copy and halted again. Modes, mtimes and symlinks are kept;
ownership too when copying in as root (else files belong to root), or set
with --owner. What comes out of the guest is unpacked with the rootfs
builder's checks (no '..', no absolute names, nothing through a symlink)
into a temporary name next to the destination, renamed when complete.")]
pub struct CpArgs {
    /// Source: NAME:/guest/path, a host path, or - (a tar stream on stdin).
    pub src: String,
    /// Destination: NAME:/guest/path, a host path, or - (a tar stream on stdout).
    pub dst: String,
    /// Owner of the copied files in the guest (copy in only).
    #[arg(long, value_name = "UID:GID", value_parser = parse_owner)]
    pub owner: Option<vmkit::CopyOwner>,
}

/// One side of a copy.
#[derive(Debug, PartialEq, Eq)]
enum Side {
    Guest { name: String, path: String },
    Host(PathBuf),
    Stream,
}

/// `NAME:/path` names a guest path when NAME has no `/` (a host path with a
/// colon can be written `./a:b`); `-` is a stream.
fn parse_side(s: &str) -> Result<Side, String> {
    if s == "-" {
        return Ok(Side::Stream);
    }
    match s.split_once(':') {
        Some((name, path)) if !name.is_empty() && !name.contains('/') => {
            if !path.starts_with('/') {
                return Err(format!(
                    "{s:?}: the guest path must be absolute (NAME:/path)"
                ));
            }
            Ok(Side::Guest {
                name: name.to_owned(),
                path: path.to_owned(),
            })
        }
        _ => Ok(Side::Host(PathBuf::from(s))),
    }
}

fn parse_owner(s: &str) -> Result<vmkit::CopyOwner, String> {
    let (u, g) = s
        .split_once(':')
        .ok_or_else(|| format!("expected UID:GID, got {s:?}"))?;
    let num = |x: &str| {
        x.parse::<u32>()
            .map_err(|_| format!("expected UID:GID, got {s:?}"))
    };
    Ok(vmkit::CopyOwner {
        uid: num(u)?,
        gid: num(g)?,
    })
}

pub fn cp(args: CpArgs, global: &Global) -> anyhow::Result<u8> {
    let src = parse_side(&args.src).map_err(anyhow::Error::msg)?;
    let dst = parse_side(&args.dst).map_err(anyhow::Error::msg)?;
    if global.json && dst == Side::Stream {
        anyhow::bail!(
            "cp to - writes the tar stream on stdout, which --json cannot share; drop --json"
        );
    }
    let stats = match (src, dst) {
        (Side::Guest { .. }, Side::Guest { .. }) => {
            anyhow::bail!(
                "cp copies between the host and one workspace, not between two workspaces"
            )
        }
        (Side::Guest { name, path }, Side::Host(host)) => {
            let rt = workspace_runtime(global, &name)?;
            rt.copy_from_guest(&name, &path, &host)
        }
        (Side::Guest { name, path }, Side::Stream) => {
            let rt = workspace_runtime(global, &name)?;
            rt.copy_out(&name, &path, &mut std::io::stdout().lock())
        }
        (Side::Host(host), Side::Guest { name, path }) => {
            let rt = workspace_runtime(global, &name)?;
            rt.copy_to_guest(&name, &host, &path, args.owner)
        }
        (Side::Stream, Side::Guest { name, path }) => {
            let rt = workspace_runtime(global, &name)?;
            let keep = args.owner.is_none();
            rt.copy_in(
                &name,
                &path,
                None,
                &mut std::io::stdin().lock(),
                keep,
                args.owner,
            )
        }
        _ => anyhow::bail!("one side of cp must be a workspace path (NAME:/path)"),
    }
    .map_err(exit::classify)?;
    if global.json {
        println!(
            "{}",
            serde_json::json!({"type": "copied", "entries": stats.entries, "bytes": stats.bytes})
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_parse_like_dockers() {
        assert_eq!(
            parse_side("ws:/work").unwrap(),
            Side::Guest {
                name: "ws".into(),
                path: "/work".into()
            }
        );
        assert_eq!(parse_side("./a:b").unwrap(), Side::Host("./a:b".into()));
        assert_eq!(parse_side("/x/y").unwrap(), Side::Host("/x/y".into()));
        assert_eq!(parse_side("-").unwrap(), Side::Stream);
        assert!(parse_side("ws:rel").unwrap_err().contains("absolute"));
        assert!(parse_owner("1000:100").is_ok());
        assert!(parse_owner("root").is_err());
    }
}
