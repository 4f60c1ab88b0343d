// The Virtualization.framework driver: the only code that knows the
// framework. Written against Apple's documentation for macOS 13+; it is
// compiled only where the framework exists (macOS), so on Linux this file
// is empty and `platformDriver()` is the unavailable driver.
//
// The machine: VZLinuxBootLoader (an uncompressed kernel, arm64 `Image` on
// Apple silicon) with the plan's command line; virtio-blk disks in plan
// order (/dev/vda the root, then the extra disks, then the config disk);
// a virtio console (hvc0) into a bounded log; a virtio socket device (the
// vsock the bridge serves); entropy; a memory balloon; with a plan network,
// a virtio-net device on a VZFileHandleNetworkDeviceAttachment whose
// connected datagram socket leads to microagent's network stack (see
// NetworkLink.swift in the core); one VZVirtioFileSystemDeviceConfiguration
// (a VZSingleDirectoryShare) per plan volume, under the tag the guest init
// mounts. Memory snapshots (macOS 14+): the `save` control verb writes a
// paused VM's state with saveMachineStateTo; a plan with `restoreFrom`
// restores that state into the freshly configured VM
// (restoreMachineStateFrom, which leaves it paused) and resumes it,
// instead of booting the kernel.
//
// Every VZVirtualMachine call happens on the machine's own serial queue, as
// the framework requires.
#if canImport(Virtualization)
import AppleVFCore
import Foundation
import Security
import Virtualization

/// The entitlement a process needs to create VMs.
let virtualizationEntitlement = "com.apple.security.virtualization"

public final class VirtualizationDriver: VMDriver {
    public init() {}

    public func hostInfo() -> HostInfo {
        let supported = VZVirtualMachine.isSupported
        let entitled = hasEntitlement()
        return HostInfo(
            os: "macos", arch: hostArch(), accelerator: supported ? .hvf : .none,
            acceleratorReason: supported
                ? "Virtualization.framework (Hypervisor.framework underneath)"
                : "VZVirtualMachine.isSupported is false: no hardware virtualization here",
            checks: [
                CheckItem(
                    name: "virtualization", status: supported ? .ok : .fail,
                    detail: supported ? "Virtualization.framework can run VMs" : "Virtualization.framework cannot run VMs on this Mac",
                    remedy: supported ? nil : "use a Mac with Apple silicon or VT-x, not a VM without nested virtualization"),
                CheckItem(
                    name: "entitlement", status: entitled ? .ok : .fail,
                    detail: entitled ? "signed with \(virtualizationEntitlement)" : "not signed with \(virtualizationEntitlement)",
                    remedy: entitled ? nil : "codesign --force --sign - --entitlements microagent-applevf-supervisor.entitlements <binary>"),
            ])
    }

    public func unavailableReason() -> String? {
        if !VZVirtualMachine.isSupported {
            return "Virtualization.framework cannot run VMs on this Mac (VZVirtualMachine.isSupported is false)"
        }
        if !hasEntitlement() {
            return "this supervisor is not signed with the \(virtualizationEntitlement) entitlement; sign it (supervisors/applevf/README.md)"
        }
        return nil
    }

    public func boot(_ plan: VMPlan, onStop: @escaping @Sendable (String) -> Void) throws -> RunningVM {
        let config = VZVirtualMachineConfiguration()
        config.platform = VZGenericPlatformConfiguration()
        config.cpuCount = max(VZVirtualMachineConfiguration.minimumAllowedCPUCount,
                              min(Int(plan.cpuCount), VZVirtualMachineConfiguration.maximumAllowedCPUCount))
        let bytes = UInt64(plan.memoryMiB) << 20
        config.memorySize = max(VZVirtualMachineConfiguration.minimumAllowedMemorySize,
                                min(bytes, VZVirtualMachineConfiguration.maximumAllowedMemorySize))
        let loader = VZLinuxBootLoader(kernelURL: URL(fileURLWithPath: plan.kernelPath))
        loader.commandLine = plan.commandLine
        config.bootLoader = loader
        config.storageDevices = try plan.disks.map { disk in
            let attachment = try VZDiskImageStorageDeviceAttachment(
                url: URL(fileURLWithPath: disk.path), readOnly: disk.readOnly)
            return VZVirtioBlockDeviceConfiguration(attachment: attachment)
        }
        let console = try BoundedConsole(path: plan.consoleLog, limit: plan.consoleLimitBytes ?? (1 << 20))
        let serial = VZVirtioConsoleDeviceSerialPortConfiguration()
        serial.attachment = VZFileHandleSerialPortAttachment(
            fileHandleForReading: nil, fileHandleForWriting: console.input)
        config.serialPorts = [serial]
        config.entropyDevices = [VZVirtioEntropyDeviceConfiguration()]
        config.memoryBalloonDevices = [VZVirtioTraditionalMemoryBalloonDeviceConfiguration()]
        config.socketDevices = [VZVirtioSocketDeviceConfiguration()]
        if let network = plan.network {
            config.networkDevices = [try networkDevice(network)]
        }
        config.directorySharingDevices = try (plan.volumes ?? []).map(directoryShare)
        do {
            try config.validate()
        } catch {
            throw ProtocolError(.invalidRequest, "Virtualization.framework refused the machine: \(error.localizedDescription)")
        }
        let machine = FrameworkMachine(configuration: config, console: console, onStop: onStop)
        if let state = plan.restoreFrom {
            try machine.restore(from: state)
        } else {
            try machine.start()
        }
        return machine
    }

    /// The guest NIC: virtio-net with the plan's MAC, its frames on a
    /// datagram socket connected to the network stack (MTU 1500, the
    /// attachment's default and the stack's).
    func networkDevice(_ network: PlanNetwork) throws -> VZVirtioNetworkDeviceConfiguration {
        guard let mac = VZMACAddress(string: network.macAddress) else {
            throw ProtocolError.invalid("network.macAddress \(network.macAddress) is not a MAC address")
        }
        let fd: Int32
        do {
            fd = try connectedDatagramSocket(bindPath: network.vmSocket, peerPath: network.stackSocket)
        } catch {
            throw ProtocolError(.internal, "the VM's network link to \(network.stackSocket): \(error)")
        }
        let device = VZVirtioNetworkDeviceConfiguration()
        device.macAddress = mac
        device.attachment = VZFileHandleNetworkDeviceAttachment(
            fileHandle: FileHandle(fileDescriptor: fd, closeOnDealloc: true))
        return device
    }

    /// One host folder as a virtio-fs device under the guest init's tag.
    func directoryShare(_ volume: PlanVolume) throws -> VZVirtioFileSystemDeviceConfiguration {
        do {
            try VZVirtioFileSystemDeviceConfiguration.validateTag(volume.tag)
        } catch {
            throw ProtocolError.invalid("volume tag \(volume.tag): \(error.localizedDescription)")
        }
        let device = VZVirtioFileSystemDeviceConfiguration(tag: volume.tag)
        let folder = VZSharedDirectory(url: URL(fileURLWithPath: volume.path, isDirectory: true), readOnly: volume.readOnly)
        device.share = VZSingleDirectoryShare(directory: folder)
        return device
    }

    func hasEntitlement() -> Bool {
        guard let task = SecTaskCreateFromSelf(nil),
              let value = SecTaskCopyValueForEntitlement(task, virtualizationEntitlement as CFString, nil)
        else { return false }
        return (value as? Bool) == true
    }
}

/// One VZVirtualMachine and its queue.
final class FrameworkMachine: NSObject, RunningVM, VZVirtualMachineDelegate, @unchecked Sendable {
    private let queue: DispatchQueue
    private var machine: VZVirtualMachine!
    private let console: BoundedConsole
    private let onStop: @Sendable (String) -> Void
    private(set) var vsock: VsockDevice

    init(configuration: VZVirtualMachineConfiguration, console: BoundedConsole, onStop: @escaping @Sendable (String) -> Void) {
        self.console = console
        self.onStop = onStop
        // Made before super.init, which must come before any use of self.
        let queue = DispatchQueue(label: "microagent.applevf.vm")
        self.queue = queue
        var made: VZVirtualMachine!
        queue.sync { made = VZVirtualMachine(configuration: configuration, queue: queue) }
        self.machine = made
        self.vsock = FrameworkVsock(device: made.socketDevices.first as! VZVirtioSocketDevice, queue: queue)
        super.init()
        queue.sync { made.delegate = self }
    }

    func start() throws {
        let done = DispatchSemaphore(value: 0)
        let failure = Box<Error?>(nil)
        queue.async { [self] in
            machine.start { result in
                if case .failure(let e) = result { failure.value = e }
                done.signal()
            }
        }
        done.wait()
        if let e = failure.value {
            throw ProtocolError(.internal, "Virtualization.framework could not start the VM: \(e.localizedDescription)")
        }
    }

    /// Restores a saved state into this never-started VM and lets it run
    /// (a restored VM is paused until resumed).
    func restore(from path: String) throws {
        guard #available(macOS 14, *) else {
            throw ProtocolError(.unsupported, "restoring a VM's saved state needs macOS 14 or later")
        }
        let done = DispatchSemaphore(value: 0)
        let failure = Box<Error?>(nil)
        queue.async { [self] in
            machine.restoreMachineStateFrom(url: URL(fileURLWithPath: path)) { [self] error in
                if let error {
                    failure.value = error
                    done.signal()
                    return
                }
                machine.resume { result in
                    if case .failure(let e) = result { failure.value = e }
                    done.signal()
                }
            }
        }
        done.wait()
        if let e = failure.value {
            throw ProtocolError(.internal, "Virtualization.framework could not restore the VM from \(path): \(e.localizedDescription)")
        }
    }

    func saveState(to path: String, completion: @escaping @Sendable (Error?) -> Void) {
        guard #available(macOS 14, *) else {
            completion(ProtocolError(.unsupported, "saving a VM's state needs macOS 14 or later"))
            return
        }
        queue.async { [self] in
            machine.saveMachineStateTo(url: URL(fileURLWithPath: path)) { error in completion(error) }
        }
    }

    var runState: VMRunState {
        queue.sync {
            switch machine.state {
            case .running: return .running
            case .paused, .pausing: return .paused
            case .starting, .resuming: return .starting
            // (.saving and .restoring exist from macOS 14 on.)
            default: return .stopped
            }
        }
    }

    func forceStop(completion: @escaping @Sendable (Error?) -> Void) {
        queue.async { [self] in
            machine.stop { error in
                self.onStop("VM stopped")
                completion(error)
            }
        }
    }

    func pause(completion: @escaping @Sendable (Error?) -> Void) {
        queue.async { [self] in
            machine.pause { result in
                if case .failure(let e) = result { completion(e) } else { completion(nil) }
            }
        }
    }

    func resume(completion: @escaping @Sendable (Error?) -> Void) {
        queue.async { [self] in
            machine.resume { result in
                if case .failure(let e) = result { completion(e) } else { completion(nil) }
            }
        }
    }

    func guestDidStop(_ virtualMachine: VZVirtualMachine) {
        onStop("guest powered off")
    }

    func virtualMachine(_ virtualMachine: VZVirtualMachine, didStopWithError error: Error) {
        onStop("the VM stopped with an error: \(error.localizedDescription)")
    }
}

/// The VM's VZVirtioSocketDevice as the bridge's VsockDevice.
final class FrameworkVsock: NSObject, VsockDevice, VZVirtioSocketListenerDelegate, @unchecked Sendable {
    private let device: VZVirtioSocketDevice
    private let queue: DispatchQueue
    private var handlers: [UInt32: @Sendable (VsockStream) -> Void] = [:]
    private var listeners: [VZVirtioSocketListener] = []

    init(device: VZVirtioSocketDevice, queue: DispatchQueue) {
        self.device = device
        self.queue = queue
    }

    func connect(toGuestPort port: UInt32, completion: @escaping @Sendable (Result<VsockStream, Error>) -> Void) {
        queue.async { [self] in
            device.connect(toPort: port) { result in
                switch result {
                case .success(let connection):
                    // Our own descriptor; the connection object is kept alive
                    // beside it until the bridge is done.
                    completion(.success(VsockStream(fd: dup(connection.fileDescriptor), owner: connection)))
                case .failure(let error):
                    completion(.failure(error))
                }
            }
        }
    }

    func listen(onHostPort port: UInt32, accept: @escaping @Sendable (VsockStream) -> Void) {
        queue.async { [self] in
            let listener = VZVirtioSocketListener()
            listener.delegate = self
            handlers[port] = accept
            listeners.append(listener)
            device.setSocketListener(listener, forPort: port)
        }
    }

    func listener(_ listener: VZVirtioSocketListener, shouldAcceptNewConnection connection: VZVirtioSocketConnection,
                  from socketDevice: VZVirtioSocketDevice) -> Bool {
        guard let accept = handlers[connection.destinationPort] else { return false }
        accept(VsockStream(fd: dup(connection.fileDescriptor), owner: connection))
        return true
    }
}

/// The guest console into `path`, at most `limit` bytes per file: when the
/// log is full it moves to `path.1` and a new one starts, so a guest that
/// floods its console costs at most two files.
final class BoundedConsole: @unchecked Sendable {
    let input: FileHandle
    private let pipe = Pipe()

    init(path: String, limit: UInt64) throws {
        input = pipe.fileHandleForWriting
        guard FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o600]) else {
            throw ProtocolError(.internal, "creating the console log \(path)")
        }
        let reader = pipe.fileHandleForReading
        Thread.detachNewThread { BoundedConsole.copy(reader, to: path, limit: limit) }
    }

    /// Copies the console into `path` until the VM closes it, rotating to
    /// `path.1` whenever `limit` bytes are written.
    static func copy(_ reader: FileHandle, to path: String, limit: UInt64) {
        guard var out = FileHandle(forWritingAtPath: path) else { return }
        var written: UInt64 = 0
        while true {
            let chunk = reader.availableData
            if chunk.isEmpty { return }
            if written + UInt64(chunk.count) > limit {
                try? out.close()
                try? FileManager.default.removeItem(atPath: path + ".1")
                try? FileManager.default.moveItem(atPath: path, toPath: path + ".1")
                _ = FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o600])
                guard let fresh = FileHandle(forWritingAtPath: path) else { return }
                out = fresh
                written = 0
            }
            out.write(chunk.prefix(Int(limit)))
            written += UInt64(min(chunk.count, Int(limit)))
        }
    }
}

/// A mutable cell for results handed back from completion handlers.
final class Box<T>: @unchecked Sendable {
    var value: T
    init(_ value: T) { self.value = value }
}
#endif
