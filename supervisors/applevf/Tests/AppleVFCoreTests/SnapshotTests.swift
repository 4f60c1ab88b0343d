// Snapshots through the supervisor's own `snapshot` command and `start`
// with `fromSnapshot`, over the stand-in driver: the per-VM process runs
// in-process and serves the real control socket (pause, save, resume), the
// snapshot folder is staged and renamed, and a restore is refused with the
// reason when the snapshot does not fit, changing nothing.
@testable import AppleVFCore
import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

final class SnapshotTests: XCTestCase {
    var state = ""
    var layout: WorkspaceLayout { WorkspaceLayout(stateDir: state, name: "ws") }
    var kernel: String { "\(state)/vmlinux" }
    var snapshots: String { "\(layout.dir)/snapshots" }

    override func setUp() {
        state = makeTempDir()
    }

    override func tearDown() {
        removeTree(state)
    }

    func config(memoryMiB: UInt32 = 256, cpuCount: UInt32 = 1) throws -> MachineConfig {
        var c = try parseRequest(fixture("request-start.json")).get().config!
        c.kernelPath = kernel
        c.rootfsPath = layout.disk
        c.stateDir = state
        c.disks = []
        c.memoryMiB = memoryMiB
        c.cpuCount = cpuCount
        return c
    }

    /// A workspace in `state` with a kernel and a disk, its record saved.
    func makeWorkspace(_ state: State) throws {
        try privateDirectory(layout.dir)
        XCTAssertTrue(FileManager.default.createFile(atPath: kernel, contents: Data("a kernel".utf8)))
        XCTAssertTrue(FileManager.default.createFile(atPath: layout.disk, contents: Data("disk at snapshot".utf8)))
        var record = WorkspaceRecord(name: "ws", state: state, config: try config())
        if state.hasVM { record.vmm = ProcessRecord(pid: getpid(), startTime: 0) }
        try StateStore(layout).save(record)
    }

    func setRecordState(_ to: State) throws {
        var record = try XCTUnwrap(StateStore(layout).load())
        record.state = to
        if !to.hasVM { record.vmm = nil }
        try StateStore(layout).save(record)
    }

    /// The per-VM process, in-process, serving the workspace's control socket.
    func runVM(_ driver: StandInDriver) -> (host: VMHost, finished: DispatchSemaphore) {
        var plan = VMPlan(kernelPath: kernel, commandLine: "", disks: [PlanDisk(path: layout.disk, readOnly: false)],
                          cpuCount: 1, memoryMiB: 256, vsockPath: layout.vsock, hostPorts: [], consoleLog: layout.consoleLog)
        plan.controlSocket = layout.control
        return runUnmanagedHost(plan, driver)
    }

    func ask(_ driver: VMDriver, _ json: String, executable: String = "/nonexistent") -> Response {
        Supervisor(driver: driver, executable: executable).answer(Array(json.utf8))
    }

    func snapshot(_ driver: VMDriver, _ action: String, _ tag: String?, diskOnly: Bool = false) -> Response {
        let t = tag.map { #","tag":"\#($0)""# } ?? ""
        return ask(driver, #"{"command":"snapshot","identity":{"requestID":"r","runtimeID":"ws","role":"workspace","backend":"apple-vf"},"stateDir":"\#(state)","snapshot":{"action":"\#(action)"\#(t),"diskOnly":\#(diskOnly)}}"#)
    }

    func start(_ driver: VMDriver, from tag: String, memoryMiB: UInt32 = 256, cpuCount: UInt32 = 1,
               executable: String = "/nonexistent") throws -> Response {
        let c = String(decoding: try JSONEncoder().encode(try config(memoryMiB: memoryMiB, cpuCount: cpuCount)), as: UTF8.self)
        return ask(driver, #"{"command":"start","identity":{"requestID":"r","runtimeID":"ws","role":"workspace","backend":"apple-vf"},"config":\#(c),"fromSnapshot":{"runtimeID":"ws","tag":"\#(tag)"}}"#,
                   executable: executable)
    }

    func parseSnapshotRef(_ runtimeID: String, _ tag: String) throws -> SnapshotRef {
        try JSONDecoder().decode(SnapshotRef.self, from: Data(#"{"runtimeID":"\#(runtimeID)","tag":"\#(tag)"}"#.utf8))
    }

    func testSha256MatchesTheStandardsVectorsAndSha256sum() throws {
        func hex(_ bytes: [UInt8]) -> String {
            var h = SHA256()
            h.update(bytes)
            return h.finalizeHex()
        }
        XCTAssertEqual(hex([]), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(hex(Array("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(hex(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        XCTAssertEqual(hex([UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000)),
                       "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
        // Streamed over several reads, against the system's sha256sum.
        let path = "\(state)/blob"
        var bytes = [UInt8](repeating: 0, count: (5 << 19) + 3)
        for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: i &* 2_654_435_761 >> 13) }
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(bytes)))
        let sum = Process()
        sum.executableURL = URL(fileURLWithPath: "/usr/bin/sha256sum")
        sum.arguments = [path]
        let out = Pipe()
        sum.standardOutput = out
        try sum.run()
        sum.waitUntilExit()
        let printed = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(try sha256File(path), String(printed.prefix(64)))
    }

    func testMemorySnapshotOfARunningWorkspacePausesSavesClonesAndResumes() throws {
        try makeWorkspace(.running)
        let driver = StandInDriver(device: StandInVsock(dir: layout.dir))
        let (host, finished) = runVM(driver)
        let made = snapshot(driver, "create", "warm-1")
        XCTAssertTrue(made.ok, "\(made)")
        let info = try XCTUnwrap(made.snapshots?.first)
        XCTAssertEqual(info.tag, "warm-1")
        XCTAssertEqual(info.runtimeID, "ws")
        XCTAssertFalse(info.diskOnly)
        XCTAssertEqual(info.memoryMiB, 256)
        XCTAssertGreaterThan(info.sizeBytes, 0)
        XCTAssertEqual(driver.booted?.runStateAtSave, .paused, "saved while paused")
        XCTAssertEqual(driver.booted?.runState, .running, "resumed afterwards")
        XCTAssertEqual(try StateStore(layout).load()?.state, .running, "the record did not change")
        let dir = "\(snapshots)/warm-1"
        XCTAssertEqual(FileManager.default.contents(atPath: "\(dir)/rootfs.ext4"), Data("disk at snapshot".utf8))
        XCTAssertEqual(FileManager.default.contents(atPath: "\(dir)/vm.vzstate"), Data("stand-in VM state".utf8))
        let meta = try readSnapshotMeta(dir)
        XCTAssertEqual(meta.files, ["rootfs.ext4", "vm.vzstate"])
        XCTAssertEqual(meta.kernelSha256, try sha256File(kernel))
        XCTAssertEqual(meta.config.memoryMiB, 256)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: snapshots), ["warm-1"], "no staging left")

        let again = snapshot(driver, "create", "warm-1")
        XCTAssertEqual(again.error?.code, .alreadyExists, "\(again)")

        // A paused workspace stays paused.
        XCTAssertTrue(try controlCall(layout.control, ControlRequest(verb: .pause)).ok)
        try setRecordState(.paused)
        XCTAssertTrue(snapshot(driver, "create", "warm-2").ok)
        XCTAssertEqual(driver.booted?.runState, .paused)
        XCTAssertTrue(try controlCall(layout.control, ControlRequest(verb: .resume)).ok)

        XCTAssertEqual(snapshot(driver, "list", nil).snapshots?.map(\.tag), ["warm-1", "warm-2"])
        XCTAssertEqual(snapshot(driver, "list", "warm-2").snapshots?.map(\.tag), ["warm-2"])
        let deleted = snapshot(driver, "delete", "warm-1")
        XCTAssertTrue(deleted.ok, "\(deleted)")
        XCTAssertEqual(deleted.snapshots, [])
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir))
        let missing = snapshot(driver, "delete", "warm-1")
        XCTAssertEqual(missing.error?.code, .notFound)
        XCTAssertEqual(missing.error?.message,
                       #"workspace "ws" has no snapshot "warm-1" (see `microagent snapshot list ws`)"#)
        XCTAssertEqual(snapshot(driver, "list", nil).snapshots?.map(\.tag), ["warm-2"])

        _ = host.handle(ControlRequest(verb: .kill))
        XCTAssertEqual(finished.wait(timeout: .now() + 10), .success)
    }

    func testAFailedSnapshotLeavesNothingAndTheWorkspaceRunsOn() throws {
        try makeWorkspace(.running)
        let driver = StandInDriver(device: StandInVsock(dir: layout.dir))
        let (host, finished) = runVM(driver)
        // The disk cannot be copied (as on a full disk, the copy fails).
        unlink(layout.disk)
        let failed = snapshot(driver, "create", "warm-1")
        XCTAssertFalse(failed.ok)
        XCTAssertEqual(failed.error?.code, .internal, "\(failed)")
        XCTAssertTrue(failed.error?.message.contains("copying the disk into the snapshot") ?? false, "\(failed)")
        XCTAssertEqual(driver.booted?.runState, .running, "resumed after the failure")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: snapshots), [], "no staging, no snapshot")
        XCTAssertEqual(snapshot(driver, "list", nil).snapshots, [])
        _ = host.handle(ControlRequest(verb: .kill))
        XCTAssertEqual(finished.wait(timeout: .now() + 10), .success)
    }

    func testAStoppedWorkspaceTakesOnlyADiskOnlySnapshot() throws {
        try makeWorkspace(.stopped)
        let driver = StandInDriver(device: StandInVsock(dir: layout.dir))
        let memory = snapshot(driver, "create", "t")
        XCTAssertEqual(memory.error?.code, .invalidState)
        XCTAssertEqual(memory.error?.message,
                       #"cannot snapshot "ws": it is stopped; a memory snapshot needs a running or paused workspace (--disk-only works on a stopped one)"#)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(snapshots)/t"))
        let disk = snapshot(driver, "create", "t", diskOnly: true)
        XCTAssertTrue(disk.ok, "\(disk)")
        XCTAssertEqual(disk.snapshots?.first?.diskOnly, true)
        XCTAssertEqual(try readSnapshotMeta("\(snapshots)/t").files, ["rootfs.ext4"])
        XCTAssertNil(driver.booted, "no VM was involved")
    }

    /// A snapshot the workspace's machine cannot continue from is refused
    /// with the reason, and nothing changes: no plan, no new disk, same state.
    func testStartRefusesASnapshotThatDoesNotFit() throws {
        try makeWorkspace(.stopped)
        let driver = StandInDriver(device: StandInVsock(dir: layout.dir))
        let dir = "\(snapshots)/warm"
        try privateDirectory(dir)
        XCTAssertTrue(FileManager.default.createFile(atPath: "\(dir)/rootfs.ext4", contents: Data("snapshot disk".utf8)))
        XCTAssertTrue(FileManager.default.createFile(atPath: "\(dir)/vm.vzstate", contents: Data("state".utf8)))
        func meta(sha: String? = nil, memory: UInt32 = 256, cpus: UInt32 = 1, files: [String] = ["rootfs.ext4", "vm.vzstate"]) throws {
            let info = SnapshotInfo(runtimeID: "ws", tag: "warm", createdAt: rfc3339Now(), diskOnly: false, memoryMiB: memory, sizeBytes: 0)
            let m = SnapshotMeta(info: info, kernelSha256: try sha ?? sha256File(kernel),
                                 config: try config(memoryMiB: memory, cpuCount: cpus), files: files)
            try writeSynced("\(dir)/snapshot.json", Data(try encodePretty(m).utf8))
        }
        func refused(_ r: Response, _ why: String, file: StaticString = #filePath, line: UInt = #line) {
            XCTAssertEqual(r.error?.code, .invalidRequest, "\(r)", file: file, line: line)
            let message = r.error?.message ?? ""
            XCTAssertTrue(message.hasPrefix(#"cannot restore snapshot ws:warm into "ws": "#), message, file: file, line: line)
            XCTAssertTrue(message.contains(why), "\(message) lacks \(why)", file: file, line: line)
            XCTAssertTrue(message.hasSuffix("; nothing was started"), message, file: file, line: line)
            XCTAssertEqual(FileManager.default.contents(atPath: layout.disk), Data("disk at snapshot".utf8), file: file, line: line)
            XCTAssertFalse(FileManager.default.fileExists(atPath: layout.plan), file: file, line: line)
            XCTAssertEqual(try StateStore(layout).load()?.state, .stopped, file: file, line: line)
        }
        try meta(sha: String(repeating: "0", count: 64))
        refused(try start(driver, from: "warm"), "the kernel changed since the snapshot (\(kernel) is sha256:")
        try meta(memory: 512)
        refused(try start(driver, from: "warm"), "the snapshot has 512 MiB of memory, the workspace 256 MiB")
        try meta(cpus: 2)
        refused(try start(driver, from: "warm"), "the snapshot has 2 vCPUs, the workspace 1")
        try meta(files: ["rootfs.ext4", "vm.vzstate", "memory.bin"])
        refused(try start(driver, from: "warm"), "\(dir)/memory.bin is missing")
        try meta(files: ["../../workspace.json"])
        refused(try start(driver, from: "warm"), "is missing")
        try meta(files: ["rootfs.ext4"])
        unlink("\(dir)/vm.vzstate")
        refused(try start(driver, from: "warm"), "it has no vm.vzstate")
        let missing = try start(driver, from: "cold")
        XCTAssertEqual(missing.error?.code, .notFound, "\(missing)")

        // snapshot.json is data on disk: bounded, and garbage is an error, not a crash.
        XCTAssertTrue(FileManager.default.createFile(atPath: "\(dir)/snapshot.json",
                                                    contents: Data(repeating: 0x20, count: SnapshotFiles.maxMetaBytes + 1)))
        let big = try start(driver, from: "warm")
        XCTAssertEqual(big.error?.code, .internal, "\(big)")
        XCTAssertTrue(big.error?.message.contains("over 1048576 bytes") ?? false, "\(big)")
        XCTAssertTrue(FileManager.default.createFile(atPath: "\(dir)/snapshot.json", contents: Data(#"{"info":{"tag":"#.utf8)))
        XCTAssertEqual(try start(driver, from: "warm").error?.code, .internal)
        XCTAssertTrue(FileManager.default.createFile(atPath: "\(dir)/snapshot.json", contents: Data(#"{"info":1}"#.utf8)))
        XCTAssertEqual(try start(driver, from: "warm").error?.code, .internal)
        XCTAssertEqual(snapshot(driver, "list", nil).snapshots, [], "an unreadable snapshot is not listed")
        XCTAssertFalse(FileManager.default.fileExists(atPath: layout.plan))
    }

    /// A snapshot that fits: the workspace's disk becomes the snapshot's,
    /// and the per-VM process is told to restore the saved state (or, for a
    /// disk-only snapshot, to boot afresh). The per-VM process here is a
    /// script that answers `running` as the real one does once the guest is ready.
    func testStartFromASnapshotRestoresItsDiskAndState() throws {
        try makeWorkspace(.running)
        let driver = StandInDriver(device: StandInVsock(dir: layout.dir))
        let (host, finished) = runVM(driver)
        XCTAssertTrue(snapshot(driver, "create", "warm").ok)
        _ = host.handle(ControlRequest(verb: .kill))
        XCTAssertEqual(finished.wait(timeout: .now() + 10), .success)
        try setRecordState(.stopped)
        XCTAssertTrue(snapshot(driver, "create", "cold", diskOnly: true).ok)
        XCTAssertTrue(FileManager.default.createFile(atPath: layout.disk, contents: Data("disk after snapshot".utf8)))

        let vmHost = "\(state)/vm-host"
        XCTAssertTrue(FileManager.default.createFile(
            atPath: vmHost, contents: Data("#!/bin/sh\necho running\n".utf8), attributes: [.posixPermissions: 0o755]))
        let started = try start(driver, from: "warm", executable: vmHost)
        XCTAssertTrue(started.ok, "\(started)")
        XCTAssertEqual(started.event?.state, .running)
        XCTAssertEqual(FileManager.default.contents(atPath: layout.disk), Data("disk at snapshot".utf8), "the disk is the snapshot's")
        let plan = try JSONDecoder().decode(VMPlan.self, from: try XCTUnwrap(FileManager.default.contents(atPath: layout.plan)))
        XCTAssertEqual(plan.restoreFrom, "\(snapshots)/warm/vm.vzstate")
        XCTAssertEqual(plan.disks.first?.path, layout.disk)
        XCTAssertTrue(StateStore(layout).events().contains { $0.detail == "restoring snapshot ws:warm" })

        // (The script has exited; as `kill` would, say so.)
        try setRecordState(.stopped)
        let cold = try start(driver, from: "cold", memoryMiB: 512, cpuCount: 2, executable: vmHost)
        XCTAssertTrue(cold.ok, "a disk-only snapshot boots on any machine: \(cold)")
        let boot = try JSONDecoder().decode(VMPlan.self, from: try XCTUnwrap(FileManager.default.contents(atPath: layout.plan)))
        XCTAssertNil(boot.restoreFrom, "a disk-only snapshot is a fresh boot")
        XCTAssertEqual(boot.memoryMiB, 512)
    }

    /// `snapshot.json` as the Rust lifecycle writes it (the fixture is its
    /// output) reads here, lists, and restores; what this side writes has
    /// the same fields, so the Rust side reads it back.
    func testSnapshotJsonIsTheRustLifecyclesFormat() throws {
        let rust = fixture("snapshot-meta.json")
        try makeWorkspace(.stopped)
        let dir = "\(snapshots)/warm-1"
        try privateDirectory(dir)
        XCTAssertTrue(FileManager.default.createFile(atPath: "\(dir)/snapshot.json", contents: Data(rust)))
        XCTAssertTrue(FileManager.default.createFile(atPath: "\(dir)/rootfs.ext4", contents: Data("rust's disk".utf8)))
        let meta = try readSnapshotMeta(dir)
        XCTAssertEqual(meta.info.tag, "warm-1")
        XCTAssertTrue(meta.info.diskOnly)
        XCTAssertEqual(meta.info.createdAt, "2026-12-01T21:07:51.514238874Z")
        XCTAssertEqual(meta.kernelSha256.count, 64)
        XCTAssertEqual(meta.config.publish.count, 1)
        XCTAssertEqual(meta.files, ["rootfs.ext4"])
        let driver = StandInDriver(device: StandInVsock(dir: layout.dir))
        XCTAssertEqual(snapshot(driver, "list", nil).snapshots?.map(\.tag), ["warm-1"])
        let record = try XCTUnwrap(StateStore(layout).load())
        let source = try Supervisor(driver: driver, executable: "/nonexistent")
            .restoreSource(try parseSnapshotRef("ws", "warm-1"), for: record, stateDir: state)
        XCTAssertNil(source.machineState, "disk-only: a fresh boot")

        func keys(_ bytes: [UInt8]) throws -> [String: Set<String>] {
            let o = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
            return ["": Set(o.keys), "info": Set((o["info"] as? [String: Any] ?? [:]).keys)]
        }
        XCTAssertEqual(try keys(Array(try encodePretty(meta).utf8)), try keys(rust))
    }

    /// A fork (`prepare` with `fromSnapshot`) gets the snapshot's machine
    /// and its own copy of the snapshot's disk, its own hostname and no
    /// published ports.
    func testForkTakesTheSnapshotsMachineAndDisk() throws {
        try makeWorkspace(.stopped)
        let driver = StandInDriver(device: StandInVsock(dir: layout.dir))
        XCTAssertTrue(snapshot(driver, "create", "base", diskOnly: true).ok)
        var given = try config(memoryMiB: 1024)
        given.rootfsPath = "/nonexistent"
        let c = String(decoding: try JSONEncoder().encode(given), as: UTF8.self)
        let forked = ask(driver, #"{"command":"prepare","identity":{"requestID":"r","runtimeID":"fork","role":"workspace","backend":"apple-vf"},"config":\#(c),"fromSnapshot":{"runtimeID":"ws","tag":"base"}}"#)
        XCTAssertTrue(forked.ok, "\(forked)")
        let fork = WorkspaceLayout(stateDir: state, name: "fork")
        XCTAssertEqual(FileManager.default.contents(atPath: fork.disk), Data("disk at snapshot".utf8))
        let record = try XCTUnwrap(StateStore(fork).load())
        XCTAssertEqual(record.config.memoryMiB, 256, "the snapshot's machine")
        XCTAssertEqual(record.config.rootfsPath, fork.disk)
        XCTAssertNil(record.config.hostname)
        XCTAssertEqual(record.config.publish, [])
        // Its start from the snapshot boots from its own disk, the source's untouched.
        XCTAssertTrue(FileManager.default.createFile(atPath: fork.disk, contents: Data("the fork's own".utf8)))
        let vmHost = "\(state)/vm-host"
        XCTAssertTrue(FileManager.default.createFile(
            atPath: vmHost, contents: Data("#!/bin/sh\necho running\n".utf8), attributes: [.posixPermissions: 0o755]))
        let forkConfig = String(decoding: try JSONEncoder().encode(record.config), as: UTF8.self)
        let started = ask(driver, #"{"command":"start","identity":{"requestID":"r","runtimeID":"fork","role":"workspace","backend":"apple-vf"},"config":\#(forkConfig),"fromSnapshot":{"runtimeID":"ws","tag":"base"}}"#,
                          executable: vmHost)
        XCTAssertTrue(started.ok, "\(started)")
        XCTAssertEqual(FileManager.default.contents(atPath: fork.disk), Data("the fork's own".utf8))
        let plan = try JSONDecoder().decode(VMPlan.self, from: try XCTUnwrap(FileManager.default.contents(atPath: fork.plan)))
        XCTAssertEqual(plan.disks.first?.path, fork.disk)
        XCTAssertNil(plan.restoreFrom, "a disk-only snapshot: a fresh boot")
        let none = ask(driver, #"{"command":"prepare","identity":{"requestID":"r","runtimeID":"fork2","role":"workspace","backend":"apple-vf"},"config":\#(c),"fromSnapshot":{"runtimeID":"ws","tag":"nope"}}"#)
        XCTAssertEqual(none.error?.code, .notFound, "\(none)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: WorkspaceLayout(stateDir: state, name: "fork2").dir))
    }
}
