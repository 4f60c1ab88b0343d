// The protocol's types, field for field as crates/vmkit-protocol spells them
// (camelCase, `requestID`/`runtimeID`). Decoding is strict like the Rust
// side's `deny_unknown_fields`: an unknown field is an error naming it.
import Foundation

/// The backends microagent knows.
public enum BackendKind: String, Codable, Sendable {
    case qemu
    case firecracker
    case appleVf = "apple-vf"
}

/// The commands of the protocol.
public enum Command: String, Codable, CaseIterable, Sendable {
    case host, check, prepare, start, run, inspect, halt, stop, kill, delete, pause, resume, snapshot

    /// Whether the command needs the full machine config.
    public var needsConfig: Bool {
        [.check, .prepare, .start, .run].contains(self)
    }

    /// Whether the command needs a state folder (from config or `stateDir`).
    public var needsStateDir: Bool { self != .host }

    /// Whether the command needs an identity (`host` needs nothing).
    public var needsIdentity: Bool { self != .host }
}

/// Who a request is for.
public struct Identity: Codable, Equatable, Sendable {
    public var requestID: String
    public var runtimeID: String
    public var role: String
    public var backend: BackendKind

    public init(requestID: String, runtimeID: String, role: String, backend: BackendKind) {
        self.requestID = requestID
        self.runtimeID = runtimeID
        self.role = role
        self.backend = backend
    }

    enum CodingKeys: String, CodingKey, CaseIterable { case requestID, runtimeID, role, backend }

    public init(from decoder: Decoder) throws {
        try rejectUnknownKeys(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        requestID = try c.decode(String.self, forKey: .requestID)
        runtimeID = try c.decode(String.self, forKey: .runtimeID)
        role = try c.decode(String.self, forKey: .role)
        backend = try decodeEnum(c, .backend)
    }
}

/// How a disk is attached.
public enum DiskMode: String, Codable, CaseIterable, Sendable { case ro, rw }

/// An extra block device for the guest.
public struct Disk: Codable, Equatable, Sendable {
    public var name: String
    public var path: String
    public var mountpoint: String
    public var mode: DiskMode

    enum CodingKeys: String, CodingKey, CaseIterable { case name, path, mountpoint, mode }

    public init(name: String, path: String, mountpoint: String, mode: DiskMode) {
        self.name = name
        self.path = path
        self.mountpoint = mountpoint
        self.mode = mode
    }

    public init(from decoder: Decoder) throws {
        try rejectUnknownKeys(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        path = try c.decode(String.self, forKey: .path)
        mountpoint = try c.decode(String.self, forKey: .mountpoint)
        mode = try decodeEnum(c, .mode)
    }
}

/// What `run` executes inside the guest.
public struct Workload: Codable, Equatable, Sendable {
    public var setup: [String]
    public var exec: String
    public var env: [String: String]
    public var cwd: String?
    public var user: String?
    public var timeoutSeconds: UInt64?

    enum CodingKeys: String, CodingKey, CaseIterable { case setup, exec, env, cwd, user, timeoutSeconds }

    public init(from decoder: Decoder) throws {
        try rejectUnknownKeys(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        setup = try c.decodeIfPresent([String].self, forKey: .setup) ?? []
        exec = try c.decode(String.self, forKey: .exec)
        env = try c.decodeIfPresent([String: String].self, forKey: .env) ?? [:]
        cwd = try c.decodeIfPresent(String.self, forKey: .cwd)
        user = try c.decodeIfPresent(String.self, forKey: .user)
        if c.contains(.timeoutSeconds), try !c.decodeNil(forKey: .timeoutSeconds) {
            timeoutSeconds = try decodeInteger(c, .timeoutSeconds)
        } else {
            timeoutSeconds = nil
        }
    }
}

/// A host folder shared with the guest (virtio-fs).
public struct Volume: Codable, Equatable, Sendable {
    public var hostPath: String
    public var guestPath: String
    public var readOnly: Bool

    enum CodingKeys: String, CodingKey, CaseIterable { case hostPath, guestPath, readOnly }

    public init(from decoder: Decoder) throws {
        try rejectUnknownKeys(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        hostPath = try c.decode(String.self, forKey: .hostPath)
        guestPath = try c.decode(String.self, forKey: .guestPath)
        readOnly = try c.decodeIfPresent(Bool.self, forKey: .readOnly) ?? false
    }
}

/// How the guest reaches the network (`public`, `allowlist`, `none`).
public enum NetworkMode: String, Codable, CaseIterable, Sendable { case `public`, allowlist, none }

/// The guest's network policy; rules are judged by microagent's network stack.
public struct Network: Codable, Equatable, Sendable {
    public var mode: NetworkMode
    public var allow: [String]
    public var deny: [String]

    enum CodingKeys: String, CodingKey, CaseIterable { case mode, allow, deny }

    public init() {
        mode = .public
        allow = []
        deny = []
    }

    public init(from decoder: Decoder) throws {
        try rejectUnknownKeys(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        mode = c.contains(.mode) ? try decodeEnum(c, .mode) : .public
        allow = try c.decodeIfPresent([String].self, forKey: .allow) ?? []
        deny = try c.decodeIfPresent([String].self, forKey: .deny) ?? []
    }
}

/// A host TCP port forwarded to a guest port.
public struct PublishedPort: Codable, Equatable, Sendable {
    public var hostIp: String
    public var hostPort: UInt16
    public var guestPort: UInt16

    enum CodingKeys: String, CodingKey, CaseIterable { case hostIp, hostPort, guestPort }

    public init(from decoder: Decoder) throws {
        try rejectUnknownKeys(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        hostIp = try c.decodeIfPresent(String.self, forKey: .hostIp) ?? "127.0.0.1"
        hostPort = try decodeInteger(c, .hostPort)
        guestPort = try decodeInteger(c, .guestPort)
    }
}

/// Everything needed to build and boot one microVM.
public struct MachineConfig: Codable, Equatable, Sendable {
    public var kernelPath: String
    public var rootfsPath: String
    public var stateDir: String
    public var memoryMiB: UInt32
    public var cpuCount: UInt32
    public var disks: [Disk]
    public var volumes: [Volume]
    public var kernelArgs: String?
    public var hostname: String?
    public var arch: String?
    public var workload: Workload?
    public var network: Network
    public var publish: [PublishedPort]

    enum CodingKeys: String, CodingKey, CaseIterable {
        case kernelPath, rootfsPath, stateDir, memoryMiB, cpuCount, disks, volumes, kernelArgs, hostname, arch,
            workload, network, publish
    }

    public init(from decoder: Decoder) throws {
        try rejectUnknownKeys(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        kernelPath = try c.decode(String.self, forKey: .kernelPath)
        rootfsPath = try c.decode(String.self, forKey: .rootfsPath)
        stateDir = try c.decode(String.self, forKey: .stateDir)
        memoryMiB = try decodeInteger(c, .memoryMiB)
        cpuCount = try decodeInteger(c, .cpuCount)
        disks = try c.decodeIfPresent([Disk].self, forKey: .disks) ?? []
        volumes = try c.decodeIfPresent([Volume].self, forKey: .volumes) ?? []
        kernelArgs = try c.decodeIfPresent(String.self, forKey: .kernelArgs)
        hostname = try c.decodeIfPresent(String.self, forKey: .hostname)
        arch = try c.decodeIfPresent(String.self, forKey: .arch)
        workload = try c.decodeIfPresent(Workload.self, forKey: .workload)
        network = try c.decodeIfPresent(Network.self, forKey: .network) ?? Network()
        publish = try c.decodeIfPresent([PublishedPort].self, forKey: .publish) ?? []
    }
}

/// One command for a backend. `identity` is absent only for `host`.
public struct Request: Codable, Equatable, Sendable {
    public var command: Command
    public var identity: Identity?
    public var config: MachineConfig?
    public var stateDir: String?
    /// The image reference the root disk was built from, recorded for listings.
    public var image: String?
    /// For `snapshot`: what to do.
    public var snapshot: SnapshotRequest?
    /// For `start` (and `prepare` of a fork): continue from this snapshot.
    public var fromSnapshot: SnapshotRef?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case command, identity, config, stateDir, image, snapshot, fromSnapshot
    }

    public init(command: Command, identity: Identity?, config: MachineConfig? = nil, stateDir: String? = nil, image: String? = nil) {
        self.command = command
        self.identity = identity
        self.config = config
        self.stateDir = stateDir
        self.image = image
    }

    public init(from decoder: Decoder) throws {
        try rejectUnknownKeys(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        command = try decodeEnum(c, .command)
        identity = try c.decodeIfPresent(Identity.self, forKey: .identity)
        config = try c.decodeIfPresent(MachineConfig.self, forKey: .config)
        stateDir = try c.decodeIfPresent(String.self, forKey: .stateDir)
        image = try c.decodeIfPresent(String.self, forKey: .image)
        snapshot = try c.decodeIfPresent(SnapshotRequest.self, forKey: .snapshot)
        fromSnapshot = try c.decodeIfPresent(SnapshotRef.self, forKey: .fromSnapshot)
    }

    /// The state folder, from `stateDir` or `config.stateDir`.
    public var resolvedStateDir: String? { stateDir ?? config?.stateDir }
}

/// The lifecycle state of a workspace's VM.
public enum State: String, Codable, CaseIterable, Sendable {
    case prepared, starting, running, paused, stopping, halted, stopped, failed, unknown

    public init(from decoder: Decoder) throws {
        // Like the Rust side's `#[serde(other)]`: a state from a newer
        // version reads as `unknown`.
        let raw = try decoder.singleValueContainer().decode(String.self)
        self = State(rawValue: raw) ?? .unknown
    }

    /// Whether `start` may be issued from this state.
    public var canStart: Bool { [.prepared, .halted, .stopped, .failed].contains(self) }

    /// Whether a VM process is expected to exist in this state.
    public var hasVM: Bool { [.starting, .running, .paused, .stopping].contains(self) }

    /// The same transitions as vmkit-protocol's state machine.
    public func canTransition(to: State) -> Bool {
        if to == .failed || to == self { return true }
        switch (self, to) {
        case (.prepared, .starting), (.halted, .starting), (.stopped, .starting), (.failed, .starting): return true
        case (.starting, .running), (.starting, .stopping), (.starting, .stopped): return true
        case (.running, .paused), (.running, .stopping), (.running, .halted), (.running, .stopped): return true
        case (.paused, .running), (.paused, .stopping), (.paused, .stopped): return true
        case (.stopping, .halted), (.stopping, .stopped): return true
        case (.unknown, .stopped): return true
        default: return false
        }
    }
}

/// A state change, as appended to `events.jsonl`.
public struct Event: Codable, Equatable, Sendable {
    public var identity: Identity
    public var state: State
    public var detail: String
    /// RFC 3339 in UTC with milliseconds.
    public var observedAt: String

    public init(identity: Identity, state: State, detail: String, observedAt: String = rfc3339Now()) {
        self.identity = identity
        self.state = state
        self.detail = detail
        self.observedAt = observedAt
    }
}

/// Machine-readable class of a failure.
public enum ErrorCode: String, Codable, Sendable {
    case invalidRequest, invalidState, notFound, alreadyExists, busy, unavailable, unsupported,
        guestFailure, timeout, `internal`
}

/// An error as it travels in a response.
public struct ProtocolError: Error, Codable, Equatable, Sendable {
    public var code: ErrorCode
    public var message: String

    public init(_ code: ErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }

    public static func invalid(_ message: String) -> ProtocolError { ProtocolError(.invalidRequest, message) }
}

/// How guest code is executed.
public enum Accelerator: String, Codable, Sendable { case kvm, tcg, hvf, none }

/// A probe's verdict.
public enum CheckStatus: String, Codable, Sendable { case ok, warn, fail }

/// One probe's verdict.
public struct CheckItem: Codable, Equatable, Sendable {
    public var name: String
    public var status: CheckStatus
    public var detail: String
    public var remedy: String?

    public init(name: String, status: CheckStatus, detail: String, remedy: String? = nil) {
        self.name = name
        self.status = status
        self.detail = detail
        self.remedy = remedy
    }
}

/// Facts about the host.
public struct HostInfo: Codable, Equatable, Sendable {
    public var os: String
    public var arch: String
    public var accelerator: Accelerator
    public var acceleratorReason: String
    public var checks: [CheckItem]

    public init(os: String, arch: String, accelerator: Accelerator, acceleratorReason: String, checks: [CheckItem]) {
        self.os = os
        self.arch = arch
        self.accelerator = accelerator
        self.acceleratorReason = acceleratorReason
        self.checks = checks
    }
}

/// The outcome of a workload.
public struct RunResult: Codable, Equatable, Sendable {
    public var exitCode: Int32?
    public var signal: Int32?
    public var startedAt: String?
    public var completedAt: String?
    public var error: String?
    public var timedOut: Bool?
}

/// A backend's answer to one request; `ok` is true iff `error` is absent.
public struct Response: Codable, Equatable, Sendable {
    public var ok: Bool
    public var backend: BackendKind
    public var event: Event?
    public var host: HostInfo?
    public var result: RunResult?
    /// Snapshots made or listed.
    public var snapshots: [SnapshotInfo]?
    public var error: ProtocolError?

    public static func success(event: Event? = nil, host: HostInfo? = nil, snapshots: [SnapshotInfo]? = nil) -> Response {
        Response(ok: true, backend: .appleVf, event: event, host: host, result: nil, snapshots: snapshots, error: nil)
    }

    public static func failure(_ error: ProtocolError) -> Response {
        Response(ok: false, backend: .appleVf, event: nil, host: nil, result: nil, snapshots: nil, error: error)
    }
}

/// Now, as RFC 3339 in UTC with milliseconds and a `Z`, as the Rust side writes it.
public func rfc3339Now() -> String {
    let f = ISO8601DateFormatter()
    f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    f.timeZone = TimeZone(identifier: "UTC")
    return f.string(from: Date())
}

/// One JSON line: compact, slashes unescaped.
public func encodeLine<T: Encodable>(_ value: T) -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.withoutEscapingSlashes, .sortedKeys]
    guard let data = try? encoder.encode(value), let text = String(data: data, encoding: .utf8) else {
        return #"{"ok":false,"backend":"apple-vf","error":{"code":"internal","message":"encoding failed"}}"#
    }
    return text
}

// MARK: - strict decoding

struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int?
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) {
        self.stringValue = String(intValue)
        self.intValue = intValue
    }
}

/// Refuses keys the type does not know, naming the first one.
func rejectUnknownKeys<K: CodingKey & CaseIterable>(_ decoder: Decoder, _: K.Type) throws {
    let c = try decoder.container(keyedBy: AnyKey.self)
    let known = K.allCases.map(\.stringValue)
    for key in c.allKeys where !known.contains(key.stringValue) {
        let expected = known.map { "`\($0)`" }.joined(separator: ", ")
        throw DecodingError.dataCorrupted(.init(
            codingPath: c.codingPath + [key],
            debugDescription: "unknown field `\(key.stringValue)`, expected one of \(expected)"))
    }
}

/// Decodes a string enum, saying which variants exist when it is not one.
func decodeEnum<E: RawRepresentable & CaseIterable, K: CodingKey>(
    _ c: KeyedDecodingContainer<K>, _ key: K
) throws -> E where E.RawValue == String {
    let raw = try c.decode(String.self, forKey: key)
    guard let value = E(rawValue: raw) else {
        let expected = E.allCases.map { "`\($0.rawValue)`" }.joined(separator: ", ")
        throw DecodingError.dataCorruptedError(
            forKey: key, in: c, debugDescription: "unknown variant `\(raw)`, expected one of \(expected)")
    }
    return value
}

/// Decodes an unsigned integer field, naming the field when the value is
/// not an integer in range (Foundation's own error for that has no path).
func decodeInteger<T: FixedWidthInteger & UnsignedInteger, K: CodingKey>(
    _ c: KeyedDecodingContainer<K>, _ key: K
) throws -> T {
    let number: Double
    do {
        number = try c.decode(Double.self, forKey: key)
    } catch DecodingError.dataCorrupted {
        throw DecodingError.dataCorruptedError(forKey: key, in: c, debugDescription: "invalid value, expected \(T.self == UInt32.self ? "u32" : "u64")")
    }
    guard number.rounded() == number, number >= 0, number < Double(T.max) + 1, let value = T(exactly: number) else {
        throw DecodingError.dataCorruptedError(
            forKey: key, in: c,
            debugDescription: "invalid value: \(number), expected \(T.self == UInt32.self ? "u32" : "u64")")
    }
    return value
}

extension BackendKind: CaseIterable {}
