// Picks the driver for this platform: Virtualization.framework on macOS,
// the truthful "unavailable" driver elsewhere.
import AppleVFCore

public func platformDriver() -> VMDriver {
    #if canImport(Virtualization)
    return VirtualizationDriver()
    #else
    return UnavailableDriver()
    #endif
}
