// The wire contract against the same fixtures the Rust crate is checked
// against, and the same rejections (field paths, codes) for bad input.
@testable import AppleVFCore
import Foundation
import XCTest

final class ProtocolTests: XCTestCase {
    func testFixturesParseAndValidate() throws {
        for name in ["request-start.json", "request-run.json", "request-halt.json", "request-host.json"] {
            if case .failure(let e) = parseRequest(fixture(name)) { XCTFail("\(name): \(e)") }
        }
        let start = try parseRequest(fixture("request-start.json")).get()
        XCTAssertEqual(start.command, .start)
        XCTAssertEqual(start.identity?.runtimeID, "agent-7")
        XCTAssertEqual(start.config?.memoryMiB, 512)
        XCTAssertEqual(start.config?.disks[1].mode, .ro)
        let halt = try parseRequest(fixture("request-halt.json")).get()
        XCTAssertEqual(halt.identity?.backend, .appleVf)
        XCTAssertEqual(halt.resolvedStateDir, "/Users/me/.microagent")
        for name in ["response-start.json", "response-run.json", "response-host.json", "response-error.json", "response-signal.json"] {
            XCTAssertNoThrow(try JSONDecoder().decode(Response.self, from: Data(fixture(name))), name)
        }
        XCTAssertEqual(try JSONDecoder().decode(Event.self, from: Data(fixture("event.json"))).state, .halted)
    }

    func edit(_ name: String, _ change: (inout [String: Any]) -> Void) -> [UInt8] {
        var object = try! JSONSerialization.jsonObject(with: Data(fixture(name))) as! [String: Any]
        change(&object)
        return Array(try! JSONSerialization.data(withJSONObject: object))
    }

    func rejects(_ bytes: [UInt8], _ expected: String, file: StaticString = #filePath, line: UInt = #line) {
        switch parseRequest(bytes) {
        case .success: XCTFail("accepted, should mention \(expected)", file: file, line: line)
        case .failure(let e):
            XCTAssertEqual(e.code, .invalidRequest, file: file, line: line)
            XCTAssertTrue(e.message.contains(expected), "\(e.message) should mention \(expected)", file: file, line: line)
        }
    }

    func config(_ o: inout [String: Any], _ change: (inout [String: Any]) -> Void) {
        var c = o["config"] as! [String: Any]
        change(&c)
        o["config"] = c
    }

    func disk(_ o: inout [String: Any], _ i: Int, _ key: String, _ value: Any) {
        config(&o) { c in
            var disks = c["disks"] as! [[String: Any]]
            disks[i][key] = value
            c["disks"] = disks
        }
    }

    func testValidationErrorsNameTheField() {
        rejects(edit("request-start.json") { disk(&$0, 1, "mode", "rx") }, "disks[1].mode")
        rejects(edit("request-start.json") { config(&$0) { $0["memoryMiB"] = 1 } }, "config.memoryMiB")
        rejects(edit("request-start.json") { config(&$0) { $0["memoryMiB"] = "lots" } }, "config.memoryMiB")
        rejects(edit("request-start.json") { config(&$0) { $0["memoryMiB"] = -1 } }, "config.memoryMiB")
        rejects(edit("request-start.json") { config(&$0) { $0["cpuCount"] = 0 } }, "config.cpuCount")
        rejects(edit("request-start.json") { config(&$0) { $0["kernelPath"] = "vmlinux" } }, "config.kernelPath must be an absolute path")
        rejects(edit("request-start.json") { disk(&$0, 1, "name", "data") }, "disks[1].name")
        rejects(edit("request-start.json") { disk(&$0, 0, "mountpoint", "/../etc") }, "disks[0].mountpoint")
        rejects(edit("request-start.json") { disk(&$0, 0, "extra", true) }, "disks[0].extra")
        rejects(edit("request-start.json") { var i = $0["identity"] as! [String: Any]; i["runtimeID"] = "../x"; $0["identity"] = i }, "identity.runtimeID")
        rejects(edit("request-start.json") { var i = $0["identity"] as! [String: Any]; i["backend"] = "vbox"; $0["identity"] = i }, "identity.backend")
        rejects(edit("request-start.json") { $0["command"] = "explode" }, "command")
        rejects(edit("request-start.json") { $0["surprise"] = 1 }, "surprise")
        rejects(edit("request-start.json") { $0.removeValue(forKey: "config") }, "command start needs config")
        rejects(edit("request-halt.json") { $0.removeValue(forKey: "stateDir") }, "needs stateDir")
        rejects(edit("request-halt.json") { $0.removeValue(forKey: "identity") }, "identity")
        rejects(edit("request-run.json") { config(&$0) { c in var w = c["workload"] as! [String: Any]; w["exec"] = " "; c["workload"] = w } }, "workload.exec")
        rejects(edit("request-run.json") { config(&$0) { c in var w = c["workload"] as! [String: Any]; w["timeoutSeconds"] = 2_592_001; c["workload"] = w } }, "workload.timeoutSeconds must be between 1 and 2592000")
        rejects(edit("request-run.json") { $0["image"] = String(repeating: "x", count: 4097) }, "image must be 1-4096 bytes")
        rejects(edit("request-run.json") { $0["image"] = "a\nb" }, "image must not contain control characters")
    }

    func testSnapshotRequestsAreCheckedLikeTheRustOnes() {
        rejects(edit("request-halt.json") { $0["command"] = "snapshot" }, "command snapshot needs snapshot")
        rejects(edit("request-halt.json") { $0["command"] = "snapshot"; $0["snapshot"] = ["action": "create"] },
                "snapshot.tag is required for create and delete")
        rejects(edit("request-halt.json") { $0["command"] = "snapshot"; $0["snapshot"] = ["action": "list", "tag": "../x"] },
                "snapshot tag must be")
        rejects(edit("request-halt.json") { $0["command"] = "snapshot"; $0["snapshot"] = ["action": "list", "diskOnly": true] },
                "snapshot.diskOnly applies to create only")
        rejects(edit("request-halt.json") { $0["command"] = "snapshot"; $0["snapshot"] = ["action": "explode"] },
                "snapshot.action")
        rejects(edit("request-halt.json") { $0["snapshot"] = ["action": "list"] }, "snapshot is only for command snapshot")
        rejects(edit("request-halt.json") { $0["fromSnapshot"] = ["runtimeID": "a", "tag": "t"] },
                "fromSnapshot is only for commands start and prepare")
        rejects(edit("request-start.json") { var i = $0["identity"] as! [String: Any]; i["backend"] = "apple-vf"; $0["identity"] = i
                                             $0["fromSnapshot"] = ["runtimeID": "../a", "tag": "t"] }, "fromSnapshot.runtimeID")
        let ok = edit("request-halt.json") { $0["command"] = "snapshot"; $0["snapshot"] = ["action": "create", "tag": "t1", "diskOnly": true] }
        XCTAssertEqual(try parseRequest(ok).get().snapshot?.action, .create)
    }

    func testGarbageTruncatedAndOversizedInputIsAnErrorNotACrash() {
        rejects([], "malformed request")
        rejects(Array("not json".utf8), "malformed request")
        rejects([0x00, 0xff, 0xfe], "malformed request")
        let full = fixture("request-start.json")
        for cut in [1, full.count / 3, full.count / 2, full.count - 2] {
            if case .success = parseRequest(Array(full[..<cut])) { XCTFail("truncated at \(cut) accepted") }
        }
        rejects([UInt8](repeating: 32, count: maxRequestBytes + 1), "limit")
        rejects(Array("[1,2,3]".utf8), "malformed request")
        rejects(Array("null".utf8), "malformed request")
        rejects(Array(String(repeating: "[", count: 100_000).utf8), "malformed request")
    }

    func testHostNeedsNoIdentity() throws {
        let request = try parseRequest(Array(#"{"command":"host"}"#.utf8)).get()
        XCTAssertNil(request.identity)
        let response = Supervisor(driver: UnavailableDriver(), executable: "/nonexistent").answer(Array(#"{"command":"host"}"#.utf8))
        XCTAssertTrue(response.ok)
        XCTAssertEqual(response.backend, .appleVf)
        XCTAssertEqual(response.host?.os, hostOS())
    }

    func testStatesFollowTheRustStateMachine() {
        for s in State.allCases {
            XCTAssertEqual(s.canStart, [.prepared, .halted, .stopped, .failed].contains(s))
            XCTAssertTrue(s.canTransition(to: .failed))
        }
        XCTAssertFalse(State.running.canTransition(to: .prepared))
        XCTAssertEqual(try JSONDecoder().decode([State].self, from: Data(#"["hibernating"]"#.utf8)), [.unknown])
    }
}
