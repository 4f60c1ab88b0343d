// The two Security.framework calls AppleVFDriver makes, as Apple documents
// them (SecTask), for type-checking the driver on Linux.
import Foundation

public final class SecTask {}
public typealias CFString = NSString
public typealias CFTypeRef = AnyObject
public typealias CFAllocator = AnyObject
public typealias CFError = NSError
public func SecTaskCreateFromSelf(_ allocator: CFAllocator?) -> SecTask? { nil }
public func SecTaskCopyValueForEntitlement(
    _ task: SecTask, _ entitlement: CFString, _ error: UnsafeMutablePointer<Unmanaged<CFError>?>?
) -> CFTypeRef? { nil }
