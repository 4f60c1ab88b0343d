// Spawning the per-VM process and its side of the handshake: one status
// line on its stdout (`running` or `failed <why>`), then stdout goes to the
// log so the parent may exit without the child dying of SIGPIPE.
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

struct SpawnedHost {
    let pid: Int32
    /// Read end of the child's status line.
    let status: Int32
}

/// Starts `executable vm-host PLAN` in its own session, stderr to `log`.
func spawnVMHost(executable: String, plan: String, log: String) throws -> SpawnedHost {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = ["vm-host", plan]
    let status = Pipe()
    process.standardOutput = status
    process.standardInput = FileHandle.nullDevice
    let logFD = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
    guard logFD >= 0 else { throw SystemError.last("open \(log)") }
    process.standardError = FileHandle(fileDescriptor: logFD, closeOnDealloc: true)
    try process.run()
    let fd = dup(status.fileHandleForReading.fileDescriptor)
    return SpawnedHost(pid: process.processIdentifier, status: fd)
}

/// The `vm-host PLAN` entry point: returns the process exit code.
public func runVMHost(planPath: String, driver: VMDriver) -> Int32 {
    // Its own session: a Ctrl-C meant for the command that started it must
    // not reach the VM.
    _ = setsid()
    signal(SIGPIPE, SIG_IGN)
    func report(_ line: String) {
        try? writeAll(1, Array((line + "\n").utf8))
        let err = dup(2)
        if err >= 0 {
            dup2(err, 1)
            closeDescriptor(err)
        }
    }
    guard let data = FileManager.default.contents(atPath: planPath),
          let plan = try? JSONDecoder().decode(VMPlan.self, from: data)
    else {
        report("failed \(planPath) is not a VM plan")
        return 2
    }
    let host = VMHost(plan: plan, driver: driver)
    // SIGTERM (what `terminate` sends the Rust backend's VMM) stops the VM.
    signal(SIGTERM, SIG_IGN)
    let term = DispatchSource.makeSignalSource(signal: SIGTERM, queue: .global())
    term.setEventHandler { _ = host.handle(ControlRequest(verb: .kill)) }
    term.resume()
    var failed = false
    let reason = host.run { result in
        switch result {
        case .success: report("running")
        case .failure(let e):
            failed = true
            report("failed \(e.message)")
        }
    }
    FileHandle.standardError.write(Data("microagent-applevf-supervisor: VM stopped: \(reason)\n".utf8))
    return failed ? 1 : 0
}
