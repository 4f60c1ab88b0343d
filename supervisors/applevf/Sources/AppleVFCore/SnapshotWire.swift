// The protocol's snapshot types (crates/vmkit-protocol/src/snapshot.rs),
// strict like the rest of Wire.swift: a request's unknown field is an error;
// a SnapshotInfo read back (from `snapshot.json`) takes the fields the Rust
// side may leave out as their defaults.
import Foundation

/// What a `snapshot` request does.
public struct SnapshotRequest: Codable, Equatable, Sendable {
    public enum Action: String, Codable, CaseIterable, Sendable { case create, list, delete }
    public var action: Action
    public var tag: String?
    /// Only the disk, no memory.
    public var diskOnly: Bool

    enum CodingKeys: String, CodingKey, CaseIterable { case action, tag, diskOnly }

    public init(from decoder: Decoder) throws {
        try rejectUnknownKeys(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        action = try decodeEnum(c, .action)
        tag = try c.decodeIfPresent(String.self, forKey: .tag)
        diskOnly = try c.decodeIfPresent(Bool.self, forKey: .diskOnly) ?? false
    }
}

/// Where a `start` resumes from.
public struct SnapshotRef: Codable, Equatable, Sendable {
    public var runtimeID: String
    public var tag: String

    enum CodingKeys: String, CodingKey, CaseIterable { case runtimeID, tag }

    public init(from decoder: Decoder) throws {
        try rejectUnknownKeys(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        runtimeID = try c.decode(String.self, forKey: .runtimeID)
        tag = try c.decode(String.self, forKey: .tag)
    }
}

/// One snapshot, as `snapshot` reports it.
public struct SnapshotInfo: Codable, Equatable, Sendable {
    public var runtimeID: String
    public var tag: String
    public var createdAt: String
    /// Disk only (no memory): restoring boots from the disk.
    public var diskOnly: Bool
    /// The guest's filesystems were frozen while its disk was copied (a
    /// disk-only snapshot of a running or paused workspace), so the copy is
    /// clean. False where no freeze is needed: a stopped workspace's disk,
    /// a memory snapshot (its disk goes with its memory).
    public var frozen: Bool = false
    public var memoryMiB: UInt32
    public var sizeBytes: UInt64

    enum CodingKeys: String, CodingKey { case runtimeID, tag, createdAt, diskOnly, frozen, memoryMiB, sizeBytes }
}

extension SnapshotInfo {
    // (In an extension, so the memberwise initializer stays.)
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        runtimeID = try c.decode(String.self, forKey: .runtimeID)
        tag = try c.decode(String.self, forKey: .tag)
        createdAt = try c.decode(String.self, forKey: .createdAt)
        // `#[serde(default)]` on the Rust side: older snapshots lack them.
        diskOnly = try c.decodeIfPresent(Bool.self, forKey: .diskOnly) ?? false
        frozen = try c.decodeIfPresent(Bool.self, forKey: .frozen) ?? false
        memoryMiB = try c.decode(UInt32.self, forKey: .memoryMiB)
        sizeBytes = try c.decode(UInt64.self, forKey: .sizeBytes)
    }
}
