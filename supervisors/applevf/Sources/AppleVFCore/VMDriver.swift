// The seam between the core and Virtualization.framework: the core decides
// what to boot (a VMPlan) and drives the VM through these protocols; the
// driver (AppleVFDriver on macOS) is the only code that knows the framework.
import Foundation

/// What the per-VM process boots. Written by `start` (or by the Rust
/// apple-vf backend's `Machine::launch`) to `vm-plan.json`.
public struct VMPlan: Codable, Equatable, Sendable {
    /// An uncompressed Linux kernel (arm64 `Image` on Apple silicon).
    public var kernelPath: String
    /// The whole kernel command line.
    public var commandLine: String
    /// Block devices in guest order: `/dev/vda` first.
    public var disks: [PlanDisk]
    public var cpuCount: UInt32
    public var memoryMiB: UInt32
    /// The hybrid-vsock Unix socket to serve.
    public var vsockPath: String
    /// Host ports the guest may connect to (forwarded to `<vsockPath>_<port>`).
    public var hostPorts: [UInt32]
    /// Where the guest's virtio console goes (bounded, see `consoleLimitBytes`).
    public var consoleLog: String
    public var consoleLimitBytes: UInt64?
    /// The control socket, for workspaces this supervisor runs itself.
    public var controlSocket: String?
    /// For workspaces this supervisor runs itself: where to record state.
    public var stateDir: String?
    public var identity: Identity?
    /// The NIC, if any (see NetworkLink.swift).
    public var network: PlanNetwork?
    /// Host folders shared over virtio-fs, one device each.
    public var volumes: [PlanVolume]?
    /// Continue from this saved machine state (written by the `save`
    /// control verb) instead of booting the kernel; the configuration must
    /// be the one the state was saved from.
    public var restoreFrom: String?

    public init(kernelPath: String, commandLine: String, disks: [PlanDisk], cpuCount: UInt32, memoryMiB: UInt32,
                vsockPath: String, hostPorts: [UInt32], consoleLog: String) {
        self.kernelPath = kernelPath
        self.commandLine = commandLine
        self.disks = disks
        self.cpuCount = cpuCount
        self.memoryMiB = memoryMiB
        self.vsockPath = vsockPath
        self.hostPorts = hostPorts
        self.consoleLog = consoleLog
    }
}

/// One block device of a plan.
public struct PlanDisk: Codable, Equatable, Sendable {
    public var path: String
    public var readOnly: Bool

    public init(path: String, readOnly: Bool) {
        self.path = path
        self.readOnly = readOnly
    }
}

/// The NIC of a plan: a virtio-net device whose frames travel over a
/// datagram socket bound at `vmSocket` and connected to `stackSocket`.
public struct PlanNetwork: Codable, Equatable, Sendable {
    /// microagent's network stack (already bound when the VM boots).
    public var stackSocket: String
    /// Where the VM's end is bound.
    public var vmSocket: String
    /// The guest NIC's MAC address, `aa:bb:cc:dd:ee:ff`.
    public var macAddress: String

    public init(stackSocket: String, vmSocket: String, macAddress: String) {
        self.stackSocket = stackSocket
        self.vmSocket = vmSocket
        self.macAddress = macAddress
    }
}

/// A host folder of a plan, exported under the virtio-fs `tag` the guest
/// init mounts.
public struct PlanVolume: Codable, Equatable, Sendable {
    public var tag: String
    public var path: String
    public var readOnly: Bool

    public init(tag: String, path: String, readOnly: Bool) {
        self.tag = tag
        self.path = path
        self.readOnly = readOnly
    }
}

/// A VM's lifecycle as the framework reports it.
public enum VMRunState: String, Sendable { case starting, running, paused, stopped }

/// A booted VM.
public protocol RunningVM: AnyObject {
    var vsock: VsockDevice { get }
    var runState: VMRunState { get }
    /// Stops the VM at once (the guest gets no say).
    func forceStop(completion: @escaping @Sendable (Error?) -> Void)
    func pause(completion: @escaping @Sendable (Error?) -> Void)
    func resume(completion: @escaping @Sendable (Error?) -> Void)
    /// Writes the paused VM's whole state (devices and memory) to `path`.
    func saveState(to path: String, completion: @escaping @Sendable (Error?) -> Void)
}

extension RunningVM {
    public func saveState(to path: String, completion: @escaping @Sendable (Error?) -> Void) {
        completion(ProtocolError(.unsupported, "this VM cannot save its state"))
    }
}

/// A hypervisor the core can boot plans on.
public protocol VMDriver {
    /// Facts about the host, for `host` and `doctor`.
    func hostInfo() -> HostInfo
    /// nil when VMs can be booted; otherwise why not, in words.
    func unavailableReason() -> String?
    /// Boots `plan`. `onStop` is called once when the VM stops, with why.
    func boot(_ plan: VMPlan, onStop: @escaping @Sendable (String) -> Void) throws -> RunningVM
}

/// The driver where Virtualization.framework does not exist (Linux): it
/// answers `host` truthfully and boots nothing.
public struct UnavailableDriver: VMDriver {
    public init() {}

    public func hostInfo() -> HostInfo {
        HostInfo(
            os: hostOS(), arch: hostArch(), accelerator: .none,
            acceleratorReason: "Virtualization.framework exists only on macOS",
            checks: [CheckItem(
                name: "virtualization", status: .fail,
                detail: "Virtualization.framework is not available on \(hostOS())",
                remedy: "run the apple-vf backend on macOS 13 or later; on Linux use the qemu backend")])
    }

    public func unavailableReason() -> String? {
        "Virtualization.framework is not available on \(hostOS()): the apple-vf backend runs only on macOS"
    }

    public func boot(_ plan: VMPlan, onStop: @escaping @Sendable (String) -> Void) throws -> RunningVM {
        throw ProtocolError(.unavailable, unavailableReason()!)
    }
}

public func hostOS() -> String {
    #if os(macOS)
    return "macos"
    #elseif os(Linux)
    return "linux"
    #else
    return "unknown"
    #endif
}

public func hostArch() -> String {
    #if arch(arm64)
    return "aarch64"
    #elseif arch(x86_64)
    return "x86_64"
    #else
    return "unknown"
    #endif
}
