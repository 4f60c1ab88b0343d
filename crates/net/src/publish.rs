//! Published ports, host side: listens on each `hostIp:hostPort` and
//! carries every connection over the VM's vsock to the guest init, which
//! connects it to the guest's `127.0.0.1:guestPort`
//! ([`vmkit_channel::forward`]). It needs no NIC, so it also serves VMs
//! with `--network none`; `microagent-net --publish FILE` runs it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vmkit_channel::forward::{dial_forward, relay};

pub use vmkit_protocol::PublishedPort;

/// Open forwarded connections per VM; more are closed at once, so a flood
/// of host clients cannot exhaust threads here or in the guest.
pub const MAX_CONNECTIONS: usize = 256;
/// How long reaching the guest service may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// What the forwarder of one VM serves (`microagent-net --publish FILE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublishConfig {
    /// The VM's hybrid-vsock Unix socket (`CONNECT <port>` goes there).
    pub vsock_path: PathBuf,
    /// The guest init's forward port.
    #[serde(default = "default_forward_port")]
    pub forward_port: u32,
    /// The published ports.
    pub ports: Vec<PublishedPort>,
}

fn default_forward_port() -> u32 {
    vmkit_channel::DEFAULT_FORWARD_PORT
}

/// Why the forwarder could not start.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The config file is unreadable or invalid.
    #[error("publish config {path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A host port could not be listened on (in use, or not an address of
    /// this host).
    #[error("--publish {port}: cannot listen on {addr}: {source}")]
    Listen {
        /// The published port, as the user wrote it.
        port: PublishedPort,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

impl PublishConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<PublishConfig, PublishError> {
        let bad = |message: String| PublishError::Config {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let config: PublishConfig = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        vmkit_protocol::validate_published(&config.ports).map_err(|e| bad(e.message))?;
        Ok(config)
    }
}

/// Checks that every host address can be listened on now, without keeping
/// it: run before anything is created, so `--publish` on a port in use is
/// refused up front.
pub fn check_available(ports: &[PublishedPort]) -> Result<(), PublishError> {
    bind_all(ports).map(drop)
}

fn bind_all(ports: &[PublishedPort]) -> Result<Vec<(TcpListener, PublishedPort)>, PublishError> {
    ports
        .iter()
        .map(|p| {
            let addr = SocketAddr::new(p.host_ip, p.host_port);
            TcpListener::bind(addr)
                .map(|l| (l, *p))
                .map_err(|source| PublishError::Listen {
                    port: *p,
                    addr,
                    source,
                })
        })
        .collect()
}

/// The bound listeners of one VM.
pub struct Publisher {
    listeners: Vec<(TcpListener, PublishedPort)>,
    vsock_path: PathBuf,
    forward_port: u32,
    active: Arc<AtomicUsize>,
}

impl Publisher {
    /// Listens on every published host address (all or none).
    pub fn bind(config: &PublishConfig) -> Result<Publisher, PublishError> {
        Ok(Publisher {
            listeners: bind_all(&config.ports)?,
            vsock_path: config.vsock_path.clone(),
            forward_port: config.forward_port,
            active: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The addresses listened on (port 0 in a config becomes the real one).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// Serves every listener on its own thread, for the life of the process.
    pub fn spawn(self) {
        let vsock = Arc::new(self.vsock_path);
        for (listener, port) in self.listeners {
            let (vsock, active, forward_port) =
                (vsock.clone(), self.active.clone(), self.forward_port);
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                        active.fetch_sub(1, Ordering::SeqCst);
                        continue; // dropped: closed at once
                    }
                    let (vsock, active) = (vsock.clone(), active.clone());
                    std::thread::spawn(move || {
                        forward(client, &vsock, forward_port, port.guest_port);
                        active.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            });
        }
    }
}

/// One connection: reach the guest service, then relay. A guest that
/// cannot be reached (nothing listens, VM gone) closes the client.
fn forward(client: TcpStream, vsock: &Path, forward_port: u32, guest_port: u16) {
    let _ = client.set_nodelay(true);
    match dial_forward(vsock, forward_port, guest_port, DIAL_TIMEOUT) {
        Ok(guest) => {
            relay(client, guest);
        }
        Err(e) => eprintln!("microagent-net: published port {guest_port}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::IpAddr;
    use std::os::unix::net::UnixListener;
    use vmkit_channel::{read_message, write_message, Message};

    fn port(host_port: u16, guest_port: u16) -> PublishedPort {
        PublishedPort {
            host_ip: IpAddr::from([127, 0, 0, 1]),
            host_port,
            guest_port,
        }
    }

    /// A stand-in for the VMM's hybrid vsock and the guest init's forward
    /// service, speaking their real handshake and frames.
    fn fake_guest(dir: &Path) -> PathBuf {
        let path = dir.join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while b[0] != b'\n' {
                    conn.read_exact(&mut b).unwrap();
                    line.push(b[0]);
                }
                assert_eq!(line, b"CONNECT 10002\n");
                conn.write_all(b"OK 10002\n").unwrap();
                match read_message(&mut conn).unwrap() {
                    Some(Message::Forward { port: 80 }) => {
                        write_message(&mut conn, &Message::Ack).unwrap();
                        let mut req = [0u8; 5];
                        conn.read_exact(&mut req).unwrap();
                        conn.write_all(b"hello from 80").unwrap();
                    }
                    _ => write_message(
                        &mut conn,
                        &Message::Error {
                            message: "not published".into(),
                        },
                    )
                    .unwrap(),
                }
            }
        });
        path
    }

    #[test]
    fn a_host_client_reaches_the_guest_port() {
        let dir = tempfile::tempdir().unwrap();
        let config = PublishConfig {
            vsock_path: fake_guest(dir.path()),
            forward_port: 10002,
            ports: vec![port(0, 80), port(0, 81)],
        };
        let publisher = Publisher::bind(&config).unwrap();
        let addrs = publisher.local_addrs();
        publisher.spawn();
        let mut c = TcpStream::connect(addrs[0]).unwrap();
        c.write_all(b"hello").unwrap();
        let mut answer = [0u8; 13];
        c.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"hello from 80");
        // A refused forward closes the client without data.
        let mut c = TcpStream::connect(addrs[1]).unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }

    #[test]
    fn a_port_in_use_is_named() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = port(taken.local_addr().unwrap().port(), 80);
        let err = check_available(&[p]).unwrap_err().to_string();
        assert!(err.contains(&format!("--publish {p}")), "{err}");
        drop(taken);
        check_available(&[p]).unwrap();
    }
}
