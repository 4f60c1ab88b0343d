// The VM's end of the network link, against a stand-in for microagent's
// datagram frontend that behaves as `microagent-net` does: it is bound
// first, and answers whoever sent a frame, at the sender's bound path.
@testable import AppleVFCore
import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

final class NetworkLinkTests: XCTestCase {
    func testTheVMsEndIsBoundConnectedAndSizedAsTheFrameworkWants() throws {
        let dir = makeTempDir()
        defer { removeTree(dir) }
        let stack = socket(AF_UNIX, datagramSocket, 0)
        XCTAssertGreaterThanOrEqual(stack, 0)
        defer { close(stack) }
        XCTAssertEqual(try withSocketAddress("\(dir)/n.sock") { bind(stack, $0, $1) }, 0)

        let vm = try connectedDatagramSocket(bindPath: "\(dir)/nv.sock", peerPath: "\(dir)/n.sock")
        defer { close(vm) }
        // The socket file is the owner's only.
        var st = stat()
        XCTAssertEqual(lstat("\(dir)/nv.sock", &st), 0)
        XCTAssertEqual(st.st_mode & 0o077, 0)
        // SO_RCVBUF at least twice SO_SNDBUF (Linux reports doubled values;
        // the ratio holds either way).
        var snd: Int32 = 0, rcv: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        XCTAssertEqual(getsockopt(vm, SOL_SOCKET, SO_SNDBUF, &snd, &len), 0)
        XCTAssertEqual(getsockopt(vm, SOL_SOCKET, SO_RCVBUF, &rcv, &len), 0)
        XCTAssertGreaterThanOrEqual(rcv, 2 * snd)

        // A frame out: one datagram, from the bound path.
        let frame = [UInt8](repeating: 0xab, count: 1514)
        XCTAssertEqual(frame.withUnsafeBytes { send(vm, $0.baseAddress, $0.count, 0) }, 1514)
        var buf = [UInt8](repeating: 0, count: 9022)
        var from = sockaddr_un()
        var fromLen = socklen_t(MemoryLayout<sockaddr_un>.size)
        let n = withUnsafeMutablePointer(to: &from) { addr in
            addr.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                buf.withUnsafeMutableBytes { recvfrom(stack, $0.baseAddress, $0.count, 0, sa, &fromLen) }
            }
        }
        XCTAssertEqual(n, 1514)
        let sender = withUnsafeBytes(of: &from.sun_path) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        XCTAssertEqual(sender, "\(dir)/nv.sock")

        // The stack's answer, sent to that path, arrives whole.
        let reply = [UInt8](repeating: 0xcd, count: 60)
        let sent = try withSocketAddress(sender) { addr, addrLen in
            reply.withUnsafeBytes { sendto(stack, $0.baseAddress, $0.count, 0, addr, addrLen) }
        }
        XCTAssertEqual(sent, 60)
        let got = buf.withUnsafeMutableBytes { recv(vm, $0.baseAddress, $0.count, 0) }
        XCTAssertEqual(got, 60)
        XCTAssertEqual(Array(buf[0..<60]), reply)
    }

    func testAMissingStackIsAnErrorAndLeavesNoSocket() {
        let dir = makeTempDir()
        defer { removeTree(dir) }
        XCTAssertThrowsError(try connectedDatagramSocket(bindPath: "\(dir)/nv.sock", peerPath: "\(dir)/absent.sock")) {
            XCTAssertTrue("\($0)".contains("connect \(dir)/absent.sock"), "\($0)")
        }
    }

    func testThePlanCarriesTheNICAndVolumesTheRustBackendWrites() throws {
        // The shape `VmPlan::for_boot` writes (crates/backend-apple-vf).
        let json = """
        {"kernelPath":"/k/Image","commandLine":"console=hvc0","disks":[],"cpuCount":1,"memoryMiB":256,
         "vsockPath":"/w/v.sock","hostPorts":[10000],"consoleLog":"/w/console.log","consoleLimitBytes":1048576,
         "controlSocket":"/w/vm-control.sock",
         "network":{"stackSocket":"/w/n.sock","vmSocket":"/w/nv.sock","macAddress":"52:54:00:12:34:56"},
         "volumes":[{"tag":"vol0","path":"/src","readOnly":true}]}
        """
        let plan = try JSONDecoder().decode(VMPlan.self, from: Data(json.utf8))
        XCTAssertEqual(plan.network, PlanNetwork(stackSocket: "/w/n.sock", vmSocket: "/w/nv.sock", macAddress: "52:54:00:12:34:56"))
        XCTAssertEqual(plan.volumes, [PlanVolume(tag: "vol0", path: "/src", readOnly: true)])
        XCTAssertEqual(plan.controlSocket, "/w/vm-control.sock")
    }
}
