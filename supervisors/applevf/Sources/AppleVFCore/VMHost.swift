// The per-VM process: boots a plan, bridges its vsock device to the
// hybrid-vsock Unix socket, serves the control socket, and lives exactly as
// long as the VM. `start` spawns it (`microagent-applevf-supervisor
// vm-host PLAN`); the Rust apple-vf backend spawns it from
// `Machine::launch` the same way and supervises it like a QEMU process.
//
// Who records state: the command that holds the workspace lock (`start`,
// `halt`, ...) records the transitions it causes; this process records only
// a stop nobody asked for (the guest powered off by itself, or crashed).
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How long a guest may take from boot to its init's `ready`.
let bootTimeoutSeconds = 60.0

public final class VMHost: @unchecked Sendable {
    let plan: VMPlan
    let driver: VMDriver
    private var vm: RunningVM?
    private var bridge: HybridVsockBridge?
    private var control: ControlServer?
    private var guestControl: Int32 = -1
    /// Guards `stopped`, `stopReason` and `asked`; signalled when the VM stops.
    private let stopCondition = NSCondition()
    private var stopReason = ""
    private var stopped = false
    private var asked = false

    public init(plan: VMPlan, driver: VMDriver) {
        self.plan = plan
        self.driver = driver
    }

    /// Boots and serves until the VM stops. `ready` hears once whether the
    /// VM came up (for workspaces this supervisor runs itself: whether the
    /// guest init said `ready`). Returns why the VM stopped.
    public func run(ready: (Result<Void, ProtocolError>) -> Void) -> String {
        let managed = plan.identity != nil && plan.stateDir != nil
        var readyListener: Int32 = -1
        do {
            if managed {
                readyListener = try listenUnix("\(plan.vsockPath)_\(defaultControlPort)", mode: 0o600)
            }
            let vm = try driver.boot(plan) { [self] reason in
                stopCondition.lock()
                if !stopped {
                    stopped = true
                    stopReason = reason
                }
                stopCondition.broadcast()
                stopCondition.unlock()
            }
            self.vm = vm
            let bridge = HybridVsockBridge(device: vm.vsock, udsPath: plan.vsockPath)
            try bridge.start(hostPorts: plan.hostPorts)
            self.bridge = bridge
            if managed {
                try waitForGuestReady(readyListener)
            }
            if let path = plan.controlSocket {
                control = try ControlServer(path: path) { [self] in self.handle($0) }
            }
        } catch {
            if readyListener >= 0 { closeDescriptor(readyListener) }
            ready(.failure(error as? ProtocolError ?? ProtocolError(.internal, "booting: \(error)")))
            teardown()
            return "failed to boot: \(error)"
        }
        if readyListener >= 0 { closeDescriptor(readyListener) }
        ready(.success(()))
        _ = waitStopped(.infinity)
        teardown()
        stopCondition.lock()
        let reason = stopReason
        let wasAsked = asked
        stopCondition.unlock()
        if managed && !wasAsked { recordUnaskedStop(reason) }
        return reason
    }

    private func waitForGuestReady(_ listener: Int32) throws {
        let deadline = Date().addingTimeInterval(bootTimeoutSeconds)
        while true {
            if isStopped { throw ProtocolError(.guestFailure, "the VM stopped during boot (\(stopReason))") }
            let left = deadline.timeIntervalSinceNow
            if left <= 0 {
                throw ProtocolError(.timeout, "the guest did not connect within \(Int(bootTimeoutSeconds))s of boot")
            }
            guard let fd = acceptWithin(listener, seconds: min(left, 0.2)) else { continue }
            while true {
                let frame = try readFrame(fd)
                if frame["type"] as? String == "ready" {
                    // Kept open: the guest's control connection lives as long as the VM.
                    guestControl = fd
                    return
                }
            }
        }
    }

    private var isStopped: Bool {
        stopCondition.lock()
        defer { stopCondition.unlock() }
        return stopped
    }

    private func teardown() {
        bridge?.stop()
        control?.close()
        if guestControl >= 0 { closeDescriptor(guestControl) }
        guestControl = -1
    }

    /// Waits for the VM to stop, up to `seconds`.
    private func waitStopped(_ seconds: Double) -> Bool {
        stopCondition.lock()
        defer { stopCondition.unlock() }
        if seconds.isInfinite {
            // (A far deadline overflows Foundation's timespec on Linux.)
            while !stopped { stopCondition.wait() }
            return true
        }
        let deadline = Date().addingTimeInterval(seconds)
        while !stopped {
            if !stopCondition.wait(until: deadline) { return stopped }
        }
        return true
    }

    private func forceStop() {
        let done = DispatchSemaphore(value: 0)
        vm?.forceStop { _ in done.signal() }
        _ = done.wait(timeout: .now() + 10)
        _ = waitStopped(10)
    }

    /// Asks the guest init to power off (`shutdown` on the exec port) and
    /// waits for the VM to stop; forces it after `grace` seconds.
    private func shutDown(grace: Double) -> (clean: Bool, detail: String) {
        stopCondition.lock()
        asked = true
        stopCondition.unlock()
        var clean = false
        if let vm, vm.runState == .paused {
            // A paused guest cannot answer: let it run to shut down.
            let resumed = DispatchSemaphore(value: 0)
            vm.resume { _ in resumed.signal() }
            _ = resumed.wait(timeout: .now() + 10)
        }
        if grace > 0, let vm {
            let acked = DispatchSemaphore(value: 0)
            vm.vsock.connect(toGuestPort: defaultExecPort) { result in
                if case .success(let stream) = result {
                    if (try? writeFrame(stream.fd, json: ["type": "shutdown"])) != nil,
                       let reply = try? readFrame(stream.fd), reply["type"] as? String == "ack" {
                        acked.signal()
                    }
                    closeDescriptor(stream.fd)
                }
            }
            if acked.wait(timeout: .now() + 5) == .success {
                clean = waitStopped(grace)
            }
        }
        if clean { return (true, "guest powered off") }
        forceStop()
        return (false, grace > 0 ? "guest did not power off in time; VM stopped" : "VM stopped")
    }

    func handle(_ request: ControlRequest) -> ControlResponse {
        switch request.verb {
        case .inspect:
            let state: State = isStopped ? .stopped : (vm?.runState == .paused ? .paused : .running)
            return ControlResponse(ok: true, state: state, detail: "VM \(vm?.runState.rawValue ?? "absent")")
        case .halt, .stop:
            let grace = request.graceSeconds ?? (request.verb == .halt ? 20 : 5)
            let (clean, detail) = shutDown(grace: grace)
            let state: State = clean && request.verb == .halt ? .halted : .stopped
            return ControlResponse(ok: true, state: state, detail: detail)
        case .kill:
            stopCondition.lock()
            asked = true
            stopCondition.unlock()
            forceStop()
            return ControlResponse(ok: true, state: .stopped, detail: "VM killed")
        case .pause, .resume:
            guard let vm else { return ControlResponse(ok: false, error: ProtocolError(.invalidState, "no VM")) }
            let done = DispatchSemaphore(value: 0)
            let failure = Box<Error?>(nil)
            if request.verb == .pause {
                vm.pause { failure.value = $0; done.signal() }
            } else {
                vm.resume { failure.value = $0; done.signal() }
            }
            _ = done.wait(timeout: .now() + 30)
            if let e = failure.value { return ControlResponse(ok: false, error: ProtocolError(.internal, "\(e)")) }
            return ControlResponse(ok: true, state: request.verb == .pause ? .paused : .running)
        case .save:
            return save(request.path)
        }
    }

    /// The `save` verb: the framework saves only a paused VM, and the state
    /// goes to a file the caller names (the snapshot folder).
    private func save(_ path: String?) -> ControlResponse {
        guard let vm else { return ControlResponse(ok: false, error: ProtocolError(.invalidState, "no VM")) }
        guard let path, path.hasPrefix("/") else {
            return ControlResponse(ok: false, error: ProtocolError.invalid("save needs an absolute path"))
        }
        guard vm.runState == .paused else {
            return ControlResponse(ok: false, error: ProtocolError(.invalidState,
                "the VM is \(vm.runState.rawValue); pause it before saving its state"))
        }
        let done = DispatchSemaphore(value: 0)
        let failure = Box<Error?>(nil)
        vm.saveState(to: path) { failure.value = $0; done.signal() }
        guard done.wait(timeout: .now() + 300) == .success else {
            return ControlResponse(ok: false, error: ProtocolError(.timeout, "saving the VM state took over 300 s"))
        }
        if let e = failure.value {
            return ControlResponse(ok: false, error: e as? ProtocolError ?? ProtocolError(.internal, "saving the VM state: \(e)"))
        }
        return ControlResponse(ok: true, state: .paused, detail: "state saved to \(path)")
    }

    private func recordUnaskedStop(_ reason: String) {
        guard let stateDir = plan.stateDir, let identity = plan.identity else { return }
        let layout = WorkspaceLayout(stateDir: stateDir, name: identity.runtimeID)
        guard let held = try? WorkspaceLock(layout, timeout: 30) else { return }
        withExtendedLifetime(held) {
            let store = StateStore(layout)
            guard var record = try? store.load(), record.state.hasVM else { return }
            _ = try? store.transition(&record, to: .stopped, identity: identity, detail: reason)
        }
    }
}

/// A mutable cell for results handed back from completion handlers.
final class Box<T>: @unchecked Sendable {
    var value: T
    init(_ value: T) { self.value = value }
}
