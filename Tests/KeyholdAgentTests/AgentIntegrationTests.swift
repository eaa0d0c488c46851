import Foundation
import KeyholdClient
import KeyholdCore
import KeyholdProtocol
import KeyholdTestSupport
import Testing

/// Real keyhold-server and keyhold-agent processes on loopback, driven through the real `keyhold`.
@Suite struct AgentIntegrationTests {
    /// A started server and an agent enrolled with it.
    static func enrolledAgent(_ server: ServerProcess, name: String = "agent", group: String = "keyhold") throws -> AgentProcess {
        let agent = try AgentProcess(name: name, group: group)
        try agent.start()
        let token = try server.admin(["token", "create"]).stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
        let r = try agent.keyhold(["enroll", token])
        guard r.status == 0 else { throw TestFailure("enroll failed: \(r.stderr)") }
        return agent
    }

    static func status(_ agent: AgentProcess) throws -> [String: Any] {
        let r = try agent.keyhold(["status", "--json"])
        return (try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any]) ?? [:]
    }

    static func write(_ agent: AgentProcess, _ name: String, _ bytes: Int) throws -> Data {
        let data = Data((0..<bytes).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 5) })
        try data.write(to: URL(fileURLWithPath: agent.path(name)))
        return data
    }

    @Test func enrollEncryptDecryptWithTheKeyEscrowedFirst() async throws {
        let server = try ServerProcess(name: "agent-s")
        try server.start()
        defer { server.stop() }
        let agent = try Self.enrolledAgent(server)
        defer { agent.stop() }
        let status = try Self.status(agent)
        #expect(status["enrolled"] as? Bool == true)
        #expect(status["server_address"] as? String == server.api)

        let plain = try Self.write(agent, "report.txt", 3_000_000)
        let enc = try agent.keyhold(["file", "encrypt", "report.txt", "-o", "report.khf"])
        #expect(enc.status == 0, "\(enc.stderr)")
        let info = try JSONSerialization.jsonObject(with: try agent.keyhold(["file", "info", "report.khf", "--json"]).stdout) as? [String: Any]
        let keyID = try #require(info?["key_id"] as? String)
        #expect(info?["origin_server_id"] as? String == status["server_id"] as? String)

        // The key is on the server, escrowed by this device, no later than the ciphertext was written.
        let escrow = try #require(try await server.auditEntries().first { $0.action == "escrow" && $0.keyID?.description == keyID })
        #expect(escrow.actor == "device:\(status["device_id"] as? String ?? "")")
        let written = try FileManager.default.attributesOfItem(atPath: agent.path("report.khf"))[.modificationDate] as? Date
        #expect(escrow.time <= (written ?? .distantPast))
        #expect(try server.admin(["key", "list"]).stdoutText.contains(keyID))

        let dec = try agent.keyhold(["file", "decrypt", "report.khf", "-o", "back.txt"])
        #expect(dec.status == 0, "\(dec.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: agent.path("back.txt"))) == plain)
        // A second file reuses the active key: no second escrow.
        _ = try Self.write(agent, "second.txt", 100)
        #expect(try agent.keyhold(["file", "encrypt", "second.txt", "-o", "second.khf"]).status == 0)
        #expect(try await server.auditEntries().filter { $0.action == "escrow" }.count == 1)
        #expect(try Self.status(agent)["cached_keys"] as? Int == 1)
    }

    @Test func serverDownNewKeyFailsAndTheInputIsUntouched() async throws {
        let server = try ServerProcess(name: "agent-down")
        try server.start()
        let agent = try Self.enrolledAgent(server)
        defer { agent.stop() }
        server.stop()
        let plain = try Self.write(agent, "doc.txt", 5000)
        let before = try FileManager.default.attributesOfItem(atPath: agent.path("doc.txt"))
        for args in [["file", "encrypt", "doc.txt", "-o", "doc.khf"], ["file", "encrypt", "doc.txt", "--in-place"]] {
            let r = try agent.keyhold(args)
            #expect(r.status != 0)
            #expect(r.stderr.hasPrefix("keyhold: error: the new file key could not be escrowed"), "\(r.stderr)")
            #expect(r.stderr.contains("\nhint: "))
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: agent.path("doc.txt"))) == plain)
        let after = try FileManager.default.attributesOfItem(atPath: agent.path("doc.txt"))
        #expect(before[.modificationDate] as? Date == after[.modificationDate] as? Date)
        #expect(!FileManager.default.fileExists(atPath: agent.path("doc.khf")))
        #expect(try Self.status(agent)["cached_keys"] as? Int == 0, "a key that was not escrowed is not kept")
    }

    @Test func serverDownCachedKeyStillDecrypts() async throws {
        let server = try ServerProcess(name: "agent-cache")
        try server.start()
        let agent = try Self.enrolledAgent(server)
        defer { agent.stop() }
        let plain = try Self.write(agent, "a.txt", 10_000)
        #expect(try agent.keyhold(["file", "encrypt", "a.txt", "-o", "a.khf"]).status == 0)
        server.stop()
        // Also after an agent restart: the cache is on disk, sealed.
        agent.stop()
        try agent.start()
        let r = try agent.keyhold(["file", "decrypt", "a.khf", "-o", "a.back"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: agent.path("a.back"))) == plain)
        // And the active key still encrypts new files.
        #expect(try agent.keyhold(["file", "encrypt", "a.txt", "-o", "b.khf"]).status == 0)
        let cache = try Data(contentsOf: agent.stateDir.appendingPathComponent("cache.sealed"))
        #expect(cache.range(of: Data("origin_server_id".utf8)) == nil, "the cache is sealed")
    }

    @Test func aSecondDeviceDecryptsTheFirstDevicesFile() async throws {
        let server = try ServerProcess(name: "agent-two")
        try server.start()
        defer { server.stop() }
        let d1 = try Self.enrolledAgent(server, name: "d1")
        defer { d1.stop() }
        let d2 = try Self.enrolledAgent(server, name: "d2")
        defer { d2.stop() }
        let plain = try Self.write(d1, "shared.txt", 20_000)
        #expect(try d1.keyhold(["file", "encrypt", "shared.txt", "-o", "shared.khf"]).status == 0)
        try FileManager.default.copyItem(atPath: d1.path("shared.khf"), toPath: d2.path("shared.khf"))
        let r = try d2.keyhold(["file", "decrypt", "shared.khf", "-o", "shared.txt"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: d2.path("shared.txt"))) == plain)
        let d2id = try Self.status(d2)["device_id"] as? String ?? ""
        #expect(try await server.auditEntries().contains { $0.action == "release" && $0.result == "ok" && $0.actor == "device:\(d2id)" })
        // A key no server knows: a clear error, no output.
        _ = try d2.keyhold(["key", "new", "-o", "foreign.json"])
        _ = try Self.write(d2, "f.txt", 10)
        _ = try d2.keyhold(["file", "encrypt", "f.txt", "-o", "f.khf", "--key-file", "foreign.json"])
        let missing = try d2.keyhold(["file", "decrypt", "f.khf", "-o", "f.out"])
        #expect(missing.status != 0)
        #expect(missing.stderr.contains("not known to this server") && missing.stderr.contains("hint: "))
        #expect(!FileManager.default.fileExists(atPath: d2.path("f.out")))
    }

    @Test func theSocketTellsUsersApart() async throws {
        let server = try ServerProcess(name: "agent-peer")
        try server.start()
        defer { server.stop() }
        // Members of 'nogroup' may use files; 'nobody' is one (primary group), 'daemon' is not.
        let agent = try Self.enrolledAgent(server, name: "peer", group: "nogroup")
        defer { agent.stop() }
        // Non-root users run a copy of keyhold they can reach.
        let bin = agent.folder.appendingPathComponent("keyhold")
        try FileManager.default.copyItem(at: Paths.executable("keyhold"), to: bin)
        func runAs(_ user: String, _ args: [String]) throws -> RunResult {
            try run(URL(fileURLWithPath: "/usr/sbin/runuser"), ["-u", user, "--", bin.path] + args,
                    in: URL(fileURLWithPath: "/tmp"), environment: ["KEYHOLD_SOCKET": agent.socket])
        }
        let outsider = try runAs("daemon", ["status"])
        #expect(outsider.status != 0)
        #expect(outsider.stderr.contains("may not 'status'") && outsider.stderr.contains("nogroup"), "\(outsider.stderr)")
        let member = try runAs("nobody", ["status"])
        #expect(member.status == 0, "\(member.stderr)")
        let enroll = try runAs("nobody", ["enroll", "kh1.x"])
        #expect(enroll.status != 0 && enroll.stderr.contains("may not 'enroll'"), "enroll is root only: \(enroll.stderr)")
    }

    @Test func badTokensLeaveNoHalfEnrolledState() async throws {
        let server = try ServerProcess(name: "agent-tokens")
        try server.start()
        defer { server.stop() }
        let agent = try AgentProcess(name: "badtok")
        try agent.start()
        defer { agent.stop() }
        var wrongCA = try server.token()
        wrongCA.caFingerprint = String(repeating: "0", count: 64)
        let expired = try server.token(ttl: "1s")
        try await Task.sleep(for: .seconds(2))
        for (token, mentions) in [("garbage", "malformed"), (wrongCA.text, "not the one the token names"), (expired.text, "expired")] {
            let r = try agent.keyhold(["enroll", token])
            #expect(r.status != 0)
            #expect(r.stderr.contains(mentions) && r.stderr.contains("\nhint: "), "\(r.stderr)")
            #expect(!FileManager.default.fileExists(atPath: agent.stateDir.appendingPathComponent("identity.json").path))
            #expect(try Self.status(agent)["enrolled"] as? Bool == false)
        }
    }

    @Test func refusesToStartWithLoosePermissions() async throws {
        let server = try ServerProcess(name: "agent-perm")
        try server.start()
        defer { server.stop() }
        let agent = try Self.enrolledAgent(server, name: "perm")
        agent.stop()
        let identity = agent.stateDir.appendingPathComponent("identity.json").path
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: identity)
        let status = try agent.start()
        #expect(status == 1)
        #expect(agent.log().contains("identity.json is accessible to other users"))
        #expect(agent.log().contains("hint: "))
    }
}
