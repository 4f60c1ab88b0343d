// swift-tools-version:5.9
// The Apple Virtualization.framework supervisor of microagent.
//
// AppleVFCore knows nothing of the framework: the protocol's types and
// validation, the state layout, the event log, the control socket and the
// hybrid-vsock bridge. It builds and is tested on Linux too. AppleVFDriver
// is the one piece that talks to Virtualization.framework; on Linux it is
// empty and the supervisor reports the framework unavailable.
import PackageDescription

let package = Package(
    name: "microagent-applevf",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "microagent-applevf-supervisor", targets: ["microagent-applevf-supervisor"]),
        .library(name: "AppleVFCore", targets: ["AppleVFCore"]),
    ],
    targets: [
        .target(name: "AppleVFCore"),
        .target(
            name: "AppleVFDriver",
            dependencies: ["AppleVFCore"],
            linkerSettings: [.linkedFramework("Virtualization", .when(platforms: [.macOS]))]
        ),
        .executableTarget(
            name: "microagent-applevf-supervisor",
            dependencies: ["AppleVFCore", "AppleVFDriver"]
        ),
        .testTarget(name: "AppleVFCoreTests", dependencies: ["AppleVFCore"]),
    ]
)
