//! The host-side userspace network stack of one VM.
//!
//! The guest's virtio-net frames arrive over a [`frontend`] (QEMU's
//! `-netdev stream` Unix socket, a packet socket on the TAP device that
//! Firecracker owns ([`tap`]), or a Unix
//! datagram socket for Apple VF's file-handle attachment). A
//! [smoltcp](https://docs.rs/smoltcp) interface answers ARP and ICMP echo as
//! the gateway and terminates the guest's TCP; the stack itself answers DNS
//! (through the host's resolver, `/etc/hosts` included, remembering which
//! addresses it gave this VM for which name) and relays UDP. A host socket
//! is opened only for a flow the egress [`policy`] allows, and every decision
//! is one line of the [`audit`] log (`egress.jsonl`).
//!
//! The stack is a state machine driven by one poll loop ([`serve`]): host
//! sockets, the link and the resolver's wake-up pipe in one `poll(2)`,
//! sleeping until something is ready or smoltcp's next timer. Its state is
//! bounded: at most `limits.maxConnections` flows (each with two 256 KiB
//! buffers, touched only as used), 64 DNS lookups in flight, 8192
//! remembered addresses. The policy sits outside the stack and is plain
//! data in, verdict out:
//!
//! ```
//! use vmkit_net::policy::{Egress, Check, Peeked, Policy, Rule, Mode};
//! use vmkit_net::audit::Proto;
//!
//! let policy = Policy { mode: Mode::Allowlist, allow: vec![Rule::parse("pkg.test").unwrap()], ..Policy::default() };
//! let egress = Egress::new(policy, "10.0.2.2".parse().unwrap(), vec![], vec![]);
//! // An address no DNS answer of this VM named is refused in allowlist mode.
//! let Check::Done(v) = egress.check_flow(Proto::Tcp, "203.0.113.10:22".parse().unwrap(), &[], Peeked::NotYet) else { panic!() };
//! assert!(!v.allow);
//! // The same address after this VM's DNS returned it for pkg.test:
//! let Check::Done(v) = egress.check_flow(Proto::Tcp, "203.0.113.10:22".parse().unwrap(), &["pkg.test"], Peeked::NotYet) else { panic!() };
//! assert!(v.allow);
//! ```

pub mod audit;
pub mod config;
pub mod dns;
pub mod frontend;
pub mod policy;
pub mod publish;
pub mod resolver;
mod serve;
pub mod sniff;
pub mod stack;
pub mod tap;

pub use config::{ConfigError, Frontend, MacAddr, NetConfig};
pub use policy::{Limits, Mode, Policy, Rule, RuleError};
pub use publish::{PublishConfig, PublishedPort, Publisher};
pub use serve::{run, serve, NetError};
