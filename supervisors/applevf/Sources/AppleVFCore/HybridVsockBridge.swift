// Firecracker's hybrid-vsock convention on top of a VM's vsock device, so
// the Rust host channel and lifecycle drive a macOS guest exactly as they
// drive a QEMU or Firecracker one:
//
// - host -> guest: a client connects to the Unix socket `uds`, writes
//   `CONNECT <port>\n`, reads `OK <n>\n`; from then on the stream is the
//   guest's port. A port nobody listens on closes the connection instead.
// - guest -> host: a guest connection to host port P is handed to the Unix
//   socket `<uds>_P`, which the host must be listening on.
//
// Virtualization.framework listens for guest connections per port
// (`setSocketListener(_:forPort:)`), so the guest -> host ports are named
// up front (`hostPorts`); Linux's vhost-device-vsock forwards any port.
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One vsock stream as a file descriptor the bridge owns (and closes).
/// `owner` keeps alive whatever object backs it (a VZVirtioSocketConnection)
/// until the bridge is done with it.
public struct VsockStream: @unchecked Sendable {
    public let fd: Int32
    public let owner: AnyObject?

    public init(fd: Int32, owner: AnyObject? = nil) {
        self.fd = fd
        self.owner = owner
    }
}

/// A VM's vsock device as the bridge needs it: VZVirtioSocketDevice on
/// macOS, a stand-in in tests.
public protocol VsockDevice: AnyObject {
    /// Opens a stream to the guest's `port`; fails if nobody listens there.
    func connect(toGuestPort port: UInt32, completion: @escaping @Sendable (Result<VsockStream, Error>) -> Void)
    /// Calls `accept` for each connection the guest makes to host port `port`.
    func listen(onHostPort port: UInt32, accept: @escaping @Sendable (VsockStream) -> Void)
}

/// Serves the hybrid-vsock Unix socket for one VM.
public final class HybridVsockBridge: @unchecked Sendable {
    public let udsPath: String
    private let device: VsockDevice
    private var listener: Int32 = -1
    /// `CONNECT 4294967295` is the longest valid line.
    private static let maxConnectLine = 32

    public init(device: VsockDevice, udsPath: String) {
        self.device = device
        self.udsPath = udsPath
    }

    /// Listens on `udsPath` for host-initiated streams and forwards guest
    /// connections to each of `hostPorts` to `<udsPath>_<port>`.
    public func start(hostPorts: [UInt32]) throws {
        listener = try listenUnix(udsPath, mode: 0o600)
        let listener = self.listener
        Thread.detachNewThread { [self] in
            while let client = acceptConnection(listener) {
                Thread.detachNewThread { self.serveHostConnection(client) }
            }
        }
        for port in hostPorts {
            let target = "\(udsPath)_\(port)"
            device.listen(onHostPort: port) { stream in
                guard let host = try? connectUnix(target) else {
                    // Nobody listens on the host side: the guest sees a reset.
                    closeDescriptor(stream.fd)
                    return
                }
                pump(stream.fd, host) { withExtendedLifetime(stream.owner) {} }
            }
        }
    }

    /// Stops accepting host connections and removes the socket; streams
    /// already bridged run on until either end closes.
    public func stop() {
        guard listener >= 0 else { return }
        shutdown(listener, Int32(SHUT_RDWR))
        closeDescriptor(listener)
        listener = -1
        unlink(udsPath)
    }

    private func serveHostConnection(_ client: Int32) {
        guard let line = readLine(client, limit: Self.maxConnectLine),
              let port = Self.parseConnect(line)
        else {
            closeDescriptor(client)
            return
        }
        device.connect(toGuestPort: port) { result in
            switch result {
            case .success(let stream):
                do {
                    try writeAll(client, Array("OK \(port)\n".utf8))
                } catch {
                    closeDescriptor(client)
                    closeDescriptor(stream.fd)
                    return
                }
                pump(client, stream.fd) { withExtendedLifetime(stream.owner) {} }
            case .failure:
                closeDescriptor(client)
            }
        }
    }

    /// `CONNECT <port>` with a decimal u32 port and nothing else.
    static func parseConnect(_ line: [UInt8]) -> UInt32? {
        guard let text = String(bytes: line, encoding: .utf8), text.hasPrefix("CONNECT ") else { return nil }
        let digits = text.dropFirst("CONNECT ".count)
        guard !digits.isEmpty, digits.count <= 10, digits.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
        return UInt32(digits)
    }
}
