//! `microagent-net [--config FILE] [--publish FILE]`: the network helper
//! of one VM.
//!
//! It creates the frontend (listens on the stream socket, binds the datagram
//! socket, or opens the TAP device) and the published ports' listeners,
//! prints exactly `ready\n` on stdout, then serves the VM's network until
//! the VMM closes the link or SIGTERM arrives. With `--publish` only (a VM
//! with `--network none`), it forwards published ports until SIGTERM.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vmkit_net::frontend::Listener;
use vmkit_net::{NetConfig, PublishConfig, Publisher};

/// The host-side network stack of one microagent VM.
///
/// Reads a vmkit_net::NetConfig JSON file, creates the frontend it names
/// (a Unix stream socket that QEMU's `-netdev stream,server=off` connects
/// to, or a TAP device for Firecracker), writes `ready` on a line of its own
/// to stdout once the VMM can connect, and then answers ARP and DNS,
/// terminates the guest's TCP and UDP, and opens host sockets only for
/// flows the egress policy allows, logging each decision to the audit file.
///
/// With --publish it also listens on the published host ports and carries
/// each connection over the VM's vsock to the guest init; with --publish
/// alone (no NIC) it does only that, until SIGTERM.
///
/// It exits 0 when the VMM closes the link or on SIGTERM (writing the audit
/// records of open flows first), and 125 with a message on stderr when the
/// configuration or the frontend is unusable. Whether it dies with its
/// parent is the spawner's choice (PR_SET_PDEATHSIG survives exec): a
/// one-shot run's helper does, a kept workspace's must not.
#[derive(Debug, Parser)]
#[command(name = "microagent-net", version, verbatim_doc_comment)]
struct Args {
    /// The NetConfig JSON file.
    #[arg(long, value_name = "FILE", required_unless_present = "publish")]
    config: Option<PathBuf>,

    /// A vmkit_net::PublishConfig JSON file: published ports to forward.
    #[arg(long, value_name = "FILE")]
    publish: Option<PathBuf>,

    /// The stream frontend's socket, already bound and listening, inherited
    /// as this descriptor (the spawner binds it so the VMM can connect
    /// before this helper has started; the connection waits in the backlog).
    #[arg(long, value_name = "FD", value_parser = clap::value_parser!(i32).range(3..))]
    listen_fd: Option<i32>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("microagent-net: {e:#}");
            ExitCode::from(125)
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let (stop_rx, stop_tx) = UnixStream::pair().context("signal pipe")?;
    stop_tx.set_nonblocking(true)?;
    signal_hook::low_level::pipe::register(signal_hook::consts::SIGTERM, stop_tx.try_clone()?)
        .context("SIGTERM handler")?;
    signal_hook::low_level::pipe::register(signal_hook::consts::SIGINT, stop_tx)
        .context("SIGINT handler")?;

    let publisher = match &args.publish {
        Some(path) => Some(Publisher::bind(&PublishConfig::load(path)?)?),
        None => None,
    };
    let network = match &args.config {
        Some(path) => {
            let config = NetConfig::load(path)?;
            let listener = match args.listen_fd {
                Some(fd) => Listener::inherited_stream(fd, &config.frontend),
                None => Listener::bind(&config.frontend),
            }
            .context("cannot create the frontend")?;
            Some((config, listener))
        }
        None => None,
    };
    if let Some(publisher) = publisher {
        publisher.spawn();
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(b"ready\n").context("stdout")?;
    stdout.flush().context("stdout")?;
    drop(stdout);

    let Some((config, listener)) = network else {
        // Published ports only: serve until SIGTERM.
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(&stop_rx),
            PollFlags::POLLIN,
        )];
        while let Err(nix::errno::Errno::EINTR) = poll(&mut fds, PollTimeout::NONE) {}
        return Ok(());
    };

    // Wait for the VMM, or for SIGTERM before it came.
    let mut fds = [
        PollFd::new(listener.as_fd(), PollFlags::POLLIN),
        PollFd::new(std::os::fd::AsFd::as_fd(&stop_rx), PollFlags::POLLIN),
    ];
    loop {
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("poll"),
        }
    }
    if fds[1].any().unwrap_or(false) {
        return Ok(());
    }
    let link = listener
        .accept()
        .context("accepting the VMM's connection")?;
    vmkit_net::serve(&config, link, &stop_rx)?;
    Ok(())
}
