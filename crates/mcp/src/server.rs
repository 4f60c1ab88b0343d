//! The MCP server: one tool per operation, each a call into
//! `vmkit::Runtime` on a blocking thread, checked against the [`Policy`]
//! first. Failures of the operation come back as tool results with
//! `isError` (the model sees them); malformed calls as JSON-RPC errors.

use std::io::Cursor;
use std::sync::Arc;

use rmcp::handler::server::common::schema_for_output;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CustomRequest, CustomResult, ErrorCode, Implementation, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_handler, tool_router, ErrorData, RoleServer, ServerHandler};
use vmkit::protocol::{BackendKind, GuestArch, RunResult};

use crate::capture::{decode_base64, encode_content, Capture};
use crate::files;
use crate::params::*;
use crate::policy::Policy;
use crate::progress::{AbortOnDrop, InFlight, KillOnDrop, Progress};
use crate::results::{
    blocking, claim, command_output, command_summary, done, failed, state_result, ToolResult,
};

/// The server; cheap to clone (rmcp clones it per call).
#[derive(Clone)]
pub struct McpServer {
    pub(crate) policy: Arc<Policy>,
    inflight: Arc<InFlight>,
    /// Every tool: this file's and `workspace_tools`'.
    tool_router: ToolRouter<McpServer>,
}

impl McpServer {
    /// A server enforcing `policy`.
    pub fn new(policy: Policy, inflight: Arc<InFlight>) -> McpServer {
        McpServer {
            policy: Arc::new(policy),
            inflight,
            tool_router: Self::tool_router() + Self::workspace_tools(),
        }
    }

    pub(crate) fn runtime(
        policy: &Policy,
        backend: Option<BackendKind>,
        progress: Option<&Progress>,
    ) -> Result<vmkit::Runtime, String> {
        let choice = vmkit::select_backend(backend).map_err(|e| e.to_string())?;
        vmkit::Runtime::new(
            &policy.state_dir,
            choice.kind,
            progress.map(|p| p.observer()),
        )
        .map_err(|e| e.to_string())
    }

    /// Kernel and root disk for `image`, reporting progress.
    fn disks(
        rt: &vmkit::Runtime,
        image: &str,
        progress: &Progress,
    ) -> Result<(std::path::PathBuf, std::path::PathBuf), String> {
        // No volumes: host folders are never the model's to choose.
        rt.preflight(&[]).map_err(|e| e.to_string())?;
        progress.say("checking the kernel");
        let kernel = rt
            .kernel(GuestArch::host(), None, &mut |ev| {
                progress.say(format!("kernel: {ev}"))
            })
            .map_err(|e| e.to_string())?;
        progress.say(format!("building the root disk of {image}"));
        let rootfs = rt
            .rootfs(image, GuestArch::host(), false)
            .map_err(|e| e.to_string())?;
        Ok((kernel, rootfs.path))
    }

    /// The machine a client asked for, within the server's bounds; its
    /// network the server's policy or a narrower one (`crate::network`).
    fn machine(
        &self,
        memory: Option<u32>,
        cpus: Option<u32>,
        env: std::collections::BTreeMap<String, String>,
        network: NetworkAsk,
    ) -> Result<vmkit::MachineParams, String> {
        let (memory_mib, cpus) = self.policy.machine(memory, cpus)?;
        let network = crate::network::narrow(
            &self.policy.network,
            network.mode.map(Into::into),
            network.allow,
            network.deny,
        )?;
        Ok(vmkit::MachineParams {
            memory_mib,
            cpus,
            // Host folders and disks are never the model's to choose.
            disks: Vec::new(),
            volumes: Vec::new(),
            env,
            cwd: None,
            user: None,
            kernel: None,
            kernel_args: None,
            // The host's own architecture: the fast path, and no choice for the model.
            arch: None,
            // Published ports bind host sockets: never the model's to choose.
            network,
            publish: Vec::new(),
        })
    }

    /// Runs a command in a workspace this server owns. If the call is
    /// dropped before the command ends (the client cancelled it or went
    /// away), the command's process group in the guest is killed.
    pub(crate) async fn exec_in(
        &self,
        name: &str,
        request: vmkit::ExecRequest,
        stdin: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<(RunResult, Capture, Capture), String> {
        let record = self.policy.workspace(name)?;
        let policy = self.policy.clone();
        let name = name.to_owned();
        let handle = vmkit::ExecHandle::new();
        let mut kill = KillOnDrop::new(handle.clone());
        let outcome = blocking(move || {
            let rt = Self::runtime(&policy, Some(record.backend), None)?;
            let (mut out, mut err) = (Capture::new(limit), Capture::new(limit));
            let options = vmkit::ExecOptions {
                request,
                stdin: stdin.map(|b| Box::new(Cursor::new(b)) as Box<dyn std::io::Read + Send>),
                handle,
            };
            let result = rt
                .exec(&name, options, &mut out, &mut err)
                .map_err(|e| e.to_string())?;
            Ok((result, out, err))
        })
        .await;
        kill.disarm();
        outcome
    }

    /// A lifecycle call on a workspace this server owns, as a tool result.
    pub(crate) async fn transition(
        &self,
        name: String,
        progress: Option<Progress>,
        call: impl FnOnce(&vmkit::Runtime, &str) -> Result<vmkit::protocol::Event, vmkit::VmkitError>
            + Send
            + 'static,
    ) -> ToolResult {
        let record = match self.policy.workspace(&name) {
            Ok(r) => r,
            Err(e) => return failed(e),
        };
        let policy = self.policy.clone();
        let outcome = blocking(move || {
            let rt = Self::runtime(&policy, Some(record.backend), progress.as_ref())?;
            call(&rt, &name).map_err(|e| e.to_string())
        })
        .await;
        state_result(outcome)
    }

    pub(crate) fn shell(script: &str, args: &[&str]) -> Vec<String> {
        let mut argv = vec![
            "/bin/sh".to_owned(),
            "-c".into(),
            script.into(),
            "sh".into(),
        ];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        argv
    }
}

#[tool_router]
impl McpServer {
    /// Run a command in a fresh microVM from an image, then delete the VM.
    /// Returns the exit code and the (bounded) stdout and stderr.
    #[tool(output_schema = schema_for_output::<CommandOutput>())]
    async fn run(
        &self,
        Parameters(p): Parameters<RunInput>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult {
        if let Err(e) = self.policy.check_image(&p.image) {
            return failed(e);
        }
        let timeout = match self.policy.timeout(p.timeout_seconds) {
            Ok(t) => t,
            Err(e) => return failed(e),
        };
        let machine =
            match self.machine(p.memory_mib, p.cpus, p.env, ask(p.network, p.allow, p.deny)) {
                Ok(m) => m,
                Err(e) => return failed(e),
            };
        let name = vmkit::new_run_name();
        let progress = Progress::start(ctx.peer.clone(), ctx.meta.get_progress_token());
        let params = vmkit::RunParams {
            name: Some(name.clone()),
            setup: p.setup,
            exec: p.command,
            timeout_seconds: Some(timeout),
            image: Some(p.image.clone()),
            keep: false,
            machine,
        };
        let guard = self.inflight.begin(&name);
        let mut abort = AbortOnDrop::new(&self.inflight, &name);
        let (policy, limit, image) = (self.policy.clone(), self.policy.max_output_bytes, p.image);
        let work = blocking(move || {
            let _guard = guard;
            let rt = Self::runtime(&policy, None, Some(&progress))?;
            let (kernel, rootfs) = Self::disks(&rt, &image, &progress)?;
            let (mut out, mut err) = (Capture::new(limit), Capture::new(limit));
            let output = rt
                .run(&params, &kernel, &rootfs, &mut out, &mut err)
                .map_err(|e| e.to_string())?;
            let mut o = command_output(&output.result, &out, &err);
            o.setup_failed = output.setup_failed.map(|s| s.command);
            Ok(o)
        });
        let outcome = tokio::select! {
            outcome = work => outcome,
            _ = ctx.ct.cancelled() => return Err(ErrorData::internal_error("cancelled; the run's VM is being stopped", None)),
        };
        abort.disarm();
        match outcome {
            Ok(o) => done(command_summary(&o), o),
            Err(e) => failed(e),
        }
    }

    /// Create a workspace (a VM with a persistent disk) from an image, and
    /// boot it unless start is false.
    #[tool(output_schema = schema_for_output::<StateOutput>())]
    async fn workspace_create(
        &self,
        Parameters(p): Parameters<CreateInput>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult {
        if let Err(e) = self.policy.check_image(&p.image) {
            return failed(e);
        }
        let machine =
            match self.machine(p.memory_mib, p.cpus, p.env, ask(p.network, p.allow, p.deny)) {
                Ok(m) => m,
                Err(e) => return failed(e),
            };
        let progress = Progress::start(ctx.peer.clone(), ctx.meta.get_progress_token());
        let policy = self.policy.clone();
        let start = p.start.unwrap_or(true);
        let outcome = blocking(move || {
            let rt = Self::runtime(&policy, None, Some(&progress))?;
            let (kernel, rootfs) = Self::disks(&rt, &p.image, &progress)?;
            let event = rt
                .create(&p.name, &p.image, &kernel, &rootfs, &machine)
                .map_err(|e| e.to_string())?;
            claim(&rt, &policy, &p.name)?;
            if start {
                rt.start(&p.name).map_err(|e| e.to_string())
            } else {
                Ok(event)
            }
        })
        .await;
        state_result(outcome)
    }

    /// Boot a workspace this server created (or, from halted, continue it
    /// from one of its snapshots); returns once commands can run.
    #[tool(output_schema = schema_for_output::<StateOutput>())]
    async fn workspace_start(
        &self,
        Parameters(p): Parameters<StartInput>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let progress = Progress::start(ctx.peer.clone(), ctx.meta.get_progress_token());
        self.transition(p.name, Some(progress), move |rt, name| {
            match &p.from_snapshot {
                Some(tag) => rt.start_from_snapshot(name, tag),
                None => rt.start(name),
            }
        })
        .await
    }

    /// Run a command in a running workspace: argv (no shell) or command
    /// (/bin/sh -c). stdout and stderr are bounded; truncation is flagged.
    #[tool(output_schema = schema_for_output::<CommandOutput>())]
    async fn workspace_exec(
        &self,
        Parameters(p): Parameters<ExecInput>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let argv = match (p.argv, p.command) {
            (Some(argv), None) if !argv.is_empty() => argv,
            (None, Some(cmd)) => Self::shell(&cmd, &[]).into_iter().take(3).collect(),
            _ => return failed("give exactly one of argv (a non-empty list) or command"),
        };
        let timeout = match self.policy.timeout(p.timeout_seconds) {
            Ok(t) => t,
            Err(e) => return failed(e),
        };
        let stdin = p.stdin.map(String::into_bytes);
        if stdin
            .as_ref()
            .is_some_and(|s| s.len() > self.policy.max_file_bytes)
        {
            return failed(format!(
                "stdin is larger than the server's limit of {} bytes",
                self.policy.max_file_bytes
            ));
        }
        let request = vmkit::ExecRequest {
            argv,
            env: p.env,
            cwd: p.cwd,
            timeout_ms: Some(timeout.saturating_mul(1000)),
            ..vmkit::ExecRequest::default()
        };
        let work = self.exec_in(&p.name, request, stdin, self.policy.max_output_bytes);
        let outcome = tokio::select! {
            outcome = work => outcome,
            // Leaving `work` behind drops it: the guest command is killed.
            _ = ctx.ct.cancelled() => return Err(ErrorData::internal_error("cancelled; the command was killed", None)),
        };
        match outcome {
            Ok((result, out, err)) => {
                let o = command_output(&result, &out, &err);
                done(command_summary(&o), o)
            }
            Err(e) => failed(e),
        }
    }

    /// Write a file in a running workspace (content as text, or
    /// contentBase64 for bytes), creating parent folders.
    #[tool(output_schema = schema_for_output::<WriteFileOutput>())]
    async fn workspace_write_file(&self, Parameters(p): Parameters<WriteFileInput>) -> ToolResult {
        let checked = files::check_path(&p.path).and_then(|_| files::parse_mode(p.mode.as_deref()));
        let mode = match checked {
            Ok(m) => m,
            Err(e) => return failed(e),
        };
        let bytes = match (p.content, p.content_base64) {
            (Some(text), None) => text.into_bytes(),
            (None, Some(b64)) => match decode_base64(&b64) {
                Ok(b) => b,
                Err(e) => return failed(e),
            },
            _ => return failed("give exactly one of content or contentBase64"),
        };
        if bytes.len() > self.policy.max_file_bytes {
            return failed(format!(
                "the file is {} bytes, more than the server's limit of {} bytes (microagent mcp --max-file-bytes)",
                bytes.len(),
                self.policy.max_file_bytes
            ));
        }
        let size = bytes.len() as u64;
        let request = vmkit::ExecRequest {
            argv: Self::shell(files::WRITE_SCRIPT, &[&p.path, &mode]),
            timeout_ms: Some(self.policy.max_timeout_seconds.saturating_mul(1000)),
            ..vmkit::ExecRequest::default()
        };
        match self.exec_in(&p.name, request, Some(bytes), 4096).await {
            Ok((result, _, _)) if result.exit_code == Some(0) => {
                let o = WriteFileOutput {
                    path: p.path,
                    bytes: size,
                };
                done(format!("wrote {} bytes to {}", o.bytes, o.path), o)
            }
            Ok((_, _, err)) => failed(format!("writing {}: {}", p.path, err.text().trim())),
            Err(e) => failed(e),
        }
    }

    /// Read (part of) a file in a running workspace. Text comes back as
    /// text, other bytes as base64; truncated says more follows.
    #[tool(output_schema = schema_for_output::<ReadFileOutput>())]
    async fn workspace_read_file(&self, Parameters(p): Parameters<ReadFileInput>) -> ToolResult {
        if let Err(e) = files::check_path(&p.path) {
            return failed(e);
        }
        let cap = self.policy.max_output_bytes as u64;
        let max = p.max_bytes.unwrap_or(cap).clamp(1, cap);
        let offset = p.offset.unwrap_or(0);
        let request = vmkit::ExecRequest {
            argv: Self::shell(
                files::READ_SCRIPT,
                &[
                    &p.path,
                    &(offset.saturating_add(1)).to_string(),
                    &max.to_string(),
                ],
            ),
            timeout_ms: Some(self.policy.max_timeout_seconds.saturating_mul(1000)),
            ..vmkit::ExecRequest::default()
        };
        let (result, out, err) = match self.exec_in(&p.name, request, None, max as usize).await {
            Ok(r) => r,
            Err(e) => return failed(e),
        };
        if result.exit_code != Some(0) {
            return failed(format!("reading {}: {}", p.path, err.text().trim()));
        }
        let size = match files::parse_size(&err.text()) {
            Ok(s) => s,
            Err(e) => return failed(e),
        };
        let (encoding, content) = encode_content(out.bytes());
        let bytes = out.bytes().len() as u64;
        let o = ReadFileOutput {
            path: p.path,
            size,
            offset,
            encoding: encoding.into(),
            content,
            bytes,
            truncated: offset.saturating_add(bytes) < size,
        };
        done(
            format!(
                "read {} of {} bytes of {} ({})",
                o.bytes, o.size, o.path, o.encoding
            ),
            o,
        )
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for McpServer {
    /// The stand-in for a message over the size bound (see `framing`).
    async fn on_custom_request(
        &self,
        request: CustomRequest,
        _context: RequestContext<RoleServer>,
    ) -> Result<CustomResult, ErrorData> {
        if request.method == crate::framing::TOO_LARGE_METHOD {
            let params = request.params.unwrap_or_default();
            return Err(ErrorData::new(
                ErrorCode::INVALID_REQUEST,
                format!(
                    "request of {} bytes is larger than this server accepts ({} bytes; \
                     microagent mcp --max-request-bytes); nothing was done",
                    params["bytes"], params["limit"]
                ),
                None,
            ));
        }
        Err(ErrorData::new(
            ErrorCode::METHOD_NOT_FOUND,
            request.method,
            None,
        ))
    }

    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("microagent", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Runs commands in Linux microVMs. `run` is one-shot; `workspace_*` keep a VM and \
                 its disk between calls. Output is capped per stream (truncation is flagged). \
                 The guest network is the server's policy; `network`/`allow`/`deny` may only \
                 narrow it. `workspace_cp` moves files through the server's files folder.",
            )
    }
}

fn ask(mode: Option<NetworkInput>, allow: Option<Vec<String>>, deny: Vec<String>) -> NetworkAsk {
    NetworkAsk { mode, allow, deny }
}
