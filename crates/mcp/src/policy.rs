//! What a model driving the server may do. The server, not the model,
//! decides: which images (registry references only, unless the operator
//! allows local paths), how big a machine, which workspaces are visible
//! (only those this server created, marked by a label in the record), and
//! how much data one call may carry. Host folders cannot be mounted at all.

use std::path::PathBuf;

use vmkit::protocol::Network;
use vmkit_state::{StateStore, WorkspaceRecord};

use crate::capture::DEFAULT_OUTPUT_LIMIT;

/// The label that marks a workspace as created by an MCP server; its value
/// is the server's owner name.
pub const OWNER_LABEL: &str = "microagent.mcp.owner";

/// The operator's settings (flags of `microagent mcp`).
#[derive(Debug, Clone)]
pub struct Policy {
    /// microagent's state folder.
    pub state_dir: PathBuf,
    /// This server's owner name, written to [`OWNER_LABEL`].
    pub owner: String,
    /// Show and act on every workspace, not only this owner's.
    pub any_workspace: bool,
    /// Allow `oci-layout:`, `docker-archive:` and `rootfs-tar:` images,
    /// which read host paths.
    pub allow_local_images: bool,
    /// Largest guest memory a client may ask for, MiB.
    pub max_memory_mib: u32,
    /// Most vCPUs a client may ask for.
    pub max_cpus: u32,
    /// Cap per output stream returned to the client, bytes.
    pub max_output_bytes: usize,
    /// Largest file `workspace_write_file` accepts, bytes (decoded).
    pub max_file_bytes: usize,
    /// Longest deadline a client may set, seconds; also the default.
    pub max_timeout_seconds: u64,
    /// Largest JSON-RPC message accepted from the client, bytes; a larger
    /// one is answered with an error (and never held in memory).
    pub max_request_bytes: usize,
    /// The guest network clients get, and the widest they may ask for.
    pub network: Network,
    /// Largest archive `workspace_cp` takes from a guest, bytes.
    pub max_copy_bytes: u64,
    /// The host folder `workspace_cp` may read and write (nothing else on
    /// the host); `None`: `workspace_cp` is refused.
    pub files_dir: Option<PathBuf>,
}

impl Policy {
    /// Defaults for a state folder.
    pub fn new(state_dir: impl Into<PathBuf>) -> Policy {
        Policy {
            state_dir: state_dir.into(),
            owner: "mcp".into(),
            any_workspace: false,
            allow_local_images: false,
            max_memory_mib: 2048,
            max_cpus: 2,
            max_output_bytes: DEFAULT_OUTPUT_LIMIT,
            max_file_bytes: 8 * 1024 * 1024,
            max_timeout_seconds: 3600,
            max_request_bytes: 16 * 1024 * 1024,
            network: Network::default(),
            files_dir: None,
            max_copy_bytes: 1 << 30,
        }
    }

    /// Checks the operator's settings before serving: the network policy
    /// with the stack's own rule parser, the files folder a folder.
    pub fn validate(&self) -> Result<(), String> {
        crate::network::check_server(&self.network)?;
        if let Some(dir) = &self.files_dir {
            if !dir.is_dir() {
                return Err(format!("--files-dir {}: not a folder", dir.display()));
            }
        }
        Ok(())
    }

    /// Refuses image references that would read host files, unless allowed.
    pub fn check_image(&self, image: &str) -> Result<(), String> {
        let local = ["oci-layout:", "docker-archive:", "rootfs-tar:"]
            .iter()
            .any(|p| image.starts_with(p));
        if local && !self.allow_local_images {
            return Err(format!(
                "image {image:?} reads a host path; this server accepts registry references only \
                 (the operator can allow local images with `microagent mcp --allow-local-images`)"
            ));
        }
        Ok(())
    }

    /// The machine size a client asked for, within the server's bounds.
    pub fn machine(
        &self,
        memory_mib: Option<u32>,
        cpus: Option<u32>,
    ) -> Result<(u32, u32), String> {
        let memory = memory_mib.unwrap_or(512);
        let cpus = cpus.unwrap_or(1);
        if memory < 64 || memory > self.max_memory_mib {
            return Err(format!(
                "memoryMib {memory} is outside 64..={} (the server's --max-memory)",
                self.max_memory_mib
            ));
        }
        if cpus == 0 || cpus > self.max_cpus {
            return Err(format!(
                "cpus {cpus} is outside 1..={} (the server's --max-cpus)",
                self.max_cpus
            ));
        }
        Ok((memory, cpus))
    }

    /// A deadline within the server's bound (its bound when none is given).
    pub fn timeout(&self, seconds: Option<u64>) -> Result<u64, String> {
        match seconds {
            None => Ok(self.max_timeout_seconds),
            Some(0) => Err("timeoutSeconds must be at least 1".into()),
            Some(s) if s > self.max_timeout_seconds => Err(format!(
                "timeoutSeconds {s} exceeds the server's limit of {}",
                self.max_timeout_seconds
            )),
            Some(s) => Ok(s),
        }
    }

    /// Whether a workspace's machine is one this server would hand out
    /// now (for a fork, which copies it): size within bounds, no host
    /// folders, disks or published ports, a network within the policy.
    pub fn allows_machine_of(&self, record: &WorkspaceRecord) -> Result<(), String> {
        let c = &record.config;
        self.machine(Some(c.memory_mib), Some(c.cpu_count))?;
        if !c.volumes.is_empty() || !c.disks.is_empty() || !c.publish.is_empty() {
            return Err("it has host folders, disks or published ports".into());
        }
        let extra_deny: Vec<String> = c
            .network
            .deny
            .iter()
            .filter(|d| !self.network.deny.contains(d))
            .cloned()
            .collect();
        let allow = Some(c.network.allow.clone());
        crate::network::narrow(&self.network, Some(c.network.mode), allow, extra_deny)?;
        Ok(())
    }

    /// Whether this server may see `record`.
    pub fn owns(&self, record: &WorkspaceRecord) -> bool {
        self.any_workspace || record.labels.get(OWNER_LABEL) == Some(&self.owner)
    }

    /// The record of a workspace this server may act on. Another owner's
    /// workspace reads as absent, so its existence does not leak.
    pub fn workspace(&self, name: &str) -> Result<WorkspaceRecord, String> {
        let store = StateStore::open(&self.state_dir).map_err(|e| e.to_string())?;
        match store.peek(name) {
            Ok(Some(record)) if self.owns(&record) => Ok(record),
            Ok(_) => Err(format!(
                "no workspace named {name:?} (this server sees only workspaces it created)"
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The workspaces this server may see.
    pub fn workspaces(&self) -> Result<Vec<WorkspaceRecord>, String> {
        let store = StateStore::open(&self.state_dir).map_err(|e| e.to_string())?;
        let all = store.list().map_err(|e| e.to_string())?;
        Ok(all.into_iter().filter(|r| self.owns(r)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_images_need_the_operator() {
        let mut p = Policy::new("/tmp/x");
        assert!(p.check_image("alpine").is_ok());
        assert!(p.check_image("127.0.0.1:5000/a:b").is_ok());
        let err = p.check_image("oci-layout:/etc").unwrap_err();
        assert!(err.contains("--allow-local-images"), "{err}");
        assert!(p.check_image("rootfs-tar:/etc/shadow").is_err());
        p.allow_local_images = true;
        assert!(p.check_image("oci-layout:/etc").is_ok());
    }

    #[test]
    fn machines_and_deadlines_stay_within_bounds() {
        let p = Policy::new("/tmp/x");
        assert_eq!(p.machine(None, None).unwrap(), (512, 1));
        assert!(p
            .machine(Some(1 << 20), None)
            .unwrap_err()
            .contains("--max-memory"));
        assert!(p
            .machine(None, Some(64))
            .unwrap_err()
            .contains("--max-cpus"));
        assert!(p.machine(None, Some(0)).is_err());
        assert_eq!(p.timeout(None).unwrap(), 3600);
        assert!(p.timeout(Some(0)).is_err());
        assert!(p.timeout(Some(1 << 40)).is_err());
    }
}
