import Foundation
import KeyholdClient
import KeyholdCore
import KeyholdProtocol
import KeyholdTestSupport
import Testing

/// `keyhold reassign` with real servers and agents: a device moves to another server and keeps
/// access to its data; a failure before the switch leaves it with its old server, working.
// 20 minutes: its crash loops run beside every other suite of `make test` on two cores and took
// up to 10 there; the limit is a guard against a hang, not a speed goal (those are in make bench).
@Suite(.timeLimit(.minutes(20))) struct ReassignTests {
    static func token(_ server: ServerProcess, uses: Int = 1, ttl: String = "1h") async throws -> String {
        try await server.token(uses: uses, ttl: ttl).text
    }

    static func clients(_ server: ServerProcess) async throws -> [[String: Any]] {
        (try JSONSerialization.jsonObject(with: try await server.admin(["device", "list", "--json"]).stdout) as? [[String: Any]]) ?? []
    }

    /// Restarts `agent` with an empty key cache, so every key must come from its server.
    static func restartWithoutCache(_ agent: AgentProcess) async throws {
        await agent.stop()
        try agent.clearCache()
        try await agent.start()
    }

    @Test func aDeviceMovesToAServerOutsideTheHierarchyAndKeepsItsData() async throws {
        let s1 = try await ServerProcess(name: "move-s1")
        let s2 = try await ServerProcess(name: "move-s2")
        try await s1.start()
        defer { s1.terminate() }
        try await s2.start()
        defer { s2.terminate() }
        let d1 = try await AgentIntegrationTests.enrolledAgent(s1, name: "D1")
        defer { d1.terminate() }
        let other = try await AgentIntegrationTests.enrolledAgent(s1, name: "other")
        defer { other.terminate() }
        let oldID = try #require(try await AgentIntegrationTests.status(d1)["device_id"] as? String)

        // D1 holds a key it created and a key it fetched (another device's file).
        let mine = try AgentIntegrationTests.write(d1, "mine.txt", 50_000)
        #expect(try await d1.keyhold(["file", "encrypt", "mine.txt", "-o", "mine.khf"]).status == 0)
        let theirs = try AgentIntegrationTests.write(other, "theirs.txt", 20_000)
        #expect(try await other.keyhold(["file", "encrypt", "theirs.txt", "-o", "theirs.khf"]).status == 0)
        try FileManager.default.copyItem(atPath: other.path("theirs.khf"), toPath: d1.path("theirs.khf"))
        #expect(try await d1.keyhold(["file", "decrypt", "theirs.khf", "-o", "theirs.txt"]).status == 0)
        // …and a drive key (a drive image it formatted).
        let drive = try DriveTests.image(d1, "drive.img")
        #expect(try await d1.keyhold(["drive", "encrypt", drive]).status == 0)
        #expect(try await AgentIntegrationTests.status(d1)["cached_keys"] as? Int == 3)

        // A dry run checks the new server and lists what would move; it uses nothing of the token.
        let token = try await Self.token(s2, uses: 1)
        let dry = try await d1.keyhold(["reassign", token, "--dry-run"])
        #expect(dry.status == 0, "\(dry.stderr)")
        #expect(dry.stdoutText.contains("would move") && dry.stdoutText.contains("re-escrowing 3 keys"), "\(dry.stdoutText)")
        #expect(try await AgentIntegrationTests.status(d1)["server_address"] as? String == s1.api)
        #expect(try await Self.clients(s2).isEmpty)

        let moved = try await d1.keyhold(["reassign", token])
        #expect(moved.status == 0, "\(moved.stderr)")
        #expect(moved.stdoutText.contains("Re-escrowed 3 keys (3 new to that server, 0 already there)"), "\(moved.stdoutText)")
        #expect(moved.stdoutText.contains("marked this device as moved"), "\(moved.stdoutText)")
        let status = try await AgentIntegrationTests.status(d1)
        #expect(status["server_address"] as? String == s2.api)
        #expect(status["device_id"] as? String != oldID)
        // Both servers' device lists show the change; the new server's audit shows the re-escrow.
        #expect(try await Self.clients(s1).first { $0["id"] as? String == oldID }?["state"] as? String == "moved")
        #expect(try await Self.clients(s2).first { $0["id"] as? String == status["device_id"] as? String }?["state"] as? String == "active")
        let reescrows = try await s2.auditEntries().filter { $0.action == .reescrow }
        #expect(reescrows.count == 3 && reescrows.allSatisfy { $0.detail.contains("reassigned from server") })
        // The old certificate is refused at the old server now, with a hint naming the move.
        #expect(try await s1.admin(["audit"]).stdoutText.contains("device_moved"))

        // S1 stops for good; with an empty cache, D1's data opens through S2 alone.
        await s1.stop()
        try await Self.restartWithoutCache(d1)
        for (name, plain) in [("mine", mine), ("theirs", theirs)] {
            let r = try await d1.keyhold(["file", "decrypt", "\(name).khf", "-o", "\(name).back", "--force"])
            #expect(r.status == 0, "\(name): \(r.stderr)")
            #expect(try Data(contentsOf: URL(fileURLWithPath: d1.path("\(name).back"))) == plain)
        }
        let verified = try await d1.keyhold(["drive", "unlock", drive, "--verify-only"])
        #expect(verified.status == 0, "\(verified.stderr)")
        #expect(try await s2.auditEntries().filter { $0.action == .release && $0.result.description == "ok" }.count == 3)
        // New files are escrowed with S2.
        #expect(try await d1.keyhold(["file", "encrypt", "mine.txt", "-o", "new.khf"]).status == 0)
    }

    @Test func insideTheHierarchyOtherKeysComeThroughIt() async throws {
        let t = try await HierarchyTests.server("RT")
        let s1 = try await HierarchyTests.server("RS1")
        let s2 = try await HierarchyTests.server("RS2")
        defer { for s in [s2, s1, t] { s.terminate() } }
        try await HierarchyTests.join(s1, to: t)
        try await HierarchyTests.join(s2, to: t)
        let d1 = try await AgentIntegrationTests.enrolledAgent(s1, name: "HD1")
        defer { d1.terminate() }
        let d0 = try await AgentIntegrationTests.enrolledAgent(s1, name: "HD0")
        defer { d0.terminate() }
        let mine = try AgentIntegrationTests.write(d1, "mine.txt", 10_000)
        #expect(try await d1.keyhold(["file", "encrypt", "mine.txt", "-o", "mine.khf"]).status == 0)
        // D0's file: D1 never held its key.
        let theirs = try AgentIntegrationTests.write(d0, "theirs.txt", 10_000)
        #expect(try await d0.keyhold(["file", "encrypt", "theirs.txt", "-o", "theirs.khf"]).status == 0)
        try FileManager.default.copyItem(atPath: d0.path("theirs.khf"), toPath: d1.path("theirs.khf"))
        #expect(try await HierarchyTests.sync(s1).status == 0)

        let moved = try await d1.keyhold(["reassign", try await Self.token(s2)])
        #expect(moved.status == 0, "\(moved.stderr)")
        try await Self.restartWithoutCache(d1)
        for (name, plain) in [("mine", mine), ("theirs", theirs)] {
            let r = try await d1.keyhold(["file", "decrypt", "\(name).khf", "-o", "\(name).back"])
            #expect(r.status == 0, "\(name): \(r.stderr)")
            #expect(try Data(contentsOf: URL(fileURLWithPath: d1.path("\(name).back"))) == plain)
        }
        // D1's own key was re-escrowed to S2; D0's came from T through the hierarchy.
        let s2Audit = try await s2.auditEntries()
        #expect(s2Audit.contains { $0.action == .reescrow })
        #expect(s2Audit.contains { $0.action == .obtain && $0.detail == "through the hierarchy" })
        #expect(
            try await t.auditEntries().contains {
                $0.action == .release && $0.route.description.hasPrefix("secondary:") && $0.result.description == "ok"
            })
    }

    @Test func killingTheNewServerMidReescrowLeavesTheDeviceWithItsOldServer() async throws {
        let s1 = try await ServerProcess(name: "kill-s1")
        let s2 = try await ServerProcess(name: "kill-s2")
        try await s1.start()
        defer { s1.terminate() }
        try await s2.start()
        defer { s2.terminate() }
        let d1 = try await AgentIntegrationTests.enrolledAgent(s1, name: "KD1")
        defer { d1.terminate() }
        // Fill D1's cache with 1500 keys escrowed by another device of S1.
        let ids = try await ExportImportTests.escrowKeys(s1, count: 1500)
        for id in ids {
            guard case .key = try await d1.send(.key(id)) else { throw TestFailure("key fetch failed for \(id)") }
        }
        #expect(try await AgentIntegrationTests.status(d1)["cached_keys"] as? Int == 1500)
        let identityBefore = try Data(contentsOf: d1.stateDir.appendingPathComponent("identity.json"))

        let token = try await Self.token(s2, uses: 1)
        // Killed by a watcher process once S2 committed 50 re-escrows (of 1500).
        let watcher = try KillWatcher(
            database: s2.dataDir.appendingPathComponent("keyhold.sqlite").path,
            query: "SELECT COUNT(*) FROM audit WHERE action = 'reescrow'", threshold: 50, pid: s2.pid
        )
        let attempt = Task.detached { try await d1.keyhold(["reassign", token]) }
        #expect(try await watcher.wait(), "the watcher never saw 50 re-escrows")
        await s2.kill9()
        let failed = try await attempt.value
        #expect(failed.status != 0)
        #expect(failed.stderr.hasPrefix("keyhold: error: re-escrow to the new server failed after "), "\(failed.stderr)")
        #expect(
            failed.stderr.contains("stays with server") && failed.stderr.contains("\nhint: ") && failed.stderr.contains("again with the same token"),
            "\(failed.stderr)")
        // Still with S1, fully working.
        #expect(try Data(contentsOf: d1.stateDir.appendingPathComponent("identity.json")) == identityBefore)
        #expect(try await AgentIntegrationTests.status(d1)["server_address"] as? String == s1.api)
        let plain = try AgentIntegrationTests.write(d1, "after.txt", 1000)
        #expect(try await d1.keyhold(["file", "encrypt", "after.txt", "-o", "after.khf"]).status == 0)
        #expect(try await d1.keyhold(["file", "decrypt", "after.khf", "-o", "after.back"]).status == 0)
        #expect(try Data(contentsOf: URL(fileURLWithPath: d1.path("after.back"))) == plain)

        // S2 back; the same (single-use) token completes the move: the agent resumes.
        try await s2.start()
        let done = try await d1.keyhold(["reassign", token])
        #expect(done.status == 0, "\(done.stderr)")
        #expect(done.stdoutText.contains("Re-escrowed 1501 keys"), "\(done.stdoutText)")
        #expect(try await AgentIntegrationTests.status(d1)["server_address"] as? String == s2.api)
        #expect(try await s2.keyCount() == 1501)
        #expect(!FileManager.default.fileExists(atPath: d1.stateDir.appendingPathComponent("reassign-pending.json").path))
    }

    @Test func aBadOrExpiredTokenChangesNothing() async throws {
        let s1 = try await ServerProcess(name: "bad-s1")
        let s2 = try await ServerProcess(name: "bad-s2")
        try await s1.start()
        defer { s1.terminate() }
        try await s2.start()
        defer { s2.terminate() }
        let d1 = try await AgentIntegrationTests.enrolledAgent(s1, name: "BD1")
        defer { d1.terminate() }
        #expect(try await d1.keyhold(["file", "encrypt", "/etc/hostname", "-o", "h.khf"]).status == 0)
        let identity = d1.stateDir.appendingPathComponent("identity.json")
        let before = try Data(contentsOf: identity)
        let expired = try await Self.token(s2, ttl: "1s")
        try await Task.sleep(for: .seconds(2))
        var forged = try await s2.token()
        forged.caFingerprint = String(repeating: "ab", count: 32)
        let cases: [(String, String)] = [
            ("kh1.garbage", "token"),
            (forged.text, "not the one the token names"),
            (expired, "expired"),
            (try await Self.token(s1), "already with the server"),
        ]
        for (token, text) in cases {
            let r = try await d1.keyhold(["reassign", token])
            #expect(r.status != 0)
            #expect(r.stderr.hasPrefix("keyhold: error: ") && r.stderr.contains(text) && r.stderr.contains("\nhint: "), "\(r.stderr)")
            #expect(try Data(contentsOf: identity) == before)
            #expect(!FileManager.default.fileExists(atPath: d1.stateDir.appendingPathComponent("reassign-pending.json").path))
            #expect(try await AgentIntegrationTests.status(d1)["server_address"] as? String == s1.api)
        }
        #expect(try await Self.clients(s2).isEmpty)
        #expect(try await d1.keyhold(["file", "decrypt", "h.khf", "-o", "h.txt"]).status == 0)
    }
}
