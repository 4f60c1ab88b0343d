// microagent-applevf-supervisor: the apple-vf backend's process.
//
//   microagent-applevf-supervisor < request.json     one request, one response
//   microagent-applevf-supervisor vm-host PLAN        the per-VM process
//
// One JSON request on stdin, one JSON response line on stdout, exit 0 iff
// "ok" is true, diagnostics on stderr (the contract of crates/vmkit-protocol).
import AppleVFCore
import AppleVFDriver
import Foundation

let usage = """
    usage: microagent-applevf-supervisor < REQUEST.json
           microagent-applevf-supervisor vm-host PLAN.json

    Reads one protocol request (host, check, prepare, start, inspect, halt,
    stop, kill, delete) on stdin and writes one JSON response line on stdout;
    exits 0 iff the response says "ok": true. `start` leaves a per-VM process
    (vm-host) holding the Virtualization.framework VM, reached by later
    commands over <stateDir>/workspaces/<runtimeID>/control.sock.

    """

let driver = platformDriver()
let arguments = Array(CommandLine.arguments.dropFirst())

switch arguments.first {
case nil:
    // A guest that hangs up (its exec port, during a freeze) is an error
    // from write, not a signal that kills the answer.
    signal(SIGPIPE, SIG_IGN)
    let response: Response
    if let bytes = readAll(0, limit: maxRequestBytes) {
        let executable = Bundle.main.executablePath ?? CommandLine.arguments[0]
        response = Supervisor(driver: driver, executable: executable).answer(bytes)
    } else {
        response = .failure(.invalid("request exceeds the \(maxRequestBytes)-byte limit"))
    }
    if let error = response.error {
        FileHandle.standardError.write(Data("microagent-applevf-supervisor: \(error.message)\n".utf8))
    }
    print(encodeLine(response))
    exit(response.ok ? 0 : 1)
case "vm-host" where arguments.count == 2:
    exit(runVMHost(planPath: arguments[1], driver: driver))
case "-h", "--help":
    print(usage, terminator: "")
    exit(0)
default:
    FileHandle.standardError.write(Data(usage.utf8))
    exit(2)
}
