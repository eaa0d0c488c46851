public import Foundation
public import KeyholdCore
public import KeyholdProtocol

/// A ``Repository`` in memory: for tests and for trying things out. Nothing survives the process.
public actor MemoryRepository: Repository, RepositoryFaultInjection {
    private var keys: [KeyID: StoredKey] = [:]
    private var clients: [ClientID: EnrolledClient] = [:]
    private var tokens: [TokenID: EnrollmentTokenRecord] = [:]
    private var events: [AuditEvent] = []
    private var settings: [String: String] = [:]
    private var approvals: [ApprovalID: ApprovalRecord] = [:]
    private var rotations: Set<KeyID> = []
    private var checks: [KeyID: EscrowCheckRecord] = [:]
    private var masterVersions: [Int: MasterKeyVersionRecord] = [:]
    private var auditBroken = false
    private var lastSequence: Int64 = 0
    /// The change feed: each key's latest state change (``Repository/stateChanges(after:limit:)``).
    private var stateSequence: [KeyID: Int64] = [:]
    private var lastStateSequence: Int64 = 0
    /// No connections and no batches: these stay at zero.
    public nonisolated let statistics = StoreStatistics(connections: 0)

    private func nextSequence() -> Int64 {
        lastSequence += 1
        return lastSequence
    }

    /// Puts `id` at the end of the change feed.
    private func stateChanged(_ id: KeyID) {
        lastStateSequence += 1
        stateSequence[id] = lastStateSequence
    }

    /// Feeds the keys that `next` blocks and the current keys do not (a block that came up in a push).
    private func feedNewBlocks(in next: [KeyID: StoredKey], of batch: [StoredKey]) {
        for key in batch where next[key.record.id]?.blocked == true && keys[key.record.id]?.blocked == false { stateChanged(key.record.id) }
    }

    /// An empty repository.
    public init() {}

    /// Nothing to run: waits for cancellation.
    public func run() async throws { await waitForCancellation() }

    /// Nothing to migrate.
    public func migrate() async throws {}

    /// Every migration: the memory store is always current (``Repository/appliedMigrations()``).
    public func appliedMigrations() async throws -> [Int] { Schema.migrations.map(\.version) }

    /// Makes every later audit write fail (``RepositoryFaultInjection``).
    public func breakAuditWrites() async throws { auditBroken = true }

    private func append(_ event: AuditEvent) throws {
        if auditBroken { throw RepositoryError("audit write failed (fault injected)") }
        var e = event
        e.sequence = Int64(events.count + 1)
        events.append(e)
    }

    /// Stores a key unless its id exists, with its audit record (``Repository/insertKey(_:audit:)``).
    public func insertKey(_ key: StoredKey, audit: AuditEvent?) async throws -> KeyInsertOutcome {
        if let existing = keys[key.record.id] {
            let outcome: KeyInsertOutcome =
                existing.destroyed != nil ? .destroyed : existing.secretFingerprint == key.secretFingerprint ? .alreadyPresent : .conflict
            if var a = audit {
                if outcome == .conflict { a.result = .refused(.conflict) }
                if outcome == .destroyed { a.result = .refused(.keyDestroyed) }
                try append(a)
            }
            // A device re-escrowing a key takes it over from anyone but an active device.
            if outcome == .alreadyPresent, let owner = key.escrowedBy,
                existing.escrowedBy.flatMap({ clients[$0] }).map({ $0.state == .active && $0.role == .device }) != true
            {
                keys[key.record.id]?.escrowedBy = owner
            }
            return outcome
        }
        if let audit { try append(audit) }
        var stored = key
        stored.sequence = nextSequence()
        keys[key.record.id] = stored
        return .inserted
    }

    /// Stores a key obtained from the primary and releases it, in one transaction (``Repository/insertAndRelease(_:obtained:release:)``).
    public func insertAndRelease(_ key: StoredKey, obtained: AuditEvent, release: ReleaseRequest) async throws -> (KeyInsertOutcome, StoredKey?) {
        if auditBroken { throw RepositoryError("audit write failed (fault injected)") }
        if let existing = keys[key.record.id], existing.secretFingerprint != key.secretFingerprint {
            var a = obtained
            a.result = .refused(.conflict)
            try append(a)
            return (.conflict, nil)
        }
        var outcome = KeyInsertOutcome.alreadyPresent
        if keys[key.record.id] == nil {
            var stored = key
            stored.sequence = nextSequence()
            keys[key.record.id] = stored
            outcome = .inserted
            try append(obtained)
        }
        let released = keys[key.record.id]
        try append(release.auditEvent(for: released))
        return (outcome, released)
    }

    /// Stores a secondary's batch in one transaction (``Repository/insertKeys(_:audit:)``).
    public func insertKeys(_ batch: [StoredKey], audit: AuditEvent) async throws -> [KeyInsertOutcome] {
        // All or nothing: compute on a copy, commit by assignment.
        var next = keys
        var sequence = lastSequence
        let outcomes = Self.merge(batch, into: &next, sequence: &sequence, clients: clients)
        try append(BatchAudit.summary(audit, outcomes))
        for (key, outcome) in zip(batch, outcomes) where outcome == .conflict { try append(BatchAudit.conflict(audit, key.record.id)) }
        feedNewBlocks(in: next, of: batch)
        keys = next
        lastSequence = sequence
        return outcomes
    }

    /// Imports every key of `source` or none (``Repository/importKeys(from:audit:)``).
    public func importKeys(from source: any KeyBatchSource, audit: AuditEvent) async throws -> KeyImportResult {
        var next = keys
        var sequence = lastSequence
        var tally = ImportTally()
        var pending: [AuditEvent] = []
        var all: [StoredKey] = []
        while let batch = try source.nextBatch() {
            pending += tally.add(batch, Self.merge(batch, into: &next, sequence: &sequence, clients: clients), base: audit)
            all += batch
        }
        try tally.checkConflicts()
        let saved = events
        do {
            for e in pending { try append(e) }
            try append(tally.summary(audit))
        } catch {
            events = saved
            throw error
        }
        feedNewBlocks(in: next, of: all)
        keys = next
        lastSequence = sequence
        return tally.result
    }

    private static func merge(
        _ batch: [StoredKey], into next: inout [KeyID: StoredKey], sequence: inout Int64, clients: [ClientID: EnrolledClient]
    ) -> [KeyInsertOutcome] {
        var outcomes: [KeyInsertOutcome] = []
        for key in batch {
            if let existing = next[key.record.id] {
                guard existing.destroyed == nil else {
                    outcomes.append(.destroyed)
                    continue
                }
                guard existing.secretFingerprint == key.secretFingerprint else {
                    outcomes.append(.conflict)
                    continue
                }
                // A secondary's own key is held for it here unless an active client holds it already.
                if let owner = key.escrowedBy, existing.escrowedBy.flatMap({ clients[$0] })?.state != .active {
                    next[key.record.id]?.escrowedBy = owner
                }
                if key.blocked, !existing.blocked {
                    sequence += 1
                    next[key.record.id]?.blocked = true
                    next[key.record.id]?.sequence = sequence
                }
                outcomes.append(.alreadyPresent)
            } else {
                sequence += 1
                var stored = key
                stored.sequence = sequence
                next[key.record.id] = stored
                outcomes.append(.inserted)
            }
        }
        return outcomes
    }

    /// Keys after a sequence number, in sequence order (``Repository/keys(afterSequence:limit:)``).
    public func keys(afterSequence after: Int64, limit: Int) async throws -> [StoredKey] {
        Array(keys.values.filter { $0.sequence > after }.sorted { $0.sequence < $1.sequence }.prefix(limit))
    }

    /// The key with `id`, if stored.
    public func key(id: KeyID) async throws -> StoredKey? { keys[id] }

    /// Reads a key and commits its release record together (``Repository/releaseKey(_:)``).
    public func releaseKey(_ request: ReleaseRequest) async throws -> StoredKey? {
        if let caller = request.caller, !caller.matches(clients[caller.id]) { throw ReleaseCallerRefused() }
        let key = keys[request.keyID]
        if key != nil || request.auditIfMissing { try append(request.auditEvent(for: key)) }
        return key
    }

    /// Sets or clears the block on a key (``Repository/setBlocked(id:blocked:audit:)``).
    public func setBlocked(id: KeyID, blocked: Bool, audit: AuditEvent) async throws -> Bool {
        guard keys[id] != nil else { return false }
        try append(audit)
        keys[id]?.blocked = blocked
        keys[id]?.sequence = nextSequence()
        stateChanged(id)
        return true
    }

    /// Replaces a key whose fingerprint is still `fingerprint` (``Repository/replaceKey(_:replacing:audit:)``).
    public func replaceKey(_ key: StoredKey, replacing fingerprint: [UInt8], audit: AuditEvent) async throws -> Bool {
        guard let old = keys[key.record.id], old.secretFingerprint == fingerprint else { return false }
        try append(audit)
        var replacement = key
        replacement.blocked = old.blocked
        replacement.escrowedBy = old.escrowedBy
        replacement.sequence = nextSequence()
        keys[key.record.id] = replacement
        return true
    }

    /// The change feed (``Repository/stateChanges(after:limit:)``).
    public func stateChanges(after: Int64, limit: Int) async throws -> [KeyStateChange] {
        stateSequence.filter { $0.value > after }.sorted { $0.value < $1.value }.prefix(limit).compactMap { id, sequence in
            keys[id].map { KeyStateChange(keyID: id, blocked: $0.blocked, sequence: sequence, destroyed: $0.destroyed != nil) }
        }
    }

    /// Applies a primary's changes (``Repository/applyStateChanges(_:audit:)``).
    public func applyStateChanges(_ changes: [KeyStateChange], audit: AuditEvent) async throws -> [KeyID] {
        let targets = changes.filter { change in
            !change.destroyed && (keys[change.keyID].map { $0.destroyed == nil && $0.blocked != change.blocked } ?? false)
        }
        let saved = events
        do {
            for change in targets {
                var event = audit
                event.keyID = change.keyID
                event.action = change.blocked ? .block : .unblock
                try append(event)
            }
        } catch {
            events = saved
            throw error
        }
        for change in targets {
            keys[change.keyID]?.blocked = change.blocked
            stateChanged(change.keyID)
        }
        return targets.map(\.keyID)
    }

    /// Key records in id order (``Repository/listKeys(after:limit:)``).
    public func listKeys(after: KeyID?, limit: Int) async throws -> [StoredKey] {
        Array(keys.values.filter { after == nil || $0.record.id > after! }.sorted { $0.record.id < $1.record.id }.prefix(limit))
    }

    /// How many keys are stored (after a sequence number, when given).
    public func keyCount() async throws -> Int { keys.count }

    /// How many keys are stored (after a sequence number, when given).
    public func keyCount(afterSequence after: Int64) async throws -> Int { keys.values.filter { $0.sequence > after }.count }

    /// Stores a new enrollment.
    public func insertClient(_ client: EnrolledClient) async throws {
        guard clients[client.id] == nil else { throw RepositoryError("client \(client.id) exists") }
        clients[client.id] = client
    }

    /// The enrollment with `id`, if any.
    public func client(id: ClientID) async throws -> EnrolledClient? { clients[id] }

    /// Every enrollment (of one role, if given).
    public func listClients(role: ClientRole?) async throws -> [EnrolledClient] {
        clients.values.filter { role == nil || $0.role == role }.sorted { $0.enrolled == $1.enrolled ? $0.id < $1.id : $0.enrolled < $1.enrolled }
    }

    /// Sets an enrollment's state; `false` if there is none.
    public func setClientState(id: ClientID, state: EnrollmentState) async throws -> Bool {
        guard clients[id] != nil else { return false }
        clients[id]?.state = state
        return true
    }

    /// Records a heartbeat's time, version and key count.
    public func recordHeartbeat(id: ClientID, at: Date, agentVersion: String, keyCount: Int) async throws {
        clients[id]?.lastSeen = at
        clients[id]?.agentVersion = agentVersion
        clients[id]?.reportedKeyCount = keyCount
    }

    /// Records a renewed certificate (``Repository/offerCertificate(id:current:next:expires:audit:)``).
    public func offerCertificate(
        id: ClientID, current: String, next fingerprint: String, expires: Date, issuer: String?, audit: AuditEvent
    ) async throws -> Bool {
        guard let client = clients[id], client.state == .active, client.certificateFingerprint == current else { return false }
        try await appendAudit(audit)
        clients[id]?.nextCertificateFingerprint = fingerprint
        clients[id]?.nextCertificateExpires = expires
        clients[id]?.nextCertificateIssuer = issuer
        return true
    }

    /// Makes the next certificate the current one (``Repository/adoptCertificate(id:fingerprint:)``).
    public func adoptCertificate(id: ClientID, fingerprint: String) async throws -> Bool {
        guard var client = clients[id], client.nextCertificateFingerprint == fingerprint else { return false }
        client.certificateFingerprint = fingerprint
        client.certificateExpires = client.nextCertificateExpires
        client.certificateIssuer = client.nextCertificateIssuer
        client.nextCertificateFingerprint = nil
        client.nextCertificateExpires = nil
        client.nextCertificateIssuer = nil
        clients[id] = client
        return true
    }

    // MARK: Deletion and retention

    /// Marks a revoked or moved client deleted (``Repository/deleteClient(id:at:audit:)``).
    public func deleteClient(id: ClientID, at: Date, audit: AuditEvent) async throws -> Bool {
        guard let client = clients[id], client.state == .revoked || client.state == .moved else { return false }
        try append(audit)
        clients[id]?.state = .deleted
        clients[id]?.deleted = at
        return true
    }

    /// Keys `client` escrowed that are not destroyed (``Repository/liveKeyCount(escrowedBy:)``).
    public func liveKeyCount(escrowedBy client: ClientID) async throws -> Int {
        keys.values.filter { $0.escrowedBy == client && $0.destroyed == nil }.count
    }

    /// Whether an active device's last drive check names `key`.
    private func activeDriveCheck(_ key: StoredKey) -> Bool {
        checks[key.record.id].flatMap { clients[$0.clientID] }?.state == .active
    }

    /// Whether `rule` lets `key` be destroyed now (``DestructionRule/allows(owner:ownerActive:ownerDeleted:activeDriveCheck:)``).
    private func allows(_ rule: DestructionRule, _ key: StoredKey) -> Bool {
        let owner = key.escrowedBy.flatMap { clients[$0] }
        return rule.allows(
            owner: key.escrowedBy, ownerActive: owner?.state == .active, ownerDeleted: owner?.state == .deleted ? owner?.deleted : nil,
            activeDriveCheck: activeDriveCheck(key))
    }

    /// The keys the retention destroys (``Repository/keysDueForDestruction(deletedBefore:limit:)``).
    public func keysDueForDestruction(deletedBefore cutoff: Date, limit: Int) async throws -> [DueKey] {
        Array(
            keys.values.sorted { $0.record.id < $1.record.id }.lazy.compactMap { key -> DueKey? in
                guard key.destroyed == nil, let owner = key.escrowedBy, let client = self.clients[owner], client.state == .deleted,
                    let deleted = client.deleted, self.allows(.due(deletedBefore: cutoff), key)
                else { return nil }
                return DueKey(keyID: key.record.id, client: owner, deleted: deleted)
            }.prefix(limit))
    }

    /// Destroys keys (``Repository/destroyKeys(_:at:)``).
    public func destroyKeys(_ requests: [KeyDestruction], at: Date) async throws -> [KeyDestructionOutcome] {
        var outcomes: [KeyDestructionOutcome] = []
        var destroy: [KeyDestruction] = []
        for request in requests {
            guard let key = keys[request.keyID] else {
                outcomes.append(.notFound)
                continue
            }
            if key.destroyed != nil || destroy.contains(where: { $0.keyID == request.keyID }) {
                outcomes.append(.alreadyDestroyed)
            } else if !allows(request.rule, key) {
                outcomes.append(.spared)
            } else {
                destroy.append(request)
                outcomes.append(.destroyed)
            }
        }
        let saved = events
        do {
            for request in destroy { try append(request.audit) }
        } catch {
            events = saved
            throw error
        }
        for request in destroy {
            keys[request.keyID] = keys[request.keyID]?.destroyedCopy(at: at)
            keys[request.keyID]?.sequence = nextSequence()
            stateChanged(request.keyID)
        }
        return outcomes
    }

    /// Stores a new enrollment token.
    public func insertToken(_ token: EnrollmentTokenRecord) async throws { tokens[token.id] = token }

    /// Checks a token and takes one use, atomically (``Repository/redeemToken(id:secretHash:now:)``).
    public func redeemToken(id: TokenID, secretHash: [UInt8], now: Date) async throws -> TokenRedemption {
        let answer = TokenRedemption.check(tokens[id], secretHash: secretHash, now: now)
        guard case .redeemed(var t) = answer else { return answer }
        t.usesLeft -= 1
        tokens[id] = t
        return .redeemed(t)
    }

    /// Checks a token, taking nothing (``Repository/checkToken(id:secretHash:now:)``).
    public func checkToken(id: TokenID, secretHash: [UInt8], now: Date) async throws -> TokenRedemption {
        TokenRedemption.check(tokens[id], secretHash: secretHash, now: now)
    }

    /// Every enrollment token.
    public func listTokens() async throws -> [EnrollmentTokenRecord] { tokens.values.sorted { $0.created < $1.created } }

    /// Withdraws a token; `false` if there is none.
    public func revokeToken(id: TokenID) async throws -> Bool {
        guard tokens[id] != nil else { return false }
        tokens[id]?.revoked = true
        return true
    }

    /// Appends audit records, committed before returning.
    public func appendAudit(_ event: AuditEvent) async throws { try append(event) }

    /// Appends audit records, committed before returning.
    public func appendAudit(_ batch: [AuditEvent]) async throws {
        if auditBroken { throw RepositoryError("audit write failed (fault injected)") }
        for e in batch { try append(e) }
    }

    /// Audit records after a sequence number, oldest first.
    public func audit(after: Int64, limit: Int) async throws -> [AuditEvent] {
        Array(events.filter { ($0.sequence ?? 0) > after }.prefix(limit))
    }

    /// Reads and marks a key, with its audit record (``Repository/revealKey(id:audit:)``).
    public func revealKey(id: KeyID, audit: AuditEvent) async throws -> StoredKey? {
        guard let key = keys[id] else { return nil }
        guard key.destroyed == nil else { return key }  // nothing to reveal: the caller refuses it
        try append(audit)
        rotations.insert(id)
        return key
    }

    /// Which of `ids` are marked.
    public func rotationRequired(_ ids: [KeyID]) async throws -> Set<KeyID> { rotations.intersection(ids) }

    /// Stores the checks newer than the stored ones (``Repository/recordEscrowChecks(_:audit:)``).
    public func recordEscrowChecks(_ batch: [EscrowCheckRecord], audit: [AuditEvent]) async throws {
        if auditBroken, !audit.isEmpty { throw RepositoryError("audit write failed (fault injected)") }
        for check in batch where (checks[check.keyID]?.checked ?? .distantPast) <= check.checked { checks[check.keyID] = check }
        for e in audit { try append(e) }
    }

    /// The checks of `ids`.
    public func escrowChecks(keys ids: [KeyID]) async throws -> [EscrowCheckRecord] { ids.compactMap { checks[$0] } }

    /// The checks made by `clients`.
    public func escrowChecks(clients: [ClientID]) async throws -> [EscrowCheckRecord] {
        let wanted = Set(clients)
        return checks.values.filter { wanted.contains($0.clientID) }
    }

    /// The drifts, newest first.
    public func driftedEscrowChecks(limit: Int) async throws -> [EscrowCheckRecord] {
        Array(checks.values.filter { !$0.opens }.sorted { $0.checked > $1.checked }.prefix(limit))
    }

    /// How many drifts there are.
    public func driftedEscrowCheckCount() async throws -> Int { checks.values.filter { !$0.opens }.count }

    /// The open request for the key by the device, or `request` (``Repository/openApproval(_:audit:)``).
    public func openApproval(_ request: ApprovalRecord, audit: AuditEvent) async throws -> (ApprovalRecord, created: Bool) {
        if let open = approvals.values.first(where: {
            $0.keyID == request.keyID && $0.clientID == request.clientID && ApprovalState.open.contains($0.state)
        }) {
            return (open, false)
        }
        try append(audit)
        approvals[request.id] = request
        return (request, true)
    }

    /// The request with `id`.
    public func approval(id: ApprovalID) async throws -> ApprovalRecord? { approvals[id] }

    /// Requests in `states`, newest first.
    public func listApprovals(states: Set<ApprovalState>, limit: Int) async throws -> [ApprovalRecord] {
        Array(
            approvals.values.filter { states.contains($0.state) }.sorted { ($0.requested, $0.id) > ($1.requested, $1.id) }.prefix(limit))
    }

    /// Moves a request on (``Repository/setApprovalState(id:from:to:decision:audit:)``).
    public func setApprovalState(
        id: ApprovalID, from: Set<ApprovalState>, to state: ApprovalState, decision: ApprovalDecision?, audit: AuditEvent?
    ) async throws -> ApprovalRecord? {
        guard var request = approvals[id], from.contains(request.state) else { return nil }
        if let audit { try append(audit) }
        request.state = state
        if let decision {
            request.decidedBy = decision.by
            request.decided = decision.at
            request.reason = decision.reason
        }
        approvals[id] = request
        return request
    }

    // MARK: Master-key versions

    /// The versions registered (``Repository/masterKeyVersions()``).
    public func masterKeyVersions() async throws -> [MasterKeyVersionRecord] { masterVersions.values.sorted { $0.version < $1.version } }

    /// Records a version (``Repository/registerMasterKeyVersion(_:audit:)``).
    public func registerMasterKeyVersion(_ version: MasterKeyVersionRecord, audit: AuditEvent?) async throws -> MasterKeyRegistration {
        if let existing = masterVersions[version.version] { return existing.check == version.check ? .alreadyRegistered : .conflict }
        if let audit { try append(audit) }
        masterVersions[version.version] = version
        return .registered
    }

    /// Activates a version (``Repository/activateMasterKeyVersion(_:at:audit:)``).
    public func activateMasterKeyVersion(_ version: Int, at: Date, audit: AuditEvent) async throws -> Bool {
        guard var record = masterVersions[version], record.activated == nil else { return false }
        try append(audit)
        record.activated = at
        masterVersions[version] = record
        return true
    }

    /// Keys wrapped under older versions (``Repository/keysToRewrap(below:limit:)``).
    public func keysToRewrap(below version: Int, limit: Int) async throws -> [StoredKey] {
        Array(keys.values.lazy.filter { $0.destroyed == nil && $0.masterVersion < version }.prefix(limit))
    }

    /// Stores rewrapped secrets (``Repository/rewrapKeys(_:)``).
    public func rewrapKeys(_ rewraps: [KeyRewrap]) async throws -> Int {
        var done = 0
        for rewrap in rewraps where keys[rewrap.id]?.wrappedSecret == rewrap.old {
            keys[rewrap.id]?.wrappedSecret = rewrap.new
            done += 1
        }
        return done
    }

    /// Keys per master-key version (``Repository/keyCountsByMasterVersion()``).
    public func keyCountsByMasterVersion() async throws -> [Int: Int] {
        keys.values.reduce(into: [:]) { counts, key in if key.destroyed == nil { counts[key.masterVersion, default: 0] += 1 } }
    }

    /// Retires the older versions when no key uses them (``Repository/retireMasterKeyVersions(below:at:audit:)``).
    public func retireMasterKeyVersions(below version: Int, at: Date, audit: AuditEvent) async throws -> [Int: Int] {
        let inUse = try await keyCountsByMasterVersion().filter { $0.key < version }
        guard inUse.isEmpty else { return inUse }
        try append(audit)
        for (number, record) in masterVersions where number < version && record.retired == nil { masterVersions[number]?.retired = at }
        return [:]
    }

    /// A named setting.
    public func setting(_ name: String) async throws -> String? { settings[name] }
    /// Sets a named setting, durably.
    public func setSetting(_ name: String, _ value: String) async throws { settings[name] = value }
    /// Releases the driver's resources.
    public func close() async throws {}
}
