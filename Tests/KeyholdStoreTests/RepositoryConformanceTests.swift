import Foundation
import KeyholdCore
import KeyholdProtocol
import KeyholdStore
import KeyholdStorePostgres
import KeyholdStoreSQLite
import KeyholdTestSupport
import Synchronization
import Testing

/// The storage backends every conformance test runs against.
enum Backend: String, CaseIterable, CustomStringConvertible, Sendable {
    case memory, sqlite, postgres
    var description: String { rawValue }
}

/// A fresh, migrated repository of one backend, with a way to open it again (durability checks).
struct Fixture {
    let repository: any Repository
    let reopen: @Sendable () async throws -> any Repository
    let cleanup: @Sendable () async -> Void

    static func make(_ backend: Backend) async throws -> Fixture {
        switch backend {
        case .memory:
            let repo = MemoryRepository()
            return Fixture(repository: repo, reopen: { repo }, cleanup: {})
        case .sqlite:
            let dir = try Paths.temporaryFolder("sqlite")
            let path = dir.appendingPathComponent("keyhold.sqlite").path
            let repo = try SQLiteRepository(path: path)
            try await repo.migrate()
            return Fixture(
                repository: repo,
                reopen: {
                    let r = try SQLiteRepository(path: path)
                    try await r.migrate()
                    return r
                },
                cleanup: { try? FileManager.default.removeItem(at: dir) }
            )
        case .postgres:
            let base = try PostgresSettings.url()
            let name = "conformance_\(UUID().uuidString.prefix(8).lowercased())"
            try await PostgresRepository.createDatabase(named: name, url: base)
            let url = try PostgresRepository.url(base, database: name)
            // The connection pool runs only while the repository's run() does: until cleanup.
            let running = Mutex<[Task<Void, any Error>]>([])
            @Sendable func open() async throws -> PostgresRepository {
                let r = try PostgresRepository(url: url)
                running.withLock { $0.append(Task { try await r.run() }) }
                try await r.migrate()
                return r
            }
            return Fixture(
                repository: try await open(), reopen: { try await open() },
                cleanup: { for task in running.withLock({ $0 }) { task.cancel() } }
            )
        }
    }
}

/// Where the PostgreSQL tests connect. `make test` starts a throwaway cluster and sets the URL;
/// without it the PostgreSQL cases fail (they never skip silently).
enum PostgresSettings {
    static func url() throws -> String {
        if let url = ProcessInfo.processInfo.environment["KEYHOLD_TEST_POSTGRES_URL"], !url.isEmpty { return url }
        throw RepositoryError(
            "KEYHOLD_TEST_POSTGRES_URL is not set: run the tests with 'make test' (it starts a throwaway PostgreSQL) "
                + "or 'scripts/test-postgres.sh swift test'"
        )
    }
}

func sampleKey(fingerprint: UInt8 = 1, label: String = "k", provenance: KeyProvenance = .escrow) -> StoredKey {
    StoredKey(
        record: KeyRecord(
            kind: .file, originServerID: .random(), originDeviceID: .random(),
            created: Date(timeIntervalSince1970: 1_800_000_000.25), label: label
        ),
        wrappedSecret: [UInt8](repeating: 0xEE, count: 60), secretFingerprint: [UInt8](repeating: fingerprint, count: 32),
        provenance: provenance, stored: Date(timeIntervalSince1970: 1_800_000_001.5)
    )
}

/// The actor of the records these tests write.
let testActor = AuditActor.device(ClientID(high: 0x7e57, low: 1))

func audit(_ action: AuditAction, _ key: KeyID? = nil, result: AuditResult = .ok) -> AuditEvent {
    AuditEvent(actor: testActor, action: action, keyID: key, route: .agent, result: result)
}

@Suite struct RepositoryConformanceTests {
    @Test(arguments: Backend.allCases)
    func migrationIsIdempotent(_ backend: Backend) async throws {
        let f = try await Fixture.make(backend)
        defer { Task { await f.cleanup() } }
        try await f.repository.migrate()
        try await f.repository.migrate()
        #expect(try await f.repository.keyCount() == 0)
        // `doctor` reads what was applied without changing it: every migration, once.
        #expect(try await f.repository.appliedMigrations() == Schema.migrations.map(\.version).sorted())
    }

    @Test(arguments: Backend.allCases)
    func keysAreNeverSilentlyOverwritten(_ backend: Backend) async throws {
        let f = try await Fixture.make(backend)
        defer { Task { await f.cleanup() } }
        let repo = f.repository
        let key = sampleKey(fingerprint: 1, label: "original")
        #expect(try await repo.insertKey(key, audit: audit(.escrow, key.record.id)) == .inserted)
        #expect(try await repo.insertKey(key, audit: audit(.escrow, key.record.id)) == .alreadyPresent)
        var other = key
        other.secretFingerprint = [UInt8](repeating: 2, count: 32)
        other.wrappedSecret = [UInt8](repeating: 0xDD, count: 60)
        other.record.label = "impostor"
        #expect(try await repo.insertKey(other, audit: audit(.escrow, key.record.id)) == .conflict)

        let stored = try #require(try await repo.key(id: key.record.id))
        #expect(stored.record.label == "original")
        #expect(stored.wrappedSecret == key.wrappedSecret)
        #expect(stored.secretFingerprint == key.secretFingerprint)
        #expect(abs(stored.record.created.timeIntervalSince(key.record.created)) < 0.001)
        #expect(stored.record.originServerID == key.record.originServerID)
        #expect(stored.provenance == .escrow)
        #expect(try await repo.keyCount() == 1)
        let results = try await repo.audit(after: 0, limit: 10).map(\.result.description)
        #expect(results == ["ok", "ok", "conflict"])
    }

    @Test(arguments: Backend.allCases)
    func releaseWritesItsAuditInTheSameTransaction(_ backend: Backend) async throws {
        let f = try await Fixture.make(backend)
        defer { Task { await f.cleanup() } }
        let repo = f.repository
        let key = sampleKey()
        _ = try await repo.insertKey(key, audit: nil)
        let released = try await repo.releaseKey(ReleaseRequest(keyID: key.record.id, actor: testActor, route: .agent))
        #expect(released?.record.id == key.record.id)
        #expect(released?.wrappedSecret == key.wrappedSecret)
        let missing = KeyID.random()
        #expect(try await repo.releaseKey(ReleaseRequest(keyID: missing, actor: testActor, route: .agent)) == nil)
        _ = try await repo.setBlocked(id: key.record.id, blocked: true, audit: audit(.block, key.record.id))
        let blocked = try await repo.releaseKey(ReleaseRequest(keyID: key.record.id, actor: testActor, route: .agent, detail: "third"))
        #expect(blocked?.blocked == true)
        let events = try await repo.audit(after: 0, limit: 10).filter { $0.action == .release }
        #expect(events.map(\.result.description) == ["ok", "not_found", "key_blocked"])
        #expect(events.map(\.keyID) == [key.record.id, missing, key.record.id])
        #expect(events.map(\.actor) == [testActor, testActor, testActor])
        #expect(events[2].detail == "third")
        #expect(events[0].sequence! < events[1].sequence!)

        // With auditIfMissing off, a miss writes nothing and a present key is still audited.
        var quiet = ReleaseRequest(keyID: KeyID.random(), actor: testActor, route: .agent)
        quiet.auditIfMissing = false
        #expect(try await repo.releaseKey(quiet) == nil)
        quiet.keyID = key.record.id
        #expect(try await repo.releaseKey(quiet)?.record.id == key.record.id)
        let after = try await repo.audit(after: 0, limit: 10).filter { $0.action == .release }
        #expect(after.map(\.result.description) == ["ok", "not_found", "key_blocked", "key_blocked"])

        // A broken audit trail stops the release: the call throws and returns no key.
        try await (repo as! any RepositoryFaultInjection).breakAuditWrites()
        await #expect(throws: (any Error).self) {
            _ = try await repo.releaseKey(ReleaseRequest(keyID: key.record.id, actor: testActor, route: .agent))
        }
        #expect(try await repo.audit(after: 0, limit: 10).count == 5)
    }

    @Test(arguments: Backend.allCases)
    func releaseChecksItsCallerFirst(_ backend: Backend) async throws {
        let f = try await Fixture.make(backend)
        defer { Task { await f.cleanup() } }
        let repo = f.repository
        let key = sampleKey()
        _ = try await repo.insertKey(key, audit: nil)
        let device = EnrolledClient(id: .random(), role: .device, name: "d", certificateFingerprint: "ab12", enrolled: Date())
        let server = EnrolledClient(id: .random(), role: .server, name: "s", certificateFingerprint: "cd34", enrolled: Date())
        try await repo.insertClient(device)
        try await repo.insertClient(server)
        func request(_ caller: ReleaseCaller) -> ReleaseRequest {
            var r = ReleaseRequest(keyID: key.record.id, actor: .device(caller.id), route: .agent)
            r.caller = caller
            return r
        }
        let good = ReleaseCaller(id: device.id, role: .device, certificateFingerprint: "ab12")
        #expect(try await repo.releaseKey(request(good))?.record.id == key.record.id)

        // Another certificate, another role, an unknown client, a revoked one: refused, nothing written.
        let refused = [
            ReleaseCaller(id: device.id, role: .device, certificateFingerprint: "ffff"),
            ReleaseCaller(id: server.id, role: .device, certificateFingerprint: "cd34"),
            ReleaseCaller(id: .random(), role: .device, certificateFingerprint: "ab12"),
        ]
        for caller in refused {
            await #expect(throws: ReleaseCallerRefused.self) { _ = try await repo.releaseKey(request(caller)) }
        }
        #expect(try await repo.setClientState(id: device.id, state: .revoked))
        await #expect(throws: ReleaseCallerRefused.self) { _ = try await repo.releaseKey(request(good)) }
        var missing = request(good)
        missing.keyID = .random()
        await #expect(throws: ReleaseCallerRefused.self) { _ = try await repo.releaseKey(missing) }
        let events = try await repo.audit(after: 0, limit: 100)
        #expect(events.map(\.result.description) == ["ok"])
    }

    @Test(arguments: Backend.allCases)
    func concurrentReleasesAreEachAuditedWithTheirOwnAnswer(_ backend: Backend) async throws {
        // Drivers may share one commit among concurrent releases: each caller must still get its
        // own key (or nil) and its own audit record, and a refused caller must not spoil the rest.
        let f = try await Fixture.make(backend)
        defer { Task { await f.cleanup() } }
        let repo = f.repository
        var keys: [StoredKey] = []
        for i in 0..<40 {
            let k = sampleKey(fingerprint: UInt8(i), label: "k\(i)")
            keys.append(k)
            _ = try await repo.insertKey(k, audit: nil)
        }
        _ = try await repo.setBlocked(id: keys[0].record.id, blocked: true, audit: audit(.block, keys[0].record.id))
        let device = EnrolledClient(id: .random(), role: .device, name: "d", certificateFingerprint: "ab12", enrolled: Date())
        try await repo.insertClient(device)
        let before = try await repo.audit(after: 0, limit: 1000).last?.sequence ?? 0

        // 400 requests: every key ten times, plus misses and impostors mixed in.
        enum Expect: Sendable, Equatable {
            case key(KeyID)
            case missing, refused
        }
        var plan: [(ReleaseRequest, Expect)] = []
        for round in 0..<10 {
            for (i, k) in keys.enumerated() {
                var r = ReleaseRequest(keyID: k.record.id, actor: .device(device.id), route: .agent, detail: "\(round)-\(i)")
                switch (round + i) % 7 {
                case 0:
                    r.keyID = .random()
                    plan.append((r, .missing))
                case 1:
                    r.caller = ReleaseCaller(id: device.id, role: .device, certificateFingerprint: "bad")
                    plan.append((r, .refused))
                default:
                    r.caller = ReleaseCaller(id: device.id, role: .device, certificateFingerprint: "ab12")
                    plan.append((r, .key(k.record.id)))
                }
            }
        }
        let answers = try await withThrowingTaskGroup(of: (Int, Expect).self) { group in
            for (n, (request, _)) in plan.enumerated() {
                group.addTask {
                    do {
                        guard let key = try await repo.releaseKey(request) else { return (n, .missing) }
                        return (n, .key(key.record.id))
                    } catch is ReleaseCallerRefused {
                        return (n, .refused)
                    }
                }
            }
            var answers = [Expect](repeating: .missing, count: plan.count)
            for try await (n, answer) in group { answers[n] = answer }
            return answers
        }
        #expect(answers == plan.map(\.1))

        let written = try await repo.audit(after: before, limit: 1000)
        #expect(written.count == plan.filter { $0.1 != .refused }.count)
        let byDetail = Dictionary(uniqueKeysWithValues: written.map { ($0.detail, $0) })
        for (request, expected) in plan {
            let record = byDetail[request.detail]
            switch expected {
            case .refused: #expect(record == nil)
            case .missing: #expect(record?.result == .refused(.notFound) && record?.keyID == request.keyID)
            case .key(let id):
                #expect(record?.keyID == id)
                #expect(record?.result.description == (id == keys[0].record.id ? "key_blocked" : "ok"))
            }
        }

        // With the audit trail broken, every one of many concurrent releases fails.
        try await (repo as! any RepositoryFaultInjection).breakAuditWrites()
        let failures = await withTaskGroup(of: Bool.self) { group in
            for k in keys {
                group.addTask { (try? await repo.releaseKey(ReleaseRequest(keyID: k.record.id, actor: testActor, route: .agent))) == nil }
            }
            return await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        #expect(failures == keys.count)
        #expect(try await repo.audit(after: before, limit: 1000).count == written.count)
    }

    @Test(arguments: Backend.allCases)
    func blockingAndListing(_ backend: Backend) async throws {
        let f = try await Fixture.make(backend)
        defer { Task { await f.cleanup() } }
        let repo = f.repository
        var ids: [KeyID] = []
        for i in 0..<25 {
            let k = sampleKey(label: "k\(i)")
            ids.append(k.record.id)
            _ = try await repo.insertKey(k, audit: nil)
        }
        #expect(try await repo.setBlocked(id: ids[3], blocked: true, audit: audit(.block, ids[3])))
        #expect(try await repo.key(id: ids[3])?.blocked == true)
        #expect(try await !repo.setBlocked(id: .random(), blocked: true, audit: audit(.block)))
        var seen: [KeyID] = []
        var after: KeyID? = nil
        while true {
            let page = try await repo.listKeys(after: after, limit: 10)
            if page.isEmpty { break }
            seen += page.map(\.record.id)
            after = page.last?.record.id
        }
        #expect(seen == ids.sorted())
        #expect(try await repo.keyCount() == 25)
    }

    @Test(arguments: Backend.allCases)
    func enrolledClients(_ backend: Backend) async throws {
        let f = try await Fixture.make(backend)
        defer { Task { await f.cleanup() } }
        let repo = f.repository
        let d = EnrolledClient(
            id: .random(), role: .device, name: "laptop-7", certificateFingerprint: "ab12", enrolled: Date(timeIntervalSince1970: 1_800_000_000),
            certificateExpires: Date(timeIntervalSince1970: 1_807_776_000))
        let s = EnrolledClient(
            id: .random(), role: .server, name: "branch", certificateFingerprint: "cd34", enrolled: Date(timeIntervalSince1970: 1_800_000_100))
        try await repo.insertClient(d)
        try await repo.insertClient(s)
        await #expect(throws: (any Error).self) { try await repo.insertClient(d) }
        #expect(try await repo.client(id: d.id)?.name == "laptop-7")
        #expect(try await repo.client(id: d.id)?.certificateExpires == Date(timeIntervalSince1970: 1_807_776_000))
        #expect(try await repo.listClients(role: .server).first?.certificateExpires == nil, "not recorded: nil, not a made-up date")
        #expect(try await repo.listClients(role: .device).map(\.id) == [d.id])
        #expect(try await repo.listClients(role: nil).map(\.id) == [d.id, s.id])
        try await repo.recordHeartbeat(id: d.id, at: Date(timeIntervalSince1970: 1_800_000_500), agentVersion: "0.1.0", keyCount: 3)
        let seen = try #require(try await repo.client(id: d.id))
        #expect(seen.agentVersion == "0.1.0")
        #expect(seen.reportedKeyCount == 3)
        #expect(abs((seen.lastSeen?.timeIntervalSince1970 ?? 0) - 1_800_000_500) < 0.001)
        #expect(try await repo.setClientState(id: d.id, state: .revoked))
        #expect(try await repo.client(id: d.id)?.state == .revoked)
        #expect(try await !repo.setClientState(id: .random(), state: .revoked))
    }

    /// A renewed certificate is offered only to the active enrollment whose current certificate is
    /// the one named, with its audit record in the same commit; adopting it makes it current and
    /// the old one is no longer the enrollment's.
    @Test(arguments: Backend.allCases)
    func renewedCertificatesAreOfferedThenAdopted(_ backend: Backend) async throws {
        let f = try await Fixture.make(backend)
        defer { Task { await f.cleanup() } }
        let repo = f.repository
        let d = EnrolledClient(
            id: .random(), role: .device, name: "laptop", certificateFingerprint: "old",
            certificateExpires: Date(timeIntervalSince1970: 1_800_000_000), certificateIssuer: "ca-1")
        try await repo.insertClient(d)
        let audit = AuditEvent(actor: .device(d.id), action: .certificateRenew, route: .api, result: .ok, detail: "renewed")
        let expires = Date(timeIntervalSince1970: 1_807_776_000)
        #expect(try await !repo.offerCertificate(id: d.id, current: "other", next: "new", expires: expires, audit: audit), "not its current one")
        #expect(try await !repo.offerCertificate(id: .random(), current: "old", next: "new", expires: expires, audit: audit))
        #expect(try await repo.audit(after: 0, limit: 10).isEmpty, "a refused offer writes no audit record")
        #expect(try await repo.offerCertificate(id: d.id, current: "old", next: "first", expires: expires, audit: audit))
        #expect(
            try await repo.offerCertificate(id: d.id, current: "old", next: "new", expires: expires, issuer: "ca-2", audit: audit),
            "a newer offer replaces it")
        let offered = try #require(try await repo.client(id: d.id))
        #expect(offered.certificateFingerprint == "old" && offered.nextCertificateFingerprint == "new")
        #expect(offered.certificateIssuer == "ca-1" && offered.nextCertificateIssuer == "ca-2", "the issuers are kept apart until adoption")
        #expect(offered.nextCertificateExpires == expires)
        #expect(try await repo.audit(after: 0, limit: 10).filter { $0.action == .certificateRenew }.count == 2)
        #expect(try await !repo.adoptCertificate(id: d.id, fingerprint: "first"), "a replaced offer cannot be adopted")
        #expect(try await repo.adoptCertificate(id: d.id, fingerprint: "new"))
        let adopted = try #require(try await repo.client(id: d.id))
        #expect(adopted.certificateIssuer == "ca-2" && adopted.nextCertificateIssuer == nil, "the issuer moves with the certificate")
        #expect(adopted.certificateFingerprint == "new" && adopted.certificateExpires == expires)
        #expect(adopted.nextCertificateFingerprint == nil && adopted.nextCertificateExpires == nil)
        #expect(try await !repo.adoptCertificate(id: d.id, fingerprint: "new"), "adopted once")
        #expect(try await repo.setClientState(id: d.id, state: .revoked))
        #expect(try await !repo.offerCertificate(id: d.id, current: "new", next: "later", expires: expires, audit: audit), "not for a revoked client")
    }

    @Test(arguments: Backend.allCases)
    func enrollmentTokens(_ backend: Backend) async throws {
        let f = try await Fixture.make(backend)
        defer { Task { await f.cleanup() } }
        let repo = f.repository
        let now = Date()
        let hash = [UInt8](repeating: 7, count: 32)
        let t = EnrollmentTokenRecord(id: .random(), secretHash: hash, role: .device, usesLeft: 2, expires: now.addingTimeInterval(600))
        try await repo.insertToken(t)
        // A check answers what a redemption would, and takes nothing.
        #expect(try await repo.checkToken(id: t.id, secretHash: [UInt8](repeating: 8, count: 32), now: now) == .unknown)
        #expect(try await repo.checkToken(id: .random(), secretHash: hash, now: now) == .unknown)
        #expect(try await repo.checkToken(id: t.id, secretHash: hash, now: now.addingTimeInterval(601)) == .expired)
        for _ in 0..<3 {
            guard case .redeemed(let checked) = try await repo.checkToken(id: t.id, secretHash: hash, now: now) else {
                Issue.record("a usable token was refused by the check")
                return
            }
            #expect(checked.usesLeft == 2)
        }
        #expect(try await repo.redeemToken(id: t.id, secretHash: [UInt8](repeating: 8, count: 32), now: now) == .unknown)
        #expect(try await repo.redeemToken(id: .random(), secretHash: hash, now: now) == .unknown)
        guard case .redeemed(let r1) = try await repo.redeemToken(id: t.id, secretHash: hash, now: now) else {
            Issue.record("first use refused")
            return
        }
        #expect(r1.usesLeft == 1)
        #expect(try await repo.redeemToken(id: t.id, secretHash: hash, now: now.addingTimeInterval(601)) == .expired)
        guard case .redeemed = try await repo.redeemToken(id: t.id, secretHash: hash, now: now) else {
            Issue.record("second use refused")
            return
        }
        #expect(try await repo.redeemToken(id: t.id, secretHash: hash, now: now) == .usedUp)
        #expect(try await repo.checkToken(id: t.id, secretHash: hash, now: now) == .usedUp)

        let single = EnrollmentTokenRecord(id: .random(), secretHash: hash, role: .server, usesLeft: 1, expires: now.addingTimeInterval(600))
        try await repo.insertToken(single)
        // Ten concurrent redemptions of a single-use token: exactly one wins.
        let wins = try await withThrowingTaskGroup(of: Bool.self) { group in
            for _ in 0..<10 {
                group.addTask {
                    if case .redeemed = try await repo.redeemToken(id: single.id, secretHash: hash, now: now) { return true }
                    return false
                }
            }
            return try await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        #expect(wins == 1)

        let revocable = EnrollmentTokenRecord(id: .random(), secretHash: hash, role: .device, usesLeft: 5, expires: now.addingTimeInterval(600))
        try await repo.insertToken(revocable)
        #expect(try await repo.revokeToken(id: revocable.id))
        #expect(try await repo.redeemToken(id: revocable.id, secretHash: hash, now: now) == .revoked)
        #expect(try await repo.checkToken(id: revocable.id, secretHash: hash, now: now) == .revoked)
        #expect(try await repo.listTokens().count == 3)
    }

    @Test(arguments: Backend.allCases)
    func auditAndSettings(_ backend: Backend) async throws {
        let f = try await Fixture.make(backend)
        defer { Task { await f.cleanup() } }
        let repo = f.repository
        // Every action, actor and route of the vocabulary round-trips through the database.
        let actors: [AuditActor] = [.device(.random()), .secondary(.random()), .administrator(.random()), .server(.random()), .anonymous]
        let routes: [AuditRoute] = [.agent, .adminAPI, .enrollment, .local, .api, .secondary(.random()), .primary(.random())]
        let results: [AuditResult] = [.ok, .alreadyPresent] + KeyholdError.Code.allCases.map { .refused($0) }
        let written = AuditAction.allCases.enumerated().map { i, action in
            AuditEvent(
                actor: actors[i % actors.count], action: action, keyID: i % 2 == 0 ? .random() : nil, route: routes[i % routes.count],
                result: results[i % results.count], detail: "event\(i)"
            )
        }
        for e in written { try await repo.appendAudit(e) }
        let first = try await repo.audit(after: 0, limit: 3)
        #expect(first.map(\.detail) == ["event0", "event1", "event2"])
        let rest = try await repo.audit(after: first.last!.sequence!, limit: 100)
        let all = first + rest
        #expect(all.map(\.action) == AuditAction.allCases)
        #expect(all.map(\.actor) == written.map(\.actor))
        #expect(all.map(\.route) == written.map(\.route))
        #expect(all.map(\.result) == written.map(\.result))
        #expect(all.map(\.keyID) == written.map(\.keyID))
        #expect(try await repo.setting("use_hierarchy") == nil)
        try await repo.setSetting("use_hierarchy", "true")
        try await repo.setSetting("use_hierarchy", "false")
        #expect(try await repo.setting("use_hierarchy") == "false")
    }

    @Test(arguments: Backend.allCases)
    func aKeyIsReplacedOnlyWhileItHoldsTheSecretItWasCheckedFor(_ backend: Backend) async throws {
        let f = try await Fixture.make(backend)
        defer { Task { await f.cleanup() } }
        let repo = f.repository
        var forged = sampleKey(label: "forged")
        forged.blocked = true
        _ = try await repo.insertKey(forged, audit: nil)
        let before = try #require(try await repo.key(id: forged.record.id))
        var real = sampleKey(label: "real")
        real.record.id = forged.record.id
        real.secretFingerprint = [UInt8](repeating: 5, count: 32)
        // A stale fingerprint matches nothing: nothing changes, nothing is audited.
        #expect(try await !repo.replaceKey(real, replacing: [UInt8](repeating: 7, count: 32), audit: audit(.keyReplaced, real.record.id)))
        #expect(try await repo.key(id: real.record.id)?.secretFingerprint == forged.secretFingerprint)
        #expect(try await repo.replaceKey(real, replacing: forged.secretFingerprint, audit: audit(.keyReplaced, real.record.id)))
        let after = try #require(try await repo.key(id: real.record.id))
        #expect(after.secretFingerprint == real.secretFingerprint && after.record.label == "real")
        #expect(after.blocked, "the block stays")
        #expect(after.sequence > before.sequence, "the replacement climbs at the next push")
        #expect(try await repo.audit(after: 0, limit: 10).filter { $0.action == .keyReplaced }.count == 1)
    }

    @Test(arguments: Backend.allCases)
    func oneReleaseRequestPerDeviceAndKeyStaysOpenAndMovesOnOnlyFromTheStatesGiven(_ backend: Backend) async throws {
        let f = try await Fixture.make(backend)
        defer { Task { await f.cleanup() } }
        let repo = f.repository
        let (key, device, admin) = (KeyID.random(), ClientID.random(), ClientID.random())
        let start = Date(timeIntervalSince1970: 1_800_000_000)
        func ask(_ at: Date) -> ApprovalRecord { ApprovalRecord(id: .random(), keyID: key, clientID: device, requested: at) }
        // Concurrent requests of one device for one key open one request, audited once.
        let opened = try await withThrowingTaskGroup(of: (ApprovalRecord, Bool).self) { group in
            for i in 0..<8 {
                group.addTask { try await repo.openApproval(ask(start.addingTimeInterval(Double(i))), audit: audit(.releaseRequest, key)) }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(Set(opened.map(\.0.id)).count == 1 && opened.filter(\.1).count == 1)
        let id = opened[0].0.id
        #expect(try await repo.audit(after: 0, limit: 100).filter { $0.action == .releaseRequest }.count == 1)
        // Another device's request for the same key is its own.
        let (elsewhere, isNew) = try await repo.openApproval(
            ApprovalRecord(id: .random(), keyID: key, clientID: .random(), requested: start.addingTimeInterval(100)),
            audit: audit(.releaseRequest, key))
        #expect(isNew && elsewhere.id != id)
        #expect(try await repo.listApprovals(states: [.pending], limit: 10).map(\.id) == [elsewhere.id, id], "newest first")
        #expect(try await repo.listApprovals(states: [.pending], limit: 1).map(\.id) == [elsewhere.id])

        // A transition happens only from the states given, with the decision and its audit record.
        let decision = ApprovalDecision(by: admin, at: start.addingTimeInterval(10), reason: "ticket 1")
        #expect(try await repo.setApprovalState(id: id, from: [.approved], to: .released, decision: nil, audit: nil) == nil)
        let approved = try #require(
            try await repo.setApprovalState(id: id, from: [.pending, .denied], to: .approved, decision: decision, audit: audit(.releaseApprove, key)))
        #expect(approved.state == .approved && approved.decidedBy == admin && approved.reason == "ticket 1")
        #expect(approved.decided.map { abs($0.timeIntervalSince(decision.at)) < 0.001 } == true)
        #expect(try await repo.openApproval(ask(start), audit: audit(.releaseRequest, key)).0.id == id, "an approved request is still open")
        let used = try #require(try await repo.setApprovalState(id: id, from: [.approved], to: .released, decision: nil, audit: nil))
        #expect(used.state == .released && used.reason == "ticket 1", "the decision stays")
        #expect(
            try await repo.setApprovalState(id: ApprovalID.random(), from: Set(ApprovalState.allCases), to: .denied, decision: nil, audit: nil) == nil
        )

        // Closed, the device's next request is a new one; everything survives a reopen.
        let (next, created) = try await repo.openApproval(ask(start.addingTimeInterval(200)), audit: audit(.releaseRequest, key))
        #expect(created && next.id != id)
        let again = try await f.reopen()
        #expect(try await again.approval(id: id) == used)
        #expect(try await again.listApprovals(states: ApprovalState.open, limit: 10).map(\.id) == [next.id, elsewhere.id])
        #expect(try await again.audit(after: 0, limit: 100).filter { $0.action == .releaseApprove }.count == 1)
    }

    @Test(arguments: Backend.allCases)
    func aRevealReadsMarksAndAuditsTheKeyInOneCommitOrDoesNothing(_ backend: Backend) async throws {
        let f = try await Fixture.make(backend)
        defer { Task { await f.cleanup() } }
        let repo = f.repository
        let (a, b) = (sampleKey(label: "a"), sampleKey(label: "b"))
        for key in [a, b] { _ = try await repo.insertKey(key, audit: nil) }
        #expect(try await repo.rotationRequired([a.record.id, b.record.id]).isEmpty)
        #expect(try await repo.revealKey(id: KeyID.random(), audit: audit(.reveal)) == nil, "no such key: nothing written")
        let revealed = try #require(try await repo.revealKey(id: a.record.id, audit: audit(.reveal, a.record.id)))
        #expect(revealed.secretFingerprint == a.secretFingerprint)
        _ = try await repo.revealKey(id: a.record.id, audit: audit(.reveal, a.record.id))
        #expect(try await repo.rotationRequired([a.record.id, b.record.id, .random()]) == [a.record.id])
        #expect(try await repo.audit(after: 0, limit: 10).filter { $0.action == .reveal }.count == 2)
        // Fail-closed: when the record cannot be written, the key is neither returned nor marked.
        if let faulty = repo as? any RepositoryFaultInjection {
            try await faulty.breakAuditWrites()
            await #expect(throws: (any Error).self) { try await repo.revealKey(id: b.record.id, audit: audit(.reveal, b.record.id)) }
            #expect(try await repo.rotationRequired([b.record.id]).isEmpty)
        }
        #expect(try await f.reopen().rotationRequired([a.record.id]) == [a.record.id], "the mark is durable")
    }

    @Test(arguments: Backend.allCases)
    func escrowChecksKeepTheNewestPerKeyAndListDriftsNewestFirst(_ backend: Backend) async throws {
        let f = try await Fixture.make(backend)
        defer { Task { await f.cleanup() } }
        let repo = f.repository
        let (a, b, c) = (KeyID.random(), KeyID.random(), KeyID.random())
        let (d1, d2) = (ClientID.random(), ClientID.random())
        let t0 = Date(timeIntervalSince1970: 1_800_000_000)
        try await repo.recordEscrowChecks(
            [
                EscrowCheckRecord(keyID: a, clientID: d1, checked: t0, opens: true),
                EscrowCheckRecord(keyID: b, clientID: d1, checked: t0.addingTimeInterval(10), opens: false),
                EscrowCheckRecord(keyID: c, clientID: d2, checked: t0.addingTimeInterval(20), opens: false),
            ], audit: [audit(.escrowDrift, b), audit(.escrowDrift, c)])
        // A newer check replaces the stored one; an older one changes nothing.
        try await repo.recordEscrowChecks(
            [
                EscrowCheckRecord(keyID: a, clientID: d2, checked: t0.addingTimeInterval(30), opens: false),
                EscrowCheckRecord(keyID: b, clientID: d2, checked: t0.addingTimeInterval(5), opens: true),
            ], audit: [])
        let byKey = Dictionary(uniqueKeysWithValues: try await repo.escrowChecks(keys: [a, b, c, .random()]).map { ($0.keyID, $0) })
        #expect(byKey.count == 3)
        #expect(byKey[a] == EscrowCheckRecord(keyID: a, clientID: d2, checked: t0.addingTimeInterval(30), opens: false))
        #expect(byKey[b] == EscrowCheckRecord(keyID: b, clientID: d1, checked: t0.addingTimeInterval(10), opens: false))
        #expect(Set(try await repo.escrowChecks(clients: [d1]).map(\.keyID)) == [b])
        #expect(Set(try await repo.escrowChecks(clients: [d2]).map(\.keyID)) == [a, c])
        #expect(try await repo.driftedEscrowChecks(limit: 10).map(\.keyID) == [a, c, b])
        #expect(try await repo.driftedEscrowChecks(limit: 1).map(\.keyID) == [a])
        #expect(try await repo.driftedEscrowCheckCount() == 3)
        #expect(try await repo.audit(after: 0, limit: 10).filter { $0.action == .escrowDrift }.count == 2)
        #expect(try await f.reopen().escrowChecks(keys: [c]).first?.opens == false, "checks are durable")
    }

    @Test(arguments: Backend.allCases)
    func blockStateChangesFormAFeedAndApplyOnlyToHeldKeys(_ backend: Backend) async throws {
        let f = try await Fixture.make(backend)
        defer { Task { await f.cleanup() } }
        let repo = f.repository
        let (a, b, c) = (sampleKey(label: "a"), sampleKey(label: "b"), sampleKey(label: "c"))
        for key in [a, b, c] { _ = try await repo.insertKey(key, audit: nil) }
        #expect(try await repo.stateChanges(after: 0, limit: 10).isEmpty, "new keys are not state changes")

        // A block here, then a block that came up in a push: both enter the feed, in order.
        _ = try await repo.setBlocked(id: a.record.id, blocked: true, audit: audit(.block, a.record.id))
        var bBlocked = b
        bBlocked.blocked = true
        _ = try await repo.insertKeys([bBlocked], audit: audit(.pushReceive))
        var feed = try await repo.stateChanges(after: 0, limit: 10)
        #expect(feed.map(\.keyID) == [a.record.id, b.record.id] && feed.allSatisfy(\.blocked))
        #expect(feed.map(\.sequence) == feed.map(\.sequence).sorted() && Set(feed.map(\.sequence)).count == 2)
        #expect(try await repo.stateChanges(after: feed[0].sequence, limit: 10).map(\.keyID) == [b.record.id])
        #expect(try await repo.stateChanges(after: 0, limit: 1).count == 1)
        // An unblock moves the key to the end of the feed with its latest state: one entry per key.
        _ = try await repo.setBlocked(id: a.record.id, blocked: false, audit: audit(.unblock, a.record.id))
        feed = try await repo.stateChanges(after: 0, limit: 10)
        #expect(feed.map(\.keyID) == [b.record.id, a.record.id] && feed.map(\.blocked) == [true, false])

        // Changes from a primary: applied to held keys whose state differs, each audited and fed on;
        // unknown keys and changes that change nothing are skipped.
        let cursor = feed.last!.sequence
        let unknown = KeyID.random()
        let base = AuditEvent(actor: .server(.random()), action: .block, route: .local, result: .ok, detail: "decided above")
        let changed = try await repo.applyStateChanges(
            [
                KeyStateChange(keyID: c.record.id, blocked: true, sequence: 7), KeyStateChange(keyID: unknown, blocked: true, sequence: 8),
                KeyStateChange(keyID: b.record.id, blocked: true, sequence: 9), KeyStateChange(keyID: a.record.id, blocked: true, sequence: 10),
            ], audit: base)
        #expect(changed == [c.record.id, a.record.id])
        #expect(try await repo.key(id: c.record.id)?.blocked == true)
        #expect(try await repo.key(id: a.record.id)?.blocked == true)
        #expect(try await repo.stateChanges(after: cursor, limit: 10).map(\.keyID) == [c.record.id, a.record.id])
        let records = try await repo.audit(after: 0, limit: 100).filter { $0.detail == "decided above" }
        #expect(records.map(\.keyID) == [c.record.id, a.record.id] && records.allSatisfy { $0.action == .block })
        // Applying changes does not renew the push sequence: the primary already knows.
        let before = try await repo.keys(afterSequence: 0, limit: 10).map(\.sequence)
        _ = try await repo.applyStateChanges([KeyStateChange(keyID: c.record.id, blocked: false, sequence: 11)], audit: base)
        #expect(try await repo.keys(afterSequence: 0, limit: 10).map(\.sequence) == before)
        #expect(try await repo.audit(after: 0, limit: 100).last?.action == .unblock)
    }

    @Test(arguments: Backend.allCases)
    func sequencesFollowChangesAndBatchesAreAtomic(_ backend: Backend) async throws {
        let f = try await Fixture.make(backend)
        defer { Task { await f.cleanup() } }
        let repo = f.repository
        let a = sampleKey(label: "a")
        let b = sampleKey(label: "b")
        let c = sampleKey(label: "c")
        _ = try await repo.insertKey(a, audit: nil)
        _ = try await repo.insertKey(b, audit: nil)
        var seqs = try await repo.keys(afterSequence: 0, limit: 10).map(\.record.id)
        #expect(seqs == [a.record.id, b.record.id])
        let cursor = try #require(try await repo.keys(afterSequence: 0, limit: 10).last?.sequence)
        #expect(try await repo.keys(afterSequence: cursor, limit: 10).isEmpty, "nothing new after the cursor")
        #expect(try await repo.keyCount(afterSequence: cursor) == 0)
        #expect(try await repo.keyCount(afterSequence: 0) == 2)
        // Blocking renews the sequence: the change travels.
        _ = try await repo.setBlocked(id: a.record.id, blocked: true, audit: audit(.block, a.record.id))
        seqs = try await repo.keys(afterSequence: cursor, limit: 10).map(\.record.id)
        #expect(seqs == [a.record.id])

        // A received batch: new, same secret (carrying blocked), and a conflict.
        var bBlocked = b
        bBlocked.blocked = true
        var impostor = sampleKey()
        impostor.record.id = a.record.id
        impostor.secretFingerprint = [UInt8](repeating: 9, count: 32)
        let outcomes = try await repo.insertKeys([c, bBlocked, impostor], audit: audit(.pushReceive))
        #expect(outcomes == [.inserted, .alreadyPresent, .conflict])
        #expect(try await repo.key(id: b.record.id)?.blocked == true)
        #expect(try await repo.key(id: a.record.id)?.secretFingerprint == a.secretFingerprint)
        let latest = try await repo.keys(afterSequence: cursor, limit: 10)
        #expect(Set(latest.map(\.record.id)) == [a.record.id, b.record.id, c.record.id])
        #expect(try await repo.keyCount(afterSequence: cursor) == 3)
        #expect(latest.map(\.sequence) == latest.map(\.sequence).sorted())
        #expect(Set(latest.map(\.sequence)).count == 3)
        let events = try await repo.audit(after: 0, limit: 10)
        #expect(events.contains { $0.action == .pushReceive && $0.detail.hasPrefix("3 keys: 1 inserted, 1 already present, 1 conflicts") })
        #expect(events.contains { $0.action == .pushReceive && $0.result == .refused(.conflict) && $0.keyID == a.record.id })

        // A batch whose audit cannot be written stores nothing.
        try await (repo as! any RepositoryFaultInjection).breakAuditWrites()
        let d = sampleKey(label: "d")
        await #expect(throws: (any Error).self) { _ = try await repo.insertKeys([d], audit: audit(.pushReceive)) }
        #expect(try await repo.key(id: d.record.id) == nil)
    }

    @Test(arguments: Backend.allCases)
    func obtainedKeysAreStoredAndReleasedTogether(_ backend: Backend) async throws {
        let f = try await Fixture.make(backend)
        defer { Task { await f.cleanup() } }
        let repo = f.repository
        let key = sampleKey(label: "from the primary", provenance: .hierarchy)
        let release = ReleaseRequest(keyID: key.record.id, actor: testActor, route: .agent, detail: "obtained through the hierarchy")
        let (outcome, released) = try await repo.insertAndRelease(key, obtained: audit(.obtain, key.record.id), release: release)
        #expect(outcome == .inserted && released?.wrappedSecret == key.wrappedSecret && released?.provenance == .hierarchy)
        // Again: already present, released again; another secret: conflict, nothing released.
        #expect(try await repo.insertAndRelease(key, obtained: audit(.obtain, key.record.id), release: release).0 == .alreadyPresent)
        var other = key
        other.secretFingerprint = [UInt8](repeating: 3, count: 32)
        let conflict = try await repo.insertAndRelease(other, obtained: audit(.obtain, key.record.id), release: release)
        #expect(conflict.0 == .conflict && conflict.1 == nil)
        // A copy blocked here is returned as blocked and its release audited as refused.
        _ = try await repo.setBlocked(id: key.record.id, blocked: true, audit: audit(.block, key.record.id))
        let blocked = try await repo.insertAndRelease(key, obtained: audit(.obtain, key.record.id), release: release)
        #expect(blocked.0 == .alreadyPresent && blocked.1?.blocked == true)
        #expect((released?.sequence ?? 0) > 0 && (blocked.1?.sequence ?? 0) > (released?.sequence ?? 0))
        let events = try await repo.audit(after: 0, limit: 10).map { "\($0.action):\($0.result)" }
        #expect(events == ["obtain:ok", "release:ok", "release:ok", "obtain:conflict", "block:ok", "release:key_blocked"])
        // No audit, no key: with audit writes failing nothing is stored or released.
        try await (repo as! any RepositoryFaultInjection).breakAuditWrites()
        let fresh = sampleKey(label: "never")
        await #expect(throws: (any Error).self) {
            _ = try await repo.insertAndRelease(
                fresh, obtained: audit(.obtain, fresh.record.id), release: ReleaseRequest(keyID: fresh.record.id, actor: testActor, route: .agent))
        }
        #expect(try await repo.key(id: fresh.record.id) == nil)
    }

    @Test(arguments: Backend.allCases)
    func importsAreAllOrNothing(_ backend: Backend) async throws {
        let f = try await Fixture.make(backend)
        defer { Task { await f.cleanup() } }
        let repo = f.repository
        let known = sampleKey(label: "known")
        _ = try await repo.insertKey(known, audit: audit(.escrow, known.record.id))
        let fresh = (0..<2500).map { sampleKey(label: "import \($0)") }
        var impostor = sampleKey()
        impostor.record.id = known.record.id
        impostor.secretFingerprint = [UInt8](repeating: 7, count: 32)
        let auditBefore = try await repo.audit(after: 0, limit: 100_000)

        // A conflict in the last batch rolls back the batches before it.
        let refused = Batches(fresh + [impostor], size: 1000)
        let conflict = await #expect(throws: KeyImportConflict.self) {
            _ = try await repo.importKeys(from: refused, audit: audit(.importFile))
        }
        #expect(conflict?.ids == [known.record.id])
        #expect(try await repo.keyCount() == 1)
        #expect(try await repo.audit(after: 0, limit: 100_000) == auditBefore)

        // A source that fails (a damaged file) rolls back too.
        await #expect(throws: RepositoryError.self) {
            _ = try await repo.importKeys(from: Batches(fresh, size: 1000, failAfter: 2), audit: audit(.importFile))
        }
        #expect(try await repo.keyCount() == 1)

        // The same keys plus the known one with its own secret: all stored, one audit record each.
        let result = try await repo.importKeys(from: Batches(fresh + [known], size: 1000), audit: audit(.importFile))
        #expect(result == KeyImportResult(inserted: 2500, alreadyPresent: 1))
        #expect(try await repo.keyCount() == 2501)
        #expect(try await repo.key(id: fresh[1234].record.id)?.record.label == "import 1234")
        let events = try await repo.audit(after: auditBefore.last?.sequence ?? 0, limit: 100_000)
        #expect(events.filter { $0.action == .`import` }.count == 2501)
        #expect(events.contains { $0.action == .`import` && $0.keyID == known.record.id && $0.result == .alreadyPresent })
        #expect(events.last?.action == .importFile)
        #expect(events.last?.detail.hasPrefix("2501 keys: 2500 inserted, 1 already present") == true)

        // Batch audit appends are ordered and atomic.
        let batch = (0..<3).map { audit(.export, fresh[$0].record.id) }
        try await repo.appendAudit(batch)
        #expect(try await repo.audit(after: 0, limit: 100_000).suffix(3).map(\.keyID) == batch.map(\.keyID))
    }

    /// The driver's statistics: every release is in exactly one reported batch; an operation in
    /// flight is counted while it runs and not after; a failure of the database is reported, a
    /// refusal the repository decides itself is not.
    @Test(arguments: Backend.allCases)
    func masterKeyVersionsAreRecordedOnceRewrapsAreCompareAndSetAndRetiringWaitsForTheLastKey(_ backend: Backend) async throws {
        let f = try await Fixture.make(backend)
        defer { Task { await f.cleanup() } }
        let repo = f.repository
        let t0 = Date(timeIntervalSince1970: 1_800_000_000.25)
        #expect(try await repo.masterKeyVersions().isEmpty)
        let v1 = MasterKeyVersionRecord(version: 1, check: [UInt8](repeating: 1, count: 16), created: t0, activated: t0)
        #expect(try await repo.registerMasterKeyVersion(v1, audit: nil) == .registered)
        #expect(try await repo.registerMasterKeyVersion(v1, audit: nil) == .alreadyRegistered)
        var impostor = v1
        impostor.check = [UInt8](repeating: 9, count: 16)
        #expect(try await repo.registerMasterKeyVersion(impostor, audit: audit(.masterKeyRotate)) == .conflict)
        let v2 = MasterKeyVersionRecord(version: 2, check: [UInt8](repeating: 2, count: 16), created: t0.addingTimeInterval(60))
        #expect(try await repo.registerMasterKeyVersion(v2, audit: audit(.masterKeyRotate)) == .registered)
        #expect(try await repo.masterKeyVersions() == [v1, v2])
        #expect(try await repo.masterKeyVersions().current == v1, "a prepared version is not current")

        // Three keys under version 1 (the bare 60 bytes), one under version 2 (its header).
        let old = (0..<3).map { sampleKey(label: "old \($0)") }
        var young = sampleKey(label: "young")
        young.wrappedSecret = WrappedSecretHeader.bytes(version: 2) + [UInt8](repeating: 0xDD, count: 60)
        for key in old + [young] { _ = try await repo.insertKey(key, audit: nil) }
        #expect(try await repo.keyCountsByMasterVersion() == [1: 3, 2: 1])

        #expect(try await repo.activateMasterKeyVersion(2, at: t0.addingTimeInterval(120), audit: audit(.masterKeyRotate)))
        #expect(try await !repo.activateMasterKeyVersion(2, at: t0.addingTimeInterval(180), audit: audit(.masterKeyRotate)))
        #expect(try await !repo.activateMasterKeyVersion(7, at: t0, audit: audit(.masterKeyRotate)))
        #expect(try await repo.masterKeyVersions().current?.version == 2)
        #expect(try await repo.masterKeyVersions().current?.activated == t0.addingTimeInterval(120))

        // Retiring is refused, changing nothing, while a key is left under version 1.
        #expect(try await repo.retireMasterKeyVersions(below: 2, at: t0, audit: audit(.masterKeyRetire)) == [1: 3])
        #expect(try await repo.masterKeyVersions().allSatisfy { $0.retired == nil })

        #expect(try await repo.keysToRewrap(below: 2, limit: 2).count == 2)
        let due = try await repo.keysToRewrap(below: 2, limit: 10)
        #expect(Set(due.map(\.record.id)) == Set(old.map(\.record.id)))
        var sequences: [KeyID: Int64] = [:]
        for key in due { sequences[key.record.id] = try await repo.key(id: key.record.id)?.sequence }
        let rewraps = due.map {
            KeyRewrap(id: $0.record.id, old: $0.wrappedSecret, new: WrappedSecretHeader.bytes(version: 2) + [UInt8](repeating: 0xAB, count: 60))
        }
        // A row that changed since it was read (the old blob no longer there) is left alone.
        var stale = rewraps[0]
        stale.old = [UInt8](repeating: 0x11, count: 60)
        #expect(try await repo.rewrapKeys([stale, rewraps[1], rewraps[2]]) == 2)
        #expect(try await repo.keyCountsByMasterVersion() == [1: 1, 2: 3])
        #expect(try await repo.key(id: rewraps[0].id)?.wrappedSecret == rewraps[0].old)
        for rewrap in rewraps.dropFirst() {
            let key = try #require(try await repo.key(id: rewrap.id))
            #expect(key.wrappedSecret == rewrap.new && key.masterVersion == 2)
            #expect(key.sequence == sequences[rewrap.id], "a rewrap is not a change the hierarchy pushes")
        }
        #expect(try await repo.rewrapKeys([rewraps[0]]) == 1)
        #expect(try await repo.rewrapKeys([rewraps[0]]) == 0, "done once")
        #expect(try await repo.keysToRewrap(below: 2, limit: 10).isEmpty)

        #expect(try await repo.retireMasterKeyVersions(below: 2, at: t0.addingTimeInterval(300), audit: audit(.masterKeyRetire)) == [:])
        let versions = try await repo.masterKeyVersions()
        #expect(versions.map(\.retired) == [t0.addingTimeInterval(300), nil])
        #expect(versions.current?.version == 2)
        let records = try await repo.audit(after: 0, limit: 100)
        #expect(records.filter { $0.action == .masterKeyRotate }.count == 2, "the registration and the activation, not the refusals")
        #expect(records.filter { $0.action == .masterKeyRetire }.count == 1, "the retirement, not the refusal")
        #expect(try await f.reopen().masterKeyVersions() == versions)
    }

    @Test(arguments: [Backend.sqlite, .postgres])
    func statisticsCountBatchesOperationsAndDatabaseErrors(_ backend: Backend) async throws {
        let f = try await Fixture.make(backend)
        defer { Task { await f.cleanup() } }
        let repo = f.repository
        let log = EventLog()
        repo.statistics.observe { event in log.events.withLock { $0.append(event) } }
        #expect(repo.statistics.connections > 0)
        let key = sampleKey()
        _ = try await repo.insertKey(key, audit: audit(.escrow, key.record.id))
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<40 {
                group.addTask { _ = try await repo.releaseKey(ReleaseRequest(keyID: key.record.id, actor: testActor, route: .agent)) }
            }
            try await group.waitForAll()
        }
        let sizes = log.events.withLock { $0 }.compactMap { if case .releaseBatch(let size) = $0 { size } else { nil } }
        #expect(sizes.reduce(0, +) == 40, "batch sizes \(sizes)")
        #expect(sizes.allSatisfy { (1...256).contains($0) })
        #expect(repo.statistics.inFlight == 0)
        // A conflict is the repository's own answer, not a database error.
        #expect(try await repo.insertKey(sampleKey(fingerprint: 2), audit: nil) == .inserted)
        var other = key
        other.secretFingerprint = [UInt8](repeating: 9, count: 32)
        #expect(try await repo.insertKey(other, audit: nil) == .conflict)
        #expect(!log.events.withLock { $0 }.contains(.databaseError))
        // A broken audit table is.
        try await (repo as! any RepositoryFaultInjection).breakAuditWrites()
        await #expect(throws: (any Error).self) { try await repo.appendAudit(audit(.export, key.record.id)) }
        #expect(log.events.withLock { $0 }.filter { $0 == .databaseError }.count == 1)
        #expect(repo.statistics.inFlight == 0)
    }

    @Test(arguments: [Backend.sqlite, .postgres])
    func committedDataSurvivesReopening(_ backend: Backend) async throws {
        let f = try await Fixture.make(backend)
        defer { Task { await f.cleanup() } }
        let key = sampleKey()
        _ = try await f.repository.insertKey(key, audit: audit(.escrow, key.record.id))
        let again = try await f.reopen()
        #expect(try await again.key(id: key.record.id)?.wrappedSecret == key.wrappedSecret)
        #expect(try await again.audit(after: 0, limit: 5).count == 1)
        try await again.close()
    }

    @Test(arguments: Backend.allCases)
    func deletedDevicesKeysAreDestroyedOnlyWhenNothingReferencesThem(_ backend: Backend) async throws {
        let f = try await Fixture.make(backend)
        defer { Task { await f.cleanup() } }
        let repo = f.repository
        let gone = EnrolledClient(id: .random(), role: .device, name: "gone", certificateFingerprint: "aa", enrolled: Date())
        let other = EnrolledClient(id: .random(), role: .device, name: "other", certificateFingerprint: "bb", enrolled: Date())
        let secondary = EnrolledClient(id: .random(), role: .server, name: "below", certificateFingerprint: "cc", enrolled: Date())
        for c in [gone, other, secondary] { try await repo.insertClient(c) }
        func key(_ n: UInt8, by owner: ClientID?, provenance: KeyProvenance = .escrow) -> StoredKey {
            var k = sampleKey(fingerprint: n, label: "k\(n)", provenance: provenance)
            k.record.kind = .drive
            k.escrowedBy = owner
            return k
        }
        func pushed(_ k: StoredKey, by owner: ClientID?) -> StoredKey {
            var p = k
            p.provenance = .pushed
            p.escrowedBy = owner
            return p
        }
        func escrowed(_ k: StoredKey, by owner: ClientID) -> StoredKey {
            var e = k
            e.provenance = .escrow
            e.escrowedBy = owner
            return e
        }
        let due = key(1, by: gone.id)
        let checkedByOther = key(2, by: gone.id)
        let movedBelow = key(3, by: gone.id)
        let others = key(4, by: other.id)
        let secondarys = key(5, by: secondary.id, provenance: .pushed)
        let reclaimed = key(6, by: secondary.id, provenance: .pushed)
        for k in [due, checkedByOther, movedBelow, others] { #expect(try await repo.insertKey(k, audit: nil) == .inserted) }
        #expect(try await repo.insertKeys([secondarys, reclaimed], audit: audit(.pushReceive)) == [.inserted, .inserted])
        try await repo.recordEscrowChecks(
            [EscrowCheckRecord(keyID: checkedByOther.record.id, clientID: other.id, checked: Date(), opens: true)], audit: [])

        // Owners: a secondary's push takes a key over from an inactive owner only; a device's escrow from anyone but an active device.
        #expect(try await repo.insertKeys([pushed(movedBelow, by: secondary.id)], audit: audit(.pushReceive)) == [.alreadyPresent])
        #expect(try await repo.key(id: movedBelow.record.id)?.escrowedBy == gone.id)
        #expect(try await repo.setClientState(id: gone.id, state: .moved))
        #expect(
            try await repo.insertKeys([pushed(movedBelow, by: secondary.id), pushed(due, by: nil)], audit: audit(.pushReceive)) == [
                .alreadyPresent, .alreadyPresent,
            ])
        #expect(try await repo.key(id: movedBelow.record.id)?.escrowedBy == secondary.id)
        #expect(try await repo.key(id: due.record.id)?.escrowedBy == gone.id)
        #expect(try await repo.insertKey(escrowed(reclaimed, by: other.id), audit: audit(.escrow, reclaimed.record.id)) == .alreadyPresent)
        #expect(try await repo.key(id: reclaimed.record.id)?.escrowedBy == other.id)
        #expect(try await repo.insertKey(escrowed(others, by: gone.id), audit: audit(.escrow, others.record.id)) == .alreadyPresent)
        #expect(try await repo.key(id: others.record.id)?.escrowedBy == other.id)

        // Only a revoked or moved client is deleted.
        let deletedAt = Date(timeIntervalSince1970: Date().timeIntervalSince1970.rounded(.down))
        #expect(try await !repo.deleteClient(id: other.id, at: deletedAt, audit: audit(.deviceDelete)))
        #expect(try await repo.deleteClient(id: gone.id, at: deletedAt, audit: audit(.deviceDelete)))
        let stored = try #require(try await repo.client(id: gone.id))
        #expect(stored.state == .deleted)
        #expect(abs((stored.deleted ?? .distantPast).timeIntervalSince(deletedAt)) < 0.001)
        #expect(try await repo.liveKeyCount(escrowedBy: gone.id) == 2)

        // Due once the retention passed: the key nothing else uses.
        #expect(try await repo.keysDueForDestruction(deletedBefore: deletedAt.addingTimeInterval(-1), limit: 10).isEmpty)
        let dueKeys = try await repo.keysDueForDestruction(deletedBefore: deletedAt.addingTimeInterval(1), limit: 10)
        #expect(dueKeys.map(\.keyID) == [due.record.id])
        #expect(dueKeys.first?.client == gone.id)

        let feedBefore = try await repo.stateChanges(after: 0, limit: 100).last?.sequence ?? 0
        let sequenceBefore = try await repo.keys(afterSequence: 0, limit: 100).map(\.sequence).max() ?? 0
        let at = deletedAt.addingTimeInterval(5)
        func destroy(_ k: StoredKey, _ rule: DestructionRule) -> KeyDestruction {
            KeyDestruction(keyID: k.record.id, audit: audit(.keyDestroy, k.record.id), rule: rule)
        }
        let cutoff = deletedAt.addingTimeInterval(1)
        let outcomes = try await repo.destroyKeys(
            [
                destroy(due, .due(deletedBefore: deletedAt.addingTimeInterval(-1))), destroy(due, .due(deletedBefore: cutoff)),
                destroy(checkedByOther, .due(deletedBefore: cutoff)), destroy(others, .unlessReferenced), destroy(secondarys, .ownedBy(other.id)),
                destroy(secondarys, .ownedBy(secondary.id)), destroy(reclaimed, .ownedBy(secondary.id)), destroy(sampleKey(fingerprint: 9), .always),
            ], at: at)
        #expect(outcomes == [.spared, .destroyed, .spared, .spared, .spared, .destroyed, .spared, .notFound])

        // The record stays; the secret and its fingerprint are gone; the change travels.
        let destroyed = try #require(try await repo.key(id: due.record.id))
        #expect(destroyed.wrappedSecret.isEmpty && destroyed.secretFingerprint.isEmpty)
        #expect(abs((destroyed.destroyed ?? .distantPast).timeIntervalSince(at)) < 0.001)
        #expect(destroyed.record.label == "k1")
        #expect(destroyed.sequence > sequenceBefore)
        let feed = try await repo.stateChanges(after: feedBefore, limit: 100)
        #expect(Set(feed.map(\.keyID)) == [due.record.id, secondarys.record.id] && feed.allSatisfy(\.destroyed))
        #expect(try await repo.keysDueForDestruction(deletedBefore: at, limit: 10).isEmpty)
        #expect(try await repo.liveKeyCount(escrowedBy: gone.id) == 1)

        // It is released to nobody, revealed to nobody, and never stored again under its id.
        let released = try await repo.releaseKey(ReleaseRequest(keyID: due.record.id, actor: testActor, route: .agent))
        #expect(released?.destroyed != nil)
        #expect(try await repo.revealKey(id: due.record.id, audit: audit(.reveal, due.record.id))?.destroyed != nil)
        #expect(try await repo.rotationRequired([due.record.id]).isEmpty)
        #expect(try await repo.insertKey(due, audit: audit(.escrow, due.record.id)) == .destroyed)
        #expect(try await repo.insertKeys([due], audit: audit(.pushReceive)) == [.destroyed])
        #expect(try await repo.key(id: due.record.id)?.wrappedSecret.isEmpty == true)
        let tail = try await repo.audit(after: 0, limit: 100).filter { $0.keyID == due.record.id }
        #expect(tail.filter { $0.action == .release }.map(\.result) == [.refused(.keyDestroyed)])
        #expect(tail.filter { $0.action == .escrow }.map(\.result) == [.refused(.keyDestroyed)])
        #expect(tail.filter { $0.action == .keyDestroy }.count == 1)
        #expect(tail.filter { $0.action == .reveal }.isEmpty)

        // A block from above skips it; the rewrap ignores it; on purpose, a referenced key goes too.
        #expect(try await repo.applyStateChanges([KeyStateChange(keyID: due.record.id, blocked: true, sequence: 1)], audit: audit(.block)).isEmpty)
        #expect(try await !repo.keysToRewrap(below: 1_000, limit: 100).map(\.record.id).contains(due.record.id))
        #expect(try await repo.keyCountsByMasterVersion().values.reduce(0, +) == 4)
        #expect(try await repo.destroyKeys([destroy(due, .always), destroy(checkedByOther, .always)], at: at) == [.alreadyDestroyed, .destroyed])
        #expect(try await repo.keysDueForDestruction(deletedBefore: at, limit: 10).isEmpty)
    }
}

/// The events a driver's statistics reported, in order.
final class EventLog: Sendable {
    let events = Mutex<[StoreStatistics.Event]>([])
}

/// Hands out keys in batches, like the server's reader of an export file; optionally fails.
final class Batches: KeyBatchSource {
    private let batches: Mutex<[[StoredKey]]>
    private let failAfter: Int?
    private let served = Mutex(0)

    init(_ keys: [StoredKey], size: Int, failAfter: Int? = nil) {
        batches = Mutex(stride(from: 0, to: keys.count, by: size).map { Array(keys[$0..<min(keys.count, $0 + size)]) })
        self.failAfter = failAfter
    }

    func nextBatch() throws -> [StoredKey]? {
        let n = served.withLock {
            $0 += 1
            return $0
        }
        if let failAfter, n > failAfter { throw RepositoryError("the file is damaged (simulated)") }
        return batches.withLock { $0.isEmpty ? nil : $0.removeFirst() }
    }
}
