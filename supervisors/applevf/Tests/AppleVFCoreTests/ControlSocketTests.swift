// The control socket: owner-only permissions, peer credentials checked,
// one request answered per connection, hostile lines refused.
@testable import AppleVFCore
import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

final class ControlSocketTests: XCTestCase {
    func testAnswersTheOwnerAndIsMode0600() throws {
        let dir = makeTempDir()
        defer { removeTree(dir) }
        let server = try ControlServer(path: "\(dir)/control.sock") { request in
            ControlResponse(ok: true, state: .running, detail: request.verb.rawValue)
        }
        defer { server.close() }
        var st = stat()
        XCTAssertEqual(stat("\(dir)/control.sock", &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600)
        let answer = try controlCall("\(dir)/control.sock", ControlRequest(verb: .inspect))
        XCTAssertEqual(answer, ControlResponse(ok: true, state: .running, detail: "inspect"))
    }

    func testRefusesAPeerThatIsNotTheAllowedUser() throws {
        let dir = makeTempDir()
        defer { removeTree(dir) }
        let called = Box(false)
        let server = try ControlServer(path: "\(dir)/c.sock", allowedUID: geteuid() &+ 1) { _ in
            called.value = true
            return ControlResponse(ok: true)
        }
        defer { server.close() }
        let answer = try controlCall("\(dir)/c.sock", ControlRequest(verb: .kill))
        XCTAssertFalse(answer.ok)
        XCTAssertTrue(answer.error?.message.contains("only its owner") ?? false, "\(answer)")
        XCTAssertFalse(called.value, "the handler never ran for another user")
    }

    func testRefusesAFolderOthersCanEnter() throws {
        let dir = makeTempDir()
        defer { removeTree(dir) }
        chmod(dir, 0o755)
        XCTAssertThrowsError(try ControlServer(path: "\(dir)/c.sock") { _ in ControlResponse(ok: true) }) {
            XCTAssertTrue("\($0)".contains("0700"), "\($0)")
        }
    }

    func testGarbageAndOversizedLinesGetAnErrorNotACrash() throws {
        let dir = makeTempDir()
        defer { removeTree(dir) }
        let server = try ControlServer(path: "\(dir)/c.sock") { _ in ControlResponse(ok: true) }
        defer { server.close() }
        let fd = try connectUnix("\(dir)/c.sock")
        send(fd, "{\"verb\":\"explode\"}\n")
        let line = try XCTUnwrap(readLine(fd, limit: 4096))
        XCTAssertTrue(String(decoding: line, as: UTF8.self).contains("not a control request"))
        close(fd)
        signal(SIGPIPE, SIG_IGN)
        let big = try connectUnix("\(dir)/c.sock")
        try? writeAll(big, [UInt8](repeating: UInt8(ascii: "x"), count: 200_000))
        XCTAssertNil(readLine(big, limit: 4096), "an oversized line is dropped")
        close(big)
        // Still serving.
        XCTAssertTrue(try controlCall("\(dir)/c.sock", ControlRequest(verb: .inspect)).ok)
    }
}
