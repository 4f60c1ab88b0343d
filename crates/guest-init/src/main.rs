//! microagent's guest init (PID 1). Built static so it runs in any image.
//! See the library docs for what it does; this file is the boot sequence.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmkit_channel::{write_message, BootSpec, Message, Mode, Ready, PROTOCOL_VERSION};
use vmkit_guest_init::command::DEFAULT_KILL_GRACE;
use vmkit_guest_init::forward::Forwarder;
use vmkit_guest_init::freeze::{Freezer, KernelFreeze};
use vmkit_guest_init::image::{Defaults, ImageConfig, IMAGE_CONFIG_PATH};
use vmkit_guest_init::reaper::Reaper;
use vmkit_guest_init::service::{run_workload, Connection, Service};
use vmkit_guest_init::transport::{Stream, Transport};
use vmkit_guest_init::{log, network, stage, system};

/// How long to keep trying to reach the host's control port: the host binds
/// it before starting the VM, so this only covers a slow VMM.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

fn main() {
    if std::process::id() != 1 {
        eprintln!("microagent-init: must run as PID 1 inside a microagent VM");
        std::process::exit(2);
    }
    let mut disks = Vec::new();
    // A panic here must not end PID 1 (the kernel would panic): power off cleanly.
    if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| boot(&mut disks))) {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        log(&format!("internal error: {msg}"));
    }
    system::poweroff(&disks);
}

fn boot(mounted: &mut Vec<vmkit_channel::DiskMount>) {
    let entered = system::uptime_us();
    system::ensure_console();
    system::mount_basics();
    system::ensure_console();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let debug = cmdline
        .split_ascii_whitespace()
        .any(|a| a == "microagent.debug");
    vmkit_guest_init::set_debug(debug);
    vmkit_guest_init::stage_at(entered, "init entered");
    stage("filesystems mounted");
    Reaper::global();
    if let Err(e) = system::loopback_up() {
        log(&format!("loopback: {e}"));
    }
    let mut errors = Vec::new();
    let spec = system::load_boot_spec().unwrap_or_else(|e| {
        errors.push(e);
        BootSpec::default()
    });
    stage("boot spec read");
    if let Some(h) = &spec.hostname {
        system::set_hostname(h);
    }
    if let Some(net) = &spec.network {
        if let Err(e) = network::configure(net) {
            errors.push(e);
        }
        stage("network configured");
    }
    if errors.is_empty() {
        match system::mount_disks(&spec.disks) {
            Ok(()) => *mounted = spec.disks.clone(),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        if let Err(e) = vmkit_guest_init::volumes::mount_volumes(&spec.volumes) {
            errors.push(e);
        }
    }
    let image = ImageConfig::load(IMAGE_CONFIG_PATH.as_ref()).unwrap_or_else(|e| {
        errors.push(format!("image config: {e}"));
        ImageConfig::default()
    });
    if let Err(e) = system::place_files(&spec.files) {
        errors.push(e);
    }
    stage("disks mounted, files placed");
    let defaults = Defaults::new(&image, &spec.env, spec.cwd.as_deref(), spec.user.as_deref());

    let transport = match Transport::from_cmdline(&cmdline) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            log(&format!("host channel: {e}"));
            return;
        }
    };
    stage("host channel up");
    let (shutdown_tx, shutdown_rx) = mpsc::channel();
    // The exec service listens before `ready` goes out, so the host may
    // connect the moment it reads it.
    if matches!(spec.mode, Mode::Workspace) && errors.is_empty() {
        match transport.listen(spec.exec_port) {
            Ok(listener) => {
                // The root and every read-write disk: what a disk
                // snapshot must find consistent.
                let freezable = std::iter::once("/".to_string())
                    .chain(
                        spec.disks
                            .iter()
                            .filter(|d| !d.read_only)
                            .map(|d| d.mountpoint.clone()),
                    )
                    .collect();
                let freezer = Freezer::new(Box::new(KernelFreeze), freezable);
                let service = Arc::new(
                    Service::new(defaults.clone(), Some(shutdown_tx.clone())).with_freezer(freezer),
                );
                std::thread::spawn(move || service.serve(|| listener.accept()));
            }
            Err(e) => errors.push(format!(
                "exec service on vsock port {}: {e}",
                spec.exec_port
            )),
        }
    }

    if let Some(publish) = &spec.publish {
        match transport.listen(publish.port) {
            Ok(listener) => {
                let forwarder = Forwarder::new(publish.guest_ports.clone());
                std::thread::spawn(move || forwarder.serve(|| listener.accept()));
            }
            Err(e) => errors.push(format!(
                "published ports on vsock port {}: {e}",
                publish.port
            )),
        }
    }

    let mut control = match connect_host(&transport, spec.control_port) {
        Ok(c) => c,
        Err(e) => {
            log(&format!(
                "cannot reach the host on vsock port {}: {e}",
                spec.control_port
            ));
            for e in &errors {
                log(e);
            }
            return;
        }
    };
    stage("connected to the host");
    if !errors.is_empty() {
        let message = errors.join("; ");
        log(&message);
        let _ = write_message(&mut control, &Message::Error { message });
        // Give the host a moment to read it before the power-off.
        let _ = control.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = vmkit_channel::read_message(&mut control);
        return;
    }
    match spec.mode {
        Mode::Run(run) => {
            let flush = || system::flush_disks(&spec.disks);
            if let Err(e) = run_workload(control, &run, &defaults, DEFAULT_KILL_GRACE, &flush) {
                log(&format!("reporting the run to the host: {e}"));
            }
        }
        Mode::Workspace => {
            let ready = Message::Ready(Ready {
                protocol_version: PROTOCOL_VERSION,
                exec_port: spec.exec_port,
                uptime_ms: system::uptime_ms(),
            });
            if let Err(e) = write_message(&mut control, &ready) {
                log(&format!("sending ready: {e}"));
            }
            // The host may also ask for shutdown on the control connection.
            let shutdown = shutdown_tx.clone();
            std::thread::spawn(move || control_loop(control, shutdown));
            // Restored from a snapshot under a new host relay: the old
            // connections are gone; set the clock and report ready anew.
            let t = transport.clone();
            let control_port = spec.control_port;
            transport.on_restore(move |host_ns| {
                system::set_clock_ns(host_ns);
                // A fork is another workspace: its own hostname.
                match system::reload_boot_spec() {
                    Ok(spec) => {
                        if let Some(h) = &spec.hostname {
                            system::set_hostname(h);
                        }
                    }
                    Err(e) => log(&format!("rereading the boot spec after restore: {e}")),
                }
                let t = t.clone();
                let shutdown = shutdown_tx.clone();
                std::thread::spawn(move || match connect_host(&t, control_port) {
                    Ok(mut control) => {
                        let ready = Message::Ready(Ready {
                            protocol_version: PROTOCOL_VERSION,
                            exec_port: spec.exec_port,
                            uptime_ms: system::uptime_ms(),
                        });
                        if write_message(&mut control, &ready).is_ok() {
                            control_loop(control, shutdown);
                        }
                    }
                    Err(e) => log(&format!("reconnecting after restore: {e}")),
                });
            });
            let _ = shutdown_rx.recv();
        }
    }
}

fn control_loop(mut control: Stream, shutdown: mpsc::Sender<()>) {
    loop {
        match vmkit_channel::read_message(&mut control) {
            Ok(Some(Message::Shutdown)) => {
                let _ = write_message(&mut control, &Message::Ack);
                let _ = shutdown.send(());
                return;
            }
            Ok(Some(Message::Ping)) => {
                let _ = write_message(&mut control, &Message::Pong);
            }
            Ok(Some(_)) => {}
            // Closed or garbage: the host went away; the exec port still works.
            Ok(None) | Err(_) => return,
        }
    }
}

fn connect_host(transport: &Transport, port: u32) -> std::io::Result<Stream> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        match transport.connect_host(port) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
