import Foundation
import KeyholdClient
import KeyholdCore
import KeyholdProtocol
import KeyholdStorePostgres
import KeyholdTestSupport
import Testing

/// Several server processes on one PostgreSQL database: the way past one machine.
@Suite(.timeLimit(.minutes(10))) struct SharedPostgresTests {
    /// A fresh database on the test cluster (`make test` provides KEYHOLD_TEST_POSTGRES_URL; without
    /// it these tests fail rather than skip).
    static func freshDatabase() async throws -> (url: String, name: String) {
        guard let base = ProcessInfo.processInfo.environment["KEYHOLD_TEST_POSTGRES_URL"], !base.isEmpty else {
            throw TestFailure("KEYHOLD_TEST_POSTGRES_URL is not set: run 'make test' or 'scripts/test-postgres.sh swift test'")
        }
        let name = "shared_\(UUID().uuidString.prefix(8).lowercased())"
        try await PostgresRepository.createDatabase(named: name, url: base)
        return (try PostgresRepository.url(base, database: name), name)
    }

    /// `pg_dump` of the keys table of database `name` (at `url`), data only, with bytea as hex
    /// (the form a dump holds).
    static func dumpKeys(url: String, name: String) async throws -> String {
        let query = Dictionary(uniqueKeysWithValues: (URLComponents(string: url)?.queryItems ?? []).map { ($0.name, $0.value ?? "") })
        let pgBin =
            try FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql").sorted().last.map { "/usr/lib/postgresql/\($0)/bin" }
            ?? "/usr/bin"
        let dump = try await run(
            URL(fileURLWithPath: "\(pgBin)/pg_dump"),
            ["-h", query["host"] ?? "", "-U", query["user"] ?? "keyhold", "--data-only", "-t", "keys", name])
        guard dump.status == 0 else { throw TestFailure("pg_dump failed: \(dump.stderr)") }
        return dump.stdoutText
    }

    /// Two processes of one server on a fresh database, not started: B is a copy of A's data
    /// directory (same identity, CA and master key), with its own ports.
    static func twoProcesses(_ prefix: String) async throws -> (a: ServerProcess, b: ServerProcess) {
        let (url, _) = try await freshDatabase()
        let a = try await ServerProcess(name: "\(prefix)-a", database: url)
        let bDir = a.dataDir.deletingLastPathComponent().appendingPathComponent("data-b")
        try FileManager.default.copyItem(at: a.dataDir, to: bDir)
        let b = try await ServerProcess(
            name: "\(prefix)-b", binaries: Paths.binaries, dataDir: bDir, logFile: bDir.appendingPathExtension("log"), initialize: false)
        return (a, b)
    }

    @Test func twoProcessesServeOneRepository() async throws {
        let (a, b) = try await Self.twoProcesses("pg")
        try await a.start()
        defer { a.terminate() }
        try await b.start()
        defer { b.terminate() }

        // Enrolled through A, escrows through A; B releases it.
        let d1 = try await Enrollment.enroll(token: try await a.token(), name: "d1")
        let (record, secret, request) = newKey(d1)
        _ = try await using(try d1.client()) { try await $0.put(APIPath.key(record.id.description), request, as: EscrowResponse.self) }
        var d1onB = d1
        d1onB.apiAddress = b.api
        let viaB = try await using(try d1onB.client()) { try await $0.get(APIPath.key(record.id.description), as: KeyMaterial.self) }
        #expect(viaB.secret.constantTimeEquals(secret))

        // Enrolled through B (with B's token), honoured by A.
        let d2 = try await Enrollment.enroll(token: try await b.token(), name: "d2")
        var d2onA = d2
        d2onA.apiAddress = a.api
        let viaA = try await using(try d2onA.client()) { try await $0.get(APIPath.key(record.id.description), as: KeyMaterial.self) }
        #expect(viaA.record.id == record.id)

        // One audit trail: both releases are in it, whichever process served them.
        let releases = try await a.auditEntries().filter { $0.action == .release && $0.result.description == "ok" }
        #expect(Set(releases.map(\.actor)) == [.device(d1.clientID), .device(d2.clientID)])
        // A revocation through B is enforced by A at once.
        #expect(try await b.admin(["device", "revoke", d2.clientID.description]).status == 0)
        await expectCode("client_revoked") {
            _ = try await using(try d2onA.client()) { try await $0.get(APIPath.key(record.id.description), as: KeyMaterial.self) }
        }
    }

    @Test func noSecretBytesInThePostgresTable() async throws {
        let (url, name) = try await Self.freshDatabase()
        let server = try await ServerProcess(name: "pg-atrest", database: url)
        try await server.start()
        defer { server.terminate() }
        let d1 = try await server.enrollDevice()
        var secrets: [Data] = []
        for _ in 0..<10 {
            let (record, secret, request) = newKey(d1)
            secrets.append(secret.withUnsafeBytes { Data($0) })
            _ = try await using(try d1.client()) { try await $0.put(APIPath.key(record.id.description), request, as: EscrowResponse.self) }
        }
        let text = try await Self.dumpKeys(url: url, name: name)
        #expect(text.contains("COPY public.keys"))
        for secret in secrets {
            let hex = secret.map { String(format: "%02x", $0) }.joined()
            #expect(!text.contains(hex))
            #expect(!text.contains(String(hex.prefix(24))))
            #expect(!text.contains(secret.base64EncodedString()))
        }
    }
}
