// The hybrid-vsock bridge against the stand-in device: host-initiated
// `CONNECT <port>` reaches a guest port and bytes flow both ways; a
// guest-initiated connection reaches `<uds>_<port>`; bad input is refused.
@testable import AppleVFCore
import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

final class BridgeTests: XCTestCase {
    var dir = ""
    var device: StandInVsock!
    var bridge: HybridVsockBridge!

    override func setUp() {
        dir = makeTempDir()
        device = StandInVsock(dir: dir)
        bridge = HybridVsockBridge(device: device, udsPath: "\(dir)/v.sock")
    }

    override func tearDown() {
        bridge.stop()
        removeTree(dir)
    }

    func testHostConnectReachesTheGuestPortBothWays() throws {
        let guestListener = try listenUnix(device.guestPortPath(5000))
        defer { close(guestListener) }
        try bridge.start(hostPorts: [])
        let host = try connectUnix("\(dir)/v.sock")
        defer { close(host) }
        send(host, "CONNECT 5000\n")
        let guest = try XCTUnwrap(acceptWithin(guestListener, seconds: 10))
        defer { close(guest) }
        XCTAssertEqual(readLine(host, limit: 64).map { String(decoding: $0, as: UTF8.self) }, "OK 5000")
        send(host, "to guest")
        XCTAssertEqual(String(decoding: readN(guest, 8), as: UTF8.self), "to guest")
        send(guest, "to host!")
        XCTAssertEqual(String(decoding: readN(host, 8), as: UTF8.self), "to host!")
        // A half-close passes through: the guest sees end-of-file.
        shutdown(host, Int32(SHUT_WR))
        XCTAssertEqual(readN(guest, 1), [])
    }

    func testGuestConnectionReachesTheHostListener() throws {
        let hostListener = try listenUnix("\(dir)/v.sock_10000")
        defer { close(hostListener) }
        try bridge.start(hostPorts: [10000])
        let guest = try XCTUnwrap(device.guestDial(10000), "the bridge listens on host port 10000")
        defer { close(guest) }
        let host = try XCTUnwrap(acceptWithin(hostListener, seconds: 10))
        defer { close(host) }
        send(guest, "ready")
        XCTAssertEqual(String(decoding: readN(host, 5), as: UTF8.self), "ready")
        send(host, "ack")
        XCTAssertEqual(String(decoding: readN(guest, 3), as: UTF8.self), "ack")
        XCTAssertNil(device.guestDial(10001), "ports not named are not listened on")
    }

    func testRefusesBadLinesAndPortsNobodyListensOn() throws {
        try bridge.start(hostPorts: [])
        for line in ["CONNECT 5001\n", "CONNECT\n", "CONNECT -1\n", "CONNECT 99999999999\n", "HELLO 1\n",
                     "CONNECT 1 2\n", String(repeating: "C", count: 100) + "\n"] {
            let host = try connectUnix("\(dir)/v.sock")
            send(host, line)
            XCTAssertEqual(readN(host, 1), [], "\(line.prefix(20)): closed without OK")
            close(host)
        }
    }

    func testParseConnect() {
        XCTAssertEqual(HybridVsockBridge.parseConnect(Array("CONNECT 10001".utf8)), 10001)
        XCTAssertEqual(HybridVsockBridge.parseConnect(Array("CONNECT 4294967295".utf8)), UInt32.max)
        XCTAssertNil(HybridVsockBridge.parseConnect(Array("CONNECT 4294967296".utf8)))
        XCTAssertNil(HybridVsockBridge.parseConnect(Array("CONNECT +1".utf8)))
        XCTAssertNil(HybridVsockBridge.parseConnect(Array("connect 1".utf8)))
    }

    func testSocketIsOwnerOnly() throws {
        try bridge.start(hostPorts: [])
        var st = stat()
        XCTAssertEqual(stat("\(dir)/v.sock", &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600)
    }
}
