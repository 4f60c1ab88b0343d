//! The external-supervisor form: one JSON request in, one JSON response out,
//! exit 0 iff ok, and never a panic on hostile input.

use serde_json::Value;
use vmkit::supervisor::serve;

fn call(input: &[u8]) -> (i32, Value, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = serve(input, &mut out, &mut err);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text.lines().count(),
        1,
        "exactly one response line: {text:?}"
    );
    let value: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["ok"].as_bool(), Some(code == 0), "exit 0 iff ok");
    (code, value, String::from_utf8(err).unwrap())
}

#[test]
fn host_request_succeeds() {
    let req = br#"{"command":"host","identity":{"requestID":"r1","runtimeID":"probe","role":"doctor","backend":"qemu"}}"#;
    let (code, resp, _) = call(req);
    assert_eq!(code, 0);
    assert_eq!(resp["backend"], "qemu");
    assert_eq!(resp["host"]["os"], "linux");
    assert!(["kvm", "tcg"].contains(&resp["host"]["accelerator"].as_str().unwrap()));
}

#[test]
fn garbage_truncated_and_oversized_input_fail_cleanly() {
    let valid = br#"{"command":"host","identity":{"requestID":"r1","runtimeID":"probe","role":"doctor","backend":"qemu"}}"#;
    let mut oversized = b"{\"command\":\"host\",\"pad\":\"".to_vec();
    oversized.resize(vmkit_protocol::MAX_REQUEST_BYTES + 10, b'a');
    let cases: Vec<&[u8]> = vec![
        b"",
        b"\x00\xff\xfe garbage",
        &valid[..valid.len() / 2],
        b"[]",
        b"null",
        &oversized,
    ];
    for input in cases {
        let (code, resp, diag) = call(input);
        assert_ne!(code, 0);
        assert_eq!(resp["error"]["code"], "invalidRequest");
        assert!(!diag.is_empty(), "diagnostics go to stderr");
    }
}

#[test]
fn invalid_fields_are_named_in_the_error() {
    let req = br#"{"command":"start","identity":{"requestID":"r","runtimeID":"ws","role":"workspace","backend":"qemu"},
      "config":{"kernelPath":"/k","rootfsPath":"/r","stateDir":"/s","memoryMiB":256,"cpuCount":1,
        "disks":[{"name":"a","path":"/a","mountpoint":"/a","mode":"rw"},{"name":"b","path":"/b","mountpoint":"/b","mode":"rx"}]}}"#;
    let (code, resp, _) = call(req);
    assert_ne!(code, 0);
    let msg = resp["error"]["message"].as_str().unwrap();
    assert!(msg.contains("disks[1].mode"), "{msg}");
}

#[test]
fn a_backend_from_another_os_is_unavailable_not_a_crash() {
    let req = br#"{"command":"host","identity":{"requestID":"r","runtimeID":"p","role":"doctor","backend":"apple-vf"}}"#;
    let (code, resp, _) = call(req);
    assert_ne!(code, 0);
    assert_eq!(resp["backend"], "apple-vf");
    assert_eq!(resp["error"]["code"], "unavailable");
}
