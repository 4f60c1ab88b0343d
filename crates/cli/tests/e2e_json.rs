//! Every `--json` line the CLI prints follows docs/json-output.schema.json
//! (the harness checks each line it parses), and guest output survives
//! `--json` byte for byte: binary output, and characters split across chunks.

mod common;

use common::{describe, json_line, json_lines, stream_bytes as stream, Env};

#[test]
fn workspace_commands_print_schema_lines_and_exec_output_is_faithful() {
    let env = Env::new();
    let kernel = env.kernel.to_string_lossy().into_owned();
    let created = json_lines(&env.ok(&[
        "--json", "create", "js", "--image", &env.image, "--kernel", &kernel,
    ]));
    assert_eq!(created.last().unwrap()["state"], "prepared");
    let started = json_lines(&env.ok(&["--json", "start", "js"]));
    assert_eq!(started.last().unwrap()["state"], "running");

    // A euro sign written in two pieces, then bytes that are not UTF-8.
    let script = r"printf 'a\342'; sleep 0.3; printf '\202\254b\n'; printf '\377\000\001' >&2";
    let out = env
        .cmd()
        .args(["--json", "exec", "js", "--", "/bin/sh", "-c", script])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let lines = json_lines(&out);
    assert_eq!(stream(&lines, "stdout"), "a€b\n".as_bytes(), "{lines:?}");
    assert_eq!(stream(&lines, "stderr"), b"\xff\x00\x01", "{lines:?}");
    assert!(
        lines
            .iter()
            .filter(|l| l["type"] == "stdout")
            .all(|l| l.get("encoding").is_none()),
        "valid UTF-8 stays text even when split: {lines:?}"
    );
    let result = lines.last().unwrap();
    assert_eq!(result["type"], "result");
    assert_eq!(result["exitCode"], 0);

    let listed = json_lines(&env.ok(&["--json", "list"]));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["type"], "workspace");
    assert_eq!(
        json_line(&env.ok(&["--json", "status", "js"]))["state"],
        "running"
    );

    // microagent's own failure: one error line, exit 125.
    let out = env
        .cmd()
        .args(["--json", "status", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    let error = json_line(&out);
    assert!(error["error"].as_str().unwrap().contains("nope"), "{error}");

    env.ok(&["--json", "halt", "js"]);
    assert!(json_lines(&env.ok(&["--json", "events", "js"]))
        .iter()
        .all(|e| e["type"] == "event"));
    let deleted = json_line(&env.ok(&["--json", "delete", "js"]));
    assert_eq!(deleted["type"], "deleted");
    assert_eq!(
        json_line(&env.ok(&["--json", "gc"]))["cleaned"],
        serde_json::json!([])
    );
}

#[test]
fn host_commands_print_schema_lines() {
    let env = Env::new();
    let version = json_line(&env.ok(&["--json", "version"]));
    assert_eq!(version["jsonOutputVersion"], 1);
    let doctor = json_line(&env.cmd().args(["--json", "doctor"]).output().unwrap());
    assert_eq!(doctor["type"], "doctor");
    env.ok(&[
        "--json",
        "kernel",
        "install",
        "--from",
        &env.kernel.to_string_lossy(),
    ]);
    let kernels = json_lines(&env.ok(&["--json", "kernel", "list"]));
    assert_eq!(kernels.len(), 1);
    assert_eq!(
        json_line(&env.ok(&["--json", "kernel", "check"]))["ok"],
        true
    );
    assert!(json_lines(&env.ok(&["--json", "image", "ls"])).is_empty());
}

#[test]
fn doctor_says_whether_the_firecracker_nic_can_be_made_here() {
    let env = Env::new();
    let tap_check = |out: std::process::Output| {
        let doctor = json_line(&out);
        doctor["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "tap")
            .cloned()
            .expect("a tap check")
    };
    // Root (CI runs as root): the TAP, its packet socket and its chain.
    let ok = tap_check(env.cmd().args(["--json", "doctor"]).output().unwrap());
    assert_eq!(ok["status"], "ok", "{ok}");
    // Without the two capabilities: a warning naming them, nothing left.
    let mut limited = std::process::Command::new("setpriv");
    limited
        .args(["--bounding-set=-net_admin,-net_raw", "--"])
        .arg(env!("CARGO_BIN_EXE_microagent"))
        .args(["--json", "doctor"])
        .env("MICROAGENT_STATE_DIR", env.state.path());
    let warn = tap_check(limited.output().unwrap());
    assert_eq!(warn["status"], "warn", "{warn}");
    assert!(
        warn["detail"].as_str().unwrap().contains("not permitted"),
        "{warn}"
    );
    assert!(
        warn["remedy"].as_str().unwrap().contains("CAP_NET_RAW"),
        "{warn}"
    );
    let detail = warn["detail"].as_str().unwrap();
    let tried = detail
        .split_whitespace()
        .nth(2)
        .unwrap()
        .trim_end_matches(':');
    assert!(tried.starts_with("madoc"), "{detail}");
    assert!(
        !std::path::Path::new("/sys/class/net").join(tried).exists(),
        "doctor left {tried} behind"
    );
}
