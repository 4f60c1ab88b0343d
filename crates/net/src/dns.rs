//! DNS as the stack answers it: the guest's queries parsed (every byte
//! hostile, every length checked), answers built, and the per-VM memory of
//! which addresses were returned for which name (what name rules are pinned
//! to).

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;

use crate::policy::normalise_name;

/// The largest DNS message the stack reads (UDP without EDNS is 512; TCP
/// queries are small too).
pub const MAX_QUERY: usize = 4096;
/// Record type A.
pub const TYPE_A: u16 = 1;
/// Record type AAAA.
pub const TYPE_AAAA: u16 = 28;
/// Class IN.
const CLASS_IN: u16 = 1;

/// Response codes the stack uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Rcode {
    /// The answer (possibly empty).
    NoError = 0,
    /// The query could not be parsed.
    FormErr = 1,
    /// The host resolver failed.
    ServFail = 2,
    /// The name does not exist.
    NxDomain = 3,
    /// Not a standard query.
    NotImp = 4,
    /// The policy refuses this name.
    Refused = 5,
}

/// One parsed question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The message ID, echoed in the answer.
    pub id: u16,
    /// The RD (recursion desired) flag, echoed.
    pub recursion_desired: bool,
    /// The name asked for, lowercase without the trailing dot, or `None`
    /// when it is not a valid host name (answered NXDOMAIN, never resolved).
    pub name: Option<String>,
    /// The question type (A, AAAA, ...).
    pub qtype: u16,
    /// The question section exactly as sent (copied into the answer).
    question: Vec<u8>,
}

/// Why a message is not a query the stack can answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    /// Too short or inconsistent to answer at all: dropped.
    Garbage,
    /// Has a header: answered with this code.
    Answerable { id: u16, rcode: Rcode },
}

/// Parses a query message.
pub fn parse_query(msg: &[u8]) -> Result<Query, QueryError> {
    if msg.len() < 12 || msg.len() > MAX_QUERY {
        return Err(QueryError::Garbage);
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    if flags & 0x8000 != 0 {
        // A response, not a query: never answer it (no reflection loops).
        return Err(QueryError::Garbage);
    }
    let formerr = QueryError::Answerable {
        id,
        rcode: Rcode::FormErr,
    };
    if (flags >> 11) & 0xf != 0 {
        return Err(QueryError::Answerable {
            id,
            rcode: Rcode::NotImp,
        });
    }
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    if qdcount != 1 {
        return Err(formerr);
    }
    let mut at = 12;
    let mut labels: Vec<&[u8]> = Vec::new();
    let mut name_len = 0usize;
    loop {
        let len = *msg.get(at).ok_or(formerr.clone())? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            // Compression pointers (and reserved label types) have no place
            // in a question.
            return Err(formerr);
        }
        let label = msg.get(at..at + len).ok_or(formerr.clone())?;
        name_len += len + 1;
        if name_len > 255 {
            return Err(formerr);
        }
        labels.push(label);
        at += len;
    }
    let tail = msg.get(at..at + 4).ok_or(formerr.clone())?;
    let qtype = u16::from_be_bytes([tail[0], tail[1]]);
    let qclass = u16::from_be_bytes([tail[2], tail[3]]);
    let question = msg[12..at + 4].to_vec();
    let text: Option<String> = labels
        .iter()
        .map(|l| std::str::from_utf8(l).ok())
        .collect::<Option<Vec<_>>>()
        .map(|parts| parts.join("."));
    let name = text
        .filter(|_| qclass == CLASS_IN)
        .and_then(|t| normalise_name(&t).ok());
    Ok(Query {
        id,
        recursion_desired: flags & 0x0100 != 0,
        name,
        qtype,
        question,
    })
}

/// Builds the answer to `query`: `rcode`, and for NOERROR one A record per
/// address (name compressed to the question's).
pub fn build_response(query: &Query, rcode: Rcode, addrs: &[Ipv4Addr], ttl: u32) -> Vec<u8> {
    let answers: &[Ipv4Addr] = if rcode == Rcode::NoError && query.qtype == TYPE_A {
        addrs
    } else {
        &[]
    };
    let mut out = Vec::with_capacity(12 + query.question.len() + answers.len() * 16);
    out.extend_from_slice(&query.id.to_be_bytes());
    let flags: u16 = 0x8000 | 0x0080 | (u16::from(query.recursion_desired) << 8) | rcode as u16;
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&query.question);
    for addr in answers {
        out.extend_from_slice(&[0xc0, 12]);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&addr.octets());
    }
    out
}

/// A bare answer with only a header (for queries that did not parse).
pub fn build_error(id: u16, rcode: Rcode) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(0x8080u16 | rcode as u16).to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    out
}

/// What this VM's DNS told it: address -> names. Bounded: the oldest
/// addresses are forgotten first (a guest that looks up more than
/// `capacity` addresses loses access to the oldest by name, never gains any).
#[derive(Debug)]
pub struct DnsMemory {
    names: HashMap<Ipv4Addr, Vec<String>>,
    order: VecDeque<Ipv4Addr>,
    capacity: usize,
}

/// Names remembered per address at most.
const NAMES_PER_ADDR: usize = 16;

impl DnsMemory {
    /// A memory of at most `capacity` addresses.
    pub fn new(capacity: usize) -> DnsMemory {
        DnsMemory {
            names: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// Remembers that `name` was answered with `addrs`.
    pub fn remember(&mut self, name: &str, addrs: &[Ipv4Addr]) {
        for addr in addrs {
            let names = match self.names.get_mut(addr) {
                Some(names) => names,
                None => {
                    if self.order.len() >= self.capacity {
                        if let Some(old) = self.order.pop_front() {
                            self.names.remove(&old);
                        }
                    }
                    self.order.push_back(*addr);
                    self.names.entry(*addr).or_default()
                }
            };
            if !names.iter().any(|n| n == name) {
                if names.len() >= NAMES_PER_ADDR {
                    names.remove(0);
                }
                names.push(name.to_string());
            }
        }
    }

    /// The names this VM's DNS returned `addr` for.
    pub fn names_for(&self, addr: Ipv4Addr) -> Vec<&str> {
        self.names
            .get(&addr)
            .map(|n| n.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A query as `dig` sends it (with an EDNS OPT record after the
    /// question when `edns`).
    pub(crate) fn query_message(id: u16, name: &str, qtype: u16, edns: bool) -> Vec<u8> {
        let [hi, lo] = id.to_be_bytes();
        let mut q = vec![hi, lo, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        if edns {
            q.extend_from_slice(&[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]);
        }
        q
    }

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        query_message(0x1234, name, qtype, true)
    }

    #[test]
    fn a_query_is_parsed_and_answered() {
        let q = parse_query(&query("Pkg.Test", TYPE_A)).unwrap();
        assert_eq!(q.name.as_deref(), Some("pkg.test"));
        assert_eq!(q.id, 0x1234);
        let addrs = [
            Ipv4Addr::new(203, 0, 113, 10),
            Ipv4Addr::new(203, 0, 113, 11),
        ];
        let r = build_response(&q, Rcode::NoError, &addrs, 60);
        assert_eq!(&r[..2], &[0x12, 0x34]);
        assert_eq!(r[3] & 0xf, 0);
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 2);
        assert_eq!(&r[r.len() - 4..], &[203, 0, 113, 11]);
        let aaaa = parse_query(&query("pkg.test", TYPE_AAAA)).unwrap();
        let r = build_response(&aaaa, Rcode::NoError, &addrs, 60);
        assert_eq!(
            u16::from_be_bytes([r[6], r[7]]),
            0,
            "no A records in an AAAA answer"
        );
    }

    #[test]
    fn hostile_queries_are_refused_without_panic() {
        assert_eq!(parse_query(&[0; 5]), Err(QueryError::Garbage));
        let mut response = query("a.b", TYPE_A);
        response[2] |= 0x80;
        assert_eq!(parse_query(&response), Err(QueryError::Garbage));
        let mut pointer = query("a.b", TYPE_A);
        pointer[12] = 0xc0;
        assert!(matches!(
            parse_query(&pointer),
            Err(QueryError::Answerable {
                rcode: Rcode::FormErr,
                ..
            })
        ));
        let weird = parse_query(&query("a b.c", TYPE_A)).unwrap();
        assert_eq!(weird.name, None);
        let full = query("abc.def", TYPE_A);
        for cut in 0..full.len() {
            let _ = parse_query(&full[..cut]);
        }
        for byte in 0..full.len() {
            for value in [0u8, 1, 63, 64, 0xc0, 0xff] {
                let mut m = full.clone();
                m[byte] = value;
                if let Ok(q) = parse_query(&m) {
                    let _ = build_response(&q, Rcode::NoError, &[Ipv4Addr::LOCALHOST], 1);
                }
            }
        }
    }

    #[test]
    fn memory_is_bounded_and_maps_addresses_to_names() {
        let mut memory = DnsMemory::new(2);
        let a = Ipv4Addr::new(203, 0, 113, 10);
        memory.remember("pkg.test", &[a]);
        memory.remember("other.test", &[a]);
        assert_eq!(memory.names_for(a), vec!["pkg.test", "other.test"]);
        memory.remember(
            "x.test",
            &[
                Ipv4Addr::new(203, 0, 113, 11),
                Ipv4Addr::new(203, 0, 113, 12),
            ],
        );
        assert!(memory.names_for(a).is_empty(), "oldest address forgotten");
        assert_eq!(
            memory.names_for(Ipv4Addr::new(203, 0, 113, 12)),
            vec!["x.test"]
        );
    }
}
