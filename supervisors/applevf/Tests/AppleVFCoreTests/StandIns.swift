// A local stand-in for a VM's vsock device and a driver that boots it, for
// what cannot run here (Virtualization.framework). Guest ports are Unix
// sockets in a folder; a guest-initiated connection is a socket pair whose
// far end the test holds, as a guest process would.
import AppleVFCore
import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

final class StandInVsock: VsockDevice, @unchecked Sendable {
    let dir: String
    private let lock = NSLock()
    private var handlers: [UInt32: @Sendable (VsockStream) -> Void] = [:]

    init(dir: String) { self.dir = dir }

    func guestPortPath(_ port: UInt32) -> String { "\(dir)/g\(port)" }

    func connect(toGuestPort port: UInt32, completion: @escaping @Sendable (Result<VsockStream, Error>) -> Void) {
        let path = guestPortPath(port)
        DispatchQueue.global().async {
            do {
                completion(.success(VsockStream(fd: try connectUnix(path))))
            } catch {
                completion(.failure(error))
            }
        }
    }

    func listen(onHostPort port: UInt32, accept: @escaping @Sendable (VsockStream) -> Void) {
        lock.lock()
        handlers[port] = accept
        lock.unlock()
    }

    /// Dials once the bridge listens on `port` (it registers its listener
    /// when it starts, after the boot returned), within 10 s.
    func guestDialWhenListening(_ port: UInt32) -> Int32? {
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if let fd = guestDial(port) { return fd }
            usleep(5_000)
        }
        return nil
    }

    /// The guest dials host port `port`; returns the guest's end, or nil if
    /// the device has no listener there (the guest would see a reset).
    func guestDial(_ port: UInt32) -> Int32? {
        lock.lock()
        let handler = handlers[port]
        lock.unlock()
        guard let handler else { return nil }
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, streamType, 0, &fds) == 0 else { return nil }
        handler(VsockStream(fd: fds[0]))
        return fds[1]
    }
}

#if canImport(Glibc)
let streamType = Int32(SOCK_STREAM.rawValue)
#else
let streamType = SOCK_STREAM
#endif

final class StandInVM: RunningVM, @unchecked Sendable {
    let device: StandInVsock
    let onStop: @Sendable (String) -> Void
    var vsock: VsockDevice { device }
    var runState: VMRunState = .running
    /// What the VM was when its state was last saved.
    var runStateAtSave: VMRunState?

    init(device: StandInVsock, onStop: @escaping @Sendable (String) -> Void) {
        self.device = device
        self.onStop = onStop
    }

    func forceStop(completion: @escaping @Sendable (Error?) -> Void) {
        runState = .stopped
        onStop("VM stopped")
        completion(nil)
    }

    func pause(completion: @escaping @Sendable (Error?) -> Void) {
        runState = .paused
        completion(nil)
    }

    func resume(completion: @escaping @Sendable (Error?) -> Void) {
        runState = .running
        completion(nil)
    }

    /// What the framework's saveMachineStateTo leaves: a file of state.
    func saveState(to path: String, completion: @escaping @Sendable (Error?) -> Void) {
        runStateAtSave = runState
        let written = FileManager.default.createFile(atPath: path, contents: Data("stand-in VM state".utf8))
        completion(written ? nil : ProtocolError(.internal, "cannot write \(path)"))
    }
}

final class StandInDriver: VMDriver, @unchecked Sendable {
    let device: StandInVsock
    var booted: StandInVM?
    var bootedPlan: VMPlan?
    let bootedSignal = DispatchSemaphore(value: 0)

    init(device: StandInVsock) { self.device = device }

    func hostInfo() -> HostInfo {
        HostInfo(os: hostOS(), arch: hostArch(), accelerator: .hvf, acceleratorReason: "stand-in", checks: [])
    }

    func unavailableReason() -> String? { nil }

    func boot(_ plan: VMPlan, onStop: @escaping @Sendable (String) -> Void) throws -> RunningVM {
        let vm = StandInVM(device: device, onStop: onStop)
        booted = vm
        bootedPlan = plan
        bootedSignal.signal()
        return vm
    }
}

/// Runs the per-VM process in-process for a plan with no identity (as the
/// Rust backend drives it: no guest `ready` awaited), until it is booted
/// and its control socket serves; `finished` is signalled when it ends.
func runUnmanagedHost(_ plan: VMPlan, _ driver: VMDriver) -> (host: VMHost, finished: DispatchSemaphore) {
    let host = VMHost(plan: plan, driver: driver)
    let ready = DispatchSemaphore(value: 0)
    let finished = DispatchSemaphore(value: 0)
    Thread.detachNewThread {
        _ = host.run { _ in ready.signal() }
        finished.signal()
    }
    XCTAssertEqual(ready.wait(timeout: .now() + 10), .success)
    return (host, finished)
}

/// A short private folder for sockets (sun_path holds ~104 bytes).
func makeTempDir() -> String {
    var template = Array("/tmp/avf.XXXXXX".utf8CString)
    let path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
    return path
}

func removeTree(_ path: String) { try? FileManager.default.removeItem(atPath: path) }

func readN(_ fd: Int32, _ n: Int) -> [UInt8] {
    var out = [UInt8]()
    var buf = [UInt8](repeating: 0, count: n)
    while out.count < n {
        let got = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, n - out.count) }
        if got <= 0 { break }
        out += buf[0..<got]
    }
    return out
}

func send(_ fd: Int32, _ text: String) { XCTAssertNoThrow(try writeAll(fd, Array(text.utf8))) }

/// The repository's protocol fixtures (crates/vmkit-protocol/tests/fixtures).
func fixture(_ name: String) -> [UInt8] {
    let here = URL(fileURLWithPath: #filePath)
    let repo = here.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()
    let path = repo.appendingPathComponent("crates/vmkit-protocol/tests/fixtures/\(name)").path
    guard let data = FileManager.default.contents(atPath: path) else {
        XCTFail("fixture \(path) is missing")
        return []
    }
    return Array(data)
}
