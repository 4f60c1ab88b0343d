// One JSON request in, one JSON response out: the commands, with the same
// codes and messages as the Rust lifecycle (crates/lifecycle) gives.
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public struct Supervisor {
    let driver: VMDriver
    /// This executable, to spawn the per-VM process.
    let executable: String

    public init(driver: VMDriver, executable: String) {
        self.driver = driver
        self.executable = executable
    }

    /// Answers one request (raw bytes from stdin). Never crashes on input.
    public func answer(_ bytes: [UInt8]) -> Response {
        switch parseRequest(bytes) {
        case .failure(let error): return .failure(error)
        case .success(let request):
            do {
                return try handle(request)
            } catch let error as ProtocolError {
                return .failure(error)
            } catch {
                return .failure(ProtocolError(.internal, "\(error)"))
            }
        }
    }

    func handle(_ request: Request) throws -> Response {
        if let identity = request.identity, identity.backend != .appleVf {
            throw ProtocolError.invalid("identity.backend is \(identity.backend.rawValue) but this is the apple-vf backend")
        }
        guard let identity = request.identity else {
            // Only `host` gets here without an identity (validate saw to it).
            return .success(host: driver.hostInfo())
        }
        switch request.command {
        case .host:
            return .success(host: driver.hostInfo())
        case .check:
            try check(request.config!)
            return .success(host: driver.hostInfo())
        case .run:
            try available()
            throw ProtocolError(.unsupported,
                "run is driven by microagent's own lifecycle over the vsock bridge (microagent run --backend apple-vf); this supervisor serves workspaces")
        default:
            break
        }
        let layout = WorkspaceLayout(stateDir: request.resolvedStateDir!, name: identity.runtimeID)
        let held = try WorkspaceLock(layout)
        defer { withExtendedLifetime(held) {} }
        let store = StateStore(layout)
        switch request.command {
        case .prepare:
            // A fork takes its machine and disk from the snapshot.
            let config = try request.fromSnapshot.map { try forkConfig($0, request.config!, stateDir: layout.stateDir) } ?? request.config!
            return .success(event: try prepare(config, request.image, identity, store))
        case .start:
            return .success(event: try start(request, identity, store))
        case .inspect:
            var record = try load(store)
            try reconcile(&record, store)
            return .success(event: Event(identity: identity, state: record.state, detail: "inspected"))
        case .halt, .stop, .kill:
            return .success(event: try shutDown(request.command, identity, store))
        case .pause, .resume:
            return .success(event: try pauseOrResume(request.command, identity, store))
        case .snapshot:
            return .success(snapshots: try snapshot(request.snapshot!, store))
        case .delete:
            var record = try load(store)
            try reconcile(&record, store)
            if record.state.hasVM {
                throw ProtocolError(.invalidState,
                    "workspace \(quoted(record.name)) is \(record.state.rawValue); stop it first (or delete --force)")
            }
            try store.remove()
            return .success()
        case .host, .check, .run:
            preconditionFailure("answered above")
        }
    }

    func available() throws {
        if let reason = driver.unavailableReason() { throw ProtocolError(.unavailable, reason) }
    }

    /// What vmkit-lifecycle's `check_config_files` checks, after availability.
    func check(_ config: MachineConfig) throws {
        try available()
        if !isFile(config.kernelPath) {
            throw ProtocolError.invalid("kernel \(config.kernelPath) does not exist; run `microagent kernel build`")
        }
        for (i, d) in config.disks.enumerated() where !isFile(d.path) {
            throw ProtocolError.invalid("disks[\(i)].path \(d.path) is not a file")
        }
    }

    func load(_ store: StateStore) throws -> WorkspaceRecord {
        guard let record = try store.load() else {
            throw ProtocolError(.notFound, "workspace \(quoted(store.layout.name)) does not exist")
        }
        return record
    }

    func prepare(_ config: MachineConfig, _ image: String?, _ identity: Identity, _ store: StateStore) throws -> Event {
        if try store.load() != nil {
            throw ProtocolError(.alreadyExists, "workspace \(quoted(identity.runtimeID)) already exists")
        }
        try check(config)
        guard isFile(config.rootfsPath) else {
            throw ProtocolError.invalid("config.rootfsPath \(config.rootfsPath) is not a file")
        }
        let layout = store.layout
        do {
            try privateDirectory(layout.dir)
            // On APFS this is a clone (copy-on-write), so it costs no space.
            try cloneFile(config.rootfsPath, to: layout.disk)
        } catch {
            try? store.remove()
            throw ProtocolError(.internal, "copying the root disk: \(error)")
        }
        var own = config
        own.rootfsPath = layout.disk
        var record = WorkspaceRecord(name: identity.runtimeID, state: .prepared, config: own)
        // A request without an image names its disk directly.
        record.image = image ?? config.rootfsPath
        try store.save(record)
        let event = Event(identity: identity, state: .prepared, detail: "disks ready")
        try store.append(event)
        return event
    }

    func start(_ request: Request, _ identity: Identity, _ store: StateStore) throws -> Event {
        var record = try load(store)
        try reconcile(&record, store)
        guard record.state.canStart else {
            throw ProtocolError(.invalidState,
                "cannot start \(quoted(record.name)): it is \(record.state.rawValue) (start works from prepared, halted, stopped or failed)")
        }
        if let config = request.config {
            let disk = record.config.rootfsPath
            record.config = config
            record.config.rootfsPath = disk
        }
        // A snapshot that does not fit is refused before anything changes
        // (and, like the Rust lifecycle, before the hypervisor is asked).
        let restore = try request.fromSnapshot.map { try restoreSource($0, for: record, stateDir: store.layout.stateDir) }
        try available()
        let layout = store.layout
        // A fork's prepare copied the snapshot's disk already; a restore
        // into the snapshot's own workspace puts it back now.
        if let restore, restore.ref.runtimeID == record.name {
            do {
                try cloneFile(restore.disk, to: layout.disk)
            } catch {
                throw ProtocolError(.internal, "copying the snapshot's disk: \(error)")
            }
        }
        let config = record.config
        try writeConfigDisk(BootSpec(config: config, name: record.name), to: layout.configDisk)
        var disks = [PlanDisk(path: layout.disk, readOnly: false)]
        disks += config.disks.map { PlanDisk(path: $0.path, readOnly: $0.mode == .ro) }
        disks.append(PlanDisk(path: layout.configDisk, readOnly: true))
        let configDevice = "/dev/vd\(diskLetter(disks.count - 1))"
        var plan = VMPlan(
            kernelPath: config.kernelPath,
            commandLine: ["console=hvc0 panic=-1 root=/dev/vda rw init=/sbin/microagent-init",
                          "microagent.config=\(configDevice)", config.kernelArgs ?? ""]
                .filter { !$0.isEmpty }.joined(separator: " "),
            disks: disks, cpuCount: config.cpuCount, memoryMiB: config.memoryMiB,
            vsockPath: layout.vsock, hostPorts: [defaultControlPort], consoleLog: layout.consoleLog)
        plan.consoleLimitBytes = 1 << 20
        plan.controlSocket = layout.control
        plan.stateDir = layout.stateDir
        plan.identity = identity
        plan.restoreFrom = restore?.machineState
        let planJSON = Data(encodeLine(plan).utf8)
        guard FileManager.default.createFile(atPath: layout.plan, contents: planJSON, attributes: [.posixPermissions: 0o600]) else {
            throw ProtocolError(.internal, "writing \(layout.plan)")
        }
        try store.transition(&record, to: .starting, identity: identity,
                             detail: restore.map { "restoring snapshot \($0.ref.runtimeID):\($0.ref.tag)" } ?? "booting")
        let child: SpawnedHost
        do {
            child = try spawnVMHost(executable: executable, plan: layout.plan, log: layout.vmmLog)
        } catch {
            try store.transition(&record, to: .failed, identity: identity, detail: "\(error)")
            throw ProtocolError(.internal, "starting the VM process: \(error)")
        }
        record.vmm = ProcessRecord(pid: child.pid, startTime: 0)
        try store.save(record)
        // The per-VM process says `running` once the guest init is ready,
        // or why not; end-of-file means it died.
        let line = readLine(child.status, limit: 4096).map { String(decoding: $0, as: UTF8.self) }
        closeDescriptor(child.status)
        guard line == "running" else {
            let why = line.map { $0.hasPrefix("failed ") ? String($0.dropFirst(7)) : $0 } ?? "the VM process exited during boot; see vmm.log"
            kill(child.pid, SIGKILL)
            try store.transition(&record, to: .failed, identity: identity, detail: why)
            throw ProtocolError(.guestFailure, why)
        }
        return try store.transition(&record, to: .running, identity: identity, detail: "exec service ready")
    }

    /// A record that says a VM runs, whose process is gone, becomes `failed`.
    func reconcile(_ record: inout WorkspaceRecord, _ store: StateStore) throws {
        guard record.state.hasVM else { return }
        if let pid = record.vmm?.pid, kill(pid, 0) == 0 { return }
        let identity = Identity(requestID: "gc", runtimeID: record.name, role: "workspace", backend: .appleVf)
        try store.transition(&record, to: .failed, identity: identity, detail: "the VM process exited unexpectedly")
    }

    func shutDown(_ command: Command, _ identity: Identity, _ store: StateStore) throws -> Event {
        var record = try load(store)
        try reconcile(&record, store)
        guard record.state.hasVM else {
            return Event(identity: identity, state: record.state, detail: "no VM running")
        }
        try store.transition(&record, to: .stopping, identity: identity, detail: "shutting down")
        let verb: ControlRequest.Verb = command == .halt ? .halt : (command == .stop ? .stop : .kill)
        let answer = try? controlCall(store.layout.control, ControlRequest(verb: verb))
        let state = answer?.state ?? .stopped
        let detail = answer?.detail ?? "the VM process did not answer; it was killed"
        if answer == nil, let pid = record.vmm?.pid { kill(pid, SIGKILL) }
        return try store.transition(&record, to: state == .halted ? .halted : .stopped, identity: identity, detail: detail)
    }
}

extension Supervisor {
    /// `pause` (running -> paused) and `resume` (paused -> running), done by
    /// the per-VM process (VZVirtualMachine.pause/resume).
    func pauseOrResume(_ command: Command, _ identity: Identity, _ store: StateStore) throws -> Event {
        var record = try load(store)
        try reconcile(&record, store)
        let (from, to): (State, State) = command == .pause ? (.running, .paused) : (.paused, .running)
        if record.state == to {
            return Event(identity: identity, state: to, detail: "already \(to.rawValue)")
        }
        guard record.state == from else {
            throw ProtocolError(.invalidState,
                "cannot \(command.rawValue) \(quoted(record.name)): it is \(record.state.rawValue)")
        }
        try setPaused(store.layout, command == .pause)
        return try store.transition(&record, to: to, identity: identity, detail: command == .pause ? "vCPUs paused" : "vCPUs running")
    }
}

extension Supervisor {
    /// Pauses or resumes the VM through its per-VM process, recording
    /// nothing (the caller records what the workspace's state becomes).
    func setPaused(_ layout: WorkspaceLayout, _ paused: Bool) throws {
        let verb: ControlRequest.Verb = paused ? .pause : .resume
        let answer = try controlCall(layout.control, ControlRequest(verb: verb))
        guard answer.ok else {
            throw answer.error ?? ProtocolError(.internal, "the VM's process could not \(verb.rawValue) it")
        }
        let want: State = paused ? .paused : .running
        guard answer.state == want else {
            throw ProtocolError(.internal,
                "the VM's process answered \(verb.rawValue) with state \(answer.state?.rawValue ?? "none"), not \(want.rawValue)")
        }
    }
}

func isFile(_ path: String) -> Bool {
    var st = stat()
    return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
}
