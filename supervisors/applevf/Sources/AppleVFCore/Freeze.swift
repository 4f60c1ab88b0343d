// The host end of a freeze (PROTOCOL.md, "Freeze"; the Rust side is
// crates/vmkit-channel/src/host/freeze.rs), for a disk-only snapshot of a
// workspace this supervisor runs: through the per-VM process's hybrid-vsock
// socket to the guest's exec port, `freeze`, the guest's `frozen`, the disk
// copied, `thaw`, `ack`. The guest's filesystems (FIFREEZE) are flushed and
// clean while frozen, so the copy holds all the guest wrote and boots
// without journal recovery.
//
// Everything the guest says is hostile: each answer is one bounded frame
// that must arrive by a deadline, and `frozen` is checked as the Rust host
// checks it. The guest never stays frozen: it thaws when the connection
// ends, which every failure here does.
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The longest the guest keeps its filesystems frozen (it thaws by itself
/// then, and the snapshot fails), as the Rust lifecycle's FREEZE_HOLD.
let freezeHoldMs = 60_000
/// How long the guest may take to freeze (flushing its page cache) or to
/// thaw, as the Rust lifecycle's FREEZE_ANSWER.
let freezeAnswerSeconds = 30.0
/// A `frozen` answer names at most this many mountpoints, each at most
/// `maxMountpointBytes` long (PROTOCOL.md).
let maxFrozenMounts = 64
let maxMountpointBytes = 4096
/// A guest's `error` text is cut to this (RunResult::MAX_ERROR_BYTES).
let maxGuestErrorBytes = 4096
/// The longest `OK <n>` line of the hybrid-vsock handshake.
private let maxHandshakeLine = 32

/// A guest whose writable filesystems are frozen. `thaw` thaws it and says
/// whether the freeze held until then; closing the connection (`close`,
/// also when this is released) thaws it too.
final class FrozenGuest {
    /// Where the frozen filesystems are mounted in the guest, `/` first.
    let mountpoints: [String]
    private var fd: Int32

    fileprivate init(fd: Int32, mountpoints: [String]) {
        self.fd = fd
        self.mountpoints = mountpoints
    }

    deinit { close() }

    /// Sends `thaw` and reads the guest's `ack`, by `deadline`. An error
    /// means the freeze did not hold (it expired, the channel broke) or the
    /// guest could not thaw: a copy made meanwhile is not known to be
    /// consistent. The connection is closed either way.
    func thaw(until deadline: Date) throws {
        defer { close() }
        var unsent: Error?
        do { try writeFrame(fd, json: ["type": "thaw"]) } catch { unsent = error }
        // A guest whose freeze expired said so and closed: its `error` is
        // still there to read after the send failed.
        let answer = try readAnswer(fd, until: deadline, "waiting for the guest to thaw")
        guard answer.type == "ack" else { throw protocolViolation("expected ack, got \(answer.shown)") }
        if let unsent { throw ProtocolError(.guestFailure, "sending thaw: \(unsent)") }
    }

    /// Ends the connection (the guest thaws if it has not yet).
    func close() {
        guard fd >= 0 else { return }
        shutdown(fd, Int32(SHUT_RDWR))
        closeDescriptor(fd)
        fd = -1
    }
}

/// Freezes the filesystems of the guest behind the hybrid-vsock socket
/// `uds` (its exec service on `port`) for at most `holdMs`; the connection
/// and each answer must come within `answerSeconds`.
func freezeGuest(_ uds: String, port: UInt32, holdMs: Int = freezeHoldMs,
                 answerSeconds: Double = freezeAnswerSeconds) throws -> FrozenGuest {
    let deadline = Date().addingTimeInterval(answerSeconds)
    let fd = try connectGuestPort(uds, port, answerSeconds: answerSeconds)
    return try freezeOver(fd, holdMs: holdMs, until: deadline)
}

/// `freezeGuest` over a connected stream `fd`, which it takes: on any
/// failure it is closed (a guest that froze thaws then).
func freezeOver(_ fd: Int32, holdMs: Int, until deadline: Date) throws -> FrozenGuest {
    do {
        guard (1...120_000).contains(holdMs) else {
            throw ProtocolError(.internal, "invalid request: a freeze holds 1-120000 ms, not \(holdMs)")
        }
        do {
            try writeFrame(fd, json: ["type": "freeze", "timeoutMs": holdMs])
        } catch {
            throw ProtocolError(.guestFailure, "sending freeze: \(error)")
        }
        let answer = try readAnswer(fd, until: deadline, "waiting for the guest to freeze")
        guard answer.type == "frozen" else { throw protocolViolation("expected frozen, got \(answer.shown)") }
        return FrozenGuest(fd: fd, mountpoints: try checkFrozen(answer.frame["mountpoints"]))
    } catch {
        shutdown(fd, Int32(SHUT_RDWR))
        closeDescriptor(fd)
        throw error
    }
}

/// The mountpoints of a guest's `frozen` answer, checked as vmkit-channel's
/// `check_frozen` does: a list of at most 64 absolute paths, each at most
/// 4096 bytes, that includes the root filesystem (without it the copy is
/// not consistent).
func checkFrozen(_ value: Any?) throws -> [String] {
    guard let list = value as? [Any] else { throw protocolViolation("frozen without a list of mountpoints") }
    if list.count > maxFrozenMounts {
        throw protocolViolation("the guest named \(list.count) frozen filesystems, more than \(maxFrozenMounts)")
    }
    let mountpoints = try list.map { item -> String in
        guard let m = item as? String, m.hasPrefix("/"), m.utf8.count <= maxMountpointBytes, !m.contains("\0") else {
            throw protocolViolation("the guest named a bad mountpoint \(quoted(truncatedText("\(item)", maxBytes: 200)))")
        }
        return m
    }
    guard mountpoints.contains("/") else { throw protocolViolation("the guest could not freeze its root filesystem") }
    return mountpoints
}

/// One answer of the guest: a frame by `deadline`, its `error` as an error.
private func readAnswer(_ fd: Int32, until deadline: Date, _ what: String) throws -> (type: String, shown: String, frame: [String: Any]) {
    let frame: [String: Any]
    do {
        frame = try readFrame(fd, until: deadline)
    } catch let e as ProtocolError {
        throw ProtocolError(e.code, "\(what): \(e.message)")
    }
    let type = frame["type"] as? String ?? ""
    if type == "error" {
        let message = frame["message"] as? String ?? "(no message)"
        throw ProtocolError(.guestFailure, "guest error: \(truncatedText(message, maxBytes: maxGuestErrorBytes))")
    }
    return (type, quoted(truncatedText(type, maxBytes: 64)), frame)
}

/// An error's message without its code.
private func reason(_ error: Error) -> String {
    (error as? ProtocolError)?.message ?? "\(error)"
}

private func protocolViolation(_ why: String) -> ProtocolError {
    ProtocolError(.guestFailure, "protocol violation: \(why)")
}

/// Opens a stream to guest `port` through the hybrid-vsock socket `uds`:
/// `CONNECT <port>\n`, then `OK <n>\n` (HybridVsockBridge serves it).
/// Reads and writes on it time out after `answerSeconds`.
func connectGuestPort(_ uds: String, _ port: UInt32, answerSeconds: Double) throws -> Int32 {
    let fd: Int32
    do {
        fd = try connectUnix(uds)
    } catch {
        throw ProtocolError(.guestFailure, "connecting to \(uds): \(error)")
    }
    do {
        var limit = timeval(tv_sec: Int(answerSeconds), tv_usec: 0)
        for option in [SO_RCVTIMEO, SO_SNDTIMEO] {
            guard setsockopt(fd, SOL_SOCKET, option, &limit, socklen_t(MemoryLayout<timeval>.size)) == 0 else {
                throw SystemError.last("setsockopt")
            }
        }
        try writeAll(fd, Array("CONNECT \(port)\n".utf8))
        guard let line = readLine(fd, limit: maxHandshakeLine) else {
            throw ProtocolError(.guestFailure, "the VMM closed the connection before OK: nothing listens on guest port \(port)")
        }
        guard line.starts(with: Array("OK ".utf8)) else {
            throw ProtocolError(.guestFailure, "vsock handshake: expected \"OK <port>\", got \(quoted(String(decoding: line, as: UTF8.self)))")
        }
        return fd
    } catch {
        closeDescriptor(fd)
        if let e = error as? ProtocolError { throw e }
        throw ProtocolError(.guestFailure, "connecting to guest port \(port) via \(uds): \(error)")
    }
}

/// `text` cut to at most `maxBytes` bytes of UTF-8 at a character
/// boundary, `...` marking the cut (as vmkit-protocol's truncate_text).
func truncatedText(_ text: String, maxBytes: Int) -> String {
    guard text.utf8.count > maxBytes else { return text }
    var out = ""
    var used = 0
    for ch in text.unicodeScalars {
        let n = String(ch).utf8.count
        if used + n > maxBytes - 3 { break }
        out.unicodeScalars.append(ch)
        used += n
    }
    return out + "..."
}

extension Supervisor {
    /// Copies the disk of the workspace `name`, its guest running (or, with
    /// `paused`, paused), to `into` with the guest's filesystems frozen, as
    /// the Rust lifecycle's `clone_frozen`. A paused guest cannot freeze, so
    /// it runs for that moment and is paused again. The guest thaws on every
    /// path out of here (a failed copy, a full disk); a guest that cannot
    /// freeze (an older init, a broken channel) fails the snapshot rather
    /// than leave an inconsistent copy.
    func cloneFrozen(_ layout: WorkspaceLayout, _ name: String, into: String, paused: Bool) throws {
        if paused { try setPaused(layout, false) }
        let copied = Result<Void, Error> {
            let guest: FrozenGuest
            do {
                guest = try freezeGuest(layout.vsock, port: defaultExecPort)
            } catch {
                throw ProtocolError(.guestFailure, "cannot freeze the filesystems of \(quoted(name)) for a consistent disk snapshot: \(reason(error)) (nothing was copied; a guest init older than this microagent cannot freeze: stop the workspace and snapshot it stopped)")
            }
            let copy = Result<Void, Error> { try copyDiskIntoSnapshot(layout.disk, to: into) }
            let thawed = Result<Void, Error> {
                do {
                    try guest.thaw(until: Date().addingTimeInterval(freezeAnswerSeconds))
                } catch {
                    throw ProtocolError(.guestFailure, "the freeze of \(quoted(name)) did not hold until the disk was copied: \(reason(error))")
                }
            }
            try copy.get()
            try thawed.get()
        }
        // Paused again whatever happened, as it was asked to be.
        let repaused = Result<Void, Error> { if paused { try setPaused(layout, true) } }
        try firstFailure(copied, repaused, name)
    }
}
