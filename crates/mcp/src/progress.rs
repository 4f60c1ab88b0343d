//! Long calls (boots, image builds, one-shot runs) tell the client how they
//! are doing with MCP progress notifications, and a one-shot run whose
//! client went away (cancelled the call, or disconnected) has its VM
//! stopped so the run cleans up after itself.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rmcp::model::{ProgressNotificationParam, ProgressToken};
use rmcp::{Peer, RoleServer};
use tokio::sync::mpsc;
use vmkit::protocol::Event;

/// Sends progress notifications for one call, if the client asked for them
/// (gave a progress token). Cheap to clone into blocking code.
#[derive(Clone)]
pub struct Progress {
    tx: mpsc::UnboundedSender<String>,
}

impl Progress {
    /// Starts forwarding messages to `peer` as notifications under `token`.
    pub fn start(peer: Peer<RoleServer>, token: Option<ProgressToken>) -> Progress {
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            let mut step = 0.0;
            while let Some(message) = rx.recv().await {
                step += 1.0;
                if let Some(token) = &token {
                    let note =
                        ProgressNotificationParam::new(token.clone(), step).with_message(message);
                    if peer.notify_progress(note).await.is_err() {
                        break; // the client is gone
                    }
                }
            }
        });
        Progress { tx }
    }

    /// Reports one step.
    pub fn say(&self, message: impl Into<String>) {
        let _ = self.tx.send(message.into());
    }

    /// An observer for the runtime that reports each lifecycle event.
    pub fn observer(&self) -> vmkit::Observer {
        let this = self.clone();
        Arc::new(move |e: &Event| this.say(format!("{}: {}", e.state, e.detail)))
    }
}

/// The one-shot runs in progress, by workspace name.
pub struct InFlight {
    state_dir: PathBuf,
    names: Mutex<HashSet<String>>,
    changed: Condvar,
}

impl InFlight {
    /// Tracks runs in `state_dir`.
    pub fn new(state_dir: PathBuf) -> Arc<InFlight> {
        Arc::new(InFlight {
            state_dir,
            names: Mutex::new(HashSet::new()),
            changed: Condvar::new(),
        })
    }

    /// Marks `name` as running until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>, name: &str) -> RunGuard {
        self.lock().insert(name.to_owned());
        RunGuard {
            inflight: self.clone(),
            name: name.to_owned(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn running(&self, name: &str) -> bool {
        self.lock().contains(name)
    }

    /// Stops the VM of run `name` and keeps doing so until the run has
    /// ended (the VM may not exist yet when this is called). Returns at once.
    pub fn abort(self: &Arc<Self>, name: &str) {
        let (this, name) = (self.clone(), name.to_owned());
        std::thread::spawn(move || this.abort_until_done(&name));
    }

    fn abort_until_done(&self, name: &str) {
        let Ok(choice) = vmkit::select_backend(None) else {
            return;
        };
        let Ok(rt) = vmkit::Runtime::new(&self.state_dir, choice.kind, None) else {
            return;
        };
        while self.running(name) {
            if let Err(e) = rt.abort_run(name) {
                tracing::warn!("stopping run {name}: {e}");
            }
            let names = self.lock();
            let _ = self.changed.wait_timeout(names, Duration::from_millis(100));
        }
    }

    /// Stops every run in progress and waits (up to `limit`) until each has
    /// cleaned up: for a client that disconnected.
    pub fn abort_all_and_wait(self: &Arc<Self>, limit: Duration) {
        let names: Vec<String> = self.lock().iter().cloned().collect();
        for name in &names {
            tracing::info!("client gone: stopping run {name}");
            self.abort(name);
        }
        let deadline = std::time::Instant::now() + limit;
        let mut guard = self.lock();
        while !guard.is_empty() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                tracing::warn!("runs still cleaning up: {:?}", *guard);
                break;
            }
            guard = self
                .changed
                .wait_timeout(guard, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Removes a run from [`InFlight`] when it ends.
pub struct RunGuard {
    inflight: Arc<InFlight>,
    name: String,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.inflight.lock().remove(&self.name);
        self.inflight.changed.notify_all();
    }
}

/// Aborts a run when the call's future is dropped before it finished (rmcp
/// drops a cancelled call's future); disarmed on completion.
pub struct AbortOnDrop {
    inflight: Arc<InFlight>,
    name: String,
    armed: bool,
}

impl AbortOnDrop {
    /// Armed for run `name`.
    pub fn new(inflight: &Arc<InFlight>, name: &str) -> AbortOnDrop {
        AbortOnDrop {
            inflight: inflight.clone(),
            name: name.to_owned(),
            armed: true,
        }
    }

    /// The run finished: nothing to abort.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.inflight.abort(&self.name);
        }
    }
}

/// Kills a workspace command's process group in the guest when the call
/// running it is dropped before it finished (cancelled, or the client went
/// away): without it the command would run on, since the blocking thread
/// keeps its exec connection open until it ends. Disarmed on completion.
pub struct KillOnDrop {
    handle: vmkit::ExecHandle,
    armed: bool,
}

impl KillOnDrop {
    /// Armed for the exec `handle` steers.
    pub fn new(handle: vmkit::ExecHandle) -> KillOnDrop {
        KillOnDrop {
            handle,
            armed: true,
        }
    }

    /// The command finished: nothing to kill.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.armed {
            // Sent now if the exec runs, at its start if it is connecting.
            if let Err(e) = self.handle.signal(nix::sys::signal::Signal::SIGKILL as i32) {
                tracing::warn!("killing a cancelled command: {e}");
            }
        }
    }
}
