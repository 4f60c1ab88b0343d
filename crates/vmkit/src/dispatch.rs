use vmkit_protocol::{
    Backend, BackendKind, Command, ErrorCode, Outcome, ProtocolError, Request, Response,
};

/// The backend `run` would use on this host, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendChoice {
    /// The backend.
    pub kind: BackendKind,
    /// Why it was chosen.
    pub reason: String,
}

/// Picks the backend for this host: apple-vf on macOS; on Linux QEMU, which
/// runs everywhere (KVM when usable, TCG otherwise). Firecracker needs usable
/// KVM and its binary, so it is used only when asked for (`--backend`).
pub fn select_backend(requested: Option<BackendKind>) -> Result<BackendChoice, ProtocolError> {
    let native = if cfg!(target_os = "macos") {
        BackendKind::AppleVf
    } else {
        BackendKind::Qemu
    };
    match requested {
        None => Ok(BackendChoice {
            kind: native,
            reason: if native == BackendKind::Qemu {
                "the Linux default: QEMU runs with KVM where usable and TCG elsewhere".into()
            } else {
                "the macOS default".into()
            },
        }),
        Some(kind) => {
            let supported = match kind {
                BackendKind::AppleVf => cfg!(target_os = "macos"),
                BackendKind::Qemu | BackendKind::Firecracker => cfg!(target_os = "linux"),
            };
            if supported {
                Ok(BackendChoice {
                    kind,
                    reason: "requested with --backend".into(),
                })
            } else {
                Err(ProtocolError::new(
                    ErrorCode::Unavailable,
                    format!("backend {kind} does not run on {}", std::env::consts::OS),
                ))
            }
        }
    }
}

/// Builds the backend for a kind: the same [`crate::Driver`] a
/// [`crate::Runtime`] uses, without an observer.
pub fn backend_for(kind: BackendKind) -> Box<dyn crate::Driver> {
    crate::driver_for(kind, None)
}

/// Validates a request, hands it to `backend`, and wraps the outcome or
/// error into a [`Response`]. Never panics on a bad request.
pub fn dispatch<B: Backend + ?Sized>(backend: &B, request: &Request) -> Response {
    let kind = backend.kind();
    if let Err(e) = request.validate() {
        return Response::failure(kind, e);
    }
    if request.identity.backend != kind {
        return Response::failure(
            kind,
            ProtocolError::invalid(format!(
                "identity.backend is {} but this is the {kind} backend",
                request.identity.backend
            )),
        );
    }
    let outcome = match request.command {
        Command::Host => backend.host().map(|host| Outcome {
            host: Some(host),
            ..Outcome::default()
        }),
        Command::Check => backend.check(request),
        Command::Prepare => backend.prepare(request),
        Command::Start => backend.start(request),
        Command::Run => backend.run(request),
        Command::Inspect => backend.inspect(request),
        Command::Halt => backend.halt(request),
        Command::Stop => backend.stop(request),
        Command::Kill => backend.kill(request),
        Command::Delete => backend.delete(request),
        Command::Pause => backend.pause(request),
        Command::Resume => backend.resume(request),
        Command::Snapshot => backend.snapshot(request),
    };
    match outcome {
        Ok(o) => Response {
            event: o.event,
            host: o.host,
            result: o.result,
            snapshots: o.snapshots,
            ..Response::success(kind)
        },
        Err(e) => Response::failure(kind, e),
    }
}

pub(crate) fn dispatch_with_kind(request: &Request) -> Response {
    match select_backend(Some(request.identity.backend)) {
        Ok(choice) => dispatch(backend_for(choice.kind).as_ref(), request),
        Err(e) => Response::failure(request.identity.backend, e),
    }
}
