//! The guest's network, end to end: real VMs (QEMU TCG) behind the real
//! `microagent-net` stack, reaching real servers on the host's loopback
//! and on a test host in a network namespace (vmkit_testkit::net). Every
//! address these tests touch, including those that must be refused, is
//! loopback or routed into that namespace.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::{describe, json_lines, processes_mentioning, Env};
use serde_json::Value;
use vmkit_testkit::net::{
    test_host, LoopbackServer, FILE_BODY, METADATA_IP, OTHER_NAME, PKG_NAME, PRIVATE_IP,
    PRIVATE_NAME, REBIND_NAME, TEST_HOST_IP, WHEEL_PACKAGE, WHEEL_VALUE,
};

/// The workspace's audit records.
fn egress(env: &Env, name: &str) -> Vec<Value> {
    json_lines(&env.ok(&["egress", "--json", name]))
}

fn denied(records: &[Value], dst: &str) -> bool {
    records
        .iter()
        .any(|r| r["decision"] == "deny" && r["dst"] == dst)
}

fn allowed(records: &[Value], dst: &str) -> bool {
    records
        .iter()
        .any(|r| r["decision"] == "allow" && r["dst"] == dst)
}

/// Runs `script` in a kept busybox run called `name`; returns stdout.
fn kept_run(env: &Env, name: &str, flags: &[&str], script: &str) -> String {
    let mut args = vec!["--name", name, "--keep"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--exec", script]);
    let out = env.run(&args);
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_host_rule_reaches_a_loopback_service_and_without_it_the_deny_is_audited() {
    let host = test_host();
    let env = Env::new();
    let server = LoopbackServer::start(&host.www);
    let url = format!("http://host.microagent.internal:{}/x", server.port);
    let rule = format!("host:{}", server.port);
    let out = env.run(&["--allow", &rule, "--exec", &format!("wget -qO- {url}")]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), FILE_BODY);

    let stdout = kept_run(&env, "nohost", &[], &format!("wget -qO- {url}; echo rc=$?"));
    assert!(stdout.contains("rc=1"), "{stdout}");
    let records = egress(&env, "nohost");
    assert!(
        denied(&records, &format!("10.0.2.2:{}", server.port)),
        "{records:?}"
    );
    // The human form names the decision too.
    let text = env.ok(&["egress", "nohost"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("deny"));
}

#[test]
fn public_mode_reaches_the_test_host_and_refuses_loopback_private_and_metadata() {
    let host = test_host();
    let env = Env::new();
    let server = LoopbackServer::start(&host.www);
    let script = format!(
        "for u in http://{PKG_NAME}/x http://{TEST_HOST_IP}/x http://10.0.2.2:{port}/x \
         http://{PRIVATE_IP}/x http://{METADATA_IP}/x; do \
         if wget -qO- $u >/dev/null; then echo ok $u; else echo no $u; fi; done",
        port = server.port
    );
    let stdout = kept_run(&env, "pub", &[], &script);
    for reachable in [
        format!("http://{PKG_NAME}/x"),
        format!("http://{TEST_HOST_IP}/x"),
    ] {
        assert!(stdout.contains(&format!("ok {reachable}")), "{stdout}");
    }
    for refused in [
        format!("http://10.0.2.2:{}/x", server.port),
        format!("http://{PRIVATE_IP}/x"),
        format!("http://{METADATA_IP}/x"),
    ] {
        assert!(stdout.contains(&format!("no {refused}")), "{stdout}");
    }
    let records = egress(&env, "pub");
    assert!(
        allowed(&records, &format!("{TEST_HOST_IP}:80")),
        "{records:?}"
    );
    for dst in [
        format!("10.0.2.2:{}", server.port),
        format!("{PRIVATE_IP}:80"),
        format!("{METADATA_IP}:80"),
    ] {
        assert!(denied(&records, &dst), "{dst} not denied: {records:?}");
    }
}

#[test]
fn a_name_rule_never_unlocks_a_refused_range() {
    let host = test_host();
    let env = Env::new();
    let server = LoopbackServer::start(&host.www);
    let flags = [
        "--network",
        "allowlist",
        "--allow",
        PRIVATE_NAME,
        "--allow",
        REBIND_NAME,
    ];
    let script = format!(
        "wget -qO- http://{PRIVATE_NAME}/x; echo private=$?; \
         wget -qO- http://{REBIND_NAME}:{}/x; echo rebind=$?",
        server.port
    );
    let stdout = kept_run(&env, "rebind", &flags, &script);
    assert!(stdout.contains("private=1"), "{stdout}");
    assert!(stdout.contains("rebind=1"), "{stdout}");
    assert!(!stdout.contains(FILE_BODY.trim()), "{stdout}");
    let records = egress(&env, "rebind");
    assert!(denied(&records, &format!("{PRIVATE_IP}:80")), "{records:?}");
}

#[test]
fn allowlist_mode_pins_names_to_dns_and_sni_and_pip_installs_through_it() {
    let _host = test_host();
    let env = Env::new();
    let image = vmkit_testkit::net::debian_agent_image();
    let script = format!(
        "curl -sf http://{PKG_NAME}/x; echo allowed=$?; \
         curl -sf http://{OTHER_NAME}/x; echo other=$?; \
         curl -sf --max-time 20 http://{TEST_HOST_IP}/x; echo direct=$?; \
         curl -skf --max-time 20 https://{PKG_NAME}/ >/dev/null; echo tls=$?; \
         curl -skf --max-time 20 --resolve {OTHER_NAME}:443:{TEST_HOST_IP} https://{OTHER_NAME}/ >/dev/null; echo sni=$?; \
         pip install -q --break-system-packages --no-cache-dir --index-url http://{PKG_NAME}/simple/ \
           --trusted-host {PKG_NAME} {WHEEL_PACKAGE} && \
         python3 -c 'import {WHEEL_PACKAGE}; print(\"value\", {WHEEL_PACKAGE}.VALUE)'"
    );
    let out = env
        .cmd()
        .args(["run", "--image", &image, "--kernel"])
        .arg(&env.kernel)
        .args(["--name", "allow", "--keep", "--memory", "1024"])
        .args(["--network", "allowlist", "--allow", PKG_NAME])
        .args(["--timeout", "600", "--exec", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stdout.contains(&format!("{}allowed=0", FILE_BODY)),
        "{stdout}"
    );
    // curl: 6 = could not resolve (DNS refused the other name).
    assert!(stdout.contains("other=6"), "{stdout}");
    for refused in ["direct", "sni"] {
        assert!(
            !stdout.contains(&format!("{refused}=0")),
            "{refused} connected: {stdout}"
        );
    }
    assert!(stdout.contains("tls=0"), "{stdout}");
    assert!(stdout.contains(&format!("value {WHEEL_VALUE}")), "{stdout}");
    let records = egress(&env, "allow");
    let sni_denied = records
        .iter()
        .any(|r| r["decision"] == "deny" && r["nameSource"] == "sni" && r["name"] == OTHER_NAME);
    assert!(sni_denied, "{records:?}");
    assert!(
        denied(&records, &format!("{TEST_HOST_IP}:80")),
        "{records:?}"
    );
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn network_none_has_no_nic_and_published_ports_still_work() {
    let env = Env::new();
    let (loopback_port, any_port) = (free_port(), free_port());
    env.ok(&[
        "create",
        "pubws",
        "--image",
        &env.image,
        "--kernel",
        env.kernel.to_str().unwrap(),
        "--network",
        "none",
        "-p",
        &format!("{loopback_port}:8000"),
        "--publish",
        &format!("127.0.0.1:{any_port}:8001"),
    ]);
    let status = json_lines(&env.ok(&["status", "--json", "pubws"]));
    assert_eq!(status[0]["config"]["network"]["mode"], "none");
    env.ok(&["start", "pubws"]);
    let out = env.ok(&[
        "exec",
        "pubws",
        "--",
        "sh",
        "-c",
        "ls /sys/class/net; mkdir -p /w && echo published > /w/index.html && \
         httpd -p 127.0.0.1:8000 -h /w && httpd -p 0.0.0.0:8001 -h /w",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "lo\n");
    for port in [loopback_port, any_port] {
        let answer = http_get(port, "/index.html");
        assert!(answer.contains("published"), "port {port}: {answer}");
    }
    // A port in use is refused up front, naming the flag, nothing created.
    let out = env
        .cmd()
        .args(["create", "clash", "--image", &env.image, "--kernel"])
        .arg(&env.kernel)
        .args(["-p", &format!("{loopback_port}:80")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains(&format!("--publish 127.0.0.1:{loopback_port}:80")));
    assert!(
        env.cmd()
            .args(["status", "clash"])
            .output()
            .unwrap()
            .status
            .code()
            != Some(0)
    );
    env.ok(&["delete", "--force", "pubws"]);
}

#[test]
fn bad_rules_exit_125_naming_the_value_and_create_nothing() {
    let env = Env::new();
    for (flag, value) in [
        ("--allow", "10.0.0.0/33"),
        ("--deny", "host:99999"),
        ("--network", "private"),
        ("--publish", "8080"),
    ] {
        let out = env.run(&["--name", "bad", flag, value, "--exec", "true"]);
        assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(flag) && stderr.contains(value), "{stderr}");
        assert!(!env.state_path().join("workspaces/bad").exists());
    }
}

/// The pids of this state folder's running network helpers.
fn helpers(env: &Env) -> Vec<i32> {
    processes_mentioning(env.state_path().to_str().unwrap())
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("microagent-net"))
        .map(|(pid, _)| pid)
        .collect()
}

#[test]
fn no_stack_process_outlives_its_vm_even_after_kill_9_and_gc() {
    let env = Env::new();
    env.ok(&[
        "create",
        "ws",
        "--image",
        &env.image,
        "--kernel",
        env.kernel.to_str().unwrap(),
    ]);
    env.ok(&["start", "ws"]);
    let running = helpers(&env);
    assert_eq!(running.len(), 1, "{running:?}");
    env.ok(&["stop", "ws"]);
    assert!(helpers(&env).is_empty());

    let mut run = env.spawn_started(&["--name", "k9", "--exec", "echo started; sleep 600"]);
    let during = helpers(&env);
    assert_eq!(during.len(), 1, "{during:?}");
    run.kill().unwrap();
    run.wait().unwrap();
    env.ok(&["gc"]);
    for pid in during {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "helper {pid} survived"
        );
    }
    assert!(helpers(&env).is_empty());
}

/// TAP interfaces named like a workspace's (`ma` + 8 hex digits).
fn workspace_taps() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.len() == 10 && n.starts_with("ma") && n[2..].bytes().all(|b| b.is_ascii_hexdigit())
        })
        .collect()
}

/// The TAP path (Firecracker's) with a real VMM: QEMU opens the helper's
/// TAP as Firecracker does (vnet header, checksum offload offered to the
/// guest), the helper serves it through its packet socket. The guest's
/// partial checksums are completed by the helper, its TSO is off.
#[test]
fn behind_a_tap_that_the_vmm_owns_the_policy_holds_and_bulk_data_flows() {
    let env = Env::new();
    let www = tempfile::tempdir().unwrap();
    let size = 4 << 20;
    std::fs::write(www.path().join("big"), vec![b'x'; size]).unwrap();
    let server = LoopbackServer::start(www.path());
    let before = workspace_taps();
    let url = format!("http://host.microagent.internal:{}/big", server.port);
    let rule = format!("host:{}", server.port);
    let out = env
        .run_command(&[
            "--allow",
            &rule,
            "--exec",
            &format!("wget -qO- {url} | wc -c; wget -qO- http://{PRIVATE_IP}/ ; echo private=$?"),
        ])
        .env("MICROAGENT_QEMU_NIC", "tap")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next().map(str::trim),
        Some(size.to_string().as_str()),
        "{stdout}"
    );
    assert_eq!(lines.last(), Some("private=1"), "{stdout}");
    assert_eq!(workspace_taps(), before, "the run's TAP went with it");
}
