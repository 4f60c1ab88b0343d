// Parsing and validation with the same error codes, field paths and
// messages as vmkit-protocol's `Request::from_json` and `validate`, so a
// caller gets the same answer from either supervisor (the conformance kit,
// scripts/supervisor-conformance, checks it).
import Foundation

/// Largest request accepted; anything bigger is refused before parsing.
public let maxRequestBytes = 1 << 20

let minMemoryMiB: UInt32 = 64
let maxMemoryMiB: UInt32 = 1 << 20
let maxCPUs: UInt32 = 255
let maxDisks = 16

/// Parses and validates one request. Errors carry the JSON path of the
/// offending field (`config.disks[1].mode: unknown variant ...`).
public func parseRequest(_ bytes: [UInt8]) -> Result<Request, ProtocolError> {
    if bytes.count > maxRequestBytes {
        return .failure(.invalid("request exceeds the \(maxRequestBytes)-byte limit"))
    }
    let data = Data(bytes)
    guard isWellFormedJSON(data) else {
        return .failure(.invalid("malformed request: not valid JSON"))
    }
    let request: Request
    do {
        request = try JSONDecoder().decode(Request.self, from: data)
    } catch let error as DecodingError {
        return .failure(describe(error))
    } catch {
        return .failure(.invalid("malformed request: \(error)"))
    }
    if let error = validate(request) { return .failure(error) }
    return .success(request)
}

/// Whether `data` is one well-formed JSON text. Untrusted JSON is checked
/// with this before JSONDecoder sees it: Foundation's JSONDecoder
/// (swift-foundation 6.0) traps on some malformed strings (an unescaped
/// control character reached through a keyed container) instead of
/// throwing, while JSONSerialization rejects them cleanly. Found by
/// MutationTests.
public func isWellFormedJSON(_ data: Data) -> Bool {
    (try? JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])) != nil
}

/// `config.disks[1].mode`, as serde_path_to_error spells a path.
func pathString(_ path: [CodingKey]) -> String {
    var out = ""
    for key in path {
        if let i = key.intValue {
            out += "[\(i)]"
        } else {
            if !out.isEmpty { out += "." }
            out += key.stringValue
        }
    }
    return out
}

func describe(_ error: DecodingError) -> ProtocolError {
    func located(_ path: [CodingKey], _ what: String) -> ProtocolError {
        let p = pathString(path)
        return .invalid(p.isEmpty ? "malformed request: \(what)" : "\(p): \(what)")
    }
    switch error {
    case .keyNotFound(let key, let ctx):
        return located(ctx.codingPath, "missing field `\(key.stringValue)`")
    case .typeMismatch(let type, let ctx):
        return located(ctx.codingPath, "invalid type, expected \(wireName(type))")
    case .valueNotFound(let type, let ctx):
        return located(ctx.codingPath, "invalid type: null, expected \(wireName(type))")
    case .dataCorrupted(let ctx):
        if ctx.codingPath.isEmpty {
            return .invalid("malformed request: not a JSON object (\(ctx.debugDescription))")
        }
        return located(ctx.codingPath, ctx.debugDescription)
    @unknown default:
        return .invalid("malformed request: \(error)")
    }
}

func wireName(_ type: Any.Type) -> String {
    switch type {
    case is String.Type: return "a string"
    case is UInt32.Type: return "u32"
    case is UInt64.Type: return "u64"
    case is [String].Type: return "a sequence"
    case is [String: String].Type: return "a map"
    default: return "a JSON object (\(type))"
    }
}

/// Longest image reference a request may carry (vmkit-protocol's MAX_IMAGE_REF_BYTES).
public let maxImageRefBytes = 4096
/// Longest workload deadline, 30 days (vmkit-protocol's MAX_TIMEOUT_SECONDS).
public let maxTimeoutSeconds: UInt64 = 30 * 24 * 3600

/// Checks everything decoding cannot: identity, config ranges, and that the
/// command has what it needs.
public func validate(_ request: Request) -> ProtocolError? {
    if let identity = request.identity {
        if let e = validate(identity) { return e }
    } else if request.command.needsIdentity {
        return .invalid("malformed request: missing field `identity`")
    }
    if let config = request.config, let e = validate(config) { return e }
    if request.command.needsConfig && request.config == nil {
        return .invalid("command \(request.command.rawValue) needs config")
    }
    if request.command.needsStateDir && request.resolvedStateDir == nil {
        return .invalid("command \(request.command.rawValue) needs stateDir (or config.stateDir)")
    }
    if let image = request.image {
        if image.isEmpty || image.utf8.count > maxImageRefBytes {
            return .invalid("image must be 1-\(maxImageRefBytes) bytes, got \(image.utf8.count)")
        }
        if image.unicodeScalars.contains(where: { CharacterSet.controlCharacters.contains($0) }) {
            return .invalid("image must not contain control characters")
        }
    }
    if let dir = request.stateDir, !dir.hasPrefix("/") {
        return .invalid("stateDir must be an absolute path, got \(quoted(dir))")
    }
    if request.command == .run, let c = request.config, c.workload == nil {
        return .invalid("command run needs config.workload")
    }
    switch (request.snapshot, request.command) {
    case (nil, .snapshot):
        return .invalid("command snapshot needs snapshot")
    case (let s?, .snapshot):
        if let e = validate(s) { return e }
    case (.some, _):
        return .invalid("snapshot is only for command snapshot")
    default:
        break
    }
    if let from = request.fromSnapshot {
        if request.command != .start && request.command != .prepare {
            return .invalid("fromSnapshot is only for commands start and prepare")
        }
        if let e = validateRuntimeID(from.runtimeID) {
            return .invalid(e.message.replacingOccurrences(of: "identity.runtimeID", with: "fromSnapshot.runtimeID"))
        }
        if let e = validateTag(from.tag) { return e }
    }
    return nil
}

func validate(_ s: SnapshotRequest) -> ProtocolError? {
    switch (s.tag, s.action) {
    case (nil, .create), (nil, .delete):
        return .invalid("snapshot.tag is required for create and delete")
    case (let tag?, _):
        if let e = validateTag(tag) { return e }
    default:
        break
    }
    if s.diskOnly && s.action != .create {
        return .invalid("snapshot.diskOnly applies to create only")
    }
    return nil
}

/// A snapshot tag: 1-64 letters, digits, `-`, `_` or `.`, starting alphanumeric.
func validateTag(_ tag: String) -> ProtocolError? {
    if isFolderName(tag, max: 64) { return nil }
    return .invalid(
        "snapshot tag must be 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit; got \(quoted(tag))")
}

/// 1-`max` letters, digits, `-`, `_` or `.`, starting with a letter or digit.
func isFolderName(_ name: String, max: Int) -> Bool {
    let bytes = Array(name.utf8)
    return !bytes.isEmpty && bytes.count <= max && isAlnum(bytes[0])
        && bytes.allSatisfy { isAlnum($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ".") }
}

func validate(_ identity: Identity) -> ProtocolError? {
    if let e = validateRuntimeID(identity.runtimeID) { return e }
    if identity.requestID.isEmpty || identity.requestID.utf8.count > 128 {
        return .invalid("identity.requestID must be 1-128 characters")
    }
    if identity.role.utf8.count > 64 {
        return .invalid("identity.role must be at most 64 characters")
    }
    return nil
}

/// A workspace name: 1-63 of `[A-Za-z0-9-_.]`, starting alphanumeric, so it
/// is safe as a folder name and a hostname.
public func validateRuntimeID(_ id: String) -> ProtocolError? {
    if isFolderName(id, max: 63) { return nil }
    return .invalid(
        "identity.runtimeID must be 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit; got \(quoted(id))")
}

func validate(_ c: MachineConfig) -> ProtocolError? {
    if let e = absolute("config.kernelPath", c.kernelPath) { return e }
    if let e = absolute("config.rootfsPath", c.rootfsPath) { return e }
    if let e = absolute("config.stateDir", c.stateDir) { return e }
    if !(minMemoryMiB...maxMemoryMiB).contains(c.memoryMiB) {
        return .invalid("config.memoryMiB must be between \(minMemoryMiB) and \(maxMemoryMiB), got \(c.memoryMiB)")
    }
    if !(1...maxCPUs).contains(c.cpuCount) {
        return .invalid("config.cpuCount must be between 1 and \(maxCPUs), got \(c.cpuCount)")
    }
    if c.disks.count > maxDisks {
        return .invalid("config.disks has \(c.disks.count) entries; at most \(maxDisks) are supported")
    }
    var names = Set<String>()
    var mountpoints = Set<String>()
    for (i, disk) in c.disks.enumerated() {
        if let e = validate(disk, i) { return e }
        if !names.insert(disk.name).inserted {
            return .invalid("disks[\(i)].name \(quoted(disk.name)) is used by an earlier disk")
        }
        if !mountpoints.insert(disk.mountpoint).inserted {
            return .invalid("disks[\(i)].mountpoint \(quoted(disk.mountpoint)) is used by an earlier disk")
        }
    }
    if let args = c.kernelArgs, args.contains("\n") || args.contains("\0") {
        return .invalid("config.kernelArgs must be a single line")
    }
    if let arch = c.arch, arch != "x86_64" && arch != "aarch64" {
        return .invalid("config.arch must be x86_64 or aarch64, got \(quoted(arch))")
    }
    if let w = c.workload {
        if w.exec.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
            return .invalid("workload.exec must not be empty")
        }
        for key in w.env.keys.sorted() where key.isEmpty || key.contains("=") || key.contains("\0") {
            return .invalid("workload.env key \(quoted(key)) must be non-empty without '=' or NUL")
        }
        if let cwd = w.cwd, let e = absolute("workload.cwd", cwd) { return e }
        if let t = w.timeoutSeconds, t < 1 || t > maxTimeoutSeconds {
            return .invalid("workload.timeoutSeconds must be between 1 and \(maxTimeoutSeconds) (30 days), got \(t)")
        }
    }
    return nil
}

func validate(_ d: Disk, _ i: Int) -> ProtocolError? {
    let bytes = Array(d.name.utf8)
    let nameOK = !bytes.isEmpty && bytes.count <= 64
        && bytes.allSatisfy { isAlnum($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") }
    if !nameOK {
        return .invalid("disks[\(i)].name must be 1-64 letters, digits, '-' or '_', got \(quoted(d.name))")
    }
    if let e = absolute("disks[\(i)].path", d.path) { return e }
    if let e = absolute("disks[\(i)].mountpoint", d.mountpoint) { return e }
    if d.mountpoint == "/" || d.mountpoint.split(separator: "/", omittingEmptySubsequences: false).contains("..") {
        return .invalid("disks[\(i)].mountpoint must be a directory below / without '..', got \(quoted(d.mountpoint))")
    }
    return nil
}

func absolute(_ field: String, _ path: String) -> ProtocolError? {
    if !path.hasPrefix("/") { return .invalid("\(field) must be an absolute path, got \(quoted(path))") }
    if path.contains("\0") { return .invalid("\(field) must not contain NUL") }
    return nil
}

func isAlnum(_ b: UInt8) -> Bool {
    (b >= 48 && b <= 57) || (b >= 65 && b <= 90) || (b >= 97 && b <= 122)
}

/// A string quoted the way Rust's `{:?}` quotes it (close enough for
/// messages: quotes and backslashes escaped).
func quoted(_ s: String) -> String {
    var out = "\""
    for ch in s.unicodeScalars {
        switch ch {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\0": out += "\\0"
        default: out.unicodeScalars.append(ch)
        }
    }
    return out + "\""
}
