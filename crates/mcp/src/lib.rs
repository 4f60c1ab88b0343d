//! `microagent mcp`: an MCP server over stdio, on the official Rust SDK
//! (`rmcp`), exposing one-shot runs and workspaces as tools.
//!
//! The server is the trust boundary for the model that drives it: the
//! [`Policy`] (the operator's flags) decides which images may be used, how
//! large a machine may be, how much data a call may carry, and which
//! workspaces are visible (only those this server created). Tools and
//! schemas are documented in `docs/mcp.md`.
//!
//! ```no_run
//! let policy = vmkit_mcp::Policy::new("/root/.microagent");
//! vmkit_mcp::serve_stdio(policy).expect("serving MCP");
//! ```

mod capture;
mod files;
mod framing;
mod network;
mod params;
mod policy;
mod progress;
mod results;
mod server;
mod workspace_tools;

use std::os::fd::OwnedFd;
use std::time::Duration;

use rmcp::ServiceExt;

pub use policy::{Policy, OWNER_LABEL};
pub use server::McpServer;

/// Why serving stopped.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    /// Setting up stdio or the async runtime failed.
    #[error("mcp server: {0}")]
    Io(#[from] std::io::Error),
    /// The operator's settings are not usable (a bad rule, a missing folder).
    #[error("microagent mcp: {0}")]
    Policy(String),
    /// The MCP session could not start (e.g. a bad `initialize`).
    #[error("mcp session: {0}")]
    Session(String),
}

/// How long a disconnected client's runs may take to clean up before the
/// server exits anyway (a stop is a kill, so this is generous).
const CLEANUP_LIMIT: Duration = Duration::from_secs(60);

/// Serves MCP on stdin/stdout until the client disconnects; then stops
/// any one-shot run still in progress and waits for its cleanup.
pub fn serve_stdio(policy: Policy) -> Result<(), McpError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    policy.validate().map_err(McpError::Policy)?;
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let protocol_out = claim_stdout()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let inflight = progress::InFlight::new(policy.state_dir.clone());
    let limit = policy.max_request_bytes;
    let server = McpServer::new(policy, inflight.clone());
    let outcome = runtime.block_on(async move {
        let output = tokio::fs::File::from_std(std::fs::File::from(protocol_out));
        // Client messages pass through the size bound on their way to rmcp.
        let (filtered, to_rmcp) = tokio::io::duplex(1024 * 1024);
        tokio::spawn(async move {
            if let Err(e) = framing::filter_lines(tokio::io::stdin(), to_rmcp, limit).await {
                tracing::warn!("reading the client: {e}");
            }
        });
        let transport = rmcp::transport::async_rw::AsyncRwTransport::new(filtered, output)
            .with_max_line_length(limit + 4096);
        let service = server
            .serve(transport)
            .await
            .map_err(|e| McpError::Session(e.to_string()))?;
        // SIGTERM, SIGINT or SIGHUP end the session like a disconnect, and
        // from then on are ignored so the cleanup below is not cut short.
        let stop = service.cancellation_token();
        std::thread::spawn(move || {
            if signals.forever().next().is_some() {
                stop.cancel();
            }
        });
        service
            .waiting()
            .await
            .map_err(|e| McpError::Session(e.to_string()))?;
        Ok(())
    });
    inflight.abort_all_and_wait(CLEANUP_LIMIT);
    runtime.shutdown_timeout(Duration::from_secs(1));
    outcome
}

/// Takes fd 1 for the protocol and points fd 1 at stderr, so nothing else
/// (a child process, a stray print) can write into the JSON-RPC stream.
fn claim_stdout() -> Result<OwnedFd, std::io::Error> {
    use std::os::fd::FromRawFd;
    let fd = nix::fcntl::fcntl(std::io::stdout(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: F_DUPFD_CLOEXEC just returned `fd`, a new descriptor that
    // nothing else owns; the OwnedFd takes it over.
    let stdout = unsafe { OwnedFd::from_raw_fd(fd) };
    nix::unistd::dup2_stdout(std::io::stderr())?;
    Ok(stdout)
}
