import Crypto
import Foundation
import KeyholdClient
import KeyholdCore
import KeyholdProtocol
import KeyholdTestSupport
import Testing

/// `keyhold drive` on image files with real servers and agents, checked with the real `cryptsetup`
/// (header work needs no device-mapper; activation is tested in the VM: Tests/VM).
@Suite(.timeLimit(.minutes(10))) struct DriveTests {
    static func image(_ agent: AgentProcess, _ name: String, mib: Int = 40) throws -> String {
        let path = agent.path(name)
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try handle.truncate(atOffset: UInt64(mib) << 20)
        try handle.close()
        return path
    }

    static func sha(_ path: String) throws -> String {
        SHA256.hash(data: try Data(contentsOf: URL(fileURLWithPath: path))).map { String(format: "%02x", $0) }.joined()
    }

    static func tool(_ args: [String]) async throws -> RunResult {
        try await run(URL(fileURLWithPath: "/usr/sbin/cryptsetup"), args)
    }

    /// The drive's escrowed key, fetched from `server` by another enrolled device (as a second
    /// machine would), written as a raw 32-byte key file.
    static func escrowedKeyFile(_ server: ServerProcess, keyID: String, to path: String) async throws {
        let device = try await server.enrollDevice("key-fetcher")
        let response = try await using(try device.client()) { try await $0.get(APIPath.key(keyID), as: KeyMaterial.self) }
        try response.secret.withUnsafeBytes { Data($0) }.write(to: URL(fileURLWithPath: path))
    }

    static func info(_ agent: AgentProcess, _ image: String) async throws -> [String: Any] {
        (try JSONSerialization.jsonObject(with: try await agent.keyhold(["drive", "info", image, "--json"]).stdout) as? [String: Any]) ?? [:]
    }

    @Test func formatKeyslotAndTokenAreWhatCryptsetupSees() async throws {
        let server = try await ServerProcess(name: "drive-s")
        try await server.start()
        defer { server.terminate() }
        let agent = try await AgentIntegrationTests.enrolledAgent(server, name: "drive-d")
        defer { agent.terminate() }
        let image = try Self.image(agent, "stick.img")
        let passphrase = agent.path("recovery.txt")
        try Data("correct horse battery".utf8).write(to: URL(fileURLWithPath: passphrase))

        let r = try await agent.keyhold(["drive", "encrypt", image, "--recovery-passphrase-file", passphrase])
        #expect(r.status == 0, "\(r.stderr)")
        let info = try await Self.info(agent, image)
        let token = try #require(info["keyhold"] as? [String: Any])
        let keyID = try #require(token["key_id"] as? String)
        let status = try await AgentIntegrationTests.status(agent)
        #expect(token["origin_server_id"] as? String == status["server_id"] as? String)
        #expect(token["server_address"] as? String == server.api)
        #expect(info["keyslots"] as? [Int] == [0, 1])
        #expect(info["cipher"] as? String == "aes-xts-plain64" && info["volume_key_bits"] as? Int == 512)
        // Escrowed before the drive was touched: the server has the key, as a drive key.
        #expect(try await server.admin(["key", "list"]).stdoutText.contains("\(keyID)\tdrive"))

        // cryptsetup's own view.
        let dump = try await Self.tool(["luksDump", image]).stdoutText
        #expect(dump.contains("Version:       \t2"))
        #expect(dump.contains("0: keyhold"), "\(dump)")
        #expect(dump.contains("PBKDF:      pbkdf2") && dump.contains("Iterations: 1000"), "\(dump)")
        #expect(dump.contains("PBKDF:      argon2id"), "the recovery keyslot uses argon2id")
        let exported = try await Self.tool(["token", "export", "--token-id", "0", image]).stdoutText
        let json = try #require(try JSONSerialization.jsonObject(with: Data(exported.utf8)) as? [String: Any])
        #expect(json["type"] as? String == "keyhold" && json["key_id"] as? String == keyID && json["keyslots"] as? [String] == ["0"])

        // The key the server releases opens the drive in cryptsetup; a wrong one does not.
        let keyFile = agent.path("escrowed.key")
        try await Self.escrowedKeyFile(server, keyID: keyID, to: keyFile)
        #expect(try await Self.tool(["open", "--test-passphrase", "--key-file", keyFile, "--key-slot", "0", image]).status == 0)
        #expect(try await Self.tool(["open", "--test-passphrase", "--key-file", passphrase, "--key-slot", "1", image]).status == 0)
        try Data(SecureRandom.bytes(count: 32)).write(to: URL(fileURLWithPath: keyFile))
        #expect(try await Self.tool(["open", "--test-passphrase", "--key-file", keyFile, image]).status != 0)

        // The agent's own check, and the server's audit of the release.
        let verified = try await agent.keyhold(["drive", "unlock", image, "--verify-only"])
        #expect(verified.status == 0 && verified.stdoutText.hasPrefix("verified: the escrowed key \(keyID) opens keyslot 0"), "\(verified.stderr)")
    }

    @Test func existingDataIsRefusedWithoutEraseAndEscrowFailureTouchesNothing() async throws {
        let server = try await ServerProcess(name: "drive-refuse")
        try await server.start()
        defer { server.terminate() }
        let agent = try await AgentIntegrationTests.enrolledAgent(server, name: "drive-r")
        defer { agent.terminate() }
        let ext4 = try Self.image(agent, "ext4.img")
        #expect(try await run(URL(fileURLWithPath: "/usr/sbin/mkfs.ext4"), ["-q", "-F", ext4]).status == 0)
        let table = try Self.image(agent, "table.img")
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: table))
        try handle.seek(toOffset: 446)
        var entry: [UInt8] = [0, 0, 0, 0, 0x83, 0, 0, 0]
        withUnsafeBytes(of: UInt32(2048).littleEndian) { entry += $0 }
        withUnsafeBytes(of: UInt32(40_000).littleEndian) { entry += $0 }
        try handle.write(contentsOf: entry)
        try handle.seek(toOffset: 510)
        try handle.write(contentsOf: [0x55, 0xAA])
        try handle.close()
        for (image, what) in [(ext4, "a ext4 file system"), (table, "a dos partition table")] {
            let before = try Self.sha(image)
            let r = try await agent.keyhold(["drive", "encrypt", image])
            #expect(r.status != 0 && r.stderr.contains("holds \(what)") && r.stderr.contains("--erase"), "\(r.stderr)")
            #expect(try Self.sha(image) == before)
        }
        #expect(try await server.admin(["key", "list"]).stdoutText.split(separator: "\n").count == 1, "no key was escrowed for a refused drive")
        let erased = try await agent.keyhold(["drive", "encrypt", ext4, "--erase"])
        #expect(erased.status == 0, "\(erased.stderr)")
        #expect(try await Self.info(agent, ext4)["luks"] as? Bool == true)

        // A step after formatting fails (injected after each step in turn: a full disk or a yanked
        // stick cannot be produced on demand): what was made is rolled back, the header erased.
        let recovery = agent.path("recovery.txt")
        try Data("correct horse battery".utf8).write(to: URL(fileURLWithPath: recovery))
        for (step, made) in [
            ("format", "formatting"), ("keyslot", "keyslot 0"), ("token", "keyslot 0, token 0"), ("recovery", "keyslot 0, token 0, keyslot 1"),
        ] {
            let rollback = try Self.image(agent, "rollback-\(step).img")
            let zeros = try Self.sha(rollback)
            let r = try await run(
                Paths.executable("keyhold"), ["drive", "encrypt", rollback, "--recovery-passphrase-file", recovery],
                environment: ["KEYHOLD_SOCKET": agent.socket, "KEYHOLD_TEST_FAULT": "drive-encrypt:\(step)"]
            )
            #expect(r.status != 0)
            #expect(r.stderr.contains("failed after \(made):") && r.stderr.contains("the half-made LUKS header was erased"), "\(step): \(r.stderr)")
            #expect(try Self.sha(rollback) == zeros, "after a failure at \(step) the image is back to its zeros")
            #expect(try await Self.info(agent, rollback)["luks"] as? Bool == false)
        }

        // Escrow impossible (server down): the image is not touched at all.
        await server.stop()
        let blank = try Self.image(agent, "blank.img")
        let before = try Self.sha(blank)
        let r = try await agent.keyhold(["drive", "encrypt", blank])
        #expect(r.status != 0 && r.stderr.hasPrefix("keyhold: error: the new drive key could not be escrowed"), "\(r.stderr)")
        #expect(r.stderr.contains("\nhint: "))
        #expect(try Self.sha(blank) == before)
    }

    @Test func aDriveFromD1UnlocksOnD2ThroughTheHierarchy() async throws {
        let t = try await HierarchyTests.server("DT")
        let s1 = try await HierarchyTests.server("DS1")
        let s2 = try await HierarchyTests.server("DS2")
        defer { for s in [s2, s1, t] { s.terminate() } }
        try await HierarchyTests.join(s1, to: t)
        try await HierarchyTests.join(s2, to: t)
        let d1 = try await AgentIntegrationTests.enrolledAgent(s1, name: "DD1")
        defer { d1.terminate() }
        let d2 = try await AgentIntegrationTests.enrolledAgent(s2, name: "DD2")
        defer { d2.terminate() }
        let image = try Self.image(d1, "usb.img")
        #expect(try await d1.keyhold(["drive", "encrypt", image]).status == 0)
        let copy = d2.path("usb.img")
        try FileManager.default.copyItem(atPath: image, toPath: copy)
        // Before S1's heartbeat pushed the key to T, D2 cannot get it.
        let early = try await d2.keyhold(["drive", "unlock", copy, "--verify-only"])
        #expect(early.status != 0 && early.stderr.contains("not known"), "\(early.stderr)")
        #expect(try await HierarchyTests.sync(s1).status == 0)
        let r = try await d2.keyhold(["drive", "unlock", copy, "--verify-only"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try await s2.auditEntries().contains { $0.action == .obtain })
    }

    /// Corrupted headers and foreign tokens: each has one expected outcome, and none activates anything.
    @Test func corruptedHeadersAndForeignTokens() async throws {
        let server = try await ServerProcess(name: "drive-table")
        try await server.start()
        defer { server.terminate() }
        let agent = try await AgentIntegrationTests.enrolledAgent(server, name: "drive-t")
        defer { agent.terminate() }
        let plainKey = agent.path("plain.key")
        try Data(SecureRandom.bytes(count: 32)).write(to: URL(fileURLWithPath: plainKey))

        // A good Keyhold drive to derive variants from.
        let good = try Self.image(agent, "good.img")
        #expect(try await agent.keyhold(["drive", "encrypt", good]).status == 0)
        let goodToken = try #require(try await Self.info(agent, good)["keyhold"] as? [String: Any])

        func variant(_ name: String, _ make: (String) async throws -> Void) async throws -> String {
            let path = agent.path(name)
            try FileManager.default.copyItem(atPath: good, toPath: path)
            try await make(path)
            return path
        }
        func plainLUKS(_ name: String) async throws -> String {
            let path = try Self.image(agent, name)
            let r = try await Self.tool([
                "luksFormat", "--type", "luks2", "--batch-mode", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", plainKey,
                path,
            ])
            guard r.status == 0 else { throw TestFailure("luksFormat: \(r.stderr)") }
            return path
        }
        func importToken(_ path: String, _ json: [String: Any], replacing id: Int? = nil) async throws {
            if let id { _ = try await Self.tool(["token", "remove", "--token-id", "\(id)", path]) }
            let file = agent.path("token.json")
            try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: file))
            let r = try await Self.tool(["token", "import", "--json-file", file, path])
            guard r.status == 0 else { throw TestFailure("token import: \(r.stderr)") }
        }
        func overwrite(_ path: String, at offset: UInt64, _ bytes: [UInt8]) throws {
            let h = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
            try h.seek(toOffset: offset)
            try h.write(contentsOf: bytes)
            try h.close()
        }
        var tokenWith = goodToken
        let otherKey = try await ExportImportTests.escrowKeys(server, count: 1)[0]

        let empty = try Self.image(agent, "empty.img")
        let ext4 = try Self.image(agent, "ext4.img")
        _ = try await run(URL(fileURLWithPath: "/usr/sbin/mkfs.ext4"), ["-q", "-F", ext4])
        let foreign = try await plainLUKS("foreign.img")
        try await importToken(foreign, ["type": "acme-escrow", "keyslots": ["0"], "acme": "x"])
        tokenWith["key_id"] = "not-a-uuid"
        let malformed = try await variant("malformed.img") { try await importToken($0, tokenWith, replacing: 0) }
        tokenWith = goodToken
        tokenWith["keyhold_version"] = 2
        let future = try await variant("future.img") { try await importToken($0, tokenWith, replacing: 0) }
        tokenWith = goodToken
        tokenWith["key_id"] = KeyID.random().description
        let unknownKey = try await variant("unknown.img") { try await importToken($0, tokenWith, replacing: 0) }
        tokenWith = goodToken
        tokenWith["key_id"] = otherKey.description
        let wrongKey = try await variant("wrong.img") { try await importToken($0, tokenWith, replacing: 0) }
        // LUKS2 keeps two header copies (at 0 and 16 KiB): one damaged copy is survivable.
        let onePrimary = try await variant("primary.img") { try overwrite($0, at: 4096, [UInt8](repeating: 0x41, count: 512)) }
        let bothJSON = try await variant("both.img") {
            try overwrite($0, at: 4096, [UInt8](repeating: 0x41, count: 512))
            try overwrite($0, at: 16_384 + 4096, [UInt8](repeating: 0x41, count: 512))
        }
        let noMagic = try await variant("nomagic.img") {
            try overwrite($0, at: 0, [UInt8](repeating: 0, count: 8))
            try overwrite($0, at: 16_384, [UInt8](repeating: 0, count: 8))
        }

        let cases: [(String, String, Int32, String)] = [
            ("empty image", empty, 0, "left alone: "),
            ("ext4 file system", ext4, 0, "left alone: "),
            ("plain LUKS2 with a foreign token", foreign, 0, "LUKS without a keyhold token"),
            ("plain LUKS2, no token", try await plainLUKS("notoken.img"), 0, "LUKS without a keyhold token"),
            ("keyhold token with a malformed key id", malformed, 65, "token on"),
            ("keyhold token of a future version", future, 65, "has version 2"),
            ("keyhold token naming an unknown key", unknownKey, 66, "not known"),
            ("keyhold token naming another key", wrongKey, 65, "no longer opens keyslot"),
            ("primary header copy damaged", onePrimary, 0, "verified: "),
            ("both header copies damaged", bothJSON, 74, "keyhold: error: "),
            ("both magics erased", noMagic, 0, "left alone: "),
        ]
        for (name, path, status, text) in cases {
            let r = try await agent.keyhold(["drive", "unlock", path, "--verify-only"])
            let output = r.stdoutText + r.stderr
            #expect(r.status == status, "\(name): \(output)")
            #expect(output.contains(text), "\(name): \(output)")
            if status != 0 { #expect(r.stderr.contains("\nhint: "), "\(name): \(r.stderr)") }
        }
    }
}
