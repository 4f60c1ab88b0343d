// The supervisor's commands where Virtualization.framework is absent: host
// answers truthfully, start is refused as unavailable, and the state
// commands find nothing to act on without touching anything.
@testable import AppleVFCore
import Foundation
import XCTest

final class SupervisorTests: XCTestCase {
    let supervisor = Supervisor(driver: UnavailableDriver(), executable: "/nonexistent")

    func request(_ command: String, _ state: String, config: Bool = false) -> [UInt8] {
        var o = try! JSONSerialization.jsonObject(with: Data(fixture("request-start.json"))) as! [String: Any]
        o["command"] = command
        var identity = o["identity"] as! [String: Any]
        identity["backend"] = "apple-vf"
        o["identity"] = identity
        var c = o["config"] as! [String: Any]
        c["stateDir"] = state
        o["config"] = c
        if !config {
            o.removeValue(forKey: "config")
            o["stateDir"] = state
        }
        return Array(try! JSONSerialization.data(withJSONObject: o))
    }

    #if !canImport(Virtualization)
    func testWithoutTheFrameworkHostIsTruthfulAndStartIsUnavailable() {
        let state = makeTempDir()
        defer { removeTree(state) }
        let host = supervisor.answer(Array(#"{"command":"host"}"#.utf8))
        XCTAssertEqual(host.host?.accelerator, Accelerator.none)
        XCTAssertEqual(host.host?.checks.first?.status, .fail)
        for command in ["check", "prepare"] {
            let r = supervisor.answer(request(command, state, config: true))
            XCTAssertFalse(r.ok)
            XCTAssertEqual(r.error?.code, .unavailable, "\(command): \(r)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(state)/workspaces/agent-7"), "nothing half-made")
        // start, like the Rust lifecycle's, first finds the workspace (and
        // checks a snapshot to restore), then asks the hypervisor.
        XCTAssertEqual(supervisor.answer(request("start", state, config: true)).error?.code, .notFound)
        let layout = WorkspaceLayout(stateDir: state, name: "agent-7")
        try! StateStore(layout).save(WorkspaceRecord(name: "agent-7", state: .prepared, config: try! parseRequest(fixture("request-start.json")).get().config!))
        let start = supervisor.answer(request("start", state, config: true))
        XCTAssertEqual(start.error?.code, .unavailable, "\(start)")
        XCTAssertEqual(try! StateStore(layout).load()?.state, .prepared, "nothing started")
        XCTAssertFalse(FileManager.default.fileExists(atPath: layout.plan))
    }
    #endif

    func testStateCommandsOnAMissingWorkspaceAreNotFound() {
        let state = makeTempDir()
        defer { removeTree(state) }
        for command in ["inspect", "halt", "stop", "kill", "delete"] {
            let r = supervisor.answer(request(command, state))
            XCTAssertEqual(r.error?.code, .notFound, "\(command): \(r)")
            XCTAssertEqual(r.error?.message, "workspace \"agent-7\" does not exist")
        }
    }

    func testAnotherBackendsRequestIsRefused() {
        let r = supervisor.answer(fixture("request-start.json"))
        XCTAssertEqual(r.error?.code, .invalidRequest)
        XCTAssertEqual(r.error?.message, "identity.backend is qemu but this is the apple-vf backend")
    }

    func testEventLogAppendsOneLinePerTransition() throws {
        let state = makeTempDir()
        defer { removeTree(state) }
        let store = StateStore(WorkspaceLayout(stateDir: state, name: "ws"))
        let identity = Identity(requestID: "r", runtimeID: "ws", role: "workspace", backend: .appleVf)
        var record = WorkspaceRecord(name: "ws", state: .prepared, config: try parseRequest(fixture("request-start.json")).get().config!)
        try store.save(record)
        try store.transition(&record, to: .starting, identity: identity, detail: "booting")
        try store.transition(&record, to: .running, identity: identity, detail: "ready")
        XCTAssertThrowsError(try store.transition(&record, to: .prepared, identity: identity, detail: "x")) {
            XCTAssertEqual(($0 as? ProtocolError)?.code, .invalidState)
        }
        XCTAssertEqual(store.events().map(\.state), [.starting, .running])
        XCTAssertEqual(try store.load()?.state, .running)
        let text = try String(contentsOfFile: store.layout.events, encoding: .utf8)
        XCTAssertEqual(text.split(separator: "\n").count, 2)
        XCTAssertTrue(text.contains(#""observedAt":""#))
    }
}
