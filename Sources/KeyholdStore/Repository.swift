public import Foundation
public import KeyholdCore
public import KeyholdProtocol

/// The server's key repository: keys, enrolled clients, enrollment tokens, the audit trail and
/// settings. One protocol, three drivers (memory, SQLite, PostgreSQL), one conformance suite.
///
/// Every mutating call returns only after its change is durable (committed), so the server can
/// acknowledge what it returns.
public protocol Repository: Sendable {
    /// Runs what the driver needs while it is used (PostgreSQL's connection pool) until the task is
    /// cancelled; the repository answers only while it runs. A daemon runs it as a service of its
    /// group; one-off users call ``withRunning(_:)``. Drivers with nothing to run wait for
    /// cancellation.
    func run() async throws

    /// Creates or upgrades the schema; safe to call at every start, also from several processes.
    func migrate() async throws

    /// The schema migrations applied so far (``Schema/migrations`` versions), changing nothing: an
    /// empty list for a database never migrated (`keyhold-server doctor`).
    func appliedMigrations() async throws -> [Int]

    // MARK: Keys

    /// Stores a key unless its id exists: same fingerprint → `alreadyPresent`, another → `conflict`.
    /// The audit event (if given) is written in the same transaction.
    func insertKey(_ key: StoredKey, audit: AuditEvent?) async throws -> KeyInsertOutcome
    /// The key with `id`, if stored.
    func key(id: KeyID) async throws -> StoredKey?
    /// Reads the key and appends its `release` audit record atomically, committed before returning:
    /// a key is never returned unless its audit record is durable. A missing key is audited
    /// (`not_found`) unless the request's `auditIfMissing` is false. The record's result follows
    /// ``ReleaseRequest/result(for:)``. Returns the key whatever its state; the caller refuses
    /// blocked or revoked keys (whose audit record already says `key_blocked`).
    ///
    /// With a ``ReleaseRequest/caller``, the same statement first checks that it is an active
    /// client with that role and certificate; if not, nothing is read or written and
    /// ``ReleaseCallerRefused`` is thrown. Concurrent releases may share one commit.
    func releaseKey(_ request: ReleaseRequest) async throws -> StoredKey?
    /// Stores a key obtained from the primary (`obtained` is its audit record) and releases it to
    /// `release`, in one transaction: one durable commit for both. A key already present with the
    /// same secret is released as stored; another secret is a `conflict` (audited as such) and
    /// nothing is released.
    func insertAndRelease(_ key: StoredKey, obtained: AuditEvent, release: ReleaseRequest) async throws -> (KeyInsertOutcome, StoredKey?)
    /// Sets or clears the block on a key (giving it a new sequence number); `false` if there is no such key.
    func setBlocked(id: KeyID, blocked: Bool, audit: AuditEvent) async throws -> Bool
    /// Replaces the stored key with `key`'s id — only while its secret fingerprint is still
    /// `fingerprint` — with `key` (record, secret, provenance; the block flag is kept), renewing
    /// its push sequence, and writes `audit` in the same transaction. False when nothing matched.
    func replaceKey(_ key: StoredKey, replacing fingerprint: [UInt8], audit: AuditEvent) async throws -> Bool
    /// The keys whose block state changed after `after` (a block or unblock here, or a block
    /// that came up in a push), one entry per key with its latest state, in change order: the
    /// feed a primary answers its secondaries with.
    func stateChanges(after: Int64, limit: Int) async throws -> [KeyStateChange]
    /// Applies a primary's changes to the keys held here, in one transaction: a key whose state
    /// differs takes the new one and enters this server's own feed (for its secondaries), with
    /// one audit record (`audit` with the key id, action `block` or `unblock`); keys not held
    /// here are skipped. Returns the ids changed.
    func applyStateChanges(_ changes: [KeyStateChange], audit: AuditEvent) async throws -> [KeyID]
    /// Stores a batch received from a secondary in one transaction, in order. A key already present
    /// with the same secret counts as `alreadyPresent` and takes the incoming `blocked = true`.
    /// `audit` is appended once for the batch (with the counts in its detail) and once per conflict.
    func insertKeys(_ keys: [StoredKey], audit: AuditEvent) async throws -> [KeyInsertOutcome]
    /// Imports keys in one transaction: every key or none. Batches come from `source` inside the
    /// transaction (so memory stays bounded by one batch). Keys already present with the same secret
    /// count as present (and take an incoming block); if any key conflicts, the whole import is rolled
    /// back and ``KeyImportConflict`` names the conflicting ids. Each key gets an `import` audit record
    /// and `audit` is appended once with the counts, in the same transaction.
    func importKeys(from source: any KeyBatchSource, audit: AuditEvent) async throws -> KeyImportResult
    /// Keys with a sequence number greater than `after`, in sequence order, at most `limit`.
    func keys(afterSequence after: Int64, limit: Int) async throws -> [StoredKey]
    /// How many keys have a sequence number greater than `after` (what a push has yet to send).
    func keyCount(afterSequence after: Int64) async throws -> Int
    /// Key records in id order after `after`, at most `limit`.
    func listKeys(after: KeyID?, limit: Int) async throws -> [StoredKey]
    /// How many keys are stored.
    func keyCount() async throws -> Int

    // MARK: Enrolled clients

    /// Stores a new enrollment.
    func insertClient(_ client: EnrolledClient) async throws
    /// The enrollment with `id`, if any.
    func client(id: ClientID) async throws -> EnrolledClient?
    /// Every enrollment (of one role, if given).
    func listClients(role: ClientRole?) async throws -> [EnrolledClient]
    /// Sets the state; `false` if there is no such client.
    func setClientState(id: ClientID, state: EnrollmentState) async throws -> Bool
    /// Records a heartbeat's time, version and key count.
    func recordHeartbeat(id: ClientID, at: Date, agentVersion: String, keyCount: Int) async throws
    /// Records a renewed certificate (`fingerprint`, expiring at `expires`) as the next one of the
    /// active enrollment `id` whose current certificate is still `current`, replacing any next one
    /// not presented yet, and writes `audit` in the same transaction; `false` (nothing written)
    /// when there is no such enrollment. `issuer` is the fingerprint of the CA that issued it.
    func offerCertificate(
        id: ClientID, current: String, next fingerprint: String, expires: Date, issuer: String?, audit: AuditEvent
    ) async throws -> Bool
    /// Makes the next certificate `fingerprint` the current one of `id` (the old one is refused
    /// from then on), with its issuer; `false` when it is not `id`'s next certificate (any more).
    func adoptCertificate(id: ClientID, fingerprint: String) async throws -> Bool

    // MARK: Enrollment tokens

    /// Stores a new token.
    func insertToken(_ token: EnrollmentTokenRecord) async throws
    /// Atomically checks a token (by id and secret hash) and takes one use.
    func redeemToken(id: TokenID, secretHash: [UInt8], now: Date) async throws -> TokenRedemption
    /// Checks a token as ``redeemToken(id:secretHash:now:)`` would, taking nothing: `.redeemed`
    /// means a use is left now (a later redemption may still lose a race for it).
    func checkToken(id: TokenID, secretHash: [UInt8], now: Date) async throws -> TokenRedemption
    /// Every token.
    func listTokens() async throws -> [EnrollmentTokenRecord]
    /// Withdraws a token; `false` if there is no such token.
    func revokeToken(id: TokenID) async throws -> Bool

    // MARK: Audit

    /// Appends one event, committed before returning.
    func appendAudit(_ event: AuditEvent) async throws
    /// Appends several events in one transaction (an export writes one per key before sending it).
    func appendAudit(_ events: [AuditEvent]) async throws
    /// Events with a sequence greater than `after`, oldest first, at most `limit`.
    func audit(after: Int64, limit: Int) async throws -> [AuditEvent]

    // MARK: Reveal and rotation

    /// Reads the key, marks it *rotation required* and appends `audit` (its `reveal` record), in
    /// one transaction committed before returning: a key is never revealed unless its record is
    /// durable. Nil, with nothing written, when there is no such key.
    func revealKey(id: KeyID, audit: AuditEvent) async throws -> StoredKey?
    /// Which of `ids` are marked *rotation required*.
    func rotationRequired(_ ids: [KeyID]) async throws -> Set<KeyID>

    // MARK: Escrow checks

    /// Stores each check unless the key's stored check is newer, and appends `audit`, in one
    /// transaction.
    func recordEscrowChecks(_ checks: [EscrowCheckRecord], audit: [AuditEvent]) async throws
    /// The stored checks of `ids` (keys never checked are absent).
    func escrowChecks(keys ids: [KeyID]) async throws -> [EscrowCheckRecord]
    /// The stored checks made by `clients`.
    func escrowChecks(clients: [ClientID]) async throws -> [EscrowCheckRecord]
    /// Checks that found a drift (the key did not open the drive), newest first, at most `limit`.
    func driftedEscrowChecks(limit: Int) async throws -> [EscrowCheckRecord]
    /// How many keys' last check found a drift.
    func driftedEscrowCheckCount() async throws -> Int

    // MARK: Release approval

    /// The open request (pending, approved or denied) of `request`'s device for its key, or
    /// else `request` itself (pending), stored with `audit` in the same transaction (the audit
    /// record is written only for a new request). At most one request per device and key is
    /// open, also under concurrent calls. Returns the open request and whether it is new.
    func openApproval(_ request: ApprovalRecord, audit: AuditEvent) async throws -> (ApprovalRecord, created: Bool)
    /// The request with `id`, if any.
    func approval(id: ApprovalID) async throws -> ApprovalRecord?
    /// Requests in one of `states`, newest first, at most `limit`.
    func listApprovals(states: Set<ApprovalState>, limit: Int) async throws -> [ApprovalRecord]
    /// Moves request `id` to `state` if it is in one of `from`, recording `decision` (when
    /// given; otherwise the last decision stays) and writing `audit` (when given) in the same
    /// transaction. The updated request, or nil when there is no such request in one of `from`.
    func setApprovalState(
        id: ApprovalID, from: Set<ApprovalState>, to state: ApprovalState, decision: ApprovalDecision?, audit: AuditEvent?
    ) async throws -> ApprovalRecord?

    // MARK: Master-key versions

    /// The master-key versions registered, in version order (empty before the first rotation
    /// or start that registered one).
    func masterKeyVersions() async throws -> [MasterKeyVersionRecord]
    /// Records a version (with `activated` and `retired` as given) unless its number is taken,
    /// appending `audit` (if given) in the same transaction when it was recorded. The same check
    /// value already there is `alreadyRegistered`; another is a `conflict` and nothing changes.
    func registerMasterKeyVersion(_ version: MasterKeyVersionRecord, audit: AuditEvent?) async throws -> MasterKeyRegistration
    /// Makes a registered, not yet activated version the one new secrets are wrapped under and
    /// appends `audit`, in one transaction; `false` (nothing written) when there is no such version
    /// or it was activated already.
    func activateMasterKeyVersion(_ version: Int, at: Date, audit: AuditEvent) async throws -> Bool
    /// Keys whose secret is wrapped under a version below `version`, at most `limit` (in no
    /// particular order: a rewrap takes them away).
    func keysToRewrap(below version: Int, limit: Int) async throws -> [StoredKey]
    /// Stores each rewrapped secret while the row still holds the one read, in one transaction;
    /// the key's sequence numbers do not change (nothing about the key changed). Returns how many
    /// rows were rewritten.
    func rewrapKeys(_ rewraps: [KeyRewrap]) async throws -> Int
    /// How many keys are wrapped under each master-key version.
    func keyCountsByMasterVersion() async throws -> [Int: Int]
    /// In one transaction: when no key is wrapped under a version below `version`, marks every
    /// registered version below it retired (at `at`) and appends `audit`; otherwise changes
    /// nothing. Returns how many keys each older version still wraps (empty when retired).
    func retireMasterKeyVersions(below version: Int, at: Date, audit: AuditEvent) async throws -> [Int: Int]

    // MARK: Deletion and retention

    /// Marks a revoked or moved client `deleted` at `at`, with `audit` in the same commit; false
    /// (nothing written) when there is no such client or it is not revoked or moved.
    func deleteClient(id: ClientID, at: Date, audit: AuditEvent) async throws -> Bool
    /// How many keys `client` escrowed here that are not destroyed.
    func liveKeyCount(escrowedBy client: ClientID) async throws -> Int
    /// Keys the retention destroys: held for clients (``StoredKey/escrowedBy``) deleted at or
    /// before `cutoff`, not destroyed, and not named by the last drive check of an active client;
    /// at most `limit`.
    func keysDueForDestruction(deletedBefore cutoff: Date, limit: Int) async throws -> [DueKey]
    /// Destroys keys in one transaction: each key not destroyed yet whose facts its
    /// ``KeyDestruction/rule`` allows loses its wrapped secret and fingerprint, is stamped
    /// destroyed at `at`, takes new push and change-feed sequence numbers (so the destruction
    /// travels up and down the hierarchy), and its audit record commits with it. One outcome per
    /// request, in order.
    func destroyKeys(_ requests: [KeyDestruction], at: Date) async throws -> [KeyDestructionOutcome]

    // MARK: Settings

    /// A named setting (`use_hierarchy`, `push_cursor`).
    func setting(_ name: String) async throws -> String?
    /// Sets a named setting, durably.
    func setSetting(_ name: String, _ value: String) async throws

    /// Releases connections; the repository is unusable afterwards.
    func close() async throws

    /// The driver's own counts (connections in use, database errors, release batch sizes), for
    /// the server's metrics.
    var statistics: StoreStatistics { get }
}

extension Repository {
    /// ``offerCertificate(id:current:next:expires:issuer:audit:)`` without recording the issuer.
    public func offerCertificate(id: ClientID, current: String, next fingerprint: String, expires: Date, audit: AuditEvent) async throws -> Bool {
        try await offerCertificate(id: id, current: current, next: fingerprint, expires: expires, issuer: nil, audit: audit)
    }

    /// Runs `body` while the repository's ``run()`` runs beside it, then stops it: for commands
    /// and tests that use a repository outside a service group.
    public func withRunning<T: Sendable>(_ body: @Sendable (Self) async throws -> T) async throws -> T {
        try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask {
                try await self.run()
                return nil
            }
            let result = try await body(self)
            group.cancelAll()
            return result
        }
    }
}

/// Waits until the task is cancelled: the ``Repository/run()`` of drivers with nothing to run.
public func waitForCancellation() async {
    let (stream, _) = AsyncStream<Never>.makeStream()
    for await _ in stream {}
}

/// An error of the repository itself (not of a request).
public struct RepositoryError: Error, CustomStringConvertible {
    /// What went wrong.
    public var description: String
    /// An error saying `description`.
    public init(_ description: String) { self.description = description }
}

/// Fault injection for the conformance suite: makes every later audit write fail the way a full
/// or broken database would, so tests can show that no key leaves without its audit record.
public protocol RepositoryFaultInjection: Repository {
    /// Makes every later audit write fail.
    func breakAuditWrites() async throws
}

/// Who asks for a key and how, for its `release` audit record.
public struct ReleaseRequest: Sendable {
    /// The key asked for.
    public var keyID: KeyID
    /// Who asks.
    public var actor: AuditActor
    /// How the request came.
    public var route: AuditRoute
    /// Extra words for the record.
    public var detail: String
    /// When it was asked.
    public var time: Date
    /// When false, a missing key writes no record (the caller audits the miss itself, after
    /// asking the hierarchy): the release of a present key stays one statement either way.
    public var auditIfMissing = true
    /// The enrollment the request must come from, checked in the release itself, so that an
    /// authenticated key request costs one database round trip instead of two.
    public var caller: ReleaseCaller?

    /// A request for `keyID`.
    public init(keyID: KeyID, actor: AuditActor, route: AuditRoute, detail: String = "", time: Date = Date()) {
        self.keyID = keyID
        self.actor = actor
        self.route = route
        self.detail = detail
        self.time = time
    }

    /// The audit result of a release, the same in every driver: `not_found` without a key,
    /// `key_destroyed` for a destroyed one, `key_blocked` for a blocked or revoked key, else `ok`.
    public static func result(for key: StoredKey?) -> AuditResult {
        guard let key else { return .refused(.notFound) }
        if key.destroyed != nil { return .refused(.keyDestroyed) }
        return key.blocked || key.record.state == .revoked ? .refused(.keyBlocked) : .ok
    }

    /// The audit record for `key`.
    public func auditEvent(for key: StoredKey?) -> AuditEvent {
        AuditEvent(time: time, actor: actor, action: .release, keyID: keyID, route: route, result: Self.result(for: key), detail: detail)
    }
}

/// A client a release is checked against: enrolled with this role and certificate, and active.
public struct ReleaseCaller: Sendable, Equatable {
    /// Its client id.
    public var id: ClientID
    /// The role it must have.
    public var role: ClientRole
    /// Lowercase hex SHA-256 of the certificate it presented.
    public var certificateFingerprint: String

    /// A caller to check.
    public init(id: ClientID, role: ClientRole, certificateFingerprint: String) {
        self.id = id
        self.role = role
        self.certificateFingerprint = certificateFingerprint
    }

    /// Whether `client` is this caller's active enrollment (what the drivers' SQL checks too).
    public func matches(_ client: EnrolledClient?) -> Bool {
        guard let client else { return false }
        return client.role == role && client.certificateFingerprint == certificateFingerprint && client.state == .active
    }
}

/// A release named a ``ReleaseRequest/caller`` that is not an active client with that role and
/// certificate; nothing was read or written (the server then says exactly why, and audits that).
public struct ReleaseCallerRefused: Error, Sendable {
    /// The refusal.
    public init() {}
}

/// Supplies an import's keys, batch by batch, synchronously: it is called inside the import's
/// database transaction. Returns nil at the end; throws to abort (and roll back) the import.
public protocol KeyBatchSource: Sendable {
    /// The next batch, or nil at the end.
    func nextBatch() throws -> [StoredKey]?
}

/// What an import stored.
public struct KeyImportResult: Sendable, Equatable {
    /// Keys stored now.
    public var inserted: Int
    /// Keys that were there with the same secret.
    public var alreadyPresent: Int
    /// Keys destroyed here: not brought back (a destroyed key stays destroyed).
    public var destroyed: Int
    /// A result.
    public init(inserted: Int, alreadyPresent: Int, destroyed: Int = 0) {
        self.inserted = inserted
        self.alreadyPresent = alreadyPresent
        self.destroyed = destroyed
    }
}

/// An import was refused and rolled back because these key ids exist here with other secrets.
public struct KeyImportConflict: Error, Sendable {
    /// The conflicting ids, at most ``limit`` of them.
    public var ids: [KeyID]
    /// How many keys conflicted in all.
    public var count: Int
    /// The most ids an error lists.
    public static let limit = 1000
}

/// Per-key audit records of an import and the conflict bookkeeping, the same in every driver.
public struct ImportTally: Sendable {
    /// Keys stored so far.
    public var inserted = 0
    /// Keys found present so far.
    public var alreadyPresent = 0
    /// The first ``KeyImportConflict/limit`` conflicting ids.
    public var conflicts: [KeyID] = []
    /// How many keys conflicted.
    public var conflictCount = 0
    /// Keys refused because they were destroyed here.
    public var destroyed = 0
    /// An empty tally.
    public init() {}

    /// Counts `outcomes` and returns the per-key audit records of the batch.
    public mutating func add(_ batch: [StoredKey], _ outcomes: [KeyInsertOutcome], base: AuditEvent) -> [AuditEvent] {
        var events: [AuditEvent] = []
        events.reserveCapacity(batch.count)
        for (key, outcome) in zip(batch, outcomes) {
            switch outcome {
            case .inserted: inserted += 1
            case .alreadyPresent: alreadyPresent += 1
            case .destroyed: destroyed += 1
            case .conflict:
                conflictCount += 1
                if conflicts.count < KeyImportConflict.limit { conflicts.append(key.record.id) }
                continue
            }
            let result: AuditResult =
                switch outcome {
                case .inserted: .ok
                case .destroyed: .refused(.keyDestroyed)
                default: .alreadyPresent
                }
            events.append(
                AuditEvent(time: base.time, actor: base.actor, action: .import, keyID: key.record.id, route: base.route, result: result))
        }
        return events
    }

    /// Throws ``KeyImportConflict`` if any key conflicted (the driver then rolls back).
    public func checkConflicts() throws {
        if conflictCount > 0 { throw KeyImportConflict(ids: conflicts, count: conflictCount) }
    }

    /// The counts.
    public var result: KeyImportResult { KeyImportResult(inserted: inserted, alreadyPresent: alreadyPresent, destroyed: destroyed) }

    /// The summary record: `base` with the counts.
    public func summary(_ base: AuditEvent) -> AuditEvent {
        var e = base
        e.detail =
            "\(inserted + alreadyPresent + destroyed) keys: \(inserted) inserted, \(alreadyPresent) already present"
            + (destroyed > 0 ? ", \(destroyed) destroyed here (not brought back)" : "") + (base.detail.isEmpty ? "" : "; \(base.detail)")
        return e
    }
}
