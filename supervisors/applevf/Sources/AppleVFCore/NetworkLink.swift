// The VM's end of its network link: a Unix datagram socket bound at the
// plan's `vmSocket` and connected to microagent's network stack (the
// `microagent-net` helper's datagram frontend, which answers whoever sent
// the first frame from a bound path). Virtualization.framework takes it as
// the file handle of a VZFileHandleNetworkDeviceAttachment, which must be
// a connected datagram socket: one datagram is one Ethernet frame. No
// frames are copied here; the framework reads and writes the socket.
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Buffer sizes of the VM's end. Apple's documentation of
/// `maximumTransmissionUnit`: SO_RCVBUF at least twice SO_SNDBUF, four
/// times recommended.
public let networkSendBuffer: Int32 = 1 << 20
public let networkReceiveBuffer: Int32 = 4 << 20

/// Binds a datagram socket at `bindPath` (0600, replacing a stale one) and
/// connects it to `peerPath`. Returns the descriptor.
public func connectedDatagramSocket(bindPath: String, peerPath: String) throws -> Int32 {
    let fd = socket(AF_UNIX, datagramSocket, 0)
    guard fd >= 0 else { throw SystemError.last("socket") }
    do {
        unlink(bindPath)
        let old = umask(0o177)
        let bound = try withSocketAddress(bindPath) { bind(fd, $0, $1) }
        umask(old)
        guard bound == 0 else { throw SystemError.last("bind \(bindPath)") }
        guard try withSocketAddress(peerPath, { connect(fd, $0, $1) }) == 0 else {
            throw SystemError.last("connect \(peerPath)")
        }
        for (option, value) in [(SO_SNDBUF, networkSendBuffer), (SO_RCVBUF, networkReceiveBuffer)] {
            var v = value
            guard setsockopt(fd, SOL_SOCKET, option, &v, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
                throw SystemError.last("setsockopt")
            }
        }
        return fd
    } catch {
        close(fd)
        throw error
    }
}
