public import Foundation
public import KeyholdCore
public import KeyholdProtocol
public import KeyholdStore
public import Logging
import NIOCore
import PostgresNIO

/// The ``Repository`` for large installations: a PostgreSQL database that several `keyhold-server`
/// processes may share. Commits are durable with PostgreSQL's default `synchronous_commit = on`;
/// high availability is PostgreSQL's own replication.
public final class PostgresRepository: Repository, RepositoryFaultInjection {
    private let client: TrackedClient
    private let logger: Logger
    /// Signals that ``run()`` started the pool; ``migrate()`` (the first query) waits for it.
    private let runStarted: AsyncStream<Void>.Continuation
    private let started: Task<Void, Never>
    /// Concurrent releases share statements and commits; concurrent client lookups (one per
    /// authenticated request) share statements.
    private let releases: BatchQueue<ReleaseRequest, StoredKey?>
    private let clientLookups: BatchQueue<ClientID, EnrolledClient?>

    /// Connects lazily using `url` (queries wait until ``run()`` runs the connection pool): `postgres://user:password@host:port/database`, or for a Unix
    /// socket `postgres:///database?host=/path/to/socket-folder&user=name` (as libpq writes it).
    ///
    /// `batchLanes` is how many release (and client lookup) batches may be in flight at once. One
    /// is fastest: while a batch commits, the next one gathers every request that arrives, so the
    /// fewest statements and commits carry the most keys (measured: 32 clients, 1 lane 7,400/s,
    /// 2 lanes 5,900/s, 8 lanes 4,400/s, on 2 cores). Several server processes sharing the
    /// database each have their own.
    public init(url: String, logger: Logger = Logger(label: "keyhold.postgres"), maximumConnections: Int = 16, batchLanes: Int = 1) throws {
        var config = try Self.configuration(url: url)
        config.options.maximumConnections = maximumConnections
        let client = TrackedClient(PostgresClient(configuration: config, backgroundLogger: logger), connections: maximumConnections)
        self.client = client
        self.logger = logger
        let (signal, continuation) = AsyncStream<Void>.makeStream()
        self.runStarted = continuation
        self.started = Task { for await _ in signal {} }
        let statistics = client.statistics
        self.releases = BatchQueue(
            lanes: batchLanes, maximumBatch: 256, batched: { statistics.report(.releaseBatch(size: $0)) },
            commit: { try await Self.releaseBatch($0, client, logger) })
        self.clientLookups = BatchQueue(lanes: batchLanes, maximumBatch: 256) { try await Self.clientBatch($0, client, logger) }
    }

    /// Operations holding or waiting for a connection, PostgreSQL's errors, release batches.
    public var statistics: StoreStatistics { client.statistics }

    /// Runs the connection pool (postgres-nio's `PostgresClient`) until the task is cancelled:
    /// the server runs it as the first service of its group, so it stops last.
    public func run() async throws {
        runStarted.finish()
        await client.run()
    }

    /// Waits until ``run()`` runs the pool, so the first query does not race its start.
    private func ready() async {
        await started.value
        await Task.yield()
    }

    /// Parses a PostgreSQL URL into a client configuration.
    static func configuration(url text: String) throws -> PostgresClient.Configuration {
        guard let url = URLComponents(string: text), ["postgres", "postgresql"].contains(url.scheme ?? "") else {
            throw RepositoryError("not a PostgreSQL URL (postgres://user@host:port/database): \(text)")
        }
        let query = Dictionary((url.queryItems ?? []).map { ($0.name, $0.value ?? "") }, uniquingKeysWith: { $1 })
        let user = url.user ?? query["user"] ?? ProcessInfo.processInfo.environment["USER"] ?? "postgres"
        let password = url.password ?? query["password"]
        let database = String(url.path.drop { $0 == "/" })
        let port = url.port ?? Int(query["port"] ?? "") ?? 5432
        let host = (url.host?.isEmpty == false ? url.host : nil) ?? query["host"] ?? "/var/run/postgresql"
        if host.hasPrefix("/") {
            return PostgresClient.Configuration(
                unixSocketPath: "\(host)/.s.PGSQL.\(port)", username: user, password: password,
                database: database.isEmpty ? nil : database
            )
        }
        return PostgresClient.Configuration(
            host: host, port: port, username: user, password: password, database: database.isEmpty ? nil : database, tls: .disable
        )
    }

    /// Creates or upgrades the schema (``Repository/migrate()``).
    public func migrate() async throws {
        await ready()
        try await client.withTransaction(logger: logger) { conn in
            // One migrating process at a time, however many start together.
            try await conn.query("SELECT pg_advisory_xact_lock(7882829013)", logger: logger)
            try await conn.query(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied TIMESTAMPTZ NOT NULL)",
                logger: logger
            )
            var done = Set<Int>()
            for try await version in try await conn.query("SELECT version FROM schema_migrations", logger: logger).decode(Int.self) {
                done.insert(version)
            }
            for m in Schema.migrations where !done.contains(m.version) {
                for statement in m.postgres { try await conn.query(PostgresQuery(unsafeSQL: statement), logger: logger) }
                try await conn.query(
                    "INSERT INTO schema_migrations (version, name, applied) VALUES (\(m.version), \(m.name), \(Date()))",
                    logger: logger
                )
            }
        }
    }

    /// The migrations applied (``Repository/appliedMigrations()``).
    public func appliedMigrations() async throws -> [Int] {
        await ready()
        return try await client.withConnection { conn in
            let exists = try await conn.query("SELECT to_regclass('schema_migrations') IS NOT NULL", logger: logger).collect()
            guard try exists.first?.decode(Bool.self) == true else { return [] }
            var versions: [Int] = []
            for try await v in try await conn.query("SELECT version FROM schema_migrations ORDER BY version", logger: logger).decode(Int.self) {
                versions.append(v)
            }
            return versions
        }
    }

    /// Makes every later audit write fail (``RepositoryFaultInjection``).
    public func breakAuditWrites() async throws {
        try await client.withTransaction(logger: logger) { conn in
            try await conn.query(
                """
                CREATE OR REPLACE FUNCTION keyhold_fault_audit() RETURNS trigger AS $$
                BEGIN RAISE EXCEPTION 'audit write failed (fault injected)'; END $$ LANGUAGE plpgsql
                """, logger: logger)
            try await conn.query("DROP TRIGGER IF EXISTS fault_audit ON audit", logger: logger)
            try await conn.query(
                "CREATE TRIGGER fault_audit BEFORE INSERT ON audit FOR EACH ROW EXECUTE FUNCTION keyhold_fault_audit()",
                logger: logger
            )
        }
    }

    // MARK: Keys

    private static let keyColumns = """
        id, kind, origin_server_id, origin_device_id, created, label, state, wrapped_secret, secret_fingerprint, provenance, stored, blocked, seq,
        destroyed, escrowed_by
        """

    /// Serialises writers of `keys.seq` for the rest of the transaction, so a smaller sequence
    /// number can never commit after a larger one was read (docs/spec/hierarchy.md §3).
    private static let sequenceLock: Int64 = 7_882_829_014

    /// Stores a key unless its id exists, with its audit record (``Repository/insertKey(_:audit:)``).
    public func insertKey(_ key: StoredKey, audit: AuditEvent?) async throws -> KeyInsertOutcome {
        let r = key.record
        return try await client.withTransaction(logger: logger) { conn in
            try await conn.query("SELECT pg_advisory_xact_lock(\(Self.sequenceLock))", logger: logger)
            let inserted = try await self.insertRow(conn, key)
            var outcome = KeyInsertOutcome.inserted
            if !inserted {
                var existing: [UInt8] = []
                var destroyed = false
                for try await (f, gone) in try await conn.query(
                    "SELECT secret_fingerprint, destroyed IS NOT NULL FROM keys WHERE id = \(r.id.description)", logger: logger
                ).decode((ByteBuffer, Bool).self) {
                    existing = Array(f.readableBytesView)
                    destroyed = gone
                }
                outcome = destroyed ? .destroyed : existing == key.secretFingerprint ? .alreadyPresent : .conflict
            }
            if var a = audit {
                if outcome == .conflict { a.result = .refused(.conflict) }
                if outcome == .destroyed { a.result = .refused(.keyDestroyed) }
                try await Self.insertAudit(conn, a, logger)
            }
            if outcome == .alreadyPresent, let owner = key.escrowedBy {
                // A device re-escrowing a key takes it over from anyone but an active device.
                try await conn.query(
                    """
                    UPDATE keys SET escrowed_by = \(owner.description) WHERE id = \(r.id.description) AND (escrowed_by IS NULL OR NOT EXISTS (
                      SELECT 1 FROM clients a WHERE a.id = keys.escrowed_by AND a.state = 'active' AND a.role = 'device'))
                    """, logger: logger)
            }
            return outcome
        }
    }

    /// Inserts one key row with the next sequence number unless the id exists; true if inserted.
    /// Call inside a transaction holding `sequenceLock`.
    private func insertRow(_ conn: PostgresConnection, _ key: StoredKey) async throws -> Bool {
        let r = key.record
        return try await conn.query(
            """
            INSERT INTO keys (id, kind, origin_server_id, origin_device_id, created, label, state,
                              wrapped_secret, secret_fingerprint, provenance, stored, blocked, escrowed_by, seq)
            VALUES (\(r.id.description), \(r.kind.rawValue), \(r.originServerID.description), \(r.originDeviceID.description),
                    \(r.created), \(r.label), \(r.state.rawValue), \(bytea(key.wrappedSecret)), \(bytea(key.secretFingerprint)),
                    \(key.provenance.rawValue), \(key.stored), \(key.blocked), \(key.escrowedBy?.description),
                    (SELECT COALESCE(MAX(seq), 0) + 1 FROM keys))
            ON CONFLICT (id) DO NOTHING RETURNING id
            """, logger: logger
        ).collect().count == 1
    }

    /// Stores a key obtained from the primary and releases it, in one transaction (``Repository/insertAndRelease(_:obtained:release:)``).
    public func insertAndRelease(_ key: StoredKey, obtained: AuditEvent, release: ReleaseRequest) async throws -> (KeyInsertOutcome, StoredKey?) {
        // One call of the function migration 3 created: one round trip, one commit.
        for try await row in try await client.execute(InsertAndReleaseStatement(key: key, obtained: obtained, release: release), logger: logger) {
            let cells = row.makeRandomAccess()
            let outcome: KeyInsertOutcome = try StoredValue.enumeration(try cells[0].decode(String.self, context: .default))
            return (outcome, outcome == .conflict ? nil : try Self.decodeKey(cells, from: 1))
        }
        throw RepositoryError("keyhold_insert_and_release returned no row for key \(key.record.id)")
    }

    private struct InsertAndReleaseStatement: PostgresPreparedStatement {
        static let name = "keyhold_insert_and_release_1"
        static let sql = "SELECT * FROM keyhold_insert_and_release(\((1...23).map { "$\($0)" }.joined(separator: ", ")))"
        typealias Row = PostgresRow
        let key: StoredKey
        let obtained: AuditEvent
        let release: ReleaseRequest

        func makeBindings() throws -> PostgresBindings {
            let r = key.record
            var b = PostgresBindings(capacity: 23)
            b.append(r.id.description)
            b.append(r.kind.rawValue)
            b.append(r.originServerID.description)
            b.append(r.originDeviceID.description)
            b.append(r.created)
            b.append(r.label)
            b.append(r.state.rawValue)
            b.append(ByteBuffer(bytes: key.wrappedSecret))
            b.append(ByteBuffer(bytes: key.secretFingerprint))
            b.append(key.provenance.rawValue)
            b.append(key.stored)
            b.append(key.blocked)
            b.append(obtained.time)
            b.append(obtained.actor.description)
            b.append(obtained.action.rawValue)
            b.append(obtained.keyID?.description)
            b.append(obtained.route.description)
            b.append(obtained.result.description)
            b.append(obtained.detail)
            b.append(release.time)
            b.append(release.actor.description)
            b.append(release.route.description)
            b.append(release.detail)
            return b
        }

        func decodeRow(_ row: PostgresRow) throws -> PostgresRow { row }
    }

    /// Stores a secondary's batch in one transaction (``Repository/insertKeys(_:audit:)``).
    public func insertKeys(_ batch: [StoredKey], audit: AuditEvent) async throws -> [KeyInsertOutcome] {
        try await client.withTransaction(logger: logger) { conn in
            try await conn.query("SELECT pg_advisory_xact_lock(\(Self.sequenceLock))", logger: logger)
            let outcomes = try await insertBatch(conn, batch)
            try await Self.insertAudit(conn, BatchAudit.summary(audit, outcomes), logger)
            for (key, outcome) in zip(batch, outcomes) where outcome == .conflict {
                try await Self.insertAudit(conn, BatchAudit.conflict(audit, key.record.id), logger)
            }
            return outcomes
        }
    }

    /// Imports every key of `source` or none (``Repository/importKeys(from:audit:)``).
    public func importKeys(from source: any KeyBatchSource, audit: AuditEvent) async throws -> KeyImportResult {
        // One transaction; postgres-nio rolls it back when the closure throws (a conflict included),
        // and reports the closure's error inside its own: pass that on when the rollback worked.
        do {
            return try await importInTransaction(from: source, audit: audit)
        } catch let error as PostgresTransactionError where error.rollbackError == nil && error.closureError != nil {
            throw error.closureError!
        }
    }

    private func importInTransaction(from source: any KeyBatchSource, audit: AuditEvent) async throws -> KeyImportResult {
        try await client.withTransaction(logger: logger) { conn in
            try await conn.query("SELECT pg_advisory_xact_lock(\(Self.sequenceLock))", logger: logger)
            var tally = ImportTally()
            while let batch = try source.nextBatch() {
                try await Self.insertAudits(conn, tally.add(batch, try await insertBatch(conn, batch), base: audit), logger)
            }
            try tally.checkConflicts()
            try await Self.insertAudit(conn, tally.summary(audit), logger)
            return tally.result
        }
    }

    /// Stores a batch inside the caller's transaction (holding `sequenceLock`): a handful of
    /// statements whatever its size: look up the ids that exist, insert the new ones from arrays
    /// (sequence numbers in batch order), flag newly blocked ones.
    private func insertBatch(_ conn: PostgresConnection, _ batch: [StoredKey]) async throws -> [KeyInsertOutcome] {
        var existing: [String: (fingerprint: [UInt8], blocked: Bool, destroyed: Bool)] = [:]
        let ids = batch.map { $0.record.id.description }
        for try await (id, fingerprint, blocked, destroyed) in try await conn.query(
            "SELECT id, secret_fingerprint, blocked, destroyed IS NOT NULL FROM keys WHERE id = ANY(\(ids))", logger: logger
        ).decode((String, ByteBuffer, Bool, Bool).self) {
            existing[id] = (Array(fingerprint.readableBytesView), blocked, destroyed)
        }
        var outcomes: [KeyInsertOutcome] = []
        var fresh: [StoredKey] = []
        var newlyBlocked: [String] = []
        var claimed: (ids: [String], owners: [String]) = ([], [])
        var seen = Set<String>()
        for key in batch {
            let id = key.record.id.description
            if let old = existing[id] {
                guard !old.destroyed else {
                    outcomes.append(.destroyed)
                    continue
                }
                guard old.fingerprint == key.secretFingerprint else {
                    outcomes.append(.conflict)
                    continue
                }
                if let owner = key.escrowedBy {
                    claimed.ids.append(id)
                    claimed.owners.append(owner.description)
                }
                if key.blocked, !old.blocked, !newlyBlocked.contains(id) { newlyBlocked.append(id) }
                outcomes.append(.alreadyPresent)
            } else if seen.contains(id) {
                // The same id twice in one batch: the second is judged against the first.
                let first = fresh.first { $0.record.id == key.record.id }!
                outcomes.append(first.secretFingerprint == key.secretFingerprint ? .alreadyPresent : .conflict)
            } else {
                seen.insert(id)
                fresh.append(key)
                outcomes.append(.inserted)
            }
        }
        if !fresh.isEmpty {
            try await conn.query(
                """
                INSERT INTO keys (id, kind, origin_server_id, origin_device_id, created, label, state,
                                  wrapped_secret, secret_fingerprint, provenance, stored, blocked, escrowed_by, seq)
                SELECT t.id, t.kind, t.origin_server_id, t.origin_device_id, t.created, t.label, t.state,
                       t.wrapped_secret, t.secret_fingerprint, t.provenance, t.stored, t.blocked, NULLIF(t.escrowed_by, ''),
                       (SELECT COALESCE(MAX(seq), 0) FROM keys) + t.ord
                FROM unnest(\(fresh.map { $0.record.id.description })::text[], \(fresh.map { $0.record.kind.rawValue })::text[],
                            \(fresh.map { $0.record.originServerID.description })::text[], \(fresh.map { $0.record.originDeviceID.description })::text[],
                            \(fresh.map(\.record.created))::timestamptz[], \(fresh.map(\.record.label))::text[], \(fresh.map { $0.record.state.rawValue })::text[],
                            \(fresh.map { bytea($0.wrappedSecret) })::bytea[], \(fresh.map { bytea($0.secretFingerprint) })::bytea[],
                            \(fresh.map { $0.provenance.rawValue })::text[], \(fresh.map(\.stored))::timestamptz[], \(fresh.map(\.blocked))::bool[],
                            \(fresh.map { $0.escrowedBy?.description ?? "" })::text[])
                     WITH ORDINALITY AS t(id, kind, origin_server_id, origin_device_id, created, label, state,
                                          wrapped_secret, secret_fingerprint, provenance, stored, blocked, escrowed_by, ord)
                ORDER BY t.ord
                """, logger: logger
            )
        }
        if !claimed.ids.isEmpty {
            // A secondary's own keys are held for it here unless an active client holds them already.
            try await conn.query(
                """
                UPDATE keys SET escrowed_by = c.owner FROM unnest(\(claimed.ids)::text[], \(claimed.owners)::text[]) AS c(id, owner)
                WHERE keys.id = c.id AND (keys.escrowed_by IS NULL OR NOT EXISTS (
                  SELECT 1 FROM clients a WHERE a.id = keys.escrowed_by AND a.state = 'active'))
                """, logger: logger)
        }
        if !newlyBlocked.isEmpty {
            try await conn.query(
                """
                UPDATE keys SET blocked = TRUE, seq = (SELECT COALESCE(MAX(seq), 0) FROM keys) + u.ord,
                  state_seq = (SELECT COALESCE(MAX(state_seq), 0) FROM keys) + u.ord
                FROM unnest(\(newlyBlocked)::text[]) WITH ORDINALITY AS u(id, ord) WHERE keys.id = u.id
                """, logger: logger
            )
        }
        return outcomes
    }

    /// Keys after a sequence number, in sequence order (``Repository/keys(afterSequence:limit:)``).
    public func keys(afterSequence after: Int64, limit: Int) async throws -> [StoredKey] {
        var out: [StoredKey] = []
        let rows = try await client.query(
            "SELECT \(unescaped: Self.keyColumns) FROM keys WHERE seq > \(after) ORDER BY seq LIMIT \(Int64(limit))", logger: logger
        )
        for try await row in rows { out.append(try Self.decodeKey(row)) }
        return out
    }

    /// The key with `id`, if stored.
    public func key(id: KeyID) async throws -> StoredKey? {
        let rows = try await client.query("SELECT \(unescaped: Self.keyColumns) FROM keys WHERE id = \(id.description)", logger: logger)
        for try await row in rows { return try Self.decodeKey(row) }
        return nil
    }

    /// Reads a key and commits its release record together (``Repository/releaseKey(_:)``).
    public func releaseKey(_ request: ReleaseRequest) async throws -> StoredKey? {
        try await releases.submit(request)
    }

    /// Releases a batch of keys in one statement, so one round trip and one atomic, durable commit:
    /// each key is read and its audit record inserted together, or nothing is (a failing insert
    /// fails the whole statement; PostgreSQL runs a data-modifying WITH to completion whether or
    /// not the query reads it). One result row per request, in request order: whether its caller
    /// passed the check, then the key's columns.
    private static func releaseBatch(
        _ requests: [ReleaseRequest], _ client: TrackedClient, _ logger: Logger
    ) async throws -> [Result<StoredKey?, any Error>] {
        var out: [Result<StoredKey?, any Error>] = []
        out.reserveCapacity(requests.count)
        for try await row in try await client.execute(ReleaseBatchStatement(requests), logger: logger) {
            out.append(
                Result {
                    let cells = row.makeRandomAccess()
                    guard try cells[0].decode(Bool.self, context: .default) else { throw ReleaseCallerRefused() }
                    // LEFT JOIN: the key's columns are NULL when there is no such key.
                    guard try cells[1].decode(String?.self, context: .default) != nil else { return nil }
                    return try decodeKey(cells, from: 1)
                })
        }
        guard out.count == requests.count else {
            throw RepositoryError("the release statement returned \(out.count) rows for \(requests.count) requests")
        }
        return out
    }

    /// The batched release as a prepared statement (parsed and planned once per connection). The
    /// CASE is ReleaseRequest.result(for:) in SQL and `allowed` is ReleaseCaller.matches(_:); the
    /// conformance suite checks that every driver agrees.
    private struct ReleaseBatchStatement: PostgresPreparedStatement {
        static let name = "keyhold_release_batch_3"
        static let sql = """
            WITH r AS (SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::bool[],
                                            $7::text[], $8::text[], $9::text[])
                            WITH ORDINALITY AS r(id, time, actor, route, detail, audit_missing, caller_id, caller_role, caller_fingerprint, ord)),
                 c AS (SELECT r.ord, r.caller_id = '' OR EXISTS (
                           SELECT 1 FROM clients WHERE clients.id = r.caller_id AND clients.role = r.caller_role
                               AND clients.certificate_fingerprint = r.caller_fingerprint AND clients.state = 'active') AS allowed
                       FROM r),
                 k AS (SELECT r.ord, \(columns("keys")) FROM r JOIN c ON c.ord = r.ord JOIN keys ON keys.id = r.id WHERE c.allowed),
                 a AS (INSERT INTO audit (time, actor, action, key_id, route, result, detail)
                       SELECT r.time, r.actor, 'release', r.id, r.route,
                              CASE WHEN k.id IS NULL THEN 'not_found' WHEN k.destroyed IS NOT NULL THEN 'key_destroyed'
                                   WHEN k.blocked OR k.state = 'revoked' THEN 'key_blocked' ELSE 'ok' END,
                              r.detail
                       FROM r JOIN c ON c.ord = r.ord LEFT JOIN k ON k.ord = r.ord
                       WHERE c.allowed AND (k.id IS NOT NULL OR r.audit_missing)
                       ORDER BY r.ord)
            SELECT c.allowed, \(columns("k"))
            FROM r JOIN c ON c.ord = r.ord LEFT JOIN k ON k.ord = r.ord ORDER BY r.ord
            """
        static func columns(_ table: String) -> String {
            keyColumns.split(separator: ",").map { "\(table).\($0.trimmingCharacters(in: .whitespacesAndNewlines))" }.joined(separator: ", ")
        }
        typealias Row = PostgresRow

        let requests: [ReleaseRequest]
        init(_ requests: [ReleaseRequest]) { self.requests = requests }

        func makeBindings() throws -> PostgresBindings {
            var b = PostgresBindings(capacity: 9)
            b.append(requests.map(\.keyID.description))
            b.append(requests.map(\.time))
            b.append(requests.map(\.actor.description))
            b.append(requests.map(\.route.description))
            b.append(requests.map(\.detail))
            b.append(requests.map(\.auditIfMissing))
            b.append(requests.map { $0.caller?.id.description ?? "" })
            b.append(requests.map { $0.caller?.role.rawValue ?? "" })
            b.append(requests.map { $0.caller?.certificateFingerprint ?? "" })
            return b
        }

        func decodeRow(_ row: PostgresRow) throws -> PostgresRow { row }
    }

    /// Sets or clears the block on a key (``Repository/setBlocked(id:blocked:audit:)``).
    public func setBlocked(id: KeyID, blocked: Bool, audit: AuditEvent) async throws -> Bool {
        try await client.withTransaction(logger: logger) { conn in
            try await conn.query("SELECT pg_advisory_xact_lock(\(Self.sequenceLock))", logger: logger)
            let changed = try await conn.query(
                """
                UPDATE keys SET blocked = \(blocked), seq = (SELECT COALESCE(MAX(seq), 0) + 1 FROM keys),
                  state_seq = (SELECT COALESCE(MAX(state_seq), 0) + 1 FROM keys) WHERE id = \(id.description) RETURNING id
                """,
                logger: logger
            ).collect().count
            guard changed > 0 else { return false }
            try await Self.insertAudit(conn, audit, logger)
            return true
        }
    }

    /// Replaces a key whose fingerprint is still `fingerprint` (``Repository/replaceKey(_:replacing:audit:)``).
    public func replaceKey(_ key: StoredKey, replacing fingerprint: [UInt8], audit: AuditEvent) async throws -> Bool {
        try await client.withTransaction(logger: logger) { conn in
            try await conn.query("SELECT pg_advisory_xact_lock(\(Self.sequenceLock))", logger: logger)
            let r = key.record
            let changed = try await conn.query(
                """
                UPDATE keys SET kind = \(r.kind.rawValue), origin_server_id = \(r.originServerID.description),
                  origin_device_id = \(r.originDeviceID.description), created = \(r.created), label = \(r.label), state = \(r.state.rawValue),
                  wrapped_secret = \(bytea(key.wrappedSecret)), secret_fingerprint = \(bytea(key.secretFingerprint)),
                  provenance = \(key.provenance.rawValue), stored = \(key.stored), seq = (SELECT COALESCE(MAX(seq), 0) + 1 FROM keys)
                WHERE id = \(r.id.description) AND secret_fingerprint = \(bytea(fingerprint)) RETURNING id
                """, logger: logger
            ).collect().count
            guard changed > 0 else { return false }
            try await Self.insertAudit(conn, audit, logger)
            return true
        }
    }

    /// The change feed (``Repository/stateChanges(after:limit:)``).
    public func stateChanges(after: Int64, limit: Int) async throws -> [KeyStateChange] {
        var out: [KeyStateChange] = []
        let rows = try await client.query(
            "SELECT id, blocked, state_seq, destroyed IS NOT NULL FROM keys WHERE state_seq > \(after) ORDER BY state_seq LIMIT \(Int64(limit))",
            logger: logger)
        for try await (id, blocked, sequence, destroyed) in rows.decode((String, Bool, Int64, Bool).self) {
            guard let keyID = KeyID(id) else { throw RepositoryError("a stored key id is not a UUID") }
            out.append(KeyStateChange(keyID: keyID, blocked: blocked, sequence: sequence, destroyed: destroyed))
        }
        return out
    }

    /// Applies a primary's changes (``Repository/applyStateChanges(_:audit:)``).
    public func applyStateChanges(_ changes: [KeyStateChange], audit: AuditEvent) async throws -> [KeyID] {
        try await client.withTransaction(logger: logger) { conn in
            try await conn.query("SELECT pg_advisory_xact_lock(\(Self.sequenceLock))", logger: logger)
            var changed: [KeyID] = []
            for change in changes where !change.destroyed {
                let updated = try await conn.query(
                    """
                    UPDATE keys SET blocked = \(change.blocked), state_seq = (SELECT COALESCE(MAX(state_seq), 0) + 1 FROM keys)
                    WHERE id = \(change.keyID.description) AND blocked <> \(change.blocked) AND destroyed IS NULL RETURNING id
                    """, logger: logger
                ).collect().count
                guard updated > 0 else { continue }
                var event = audit
                event.keyID = change.keyID
                event.action = change.blocked ? .block : .unblock
                try await Self.insertAudit(conn, event, logger)
                changed.append(change.keyID)
            }
            return changed
        }
    }

    /// Key records in id order (``Repository/listKeys(after:limit:)``).
    public func listKeys(after: KeyID?, limit: Int) async throws -> [StoredKey] {
        var out: [StoredKey] = []
        let rows = try await client.query(
            "SELECT \(unescaped: Self.keyColumns) FROM keys WHERE id > \(after?.description ?? "") ORDER BY id LIMIT \(limit)",
            logger: logger
        )
        for try await row in rows { out.append(try Self.decodeKey(row)) }
        return out
    }

    /// How many keys are stored (after a sequence number, when given).
    public func keyCount() async throws -> Int {
        for try await n in try await client.query("SELECT COUNT(*) FROM keys", logger: logger).decode(Int.self) { return n }
        return 0
    }

    /// How many keys are stored (after a sequence number, when given).
    public func keyCount(afterSequence after: Int64) async throws -> Int {
        for try await n in try await client.query("SELECT COUNT(*) FROM keys WHERE seq > \(after)", logger: logger).decode(Int.self) { return n }
        return 0
    }

    private static func decodeKey(_ row: PostgresRow) throws -> StoredKey {
        try decodeKey(row.makeRandomAccess(), from: 0)
    }

    /// The key in the 15 columns of ``keyColumns`` starting at column `first` (the insert-and-release
    /// function answers only the first 13: it returns live keys, obtained from the primary).
    private static func decodeKey(_ cells: PostgresRandomAccessRow, from first: Int) throws -> StoredKey {
        func cell<T: PostgresDecodable>(_ i: Int, _: T.Type = T.self) throws -> T { try cells[first + i].decode(T.self, context: .default) }
        var key = StoredKey(
            record: KeyRecord(
                id: try StoredValue.identifier(try cell(0)), kind: try StoredValue.enumeration(try cell(1)),
                originServerID: try StoredValue.identifier(try cell(2)), originDeviceID: try StoredValue.identifier(try cell(3)),
                created: try cell(4), label: try cell(5), state: try StoredValue.enumeration(try cell(6))
            ),
            wrappedSecret: Array(try cell(7, ByteBuffer.self).readableBytesView),
            secretFingerprint: Array(try cell(8, ByteBuffer.self).readableBytesView),
            provenance: try StoredValue.enumeration(try cell(9)), stored: try cell(10), blocked: try cell(11)
        )
        key.sequence = try cell(12)
        if cells.count >= first + 15 {
            key.destroyed = try cell(13, Date?.self)
            key.escrowedBy = try (try cell(14, String?.self)).map(StoredValue.identifier)
        }
        return key
    }

    // MARK: Clients

    private static let clientColumns =
        "id, role, name, certificate_fingerprint, enrolled, state, last_seen, agent_version, key_count, certificate_expires, next_certificate_fingerprint, next_certificate_expires, deleted, certificate_issuer, next_certificate_issuer"

    /// Stores a new enrollment.
    public func insertClient(_ c: EnrolledClient) async throws {
        try await client.query(
            """
            INSERT INTO clients (id, role, name, certificate_fingerprint, enrolled, state, last_seen, agent_version, key_count,
                                 certificate_expires, certificate_issuer)
            VALUES (\(c.id.description), \(c.role.rawValue), \(c.name), \(c.certificateFingerprint), \(c.enrolled), \(c.state.rawValue),
                    \(c.lastSeen), \(c.agentVersion), \(c.reportedKeyCount.map(Int64.init)), \(c.certificateExpires), \(c.certificateIssuer))
            """, logger: logger
        )
    }

    /// The enrollment with `id`, if any.
    public func client(id: ClientID) async throws -> EnrolledClient? {
        try await clientLookups.submit(id)
    }

    private static func clientBatch(
        _ ids: [ClientID], _ client: TrackedClient, _ logger: Logger
    ) async throws -> [Result<EnrolledClient?, any Error>] {
        var found: [ClientID: EnrolledClient] = [:]
        for try await row in try await client.execute(ClientsStatement(ids: ids.map(\.description)), logger: logger) {
            let c = try decodeClient(row)
            found[c.id] = c
        }
        return ids.map { .success(found[$0]) }
    }

    /// Every authenticated request looks its caller up: a prepared statement (parsed and planned
    /// once per connection) for a batch of them.
    private struct ClientsStatement: PostgresPreparedStatement {
        static let name = "keyhold_clients_5"
        static let sql = "SELECT \(clientColumns) FROM clients WHERE id = ANY($1::text[])"
        typealias Row = PostgresRow
        let ids: [String]
        func makeBindings() throws -> PostgresBindings {
            var b = PostgresBindings(capacity: 1)
            b.append(ids)
            return b
        }
        func decodeRow(_ row: PostgresRow) throws -> PostgresRow { row }
    }

    /// Every enrollment (of one role, if given).
    public func listClients(role: ClientRole?) async throws -> [EnrolledClient] {
        var out: [EnrolledClient] = []
        let rows = try await client.query(
            "SELECT \(unescaped: Self.clientColumns) FROM clients WHERE \(role?.rawValue)::text IS NULL OR role = \(role?.rawValue) ORDER BY enrolled, id",
            logger: logger
        )
        for try await row in rows { out.append(try Self.decodeClient(row)) }
        return out
    }

    /// Sets an enrollment's state; `false` if there is none.
    public func setClientState(id: ClientID, state: EnrollmentState) async throws -> Bool {
        try await client.query(
            "UPDATE clients SET state = \(state.rawValue) WHERE id = \(id.description) RETURNING id", logger: logger
        ).collect().count > 0
    }

    /// Records a heartbeat's time, version and key count.
    public func recordHeartbeat(id: ClientID, at: Date, agentVersion: String, keyCount: Int) async throws {
        try await client.query(
            "UPDATE clients SET last_seen = \(at), agent_version = \(agentVersion), key_count = \(Int64(keyCount)) WHERE id = \(id.description)",
            logger: logger
        )
    }

    /// Records a renewed certificate (``Repository/offerCertificate(id:current:next:expires:audit:)``).
    public func offerCertificate(
        id: ClientID, current: String, next fingerprint: String, expires: Date, issuer: String?, audit: AuditEvent
    ) async throws -> Bool {
        try await client.withTransaction(logger: logger) { connection in
            let rows = try await connection.query(
                """
                UPDATE clients SET next_certificate_fingerprint = \(fingerprint), next_certificate_expires = \(expires),
                  next_certificate_issuer = \(issuer)
                WHERE id = \(id.description) AND state = 'active' AND certificate_fingerprint = \(current) RETURNING id
                """, logger: logger
            ).collect()
            guard !rows.isEmpty else { return false }
            try await Self.insertAudit(connection, audit, logger)
            return true
        }
    }

    /// Makes the next certificate the current one (``Repository/adoptCertificate(id:fingerprint:)``).
    public func adoptCertificate(id: ClientID, fingerprint: String) async throws -> Bool {
        try await client.query(
            """
            UPDATE clients SET certificate_fingerprint = next_certificate_fingerprint, certificate_expires = next_certificate_expires,
              certificate_issuer = next_certificate_issuer,
              next_certificate_fingerprint = NULL, next_certificate_expires = NULL, next_certificate_issuer = NULL
            WHERE id = \(id.description) AND next_certificate_fingerprint = \(fingerprint) RETURNING id
            """, logger: logger
        ).collect().count > 0
    }

    private static func decodeClient(_ row: PostgresRow) throws -> EnrolledClient {
        let (id, role, name, fingerprint, enrolled, state, lastSeen, version, count, expires, next, nextExpires, deleted, issuer, nextIssuer) =
            try row.decode(
                (String, String, String, String, Date, String, Date?, String?, Int64?, Date?, String?, Date?, Date?, String?, String?).self)
        return EnrolledClient(
            id: try StoredValue.identifier(id), role: try StoredValue.enumeration(role), name: name, certificateFingerprint: fingerprint,
            enrolled: enrolled,
            state: try StoredValue.enumeration(state), lastSeen: lastSeen, agentVersion: version, reportedKeyCount: count.map(Int.init),
            certificateExpires: expires, nextCertificateFingerprint: next, nextCertificateExpires: nextExpires, deleted: deleted,
            certificateIssuer: issuer, nextCertificateIssuer: nextIssuer
        )
    }

    // MARK: Tokens

    private static let tokenColumns = "id, secret_hash, role, uses_left, expires, created, revoked"

    /// Stores a new enrollment token.
    public func insertToken(_ t: EnrollmentTokenRecord) async throws {
        try await client.query(
            """
            INSERT INTO enrollment_tokens (id, secret_hash, role, uses_left, expires, created, revoked)
            VALUES (\(t.id.description), \(bytea(t.secretHash)), \(t.role.rawValue), \(Int64(t.usesLeft)), \(t.expires), \(t.created), \(t.revoked))
            """, logger: logger
        )
    }

    /// Checks a token and takes one use, atomically (``Repository/redeemToken(id:secretHash:now:)``).
    public func redeemToken(id: TokenID, secretHash: [UInt8], now: Date) async throws -> TokenRedemption {
        try await client.withTransaction(logger: logger) { conn in
            var token: EnrollmentTokenRecord?
            for try await row in try await conn.query(
                "SELECT \(unescaped: Self.tokenColumns) FROM enrollment_tokens WHERE id = \(id.description) FOR UPDATE", logger: logger
            ) {
                token = try Self.decodeToken(row)
            }
            let answer = TokenRedemption.check(token, secretHash: secretHash, now: now)
            guard case .redeemed(var t) = answer else { return answer }
            try await conn.query("UPDATE enrollment_tokens SET uses_left = uses_left - 1 WHERE id = \(id.description)", logger: logger)
            t.usesLeft -= 1
            return .redeemed(t)
        }
    }

    /// Checks a token, taking nothing (``Repository/checkToken(id:secretHash:now:)``).
    public func checkToken(id: TokenID, secretHash: [UInt8], now: Date) async throws -> TokenRedemption {
        var token: EnrollmentTokenRecord?
        for try await row in try await client.query(
            "SELECT \(unescaped: Self.tokenColumns) FROM enrollment_tokens WHERE id = \(id.description)", logger: logger)
        {
            token = try Self.decodeToken(row)
        }
        return TokenRedemption.check(token, secretHash: secretHash, now: now)
    }

    /// Every enrollment token.
    public func listTokens() async throws -> [EnrollmentTokenRecord] {
        var out: [EnrollmentTokenRecord] = []
        for try await row in try await client.query(
            "SELECT \(unescaped: Self.tokenColumns) FROM enrollment_tokens ORDER BY created, id", logger: logger)
        {
            out.append(try Self.decodeToken(row))
        }
        return out
    }

    /// Withdraws a token; `false` if there is none.
    public func revokeToken(id: TokenID) async throws -> Bool {
        try await client.query(
            "UPDATE enrollment_tokens SET revoked = TRUE WHERE id = \(id.description) RETURNING id", logger: logger
        ).collect().count > 0
    }

    private static func decodeToken(_ row: PostgresRow) throws -> EnrollmentTokenRecord {
        let (id, hash, role, uses, expires, created, revoked) = try row.decode((String, ByteBuffer, String, Int64, Date, Date, Bool).self)
        return EnrollmentTokenRecord(
            id: try StoredValue.identifier(id), secretHash: Array(hash.readableBytesView), role: try StoredValue.enumeration(role),
            usesLeft: Int(uses), expires: expires, created: created, revoked: revoked
        )
    }

    // MARK: Audit

    /// Appends audit records, committed before returning.
    public func appendAudit(_ event: AuditEvent) async throws {
        try await client.withConnection { conn in try await Self.insertAudit(conn, event, self.logger) }
    }

    /// Appends audit records, committed before returning.
    public func appendAudit(_ events: [AuditEvent]) async throws {
        try await client.withTransaction(logger: logger) { conn in try await Self.insertAudits(conn, events, logger) }
    }

    /// Many audit records in one statement (in order, so their sequence numbers follow the array).
    private static func insertAudits(_ conn: PostgresConnection, _ events: [AuditEvent], _ logger: Logger) async throws {
        guard !events.isEmpty else { return }
        try await conn.query(
            """
            INSERT INTO audit (time, actor, action, key_id, route, result, detail)
            SELECT t.time, t.actor, t.action, NULLIF(t.key_id, ''), t.route, t.result, t.detail
            FROM unnest(\(events.map(\.time))::timestamptz[], \(events.map(\.actor.description))::text[],
                        \(events.map(\.action.rawValue))::text[], \(events.map { $0.keyID?.description ?? "" })::text[],
                        \(events.map(\.route.description))::text[], \(events.map(\.result.description))::text[],
                        \(events.map(\.detail))::text[])
                 WITH ORDINALITY AS t(time, actor, action, key_id, route, result, detail, ord)
            ORDER BY t.ord
            """, logger: logger
        )
    }

    private static func insertAudit(_ conn: PostgresConnection, _ e: AuditEvent, _ logger: Logger) async throws {
        try await conn.query(
            """
            INSERT INTO audit (time, actor, action, key_id, route, result, detail)
            VALUES (\(e.time), \(e.actor.description), \(e.action.rawValue), \(e.keyID?.description), \(e.route.description),
                    \(e.result.description), \(e.detail))
            """, logger: logger
        )
    }

    /// Audit records after a sequence number, oldest first.
    public func audit(after: Int64, limit: Int) async throws -> [AuditEvent] {
        var out: [AuditEvent] = []
        let rows = try await client.query(
            "SELECT seq, time, actor, action, key_id, route, result, detail FROM audit WHERE seq > \(after) ORDER BY seq LIMIT \(limit)",
            logger: logger
        )
        for try await (seq, time, actor, action, keyID, route, result, detail) in rows.decode(
            (Int64, Date, String, String, String?, String, String, String).self)
        {
            out.append(
                AuditEvent(
                    sequence: seq, time: time, actor: try StoredValue.text(actor), action: try StoredValue.enumeration(action),
                    keyID: try keyID.map(StoredValue.identifier), route: try StoredValue.text(route), result: try StoredValue.text(result),
                    detail: detail
                ))
        }
        return out
    }

    // MARK: Reveal and rotation

    /// Reads and marks a key, with its audit record (``Repository/revealKey(id:audit:)``).
    public func revealKey(id: KeyID, audit: AuditEvent) async throws -> StoredKey? {
        try await client.withTransaction(logger: logger) { conn in
            var key: StoredKey?
            for try await row in try await conn.query(
                "SELECT \(unescaped: Self.keyColumns) FROM keys WHERE id = \(id.description)", logger: logger)
            {
                key = try Self.decodeKey(row)
            }
            guard let key else { return nil }
            guard key.destroyed == nil else { return key }  // nothing to reveal: the caller refuses it
            try await conn.query(
                "INSERT INTO key_rotations (key_id, marked) VALUES (\(id.description), \(audit.time)) ON CONFLICT (key_id) DO NOTHING",
                logger: logger)
            try await Self.insertAudit(conn, audit, logger)
            return key
        }
    }

    /// Which of `ids` are marked.
    public func rotationRequired(_ ids: [KeyID]) async throws -> Set<KeyID> {
        guard !ids.isEmpty else { return [] }
        var found = Set<KeyID>()
        for try await text in try await client.query(
            "SELECT key_id FROM key_rotations WHERE key_id = ANY(\(ids.map(\.description))::text[])", logger: logger
        ).decode(String.self) {
            found.insert(try StoredValue.identifier(text))
        }
        return found
    }

    // MARK: Escrow checks

    /// Stores the checks newer than the stored ones, with `audit` (``Repository/recordEscrowChecks(_:audit:)``).
    public func recordEscrowChecks(_ checks: [EscrowCheckRecord], audit: [AuditEvent]) async throws {
        guard !checks.isEmpty || !audit.isEmpty else { return }
        try await client.withTransaction(logger: logger) { conn in
            for c in checks {
                try await conn.query(
                    """
                    INSERT INTO escrow_checks (key_id, client_id, checked, opens) VALUES (\(c.keyID.description), \(c.clientID.description), \(c.checked), \(c.opens))
                    ON CONFLICT (key_id) DO UPDATE SET client_id = excluded.client_id, checked = excluded.checked, opens = excluded.opens
                    WHERE excluded.checked >= escrow_checks.checked
                    """, logger: logger)
            }
            for e in audit { try await Self.insertAudit(conn, e, logger) }
        }
    }

    /// The checks of `ids`.
    public func escrowChecks(keys ids: [KeyID]) async throws -> [EscrowCheckRecord] {
        guard !ids.isEmpty else { return [] }
        return try await checks(
            try await client.query(
                "SELECT key_id, client_id, checked, opens FROM escrow_checks WHERE key_id = ANY(\(ids.map(\.description))::text[])", logger: logger))
    }

    /// The checks made by `clients`.
    public func escrowChecks(clients: [ClientID]) async throws -> [EscrowCheckRecord] {
        guard !clients.isEmpty else { return [] }
        return try await checks(
            try await client.query(
                "SELECT key_id, client_id, checked, opens FROM escrow_checks WHERE client_id = ANY(\(clients.map(\.description))::text[])",
                logger: logger))
    }

    /// The drifts, newest first.
    public func driftedEscrowChecks(limit: Int) async throws -> [EscrowCheckRecord] {
        try await checks(
            try await client.query(
                "SELECT key_id, client_id, checked, opens FROM escrow_checks WHERE NOT opens ORDER BY checked DESC LIMIT \(limit)", logger: logger))
    }

    /// How many drifts there are.
    public func driftedEscrowCheckCount() async throws -> Int {
        for try await count in try await client.query("SELECT count(*) FROM escrow_checks WHERE NOT opens", logger: logger).decode(Int64.self) {
            return Int(count)
        }
        return 0
    }

    private func checks(_ rows: PostgresRowSequence) async throws -> [EscrowCheckRecord] {
        var found: [EscrowCheckRecord] = []
        for try await (key, client, checked, opens) in rows.decode((String, String, Date, Bool).self) {
            found.append(
                EscrowCheckRecord(
                    keyID: try StoredValue.identifier(key), clientID: try StoredValue.identifier(client), checked: checked, opens: opens))
        }
        return found
    }

    // MARK: Release approval

    private static let approvalColumns = "id, key_id, client_id, requested, state, decided_by, decided, reason"

    /// The open request for the key by the device, or `request` (``Repository/openApproval(_:audit:)``).
    public func openApproval(_ request: ApprovalRecord, audit: AuditEvent) async throws -> (ApprovalRecord, created: Bool) {
        let (keyID, device, at) = (request.keyID, request.clientID, request.requested)
        return try await client.withTransaction(logger: logger) { conn in
            // The partial unique index keeps one open request per device and key: a concurrent
            // insert waits for the other transaction and then does nothing.
            let inserted =
                try await conn.query(
                    """
                    INSERT INTO release_approvals (id, key_id, client_id, requested, state, reason)
                    VALUES (\(request.id.description), \(keyID.description), \(device.description), \(at), \(request.state.rawValue), '')
                    ON CONFLICT (key_id, client_id) WHERE state IN ('pending', 'approved', 'denied') DO NOTHING RETURNING id
                    """, logger: logger
                ).collect().count > 0
            if inserted {
                try await Self.insertAudit(conn, audit, logger)
                return (request, true)
            }
            for try await row in try await conn.query(
                """
                SELECT \(unescaped: Self.approvalColumns) FROM release_approvals
                WHERE key_id = \(keyID.description) AND client_id = \(device.description) AND state IN ('pending', 'approved', 'denied')
                """, logger: logger)
            {
                return (try Self.decodeApproval(row), false)
            }
            throw RepositoryError("the open release approval of \(device) for \(keyID) vanished while it was read")
        }
    }

    /// The request with `id`.
    public func approval(id: ApprovalID) async throws -> ApprovalRecord? {
        for try await row in try await client.query(
            "SELECT \(unescaped: Self.approvalColumns) FROM release_approvals WHERE id = \(id.description)", logger: logger)
        {
            return try Self.decodeApproval(row)
        }
        return nil
    }

    /// Requests in `states`, newest first.
    public func listApprovals(states: Set<ApprovalState>, limit: Int) async throws -> [ApprovalRecord] {
        var out: [ApprovalRecord] = []
        for try await row in try await client.query(
            """
            SELECT \(unescaped: Self.approvalColumns) FROM release_approvals WHERE state = ANY(\(states.map(\.rawValue))::text[])
            ORDER BY requested DESC, id DESC LIMIT \(Int64(limit))
            """, logger: logger)
        {
            out.append(try Self.decodeApproval(row))
        }
        return out
    }

    /// Moves a request on (``Repository/setApprovalState(id:from:to:decision:audit:)``).
    public func setApprovalState(
        id: ApprovalID, from: Set<ApprovalState>, to state: ApprovalState, decision: ApprovalDecision?, audit: AuditEvent?
    ) async throws -> ApprovalRecord? {
        try await client.withTransaction(logger: logger) { conn in
            var found: ApprovalRecord?
            for try await row in try await conn.query(
                "SELECT \(unescaped: Self.approvalColumns) FROM release_approvals WHERE id = \(id.description) FOR UPDATE", logger: logger)
            {
                found = try Self.decodeApproval(row)
            }
            guard var request = found, from.contains(request.state) else { return nil }
            request.state = state
            if let decision {
                request.decidedBy = decision.by
                request.decided = decision.at
                request.reason = decision.reason
            }
            try await conn.query(
                """
                UPDATE release_approvals SET state = \(state.rawValue), decided_by = \(request.decidedBy?.description),
                       decided = \(request.decided), reason = \(request.reason)
                WHERE id = \(id.description)
                """, logger: logger
            )
            if let audit { try await Self.insertAudit(conn, audit, logger) }
            return request
        }
    }

    private static func decodeApproval(_ row: PostgresRow) throws -> ApprovalRecord {
        let (id, key, client, requested, state, decidedBy, decided, reason) = try row.decode(
            (String, String, String, Date, String, String?, Date?, String).self)
        return ApprovalRecord(
            id: try StoredValue.identifier(id), keyID: try StoredValue.identifier(key), clientID: try StoredValue.identifier(client),
            requested: requested, state: try StoredValue.enumeration(state), decidedBy: try decidedBy.map(StoredValue.identifier),
            decided: decided, reason: reason
        )
    }

    // MARK: Master-key versions

    /// The versions registered (``Repository/masterKeyVersions()``).
    public func masterKeyVersions() async throws -> [MasterKeyVersionRecord] {
        var out: [MasterKeyVersionRecord] = []
        let rows = try await client.query(
            "SELECT version, check_value, created, activated, retired FROM master_key_versions ORDER BY version", logger: logger)
        for try await (version, check, created, activated, retired) in rows.decode((Int, ByteBuffer, Date, Date?, Date?).self) {
            out.append(.init(version: version, check: Array(buffer: check), created: created, activated: activated, retired: retired))
        }
        return out
    }

    /// Records a version (``Repository/registerMasterKeyVersion(_:audit:)``).
    public func registerMasterKeyVersion(_ v: MasterKeyVersionRecord, audit: AuditEvent?) async throws -> MasterKeyRegistration {
        let logger = self.logger
        let check = bytea(v.check)
        return try await client.withTransaction(logger: logger) { conn in
            let inserted = try await conn.query(
                """
                INSERT INTO master_key_versions (version, check_value, created, activated, retired)
                VALUES (\(v.version), \(check), \(v.created), \(v.activated), \(v.retired))
                ON CONFLICT (version) DO NOTHING RETURNING version
                """, logger: logger)
            var fresh = false
            for try await _ in inserted { fresh = true }
            guard fresh else {
                let rows = try await conn.query("SELECT check_value FROM master_key_versions WHERE version = \(v.version)", logger: logger)
                for try await stored in rows.decode(ByteBuffer.self) { return stored == check ? .alreadyRegistered : .conflict }
                return .conflict
            }
            if let audit { try await Self.insertAudit(conn, audit, logger) }
            return .registered
        }
    }

    /// Activates a version (``Repository/activateMasterKeyVersion(_:at:audit:)``).
    public func activateMasterKeyVersion(_ version: Int, at: Date, audit: AuditEvent) async throws -> Bool {
        let logger = self.logger
        return try await client.withTransaction(logger: logger) { conn in
            let rows = try await conn.query(
                "UPDATE master_key_versions SET activated = \(at) WHERE version = \(version) AND activated IS NULL RETURNING version",
                logger: logger)
            var done = false
            for try await _ in rows { done = true }
            if done { try await Self.insertAudit(conn, audit, logger) }
            return done
        }
    }

    /// Keys wrapped under older versions (``Repository/keysToRewrap(below:limit:)``).
    public func keysToRewrap(below version: Int, limit: Int) async throws -> [StoredKey] {
        var out: [StoredKey] = []
        let rows = try await client.query(
            "SELECT \(unescaped: Self.keyColumns) FROM keys WHERE master_version < \(version) AND destroyed IS NULL LIMIT \(Int64(limit))",
            logger: logger)
        for try await row in rows { out.append(try Self.decodeKey(row)) }
        return out
    }

    /// Stores rewrapped secrets (``Repository/rewrapKeys(_:)``): one statement for the batch; the
    /// generated `master_version` column follows the new secrets' header.
    public func rewrapKeys(_ rewraps: [KeyRewrap]) async throws -> Int {
        guard !rewraps.isEmpty else { return 0 }
        let rows = try await client.query(
            """
            UPDATE keys SET wrapped_secret = u.new
            FROM unnest(\(rewraps.map { $0.id.description })::text[], \(rewraps.map { bytea($0.old) })::bytea[],
                        \(rewraps.map { bytea($0.new) })::bytea[]) AS u(id, old, new)
            WHERE keys.id = u.id AND keys.wrapped_secret = u.old
            RETURNING keys.id
            """, logger: logger)
        var done = 0
        for try await _ in rows { done += 1 }
        return done
    }

    /// Keys per master-key version (``Repository/keyCountsByMasterVersion()``).
    public func keyCountsByMasterVersion() async throws -> [Int: Int] {
        try await client.withConnection { conn in try await Self.countsByMasterVersion(conn, below: Int.max, self.logger) }
    }

    private static func countsByMasterVersion(_ conn: PostgresConnection, below version: Int, _ logger: Logger) async throws -> [Int: Int] {
        var counts: [Int: Int] = [:]
        let rows = try await conn.query(
            "SELECT master_version, COUNT(*) FROM keys WHERE master_version < \(version) AND destroyed IS NULL GROUP BY master_version",
            logger: logger)
        for try await (v, n) in rows.decode((Int, Int).self) { counts[v] = n }
        return counts
    }

    // MARK: Deletion and retention

    /// Marks a revoked or moved client deleted (``Repository/deleteClient(id:at:audit:)``).
    public func deleteClient(id: ClientID, at: Date, audit: AuditEvent) async throws -> Bool {
        try await client.withTransaction(logger: logger) { conn in
            let rows = try await conn.query(
                "UPDATE clients SET state = 'deleted', deleted = \(at) WHERE id = \(id.description) AND state IN ('revoked', 'moved') RETURNING id",
                logger: logger
            ).collect()
            guard !rows.isEmpty else { return false }
            try await Self.insertAudit(conn, audit, logger)
            return true
        }
    }

    /// Keys `client` escrowed that are not destroyed (``Repository/liveKeyCount(escrowedBy:)``).
    public func liveKeyCount(escrowedBy client: ClientID) async throws -> Int {
        for try await n in try await self.client.query(
            "SELECT COUNT(*) FROM keys WHERE escrowed_by = \(client.description) AND destroyed IS NULL", logger: logger
        ).decode(Int.self) { return n }
        return 0
    }

    /// The facts a ``DestructionRule`` decides on, for the keys row `k`: whether its owner is
    /// active, when its owner was deleted (NULL unless deleted), and whether an active device's
    /// last drive check names it.
    private static let destructionFacts = """
        EXISTS (SELECT 1 FROM clients a WHERE a.id = k.escrowed_by AND a.state = 'active'),
        (SELECT c.deleted FROM clients c WHERE c.id = k.escrowed_by AND c.state = 'deleted'),
        EXISTS (SELECT 1 FROM escrow_checks e JOIN clients a ON a.id = e.client_id WHERE e.key_id = k.id AND a.state = 'active')
        """

    /// The keys the retention destroys (``Repository/keysDueForDestruction(deletedBefore:limit:)``).
    public func keysDueForDestruction(deletedBefore cutoff: Date, limit: Int) async throws -> [DueKey] {
        var out: [DueKey] = []
        let rows = try await client.query(
            """
            SELECT k.id, k.escrowed_by, c.deleted FROM keys k JOIN clients c ON c.id = k.escrowed_by
            WHERE c.state = 'deleted' AND c.deleted <= \(cutoff) AND k.destroyed IS NULL
              AND NOT EXISTS (SELECT 1 FROM escrow_checks e JOIN clients a ON a.id = e.client_id WHERE e.key_id = k.id AND a.state = 'active')
            ORDER BY k.id LIMIT \(Int64(limit))
            """, logger: logger)
        for try await (id, owner, deleted) in rows.decode((String, String, Date).self) {
            out.append(DueKey(keyID: try StoredValue.identifier(id), client: try StoredValue.identifier(owner), deleted: deleted))
        }
        return out
    }

    /// Destroys keys (``Repository/destroyKeys(_:at:)``) in one transaction holding the sequence lock.
    public func destroyKeys(_ requests: [KeyDestruction], at: Date) async throws -> [KeyDestructionOutcome] {
        try await client.withTransaction(logger: logger) { conn in
            try await conn.query("SELECT pg_advisory_xact_lock(\(Self.sequenceLock))", logger: logger)
            var outcomes: [KeyDestructionOutcome] = []
            for request in requests {
                var found: (destroyed: Bool, owner: String?, ownerActive: Bool, ownerDeleted: Date?, activeCheck: Bool)?
                for try await (destroyed, owner, ownerActive, ownerDeleted, activeCheck) in try await conn.query(
                    """
                    SELECT k.destroyed IS NOT NULL, k.escrowed_by, \(unescaped: Self.destructionFacts) FROM keys k
                    WHERE k.id = \(request.keyID.description) FOR UPDATE OF k
                    """, logger: logger
                ).decode((Bool, String?, Bool, Date?, Bool).self) {
                    found = (destroyed, owner, ownerActive, ownerDeleted, activeCheck)
                }
                guard let found else {
                    outcomes.append(.notFound)
                    continue
                }
                if found.destroyed {
                    outcomes.append(.alreadyDestroyed)
                    continue
                }
                let allowed = request.rule.allows(
                    owner: try found.owner.map(StoredValue.identifier), ownerActive: found.ownerActive, ownerDeleted: found.ownerDeleted,
                    activeDriveCheck: found.activeCheck)
                guard allowed else {
                    outcomes.append(.spared)
                    continue
                }
                try await conn.query(
                    """
                    UPDATE keys SET wrapped_secret = ''::bytea, secret_fingerprint = ''::bytea, destroyed = \(at),
                      seq = (SELECT COALESCE(MAX(seq), 0) + 1 FROM keys), state_seq = (SELECT COALESCE(MAX(state_seq), 0) + 1 FROM keys)
                    WHERE id = \(request.keyID.description)
                    """, logger: logger)
                try await Self.insertAudit(conn, request.audit, logger)
                outcomes.append(.destroyed)
            }
            return outcomes
        }
    }

    /// Retires the older versions when no key uses them (``Repository/retireMasterKeyVersions(below:at:audit:)``).
    /// The table lock keeps a key from being written under an old version between the count and
    /// the retirement.
    public func retireMasterKeyVersions(below version: Int, at: Date, audit: AuditEvent) async throws -> [Int: Int] {
        let logger = self.logger
        return try await client.withTransaction(logger: logger) { conn in
            try await conn.query("LOCK TABLE keys IN SHARE MODE", logger: logger)
            let inUse = try await Self.countsByMasterVersion(conn, below: version, logger)
            guard inUse.isEmpty else { return inUse }
            try await conn.query(
                "UPDATE master_key_versions SET retired = \(at) WHERE version < \(version) AND retired IS NULL", logger: logger)
            try await Self.insertAudit(conn, audit, logger)
            return [:]
        }
    }

    // MARK: Settings

    /// A named setting.
    public func setting(_ name: String) async throws -> String? {
        // Read at every hop of a hierarchy lookup (the option): prepared, parsed and planned once.
        for try await row in try await client.execute(SettingStatement(name: name), logger: logger) {
            return try row.decode(String.self)
        }
        return nil
    }

    private struct SettingStatement: PostgresPreparedStatement {
        static let name = "keyhold_setting_1"
        static let sql = "SELECT value FROM settings WHERE name = $1"
        typealias Row = PostgresRow
        let name: String
        func makeBindings() throws -> PostgresBindings {
            var b = PostgresBindings(capacity: 1)
            b.append(name)
            return b
        }
        func decodeRow(_ row: PostgresRow) throws -> PostgresRow { row }
    }

    /// Sets a named setting, durably.
    public func setSetting(_ name: String, _ value: String) async throws {
        try await client.query(
            "INSERT INTO settings (name, value) VALUES (\(name), \(value)) ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            logger: logger
        )
    }

    /// Nothing to do: the pool closes when ``run()`` is cancelled.
    public func close() async throws {}

    // MARK: Coding helpers

    /// `bytea` parameters travel as byte buffers (`[UInt8]` would bind as `char[]`).
    private func bytea(_ bytes: [UInt8]) -> ByteBuffer { ByteBuffer(bytes: bytes) }
}

extension PostgresRepository {
    /// Creates database `name` on the server `url` points at (for tests and first-time setup).
    /// `name` must be a plain identifier.
    public static func createDatabase(named name: String, url: String) async throws {
        // A one-shot client: its pool may not be running yet when the query is queued, which is
        // harmless here (the query waits), so only errors are logged.
        var logger = Logger(label: "keyhold.postgres.setup")
        logger.logLevel = .error
        guard name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }), !name.isEmpty else {
            throw RepositoryError("not a plain database name: \(name)")
        }
        let client = PostgresClient(configuration: try configuration(url: url), backgroundLogger: logger)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await client.run() }
            try await client.query(PostgresQuery(unsafeSQL: "CREATE DATABASE \(name)"), logger: logger)
            group.cancelAll()
        }
    }

    /// `url` with its database replaced by `name`.
    public static func url(_ url: String, database name: String) throws -> String {
        guard var c = URLComponents(string: url) else { throw RepositoryError("not a URL: \(url)") }
        c.path = "/" + name
        return c.string ?? url
    }
}
