//! The name in a connection's first bytes: the TLS ClientHello's server
//! name (SNI) on 443, the HTTP `Host` header on 80. Peeked, never
//! terminated; every length is checked against what arrived.

use crate::policy::normalise_name;

/// How many first bytes the stack looks at, at most.
pub const MAX_PEEK: usize = 16 << 10;

/// What the first bytes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// Not enough bytes yet to tell.
    Incomplete,
    /// The name (lowercase, validated).
    Name(String),
    /// The bytes carry no usable name (not TLS / not HTTP / no SNI).
    NoName,
}

/// The SNI of a TLS ClientHello at the start of `buf`.
pub fn tls_sni(buf: &[u8]) -> Sniffed {
    // Gather the handshake bytes from consecutive handshake records.
    let mut handshake = Vec::new();
    let mut at = 0;
    loop {
        let Some(header) = buf.get(at..at + 5) else {
            if at == 0 && !buf.is_empty() && buf[0] != 22 {
                return Sniffed::NoName;
            }
            return incomplete(buf);
        };
        if header[0] != 22 || header[1] != 3 {
            return Sniffed::NoName;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > (1 << 14) {
            return Sniffed::NoName;
        }
        let Some(body) = buf.get(at + 5..at + 5 + len) else {
            return incomplete(buf);
        };
        handshake.extend_from_slice(body);
        at += 5 + len;
        if handshake.len() >= 4 {
            if handshake[0] != 1 {
                return Sniffed::NoName;
            }
            let hello_len = (usize::from(handshake[1]) << 16)
                | (usize::from(handshake[2]) << 8)
                | usize::from(handshake[3]);
            if hello_len > MAX_PEEK {
                return Sniffed::NoName;
            }
            if handshake.len() >= 4 + hello_len {
                return client_hello_sni(&handshake[4..4 + hello_len]).unwrap_or(Sniffed::NoName);
            }
        }
    }
}

fn incomplete(buf: &[u8]) -> Sniffed {
    if buf.len() >= MAX_PEEK {
        Sniffed::NoName
    } else {
        Sniffed::Incomplete
    }
}

/// A cursor that refuses to read past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
}

fn client_hello_sni(hello: &[u8]) -> Option<Sniffed> {
    let mut r = Reader(hello);
    r.take(2 + 32)?; // legacy_version, random
    let session = r.u8()?;
    r.take(session)?;
    let suites = r.u16()?;
    r.take(suites)?;
    let compression = r.u8()?;
    r.take(compression)?;
    let ext_len = r.u16()?;
    let mut exts = Reader(r.take(ext_len)?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let len = exts.u16()?;
        let body = exts.take(len)?;
        if kind != 0 {
            continue;
        }
        let mut list = Reader(body);
        let list_len = list.u16()?;
        let mut names = Reader(list.take(list_len)?);
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let len = names.u16()?;
            let name = names.take(len)?;
            if name_type == 0 {
                let text = std::str::from_utf8(name).ok()?;
                return Some(normalise_name(text).map_or(Sniffed::NoName, Sniffed::Name));
            }
        }
        return Some(Sniffed::NoName);
    }
    Some(Sniffed::NoName)
}

/// The `Host` header of an HTTP/1.x request at the start of `buf`.
pub fn http_host(buf: &[u8]) -> Sniffed {
    // A request line starts with a method token: uppercase letters.
    let method_len = buf.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if method_len == buf.len() {
        return if method_len > 16 {
            Sniffed::NoName
        } else {
            incomplete_http(buf)
        };
    }
    if method_len == 0 || buf[method_len] != b' ' {
        return Sniffed::NoName;
    }
    let head_end = match buf.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => end,
        None => return incomplete_http(buf),
    };
    let head = &buf[..head_end];
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if !line[..colon].eq_ignore_ascii_case(b"host") {
            continue;
        }
        let Ok(value) = std::str::from_utf8(&line[colon + 1..]) else {
            return Sniffed::NoName;
        };
        let value = value.trim();
        let host = match value.rsplit_once(':') {
            Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                host
            }
            _ => value,
        };
        return normalise_name(host).map_or(Sniffed::NoName, Sniffed::Name);
    }
    Sniffed::NoName
}

fn incomplete_http(buf: &[u8]) -> Sniffed {
    if buf.len() >= 8192 {
        Sniffed::NoName
    } else {
        Sniffed::Incomplete
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A ClientHello as a TLS 1.3 client sends it, with `sni` (if any) and
    /// padding so that it is as large as modern ones (several segments).
    pub(crate) fn client_hello(sni: Option<&str>, padding: usize) -> Vec<u8> {
        let mut exts = Vec::new();
        if let Some(name) = sni {
            let mut list = vec![0u8];
            list.extend_from_slice(&(name.len() as u16).to_be_bytes());
            list.extend_from_slice(name.as_bytes());
            let mut body = (list.len() as u16).to_be_bytes().to_vec();
            body.extend_from_slice(&list);
            exts.extend_from_slice(&[0, 0]);
            exts.extend_from_slice(&(body.len() as u16).to_be_bytes());
            exts.extend_from_slice(&body);
        }
        exts.extend_from_slice(&[0, 21]);
        exts.extend_from_slice(&(padding as u16).to_be_bytes());
        exts.extend(std::iter::repeat_n(0, padding));
        let mut hello = vec![3, 3];
        hello.extend_from_slice(&[7; 32]);
        hello.push(32);
        hello.extend_from_slice(&[9; 32]);
        hello.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]);
        hello.extend_from_slice(&[1, 0]);
        hello.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        hello.extend_from_slice(&exts);
        let mut handshake = vec![1];
        handshake.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
        handshake.extend_from_slice(&hello);
        let mut record = vec![22, 3, 1];
        record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
        record.extend_from_slice(&handshake);
        record
    }

    #[test]
    fn sni_is_found_in_whole_and_split_hellos() {
        let hello = client_hello(Some("Pkg.Test"), 1500);
        assert_eq!(tls_sni(&hello), Sniffed::Name("pkg.test".into()));
        for cut in [0, 1, 4, 5, 100, hello.len() - 1] {
            assert_eq!(tls_sni(&hello[..cut]), Sniffed::Incomplete, "cut at {cut}");
        }
        assert_eq!(tls_sni(&client_hello(None, 10)), Sniffed::NoName);
        assert_eq!(tls_sni(b"GET / HTTP/1.1\r\n"), Sniffed::NoName);
        // The same hello split over two records.
        let body = &hello[5..];
        let mut two = vec![22, 3, 1, 0, 100];
        two.extend_from_slice(&body[..100]);
        two.extend_from_slice(&[22, 3, 1]);
        two.extend_from_slice(&((body.len() - 100) as u16).to_be_bytes());
        two.extend_from_slice(&body[100..]);
        assert_eq!(tls_sni(&two), Sniffed::Name("pkg.test".into()));
    }

    #[test]
    fn mutated_hellos_never_panic() {
        let hello = client_hello(Some("a.example.com"), 40);
        for at in 0..hello.len() {
            for value in [0u8, 1, 0x7f, 0xff] {
                let mut m = hello.clone();
                m[at] = value;
                let _ = tls_sni(&m);
            }
        }
    }

    #[test]
    fn host_header_is_found() {
        assert_eq!(
            http_host(b"GET /x HTTP/1.1\r\nUser-Agent: a\r\nHOST: Pkg.Test:8080\r\n\r\n"),
            Sniffed::Name("pkg.test".into())
        );
        assert_eq!(
            http_host(b"GET /x HTTP/1.1\r\nHost: a"),
            Sniffed::Incomplete
        );
        assert_eq!(http_host(b"GE"), Sniffed::Incomplete);
        assert_eq!(http_host(b"GET / HTTP/1.0\r\n\r\n"), Sniffed::NoName);
        assert_eq!(http_host(b"\x16\x03\x01"), Sniffed::NoName);
        assert_eq!(
            http_host(b"GET / HTTP/1.1\r\nHost: bad name\r\n\r\n"),
            Sniffed::NoName
        );
    }
}
