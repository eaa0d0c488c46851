public import Foundation
import GRDB
public import KeyholdCore
public import KeyholdProtocol
public import KeyholdStore

/// The embedded default ``Repository``: one SQLite file in WAL mode with `synchronous=FULL`, so a
/// committed transaction survives a crash or power loss before the call returns. With
/// `secure_delete` on, content a statement removes or replaces is overwritten with zeros in the
/// file, and a key destruction truncates the write-ahead log after its commit: a destroyed key's
/// wrapped secret is then in neither file.
public final class SQLiteRepository: Repository, RepositoryFaultInjection {
    private let pool: TrackedPool
    /// Concurrent releases share one write transaction, so one fsync (SQLite has one writer anyway).
    private let releases: BatchQueue<ReleaseRequest, StoredKey?>
    /// Where the database lives.
    public let path: String

    /// Opens (creating if needed) the database at `path`. Call ``migrate()`` before use.
    public init(path: String) throws {
        var config = Configuration()
        config.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = FULL")
            try db.execute(sql: "PRAGMA secure_delete = ON")
        }
        config.busyMode = .timeout(10)
        self.path = path
        let pool = TrackedPool(try DatabasePool(path: path, configuration: config))
        self.pool = pool
        let statistics = pool.statistics
        self.releases = BatchQueue(
            lanes: 1, maximumBatch: 256, batched: { statistics.report(.releaseBatch(size: $0)) },
            commit: { requests in
                // One transaction: a failing audit insert rolls back the batch and fails every release in it.
                try await pool.write { db in
                    try requests.map { request -> Result<StoredKey?, any Error> in
                        if let caller = request.caller, !caller.matches(try Self.fetchClient(db, caller.id)) {
                            return .failure(ReleaseCallerRefused())
                        }
                        let key = try Self.fetchKey(db, request.keyID)
                        if key != nil || request.auditIfMissing { try Self.insertAudit(db, request.auditEvent(for: key)) }
                        return .success(key)
                    }
                }
            })
    }

    /// Accesses in flight (of GRDB's readers and its writer), SQLite's errors, release batches.
    public var statistics: StoreStatistics { pool.statistics }

    /// Nothing to run (GRDB's pool needs no task): waits for cancellation.
    public func run() async throws { await waitForCancellation() }

    /// Creates or upgrades the schema (``Repository/migrate()``).
    public func migrate() async throws {
        try await pool.write { db in
            try db.execute(
                sql: "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied REAL NOT NULL)")
            let done = Set(try Int.fetchAll(db, sql: "SELECT version FROM schema_migrations"))
            for m in Schema.migrations where !done.contains(m.version) {
                for statement in m.sqlite { try db.execute(sql: statement) }
                try db.execute(
                    sql: "INSERT INTO schema_migrations (version, name, applied) VALUES (?, ?, ?)",
                    arguments: [m.version, m.name, Date().timeIntervalSince1970]
                )
            }
        }
    }

    /// The migrations applied (``Repository/appliedMigrations()``).
    public func appliedMigrations() async throws -> [Int] {
        try await pool.read { db in
            guard try db.tableExists("schema_migrations") else { return [] }
            return try Int.fetchAll(db, sql: "SELECT version FROM schema_migrations ORDER BY version")
        }
    }

    /// Makes every later audit write fail (``RepositoryFaultInjection``).
    public func breakAuditWrites() async throws {
        try await pool.write { db in
            try db.execute(
                sql:
                    "CREATE TRIGGER IF NOT EXISTS fault_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'audit write failed (fault injected)'); END"
            )
        }
    }

    // MARK: Keys

    /// Stores a key unless its id exists, with its audit record (``Repository/insertKey(_:audit:)``).
    public func insertKey(_ key: StoredKey, audit: AuditEvent?) async throws -> KeyInsertOutcome {
        try await pool.write { db in
            if let existing = try Row.fetchOne(
                db, sql: "SELECT secret_fingerprint, destroyed FROM keys WHERE id = ?", arguments: [key.record.id.description])
            {
                let outcome: KeyInsertOutcome =
                    (existing["destroyed"] as Double?) != nil
                    ? .destroyed : [UInt8](existing["secret_fingerprint"] as Data) == key.secretFingerprint ? .alreadyPresent : .conflict
                if var a = audit {
                    if outcome == .conflict { a.result = .refused(.conflict) }
                    if outcome == .destroyed { a.result = .refused(.keyDestroyed) }
                    try Self.insertAudit(db, a)
                }
                if outcome == .alreadyPresent, let owner = key.escrowedBy {
                    // A device re-escrowing a key takes it over from anyone but an active device.
                    try db.execute(
                        sql: """
                            UPDATE keys SET escrowed_by = ? WHERE id = ? AND (escrowed_by IS NULL OR NOT EXISTS (
                              SELECT 1 FROM clients a WHERE a.id = keys.escrowed_by AND a.state = 'active' AND a.role = 'device'))
                            """, arguments: [owner.description, key.record.id.description])
                }
                return outcome
            }
            try Self.insertRow(db, key)
            if let audit { try Self.insertAudit(db, audit) }
            return .inserted
        }
    }

    /// Inserts one key row with the next sequence number. Call inside a write transaction: SQLite
    /// has one writer at a time, so sequence order is commit order.
    /// Returns false (and changes nothing) when the id exists. The statement is prepared once per
    /// connection: batches of thousands of keys would otherwise re-parse it for every key.
    @discardableResult
    private static func insertRow(_ db: Database, _ key: StoredKey) throws -> Bool {
        let statement = try db.cachedStatement(
            sql: """
                INSERT INTO keys (id, kind, origin_server_id, origin_device_id, created, label, state,
                                  wrapped_secret, secret_fingerprint, provenance, stored, blocked, master_version, escrowed_by, seq)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM keys))
                ON CONFLICT (id) DO NOTHING
                """)
        try statement.execute(
            arguments: [
                key.record.id.description, key.record.kind.rawValue, key.record.originServerID.description,
                key.record.originDeviceID.description, key.record.created.timeIntervalSince1970, key.record.label,
                key.record.state.rawValue, Data(key.wrappedSecret), Data(key.secretFingerprint), key.provenance.rawValue,
                key.stored.timeIntervalSince1970, key.blocked, key.masterVersion, key.escrowedBy?.description,
            ]
        )
        return db.changesCount > 0
    }

    /// Stores a key obtained from the primary and releases it, in one transaction (``Repository/insertAndRelease(_:obtained:release:)``).
    public func insertAndRelease(_ key: StoredKey, obtained: AuditEvent, release: ReleaseRequest) async throws -> (KeyInsertOutcome, StoredKey?) {
        try await pool.write { db in
            var outcome = KeyInsertOutcome.inserted
            if !(try Self.insertRow(db, key)) {
                let existing = try Data.fetchOne(db, sql: "SELECT secret_fingerprint FROM keys WHERE id = ?", arguments: [key.record.id.description])
                outcome = existing.map { [UInt8]($0) } == key.secretFingerprint ? .alreadyPresent : .conflict
            }
            if outcome == .conflict {
                var a = obtained
                a.result = .refused(.conflict)
                try Self.insertAudit(db, a)
                return (.conflict, nil)
            }
            if outcome == .inserted { try Self.insertAudit(db, obtained) }
            let released = try Self.fetchKey(db, key.record.id)
            try Self.insertAudit(db, release.auditEvent(for: released))
            return (outcome, released)
        }
    }

    /// Stores a secondary's batch in one transaction (``Repository/insertKeys(_:audit:)``).
    public func insertKeys(_ batch: [StoredKey], audit: AuditEvent) async throws -> [KeyInsertOutcome] {
        try await pool.write { db in
            let outcomes = try Self.insertBatch(db, batch)
            try Self.insertAudit(db, BatchAudit.summary(audit, outcomes))
            for (key, outcome) in zip(batch, outcomes) where outcome == .conflict {
                try Self.insertAudit(db, BatchAudit.conflict(audit, key.record.id))
            }
            return outcomes
        }
    }

    /// Imports every key of `source` or none (``Repository/importKeys(from:audit:)``).
    public func importKeys(from source: any KeyBatchSource, audit: AuditEvent) async throws -> KeyImportResult {
        // One write transaction: GRDB rolls it back when the closure throws (a conflict included).
        try await pool.write { db in
            var tally = ImportTally()
            while let batch = try source.nextBatch() {
                for event in tally.add(batch, try Self.insertBatch(db, batch), base: audit) { try Self.insertAudit(db, event) }
            }
            try tally.checkConflicts()
            try Self.insertAudit(db, tally.summary(audit))
            return tally.result
        }
    }

    /// Stores a batch inside the caller's write transaction; the outcome of each key.
    private static func insertBatch(_ db: Database, _ batch: [StoredKey]) throws -> [KeyInsertOutcome] {
        var outcomes: [KeyInsertOutcome] = []
        for key in batch {
            if try Self.insertRow(db, key) {
                outcomes.append(.inserted)
                continue
            }
            let row = try Row.fetchOne(
                db.cachedStatement(sql: "SELECT secret_fingerprint, blocked, destroyed FROM keys WHERE id = ?"),
                arguments: [key.record.id.description])
            if let row {
                guard (row["destroyed"] as Double?) == nil else {
                    outcomes.append(.destroyed)
                    continue
                }
                guard [UInt8](row["secret_fingerprint"] as Data) == key.secretFingerprint else {
                    outcomes.append(.conflict)
                    continue
                }
                if let owner = key.escrowedBy {
                    // A secondary's own key is held for it here unless an active client holds it already.
                    try db.cachedStatement(
                        sql: """
                            UPDATE keys SET escrowed_by = ? WHERE id = ? AND (escrowed_by IS NULL OR NOT EXISTS (
                              SELECT 1 FROM clients a WHERE a.id = keys.escrowed_by AND a.state = 'active'))
                            """
                    ).execute(arguments: [owner.description, key.record.id.description])
                }
                if key.blocked, !(row["blocked"] as Bool) {
                    try db.execute(
                        sql:
                            "UPDATE keys SET blocked = 1, seq = (SELECT COALESCE(MAX(seq), 0) + 1 FROM keys), state_seq = (SELECT COALESCE(MAX(state_seq), 0) + 1 FROM keys) WHERE id = ?",
                        arguments: [key.record.id.description]
                    )
                }
                outcomes.append(.alreadyPresent)
            } else {
                throw RepositoryError("key \(key.record.id) was neither inserted nor found")
            }
        }
        return outcomes
    }

    /// Keys after a sequence number, in sequence order (``Repository/keys(afterSequence:limit:)``).
    public func keys(afterSequence after: Int64, limit: Int) async throws -> [StoredKey] {
        try await pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM keys WHERE seq > ? ORDER BY seq LIMIT ?", arguments: [after, limit]).map(Self.decodeKey)
        }
    }

    /// The key with `id`, if stored.
    public func key(id: KeyID) async throws -> StoredKey? {
        try await pool.read { db in try Self.fetchKey(db, id) }
    }

    /// Reads a key and commits its release record together (``Repository/releaseKey(_:)``).
    public func releaseKey(_ request: ReleaseRequest) async throws -> StoredKey? {
        try await releases.submit(request)
    }

    /// Sets or clears the block on a key (``Repository/setBlocked(id:blocked:audit:)``).
    public func setBlocked(id: KeyID, blocked: Bool, audit: AuditEvent) async throws -> Bool {
        try await pool.write { db in
            try db.execute(
                sql:
                    "UPDATE keys SET blocked = ?, seq = (SELECT COALESCE(MAX(seq), 0) + 1 FROM keys), state_seq = (SELECT COALESCE(MAX(state_seq), 0) + 1 FROM keys) WHERE id = ?",
                arguments: [blocked, id.description]
            )
            guard db.changesCount > 0 else { return false }
            try Self.insertAudit(db, audit)
            return true
        }
    }

    /// Replaces a key whose fingerprint is still `fingerprint` (``Repository/replaceKey(_:replacing:audit:)``).
    public func replaceKey(_ key: StoredKey, replacing fingerprint: [UInt8], audit: AuditEvent) async throws -> Bool {
        try await pool.write { db in
            let r = key.record
            try db.execute(
                sql: """
                    UPDATE keys SET kind = ?, origin_server_id = ?, origin_device_id = ?, created = ?, label = ?, state = ?,
                      wrapped_secret = ?, secret_fingerprint = ?, provenance = ?, stored = ?, master_version = ?,
                      seq = (SELECT COALESCE(MAX(seq), 0) + 1 FROM keys)
                    WHERE id = ? AND secret_fingerprint = ?
                    """,
                arguments: [
                    r.kind.rawValue, r.originServerID.description, r.originDeviceID.description, r.created.timeIntervalSince1970, r.label,
                    r.state.rawValue, Data(key.wrappedSecret), Data(key.secretFingerprint), key.provenance.rawValue,
                    key.stored.timeIntervalSince1970, key.masterVersion, r.id.description, Data(fingerprint),
                ])
            guard db.changesCount > 0 else { return false }
            try Self.insertAudit(db, audit)
            return true
        }
    }

    /// The change feed (``Repository/stateChanges(after:limit:)``).
    public func stateChanges(after: Int64, limit: Int) async throws -> [KeyStateChange] {
        try await pool.read { db in
            try Row.fetchAll(
                db, sql: "SELECT id, blocked, state_seq, destroyed IS NOT NULL AS gone FROM keys WHERE state_seq > ? ORDER BY state_seq LIMIT ?",
                arguments: [after, limit]
            ).map { row in
                guard let id = KeyID(row["id"] as String) else { throw RepositoryError("a stored key id is not a UUID") }
                return KeyStateChange(keyID: id, blocked: row["blocked"], sequence: row["state_seq"], destroyed: row["gone"])
            }
        }
    }

    /// Applies a primary's changes (``Repository/applyStateChanges(_:audit:)``).
    public func applyStateChanges(_ changes: [KeyStateChange], audit: AuditEvent) async throws -> [KeyID] {
        try await pool.write { db in
            var changed: [KeyID] = []
            for change in changes where !change.destroyed {
                try db.execute(
                    sql:
                        "UPDATE keys SET blocked = ?, state_seq = (SELECT COALESCE(MAX(state_seq), 0) + 1 FROM keys) WHERE id = ? AND blocked != ? AND destroyed IS NULL",
                    arguments: [change.blocked, change.keyID.description, change.blocked]
                )
                guard db.changesCount > 0 else { continue }
                var event = audit
                event.keyID = change.keyID
                event.action = change.blocked ? .block : .unblock
                try Self.insertAudit(db, event)
                changed.append(change.keyID)
            }
            return changed
        }
    }

    /// Key records in id order (``Repository/listKeys(after:limit:)``).
    public func listKeys(after: KeyID?, limit: Int) async throws -> [StoredKey] {
        try await pool.read { db in
            try Row.fetchAll(
                db, sql: "SELECT * FROM keys WHERE id > ? ORDER BY id LIMIT ?",
                arguments: [after?.description ?? "", limit]
            ).map(Self.decodeKey)
        }
    }

    /// How many keys are stored (after a sequence number, when given).
    public func keyCount() async throws -> Int {
        try await pool.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM keys") ?? 0 }
    }

    /// How many keys are stored (after a sequence number, when given).
    public func keyCount(afterSequence after: Int64) async throws -> Int {
        try await pool.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM keys WHERE seq > ?", arguments: [after]) ?? 0 }
    }

    private static func fetchKey(_ db: Database, _ id: KeyID) throws -> StoredKey? {
        try Row.fetchOne(db, sql: "SELECT * FROM keys WHERE id = ?", arguments: [id.description]).map(decodeKey)
    }

    private static func decodeKey(_ row: Row) throws -> StoredKey {
        var key = try decodeKeyColumns(row)
        key.sequence = row["seq"]
        return key
    }

    private static func decodeKeyColumns(_ row: Row) throws -> StoredKey {
        var key = StoredKey(
            record: KeyRecord(
                id: try StoredValue.identifier(row["id"]), kind: try StoredValue.enumeration(row["kind"]),
                originServerID: try StoredValue.identifier(row["origin_server_id"]),
                originDeviceID: try StoredValue.identifier(row["origin_device_id"]), created: Date(timeIntervalSince1970: row["created"]),
                label: row["label"], state: try StoredValue.enumeration(row["state"])
            ),
            wrappedSecret: [UInt8](row["wrapped_secret"] as Data),
            secretFingerprint: [UInt8](row["secret_fingerprint"] as Data),
            provenance: try StoredValue.enumeration(row["provenance"]),
            stored: Date(timeIntervalSince1970: row["stored"]),
            blocked: row["blocked"], escrowedBy: try (row["escrowed_by"] as String?).map(StoredValue.identifier)
        )
        key.destroyed = (row["destroyed"] as Double?).map(Date.init(timeIntervalSince1970:))
        return key
    }

    // MARK: Clients

    /// Stores a new enrollment.
    public func insertClient(_ c: EnrolledClient) async throws {
        try await pool.write { db in
            try db.execute(
                sql: """
                    INSERT INTO clients (id, role, name, certificate_fingerprint, enrolled, state, last_seen, agent_version, key_count,
                                         certificate_expires, certificate_issuer)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    c.id.description, c.role.rawValue, c.name, c.certificateFingerprint, c.enrolled.timeIntervalSince1970,
                    c.state.rawValue, c.lastSeen?.timeIntervalSince1970, c.agentVersion, c.reportedKeyCount,
                    c.certificateExpires?.timeIntervalSince1970, c.certificateIssuer,
                ]
            )
        }
    }

    /// The enrollment with `id`, if any.
    public func client(id: ClientID) async throws -> EnrolledClient? {
        try await pool.read { db in try Self.fetchClient(db, id) }
    }

    private static func fetchClient(_ db: Database, _ id: ClientID) throws -> EnrolledClient? {
        try Row.fetchOne(db, sql: "SELECT * FROM clients WHERE id = ?", arguments: [id.description]).map(decodeClient)
    }

    /// Every enrollment (of one role, if given).
    public func listClients(role: ClientRole?) async throws -> [EnrolledClient] {
        try await pool.read { db in
            try Row.fetchAll(
                db, sql: "SELECT * FROM clients WHERE ? IS NULL OR role = ? ORDER BY enrolled, id",
                arguments: [role?.rawValue, role?.rawValue]
            ).map(Self.decodeClient)
        }
    }

    /// Sets an enrollment's state; `false` if there is none.
    public func setClientState(id: ClientID, state: EnrollmentState) async throws -> Bool {
        try await pool.write { db in
            try db.execute(sql: "UPDATE clients SET state = ? WHERE id = ?", arguments: [state.rawValue, id.description])
            return db.changesCount > 0
        }
    }

    /// Records a heartbeat's time, version and key count.
    public func recordHeartbeat(id: ClientID, at: Date, agentVersion: String, keyCount: Int) async throws {
        try await pool.write { db in
            try db.execute(
                sql: "UPDATE clients SET last_seen = ?, agent_version = ?, key_count = ? WHERE id = ?",
                arguments: [at.timeIntervalSince1970, agentVersion, keyCount, id.description]
            )
        }
    }

    /// Records a renewed certificate (``Repository/offerCertificate(id:current:next:expires:audit:)``).
    public func offerCertificate(
        id: ClientID, current: String, next fingerprint: String, expires: Date, issuer: String?, audit: AuditEvent
    ) async throws -> Bool {
        try await pool.write { db in
            try db.execute(
                sql: """
                    UPDATE clients SET next_certificate_fingerprint = ?, next_certificate_expires = ?, next_certificate_issuer = ?
                    WHERE id = ? AND state = 'active' AND certificate_fingerprint = ?
                    """,
                arguments: [fingerprint, expires.timeIntervalSince1970, issuer, id.description, current]
            )
            guard db.changesCount > 0 else { return false }
            try Self.insertAudit(db, audit)
            return true
        }
    }

    /// Makes the next certificate the current one (``Repository/adoptCertificate(id:fingerprint:)``).
    public func adoptCertificate(id: ClientID, fingerprint: String) async throws -> Bool {
        try await pool.write { db in
            try db.execute(
                sql: """
                    UPDATE clients SET certificate_fingerprint = next_certificate_fingerprint, certificate_expires = next_certificate_expires,
                      certificate_issuer = next_certificate_issuer,
                      next_certificate_fingerprint = NULL, next_certificate_expires = NULL, next_certificate_issuer = NULL
                    WHERE id = ? AND next_certificate_fingerprint = ?
                    """,
                arguments: [id.description, fingerprint]
            )
            return db.changesCount > 0
        }
    }

    private static func decodeClient(_ row: Row) throws -> EnrolledClient {
        EnrolledClient(
            id: try StoredValue.identifier(row["id"]), role: try StoredValue.enumeration(row["role"]), name: row["name"],
            certificateFingerprint: row["certificate_fingerprint"], enrolled: Date(timeIntervalSince1970: row["enrolled"]),
            state: try StoredValue.enumeration(row["state"]), lastSeen: (row["last_seen"] as Double?).map(Date.init(timeIntervalSince1970:)),
            agentVersion: row["agent_version"], reportedKeyCount: row["key_count"],
            certificateExpires: (row["certificate_expires"] as Double?).map(Date.init(timeIntervalSince1970:)),
            nextCertificateFingerprint: row["next_certificate_fingerprint"],
            nextCertificateExpires: (row["next_certificate_expires"] as Double?).map(Date.init(timeIntervalSince1970:)),
            deleted: (row["deleted"] as Double?).map(Date.init(timeIntervalSince1970:)), certificateIssuer: row["certificate_issuer"],
            nextCertificateIssuer: row["next_certificate_issuer"]
        )
    }

    // MARK: Tokens

    /// Stores a new enrollment token.
    public func insertToken(_ t: EnrollmentTokenRecord) async throws {
        try await pool.write { db in
            try db.execute(
                sql: "INSERT INTO enrollment_tokens (id, secret_hash, role, uses_left, expires, created, revoked) VALUES (?, ?, ?, ?, ?, ?, ?)",
                arguments: [
                    t.id.description, Data(t.secretHash), t.role.rawValue, t.usesLeft, t.expires.timeIntervalSince1970,
                    t.created.timeIntervalSince1970, t.revoked,
                ]
            )
        }
    }

    /// Checks a token and takes one use, atomically (``Repository/redeemToken(id:secretHash:now:)``).
    public func redeemToken(id: TokenID, secretHash: [UInt8], now: Date) async throws -> TokenRedemption {
        try await pool.write { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT * FROM enrollment_tokens WHERE id = ?", arguments: [id.description]) else {
                return .unknown
            }
            let answer = TokenRedemption.check(try Self.decodeToken(row), secretHash: secretHash, now: now)
            guard case .redeemed(var t) = answer else { return answer }
            try db.execute(sql: "UPDATE enrollment_tokens SET uses_left = uses_left - 1 WHERE id = ?", arguments: [id.description])
            t.usesLeft -= 1
            return .redeemed(t)
        }
    }

    /// Checks a token, taking nothing (``Repository/checkToken(id:secretHash:now:)``).
    public func checkToken(id: TokenID, secretHash: [UInt8], now: Date) async throws -> TokenRedemption {
        try await pool.read { db in
            let row = try Row.fetchOne(db, sql: "SELECT * FROM enrollment_tokens WHERE id = ?", arguments: [id.description])
            return TokenRedemption.check(try row.map(Self.decodeToken), secretHash: secretHash, now: now)
        }
    }

    /// Every enrollment token.
    public func listTokens() async throws -> [EnrollmentTokenRecord] {
        try await pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM enrollment_tokens ORDER BY created, id").map(Self.decodeToken)
        }
    }

    /// Withdraws a token; `false` if there is none.
    public func revokeToken(id: TokenID) async throws -> Bool {
        try await pool.write { db in
            try db.execute(sql: "UPDATE enrollment_tokens SET revoked = 1 WHERE id = ?", arguments: [id.description])
            return db.changesCount > 0
        }
    }

    private static func decodeToken(_ row: Row) throws -> EnrollmentTokenRecord {
        EnrollmentTokenRecord(
            id: try StoredValue.identifier(row["id"]), secretHash: [UInt8](row["secret_hash"] as Data),
            role: try StoredValue.enumeration(row["role"]),
            usesLeft: row["uses_left"], expires: Date(timeIntervalSince1970: row["expires"]),
            created: Date(timeIntervalSince1970: row["created"]), revoked: row["revoked"]
        )
    }

    // MARK: Audit

    /// Appends audit records, committed before returning.
    public func appendAudit(_ event: AuditEvent) async throws {
        try await pool.write { db in try Self.insertAudit(db, event) }
    }

    /// Appends audit records, committed before returning.
    public func appendAudit(_ events: [AuditEvent]) async throws {
        try await pool.write { db in
            for e in events { try Self.insertAudit(db, e) }
        }
    }

    private static func insertAudit(_ db: Database, _ e: AuditEvent) throws {
        try db.cachedStatement(sql: "INSERT INTO audit (time, actor, action, key_id, route, result, detail) VALUES (?, ?, ?, ?, ?, ?, ?)").execute(
            arguments: [
                e.time.timeIntervalSince1970, e.actor.description, e.action.rawValue, e.keyID?.description, e.route.description,
                e.result.description, e.detail,
            ]
        )
    }

    /// Audit records after a sequence number, oldest first.
    public func audit(after: Int64, limit: Int) async throws -> [AuditEvent] {
        try await pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?", arguments: [after, limit]).map { row in
                AuditEvent(
                    sequence: row["seq"], time: Date(timeIntervalSince1970: row["time"]), actor: try StoredValue.text(row["actor"]),
                    action: try StoredValue.enumeration(row["action"]), keyID: try (row["key_id"] as String?).map(StoredValue.identifier),
                    route: try StoredValue.text(row["route"]), result: try StoredValue.text(row["result"]), detail: row["detail"]
                )
            }
        }
    }

    // MARK: Reveal and rotation

    /// Reads and marks a key, with its audit record (``Repository/revealKey(id:audit:)``).
    public func revealKey(id: KeyID, audit: AuditEvent) async throws -> StoredKey? {
        try await pool.write { db in
            guard let key = try Self.fetchKey(db, id) else { return nil }
            guard key.destroyed == nil else { return key }  // nothing to reveal: the caller refuses it
            try db.execute(
                sql: "INSERT INTO key_rotations (key_id, marked) VALUES (?, ?) ON CONFLICT (key_id) DO NOTHING",
                arguments: [id.description, audit.time.timeIntervalSince1970])
            try Self.insertAudit(db, audit)
            return key
        }
    }

    /// Which of `ids` are marked.
    public func rotationRequired(_ ids: [KeyID]) async throws -> Set<KeyID> {
        guard !ids.isEmpty else { return [] }
        return try await pool.read { db in
            var found = Set<KeyID>()
            // In chunks, below SQLite's limit on bound parameters.
            for chunk in stride(from: 0, to: ids.count, by: 500).map({ ids[$0..<min($0 + 500, ids.count)] }) {
                let rows = try String.fetchAll(
                    db, sql: "SELECT key_id FROM key_rotations WHERE key_id IN (\(chunk.map { _ in "?" }.joined(separator: ", ")))",
                    arguments: StatementArguments(chunk.map(\.description)))
                for text in rows { found.insert(try StoredValue.identifier(text)) }
            }
            return found
        }
    }

    // MARK: Escrow checks

    /// Stores the checks newer than the stored ones, with `audit` (``Repository/recordEscrowChecks(_:audit:)``).
    public func recordEscrowChecks(_ checks: [EscrowCheckRecord], audit: [AuditEvent]) async throws {
        guard !checks.isEmpty || !audit.isEmpty else { return }
        try await pool.write { db in
            for c in checks {
                try db.execute(
                    sql: """
                        INSERT INTO escrow_checks (key_id, client_id, checked, opens) VALUES (?, ?, ?, ?)
                        ON CONFLICT (key_id) DO UPDATE SET client_id = excluded.client_id, checked = excluded.checked, opens = excluded.opens
                        WHERE excluded.checked >= escrow_checks.checked
                        """,
                    arguments: [c.keyID.description, c.clientID.description, c.checked.timeIntervalSince1970, c.opens])
            }
            for e in audit { try Self.insertAudit(db, e) }
        }
    }

    /// The checks of `ids`.
    public func escrowChecks(keys ids: [KeyID]) async throws -> [EscrowCheckRecord] {
        try await escrowChecks(column: "key_id", ids.map(\.description))
    }

    /// The checks made by `clients`.
    public func escrowChecks(clients: [ClientID]) async throws -> [EscrowCheckRecord] {
        try await escrowChecks(column: "client_id", clients.map(\.description))
    }

    private func escrowChecks(column: String, _ values: [String]) async throws -> [EscrowCheckRecord] {
        guard !values.isEmpty else { return [] }
        return try await pool.read { db in
            var found: [EscrowCheckRecord] = []
            // In chunks, below SQLite's limit on bound parameters.
            for chunk in stride(from: 0, to: values.count, by: 500).map({ values[$0..<min($0 + 500, values.count)] }) {
                let rows = try Row.fetchAll(
                    db,
                    sql:
                        "SELECT key_id, client_id, checked, opens FROM escrow_checks WHERE \(column) IN (\(chunk.map { _ in "?" }.joined(separator: ", ")))",
                    arguments: StatementArguments(Array(chunk)))
                found += try rows.map(Self.decodeCheck)
            }
            return found
        }
    }

    /// The drifts, newest first.
    public func driftedEscrowChecks(limit: Int) async throws -> [EscrowCheckRecord] {
        try await pool.read { db in
            try Row.fetchAll(
                db, sql: "SELECT key_id, client_id, checked, opens FROM escrow_checks WHERE opens = 0 ORDER BY checked DESC LIMIT ?",
                arguments: [limit]
            ).map(Self.decodeCheck)
        }
    }

    /// How many drifts there are.
    public func driftedEscrowCheckCount() async throws -> Int {
        try await pool.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM escrow_checks WHERE opens = 0") ?? 0 }
    }

    private static func decodeCheck(_ row: Row) throws -> EscrowCheckRecord {
        EscrowCheckRecord(
            keyID: try StoredValue.identifier(row["key_id"]), clientID: try StoredValue.identifier(row["client_id"]),
            checked: Date(timeIntervalSince1970: row["checked"]), opens: row["opens"])
    }

    // MARK: Release approval

    /// The open request for the key by the device, or `request` (``Repository/openApproval(_:audit:)``).
    public func openApproval(_ request: ApprovalRecord, audit: AuditEvent) async throws -> (ApprovalRecord, created: Bool) {
        let (keyID, client, at) = (request.keyID, request.clientID, request.requested)
        return try await pool.write { db in
            // SQLite has one writer: the read and the insert cannot interleave with another's.
            if let row = try Row.fetchOne(
                db, sql: "SELECT * FROM release_approvals WHERE key_id = ? AND client_id = ? AND state IN ('pending', 'approved', 'denied')",
                arguments: [keyID.description, client.description])
            {
                return (try Self.decodeApproval(row), false)
            }
            try db.execute(
                sql: "INSERT INTO release_approvals (id, key_id, client_id, requested, state, reason) VALUES (?, ?, ?, ?, ?, '')",
                arguments: [request.id.description, keyID.description, client.description, at.timeIntervalSince1970, request.state.rawValue]
            )
            try Self.insertAudit(db, audit)
            return (request, true)
        }
    }

    /// The request with `id`.
    public func approval(id: ApprovalID) async throws -> ApprovalRecord? {
        try await pool.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM release_approvals WHERE id = ?", arguments: [id.description]).map(Self.decodeApproval)
        }
    }

    /// Requests in `states`, newest first.
    public func listApprovals(states: Set<ApprovalState>, limit: Int) async throws -> [ApprovalRecord] {
        let names = states.map(\.rawValue).sorted()
        guard !names.isEmpty else { return [] }
        return try await pool.read { db in
            try Row.fetchAll(
                db,
                sql:
                    "SELECT * FROM release_approvals WHERE state IN (\(names.map { _ in "?" }.joined(separator: ", "))) ORDER BY requested DESC, id DESC LIMIT ?",
                arguments: StatementArguments(names.map { $0 as any DatabaseValueConvertible } + [limit])
            ).map(Self.decodeApproval)
        }
    }

    /// Moves a request on (``Repository/setApprovalState(id:from:to:decision:audit:)``).
    public func setApprovalState(
        id: ApprovalID, from: Set<ApprovalState>, to state: ApprovalState, decision: ApprovalDecision?, audit: AuditEvent?
    ) async throws -> ApprovalRecord? {
        try await pool.write { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT * FROM release_approvals WHERE id = ?", arguments: [id.description]) else {
                return nil
            }
            var request = try Self.decodeApproval(row)
            guard from.contains(request.state) else { return nil }
            request.state = state
            if let decision {
                request.decidedBy = decision.by
                request.decided = decision.at
                request.reason = decision.reason
            }
            try db.execute(
                sql: "UPDATE release_approvals SET state = ?, decided_by = ?, decided = ?, reason = ? WHERE id = ?",
                arguments: [
                    state.rawValue, request.decidedBy?.description, request.decided?.timeIntervalSince1970, request.reason, id.description,
                ]
            )
            if let audit { try Self.insertAudit(db, audit) }
            return request
        }
    }

    private static func decodeApproval(_ row: Row) throws -> ApprovalRecord {
        ApprovalRecord(
            id: try StoredValue.identifier(row["id"]), keyID: try StoredValue.identifier(row["key_id"]),
            clientID: try StoredValue.identifier(row["client_id"]), requested: Date(timeIntervalSince1970: row["requested"]),
            state: try StoredValue.enumeration(row["state"]), decidedBy: try (row["decided_by"] as String?).map(StoredValue.identifier),
            decided: (row["decided"] as Double?).map(Date.init(timeIntervalSince1970:)), reason: row["reason"]
        )
    }

    // MARK: Master-key versions

    /// The versions registered (``Repository/masterKeyVersions()``).
    public func masterKeyVersions() async throws -> [MasterKeyVersionRecord] {
        try await pool.read { db in try Row.fetchAll(db, sql: "SELECT * FROM master_key_versions ORDER BY version").map(Self.decodeMasterVersion) }
    }

    private static func decodeMasterVersion(_ row: Row) -> MasterKeyVersionRecord {
        MasterKeyVersionRecord(
            version: row["version"], check: [UInt8](row["check_value"] as Data), created: Date(timeIntervalSince1970: row["created"]),
            activated: (row["activated"] as Double?).map(Date.init(timeIntervalSince1970:)),
            retired: (row["retired"] as Double?).map(Date.init(timeIntervalSince1970:)))
    }

    /// Records a version (``Repository/registerMasterKeyVersion(_:audit:)``).
    public func registerMasterKeyVersion(_ v: MasterKeyVersionRecord, audit: AuditEvent?) async throws -> MasterKeyRegistration {
        try await pool.write { db in
            try db.execute(
                sql: """
                    INSERT INTO master_key_versions (version, check_value, created, activated, retired) VALUES (?, ?, ?, ?, ?)
                    ON CONFLICT (version) DO NOTHING
                    """,
                arguments: [
                    v.version, Data(v.check), v.created.timeIntervalSince1970, v.activated?.timeIntervalSince1970, v.retired?.timeIntervalSince1970,
                ])
            if db.changesCount == 0 {
                let check = try Data.fetchOne(db, sql: "SELECT check_value FROM master_key_versions WHERE version = ?", arguments: [v.version])
                return check.map { [UInt8]($0) } == v.check ? .alreadyRegistered : .conflict
            }
            if let audit { try Self.insertAudit(db, audit) }
            return .registered
        }
    }

    /// Activates a version (``Repository/activateMasterKeyVersion(_:at:audit:)``).
    public func activateMasterKeyVersion(_ version: Int, at: Date, audit: AuditEvent) async throws -> Bool {
        try await pool.write { db in
            try db.execute(
                sql: "UPDATE master_key_versions SET activated = ? WHERE version = ? AND activated IS NULL",
                arguments: [at.timeIntervalSince1970, version])
            guard db.changesCount > 0 else { return false }
            try Self.insertAudit(db, audit)
            return true
        }
    }

    /// Keys wrapped under older versions (``Repository/keysToRewrap(below:limit:)``).
    public func keysToRewrap(below version: Int, limit: Int) async throws -> [StoredKey] {
        try await pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM keys WHERE master_version < ? AND destroyed IS NULL LIMIT ?", arguments: [version, limit]).map(
                Self.decodeKey)
        }
    }

    /// Stores rewrapped secrets (``Repository/rewrapKeys(_:)``).
    public func rewrapKeys(_ rewraps: [KeyRewrap]) async throws -> Int {
        try await pool.write { db in
            let statement = try db.cachedStatement(
                sql: "UPDATE keys SET wrapped_secret = ?, master_version = ? WHERE id = ? AND wrapped_secret = ?")
            var done = 0
            for rewrap in rewraps {
                try statement.execute(arguments: [
                    Data(rewrap.new), WrappedSecretHeader.version(of: rewrap.new), rewrap.id.description, Data(rewrap.old),
                ])
                done += db.changesCount
            }
            return done
        }
    }

    /// Keys per master-key version (``Repository/keyCountsByMasterVersion()``).
    public func keyCountsByMasterVersion() async throws -> [Int: Int] {
        try await pool.read { db in try Self.countsByMasterVersion(db, below: Int.max) }
    }

    private static func countsByMasterVersion(_ db: Database, below version: Int) throws -> [Int: Int] {
        var counts: [Int: Int] = [:]
        for row in try Row.fetchAll(
            db, sql: "SELECT master_version, COUNT(*) AS n FROM keys WHERE master_version < ? AND destroyed IS NULL GROUP BY master_version",
            arguments: [version])
        {
            counts[row["master_version"]] = row["n"]
        }
        return counts
    }

    /// Retires the older versions when no key uses them (``Repository/retireMasterKeyVersions(below:at:audit:)``).
    public func retireMasterKeyVersions(below version: Int, at: Date, audit: AuditEvent) async throws -> [Int: Int] {
        try await pool.write { db in
            let inUse = try Self.countsByMasterVersion(db, below: version)
            guard inUse.isEmpty else { return inUse }
            try db.execute(
                sql: "UPDATE master_key_versions SET retired = ? WHERE version < ? AND retired IS NULL",
                arguments: [at.timeIntervalSince1970, version])
            try Self.insertAudit(db, audit)
            return [:]
        }
    }

    // MARK: Deletion and retention

    /// Marks a revoked or moved client deleted (``Repository/deleteClient(id:at:audit:)``).
    public func deleteClient(id: ClientID, at: Date, audit: AuditEvent) async throws -> Bool {
        try await pool.write { db in
            try db.execute(
                sql: "UPDATE clients SET state = 'deleted', deleted = ? WHERE id = ? AND state IN ('revoked', 'moved')",
                arguments: [at.timeIntervalSince1970, id.description])
            guard db.changesCount > 0 else { return false }
            try Self.insertAudit(db, audit)
            return true
        }
    }

    /// Keys `client` escrowed that are not destroyed (``Repository/liveKeyCount(escrowedBy:)``).
    public func liveKeyCount(escrowedBy client: ClientID) async throws -> Int {
        try await pool.read { db in
            try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM keys WHERE escrowed_by = ? AND destroyed IS NULL", arguments: [client.description]) ?? 0
        }
    }

    /// The facts a ``DestructionRule`` decides on, for the keys row `k`: whether its owner is
    /// active, when its owner was deleted (NULL unless deleted), and whether an active device's
    /// last drive check names it.
    private static let destructionFacts = """
        EXISTS (SELECT 1 FROM clients a WHERE a.id = k.escrowed_by AND a.state = 'active') AS owner_active,
        (SELECT c.deleted FROM clients c WHERE c.id = k.escrowed_by AND c.state = 'deleted') AS owner_deleted,
        EXISTS (SELECT 1 FROM escrow_checks e JOIN clients a ON a.id = e.client_id WHERE e.key_id = k.id AND a.state = 'active')
          AS active_check
        """

    /// The keys the retention destroys (``Repository/keysDueForDestruction(deletedBefore:limit:)``).
    public func keysDueForDestruction(deletedBefore cutoff: Date, limit: Int) async throws -> [DueKey] {
        try await pool.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT k.id, k.escrowed_by, c.deleted FROM keys k JOIN clients c ON c.id = k.escrowed_by
                    WHERE c.state = 'deleted' AND c.deleted <= ? AND k.destroyed IS NULL
                      AND NOT EXISTS (SELECT 1 FROM escrow_checks e JOIN clients a ON a.id = e.client_id WHERE e.key_id = k.id AND a.state = 'active')
                    ORDER BY k.id LIMIT ?
                    """, arguments: [cutoff.timeIntervalSince1970, limit]
            ).map { row in
                DueKey(
                    keyID: try StoredValue.identifier(row["id"]), client: try StoredValue.identifier(row["escrowed_by"]),
                    deleted: Date(timeIntervalSince1970: row["deleted"]))
            }
        }
    }

    /// Destroys keys (``Repository/destroyKeys(_:at:)``), then truncates the write-ahead log so
    /// that no earlier page image holding their secrets stays in it.
    public func destroyKeys(_ requests: [KeyDestruction], at: Date) async throws -> [KeyDestructionOutcome] {
        let outcomes = try await pool.write { db in
            try requests.map { request -> KeyDestructionOutcome in
                guard
                    let row = try Row.fetchOne(
                        db, sql: "SELECT k.destroyed, k.escrowed_by, \(Self.destructionFacts) FROM keys k WHERE k.id = ?",
                        arguments: [request.keyID.description])
                else { return .notFound }
                if (row["destroyed"] as Double?) != nil { return .alreadyDestroyed }
                let allowed = request.rule.allows(
                    owner: try (row["escrowed_by"] as String?).map(StoredValue.identifier), ownerActive: row["owner_active"],
                    ownerDeleted: (row["owner_deleted"] as Double?).map(Date.init(timeIntervalSince1970:)), activeDriveCheck: row["active_check"])
                guard allowed else { return .spared }
                try db.execute(
                    sql: """
                        UPDATE keys SET wrapped_secret = x'', secret_fingerprint = x'', destroyed = ?,
                          seq = (SELECT COALESCE(MAX(seq), 0) + 1 FROM keys), state_seq = (SELECT COALESCE(MAX(state_seq), 0) + 1 FROM keys)
                        WHERE id = ?
                        """, arguments: [at.timeIntervalSince1970, request.keyID.description])
                try Self.insertAudit(db, request.audit)
                return .destroyed
            }
        }
        if outcomes.contains(.destroyed) {
            // Best effort: a reader holding an old snapshot makes it wait (GRDB's busy timeout);
            // the next destruction or SQLite's own checkpoints finish the job then.
            try? await pool.writeWithoutTransaction { db in _ = try db.checkpoint(.truncate) }
        }
        return outcomes
    }

    // MARK: Settings

    /// A named setting.
    public func setting(_ name: String) async throws -> String? {
        try await pool.read { db in try String.fetchOne(db, sql: "SELECT value FROM settings WHERE name = ?", arguments: [name]) }
    }

    /// Sets a named setting, durably.
    public func setSetting(_ name: String, _ value: String) async throws {
        try await pool.write { db in
            try db.execute(
                sql: "INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                arguments: [name, value]
            )
        }
    }

    /// Releases the driver's resources.
    public func close() async throws {
        try pool.close()
    }
}
