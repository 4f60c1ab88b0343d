// The per-VM process's control socket. Virtualization.framework VMs live
// inside the process that made them, so `inspect`, `halt`, `stop`, `kill`,
// `pause`, `resume` and `save` (a snapshot's state) reach that process here: one JSON line
// in, one JSON line out per connection.
//
// Only the owner may talk to it: the socket is 0600 inside the 0700
// workspace folder, and every connection's peer user ID is checked besides,
// so a wider folder or a passed-on descriptor still cannot let another user in.
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What the control socket carries.
public struct ControlRequest: Codable, Equatable, Sendable {
    public enum Verb: String, Codable, Sendable { case inspect, halt, stop, kill, pause, resume, save }
    public var verb: Verb
    /// Seconds the guest gets to power off before the VM is stopped.
    public var graceSeconds: Double?
    /// `save`: the file the paused VM's state is written to.
    public var path: String?

    public init(verb: Verb, graceSeconds: Double? = nil, path: String? = nil) {
        self.verb = verb
        self.graceSeconds = graceSeconds
        self.path = path
    }
}

/// The per-VM process's answer.
public struct ControlResponse: Codable, Equatable, Sendable {
    public var ok: Bool
    public var state: State?
    public var detail: String?
    public var error: ProtocolError?

    public init(ok: Bool, state: State? = nil, detail: String? = nil, error: ProtocolError? = nil) {
        self.ok = ok
        self.state = state
        self.detail = detail
        self.error = error
    }
}

/// Largest control line accepted either way.
let maxControlLine = 64 * 1024

/// Serves the control socket on its own thread until `close()`.
public final class ControlServer: @unchecked Sendable {
    public let path: String
    private let listener: Int32
    private let allowedUID: uid_t
    private let handler: @Sendable (ControlRequest) -> ControlResponse

    /// Listens at `path` (its folder must be private: 0700 and ours) and
    /// answers each request with `handler`.
    public init(path: String, allowedUID: uid_t = geteuid(), handler: @escaping @Sendable (ControlRequest) -> ControlResponse) throws {
        let dir = (path as NSString).deletingLastPathComponent
        var st = stat()
        guard lstat(dir, &st) == 0, st.st_uid == geteuid(), st.st_mode & 0o077 == 0 else {
            throw ProtocolError(.internal, "refusing a control socket in \(dir): the folder must be 0700 and ours")
        }
        self.path = path
        self.allowedUID = allowedUID
        self.handler = handler
        self.listener = try listenUnix(path, mode: 0o600)
        Thread.detachNewThread { [self] in self.serve() }
    }

    private func serve() {
        while let fd = acceptConnection(listener) {
            Thread.detachNewThread { [self] in
                defer { closeDescriptor(fd) }
                guard let uid = peerUID(fd), uid == self.allowedUID else {
                    let refused = ControlResponse(ok: false, error: ProtocolError(.invalidRequest, "refused: the control socket serves only its owner"))
                    try? writeAll(fd, Array((encodeLine(refused) + "\n").utf8))
                    return
                }
                guard let line = readLine(fd, limit: maxControlLine) else { return }
                let response: ControlResponse
                if isWellFormedJSON(Data(line)),
                   let request = try? JSONDecoder().decode(ControlRequest.self, from: Data(line)) {
                    response = self.handler(request)
                } else {
                    response = ControlResponse(ok: false, error: .invalid("not a control request"))
                }
                try? writeAll(fd, Array((encodeLine(response) + "\n").utf8))
            }
        }
    }

    /// Stops listening and removes the socket.
    public func close() {
        shutdown(listener, Int32(SHUT_RDWR))
        closeDescriptor(listener)
        unlink(path)
    }
}

/// Sends one request to a per-VM process and returns its answer.
public func controlCall(_ path: String, _ request: ControlRequest) throws -> ControlResponse {
    let fd: Int32
    do {
        fd = try connectUnix(path)
    } catch {
        throw ProtocolError(.internal, "the VM's process does not answer on \(path): \(error)")
    }
    defer { closeDescriptor(fd) }
    try writeAll(fd, Array((encodeLine(request) + "\n").utf8))
    guard let line = readLine(fd, limit: maxControlLine), isWellFormedJSON(Data(line)),
          let response = try? JSONDecoder().decode(ControlResponse.self, from: Data(line))
    else {
        throw ProtocolError(.internal, "the VM's process sent no control response on \(path)")
    }
    return response
}

/// `close(2)`, named so it does not collide with methods called `close`.
@inline(__always) func closeDescriptor(_ fd: Int32) {
    #if canImport(Glibc)
    _ = Glibc.close(fd)
    #else
    _ = Darwin.close(fd)
    #endif
}
