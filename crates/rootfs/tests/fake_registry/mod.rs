//! A hostile registry on loopback: a bare HTTP/1.1 server whose every
//! answer the test scripts, so it can do what a real registry never would
//! (endless bodies, a byte at a time, realms elsewhere).

#![allow(dead_code)] // Each test file uses a different part.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the server answers one request with.
pub enum Answer {
    /// A complete response.
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Headers, then `chunk` over and over until the client hangs up.
    Endless {
        status: u16,
        headers: Vec<(String, String)>,
        chunk: Vec<u8>,
    },
    /// Headers, then one byte every `every`, forever.
    Drip { every: Duration },
}

impl Answer {
    pub fn json(status: u16, body: &[u8]) -> Answer {
        Answer::Full {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.to_vec(),
        }
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub authorization: Option<String>,
}

pub struct FakeRegistry {
    pub addr: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeRegistry {
    /// Serves on `ip` (a loopback address), answering with `route`.
    pub fn start(
        ip: &str,
        route: impl Fn(&Seen) -> Answer + Send + Sync + 'static,
    ) -> FakeRegistry {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let route = Arc::new(route);
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (route, log) = (route.clone(), log.clone());
                std::thread::spawn(move || serve(stream, &*route, &log));
            }
        });
        FakeRegistry { addr, seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, route: &dyn Fn(&Seen) -> Answer, log: &Mutex<Vec<Seen>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let mut authorization = None;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("authorization") {
                    authorization = Some(v.trim().to_owned());
                }
            }
        }
        let seen = Seen {
            path,
            authorization,
        };
        log.lock().unwrap().push(seen.clone());
        let head = |status: u16, headers: &[(String, String)], length: Option<usize>| {
            let mut s = format!("HTTP/1.1 {status} X\r\n");
            for (k, v) in headers {
                s.push_str(&format!("{k}: {v}\r\n"));
            }
            match length {
                Some(n) => s.push_str(&format!("Content-Length: {n}\r\n\r\n")),
                None => s.push_str("Connection: close\r\n\r\n"),
            }
            s
        };
        match route(&seen) {
            Answer::Full {
                status,
                headers,
                body,
            } => {
                let h = head(status, &headers, Some(body.len()));
                if out
                    .write_all(h.as_bytes())
                    .and_then(|_| out.write_all(&body))
                    .is_err()
                {
                    return;
                }
            }
            Answer::Endless {
                status,
                headers,
                chunk,
            } => {
                let h = head(status, &headers, None);
                let _ = out.write_all(h.as_bytes());
                while out.write_all(&chunk).is_ok() {}
                return;
            }
            Answer::Drip { every } => {
                let _ = out.write_all(head(200, &[], None).as_bytes());
                while out.write_all(b"{").is_ok() {
                    std::thread::sleep(every);
                }
                return;
            }
        }
    }
}

/// This process's peak RSS in KiB.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap()
}
