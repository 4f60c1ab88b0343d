// The little of crates/vmkit-channel/PROTOCOL.md this supervisor speaks
// itself, for workspaces it runs on its own: the boot spec on the config
// disk, waiting for the guest's `ready`, asking it to `shutdown`, and the
// frames of a freeze (Freeze.swift).
// (Under the Rust apple-vf backend the Rust lifecycle speaks all of it.)
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Guest ports, as vmkit-channel's defaults.
public let defaultControlPort: UInt32 = 10000
public let defaultExecPort: UInt32 = 10001
/// Frame limit: N <= 1 MiB.
let maxFrameJSON = 1 << 20

/// The boot spec for a workspace (mode `workspace`).
public struct BootSpec: Encodable {
    public struct DiskMount: Encodable {
        public var device: String
        public var mountpoint: String
        public var readOnly: Bool
    }
    public struct Mode: Encodable { public var kind = "workspace" }
    public var hostname: String
    public var disks: [DiskMount]
    public var env: [String: String]
    public var cwd: String?
    public var user: String?
    public var mode = Mode()
    public var controlPort = defaultControlPort
    public var execPort = defaultExecPort

    /// The spec for `config` (extra disks from /dev/vdb in request order).
    public init(config: MachineConfig, name: String) {
        hostname = config.hostname ?? name
        disks = config.disks.enumerated().map { i, d in
            DiskMount(device: "/dev/vd\(diskLetter(i + 1))", mountpoint: d.mountpoint, readOnly: d.mode == .ro)
        }
        env = config.workload?.env ?? [:]
        cwd = config.workload?.cwd
        user = config.workload?.user
    }
}

/// `a` for index 0 (`/dev/vda`), `b` for 1, ...
public func diskLetter(_ index: Int) -> Character {
    Character(UnicodeScalar(UInt8(ascii: "a") + UInt8(index)))
}

/// Writes the config disk: `MAGTCFG1`, u32 big-endian length, the JSON,
/// zero padding to a multiple of 512 bytes.
public func writeConfigDisk(_ spec: BootSpec, to path: String) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.withoutEscapingSlashes, .sortedKeys]
    let json = try encoder.encode(spec)
    var bytes = Array("MAGTCFG1".utf8)
    bytes += bigEndian(UInt32(json.count))
    bytes += json
    let padded = (bytes.count + 511) / 512 * 512
    bytes += [UInt8](repeating: 0, count: padded - bytes.count)
    guard FileManager.default.createFile(atPath: path, contents: Data(bytes), attributes: [.posixPermissions: 0o600]) else {
        throw ProtocolError(.internal, "writing the config disk \(path)")
    }
}

func bigEndian(_ v: UInt32) -> [UInt8] {
    [UInt8(v >> 24), UInt8((v >> 16) & 0xff), UInt8((v >> 8) & 0xff), UInt8(v & 0xff)]
}

/// Writes one frame: u32 big-endian N, N bytes of JSON.
public func writeFrame(_ fd: Int32, json: [String: Any]) throws {
    let body = try JSONSerialization.data(withJSONObject: json)
    try writeAll(fd, bigEndian(UInt32(body.count)) + Array(body))
}

/// Reads one frame's JSON object; a payload (`len`) is read and dropped.
/// Hostile input (oversized, not an object) is an error, never a crash.
/// With a `deadline` the whole frame must arrive by then, however slowly
/// its bytes trickle in (a `.timeout` error otherwise).
public func readFrame(_ fd: Int32, until deadline: Date? = nil) throws -> [String: Any] {
    let header = try readExactly(fd, 4, until: deadline)
    let n = Int(header[0]) << 24 | Int(header[1]) << 16 | Int(header[2]) << 8 | Int(header[3])
    guard n <= maxFrameJSON else { throw ProtocolError(.guestFailure, "guest frame of \(n) bytes exceeds the limit") }
    let body = try readExactly(fd, n, until: deadline)
    guard let object = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any],
          object["type"] is String
    else { throw ProtocolError(.guestFailure, "guest frame is not a JSON object with a type") }
    if let len = object["len"] as? Int {
        guard len >= 0, len <= maxFrameJSON else { throw ProtocolError(.guestFailure, "guest payload of \(len) bytes exceeds the limit") }
        _ = try readExactly(fd, len, until: deadline)
    }
    return object
}

func readExactly(_ fd: Int32, _ n: Int, until deadline: Date? = nil) throws -> [UInt8] {
    var out = [UInt8](repeating: 0, count: n)
    var off = 0
    while off < n {
        if let deadline { try waitReadable(fd, until: deadline) }
        let got = out[off...].withUnsafeMutableBytes { readBytes(fd, $0.baseAddress, $0.count) }
        if got <= 0 { throw ProtocolError(.guestFailure, "the guest closed the channel") }
        off += got
    }
    return out
}

/// Returns once `fd` has something to read (or its end); throws `.timeout`
/// if nothing came by `deadline`.
func waitReadable(_ fd: Int32, until deadline: Date) throws {
    var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    while true {
        let left = deadline.timeIntervalSinceNow
        if left <= 0 { throw ProtocolError(.timeout, "the guest did not answer in time") }
        let rc = poll(&pfd, 1, Int32(min(left * 1000 + 1, 60_000)))
        if rc < 0 && SystemError.last("poll").errno == EINTR { continue }
        if rc != 0 { return }
    }
}
