// Declarations of the Virtualization.framework API that AppleVFDriver uses,
// transcribed from Apple's documentation (developer.apple.com/documentation/
// virtualization) so the driver can be type-checked on Linux, where the
// framework does not exist (scripts/typecheck-applevf-driver). Signatures
// only: nothing here runs.
import Foundation

open class VZVirtualMachineConfiguration: NSObject {
    public override init() {}
    open class var minimumAllowedCPUCount: Int { 1 }
    open class var maximumAllowedCPUCount: Int { 1 }
    open class var minimumAllowedMemorySize: UInt64 { 0 }
    open class var maximumAllowedMemorySize: UInt64 { 0 }
    open var cpuCount: Int = 1
    open var memorySize: UInt64 = 0
    open var bootLoader: VZBootLoader?
    open var platform: VZPlatformConfiguration = VZGenericPlatformConfiguration()
    open var storageDevices: [VZStorageDeviceConfiguration] = []
    open var serialPorts: [VZSerialPortConfiguration] = []
    open var entropyDevices: [VZEntropyDeviceConfiguration] = []
    open var memoryBalloonDevices: [VZMemoryBalloonDeviceConfiguration] = []
    open var socketDevices: [VZSocketDeviceConfiguration] = []
    open var networkDevices: [VZNetworkDeviceConfiguration] = []
    open var directorySharingDevices: [VZDirectorySharingDeviceConfiguration] = []
    open func validate() throws {}
}

open class VZBootLoader: NSObject {}
open class VZLinuxBootLoader: VZBootLoader {
    public init(kernelURL: URL) {}
    open var commandLine: String = ""
}
open class VZPlatformConfiguration: NSObject {}
open class VZGenericPlatformConfiguration: VZPlatformConfiguration { public override init() {} }
open class VZStorageDeviceAttachment: NSObject {}
open class VZDiskImageStorageDeviceAttachment: VZStorageDeviceAttachment {
    public init(url: URL, readOnly: Bool) throws {}
}
open class VZStorageDeviceConfiguration: NSObject {}
open class VZVirtioBlockDeviceConfiguration: VZStorageDeviceConfiguration {
    public init(attachment: VZStorageDeviceAttachment) {}
}
open class VZSerialPortAttachment: NSObject {}
open class VZFileHandleSerialPortAttachment: VZSerialPortAttachment {
    public init(fileHandleForReading: FileHandle?, fileHandleForWriting: FileHandle?) {}
}
open class VZSerialPortConfiguration: NSObject { open var attachment: VZSerialPortAttachment? }
open class VZVirtioConsoleDeviceSerialPortConfiguration: VZSerialPortConfiguration { public override init() {} }
open class VZEntropyDeviceConfiguration: NSObject {}
open class VZVirtioEntropyDeviceConfiguration: VZEntropyDeviceConfiguration { public override init() {} }
open class VZMemoryBalloonDeviceConfiguration: NSObject {}
open class VZVirtioTraditionalMemoryBalloonDeviceConfiguration: VZMemoryBalloonDeviceConfiguration { public override init() {} }
open class VZSocketDeviceConfiguration: NSObject {}
open class VZVirtioSocketDeviceConfiguration: VZSocketDeviceConfiguration { public override init() {} }

// Network (macOS 11+; maximumTransmissionUnit macOS 13+).
open class VZMACAddress: NSObject {
    public init?(string: String) {}
    open class func randomLocallyAdministered() -> VZMACAddress { fatalError("stub") }
    open var string: String { "" }
}
open class VZNetworkDeviceAttachment: NSObject {}
open class VZFileHandleNetworkDeviceAttachment: VZNetworkDeviceAttachment {
    public init(fileHandle: FileHandle) {}
    open var fileHandle: FileHandle { fatalError("stub") }
    open var maximumTransmissionUnit: Int = 1500
}
open class VZNetworkDeviceConfiguration: NSObject {
    open var macAddress: VZMACAddress { get { fatalError("stub") } set {} }
    open var attachment: VZNetworkDeviceAttachment?
}
open class VZVirtioNetworkDeviceConfiguration: VZNetworkDeviceConfiguration { public override init() {} }

// Directory sharing (macOS 12+).
open class VZSharedDirectory: NSObject {
    public init(url: URL, readOnly: Bool) {}
    open var url: URL { fatalError("stub") }
    open var isReadOnly: Bool { false }
}
open class VZDirectoryShare: NSObject {}
open class VZSingleDirectoryShare: VZDirectoryShare {
    public init(directory: VZSharedDirectory) {}
    open var directory: VZSharedDirectory { fatalError("stub") }
}
open class VZDirectorySharingDeviceConfiguration: NSObject {}
open class VZVirtioFileSystemDeviceConfiguration: VZDirectorySharingDeviceConfiguration {
    public init(tag: String) {}
    open class func validateTag(_ tag: String) throws {}
    open var tag: String = ""
    open var share: VZDirectoryShare?
}

@objc public enum VZVirtualMachineState: Int {
    case stopped, running, paused, error, starting, pausing, resuming, stopping
    case saving, restoring // macOS 14+
}

public protocol VZVirtualMachineDelegate: NSObjectProtocol {
    func guestDidStop(_ virtualMachine: VZVirtualMachine)
    func virtualMachine(_ virtualMachine: VZVirtualMachine, didStopWithError error: Error)
}

open class VZSocketDevice: NSObject {}
open class VZVirtioSocketConnection: NSObject {
    open var destinationPort: UInt32 { 0 }
    open var sourcePort: UInt32 { 0 }
    open var fileDescriptor: Int32 { -1 }
    open func close() {}
}
public protocol VZVirtioSocketListenerDelegate: NSObjectProtocol {
    func listener(_ listener: VZVirtioSocketListener, shouldAcceptNewConnection connection: VZVirtioSocketConnection,
                  from socketDevice: VZVirtioSocketDevice) -> Bool
}
open class VZVirtioSocketListener: NSObject {
    public override init() {}
    open weak var delegate: VZVirtioSocketListenerDelegate?
}
open class VZVirtioSocketDevice: VZSocketDevice {
    open func connect(toPort port: UInt32, completionHandler: @escaping (Result<VZVirtioSocketConnection, Error>) -> Void) {}
    open func setSocketListener(_ listener: VZVirtioSocketListener, forPort port: UInt32) {}
    open func removeSocketListener(forPort port: UInt32) {}
}

open class VZVirtualMachine: NSObject {
    open class var isSupported: Bool { false }
    public init(configuration: VZVirtualMachineConfiguration, queue: DispatchQueue) {}
    open weak var delegate: VZVirtualMachineDelegate?
    open var state: VZVirtualMachineState { .stopped }
    open var socketDevices: [VZSocketDevice] { [] }
    open func start(completionHandler: @escaping (Result<Void, Error>) -> Void) {}
    open func stop(completionHandler: @escaping (Error?) -> Void) {}
    open func pause(completionHandler: @escaping (Result<Void, Error>) -> Void) {}
    open func resume(completionHandler: @escaping (Result<Void, Error>) -> Void) {}
    open func requestStop() throws {}
    // macOS 14+.
    open func saveMachineStateTo(url saveFileURL: URL, completionHandler: @escaping (Error?) -> Void) {}
    open func restoreMachineStateFrom(url saveFileURL: URL, completionHandler: @escaping (Error?) -> Void) {}
}
