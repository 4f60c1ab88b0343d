//! How tool outcomes reach the client: a structured value plus a short
//! text summary, or an error result the model can read.

use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::ErrorData;
use serde::Serialize;
use vmkit::protocol::RunResult;

use crate::capture::Capture;
use crate::params::{CommandOutput, StateOutput, WorkspaceInfo};
use crate::policy::{Policy, OWNER_LABEL};

/// What every tool returns.
pub type ToolResult = Result<CallToolResult, ErrorData>;

/// A successful result: a short summary for people and older clients, and
/// the structured value the tool's output schema describes.
pub fn done(summary: String, value: impl Serialize) -> ToolResult {
    let value = serde_json::to_value(value)
        .map_err(|e| ErrorData::internal_error(format!("encoding the result: {e}"), None))?;
    let mut result = CallToolResult::structured(value);
    result.content = vec![ContentBlock::text(summary)];
    Ok(result)
}

/// A failed operation, told to the model.
pub fn failed(message: impl Into<String>) -> ToolResult {
    Ok(CallToolResult::error(vec![ContentBlock::text(
        message.into(),
    )]))
}

/// A lifecycle outcome (the event a transition ended with) as a tool
/// result: `{name, state, detail}` and a one-line summary.
pub fn state_result(outcome: Result<vmkit::protocol::Event, String>) -> ToolResult {
    match outcome {
        Ok(e) => {
            let o = StateOutput {
                name: e.identity.runtime_id,
                state: e.state.to_string(),
                detail: e.detail,
            };
            done(
                format!("workspace {} is {} ({})", o.name, o.state, o.detail),
                o,
            )
        }
        Err(e) => failed(e),
    }
}

/// Marks a workspace this server just made as its own; if that fails the
/// workspace is removed again (unlabelled, the server could never see it).
pub fn claim(rt: &vmkit::Runtime, policy: &Policy, name: &str) -> Result<(), String> {
    let labelled = vmkit_state::StateStore::open(&policy.state_dir)
        .and_then(|store| store.set_label(name, OWNER_LABEL, &policy.owner));
    labelled.map_err(|e| {
        let _ = rt.delete(name, true);
        format!("labelling workspace {name}: {e}")
    })
}

/// Runs blocking library code off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(format!("internal error: {e}")))
}

/// 128+N for a signal, as shells report it.
pub fn exit_code(result: &RunResult) -> i32 {
    match (result.exit_code, result.signal) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => -1,
    }
}

pub fn command_output(result: &RunResult, out: &Capture, err: &Capture) -> CommandOutput {
    CommandOutput {
        exit_code: exit_code(result),
        signal: result.signal,
        stdout: out.text(),
        stderr: err.text(),
        stdout_truncated: out.truncated(),
        stderr_truncated: err.truncated(),
        stdout_bytes: out.total(),
        stderr_bytes: err.total(),
        timed_out: result.timed_out,
        setup_failed: None,
    }
}

/// "exit code 0", then the start of each stream: for clients that show the
/// model only text content.
pub fn command_summary(o: &CommandOutput) -> String {
    const EXCERPT: usize = 2048;
    let mut s = if o.timed_out {
        format!("timed out (exit code {})", o.exit_code)
    } else {
        format!("exit code {}", o.exit_code)
    };
    if let Some(step) = &o.setup_failed {
        s.push_str(&format!("; setup command failed: {step}"));
    }
    for (name, text, bytes) in [
        ("stdout", &o.stdout, o.stdout_bytes),
        ("stderr", &o.stderr, o.stderr_bytes),
    ] {
        if bytes > 0 {
            let cut = text
                .char_indices()
                .map(|(i, _)| i)
                .take_while(|&i| i <= EXCERPT)
                .last()
                .unwrap_or(0);
            let shown = if text.len() > EXCERPT {
                &text[..cut]
            } else {
                text
            };
            s.push_str(&format!("\n--- {name} ({bytes} bytes)\n{shown}"));
        }
    }
    s
}

pub fn info(r: &vmkit_state::WorkspaceRecord) -> WorkspaceInfo {
    WorkspaceInfo {
        name: r.name.clone(),
        state: r.state.to_string(),
        image: r.image.clone(),
        memory_mib: r.config.memory_mib,
        cpus: r.config.cpu_count,
        created_at: r.created_at.to_rfc3339(),
        network: crate::params::NetworkInfo {
            mode: r.config.network.mode.to_string(),
            allow: r.config.network.allow.clone(),
            deny: r.config.network.deny.clone(),
        },
    }
}
