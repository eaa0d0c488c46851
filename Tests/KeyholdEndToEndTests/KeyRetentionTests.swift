import Foundation
import KeyholdClient
import KeyholdCore
import KeyholdProtocol
import KeyholdTestSupport
import Testing

/// Device deletion and key retention (issue "Years of service", item 6; docs/operations.md,
/// "Deleting devices and destroying keys"), with real server processes: a primary on SQLite or
/// PostgreSQL and a secondary on SQLite, a retention of a few seconds. The keys of deleted devices
/// are destroyed after it — unless another device's drive still uses them — the destruction
/// travels up and down the hierarchy, every server answers `key_destroyed`, and the wrapped
/// secrets are gone from the SQLite files and from a `pg_dump`.
@Suite(.serialized, .timeLimit(.minutes(10))) struct KeyRetentionTests {
    /// Where a server keeps its keys, to look for wrapped secrets in.
    enum Storage {
        case sqlite(path: String)
        case postgres(url: String, name: String)
    }

    /// The wrapped secret of each of `ids` as the database holds it now, in lowercase hex (empty
    /// when erased).
    static func wrapped(_ storage: Storage, _ ids: [KeyID]) async throws -> [KeyID: String] {
        switch storage {
        case .sqlite(let path):
            let script = """
                import sqlite3, sys
                con = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True, timeout=5)
                for i in sys.argv[2:]:
                    row = con.execute("SELECT lower(hex(wrapped_secret)) FROM keys WHERE id = ?", (i,)).fetchone()
                    print(i, row[0] if row and row[0] else "-")
                """
            let r = try await run(URL(fileURLWithPath: "/usr/bin/python3"), ["-c", script, path] + ids.map(\.description))
            guard r.status == 0 else { throw TestFailure("reading \(path) failed: \(r.stderr)") }
            return try parse(r.stdoutText)
        case .postgres(let url, let name):
            let dump = try await SharedPostgresTests.dumpKeys(url: url, name: name)
            let lines = dump.components(separatedBy: "\n")
            guard let header = lines.first(where: { $0.hasPrefix("COPY public.keys (") }),
                let columns = header.split(separator: "(").dropFirst().first?.split(separator: ")").first?.split(separator: ",").map({
                    $0.trimmingCharacters(in: .whitespaces)
                }),
                let idColumn = columns.firstIndex(of: "id"), let secretColumn = columns.firstIndex(of: "wrapped_secret")
            else { throw TestFailure("no COPY of the keys table in the dump") }
            var out: [KeyID: String] = [:]
            for line in lines {
                let cells = line.components(separatedBy: "\t")
                guard cells.count == columns.count, let id = KeyID(cells[idColumn]), ids.contains(id) else { continue }
                out[id] = String(cells[secretColumn].dropFirst(3))  // the dump writes bytea as \\x followed by hex
            }
            return out
        }
    }

    private static func parse(_ text: String) throws -> [KeyID: String] {
        var out: [KeyID: String] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ")
            guard parts.count == 2, let id = KeyID(String(parts[0])) else { throw TestFailure("unexpected line \(line)") }
            out[id] = parts[1] == "-" ? "" : String(parts[1])
        }
        return out
    }

    /// Whether the bytes `hex` spells appear anywhere in the database: the SQLite file or its
    /// write-ahead log (searched as bytes), or a fresh `pg_dump` (which writes bytea as hex).
    static func databaseHolds(_ storage: Storage, _ hex: String) async throws -> Bool {
        precondition(hex.count >= 64)
        switch storage {
        case .sqlite(let path):
            let script = """
                import os, sys
                needle = bytes.fromhex(sys.argv[2])
                files = [sys.argv[1], sys.argv[1] + "-wal"]
                print(any(needle in open(f, "rb").read() for f in files if os.path.exists(f)))
                """
            let r = try await run(URL(fileURLWithPath: "/usr/bin/python3"), ["-c", script, path, hex])
            guard r.status == 0 else { throw TestFailure("searching \(path) failed: \(r.stderr)") }
            return r.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) == "True"
        case .postgres(let url, let name):
            return try await SharedPostgresTests.dumpKeys(url: url, name: name).contains(hex)
        }
    }

    /// Escrows a new key of `kind` from `device`; returns its id and secret.
    static func escrow(_ device: EnrolledIdentity, kind: KeyKind = .file, label: String) async throws -> (KeyID, SecretKey) {
        let (record, secret, request) = newKey(device, kind: kind, label: label)
        _ = try await using(try device.client()) { try await $0.put(APIPath.key(record.id.description), request, as: EscrowResponse.self) }
        return (record.id, secret)
    }

    static func release(_ id: KeyID, to device: EnrolledIdentity) async throws -> KeyMaterial {
        try await using(try device.client()) { try await $0.get(APIPath.key(id.description), as: KeyMaterial.self) }
    }

    static func keys(_ server: ServerProcess) async throws -> [KeyID: KeyInfo] {
        let r = try await server.admin(["key", "list", "--json"])
        guard r.status == 0 else { throw TestFailure("key list failed: \(r.stderr)") }
        return Dictionary(uniqueKeysWithValues: try WireFormat.decoder().decode([KeyInfo].self, from: r.stdout).map { ($0.record.id, $0) })
    }

    /// Waits until every key of `ids` is destroyed on `server`.
    static func waitUntilDestroyed(_ server: ServerProcess, _ ids: [KeyID], within: Duration = .seconds(60)) async throws {
        let deadline = ContinuousClock.now + within
        while ContinuousClock.now < deadline {
            let listed = try await keys(server)
            if ids.allSatisfy({ listed[$0]?.destroyed != nil }) { return }
            try await Task.sleep(for: .milliseconds(250))
        }
        throw TestFailure("keys were not destroyed on \(server.name) within \(within)")
    }

    @Test(arguments: ["sqlite", "postgres"])
    func deletedDevicesKeysAreDestroyedEverywhereAfterTheRetention(_ store: String) async throws {
        let database = store == "postgres" ? try await SharedPostgresTests.freshDatabase() : nil
        let p = try await ServerProcess(name: "retention-P-\(store)", database: database?.url, initOptions: ["--use-hierarchy"])
        let s = try await ServerProcess(name: "retention-S-\(store)", initOptions: ["--use-hierarchy"])
        // About 3.5 seconds (0.00004 days).
        for server in [p, s] { try server.setConfig("key_retention_days", "0.00004") }
        try await p.start(["--hierarchy-heartbeat", "3600"])
        defer { p.terminate() }
        try await s.start(["--hierarchy-heartbeat", "3600"])
        defer { s.terminate() }
        try await HierarchyTests.join(s, to: p)
        let atP: Storage =
            database.map { .postgres(url: $0.url, name: $0.name) } ?? .sqlite(path: p.dataDir.appendingPathComponent("keyhold.sqlite").path)
        let atS: Storage = .sqlite(path: s.dataDir.appendingPathComponent("keyhold.sqlite").path)

        // A and E at the primary, B and C at the secondary. A's and C's keys are to go; E's drive uses A's shared drive key.
        let a = try await p.enrollDevice("A")
        let e = try await p.enrollDevice("E")
        let b = try await s.enrollDevice("B")
        let c = try await s.enrollDevice("C")
        let (lookedUp, lookedUpSecret) = try await Self.escrow(a, label: "A, looked up from below")
        let (neverAsked, _) = try await Self.escrow(a, label: "A, never asked for")
        let (shared, sharedSecret) = try await Self.escrow(a, kind: .drive, label: "A's drive, used by E")
        let (fromBelow, _) = try await Self.escrow(c, label: "C's, pushed up")
        _ = try await using(try e.client()) {
            try await $0.post(
                APIPath.heartbeat,
                HeartbeatRequest(agentVersion: "test", keyCount: 1, driveChecks: [DriveCheck(keyID: shared, opens: true, checked: Date())]),
                as: HeartbeatResponse.self)
        }
        #expect(try await HierarchyTests.sync(s).status == 0)
        #expect(try await Self.release(lookedUp, to: b).secret.constantTimeEquals(lookedUpSecret))  // S now holds a copy

        let beforeP = try await Self.wrapped(atP, [lookedUp, neverAsked, shared, fromBelow])
        let beforeS = try await Self.wrapped(atS, [lookedUp, fromBelow])
        #expect(beforeP.count == 4 && beforeP.values.allSatisfy { $0.count >= 64 })
        #expect(beforeS.count == 2 && beforeS.values.allSatisfy { $0.count >= 64 })
        // The search can find what it looks for: the wrapped bytes are there now.
        for (_, bytes) in beforeP { #expect(try await Self.databaseHolds(atP, bytes)) }

        // Deletion needs a revoked (or moved) device; an active one is refused with a hint.
        let active = try await p.admin(["device", "delete", e.clientID.description])
        #expect(active.status != 0 && active.stderr.contains("revoke it first"), "\(active.text)")
        #expect(try await p.admin(["device", "revoke", a.clientID.description]).status == 0)
        let deleted = try await p.admin(["device", "delete", a.clientID.description])
        #expect(deleted.status == 0 && deleted.stdoutText.contains("3 keys will be destroyed after"), "\(deleted.text)")
        #expect(try await s.admin(["device", "revoke", c.clientID.description]).status == 0)
        #expect(try await s.admin(["device", "delete", c.clientID.description]).status == 0)
        let listed = try await p.admin(["device", "list", "--json"])
        let clients = try WireFormat.decoder().decode([ClientInfo].self, from: listed.stdout)
        #expect(clients.first { $0.id == a.clientID }?.state == .deleted)
        #expect(clients.first { $0.id == a.clientID }?.deleted != nil)

        // After the retention: A's unreferenced keys at P, C's key at S. E's drive keeps the shared key.
        try await Self.waitUntilDestroyed(p, [lookedUp, neverAsked])
        try await Self.waitUntilDestroyed(s, [fromBelow])
        try await Task.sleep(for: .seconds(2))  // two more sweeps: the referenced key stays
        #expect(try await Self.keys(p)[shared]?.destroyed == nil)

        // One push carries C's destruction up and brings A's down.
        #expect(try await HierarchyTests.sync(s).status == 0)
        #expect(try await Self.keys(p)[fromBelow]?.destroyed != nil)
        #expect(try await Self.keys(s)[lookedUp]?.destroyed != nil)
        #expect(try await p.admin(["key", "list"]).stdoutText.contains("\(lookedUp)\tfile\tdestroyed"))

        // key_destroyed everywhere: at P, at S from its own record, and through the hierarchy for a key S never held.
        for id in [lookedUp, neverAsked, fromBelow] { await expectCode("key_destroyed") { _ = try await Self.release(id, to: e) } }
        for id in [lookedUp, fromBelow, neverAsked] { await expectCode("key_destroyed") { _ = try await Self.release(id, to: b) } }
        #expect(try await Self.release(shared, to: e).secret.constantTimeEquals(sharedSecret))
        let sAudit = try await s.auditEntries()
        #expect(
            sAudit.contains {
                $0.action == .release && $0.keyID == neverAsked && $0.result == .refused(.keyDestroyed) && $0.detail.contains("the primary answered")
            })

        // The wrapped secrets are gone from the databases; the kept key's are still there.
        let afterP = try await Self.wrapped(atP, [lookedUp, neverAsked, fromBelow])
        #expect(afterP.count == 3 && afterP.values.allSatisfy(\.isEmpty))
        for id in [lookedUp, neverAsked, fromBelow] { #expect(try await !Self.databaseHolds(atP, beforeP[id]!), "\(id) at P") }
        for id in [lookedUp, fromBelow] { #expect(try await !Self.databaseHolds(atS, beforeS[id]!), "\(id) at S") }
        #expect(try await Self.databaseHolds(atP, beforeP[shared]!))

        // Every destruction is audited: the retention at P and at S, the push, the feed.
        let pAudit = try await p.auditEntries().filter { $0.action == .keyDestroy && $0.result == .ok }
        #expect(Set(pAudit.map(\.keyID)) == [lookedUp, neverAsked, fromBelow])
        #expect(pAudit.filter { $0.detail.hasPrefix("retention: device \(a.clientID)") }.count == 2)
        #expect(pAudit.contains { $0.keyID == fromBelow && $0.actor.description.hasPrefix("secondary:") })
        let sDestroyed = sAudit.filter { $0.action == .keyDestroy && $0.result == .ok }
        #expect(sDestroyed.contains { $0.keyID == fromBelow && $0.detail.hasPrefix("retention") })
        #expect(sDestroyed.contains { $0.keyID == lookedUp && $0.detail.contains("destroyed above") })

        // On purpose, with a reason: the referenced key goes too, at once.
        let destroy = try await p.admin(["key", "destroy", shared.description, "--reason", "ticket 17: drive stolen"])
        #expect(destroy.status == 0 && destroy.stdoutText.contains("destroyed \(shared)"), "\(destroy.text)")
        await expectCode("key_destroyed") { _ = try await Self.release(shared, to: e) }
        #expect(try await !Self.databaseHolds(atP, beforeP[shared]!))
        #expect(
            try await p.auditEntries().contains {
                $0.action == .keyDestroy && $0.keyID == shared && $0.actor.description.hasPrefix("admin:")
                    && $0.detail == "reason: ticket 17: drive stolen"
            })
        let noReason = try await p.admin(["key", "destroy", neverAsked.description, "--reason", ""])
        #expect(noReason.status != 0)
    }
}
