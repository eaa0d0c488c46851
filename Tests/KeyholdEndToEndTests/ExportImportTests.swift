import Foundation
import KeyholdClient
import KeyholdCore
import KeyholdProtocol
import KeyholdTestSupport
import Testing

/// `keyhold-server key export|import` between real servers; the real `age` tool checks the file
/// format in Tests/python/test_export_interop.py.
@Suite(.timeLimit(.minutes(10))) struct ExportImportTests {
    static let password = "a long export passphrase"

    static func passwordFile(_ server: ServerProcess, _ text: String = password) async throws -> String {
        let path = server.dataDir.appendingPathComponent("../export-password-\(UUID().uuidString.prefix(6))").standardizedFileURL.path
        try Data((text + "\n").utf8).write(to: URL(fileURLWithPath: path))
        return path
    }

    /// Escrows `count` extra keys through a device's real API (like agents do).
    static func escrowKeys(_ server: ServerProcess, count: Int) async throws -> [KeyID] {
        let device = try await server.enrollDevice("bulk")
        return try await using(try device.client()) { client in
            var ids: [KeyID] = []
            for i in 0..<count {
                let (record, _, request) = newKey(device, label: "bulk \(i)")
                _ = try await client.put(APIPath.key(record.id.description), request, as: EscrowResponse.self)
                ids.append(record.id)
            }
            return ids
        }
    }

    @Test func keysMoveToASeparateServerAndItsDevicesOpenTheFiles() async throws {
        let s1 = try await ServerProcess(name: "export-s1")
        let s3 = try await ServerProcess(name: "export-s3")
        try await s1.start()
        defer { s1.terminate() }
        try await s3.start()
        defer { s3.terminate() }
        let d1 = try await AgentIntegrationTests.enrolledAgent(s1, name: "d1")
        defer { d1.terminate() }
        let d3 = try await AgentIntegrationTests.enrolledAgent(s3, name: "d3")
        defer { d3.terminate() }

        let plain = try AgentIntegrationTests.write(d1, "plan.txt", 200_000)
        #expect(try await d1.keyhold(["file", "encrypt", "plan.txt", "-o", "plan.khf"]).status == 0)
        let bulk = try await Self.escrowKeys(s1, count: 300)
        // Before the import, D3's server does not know the key.
        try FileManager.default.copyItem(atPath: d1.path("plan.khf"), toPath: d3.path("plan.khf"))
        let refused = try await d3.keyhold(["file", "decrypt", "plan.khf", "-o", "plan.txt"])
        #expect(refused.status != 0 && refused.stderr.contains("not known"), "\(refused.stderr)")

        let file = s1.dataDir.appendingPathComponent("../s1-all.age").standardizedFileURL.path
        let export = try await s1.admin(["key", "export", "-o", file, "--all", "--password-file", try await Self.passwordFile(s1)])
        #expect(export.status == 0, "\(export.stderr)")
        #expect(export.stdoutText.hasPrefix("Exported 301 keys (all keys)"), "\(export.stdoutText)")
        let bytes = try Data(contentsOf: URL(fileURLWithPath: file))
        #expect(String(decoding: bytes.prefix(32), as: UTF8.self).hasPrefix("age-encryption.org/v1\n-> scrypt "))
        #expect(try FileManager.default.attributesOfItem(atPath: file)[.posixPermissions] as? Int == 0o600)
        // The file holds no key material in the clear.
        let exported = try await s1.auditEntries().filter { $0.action == .export }
        #expect(exported.count == 301)
        #expect(Set(exported.compactMap(\.keyID)).isSuperset(of: bulk))
        #expect(try await s1.auditEntries().last?.action == .exportFile)

        let imported = try await s3.admin(["key", "import", file, "--password-file", try await Self.passwordFile(s3)])
        #expect(imported.status == 0, "\(imported.stderr)")
        #expect(imported.stdoutText.contains("Imported 301 keys from \(file): 301 new, 0 already present"), "\(imported.stdoutText)")
        #expect(try await s3.keyCount() == 301)
        let s3Audit = try await s3.auditEntries()
        #expect(s3Audit.filter { $0.action == .`import` && $0.result.description == "ok" }.count == 301)
        #expect(s3Audit.last?.action == .importFile && s3Audit.last?.detail.hasPrefix("301 keys: 301 inserted") == true)
        let list = try await s3.admin(["key", "list", "--json"]).stdoutText
        #expect(list.contains("\"imported\""))

        // D3, a device of S3 that never met S1, opens D1's file.
        let opened = try await d3.keyhold(["file", "decrypt", "plan.khf", "-o", "plan.txt"])
        #expect(opened.status == 0, "\(opened.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: d3.path("plan.txt"))) == plain)

        // Importing again changes nothing but says so.
        let again = try await s3.admin(["key", "import", file, "--password-file", try await Self.passwordFile(s3)])
        #expect(again.stdoutText.contains("0 new, 301 already present"), "\(again.stdoutText)\(again.stderr)")
        #expect(try await s3.keyCount() == 301)

        // Selections: named keys, a device's keys, keys since a time.
        let two = s1.dataDir.appendingPathComponent("../two.age").standardizedFileURL.path
        let named = try await s1.admin([
            "key", "export", "-o", two, "--key", bulk[0].description, bulk[1].description, "--password-file", try await Self.passwordFile(s1),
        ])
        #expect(named.stdoutText.hasPrefix("Exported 2 keys"), "\(named.stdoutText)\(named.stderr)")
        let d1ID = try #require(try await AgentIntegrationTests.status(d1)["device_id"] as? String)
        let mine = s1.dataDir.appendingPathComponent("../mine.age").standardizedFileURL.path
        #expect(
            try await s1.admin(["key", "export", "-o", mine, "--device", d1ID, "--password-file", try await Self.passwordFile(s1)]).stdoutText
                .hasPrefix("Exported 1 key "))
        let future = s1.dataDir.appendingPathComponent("../future.age").standardizedFileURL.path
        #expect(
            try await s1.admin(["key", "export", "-o", future, "--since", "2099-01-01T00:00:00Z", "--password-file", try await Self.passwordFile(s1)])
                .stdoutText.hasPrefix("Exported 0 keys"))

        // Refused before anything is written: a short password, no selection, an unknown key, an existing file.
        let refusals: [([String], String)] = [
            (
                ["-o", s1.dataDir.appendingPathComponent("../x.age").path, "--all", "--password-file", try await Self.passwordFile(s1, "short")],
                "shorter than 8"
            ),
            (["-o", s1.dataDir.appendingPathComponent("../x.age").path, "--password-file", try await Self.passwordFile(s1)], "say which keys"),
            (
                [
                    "-o", s1.dataDir.appendingPathComponent("../x.age").path, "--key", KeyID.random().description, "--password-file",
                    try await Self.passwordFile(s1),
                ], "not in this repository"
            ),
            (["-o", file, "--all", "--password-file", try await Self.passwordFile(s1)], "already exists"),
        ]
        for (args, text) in refusals {
            let r = try await s1.admin(["key", "export"] + args)
            #expect(
                r.status != 0 && r.stderr.hasPrefix("keyhold-server: error: ") && r.stderr.contains(text) && r.stderr.contains("\nhint: "),
                "\(r.stderr)")
        }
        #expect(!FileManager.default.fileExists(atPath: s1.dataDir.appendingPathComponent("../x.age").path))
    }

    /// Wrong password, every class of truncation, flipped bits and a conflicting key: each import is
    /// refused with a clear error, and the key count and the audit trail are unchanged.
    @Test func refusedImportsChangeNothing() async throws {
        let s1 = try await ServerProcess(name: "refuse-s1")
        let s3 = try await ServerProcess(name: "refuse-s3")
        try await s1.start()
        defer { s1.terminate() }
        try await s3.start()
        defer { s3.terminate() }
        let ids = try await Self.escrowKeys(s1, count: 500)  // ~160 KiB of JSON: three age chunks
        let file = s1.dataDir.appendingPathComponent("../refuse.age").standardizedFileURL.path
        let export = try await s1.admin(["key", "export", "-o", file, "--all", "--password-file", try await Self.passwordFile(s1)])
        #expect(export.status == 0, "\(export.stderr)")
        let good = [UInt8](try Data(contentsOf: URL(fileURLWithPath: file)))
        let headerEnd = try #require(good.firstRange(of: Array("\n--- ".utf8))).upperBound + 44
        #expect(good.count > headerEnd + 16 + 2 * 65_552, "the export spans several chunks")

        // S3 already holds one of the ids with another secret: the whole import must be refused.
        let device = try await s3.enrollDevice("other")
        try await using(try device.client()) { client in
            var (record, _, request) = newKey(device, label: "same id, other secret")
            record.id = ids[250]
            request.key.record = record
            _ = try await client.put(APIPath.key(record.id.description), request, as: EscrowResponse.self)
        }
        let countBefore = try await s3.keyCount()
        let auditBefore = try await s3.auditEntries()

        func attempt(_ bytes: [UInt8], password: String) async throws -> RunResult {
            let path = s3.dataDir.appendingPathComponent("../attempt.age").standardizedFileURL.path
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            return try await s3.admin(["key", "import", path, "--password-file", try await Self.passwordFile(s3, password)])
        }
        func flipped(_ offset: Int) -> [UInt8] {
            var b = good
            b[offset] ^= 0x04
            return b
        }
        let cases: [(String, [UInt8], String, String)] = [
            ("wrong password", good, "another passphrase", "does not open"),
            ("cut in the header", Array(good.prefix(40)), Self.password, "truncated"),
            ("cut before the nonce ends", Array(good.prefix(headerEnd + 8)), Self.password, "truncated"),
            ("cut inside a chunk", Array(good.prefix(headerEnd + 16 + 30_000)), Self.password, "failed authentication"),
            ("cut at a chunk boundary", Array(good.prefix(headerEnd + 16 + 65_552)), Self.password, "truncated"),
            ("last tag cut", Array(good.dropLast(1)), Self.password, "failed authentication"),
            ("flipped bit in the stanza type", flipped(26), Self.password, "not a password"),
            ("flipped bit in the MAC", flipped(headerEnd - 20), Self.password, "MAC"),
            ("flipped bit in the payload", flipped(headerEnd + 16 + 70_000), Self.password, "failed authentication"),
            ("appended byte", good + [0], Self.password, "failed authentication"),
            ("conflicting key", good, Self.password, ids[250].description),
        ]
        for (name, bytes, password, text) in cases {
            let r = try await attempt(bytes, password: password)
            #expect(r.status != 0, "\(name) was accepted")
            #expect(r.stderr.hasPrefix("keyhold-server: error: ") && r.stderr.contains("\nhint: "), "\(name): \(r.stderr)")
            #expect(r.stderr.contains(text), "\(name): \(r.stderr)")
            #expect(try await s3.keyCount() == countBefore, "\(name) changed the key count")
            #expect(try await s3.auditEntries() == auditBefore, "\(name) changed the audit trail")
        }
        #expect(!s3.log().contains(Self.password), "the password reached the log")
    }
}
