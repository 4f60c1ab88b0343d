//! A stand-in for the `firecracker` binary: a shell script on `PATH` that
//! records its arguments and pid, prints a line on stdout and one on
//! stderr, then sleeps (so there is a process to supervise and kill), and
//! a thread that serves the API socket named by `--api-sock`, checking
//! every request against the swagger file and answering as the file says
//! (the declared 2xx, or 400 with an `Error` body).

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::swagger::Spec;

/// Most a request head or body may take.
const MAX_REQUEST: usize = 64 * 1024;

/// One request as the mock saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The method.
    pub method: String,
    /// The path.
    pub path: String,
    /// The JSON body, if it parsed.
    pub body: Option<Value>,
    /// What the mock answered (0: it died instead, see `Behaviour::crash_on`).
    pub status: u16,
    /// The fault message of a 400.
    pub fault: Option<String>,
}

/// How the stand-in misbehaves.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Refuse a valid request to this path with this fault message, as
    /// Firecracker does when, say, a disk image cannot be opened.
    pub fail: Option<(String, String)>,
    /// Exit with an error before opening the API socket.
    pub exit_at_start: bool,
    /// Die (SIGKILL) on receiving a request to this path, without
    /// answering, as Firecracker does when its seccomp filter trips.
    pub crash_on: Option<String>,
    /// Write 5 MiB to stderr once started, as a Firecracker that a guest
    /// makes complain without end would.
    pub flood_stderr: bool,
}

/// What a connection ended with.
enum Flow {
    /// The client closed it.
    Closed,
    /// The process was killed: stop serving.
    Crashed,
}

/// A fake `firecracker` in its own folder, with the API thread behind it.
pub struct FakeFirecracker {
    dir: tempfile::TempDir,
    requests: Arc<Mutex<Vec<Recorded>>>,
    errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    server: Option<thread::JoinHandle<()>>,
}

/// The args file is written last: it tells the API thread to serve, so
/// everything the tests read about the process is in place by then.
const SCRIPT: &str = r#"#!/bin/sh
here=$(dirname "$0")
echo $$ > "$here/pid"
echo "fake-firecracker: serial console line"
echo "fake-firecracker: stderr line" >&2
if [ -e "$here/exit-at-start" ]; then
    echo "Error: fake failure at start"
    exit 1
fi
if [ -e "$here/flood-stderr" ]; then
    head -c 5242880 /dev/zero | tr '\0' w >&2
fi
printf '%s\n' "$@" > "$here/args.tmp" && mv "$here/args.tmp" "$here/args"
exec sleep 600
"#;

impl FakeFirecracker {
    /// Writes the script and starts the API thread, which waits for the
    /// script to run and then serves the socket it was given.
    pub fn install(spec: Arc<Spec>, behaviour: Behaviour) -> FakeFirecracker {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("firecracker");
        std::fs::write(&script, SCRIPT).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        if behaviour.exit_at_start {
            std::fs::write(dir.path().join("exit-at-start"), "").unwrap();
        }
        if behaviour.flood_stderr {
            std::fs::write(dir.path().join("flood-stderr"), "").unwrap();
        }
        let requests = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let server = (!behaviour.exit_at_start).then(|| {
            let args = dir.path().join("args");
            let (requests, errors, stop) = (requests.clone(), errors.clone(), stop.clone());
            thread::spawn(move || {
                if let Err(e) = serve(&args, &spec, &behaviour, &requests, &stop) {
                    errors.lock().unwrap().push(e);
                }
            })
        });
        FakeFirecracker {
            dir,
            requests,
            errors,
            stop,
            server,
        }
    }

    /// The folder to put on `PATH`.
    pub fn bin_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The arguments the script was started with.
    pub fn args(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("args"))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The script's pid (the `sleep` it became).
    pub fn pid(&self) -> i32 {
        std::fs::read_to_string(self.dir.path().join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// What was requested, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// Problems the API thread hit that are not answers (a request it
    /// could not read, a spec it could not use).
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }
}

impl Drop for FakeFirecracker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
    }
}

fn serve(
    args_file: &Path,
    spec: &Spec,
    behaviour: &Behaviour,
    requests: &Mutex<Vec<Recorded>>,
    stop: &AtomicBool,
) -> Result<(), String> {
    // Wait for the script to say which socket to serve.
    let deadline = Instant::now() + Duration::from_secs(20);
    let args = loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        if let Ok(text) = std::fs::read_to_string(args_file) {
            break text;
        }
        if Instant::now() > deadline {
            return Err("the fake firecracker never ran".into());
        }
        thread::sleep(Duration::from_millis(2));
    };
    let args: Vec<&str> = args.lines().collect();
    let socket = args
        .iter()
        .position(|a| *a == "--api-sock")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .ok_or("no --api-sock argument")?;
    let listener =
        UnixListener::bind(&socket).map_err(|e| format!("binding {}: {e}", socket.display()))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let started = AtomicBool::new(false);
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).map_err(|e| e.to_string())?;
                let pid_file = args_file.with_file_name("pid");
                if let Flow::Crashed =
                    connection(stream, spec, behaviour, requests, &started, &pid_file)?
                {
                    // A dead Firecracker answers nothing more.
                    drop(listener);
                    let _ = std::fs::remove_file(&socket);
                    return Ok(());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
    Ok(())
}

/// Serves requests on one connection until the client closes it
/// (Firecracker keeps connections alive).
fn connection(
    mut stream: UnixStream,
    spec: &Spec,
    behaviour: &Behaviour,
    requests: &Mutex<Vec<Recorded>>,
    started: &AtomicBool,
    pid_file: &Path,
) -> Result<Flow, String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Read one request head.
        let (head_len, method, path, length, content_type) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    if req.version != Some(1) {
                        return Err("the client did not speak HTTP/1.1".into());
                    }
                    let mut length = None;
                    let mut content_type = None;
                    for h in req.headers.iter() {
                        let value = String::from_utf8_lossy(h.value).trim().to_string();
                        if h.name.eq_ignore_ascii_case("content-length") {
                            length =
                                Some(value.parse::<usize>().map_err(|_| "bad Content-Length")?);
                        } else if h.name.eq_ignore_ascii_case("content-type") {
                            content_type = Some(value);
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            return Err("Firecracker does not take chunked requests".into());
                        }
                    }
                    break (
                        n,
                        req.method.unwrap_or_default().to_string(),
                        req.path.unwrap_or_default().to_string(),
                        length.unwrap_or(0),
                        content_type,
                    );
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(format!("unparseable request: {e}")),
            }
            if buf.len() > MAX_REQUEST {
                return Err("request head too large".into());
            }
            let n = stream
                .read(&mut chunk)
                .map_err(|e| format!("reading a request: {e}"))?;
            if n == 0 {
                // The client closed between requests: normal.
                return if buf.is_empty() {
                    Ok(Flow::Closed)
                } else {
                    Err("connection closed mid-request".into())
                };
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        if length > MAX_REQUEST {
            return Err("request body too large".into());
        }
        while buf.len() < head_len + length {
            let n = stream
                .read(&mut chunk)
                .map_err(|e| format!("reading a body: {e}"))?;
            if n == 0 {
                return Err("connection closed inside a body".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: Vec<u8> = buf[head_len..head_len + length].to_vec();
        buf.drain(..head_len + length);

        let mut verdict =
            spec.check_request(&method, &path, (!body.is_empty()).then_some(&body[..]));
        // The file says `consumes: application/json`.
        if verdict.is_ok()
            && !body.is_empty()
            && content_type.as_deref() != Some("application/json")
        {
            verdict = Err(format!(
                "Content-Type must be application/json, got {content_type:?}"
            ));
        }
        // The file marks configuration calls "Pre-boot only".
        if verdict.is_ok() && started.load(Ordering::SeqCst) && spec.pre_boot_only(&method, &path) {
            verdict =
                Err("The requested operation is not supported after starting the microVM.".into());
        }
        if behaviour.crash_on.as_deref() == Some(path.as_str()) {
            kill_and_wait_for_zombie(pid_file)?;
            requests.lock().unwrap().push(Recorded {
                method,
                path,
                body: serde_json::from_slice(&body).ok(),
                status: 0,
                fault: None,
            });
            return Ok(Flow::Crashed);
        }
        if verdict.is_ok() {
            if let Some((fail_path, message)) = &behaviour.fail {
                if *fail_path == path {
                    verdict = Err(message.clone());
                }
            }
        }
        let starting = method == "PUT"
            && path == "/actions"
            && serde_json::from_slice::<Value>(&body)
                .is_ok_and(|b| b["action_type"] == "InstanceStart");
        if verdict.is_ok() && starting && started.swap(true, Ordering::SeqCst) {
            verdict = Err("The microVM is already running.".into());
        }
        let (status, fault) = match verdict {
            Ok(()) => (
                spec.success_status(&method, &path)
                    .ok_or_else(|| format!("spec: {method} {path} declares no 2xx answer"))?,
                None,
            ),
            Err(fault) => (400, Some(fault)),
        };
        let mut response =
            format!("HTTP/1.1 {status} \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n");
        if let Some(fault) = &fault {
            let error = serde_json::json!({ "fault_message": fault });
            // The answer must follow the file as well.
            if let Some(schema) = spec.response_schema(&method, &path, 400) {
                spec.validate(schema, &error, "400 body", false)?;
            }
            let text = error.to_string();
            response.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
                text.len()
            ));
        } else {
            response.push_str("\r\n");
        }
        requests.lock().unwrap().push(Recorded {
            method: method.clone(),
            path: path.clone(),
            body: serde_json::from_slice(&body).ok(),
            status,
            fault,
        });
        stream
            .write_all(response.as_bytes())
            .map_err(|e| format!("answering: {e}"))?;
    }
}

/// SIGKILLs the fake and waits until it is a zombie, so its parent sees
/// it exited by the time the connection drops.
fn kill_and_wait_for_zombie(pid_file: &Path) -> Result<(), String> {
    let pid = std::fs::read_to_string(pid_file).map_err(|e| format!("reading the pid: {e}"))?;
    let pid = pid.trim();
    let status = std::process::Command::new("kill")
        .args(["-KILL", pid])
        .status()
        .map_err(|e| format!("running kill: {e}"))?;
    if !status.success() {
        return Err(format!("kill -KILL {pid} failed"));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rfind(')').and_then(|i| stat.get(i + 2..i + 3));
        if stat.is_empty() || state == Some("Z") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{pid} did not die"));
        }
        thread::sleep(Duration::from_millis(1));
    }
}
