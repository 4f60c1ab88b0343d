//! The tools on workspaces that exist: listing and state, lifecycle
//! (halt, pause, resume, delete), copies through the server's files folder,
//! and the egress audit log.

use rmcp::handler::server::common::schema_for_output;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::service::RequestContext;
use rmcp::{tool, tool_router, RoleServer};

use crate::params::*;
use crate::progress::Progress;
use crate::results::{blocking, claim, done, failed, info, state_result, ToolResult};
use crate::server::McpServer;

/// Most decisions one `workspace_egress_log` call returns.
const MAX_EGRESS_RECORDS: u32 = 1000;

#[tool_router(router = workspace_tools, vis = "pub(crate)")]
impl McpServer {
    /// List the workspaces this server created.
    #[tool(output_schema = schema_for_output::<ListOutput>())]
    async fn workspace_list(&self) -> ToolResult {
        match self.policy.workspaces() {
            Ok(records) => {
                let o = ListOutput {
                    workspaces: records.iter().map(info).collect(),
                };
                let names: Vec<String> = o
                    .workspaces
                    .iter()
                    .map(|w| format!("{} ({})", w.name, w.state))
                    .collect();
                done(
                    format!("{} workspaces: {}", names.len(), names.join(", ")),
                    o,
                )
            }
            Err(e) => failed(e),
        }
    }

    /// A workspace's state and machine.
    #[tool(output_schema = schema_for_output::<WorkspaceInfo>())]
    async fn workspace_status(&self, Parameters(p): Parameters<NameInput>) -> ToolResult {
        match self.policy.workspace(&p.name) {
            Ok(r) => {
                let o = info(&r);
                done(format!("workspace {} is {}", o.name, o.state), o)
            }
            Err(e) => failed(e),
        }
    }

    /// Shut a workspace down cleanly; its disk is kept for workspace_start.
    #[tool(output_schema = schema_for_output::<StateOutput>())]
    async fn workspace_halt(&self, Parameters(p): Parameters<NameInput>) -> ToolResult {
        self.transition(p.name, None, |rt, name| rt.halt(name))
            .await
    }

    /// Delete a workspace and its disk (its VM is killed first unless force is false).
    #[tool(output_schema = schema_for_output::<StateOutput>())]
    async fn workspace_delete(&self, Parameters(p): Parameters<DeleteInput>) -> ToolResult {
        let record = match self.policy.workspace(&p.name) {
            Ok(r) => r,
            Err(e) => return failed(e),
        };
        let policy = self.policy.clone();
        let force = p.force.unwrap_or(true);
        let name = p.name.clone();
        let outcome = blocking(move || {
            let rt = Self::runtime(&policy, Some(record.backend), None)?;
            rt.delete(&name, force).map_err(|e| e.to_string())
        })
        .await;
        match outcome {
            Ok(()) => {
                let o = StateOutput {
                    name: p.name,
                    state: "deleted".into(),
                    detail: "workspace and disk removed".into(),
                };
                done(format!("workspace {} deleted", o.name), o)
            }
            Err(e) => failed(e),
        }
    }

    /// Pause a running workspace: its vCPUs stop, memory and connections
    /// are kept; commands wait until workspace_resume.
    #[tool(output_schema = schema_for_output::<StateOutput>())]
    async fn workspace_pause(&self, Parameters(p): Parameters<NameInput>) -> ToolResult {
        self.transition(p.name, None, |rt, name| rt.pause(name))
            .await
    }

    /// Resume a paused workspace: its processes continue where they were.
    #[tool(output_schema = schema_for_output::<StateOutput>())]
    async fn workspace_resume(&self, Parameters(p): Parameters<NameInput>) -> ToolResult {
        self.transition(p.name, None, |rt, name| rt.resume(name))
            .await
    }

    /// The newest egress decisions of a workspace's network policy: every
    /// connection, UDP flow and DNS query allowed or refused, and why.
    #[tool(output_schema = schema_for_output::<EgressOutput>())]
    async fn workspace_egress_log(&self, Parameters(p): Parameters<EgressInput>) -> ToolResult {
        let record = match self.policy.workspace(&p.name) {
            Ok(r) => r,
            Err(e) => return failed(e),
        };
        let limit = p.limit.unwrap_or(100).min(MAX_EGRESS_RECORDS) as usize;
        let (policy, name) = (self.policy.clone(), p.name.clone());
        let cap = self.policy.max_output_bytes;
        let outcome = blocking(move || {
            let rt = Self::runtime(&policy, Some(record.backend), None)?;
            rt.egress_tail(&name, limit).map_err(|e| e.to_string())
        })
        .await;
        let tail = match outcome {
            Ok(t) => t,
            Err(e) => return failed(e),
        };
        // Bounded like command output: the oldest go first.
        let mut records = tail.records;
        let mut size: usize = records.iter().map(|r| r.to_string().len() + 1).sum();
        let mut dropped = 0;
        while size > cap && dropped < records.len() {
            size -= records[dropped].to_string().len() + 1;
            dropped += 1;
        }
        records.drain(..dropped);
        let refused = records
            .iter()
            .filter(|r| r.get("decision").and_then(|d| d.as_str()) == Some("deny"))
            .count();
        let o = EgressOutput {
            truncated: (records.len() as u64) < tail.total,
            total: tail.total,
            records,
        };
        done(
            format!(
                "{} of {} egress decisions ({refused} of them refused)",
                o.records.len(),
                o.total
            ),
            o,
        )
    }

    /// Copy a file or folder between the server's files folder (microagent
    /// mcp --files-dir) and a workspace. hostPath is relative to that folder.
    #[tool(output_schema = schema_for_output::<CopyOutput>())]
    async fn workspace_cp(
        &self,
        Parameters(p): Parameters<CopyInput>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let Some(root) = self.policy.files_dir.clone() else {
            return failed(
                "this server has no files folder, so workspace_cp is off (the operator turns it \
                 on with microagent mcp --files-dir DIR); for single files use \
                 workspace_write_file and workspace_read_file",
            );
        };
        if let Err(e) = crate::files::check_path(&p.guest_path) {
            return failed(e);
        }
        let record = match self.policy.workspace(&p.name) {
            Ok(r) => r,
            Err(e) => return failed(e),
        };
        let to_guest = matches!(p.direction, CopyDirection::ToGuest);
        let host = match crate::files::confine(&root, &p.host_path, to_guest) {
            Ok(h) => h,
            Err(e) => return failed(e),
        };
        let (policy, name, guest) = (self.policy.clone(), p.name.clone(), p.guest_path.clone());
        let limit = self.policy.max_copy_bytes;
        let progress = Progress::start(ctx.peer.clone(), ctx.meta.get_progress_token());
        progress.say(if to_guest {
            format!("copying files/{} into {name}:{guest}", p.host_path)
        } else {
            format!("copying {name}:{guest} into files/{}", p.host_path)
        });
        let outcome = blocking(move || {
            let rt = Self::runtime(&policy, Some(record.backend), None)?;
            let stats = if to_guest {
                // Ownership as root's in the guest: the host's owners mean nothing there.
                let root_owner = vmkit::CopyOwner { uid: 0, gid: 0 };
                rt.copy_to_guest(&name, &host, &guest, Some(root_owner))
            } else {
                rt.copy_from_guest_limited(&name, &guest, &host, Some(limit))
            };
            stats.map_err(|e| e.to_string())
        })
        .await;
        match outcome {
            Ok(stats) => {
                let o = CopyOutput {
                    direction: if to_guest { "toGuest" } else { "fromGuest" }.into(),
                    host_path: p.host_path,
                    guest_path: p.guest_path,
                    entries: stats.entries,
                    bytes: stats.bytes,
                };
                let arrow = if to_guest { "->" } else { "<-" };
                done(
                    format!(
                        "copied {} entries ({} bytes): files/{} {arrow} {}:{}",
                        o.entries, o.bytes, o.host_path, p.name, o.guest_path
                    ),
                    o,
                )
            }
            Err(e) => failed(e),
        }
    }

    /// Snapshot a workspace: memory, device state and disk (or with
    /// diskOnly just its disk), for workspace_fork.
    #[tool(output_schema = schema_for_output::<SnapshotOutput>())]
    async fn workspace_snapshot(
        &self,
        Parameters(p): Parameters<SnapshotInput>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let record = match self.policy.workspace(&p.name) {
            Ok(r) => r,
            Err(e) => return failed(e),
        };
        let policy = self.policy.clone();
        let disk_only = p.disk_only.unwrap_or(false);
        let progress = Progress::start(ctx.peer.clone(), ctx.meta.get_progress_token());
        progress.say(if disk_only {
            format!("freezing {} to save its disk", p.name)
        } else {
            format!("pausing {} to save its memory, devices and disk", p.name)
        });
        let outcome = blocking(move || {
            let rt = Self::runtime(&policy, Some(record.backend), Some(&progress))?;
            rt.snapshot_create(&p.name, &p.tag, disk_only)
                .map_err(|e| e.to_string())
        })
        .await;
        match outcome {
            Ok(info) => {
                let o = SnapshotOutput {
                    name: info.runtime_id,
                    tag: info.tag,
                    created_at: info.created_at.to_rfc3339(),
                    disk_only: info.disk_only,
                    frozen: info.frozen,
                    memory_mib: info.memory_mib,
                    size_bytes: info.size_bytes,
                };
                done(
                    format!("snapshot {} of {} ({} bytes)", o.tag, o.name, o.size_bytes),
                    o,
                )
            }
            Err(e) => failed(e),
        }
    }

    /// A new running workspace continued from another's snapshot: its own
    /// copy of the disk and memory, the source's machine and network.
    #[tool(output_schema = schema_for_output::<StateOutput>())]
    async fn workspace_fork(
        &self,
        Parameters(p): Parameters<ForkInput>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let source = match self.policy.workspace(&p.source) {
            Ok(r) => r,
            Err(e) => return failed(e),
        };
        // The fork gets the source's machine: it must be one this server
        // would create now (an operator may have narrowed the flags, or
        // --any-workspace shows a workspace the CLI made with host folders).
        if let Err(e) = self.policy.allows_machine_of(&source) {
            return failed(format!("cannot fork {}: {e}", p.source));
        }
        let policy = self.policy.clone();
        // The fork's boot events (copying, restoring, ready) as progress.
        let progress = Progress::start(ctx.peer.clone(), ctx.meta.get_progress_token());
        let outcome = blocking(move || {
            let rt = Self::runtime(&policy, Some(source.backend), Some(&progress))?;
            let event = rt
                .fork(&p.name, &p.source, &p.tag)
                .map_err(|e| e.to_string())?;
            claim(&rt, &policy, &p.name)?;
            Ok(event)
        })
        .await;
        state_result(outcome)
    }
}
