// The few POSIX calls the core needs (Unix sockets, peer credentials, byte
// pumps), the same on Linux and macOS.
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An errno-carrying failure of a system call.
public struct SystemError: Error, CustomStringConvertible, Sendable {
    public let call: String
    public let errno: Int32
    public var description: String { "\(call): \(String(cString: strerror(errno)))" }

    static func last(_ call: String) -> SystemError {
        #if canImport(Glibc)
        return SystemError(call: call, errno: Glibc.errno)
        #else
        return SystemError(call: call, errno: Darwin.errno)
        #endif
    }
}

#if canImport(Glibc)
let streamSocket = Int32(SOCK_STREAM.rawValue)
let datagramSocket = Int32(SOCK_DGRAM.rawValue)
#else
let streamSocket = SOCK_STREAM
let datagramSocket = SOCK_DGRAM
#endif

/// Longest Unix socket path `sockaddr_un` holds (with its NUL).
public let maxSocketPath = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1

func withSocketAddress<T>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> T) throws -> T {
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count <= maxSocketPath else {
        throw SystemError(call: "socket path \(path) is longer than \(maxSocketPath) bytes", errno: ENAMETOOLONG)
    }
    withUnsafeMutableBytes(of: &addr.sun_path) { raw in
        raw.copyBytes(from: bytes)
        raw[bytes.count] = 0
    }
    return withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            body($0, socklen_t(MemoryLayout<sockaddr_un>.size))
        }
    }
}

/// Listens on a Unix socket at `path` (replacing a stale one) with the
/// given file mode. The mode is set by umask at bind time, so no other user
/// ever sees a wider socket.
public func listenUnix(_ path: String, mode: mode_t = 0o600, backlog: Int32 = 16) throws -> Int32 {
    let fd = socket(AF_UNIX, streamSocket, 0)
    guard fd >= 0 else { throw SystemError.last("socket") }
    unlink(path)
    let old = umask(~mode & 0o777)
    let rc = try withSocketAddress(path) { bind(fd, $0, $1) }
    umask(old)
    guard rc == 0 else {
        let e = SystemError.last("bind \(path)")
        close(fd)
        throw e
    }
    guard listen(fd, backlog) == 0 else {
        let e = SystemError.last("listen \(path)")
        close(fd)
        throw e
    }
    return fd
}

/// Connects to the Unix socket at `path`.
public func connectUnix(_ path: String) throws -> Int32 {
    let fd = socket(AF_UNIX, streamSocket, 0)
    guard fd >= 0 else { throw SystemError.last("socket") }
    let rc = try withSocketAddress(path) { connect(fd, $0, $1) }
    guard rc == 0 else {
        let e = SystemError.last("connect \(path)")
        close(fd)
        throw e
    }
    return fd
}

/// Accepts one connection, retrying on EINTR; nil once the listener is closed.
public func acceptConnection(_ listener: Int32) -> Int32? {
    while true {
        let fd = accept(listener, nil, nil)
        if fd >= 0 { return fd }
        let e = SystemError.last("accept")
        if e.errno == EINTR { continue }
        return nil
    }
}

/// The user ID of the process at the other end of a Unix socket.
public func peerUID(_ fd: Int32) -> uid_t? {
    #if canImport(Glibc)
    // struct ucred { pid_t pid; uid_t uid; gid_t gid; } (Glibc hides the
    // type without _GNU_SOURCE, so it is spelled out here).
    var cred: (Int32, UInt32, UInt32) = (0, 0, 0)
    var len = socklen_t(MemoryLayout<(Int32, UInt32, UInt32)>.size)
    guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0, len == 12 else { return nil }
    return cred.1
    #else
    var uid: uid_t = 0
    var gid: gid_t = 0
    guard getpeereid(fd, &uid, &gid) == 0 else { return nil }
    return uid
    #endif
}

/// Writes every byte or throws.
public func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws {
    var off = 0
    while off < bytes.count {
        let n = bytes[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if n < 0 {
            let e = SystemError.last("write")
            if e.errno == EINTR { continue }
            throw e
        }
        off += n
    }
}

/// Reads one `\n`-terminated line of at most `limit` bytes, byte by byte so
/// nothing after the line is consumed (the stream continues as raw bytes).
/// nil on EOF before a newline or when the line is too long.
public func readLine(_ fd: Int32, limit: Int) -> [UInt8]? {
    var line = [UInt8]()
    var byte: UInt8 = 0
    while line.count <= limit {
        let n = read(fd, &byte, 1)
        if n < 0 && SystemError.last("read").errno == EINTR { continue }
        if n <= 0 { return nil }
        if byte == UInt8(ascii: "\n") { return line }
        line.append(byte)
    }
    return nil
}

/// Reads until EOF, refusing more than `limit` bytes (nil then).
public func readAll(_ fd: Int32, limit: Int) -> [UInt8]? {
    var out = [UInt8]()
    var buf = [UInt8](repeating: 0, count: 64 * 1024)
    while true {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 && SystemError.last("read").errno == EINTR { continue }
        if n <= 0 { return out }
        out.append(contentsOf: buf[0..<n])
        if out.count > limit { return nil }
    }
}

/// Copies bytes both ways between two connected sockets until both
/// directions reach end-of-file, then closes both. Each direction passes on
/// its EOF with `shutdown(SHUT_WR)`, so half-closes survive the bridge.
public func pump(_ a: Int32, _ b: Int32, onDone: (@Sendable () -> Void)? = nil) {
    let group = DispatchGroup()
    for (from, to) in [(a, b), (b, a)] {
        group.enter()
        Thread.detachNewThread {
            copyUntilEOF(from: from, to: to)
            shutdown(to, Int32(SHUT_WR))
            group.leave()
        }
    }
    Thread.detachNewThread {
        group.wait()
        close(a)
        close(b)
        onDone?()
    }
}

func copyUntilEOF(from: Int32, to: Int32) {
    var buf = [UInt8](repeating: 0, count: 64 * 1024)
    while true {
        let n = buf.withUnsafeMutableBytes { read(from, $0.baseAddress, $0.count) }
        if n < 0 && SystemError.last("read").errno == EINTR { continue }
        if n <= 0 { return }
        if (try? writeAll(to, Array(buf[0..<n]))) == nil { return }
    }
}

/// Creates `path` (and parents) as a folder only its owner can enter, and
/// refuses one another user owns or others can write.
public func privateDirectory(_ path: String) throws {
    try FileManager.default.createDirectory(
        atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
    var st = stat()
    guard lstat(path, &st) == 0 else { throw SystemError.last("stat \(path)") }
    guard (st.st_mode & S_IFMT) == S_IFDIR else {
        throw SystemError(call: "\(path) is not a folder", errno: ENOTDIR)
    }
    guard st.st_uid == geteuid() else {
        throw SystemError(call: "\(path) belongs to another user", errno: EPERM)
    }
    if st.st_mode & 0o077 != 0 { chmod(path, 0o700) }
}

/// `read(2)`, retrying on EINTR.
func readBytes(_ fd: Int32, _ buf: UnsafeMutableRawPointer?, _ count: Int) -> Int {
    while true {
        let n = read(fd, buf, count)
        if n < 0 && SystemError.last("read").errno == EINTR { continue }
        return n
    }
}

/// Accepts one connection within `seconds`; nil on timeout or error.
public func acceptWithin(_ listener: Int32, seconds: Double) -> Int32? {
    var pfd = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
    let deadline = Date().addingTimeInterval(seconds)
    while true {
        let left = Int32(max(0, deadline.timeIntervalSinceNow) * 1000)
        let rc = poll(&pfd, 1, left)
        if rc < 0 && SystemError.last("poll").errno == EINTR { continue }
        if rc <= 0 { return nil }
        return acceptConnection(listener)
    }
}
