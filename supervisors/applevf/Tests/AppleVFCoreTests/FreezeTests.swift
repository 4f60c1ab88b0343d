// A disk-only snapshot of a running or paused workspace freezes the guest's
// filesystems while the disk is copied. The guest here is a fake one: a
// Unix socket where the stand-in vsock device connects the guest's exec
// port, speaking the framed protocol of PROTOCOL.md ("Freeze"), reached
// through the real per-VM process and its hybrid-vsock bridge (`v.sock`,
// `CONNECT 10001`). It answers as a guest init does, or misbehaves; the
// snapshot is consistent, the guest is never left frozen (it sees `thaw` or
// the connection's end), and hostile answers are refused without a crash.
@testable import AppleVFCore
import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What the fake guest saw, in order: the types of the frames it read, then
/// `eof` once the host closed the connection.
final class GuestLog: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [String] = []
    var runStateAtFreeze: VMRunState?

    func add(_ s: String) {
        lock.lock()
        items.append(s)
        lock.unlock()
    }

    var seen: [String] {
        lock.lock()
        defer { lock.unlock() }
        return items
    }
}

func frameBytes(_ json: String) -> [UInt8] {
    bigEndian(UInt32(json.utf8.count)) + Array(json.utf8)
}

/// Reads one frame of the host and logs its type (`eof` at the end, and nil).
func nextFrame(_ fd: Int32, _ log: GuestLog) -> [String: Any]? {
    guard let f = try? readFrame(fd, until: Date().addingTimeInterval(10)) else {
        log.add("eof")
        return nil
    }
    log.add(f["type"] as? String ?? "?")
    return f
}

extension SnapshotTests {
    /// A running workspace whose per-VM process (in-process, over the
    /// stand-in driver) serves its control socket and `v.sock`, for `body`.
    func withRunningWorkspace(_ body: (StandInDriver) throws -> Void) throws {
        signal(SIGPIPE, SIG_IGN)
        try makeWorkspace(.running)
        let driver = StandInDriver(device: StandInVsock(dir: layout.dir))
        let (host, finished) = runVM(driver)
        defer {
            _ = host.handle(ControlRequest(verb: .kill))
            XCTAssertEqual(finished.wait(timeout: .now() + 10), .success)
        }
        try body(driver)
    }

    /// Serves the guest's exec port for one connection with `script`, then
    /// logs whether the host ended the connection (`eof`) and closes it.
    func fakeGuest(_ device: StandInVsock, _ script: @escaping @Sendable (Int32, GuestLog) -> Void)
        -> (GuestLog, DispatchSemaphore) {
        let path = device.guestPortPath(defaultExecPort)
        unlink(path)
        let listener = try! listenUnix(path)
        let log = GuestLog()
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            defer { done.signal() }
            guard let fd = acceptWithin(listener, seconds: 10) else { return }
            closeDescriptor(listener)
            unlink(path)
            script(fd, log)
            var byte: UInt8 = 0
            var limit = timeval(tv_sec: 10, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
            if read(fd, &byte, 1) == 0 { log.add("eof") }
            closeDescriptor(fd)
        }
        return (log, done)
    }

    /// A guest init that freezes (its flush lands on the disk then), answers
    /// `frozen` with `mountpoints`, and after `thaw` writes on and answers `thawAnswer`.
    func freezingGuest(_ driver: StandInDriver, mountpoints: String = #"["/","/data"]"#,
                       thawAnswer: String = #"{"type":"ack"}"#, onFreeze: (@Sendable () -> Void)? = nil)
        -> (GuestLog, DispatchSemaphore) {
        let disk = layout.disk
        return fakeGuest(driver.device) { fd, log in
            guard let freeze = nextFrame(fd, log) else { return }
            if freeze["timeoutMs"] as? Int != 60_000 { log.add("timeoutMs \(String(describing: freeze["timeoutMs"]))") }
            log.runStateAtFreeze = driver.booted?.runState
            _ = FileManager.default.createFile(atPath: disk, contents: Data("flushed by the freeze".utf8))
            onFreeze?()
            try? writeAll(fd, frameBytes(#"{"type":"frozen","mountpoints":\#(mountpoints)}"#))
            guard nextFrame(fd, log) != nil else { return }
            _ = FileManager.default.createFile(atPath: disk, contents: Data("written after the thaw".utf8))
            try? writeAll(fd, frameBytes(thawAnswer))
        }
    }

    func assertNothingListed(_ driver: StandInDriver, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: snapshots), [], "no staging, no snapshot", file: file, line: line)
        XCTAssertEqual(snapshot(driver, "list", nil).snapshots, [], file: file, line: line)
    }

    func testDiskOnlySnapshotOfARunningWorkspaceCopiesTheDiskWhileFrozen() throws {
        try withRunningWorkspace { driver in
            let (log, done) = freezingGuest(driver)
            let made = snapshot(driver, "create", "ckpt", diskOnly: true)
            XCTAssertEqual(done.wait(timeout: .now() + 20), .success)
            XCTAssertTrue(made.ok, "\(made)")
            let info = try XCTUnwrap(made.snapshots?.first)
            XCTAssertTrue(info.diskOnly)
            XCTAssertTrue(info.frozen)
            XCTAssertEqual(log.seen, ["freeze", "thaw", "eof"])
            XCTAssertEqual(log.runStateAtFreeze, .running)
            let dir = "\(snapshots)/ckpt"
            XCTAssertEqual(FileManager.default.contents(atPath: "\(dir)/rootfs.ext4"), Data("flushed by the freeze".utf8),
                           "copied after frozen, before thaw")
            XCTAssertEqual(FileManager.default.contents(atPath: layout.disk), Data("written after the thaw".utf8))
            let meta = try readSnapshotMeta(dir)
            XCTAssertTrue(meta.info.frozen)
            XCTAssertEqual(meta.files, ["rootfs.ext4"])
            let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(dir)/snapshot.json"))) as? [String: Any])
            XCTAssertEqual((json["info"] as? [String: Any])?["frozen"] as? Bool, true, "the Rust lifecycle's field")
            XCTAssertEqual(snapshot(driver, "list", nil).snapshots?.map(\.frozen), [true])
            XCTAssertEqual(driver.booted?.runState, .running)
            XCTAssertNil(driver.booted?.runStateAtSave, "no machine state saved")

            // A paused workspace runs for the freeze and is paused again.
            XCTAssertTrue(try controlCall(layout.control, ControlRequest(verb: .pause)).ok)
            try setRecordState(.paused)
            let (log2, done2) = freezingGuest(driver)
            let paused = snapshot(driver, "create", "ckpt-2", diskOnly: true)
            XCTAssertEqual(done2.wait(timeout: .now() + 20), .success)
            XCTAssertTrue(paused.ok, "\(paused)")
            XCTAssertEqual(paused.snapshots?.first?.frozen, true)
            XCTAssertEqual(log2.seen, ["freeze", "thaw", "eof"])
            XCTAssertEqual(log2.runStateAtFreeze, .running, "a paused guest cannot freeze")
            XCTAssertEqual(driver.booted?.runState, .paused)
            XCTAssertEqual(try StateStore(layout).load()?.state, .paused)

            // A memory snapshot still pauses and saves, and is not `frozen`.
            let memory = snapshot(driver, "create", "warm")
            XCTAssertTrue(memory.ok, "\(memory)")
            XCTAssertEqual(memory.snapshots?.first?.frozen, false)
        }
    }

    /// A guest that cannot freeze, or answers with something that is not a
    /// freeze of its root: the snapshot fails with the reason, nothing is
    /// copied or listed, the connection is closed (the guest thaws), and the
    /// workspace goes on as it was.
    func testAGuestThatDoesNotFreezeFailsTheSnapshotAndIsLeftThawed() throws {
        try withRunningWorkspace { driver in
            let prefix = #"cannot freeze the filesystems of "ws" for a consistent disk snapshot: "#
            let suffix = " (nothing was copied; a guest init older than this microagent cannot freeze: stop the workspace and snapshot it stopped)"
            let cases: [(answer: [UInt8]?, why: String)] = [
                (frameBytes(#"{"type":"error","message":"bad frame: malformed frame: unknown variant `freeze`"}"#),
                 "guest error: bad frame: malformed frame: unknown variant `freeze`"),
                (frameBytes(#"{"type":"frozen","mountpoints":["/data"]}"#),
                 "protocol violation: the guest could not freeze its root filesystem"),
                (bigEndian(2 << 20) + Array(#"{"type":"frozen""#.utf8),
                 "waiting for the guest to freeze: guest frame of 2097152 bytes exceeds the limit"),
                (frameBytes(#"{"type":"ack"}"#), #"protocol violation: expected frozen, got "ack""#),
                (nil, "waiting for the guest to freeze: the guest closed the channel"),
            ]
            for (i, c) in cases.enumerated() {
                let paused = i == 0
                if paused {
                    XCTAssertTrue(try controlCall(layout.control, ControlRequest(verb: .pause)).ok)
                    try setRecordState(.paused)
                }
                let (log, done) = fakeGuest(driver.device) { fd, log in
                    guard nextFrame(fd, log) != nil else { return }
                    if let answer = c.answer { try? writeAll(fd, answer) } else { shutdown(fd, Int32(SHUT_RDWR)) }
                }
                let failed = snapshot(driver, "create", "ckpt", diskOnly: true)
                XCTAssertEqual(done.wait(timeout: .now() + 20), .success)
                XCTAssertEqual(failed.error?.code, .guestFailure, "\(failed)")
                XCTAssertEqual(failed.error?.message, prefix + c.why + suffix)
                if c.answer != nil { XCTAssertEqual(log.seen, ["freeze", "eof"], "closed, never left frozen") }
                assertNothingListed(driver)
                XCTAssertEqual(driver.booted?.runState, paused ? .paused : .running, "as it was")
                if paused {
                    XCTAssertTrue(try controlCall(layout.control, ControlRequest(verb: .resume)).ok)
                    try setRecordState(.running)
                }
            }

            // Nobody serves the exec port: the bridge closes before OK.
            let none = snapshot(driver, "create", "ckpt", diskOnly: true)
            XCTAssertEqual(none.error?.code, .guestFailure, "\(none)")
            XCTAssertEqual(none.error?.message,
                           prefix + "the VMM closed the connection before OK: nothing listens on guest port 10001" + suffix)
            assertNothingListed(driver)
        }
    }

    /// While frozen: a copy that fails still thaws the guest; a freeze that
    /// did not hold (the guest's `error` to `thaw`) fails the snapshot.
    func testFailuresWhileFrozenThawTheGuestAndListNothing() throws {
        try withRunningWorkspace { driver in
            // The disk cannot be copied (as on a full disk, the copy fails).
            let disk = layout.disk
            let (log, done) = freezingGuest(driver) { unlink(disk) }
            let failed = snapshot(driver, "create", "ckpt", diskOnly: true)
            XCTAssertEqual(done.wait(timeout: .now() + 20), .success)
            XCTAssertEqual(failed.error?.code, .internal, "\(failed)")
            XCTAssertTrue(failed.error?.message.hasPrefix("copying the disk into the snapshot") ?? false, "\(failed)")
            XCTAssertEqual(log.seen, ["freeze", "thaw", "eof"], "thawed after the failed copy")
            assertNothingListed(driver)
            XCTAssertEqual(driver.booted?.runState, .running)

            let (log2, done2) = freezingGuest(driver, thawAnswer: #"{"type":"error","message":"the freeze expired after 60000 ms"}"#)
            let expired = snapshot(driver, "create", "ckpt", diskOnly: true)
            XCTAssertEqual(done2.wait(timeout: .now() + 20), .success)
            XCTAssertEqual(expired.error?.code, .guestFailure, "\(expired)")
            XCTAssertEqual(expired.error?.message,
                           #"the freeze of "ws" did not hold until the disk was copied: guest error: the freeze expired after 60000 ms"#)
            XCTAssertEqual(log2.seen, ["freeze", "thaw", "eof"])
            assertNothingListed(driver)
        }
    }

    /// The checks of a `frozen` answer, and the deadline on the guest's
    /// answer, over a socket pair.
    func testFrozenAnswersAreCheckedAsTheRustHostChecksThem() throws {
        signal(SIGPIPE, SIG_IGN)
        func answer(_ bytes: [UInt8]?, until: Double = 10) -> Result<[String], ProtocolError> {
            var fds: [Int32] = [0, 0]
            XCTAssertEqual(socketpair(AF_UNIX, streamType, 0, &fds), 0)
            defer { closeDescriptor(fds[1]) }
            if let bytes { try? writeAll(fds[1], bytes) }
            do {
                let guest = try freezeOver(fds[0], holdMs: 1000, until: Date().addingTimeInterval(until))
                return .success(guest.mountpoints)
            } catch let e as ProtocolError {
                return .failure(e)
            } catch {
                XCTFail("\(error)")
                return .failure(ProtocolError(.internal, "\(error)"))
            }
        }
        func refused(_ mountpoints: String, _ why: String, file: StaticString = #filePath, line: UInt = #line) {
            let r = answer(frameBytes(#"{"type":"frozen","mountpoints":\#(mountpoints)}"#))
            guard case .failure(let e) = r else { return XCTFail("accepted \(mountpoints)", file: file, line: line) }
            XCTAssertEqual(e.code, .guestFailure, file: file, line: line)
            XCTAssertTrue(e.message.contains(why), "\(e.message) lacks \(why)", file: file, line: line)
        }
        XCTAssertEqual(try answer(frameBytes(#"{"type":"frozen","mountpoints":["/","/data"]}"#)).get(), ["/", "/data"])
        let sixtyFour = (["\"/\""] + (1..<64).map { "\"/m\($0)\"" }).joined(separator: ",")
        XCTAssertEqual(try answer(frameBytes(#"{"type":"frozen","mountpoints":[\#(sixtyFour)]}"#)).get().count, 64)
        refused("[\(sixtyFour),\"/m64\"]", "the guest named 65 frozen filesystems, more than 64")
        refused(#"["/","data"]"#, #"a bad mountpoint "data""#)
        refused(#"["/","/\#(String(repeating: "a", count: 4096))"]"#, "a bad mountpoint")
        XCTAssertEqual(try answer(frameBytes(#"{"type":"frozen","mountpoints":["/","/\#(String(repeating: "a", count: 4095))"]}"#)).get().count, 2)
        refused(#"["/","/a\u0000b"]"#, "a bad mountpoint")
        refused(#"["/",1]"#, "a bad mountpoint")
        refused(#""/""#, "frozen without a list of mountpoints")
        refused("null", "frozen without a list of mountpoints")
        refused("[]", "the guest could not freeze its root filesystem")
        let long = String(repeating: "x", count: 10_000)
        guard case .failure(let e) = answer(frameBytes(#"{"type":"error","message":"\#(long)"}"#)) else { return XCTFail() }
        XCTAssertEqual(e.message.utf8.count, "guest error: ".utf8.count + maxGuestErrorBytes, "cut to 4096 bytes")
        XCTAssertTrue(e.message.hasSuffix("..."))
        // A guest that says nothing: refused at the deadline, not waited on.
        guard case .failure(let silent) = answer(nil, until: 0.2) else { return XCTFail() }
        XCTAssertEqual(silent.code, .timeout)
        XCTAssertEqual(silent.message, "waiting for the guest to freeze: the guest did not answer in time")
        XCTAssertEqual(truncatedText("\u{e9}\u{e9}\u{e9}", maxBytes: 5), "\u{e9}...", "never half a character")
        XCTAssertEqual(truncatedText("\u{e9}\u{e9}\u{e9}", maxBytes: 4), "...")
        XCTAssertEqual(truncatedText("\u{e9}\u{e9}\u{e9}", maxBytes: 6), "\u{e9}\u{e9}\u{e9}")
    }
}
