// The protocol's snapshot types (crates/vmkit-protocol/src/snapshot.rs),
// strict like the rest of Wire.swift: a request's unknown field is an error.
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
    public var diskOnly: Bool
    public var memoryMiB: UInt32
    public var sizeBytes: UInt64
}
