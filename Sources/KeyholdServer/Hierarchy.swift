import Foundation
import KeyholdClient
import KeyholdCore
import KeyholdProtocol
import KeyholdStore
import KeyholdSystem
import Logging
import ServiceLifecycle
import SwiftASN1
import X509

/// This server's place in the hierarchy (docs/spec/hierarchy.md): its primary, the
/// `use_hierarchy` option, the push cursor, pushes at heartbeat and lookups upward.
actor Hierarchy {
    /// Keys per push.
    static let batchSize = 10_000
    /// The most servers a lookup passes.
    static let hopLimit = 8
    /// How long a push keeps trying a primary it cannot reach (a restart, a network blip) before
    /// the sync fails; each attempt is bounded by the client's timeout.
    static let retryWindow: Duration = .seconds(10)

    /// The repository setting that holds "use hierarchy to obtain encryption keys".
    static let optionSetting = "use_hierarchy"
    /// The repository setting that holds the highest sequence number the primary acknowledged.
    static let cursorSetting = "push_cursor"
    /// The repository setting that holds the last change of the primary's feed applied here.
    static let changesSetting = "primary_changes_cursor"

    /// A key the primary released, and which primary it was.
    struct Answer: Sendable {
        let key: KeyMaterial
        let primary: ServerID
        /// How many servers up the key was held (1: the primary).
        let hops: Int
    }

    private let serverID: ServerID
    private let repository: any Repository
    private let masterKey: MasterKey
    private let primaryFile: String
    private let state: DataDirectory
    private let logger: Logger
    private var primary: EnrolledIdentity?
    private var client: APIClient?
    private var lastPush: Date?
    private var lastPushResult: String?
    private var primaryRefuses = false
    /// Counts the keys pushed (the server's metrics).
    var metrics: ServerMetrics?

    /// Sets where pushed keys are counted.
    func use(_ metrics: ServerMetrics) { self.metrics = metrics }

    /// Destroys keys the primary destroyed (ServerCore's rule: spared while a device here uses
    /// them); set by the server once its core exists.
    private var destroyer: (@Sendable ([KeyID], ServerID) async throws -> [KeyID])?
    func use(destroyer: @escaping @Sendable ([KeyID], ServerID) async throws -> [KeyID]) { self.destroyer = destroyer }
    private var syncing: Task<SyncResponse, any Error>?

    init(serverID: ServerID, repository: any Repository, masterKey: MasterKey, dir: DataDirectory, logger: Logger) throws {
        self.serverID = serverID
        self.repository = repository
        self.masterKey = masterKey
        self.state = dir
        self.primaryFile = dir.file("primary.json")
        self.logger = logger
        if let data = FileManager.default.contents(atPath: primaryFile) {
            guard let identity = try? JSONDecoder().decode(EnrolledIdentity.self, from: data) else {
                throw KeyholdError(.configuration, "\(primaryFile) is damaged", hint: "run 'keyhold-server primary leave' and join again")
            }
            primary = identity
            client = try identity.client(timeout: .seconds(10))
        }
    }

    // MARK: Option and primary

    /// How long a read of the option is reused. A lookup reads it at every hop, twice at middle
    /// servers; this process's own changes apply at once, another process sharing the database
    /// sees them within this time (docs/spec/hierarchy.md §1).
    static let optionReuse: Duration = .seconds(1)
    private var option: (on: Bool, read: ContinuousClock.Instant)?

    func enabled() async throws -> Bool {
        let now = ContinuousClock.now
        if let option, now - option.read < Self.optionReuse { return option.on }
        let on = try await repository.setting(Self.optionSetting) == "true"
        option = (on, now)
        return on
    }

    func setEnabled(_ on: Bool) async throws {
        option = nil
        try await repository.setSetting(Self.optionSetting, on ? "true" : "false")
        option = (on, ContinuousClock.now)
        logger.info("use_hierarchy \(on ? "enabled" : "disabled")")
    }

    func join(tokenText: String) async throws -> HierarchyStatus {
        if let primary {
            throw KeyholdError(
                .usage, "this server already has primary \(primary.serverID) at \(primary.apiAddress)",
                hint: "run 'keyhold-server primary leave' first")
        }
        let identity = try await Enrollment.enroll(token: try EnrollmentToken(text: tokenText), name: "server \(serverID)")
        guard identity.role == .server else {
            throw KeyholdError(
                .tokenInvalid, "the token is for a device, not a server", hint: "on the primary run 'keyhold-server token create --role server'")
        }
        guard identity.serverID != serverID else {
            throw KeyholdError(.hierarchyLoop, "a server cannot be its own primary", hint: "use a token of another server")
        }
        try save(identity)
        primary = identity
        client = try identity.client(timeout: .seconds(10))
        try await repository.setSetting(Self.cursorSetting, "0")
        try await repository.setSetting(Self.changesSetting, "0")  // a new primary, a new feed
        logger.info("joined primary", metadata: ["primary": "\(identity.serverID)", "address": "\(identity.apiAddress)"])
        return try await status()
    }

    /// Writes `primary.json` atomically (0600: it holds this server's key at the primary).
    private func save(_ identity: EnrolledIdentity) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try state.write("primary.json", try encoder.encode(identity), mode: 0o600)
    }

    /// Renews this server's certificate at its primary once two thirds of its lifetime have
    /// passed, as an agent does (docs/operations.md, "Certificate renewal"): a new key pair made
    /// here, a CSR over the current connection, `primary.json` replaced atomically with the old
    /// certificate kept in it until the new one has been used once. A failure is logged and tried
    /// again at the next heartbeat.
    func renewCertificateIfDue() async {
        let fromPreviousCA = primaryTrust.map { primary?.issuedByCurrentCA($0) == false } ?? false
        guard let primary, let client, primary.renewalDue() || (fromPreviousCA && primary.previousCertificatePEM == nil) else { return }
        do {
            let renewed = try await primary.renewed(over: client)
            try save(renewed)
            self.primary = renewed
            self.client = try renewed.client(timeout: .seconds(10))
            retire(client)
            logger.notice(
                "certificate at the primary renewed",
                metadata: ["expires": "\(renewed.certificateExpires.map { ISO8601DateFormatter().string(from: $0) } ?? "?")"])
        } catch {
            logger.warning("certificate renewal at the primary failed; trying again at the next heartbeat", metadata: ["error": "\(error)"])
        }
    }

    /// What the primary said its clients should trust, at its last answer.
    private var primaryTrust: CATrust?

    /// Trusts the CAs the primary names (docs/operations.md, "CA rotation"), as an agent does: a
    /// new CA only through its cross-signature by one trusted already. A certificate from the
    /// previous CA is renewed at the next push.
    private func adopt(_ trust: CATrust) {
        primaryTrust = trust
        guard let primary else { return }
        do {
            guard let next = try primary.adopting(trust) else { return }
            try save(next)
            let old = client
            client = try next.client(timeout: .seconds(10))
            self.primary = next
            if let old { retire(old) }
            logger.notice("the primary's CAs changed (CA rotation): trusting them")
        } catch {
            logger.warning("not trusting the CA the primary names", metadata: ["error": "\(error)"])
        }
    }

    /// After an answer of the primary: a renewed certificate that worked is kept alone; one the
    /// primary refused gives way to the certificate it renewed.
    private func settleRenewal(refused: Bool) {
        guard let primary, primary.previousCertificatePEM != nil else { return }
        guard let next = refused ? primary.reverted : primary.confirmed else { return }
        do {
            try save(next)
            let old = client
            client = try next.client(timeout: .seconds(10))
            self.primary = next
            if let old { retire(old) }
            logger.info(refused ? "the primary refused the renewed certificate; the previous one is back" : "the renewed certificate works")
        } catch {
            logger.warning("cannot update primary.json", metadata: ["error": "\(error)"])
        }
    }

    /// Shuts `old` down once the requests still using it (lookups run beside pushes) had their time.
    private func retire(_ old: APIClient) {
        Task {
            try? await Task.sleep(for: .seconds(11))
            await old.shutdown()
        }
    }

    func leave() async throws {
        guard primary != nil else { throw KeyholdError(.notFound, "this server has no primary", hint: "nothing to leave") }
        try FileManager.default.removeItem(atPath: primaryFile)
        await client?.shutdown()
        primary = nil
        client = nil
        primaryRefuses = false
    }

    /// When this server's certificate at its primary expires and how long it was issued for (nil
    /// without a primary).
    func primaryCertificate() -> (expires: Date, lifetime: TimeInterval)? {
        guard let pem = primary?.certificatePEM, let certificate = try? Certificate(pemEncoded: pem) else { return nil }
        return (certificate.notValidAfter, certificate.notValidAfter.timeIntervalSince(certificate.notValidBefore))
    }

    func status() async throws -> HierarchyStatus {
        let cursor = try await self.cursor()
        let pending = try await repository.keyCount(afterSequence: cursor)
        return HierarchyStatus(
            useHierarchy: try await enabled(), primaryServerID: primary?.serverID, primaryAddress: primary?.apiAddress,
            pushCursor: cursor, pending: pending, lastPush: lastPush, lastPushResult: lastPushResult, primaryRefuses: primaryRefuses
        )
    }

    /// The hierarchy's state for the metrics: pending keys, the age of the oldest one, whether
    /// the last push reached the primary and whether it refused.
    func gauges() async throws -> HierarchyGauges {
        let status = try await status()
        var gauges = HierarchyGauges()
        gauges.configured = status.primaryServerID != nil
        gauges.pending = status.pending
        gauges.lagSeconds = try await lag(pending: status.pending, after: status.pushCursor)
        gauges.reachable = status.primaryRefuses || status.lastPushResult?.hasPrefix("ok") == true
        gauges.refusing = status.primaryRefuses
        return gauges
    }

    /// Seconds since the oldest key above `cursor` was stored (0 when none is pending).
    func lag(pending: Int, after cursor: Int64) async throws -> Double {
        guard pending > 0, let oldest = try await repository.keys(afterSequence: cursor, limit: 1).first else { return 0 }
        return max(0, Date().timeIntervalSince(oldest.stored))
    }

    /// What this server tells its primary about itself in the first batch of a push.
    private func report(after cursor: Int64) async throws -> SecondaryReport {
        let pending = try await repository.keyCount(afterSequence: cursor)
        return SecondaryReport(
            version: KeyholdVersion.current, keyCount: try await repository.keyCount(), pending: pending,
            lagSeconds: try await lag(pending: pending, after: cursor))
    }

    private func cursor() async throws -> Int64 { Int64(try await repository.setting(Self.cursorSetting) ?? "0") ?? 0 }
    private func changesCursor() async throws -> Int64 { Int64(try await repository.setting(Self.changesSetting) ?? "0") ?? 0 }

    /// Applies the state changes of a push's answer (blocks and unblocks decided above) and moves
    /// the feed cursor; true when the answer was a full page (more changes follow).
    private func apply(_ changes: [KeyStateChange], from primary: ServerID) async throws -> Bool {
        guard let last = changes.last else { return false }
        let changed = try await repository.applyStateChanges(
            changes.filter { !$0.destroyed },
            audit: AuditEvent(actor: .server(serverID), action: .block, route: .primary(primary), result: .ok, detail: "decided above"))
        if !changed.isEmpty { logger.notice("applied block state from the primary", metadata: ["keys": "\(changed.count)"]) }
        let destroyed = changes.filter(\.destroyed).map(\.keyID)
        if !destroyed.isEmpty, let destroyer { _ = try await destroyer(destroyed, primary) }
        try await repository.setSetting(Self.changesSetting, String(last.sequence))
        return changes.count >= PushResponse.changeLimit
    }

    // MARK: Push

    /// How long one sync pushes before it answers (it finishes the batch in flight first), so an
    /// administrator's `hierarchy sync` gets an answer in bounded time however many keys wait;
    /// the command and the heartbeat ask again until the push is complete.
    static let syncBudget: Duration = .seconds(5)

    /// One push: the keys after the cursor, in batches, for up to ``syncBudget``; the cursor moves
    /// only after the primary acknowledged a batch. Concurrent calls share one run.
    func sync() async throws -> SyncResponse {
        if let syncing { return try await syncing.value }
        let task = Task { try await self.push(budget: Self.syncBudget) }
        syncing = task
        defer { syncing = nil }
        return try await task.value
    }

    /// Pushes until nothing is left (the heartbeat), or until shutdown.
    func syncAll() async throws {
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            if try await sync().complete { return }
        }
    }

    private func push(budget: Duration) async throws -> SyncResponse {
        // Renewal comes first, whether or not the option is on: a secondary that does not push
        // still keeps its place at the primary.
        await renewCertificateIfDue()
        let stopAfter = ContinuousClock.now + budget
        var cursor = try await self.cursor()
        guard try await enabled(), let client, let primary else { return SyncResponse(pushed: 0, batches: 0, cursor: cursor) }
        var pushed = 0
        var batches = 0
        // The next batch is read and unwrapped while the current one is in flight; batches are
        // still sent one at a time, and the cursor still moves only on each acknowledgement.
        let start = cursor
        var next = Task { try await self.prepare(after: start) }
        defer { next.cancel() }
        // Every push asks for the primary's state changes too, so a block decided above reaches
        // this server within one heartbeat even when it has no keys to send (an empty push).
        var first = true
        var moreChanges = false
        while true {
            let (keys, destroyed, last) = try await next.value
            let rows = keys.count + destroyed.count
            if rows == 0 && !first { break }
            let report = first ? try await self.report(after: cursor) : nil
            first = false
            next = Task { try await self.prepare(after: last) }
            let response = try await exchange(
                PushRequest(keys: keys, destroyed: destroyed, changesAfter: try await changesCursor(), report: report), with: client)
            moreChanges = try await apply(response.changes, from: primary.serverID)
            if rows == 0 { break }
            cursor = last
            try await repository.setSetting(Self.cursorSetting, String(cursor))
            try await repository.appendAudit(
                AuditEvent(
                    actor: .server(serverID), action: .push, route: .primary(primary.serverID), result: .ok,
                    detail:
                        "\(keys.count) keys up to sequence \(cursor): \(response.accepted) new, \(response.alreadyPresent) already there, \(response.conflicts.count) conflicts"
                        + (destroyed.isEmpty ? "" : "; \(destroyed.count) destroyed here")
                ))
            pushed += keys.count
            metrics?.pushed(keys.count)
            batches += 1
            if rows < Self.batchSize { break }
            if ContinuousClock.now >= stopAfter && !moreChanges {
                lastPush = Date()
                lastPushResult = "ok: \(pushed) keys, more to send"
                return SyncResponse(pushed: pushed, batches: batches, cursor: cursor, complete: false)
            }
        }
        while moreChanges {
            let response = try await exchange(PushRequest(keys: [], changesAfter: try await changesCursor()), with: client)
            moreChanges = try await apply(response.changes, from: primary.serverID)
        }
        lastPush = Date()
        lastPushResult = "ok: \(pushed) keys"
        return SyncResponse(pushed: pushed, batches: batches, cursor: cursor)
    }

    /// Sends one push and keeps what the answer says about the primary (for `status`).
    private func exchange(_ request: PushRequest, with client: APIClient) async throws -> PushResponse {
        do {
            let response = try await send(request, with: client)
            primaryRefuses = false
            settleRenewal(refused: false)
            if let trust = response.ca { adopt(trust) }
            return response
        } catch let error as KeyholdError {
            if error.code == .unauthenticated { settleRenewal(refused: true) }
            lastPush = Date()
            lastPushResult = "\(error.code.rawValue): \(error.message)"
            primaryRefuses = error.code == .hierarchyDisabled
            logger.notice("push to primary failed", metadata: ["error": "\(error.code)"])
            throw error
        }
    }

    /// Sends one batch; a primary that cannot be reached is tried again, with growing pauses,
    /// until ``retryWindow`` has passed (a batch sent twice is stored once).
    private nonisolated func send(_ request: PushRequest, with client: APIClient) async throws -> PushResponse {
        let deadline = ContinuousClock.now + Self.retryWindow
        var pause: Duration = .milliseconds(100)
        while true {
            do {
                return try await client.post(APIPath.hierarchyPush, request, as: PushResponse.self)
            } catch let error as KeyholdError where error.code == .unreachable && ContinuousClock.now + pause < deadline {
                logger.notice("primary unreachable; trying again", metadata: ["error": "\(error.message)", "pause": "\(pause)"])
                try await Task.sleep(for: pause)
                pause = min(pause * 2, .seconds(2))
            }
        }
    }

    /// Up to one batch of keys after `after`: the held ones with their secrets unwrapped for the
    /// wire, the destroyed ones as notices (no secret is left to send), and the batch's last
    /// sequence number.
    private nonisolated func prepare(after: Int64) async throws -> ([PushedKey], [DestroyedKeyNotice], Int64) {
        let batch = try await repository.keys(afterSequence: after, limit: Self.batchSize)
        var keys: [PushedKey] = []
        var destroyed: [DestroyedKeyNotice] = []
        keys.reserveCapacity(batch.count)
        for key in batch {
            if let when = key.destroyed {
                destroyed.append(DestroyedKeyNotice(record: key.record, destroyed: when))
            } else {
                keys.append(
                    PushedKey(
                        key: KeyMaterial(record: key.record, secret: try masterKey.unwrap(key.wrappedSecret, keyID: key.record.id)),
                        blocked: key.blocked, own: key.provenance != .hierarchy))
            }
        }
        return (keys, destroyed, batch.last?.sequence ?? after)
    }

    // MARK: Lookup

    /// Asks the primary for a key (it applies the same rule upward). Nil when there is no primary
    /// or the option is off here.
    func ask(_ keyID: KeyID, chain: [ServerID], hops: Int) async throws -> Answer? {
        guard try await enabled(), let client, let primary else { return nil }
        let query = "chain=\(chain.map(\.description).joined(separator: ","))&hops=\(hops)"
        do {
            let (key, hops) = try await client.get(
                APIPath.hierarchyKey(keyID.description) + "?" + query, as: KeyMaterial.self, header: APIPath.hopsHeader)
            primaryRefuses = false
            let answer = Answer(key: key, primary: primary.serverID, hops: hops.flatMap { Int($0) }.map { min(max($0, 1), Self.hopLimit) } ?? 1)
            note(keyID, "found, held \(answer.hops) server(s) up (primary \(primary.serverID))")
            return answer
        } catch let error as KeyholdError {
            if error.code == .hierarchyDisabled { primaryRefuses = true }
            note(keyID, "\(error.code.rawValue): \(error.message)")
            throw error
        }
    }

    /// The answers of the last lookups at the primary, by key (since this server started; at
    /// most ``lookupMemory`` keys, then forgotten all at once), for `explain`.
    private var lookups: [KeyID: (answer: String, at: Date)] = [:]
    static let lookupMemory = 10_000

    private func note(_ keyID: KeyID, _ answer: String) {
        if lookups.count >= Self.lookupMemory, lookups[keyID] == nil { lookups.removeAll(keepingCapacity: true) }
        lookups[keyID] = (answer, Date())
    }

    /// What the last lookup of `keyID` at the primary answered, and when.
    func lastLookup(_ keyID: KeyID) -> (answer: String, at: Date)? { lookups[keyID] }

    /// The primary's hops for `keyID` (it adds its own primary's, and so on up): empty with no
    /// primary or the option off here; one hop saying why when the primary cannot be asked.
    func explainAbove(_ keyID: KeyID, chain: [ServerID], hops: Int) async -> [ExplainHop] {
        guard (try? await enabled()) == true, let client, let primary else { return [] }
        let query = "chain=\(chain.map(\.description).joined(separator: ","))&hops=\(hops)"
        do {
            return try await client.get(APIPath.hierarchyExplain(keyID.description) + "?" + query, as: [ExplainHop].self)
        } catch {
            var hop = ExplainHop(serverID: primary.serverID, held: false)
            if let error = error as? KeyholdError {
                hop.refusal = "\(error.code.rawValue): \(error.message)"
                if error.code == .hierarchyDisabled { hop.useHierarchy = false }
            } else {
                hop.refusal = "\(error)"
            }
            return [hop]
        }
    }

    func shutdown() async { await client?.shutdown() }
}

/// Runs a push at every hierarchy heartbeat, until the group shuts down or is cancelled.
struct HierarchyHeartbeat: Service {
    let hierarchy: Hierarchy
    let interval: Duration

    func run() async throws {
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            try? await hierarchy.syncAll()
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
        }
    }
}
