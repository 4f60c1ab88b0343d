// The per-VM process in-process, over the stand-in driver: it waits for the
// guest init's `ready` through the bridge, serves the control socket, and a
// supervisor `halt` reaches it, asks the guest to shut down over the exec
// port, and records the states and events in the workspace.
@testable import AppleVFCore
import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

final class VMHostTests: XCTestCase {
    func frame(_ json: String) -> [UInt8] {
        let body = Array(json.utf8)
        return bigEndian(UInt32(body.count)) + body
    }

    func testReadyThenHaltThroughTheControlSocket() throws {
        let state = makeTempDir()
        defer { removeTree(state) }
        let identity = Identity(requestID: "r1", runtimeID: "ws", role: "workspace", backend: .appleVf)
        let layout = WorkspaceLayout(stateDir: state, name: "ws")
        try privateDirectory(layout.dir)
        let device = StandInVsock(dir: layout.dir)
        let driver = StandInDriver(device: device)
        // The guest's exec service: answers `shutdown` with `ack`, then powers off.
        let exec = try listenUnix(device.guestPortPath(defaultExecPort))
        defer { close(exec) }
        Thread.detachNewThread {
            guard let fd = acceptWithin(exec, seconds: 30) else { return }
            if let request = try? readFrame(fd), request["type"] as? String == "shutdown" {
                try? writeFrame(fd, json: ["type": "ack"])
                driver.booted?.onStop("guest powered off")
            }
            close(fd)
        }
        var plan = VMPlan(kernelPath: "/k", commandLine: "console=hvc0", disks: [PlanDisk(path: layout.disk, readOnly: false)],
                          cpuCount: 1, memoryMiB: 256, vsockPath: layout.vsock, hostPorts: [defaultControlPort],
                          consoleLog: layout.consoleLog)
        plan.controlSocket = layout.control
        plan.stateDir = state
        plan.identity = identity
        var record = WorkspaceRecord(name: "ws", state: .running, config: try parseRequest(fixture("request-start.json")).get().config!)
        record.vmm = ProcessRecord(pid: getpid(), startTime: 0)
        try StateStore(layout).save(record)

        let host = VMHost(plan: plan, driver: driver)
        let readySignal = DispatchSemaphore(value: 0)
        let readyResult = Box<Result<Void, ProtocolError>?>(nil)
        let finished = DispatchSemaphore(value: 0)
        let stopReason = Box("")
        Thread.detachNewThread {
            stopReason.value = host.run { readyResult.value = $0; readySignal.signal() }
            finished.signal()
        }
        XCTAssertEqual(driver.bootedSignal.wait(timeout: .now() + 10), .success)
        XCTAssertEqual(driver.bootedPlan, plan)
        // The guest init dials the control port and says it is ready.
        let control = try XCTUnwrap(device.guestDialWhenListening(defaultControlPort))
        defer { close(control) }
        try writeAll(control, frame(#"{"type":"ready","protocolVersion":1,"execPort":10001}"#))
        XCTAssertEqual(readySignal.wait(timeout: .now() + 10), .success)
        guard case .success = readyResult.value else { return XCTFail("not ready: \(String(describing: readyResult.value))") }

        let inspect = Supervisor(driver: driver, executable: "/nonexistent")
            .answer(Array(#"{"command":"inspect","identity":{"requestID":"r2","runtimeID":"ws","role":"workspace","backend":"apple-vf"},"stateDir":"\#(state)"}"#.utf8))
        XCTAssertEqual(inspect.event?.state, .running, "\(inspect)")

        func ask(_ command: String) -> Response {
            Supervisor(driver: driver, executable: "/nonexistent").answer(Array(
                #"{"command":"\#(command)","identity":{"requestID":"r","runtimeID":"ws","role":"workspace","backend":"apple-vf"},"stateDir":"\#(state)"}"#.utf8))
        }
        XCTAssertEqual(ask("resume").event?.detail, "already running")
        let paused = ask("pause")
        XCTAssertEqual(paused.event?.state, .paused, "\(paused)")
        XCTAssertEqual(driver.booted?.runState, .paused, "the VM itself was paused")
        XCTAssertEqual(ask("pause").event?.detail, "already paused")
        XCTAssertEqual(ask("resume").event?.state, .running)
        XCTAssertEqual(driver.booted?.runState, .running)
        XCTAssertEqual(ask("pause").event?.state, .paused)
        // halt of a paused VM lets it run first, so the guest can power off.

        let halt = Supervisor(driver: driver, executable: "/nonexistent")
            .answer(Array(#"{"command":"halt","identity":{"requestID":"r3","runtimeID":"ws","role":"workspace","backend":"apple-vf"},"stateDir":"\#(state)"}"#.utf8))
        XCTAssertTrue(halt.ok, "\(halt)")
        XCTAssertEqual(halt.event?.state, .halted)
        XCTAssertEqual(halt.event?.detail, "guest powered off")
        XCTAssertEqual(finished.wait(timeout: .now() + 10), .success)
        XCTAssertEqual(stopReason.value, "guest powered off")
        XCTAssertEqual(try StateStore(layout).load()?.state, .halted)
        XCTAssertEqual(StateStore(layout).events().map(\.state), [.paused, .running, .paused, .stopping, .halted])
        XCTAssertFalse(FileManager.default.fileExists(atPath: layout.control), "control socket removed")
        XCTAssertFalse(FileManager.default.fileExists(atPath: layout.vsock), "vsock socket removed")
    }

    /// As the Rust apple-vf backend drives it (no identity: the lifecycle
    /// records state): pause, then `save` writes the state file; a running
    /// VM or a relative path is refused.
    func testSaveWritesThePausedVMsStateThroughTheControlSocket() throws {
        let dir = makeTempDir()
        defer { removeTree(dir) }
        let device = StandInVsock(dir: dir)
        let driver = StandInDriver(device: device)
        var plan = VMPlan(kernelPath: "/k", commandLine: "console=hvc0", disks: [], cpuCount: 1, memoryMiB: 256,
                          vsockPath: "\(dir)/v.sock", hostPorts: [], consoleLog: "\(dir)/console.log")
        plan.controlSocket = "\(dir)/vm-control.sock"
        let (_, finished) = runUnmanagedHost(plan, driver)
        let control = plan.controlSocket!
        let state = "\(dir)/vm.vzstate"
        let running = try controlCall(control, ControlRequest(verb: .save, path: state))
        XCTAssertFalse(running.ok)
        XCTAssertEqual(running.error?.code, .invalidState, "\(running)")
        XCTAssertTrue(try controlCall(control, ControlRequest(verb: .pause)).ok)
        let relative = try controlCall(control, ControlRequest(verb: .save, path: "vm.vzstate"))
        XCTAssertEqual(relative.error?.code, .invalidRequest, "\(relative)")
        let saved = try controlCall(control, ControlRequest(verb: .save, path: state))
        XCTAssertTrue(saved.ok, "\(saved)")
        XCTAssertEqual(saved.state, .paused)
        XCTAssertEqual(FileManager.default.contents(atPath: state), Data("stand-in VM state".utf8))
        XCTAssertTrue(try controlCall(control, ControlRequest(verb: .kill)).ok)
        XCTAssertEqual(finished.wait(timeout: .now() + 10), .success)
    }

    func testAGuestThatSendsGarbageInsteadOfReadyFailsTheBoot() throws {
        let dir = makeTempDir()
        defer { removeTree(dir) }
        let device = StandInVsock(dir: dir)
        let driver = StandInDriver(device: device)
        var plan = VMPlan(kernelPath: "/k", commandLine: "", disks: [], cpuCount: 1, memoryMiB: 256,
                          vsockPath: "\(dir)/v.sock", hostPorts: [defaultControlPort], consoleLog: "\(dir)/c.log")
        plan.stateDir = dir
        plan.identity = Identity(requestID: "r", runtimeID: "ws", role: "workspace", backend: .appleVf)
        let host = VMHost(plan: plan, driver: driver)
        Thread.detachNewThread {
            _ = driver.bootedSignal.wait(timeout: .now() + 10)
            // The guest sends garbage instead of frames.
            if let fd = device.guestDialWhenListening(defaultControlPort) {
                try? writeAll(fd, [0xff, 0xff, 0xff, 0xff, 1, 2, 3])
                close(fd)
            }
        }
        let result = Box<Result<Void, ProtocolError>?>(nil)
        _ = host.run { result.value = $0 }
        guard case .failure(let e) = result.value else { return XCTFail("booted: \(String(describing: result.value))") }
        XCTAssertEqual(e.code, .guestFailure, "\(e)")
    }
}
