// The state folder, laid out as crates/vmkit-state lays it out, so
// `microagent list`, `events` and `status` read a macOS workspace like any
// other: `<stateDir>/workspaces/<runtimeID>/{workspace.json,events.jsonl}`
// and `<stateDir>/locks/<runtimeID>.lock` (flock, released when the holder dies).
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Where one workspace keeps its files.
public struct WorkspaceLayout: Sendable {
    public let stateDir: String
    public let name: String

    public init(stateDir: String, name: String) {
        self.stateDir = stateDir
        self.name = name
    }

    public var dir: String { "\(stateDir)/workspaces/\(name)" }
    public var record: String { "\(dir)/workspace.json" }
    public var events: String { "\(dir)/events.jsonl" }
    public var lock: String { "\(stateDir)/locks/\(name).lock" }
    /// The workspace's own writable root disk.
    public var disk: String { "\(dir)/rootfs.ext4" }
    /// The boot-spec disk, rewritten at every start.
    public var configDisk: String { "\(dir)/config.img" }
    /// The hybrid-vsock socket (guest ports through it; guest-initiated
    /// connections arrive on `<this>_<port>`).
    public var vsock: String { "\(dir)/v.sock" }
    /// The per-VM process's control socket (0600 in a 0700 folder).
    public var control: String { "\(dir)/control.sock" }
    /// What the per-VM process is told to boot.
    public var plan: String { "\(dir)/vm-plan.json" }
    public var consoleLog: String { "\(dir)/console.log" }
    public var vmmLog: String { "\(dir)/vmm.log" }
}

/// What the state folder knows about one workspace (`workspace.json`): the
/// fields of vmkit-state's `WorkspaceRecord` that this supervisor uses.
public struct WorkspaceRecord: Codable, Equatable, Sendable {
    public var name: String
    public var state: State
    public var backend: BackendKind
    public var image: String
    public var config: MachineConfig
    public var createdAt: String
    public var updatedAt: String
    public var keep: Bool
    /// The per-VM process while one runs.
    public var vmm: ProcessRecord?

    public init(name: String, state: State, config: MachineConfig) {
        self.name = name
        self.state = state
        self.backend = .appleVf
        self.image = ""
        self.config = config
        self.createdAt = rfc3339Now()
        self.updatedAt = createdAt
        self.keep = true
        self.vmm = nil
    }
}

/// A process as vmkit-state records it.
public struct ProcessRecord: Codable, Equatable, Sendable {
    public var pid: Int32
    /// Opaque start time (Linux: /proc starttime; 0 where unknown), so a
    /// recycled pid is not mistaken for ours.
    public var startTime: UInt64
}

/// Exclusive access to one workspace until released (or the process dies).
public final class WorkspaceLock {
    let fd: Int32

    /// Waits up to `timeout` seconds for the lock, then fails with `busy`.
    public init(_ layout: WorkspaceLayout, timeout: TimeInterval = 120) throws {
        try privateDirectory("\(layout.stateDir)/locks")
        let fd = open(layout.lock, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw ProtocolError(.internal, "opening \(layout.lock): \(SystemError.last("open"))")
        }
        let deadline = Date().addingTimeInterval(timeout)
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            if Date() >= deadline {
                close(fd)
                throw ProtocolError(.busy, "workspace \(quoted(layout.name)) is locked by another command")
            }
            usleep(20_000)
        }
        self.fd = fd
    }

    deinit { close(fd) }
}

/// Reads and writes records; every write is atomic (temp file + rename).
public struct StateStore: Sendable {
    public let layout: WorkspaceLayout

    public init(_ layout: WorkspaceLayout) { self.layout = layout }

    public func load() throws -> WorkspaceRecord? {
        guard let data = FileManager.default.contents(atPath: layout.record) else { return nil }
        do {
            return try JSONDecoder().decode(WorkspaceRecord.self, from: data)
        } catch {
            throw ProtocolError(.internal, "\(layout.record) is not a workspace record: \(error)")
        }
    }

    public func save(_ record: WorkspaceRecord) throws {
        try privateDirectory(layout.dir)
        let tmp = "\(layout.dir)/.workspace.json.tmp.\(getpid())"
        let data = Data(encodeLine(record).utf8)
        guard FileManager.default.createFile(atPath: tmp, contents: data, attributes: [.posixPermissions: 0o600]),
              rename(tmp, layout.record) == 0
        else {
            unlink(tmp)
            throw ProtocolError(.internal, "writing \(layout.record): \(SystemError.last("rename"))")
        }
    }

    /// Appends one event as one JSON line (`O_APPEND`, one write, so
    /// concurrent writers never interleave inside a line).
    public func append(_ event: Event) throws {
        try privateDirectory(layout.dir)
        let fd = open(layout.events, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw ProtocolError(.internal, "opening \(layout.events): \(SystemError.last("open"))") }
        defer { close(fd) }
        do {
            try writeAll(fd, Array((encodeLine(event) + "\n").utf8))
        } catch {
            throw ProtocolError(.internal, "appending to \(layout.events): \(error)")
        }
    }

    /// Every event recorded so far, oldest first; unreadable lines are skipped.
    public func events() -> [Event] {
        guard let text = try? String(contentsOfFile: layout.events, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap {
            try? JSONDecoder().decode(Event.self, from: Data($0.utf8))
        }
    }

    /// Moves the record to `to` (refusing what the state machine forbids),
    /// saves it and records the event.
    @discardableResult
    public func transition(_ record: inout WorkspaceRecord, to: State, identity: Identity, detail: String) throws -> Event {
        guard record.state.canTransition(to: to) else {
            throw ProtocolError(.invalidState, "workspace \(quoted(record.name)): cannot go from \(record.state.rawValue) to \(to.rawValue)")
        }
        record.state = to
        record.updatedAt = rfc3339Now()
        if !to.hasVM { record.vmm = nil }
        try save(record)
        let event = Event(identity: identity, state: to, detail: detail)
        try append(event)
        return event
    }

    /// Removes the workspace folder and everything in it.
    public func remove() throws {
        do {
            try FileManager.default.removeItem(atPath: layout.dir)
        } catch {
            throw ProtocolError(.internal, "removing \(layout.dir): \(error)")
        }
    }
}
