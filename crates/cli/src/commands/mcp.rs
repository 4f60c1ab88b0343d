//! `microagent mcp`: the MCP server (crate `vmkit-mcp`) over stdio.

use clap::Args;

use crate::cli::Global;

pub const LONG_ABOUT: &str = "\
Serve the Model Context Protocol over stdin/stdout, for an agent host (Claude
Desktop, an IDE, the `mcp` Python client) to drive microVMs.

Tools: run, workspace_create, workspace_start, workspace_exec,
workspace_write_file, workspace_read_file, workspace_cp, workspace_list,
workspace_status, workspace_halt, workspace_pause, workspace_resume,
workspace_egress_log, workspace_snapshot, workspace_fork, workspace_delete
(schemas in docs/mcp.md).

The server is the trust boundary for the model: clients cannot mount host
folders, may use only registry images (unless --allow-local-images), get
machines no larger than --max-memory/--max-cpus, and see only the workspaces
this server created (label microagent.mcp.owner = --owner) unless
--any-workspace. Guests get the network of --network/--allow/--deny (the same
forms as `run`); a client may narrow it (a stricter mode, a subset of the allow
rules, more deny rules), never widen it. Host files are reachable only through
workspace_cp, and only inside --files-dir (off without it). Output is capped per
stream (--max-output-bytes), flagged when truncated. A one-shot run's VM is
stopped and removed when its client cancels the call or disconnects; a
cancelled workspace_exec has its command killed in the guest.

Client configuration (e.g. claude_desktop_config.json):
  {\"mcpServers\": {\"microagent\": {\"command\": \"microagent\", \"args\": [\"mcp\"]}}}

Examples:
  microagent mcp --network allowlist --allow pypi.org:443 --allow .pythonhosted.org:443
  microagent mcp --network none --files-dir ~/agent-files --max-memory 1024";

#[derive(Debug, Args)]
pub struct McpArgs {
    /// Name written to the label of workspaces this server creates; only
    /// workspaces with this owner are visible to clients.
    #[arg(long, default_value = "mcp", value_name = "NAME")]
    pub owner: String,

    /// Let clients see and act on every workspace in the state folder.
    #[arg(long)]
    pub any_workspace: bool,

    /// Accept local image references (oci-layout:, docker-archive:,
    /// rootfs-tar:), which read host paths.
    #[arg(long)]
    pub allow_local_images: bool,

    /// Largest guest memory a client may ask for, MiB.
    #[arg(long, default_value_t = 2048, value_name = "MiB")]
    pub max_memory: u32,

    /// Most vCPUs a client may ask for.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub max_cpus: u32,

    /// Cap on each output stream returned to a client, bytes.
    #[arg(long, default_value_t = 64 * 1024, value_name = "BYTES")]
    pub max_output_bytes: usize,

    /// Largest file workspace_write_file accepts, bytes.
    #[arg(long, default_value_t = 8 * 1024 * 1024, value_name = "BYTES")]
    pub max_file_bytes: usize,

    /// Longest deadline a client may set, seconds (also the default).
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    pub max_timeout: u64,

    /// Largest JSON-RPC message accepted, bytes; a larger one gets an error.
    #[arg(long, default_value_t = 16 * 1024 * 1024, value_name = "BYTES")]
    pub max_request_bytes: usize,

    /// The host folder workspace_cp copies from and into (nothing else on
    /// the host is reachable); without it, workspace_cp is refused.
    #[arg(long, value_name = "DIR")]
    pub files_dir: Option<std::path::PathBuf>,

    /// Largest archive workspace_cp takes from a guest into --files-dir, bytes.
    #[arg(long, default_value_t = 1 << 30, value_name = "BYTES")]
    pub max_copy_bytes: u64,

    /// The guests' network: clients get this, or narrower.
    #[command(flatten)]
    pub net: crate::commands::network::PolicyArgs,
}

pub fn run(args: McpArgs, global: &Global) -> anyhow::Result<u8> {
    let mut policy = vmkit_mcp::Policy::new(&global.state_dir);
    policy.owner = args.owner;
    policy.any_workspace = args.any_workspace;
    policy.allow_local_images = args.allow_local_images;
    policy.max_memory_mib = args.max_memory;
    policy.max_cpus = args.max_cpus;
    policy.max_output_bytes = args.max_output_bytes;
    policy.max_file_bytes = args.max_file_bytes;
    policy.max_timeout_seconds = args.max_timeout;
    policy.max_request_bytes = args.max_request_bytes;
    policy.network = args.net.parse()?;
    policy.max_copy_bytes = args.max_copy_bytes;
    policy.files_dir = args.files_dir.map(|d| std::path::absolute(&d).unwrap_or(d));
    vmkit_mcp::serve_stdio(policy)?;
    Ok(0)
}
