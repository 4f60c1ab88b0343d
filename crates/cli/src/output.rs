//! How results reach the user: plain streams, or JSON lines with `--json`.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use serde_json::json;
use vmkit::protocol::{Event, RunResult};
use vmkit::Observer;

use crate::exit::Source;

/// Prints events as JSON lines (with `--json`) as they happen.
pub fn event_observer(json: bool) -> Option<Observer> {
    json.then(|| {
        let lock = Arc::new(Mutex::new(()));
        Arc::new(move |e: &Event| {
            let _guard = lock.lock();
            let mut line = serde_json::to_value(e).expect("events serialize");
            line["type"] = "event".into();
            println!("{line}");
        }) as Observer
    })
}

/// A sink that turns guest output into `{"type":"stdout","data":...}` lines.
pub struct JsonStream {
    kind: &'static str,
}

impl JsonStream {
    pub fn stdout() -> Self {
        JsonStream { kind: "stdout" }
    }
    pub fn stderr() -> Self {
        JsonStream { kind: "stderr" }
    }
}

impl Write for JsonStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let line = json!({"type": self.kind, "data": String::from_utf8_lossy(buf)});
        let mut out = io::stdout().lock();
        writeln!(out, "{line}")?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        io::stdout().flush()
    }
}

/// Prints a command's outcome as the final JSON line; `source` says whether
/// the exit code is the guest's or microagent's own.
pub fn print_result(
    name: &str,
    result: &RunResult,
    (exit_code, source): (u8, Source),
    extra: serde_json::Value,
) {
    let mut line = json!({
        "type": "result",
        "name": name,
        "exitCode": exit_code,
        "exitCodeSource": source.as_str(),
        "result": result,
    });
    if let (Some(obj), Some(extra)) = (line.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            obj.insert(k.clone(), v.clone());
        }
    }
    println!("{line}");
}
