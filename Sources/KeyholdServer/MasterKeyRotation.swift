import Foundation
import KeyholdCore
import KeyholdProtocol
import KeyholdStore
import Logging
import ServiceLifecycle

/// How fast a rotation rewraps: keys per transaction and the pause between transactions, which
/// leaves the database to the requests (`master_key_rewrap_batch`, `master_key_rewrap_pause`).
public struct RewrapPace: Sendable, Equatable {
    /// Keys per transaction.
    public var batch: Int
    /// The pause between transactions.
    public var pause: Duration
    /// A pace (1000 keys, 100 ms unless given).
    public init(batch: Int = 1000, pause: Duration = .milliseconds(100)) {
        self.batch = batch
        self.pause = pause
    }
}

/// Master-key rotation (docs/operations.md, "Master-key rotation"): keeps this process's
/// ``MasterKey`` in step with the versions the repository records, adds and activates versions,
/// rewraps the keys left under older ones, and retires those once no key uses them.
///
/// The repository is the arbiter between processes: the versions it records (with a check value
/// of each key) and the current one. A process whose `master.key` disagrees refuses to start; one
/// that lacks the current version re-reads its file and, until it has it, is not ready. All the
/// progress of a rewrap is in the rows themselves (each key's version), so a rewrap cut short by
/// a crash goes on where it stopped when the server starts again.
actor MasterKeyRotation {
    private let masterKey: MasterKey
    private let repository: any Repository
    private let directory: DataDirectory
    /// How fast it rewraps (the background service pauses by it too).
    let pace: RewrapPace
    private let logger: Logger
    /// How long a version must have been current before the older ones may be retired: every
    /// process looks at the repository's versions each second, and a secret wrapped by a request
    /// in flight when the version changed is stored within that time.
    static let retireGrace: TimeInterval = 10
    /// Why this process cannot serve every key (it lacks a version), for readiness and status.
    private(set) var problem: String?
    private var lastComplaint = Date.distantPast
    private var rewrapped = 0

    init(masterKey: MasterKey, repository: any Repository, directory: DataDirectory, pace: RewrapPace, logger: Logger) {
        self.masterKey = masterKey
        self.repository = repository
        self.directory = directory
        self.pace = pace
        self.logger = logger
    }

    /// The master key of the data directory, in either form of ``MasterKeyFile``.
    static func readFile(_ directory: DataDirectory) throws -> MasterKeyFile {
        try MasterKeyFile(contents: try directory.read(directory.masterKey), path: directory.masterKey)
    }

    private func write(_ file: MasterKeyFile) throws {
        try directory.write("master.key", try file.encoded(), mode: 0o600)
    }

    // MARK: Keeping in step

    /// Brings the file, the process and the repository into agreement. At `start`, a file that
    /// lacks the current version is an error; later it is a ``problem``.
    func reconcile(start: Bool) async throws {
        var registered = try await repository.masterKeyVersions()
        let held = masterKey.versions
        let needsFile =
            start || registered.contains { $0.retired == nil && !held.contains($0.version) }
            || registered.contains { $0.retired != nil && held.contains($0.version) }
        guard needsFile || registered.isEmpty else { return adopt(registered) }
        var file = try Self.readFile(directory)
        if registered.isEmpty {
            // The first start since rotation existed: the file's versions, its newest current.
            let newest = file.versions.map(\.version).max() ?? 1
            let now = Date()
            for v in file.versions {
                _ = try await repository.registerMasterKeyVersion(
                    MasterKeyVersionRecord(
                        version: v.version, check: MasterKeyFile.check(v.key), created: v.created.timeIntervalSince1970 == 0 ? now : v.created,
                        activated: v.version == newest ? now : nil),
                    audit: nil)
            }
            registered = try await repository.masterKeyVersions()
        }
        for v in file.versions {
            if let r = registered.first(where: { $0.version == v.version }) {
                guard r.check == MasterKeyFile.check(v.key) else {
                    throw KeyholdError(
                        .configuration, "master.key's version \(v.version) is not the key this database recorded as version \(v.version)",
                        hint:
                            "every server process on one database needs the same master.key: copy it from the process where 'keyhold-server master-key rotate' ran"
                    )
                }
            } else {
                // Added by a rotation that stopped before recording it: recorded now, not current.
                _ = try await repository.registerMasterKeyVersion(
                    MasterKeyVersionRecord(version: v.version, check: MasterKeyFile.check(v.key), created: v.created), audit: nil)
            }
        }
        // Versions retired (here by a retire-old cut short, or by another process) leave the file.
        let retired = Set(registered.filter { $0.retired != nil }.map(\.version))
        if file.versions.contains(where: { retired.contains($0.version) }), file.versions.contains(where: { !retired.contains($0.version) }) {
            file.versions.removeAll { retired.contains($0.version) }
            try write(file)
            logger.notice("retired master-key versions removed from master.key", metadata: ["versions": "\(retired.sorted())"])
        }
        masterKey.reload(file)
        if start, let current = registered.current, !masterKey.versions.contains(current.version) {
            throw KeyholdError(
                .configuration, "master.key lacks version \(current.version), the current master key of this database",
                hint:
                    "copy master.key from the server process where 'keyhold-server master-key rotate' ran (every process on one database needs the same file), then start this one"
            )
        }
        adopt(registered)
    }

    /// Wraps under the repository's current version when this process has it.
    private func adopt(_ registered: [MasterKeyVersionRecord]) {
        guard let current = registered.current else { return }
        if masterKey.use(current: current.version) {
            if problem != nil { logger.notice("master.key now holds the current version", metadata: ["version": "\(current.version)"]) }
            problem = nil
            return
        }
        problem = "master.key lacks version \(current.version), the current master key of this database"
        if Date().timeIntervalSince(lastComplaint) > 60 {
            lastComplaint = Date()
            logger.error(
                "\(problem!)",
                metadata: ["hint": "copy master.key from the server process where 'keyhold-server master-key rotate' ran; it is re-read every second"]
            )
        }
    }

    // MARK: Rewrap

    /// Runs one rewrap transaction; how many keys it rewrapped (0: none left, or none this
    /// process can read).
    func rewrapBatch() async throws -> Int {
        let current = masterKey.currentVersion
        guard masterKey.versions.contains(current) else { return 0 }
        let keys = try await repository.keysToRewrap(below: current, limit: pace.batch)
        guard !keys.isEmpty else { return 0 }
        var rewraps: [KeyRewrap] = []
        rewraps.reserveCapacity(keys.count)
        var unreadable = 0
        for key in keys {
            guard let secret = try? masterKey.unwrap(key.wrappedSecret, keyID: key.record.id) else {
                unreadable += 1
                continue
            }
            rewraps.append(KeyRewrap(id: key.record.id, old: key.wrappedSecret, new: try masterKey.wrap(secret, keyID: key.record.id)))
        }
        if unreadable > 0, Date().timeIntervalSince(lastComplaint) > 60 {
            lastComplaint = Date()
            logger.error(
                "keys wrapped under a master-key version this process lacks cannot be rewrapped",
                metadata: ["keys": "\(unreadable)", "hint": "copy master.key from the server process where 'keyhold-server master-key rotate' ran"])
        }
        guard !rewraps.isEmpty else { return 0 }
        let done = try await repository.rewrapKeys(rewraps)
        rewrapped += done
        if rewrapped >= 10 * pace.batch || keys.count < pace.batch {
            logger.info("master-key rewrap", metadata: ["version": "\(current)", "rewrapped": "\(rewrapped)"])
            rewrapped = 0
        }
        return rewraps.count
    }

    // MARK: Administration

    /// `POST /v1/admin/master-key/rotate`: a version newer than the current one — the newest the
    /// file holds, or a new one written to the file first — recorded and, unless `prepare`, made
    /// current. Audited `master_key_rotate`.
    func rotate(prepare: Bool, actor: AuditActor) async throws -> MasterKeyStatus {
        try await reconcile(start: false)
        let registered = try await repository.masterKeyVersions()
        let current = registered.current?.version ?? masterKey.currentVersion
        var file = try Self.readFile(directory)
        let pending = file.versions.filter { version in
            version.version > current && registered.first { $0.version == version.version }?.retired == nil
        }
        let target: MasterKeyFile.Version
        if let newest = pending.max(by: { $0.version < $1.version }) {
            target = newest
        } else {
            // A new version is on disk before anything is wrapped under it.
            let number = max(file.versions.map(\.version).max() ?? 1, registered.map(\.version).max() ?? 1) + 1
            guard number <= 0xFFFF else {
                throw KeyholdError(.invalidRequest, "no master-key version numbers are left", hint: "report this: 65535 rotations were made")
            }
            file.add(version: number)
            try write(file)
            target = file.versions.last!
        }
        let record = MasterKeyVersionRecord(version: target.version, check: MasterKeyFile.check(target.key), created: target.created)
        let prepared = AuditEvent(
            actor: actor, action: .masterKeyRotate, route: .adminAPI, result: .ok, detail: "prepared master-key version \(target.version)")
        if try await repository.registerMasterKeyVersion(record, audit: prepared) == .conflict {
            file.versions.removeAll { $0.version == target.version }
            try write(file)
            masterKey.reload(file)
            throw KeyholdError(
                .conflict, "master-key version \(target.version) was made by another server process on this database",
                hint: "copy master.key from that process to every process (this one included), then run 'keyhold-server master-key rotate' again")
        }
        masterKey.reload(file)
        _ = masterKey.use(current: current)
        if !prepare {
            let activated = try await repository.activateMasterKeyVersion(
                target.version, at: Date(),
                audit: AuditEvent(
                    actor: actor, action: .masterKeyRotate, route: .adminAPI, result: .ok,
                    detail: "master-key version \(target.version) is current; keys under older versions are being rewrapped"))
            if activated {
                masterKey.use(current: target.version)
                logger.notice("master-key version made current; rewrapping", metadata: ["version": "\(target.version)", "by": "\(actor)"])
            }
        }
        return try await status()
    }

    /// `POST /v1/admin/master-key/retire-old`: the versions older than the current one retired
    /// and removed from `master.key`, only when no key uses them. Audited `master_key_retire`
    /// (refusals too).
    func retireOld(actor: AuditActor) async throws -> MasterKeyStatus {
        try await reconcile(start: false)
        let registered = try await repository.masterKeyVersions()
        guard let current = registered.current else { return try await status() }
        guard registered.contains(where: { $0.version < current.version && $0.retired == nil }) else {
            throw KeyholdError(.invalidRequest, "there is no older master-key version to retire", hint: "see 'keyhold-server master-key status'")
        }
        let since = Date().timeIntervalSince(current.activated ?? .distantPast)
        guard since >= Self.retireGrace else {
            throw await refuseRetirement(
                actor: actor, detail: "version \(current.version) became current \(Int(since)) s ago",
                KeyholdError(
                    .conflict, "master-key version \(current.version) became current \(Int(since)) s ago",
                    hint:
                        "wait \(Int(Self.retireGrace)) s after a rotation (every server process takes up the new version within a second), then run it again"
                ))
        }
        let inUse = try await repository.retireMasterKeyVersions(
            below: current.version, at: Date(),
            audit: AuditEvent(
                actor: actor, action: .masterKeyRetire, route: .adminAPI, result: .ok,
                detail: "master-key versions below \(current.version) retired"))
        guard inUse.isEmpty else {
            let counts = inUse.sorted { $0.key < $1.key }.map { "\($0.value) under version \($0.key)" }.joined(separator: ", ")
            throw await refuseRetirement(
                actor: actor, detail: "keys still wrapped under older versions: \(counts)",
                KeyholdError(
                    .conflict, "keys are still wrapped under older master-key versions (\(counts))",
                    hint: "wait for the rewrap to finish ('keyhold-server master-key status' shows what is left), then run it again"))
        }
        try await reconcile(start: false)
        logger.notice("older master-key versions retired", metadata: ["current": "\(current.version)", "by": "\(actor)"])
        return try await status()
    }

    /// `error`, after auditing the refusal.
    private func refuseRetirement(actor: AuditActor, detail: String, _ error: KeyholdError) async -> KeyholdError {
        try? await repository.appendAudit(
            AuditEvent(actor: actor, action: .masterKeyRetire, route: .adminAPI, result: .refused(error.code), detail: detail))
        return error
    }

    /// `GET /v1/admin/master-key`.
    func status() async throws -> MasterKeyStatus {
        let registered = try await repository.masterKeyVersions()
        let counts = try await repository.keyCountsByMasterVersion()
        let current = registered.current?.version ?? masterKey.currentVersion
        let held = masterKey.versions
        let versions = registered.map { r in
            let state =
                r.retired != nil ? "retired" : r.version == current ? "current" : r.activated == nil && r.version > current ? "prepared" : "previous"
            return MasterKeyVersionInfo(
                version: r.version, state: state, keys: counts[r.version] ?? 0, held: held.contains(r.version), created: r.created,
                activated: r.activated, retired: r.retired)
        }
        return MasterKeyStatus(
            current: current, versions: versions, remaining: counts.filter { $0.key < current }.values.reduce(0, +),
            total: counts.values.reduce(0, +))
    }
}

/// Runs the rotation's background work: every second it looks at the repository's versions and,
/// while keys are left under an older one, rewraps them batch after batch.
struct MasterKeyRewrapService: Service {
    let rotation: MasterKeyRotation
    let logger: Logger

    func run() async throws {
        var lastError = Date.distantPast
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            let busy: Bool
            do {
                try await rotation.reconcile(start: false)
                busy = try await rotation.rewrapBatch() > 0
            } catch {
                busy = false
                if Date().timeIntervalSince(lastError) > 60 {
                    lastError = Date()
                    logger.error("master-key rewrap failed; trying again", metadata: ["error": "\(error)"])
                }
            }
            let wait = busy ? rotation.pace.pause : .seconds(1)
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: wait) }
        }
    }
}
