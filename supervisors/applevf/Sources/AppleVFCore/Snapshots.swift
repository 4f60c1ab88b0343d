// Snapshots of a workspace this supervisor runs, laid out and described as
// crates/lifecycle/src/snapshot.rs does, so either side reads the other's:
// `<workspace>/snapshots/<tag>/` holds `snapshot.json` (the SnapshotInfo,
// the kernel's SHA-256, the machine config, the files), `rootfs.ext4` (the
// disk's copy) and, for a memory snapshot, `vm.vzstate` (what
// saveMachineStateTo wrote through the per-VM process's `save` verb).
//
// A snapshot is made with the VM paused, in `.staging-<tag>`, renamed into
// place at the end: a failure (a full disk, say) leaves nothing listed, and
// the workspace runs on. A disk-only snapshot of a running or paused
// workspace is made with the guest's filesystems frozen instead
// (Freeze.swift; a paused one runs for the freeze and is paused again), and
// says `frozen: true`.
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The folders and files of snapshots, as the Rust lifecycle names them.
enum SnapshotFiles {
    static let folder = "snapshots"
    static let meta = "snapshot.json"
    static let disk = "rootfs.ext4"
    /// The machine state (crates/backend-apple-vf's STATE_FILE).
    static let state = "vm.vzstate"
    /// Largest `snapshot.json` read back (it is data on disk, not ours to trust).
    static let maxMetaBytes = 1 << 20
}

/// What `snapshot.json` holds (the Rust lifecycle's `SnapshotMeta`).
struct SnapshotMeta: Codable {
    var info: SnapshotInfo
    /// SHA-256 of the kernel the VM was booted with.
    var kernelSha256: String
    /// The workspace's machine at the time.
    var config: MachineConfig
    /// The files the snapshot holds besides this one; a restore needs them all.
    var files: [String]

    init(info: SnapshotInfo, kernelSha256: String, config: MachineConfig, files: [String]) {
        self.info = info
        self.kernelSha256 = kernelSha256
        self.config = config
        self.files = files
    }

    enum CodingKeys: String, CodingKey { case info, kernelSha256, config, files }

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        info = try c.decode(SnapshotInfo.self, forKey: .info)
        kernelSha256 = try c.decode(String.self, forKey: .kernelSha256)
        config = try c.decode(MachineConfig.self, forKey: .config)
        files = try c.decodeIfPresent([String].self, forKey: .files) ?? []
    }
}

/// A snapshot a `start` may continue from, checked to fit and be whole.
struct RestoreSource {
    let ref: SnapshotRef
    let dir: String
    let meta: SnapshotMeta
    var disk: String { "\(dir)/\(SnapshotFiles.disk)" }
    /// The state to restore, or nil for a disk-only snapshot (a fresh boot).
    var machineState: String? { meta.info.diskOnly ? nil : "\(dir)/\(SnapshotFiles.state)" }
}

extension Supervisor {
    /// The `snapshot` command: what it made or listed (nothing for delete).
    func snapshot(_ spec: SnapshotRequest, _ store: StateStore) throws -> [SnapshotInfo] {
        var record = try load(store)
        try reconcile(&record, store)
        let dir = "\(store.layout.dir)/\(SnapshotFiles.folder)"
        switch (spec.action, spec.tag) {
        case (.list, let tag):
            return listSnapshots(dir).filter { tag == nil || $0.tag == tag }
        case (.create, let tag?):
            return [try createSnapshot(record, store.layout, dir, tag, diskOnly: spec.diskOnly)]
        case (.delete, let tag?):
            let one = "\(dir)/\(tag)"
            guard isFile("\(one)/\(SnapshotFiles.meta)") else { throw snapshotNotFound(record.name, tag) }
            do {
                try FileManager.default.removeItem(atPath: one)
            } catch {
                throw ProtocolError(.internal, "removing snapshot \(one): \(error)")
            }
            return []
        case (_, nil):
            throw ProtocolError.invalid("snapshot.tag is required")
        }
    }

    func createSnapshot(_ record: WorkspaceRecord, _ layout: WorkspaceLayout, _ dir: String, _ tag: String,
                        diskOnly: Bool) throws -> SnapshotInfo {
        let name = record.name
        let running: Bool
        switch record.state {
        case .running: running = true
        case .paused: running = false
        case let s where diskOnly && !s.hasVM: running = false
        case let s:
            throw ProtocolError(.invalidState,
                "cannot snapshot \(quoted(name)): it is \(s.rawValue); a memory snapshot needs a running or paused workspace (--disk-only works on a stopped one)")
        }
        let final = "\(dir)/\(tag)"
        if FileManager.default.fileExists(atPath: final) {
            throw ProtocolError(.alreadyExists, "workspace \(quoted(name)) already has a snapshot \(quoted(tag)); delete it first")
        }
        let config = record.config
        let kernelSha256 = try sha256File(config.kernelPath)
        let staging = "\(dir)/.staging-\(tag)"
        try? FileManager.default.removeItem(atPath: staging)
        try privateDirectory(dir)
        try privateDirectory(staging)
        // A disk checkpoint of a live guest is made with its filesystems
        // frozen, so the copy is clean; memory, or a stopped disk, with the
        // vCPUs stopped (or none running).
        let frozen = diskOnly && record.state.hasVM
        var info = SnapshotInfo(runtimeID: name, tag: tag, createdAt: rfc3339Now(),
                                diskOnly: diskOnly || !record.state.hasVM, frozen: frozen,
                                memoryMiB: config.memoryMiB, sizeBytes: 0)
        let made = Result<Void, Error> {
            let disk = "\(staging)/\(SnapshotFiles.disk)"
            if frozen {
                try cloneFrozen(layout, name, into: disk, paused: !running)
            } else {
                if running { try setPaused(layout, true) }
                let copied = Result<Void, Error> {
                    if !info.diskOnly { try saveMachineState(layout, to: "\(staging)/\(SnapshotFiles.state)") }
                    try copyDiskIntoSnapshot(layout.disk, to: disk)
                }
                // The workspace runs on whatever happened to the snapshot.
                let resumed = Result<Void, Error> { if running { try setPaused(layout, false) } }
                try firstFailure(copied, resumed, name)
            }
            let meta = SnapshotMeta(info: info, kernelSha256: kernelSha256, config: config, files: try fileNames(staging))
            try writeSynced("\(staging)/\(SnapshotFiles.meta)", Data(encodePretty(meta).utf8))
            guard rename(staging, final) == 0 else {
                throw ProtocolError(.internal, "moving the snapshot into \(final): \(SystemError.last("rename"))")
            }
        }
        switch made {
        case .success:
            info.sizeBytes = diskUsage(final)
            return info
        case .failure(let error):
            try? FileManager.default.removeItem(atPath: staging)
            throw error
        }
    }

    /// The per-VM process saves the paused VM (saveMachineStateTo) to `path`.
    func saveMachineState(_ layout: WorkspaceLayout, to path: String) throws {
        let answer = try controlCall(layout.control, ControlRequest(verb: .save, path: path))
        guard answer.ok else {
            throw answer.error ?? ProtocolError(.internal, "the VM's process could not save the VM's state")
        }
        guard answer.state == .paused else {
            throw ProtocolError(.internal, "the VM's process answered save with state \(answer.state?.rawValue ?? "none"), not paused")
        }
    }

    /// For a `start` with `fromSnapshot`: the snapshot, checked to fit this
    /// workspace's machine (memory needs the same kernel, memory size and
    /// vCPUs; a disk-only one boots afresh on any) and to be whole.
    /// Changes nothing.
    func restoreSource(_ from: SnapshotRef, for record: WorkspaceRecord, stateDir: String) throws -> RestoreSource {
        let (meta, dir) = try readSnapshot(from, stateDir: stateDir)
        func refuse(_ why: String) -> ProtocolError {
            .invalid("cannot restore snapshot \(from.runtimeID):\(from.tag) into \(quoted(record.name)): \(why); nothing was started")
        }
        if !meta.info.diskOnly {
            if let why = try misfit(record.config, meta) { throw refuse(why) }
        }
        for f in meta.files + [SnapshotFiles.disk] {
            // Names from a file on disk: only plain names count.
            let plain = !f.isEmpty && !f.contains("/") && f != "." && f != ".." && !f.contains("\0")
            if !plain || !isFile("\(dir)/\(f)") { throw refuse("\(dir)/\(f) is missing") }
        }
        if !meta.info.diskOnly && !isFile("\(dir)/\(SnapshotFiles.state)") {
            throw refuse("it has no \(SnapshotFiles.state): its memory was not saved by Virtualization.framework (it was taken on another backend)")
        }
        return RestoreSource(ref: from, dir: dir, meta: meta)
    }

    /// The config a fork (`prepare` with `fromSnapshot`) gets: the
    /// snapshot's machine and disk, in the request's state folder, with its
    /// own hostname (from its name) and no published ports (the source
    /// holds those host ports).
    func forkConfig(_ from: SnapshotRef, _ given: MachineConfig, stateDir: String) throws -> MachineConfig {
        let (meta, dir) = try readSnapshot(from, stateDir: stateDir)
        var config = meta.config
        config.rootfsPath = "\(dir)/\(SnapshotFiles.disk)"
        config.stateDir = given.stateDir
        config.hostname = nil
        config.publish = []
        return config
    }
}

/// Why memory saved from the machine in `meta` cannot continue in `config`, or nil.
func misfit(_ config: MachineConfig, _ meta: SnapshotMeta) throws -> String? {
    let now = try sha256File(config.kernelPath)
    if now != meta.kernelSha256 {
        return "the kernel changed since the snapshot (\(config.kernelPath) is sha256:\(now.prefix(12)), the snapshot was made with sha256:\(meta.kernelSha256.prefix(12)))"
    }
    if config.memoryMiB != meta.config.memoryMiB {
        return "the snapshot has \(meta.config.memoryMiB) MiB of memory, the workspace \(config.memoryMiB) MiB"
    }
    if config.cpuCount != meta.config.cpuCount {
        return "the snapshot has \(meta.config.cpuCount) vCPUs, the workspace \(config.cpuCount)"
    }
    return nil
}

func snapshotNotFound(_ name: String, _ tag: String) -> ProtocolError {
    ProtocolError(.notFound, "workspace \(quoted(name)) has no snapshot \(quoted(tag)) (see `microagent snapshot list \(name)`)")
}

/// The snapshot `from` names in `stateDir`, and its folder.
func readSnapshot(_ from: SnapshotRef, stateDir: String) throws -> (SnapshotMeta, String) {
    // Both names were validated as plain folder names (validate(_:)).
    let dir = "\(stateDir)/workspaces/\(from.runtimeID)/\(SnapshotFiles.folder)/\(from.tag)"
    guard isFile("\(dir)/\(SnapshotFiles.meta)") else { throw snapshotNotFound(from.runtimeID, from.tag) }
    return (try readSnapshotMeta(dir), dir)
}

/// Reads `<dir>/snapshot.json`, at most `maxMetaBytes` of it.
func readSnapshotMeta(_ dir: String) throws -> SnapshotMeta {
    let path = "\(dir)/\(SnapshotFiles.meta)"
    let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
    guard fd >= 0 else { throw ProtocolError(.internal, "reading \(path): \(SystemError.last("open"))") }
    defer { closeDescriptor(fd) }
    guard let bytes = readAll(fd, limit: SnapshotFiles.maxMetaBytes) else {
        throw ProtocolError(.internal, "\(path) is over \(SnapshotFiles.maxMetaBytes) bytes or unreadable: not a snapshot description")
    }
    let data = Data(bytes)
    guard isWellFormedJSON(data) else { throw ProtocolError(.internal, "\(path) is not a snapshot description: not JSON") }
    do {
        return try JSONDecoder().decode(SnapshotMeta.self, from: data)
    } catch let error as DecodingError {
        throw ProtocolError(.internal, "\(path) is not a snapshot description: \(describe(error).message)")
    }
}

/// The snapshots under `dir`, oldest first; staging folders and unreadable
/// entries are left out.
func listSnapshots(_ dir: String) -> [SnapshotInfo] {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
    return names.filter { !$0.hasPrefix(".") }.compactMap { name -> SnapshotInfo? in
        guard var info = try? readSnapshotMeta("\(dir)/\(name)").info else { return nil }
        info.sizeBytes = diskUsage("\(dir)/\(name)")
        return info
    }.sorted { $0.createdAt < $1.createdAt }
}

/// The failure of `made`, else that of `restored` (what undoes its side
/// effects: a resume, a pause); when both failed, the second is logged.
func firstFailure(_ made: Result<Void, Error>, _ restored: Result<Void, Error>, _ name: String) throws {
    if case .failure(let r) = restored, case .failure = made {
        FileHandle.standardError.write(Data("\(quoted(name)) after a failed snapshot: \(r)\n".utf8))
    }
    try made.get()
    try restored.get()
}

/// Copies a workspace's disk into a snapshot.
func copyDiskIntoSnapshot(_ disk: String, to dst: String) throws {
    do {
        try cloneFile(disk, to: dst)
    } catch {
        throw ProtocolError(.internal, "copying the disk into the snapshot: \(error)")
    }
}

/// Gives `dst` its own copy of `src` (a clone on APFS), complete or not at
/// all: copied under a temporary name beside it, then renamed over it.
func cloneFile(_ src: String, to dst: String) throws {
    let tmp = "\((dst as NSString).deletingLastPathComponent)/.\((dst as NSString).lastPathComponent).tmp.\(getpid())"
    try? FileManager.default.removeItem(atPath: tmp)
    do {
        try FileManager.default.copyItem(atPath: src, toPath: tmp)
        guard rename(tmp, dst) == 0 else { throw SystemError.last("rename") }
    } catch {
        try? FileManager.default.removeItem(atPath: tmp)
        throw error
    }
}

/// Writes `data` to a new file at `path` (0600) and syncs it.
func writeSynced(_ path: String, _ data: Data) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw ProtocolError(.internal, "writing \(path): \(SystemError.last("open"))") }
    defer { closeDescriptor(fd) }
    do {
        try writeAll(fd, Array(data))
    } catch {
        throw ProtocolError(.internal, "writing \(path): \(error)")
    }
    guard fsync(fd) == 0 else { throw ProtocolError(.internal, "writing \(path): \(SystemError.last("fsync"))") }
}

/// The names of the regular files in `dir`, sorted.
func fileNames(_ dir: String) throws -> [String] {
    do {
        return try FileManager.default.contentsOfDirectory(atPath: dir).filter { isFile("\(dir)/\($0)") }.sorted()
    } catch {
        throw ProtocolError(.internal, "reading \(dir): \(error)")
    }
}

/// Bytes the files of `dir` occupy (allocated blocks: sparse files count
/// only what they hold).
func diskUsage(_ dir: String) -> UInt64 {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
    return names.reduce(0) { total, name in
        var st = stat()
        guard lstat("\(dir)/\(name)", &st) == 0 else { return total }
        return total + UInt64(st.st_blocks) * 512
    }
}

/// Indented JSON with sorted keys, as a person reads `snapshot.json`.
func encodePretty<T: Encodable>(_ value: T) throws -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .withoutEscapingSlashes, .sortedKeys]
    return String(decoding: try encoder.encode(value), as: UTF8.self)
}
