// Hostile input, mutated from the real fixtures: every variant is answered
// with an error or a valid request, never a crash (a crash ends this test
// process, so reaching the end is the assertion), and the guest-frame and
// CONNECT-line parsers hold up the same way.
@testable import AppleVFCore
import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A small deterministic generator, so a failure can be replayed.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

final class MutationTests: XCTestCase {
    let interesting: [[UInt8]] = ["\"", "\\", "{", "}", "[", "]", ",", ":", "-1", "1e999", "null", "true",
                                  "\u{0}", "\u{FFFF}", "\"disks\":", "18446744073709551616"].map { Array($0.utf8) }

    func mutate(_ input: [UInt8], _ rng: inout SplitMix) -> [UInt8] {
        var bytes = input
        for _ in 0..<Int.random(in: 1...4, using: &rng) where !bytes.isEmpty {
            let at = Int.random(in: 0..<bytes.count, using: &rng)
            switch Int.random(in: 0..<4, using: &rng) {
            case 0: bytes[at] = UInt8.random(in: 0...255, using: &rng)
            case 1: bytes.remove(at: at)
            case 2: bytes.insert(contentsOf: interesting.randomElement(using: &rng)!, at: at)
            default: bytes = Array(bytes[..<at])
            }
        }
        return bytes
    }

    func testMutatedRequestsNeverCrashTheParser() {
        var rng = SplitMix(state: 15)
        let supervisor = Supervisor(driver: UnavailableDriver(), executable: "/nonexistent")
        var rejected = 0
        for name in ["request-start.json", "request-run.json", "request-halt.json", "request-host.json"] {
            let base = fixture(name)
            for _ in 0..<1500 {
                let input = mutate(base, &rng)
                switch parseRequest(input) {
                case .failure(let e):
                    rejected += 1
                    XCTAssertEqual(e.code, .invalidRequest)
                    XCTAssertFalse(e.message.isEmpty)
                case .success(let request):
                    // Whatever parsed also passed validation.
                    XCTAssertNil(validate(request))
                }
                // The whole command path too (state commands hit /Users/me/...,
                // which does not exist here: they fail cleanly).
                if rng.next() % 8 == 0 {
                    let r = supervisor.answer(input)
                    XCTAssertEqual(r.ok, r.error == nil)
                }
            }
        }
        XCTAssertGreaterThan(rejected, 1000, "the mutations do produce bad input")
    }

    /// `snapshot.json` is read back from disk: a mutated one is a snapshot
    /// description or an error, and a restore from it is checked or refused.
    func testMutatedSnapshotDescriptionsAreErrorsNotCrashes() throws {
        var rng = SplitMix(state: 21)
        let state = makeTempDir()
        defer { removeTree(state) }
        let dir = "\(state)/workspaces/ws/snapshots/warm-1"
        try privateDirectory(dir)
        XCTAssertTrue(FileManager.default.createFile(atPath: "\(dir)/rootfs.ext4", contents: Data("disk".utf8)))
        let supervisor = Supervisor(driver: UnavailableDriver(), executable: "/nonexistent")
        let record = WorkspaceRecord(name: "ws", state: .stopped, config: try parseRequest(fixture("request-start.json")).get().config!)
        let from = try JSONDecoder().decode(SnapshotRef.self, from: Data(#"{"runtimeID":"ws","tag":"warm-1"}"#.utf8))
        let base = fixture("snapshot-meta.json")
        var read = 0
        for _ in 0..<1500 {
            XCTAssertTrue(FileManager.default.createFile(atPath: "\(dir)/snapshot.json", contents: Data(mutate(base, &rng))))
            do {
                _ = try readSnapshotMeta(dir)
                read += 1
            } catch let e as ProtocolError {
                XCTAssertEqual(e.code, .internal)
                XCTAssertTrue(e.message.contains("snapshot.json"), e.message)
            }
            do {
                let source = try supervisor.restoreSource(from, for: record, stateDir: state)
                XCTAssertTrue(source.meta.files.allSatisfy { !$0.contains("/") }, "\(source.meta.files)")
            } catch is ProtocolError {}
        }
        XCTAssertGreaterThan(read, 0, "some mutations still read")
        XCTAssertLessThan(read, 1500, "the mutations do produce bad input")
    }

    func testHostileGuestFramesAreErrors() throws {
        var rng = SplitMix(state: 7)
        let good = bigEndian(16) + Array(#"{"type":"ready"}"#.utf8)
        for _ in 0..<2000 {
            var fds: [Int32] = [0, 0]
            XCTAssertEqual(socketpair(AF_UNIX, streamType, 0, &fds), 0)
            let input = mutate(good, &rng)
            try writeAll(fds[1], input)
            shutdown(fds[1], Int32(SHUT_WR))
            if let frame = try? readFrame(fds[0]) {
                XCTAssertTrue(frame["type"] is String)
            }
            close(fds[0])
            close(fds[1])
        }
    }

    /// Mutated `frozen` answers to a freeze: refused, or a checked list of
    /// mountpoints that includes `/`; never a crash or a hang.
    func testMutatedFrozenAnswersAreRefusedOrChecked() {
        var rng = SplitMix(state: 13)
        let good = frameBytes(#"{"type":"frozen","mountpoints":["/","/data"]}"#)
        var accepted = 0
        for _ in 0..<1500 {
            var fds: [Int32] = [0, 0]
            XCTAssertEqual(socketpair(AF_UNIX, streamType, 0, &fds), 0)
            try? writeAll(fds[1], mutate(good, &rng))
            shutdown(fds[1], Int32(SHUT_WR))
            if let guest = try? freezeOver(fds[0], holdMs: 1000, until: Date().addingTimeInterval(5)) {
                accepted += 1
                XCTAssertTrue(guest.mountpoints.contains("/"), "\(guest.mountpoints)")
                XCTAssertTrue(guest.mountpoints.count <= 64 && guest.mountpoints.allSatisfy { $0.hasPrefix("/") })
            }
            close(fds[1])
        }
        XCTAssertGreaterThan(accepted, 0, "some mutations still freeze")
        XCTAssertLessThan(accepted, 1500, "the mutations do produce bad answers")
    }

    func testConnectLinesAreParsedStrictly() {
        var rng = SplitMix(state: 3)
        let good = Array("CONNECT 10001".utf8)
        for _ in 0..<5000 {
            let line = mutate(good, &rng)
            if let port = HybridVsockBridge.parseConnect(line) {
                // `CONNECT ` and decimal digits only (leading zeros allowed,
                // as Firecracker's own parser allows them).
                let digits = line.dropFirst("CONNECT ".count)
                XCTAssertEqual(Array(line.prefix(8)), Array("CONNECT ".utf8))
                XCTAssertTrue(digits.allSatisfy { $0 >= 48 && $0 <= 57 }, "\(line)")
                XCTAssertEqual(UInt64(String(decoding: digits, as: UTF8.self)), UInt64(port))
            }
        }
    }
}
