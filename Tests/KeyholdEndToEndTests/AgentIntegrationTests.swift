import Foundation
import KeyholdClient
import KeyholdCore
import KeyholdProtocol
import KeyholdTestSupport
import Testing

/// Real keyhold-server and keyhold-agent processes on loopback, driven through the real `keyhold`.
@Suite(.timeLimit(.minutes(10))) struct AgentIntegrationTests {
    /// A started server and an agent enrolled with it.
    static func enrolledAgent(_ server: ServerProcess, name: String = "agent", group: String = "keyhold") async throws -> AgentProcess {
        let agent = try AgentProcess(name: name)
        try await agent.startForTest(group: group)
        let token = try await server.admin(["token", "create"]).stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
        let r = try await agent.keyhold(["enroll", token])
        guard r.status == 0 else { throw TestFailure("enroll failed: \(r.stderr)") }
        return agent
    }

    static func status(_ agent: AgentProcess) async throws -> [String: Any] {
        let r = try await agent.keyhold(["status", "--json"])
        return (try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any]) ?? [:]
    }

    static func write(_ agent: AgentProcess, _ name: String, _ bytes: Int) throws -> Data {
        let data = Data((0..<bytes).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 5) })
        try data.write(to: URL(fileURLWithPath: agent.path(name)))
        return data
    }

    @Test func enrollEncryptDecryptWithTheKeyEscrowedFirst() async throws {
        let server = try await ServerProcess(name: "agent-s")
        try await server.start()
        defer { server.terminate() }
        let agent = try await Self.enrolledAgent(server)
        defer { agent.terminate() }
        let status = try await Self.status(agent)
        #expect(status["enrolled"] as? Bool == true)
        #expect(status["server_address"] as? String == server.api)

        let plain = try Self.write(agent, "report.txt", 3_000_000)
        let enc = try await agent.keyhold(["file", "encrypt", "report.txt", "-o", "report.khf"])
        #expect(enc.status == 0, "\(enc.stderr)")
        let info = try JSONSerialization.jsonObject(with: try await agent.keyhold(["file", "info", "report.khf", "--json"]).stdout) as? [String: Any]
        let keyID = try #require(info?["key_id"] as? String)
        #expect(info?["origin_server_id"] as? String == status["server_id"] as? String)

        // The key is on the server, escrowed by this device, no later than the ciphertext was written.
        let escrow = try #require(try await server.auditEntries().first { $0.action == .escrow && $0.keyID?.description == keyID })
        #expect(escrow.actor.description == "device:\(status["device_id"] as? String ?? "")")
        let written = try FileManager.default.attributesOfItem(atPath: agent.path("report.khf"))[.modificationDate] as? Date
        #expect(escrow.time <= (written ?? .distantPast))
        #expect(try await server.admin(["key", "list"]).stdoutText.contains(keyID))

        let dec = try await agent.keyhold(["file", "decrypt", "report.khf", "-o", "back.txt"])
        #expect(dec.status == 0, "\(dec.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: agent.path("back.txt"))) == plain)
        // A second file reuses the active key: no second escrow.
        _ = try Self.write(agent, "second.txt", 100)
        #expect(try await agent.keyhold(["file", "encrypt", "second.txt", "-o", "second.khf"]).status == 0)
        #expect(try await server.auditEntries().filter { $0.action == .escrow }.count == 1)
        #expect(try await Self.status(agent)["cached_keys"] as? Int == 1)
    }

    @Test func serverDownNewKeyFailsAndTheInputIsUntouched() async throws {
        let server = try await ServerProcess(name: "agent-down")
        try await server.start()
        let agent = try await Self.enrolledAgent(server)
        defer { agent.terminate() }
        await server.stop()
        let plain = try Self.write(agent, "doc.txt", 5000)
        let before = try FileManager.default.attributesOfItem(atPath: agent.path("doc.txt"))
        for args in [["file", "encrypt", "doc.txt", "-o", "doc.khf"], ["file", "encrypt", "doc.txt", "--in-place"]] {
            let r = try await agent.keyhold(args)
            #expect(r.status != 0)
            #expect(r.stderr.hasPrefix("keyhold: error: the new file key could not be escrowed"), "\(r.stderr)")
            #expect(r.stderr.contains("\nhint: "))
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: agent.path("doc.txt"))) == plain)
        let after = try FileManager.default.attributesOfItem(atPath: agent.path("doc.txt"))
        #expect(before[.modificationDate] as? Date == after[.modificationDate] as? Date)
        #expect(!FileManager.default.fileExists(atPath: agent.path("doc.khf")))
        #expect(try await Self.status(agent)["cached_keys"] as? Int == 0, "a key that was not escrowed is not kept")
    }

    @Test func serverDownCachedKeyStillDecrypts() async throws {
        let server = try await ServerProcess(name: "agent-cache")
        try await server.start()
        let agent = try await Self.enrolledAgent(server)
        defer { agent.terminate() }
        let plain = try Self.write(agent, "a.txt", 10_000)
        #expect(try await agent.keyhold(["file", "encrypt", "a.txt", "-o", "a.khf"]).status == 0)
        await server.stop()
        // Also after an agent restart: the cache is on disk, sealed.
        await agent.stop()
        try await agent.start()
        let r = try await agent.keyhold(["file", "decrypt", "a.khf", "-o", "a.back"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: agent.path("a.back"))) == plain)
        // And the active key still encrypts new files.
        #expect(try await agent.keyhold(["file", "encrypt", "a.txt", "-o", "b.khf"]).status == 0)
        let cache = try Data(contentsOf: agent.stateDir.appendingPathComponent("cache.sealed"))
        #expect(cache.range(of: Data("origin_server_id".utf8)) == nil, "the cache is sealed")
    }

    @Test func aSecondDeviceDecryptsTheFirstDevicesFile() async throws {
        let server = try await ServerProcess(name: "agent-two")
        try await server.start()
        defer { server.terminate() }
        let d1 = try await Self.enrolledAgent(server, name: "d1")
        defer { d1.terminate() }
        let d2 = try await Self.enrolledAgent(server, name: "d2")
        defer { d2.terminate() }
        let plain = try Self.write(d1, "shared.txt", 20_000)
        #expect(try await d1.keyhold(["file", "encrypt", "shared.txt", "-o", "shared.khf"]).status == 0)
        try FileManager.default.copyItem(atPath: d1.path("shared.khf"), toPath: d2.path("shared.khf"))
        let r = try await d2.keyhold(["file", "decrypt", "shared.khf", "-o", "shared.txt"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: d2.path("shared.txt"))) == plain)
        let d2id = try await Self.status(d2)["device_id"] as? String ?? ""
        #expect(
            try await server.auditEntries().contains {
                $0.action == .release && $0.result.description == "ok" && $0.actor.description == "device:\(d2id)"
            })
        // A key no server knows: a clear error, no output.
        _ = try await d2.keyhold(["key", "new", "-o", "foreign.json"])
        _ = try Self.write(d2, "f.txt", 10)
        _ = try await d2.keyhold(["file", "encrypt", "f.txt", "-o", "f.khf", "--key-file", "foreign.json"])
        let missing = try await d2.keyhold(["file", "decrypt", "f.khf", "-o", "f.out"])
        #expect(missing.status != 0)
        #expect(missing.stderr.contains("not known to this server") && missing.stderr.contains("hint: "))
        #expect(!FileManager.default.fileExists(atPath: d2.path("f.out")))
    }

    @Test func theSocketTellsUsersApart() async throws {
        let server = try await ServerProcess(name: "agent-peer")
        try await server.start()
        defer { server.terminate() }
        // Members of 'nogroup' may use files; 'nobody' is one (primary group), 'daemon' is not.
        let agent = try await Self.enrolledAgent(server, name: "peer", group: "nogroup")
        defer { agent.terminate() }
        // Non-root users run a copy of keyhold they can reach.
        let bin = agent.folder.appendingPathComponent("keyhold")
        try FileManager.default.copyItem(at: Paths.executable("keyhold"), to: bin)
        func runAs(_ user: String, _ args: [String], program: String? = nil) async throws -> RunResult {
            // A process another test forks while the copy is being written holds it open for
            // writing until its exec ("Text file busy"): try again briefly.
            for _ in 0..<50 {
                let r = try await run(
                    URL(fileURLWithPath: "/usr/sbin/runuser"), ["-u", user, "--", program ?? bin.path] + args,
                    in: URL(fileURLWithPath: "/tmp"), environment: ["KEYHOLD_SOCKET": agent.socket])
                guard r.stderr.contains("Text file busy") else { return r }
                try await Task.sleep(for: .milliseconds(100))
            }
            Issue.record("\(bin.path) stayed busy")
            return try await run(URL(fileURLWithPath: "/bin/false"), [])
        }
        let outsider = try await runAs("daemon", ["status"])
        #expect(outsider.status != 0)
        #expect(outsider.stderr.contains("may not use the Keyhold agent") && outsider.stderr.contains("'nogroup'"), "\(outsider.stderr)")
        let member = try await runAs("nobody", ["status"])
        #expect(member.status == 0, "\(member.stderr)")
        // `keyhold enroll` says so before it asks; the agent refuses the request itself too.
        let enroll = try await runAs("nobody", ["enroll", "kh1.x"])
        #expect(enroll.status == 77 && enroll.stderr.contains("'keyhold enroll' needs root"), "enroll is root only: \(enroll.stderr)")
        let raw = try await runAs(
            "nobody",
            [
                "-c",
                "import os,socket; s=socket.socket(socket.AF_UNIX); s.connect(os.environ['KEYHOLD_SOCKET']); s.sendall(b'{\"op\":\"enroll\",\"token\":\"kh1.x\"}\\n'); print(s.makefile().readline())",
            ], program: "/usr/bin/python3")
        #expect(raw.stdoutText.contains("may not 'enroll'") && raw.stdoutText.contains("forbidden"), "\(raw.text)")
    }

    /// Opens COUNT connections to SOCKET as the calling user and holds them, sending nothing, for
    /// HOLD seconds; prints how many connected, then how many the agent had closed by then.
    static let idleConnections = """
        import socket, sys, time
        path, count, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
        held = []
        for _ in range(count):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            held.append(s)
        print(len(held), flush=True)
        time.sleep(hold)
        closed = 0
        for s in held:
            s.setblocking(False)
            try:
                if s.recv(65536) is not None: closed += 1
            except BlockingIOError:
                pass
        print(closed, flush=True)
        """

    static func threads(_ pid: Int32) throws -> Int {
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        return Int(status.split(separator: "\n").first { $0.hasPrefix("Threads:") }?.split(separator: "\t").last ?? "") ?? -1
    }

    @Test func idleConnectionsOfUsersDoNotDelayRootOrGrowTheAgent() async throws {
        let server = try await ServerProcess(name: "agent-idle")
        try await server.start()
        defer { server.terminate() }
        let agent = try await Self.enrolledAgent(server, name: "idle", group: "nogroup")
        defer { agent.terminate() }
        let plain = try Self.write(agent, "f.txt", 200_000)
        #expect(try await agent.keyhold(["file", "encrypt", "f.txt", "-o", "f.khf"]).status == 0)
        let pid = try #require(agent.process?.pid)
        let before = try Self.threads(pid)
        let quiet = ContinuousClock.now
        #expect(try await agent.keyhold(["status"]).status == 0)
        let quietStatus = ContinuousClock.now - quiet

        // 200 idle connections from 'nobody' (a member of the group: admitted, then timed out) and
        // 200 from 'daemon' (not a member: answered and closed at once).
        let script = agent.folder.appendingPathComponent("idle.py")
        try Self.idleConnections.write(to: script, atomically: true, encoding: .utf8)
        for (user, closedAtOnce) in [("nobody", false), ("daemon", true)] {
            let holder = try ChildProcess(
                URL(fileURLWithPath: "/usr/sbin/runuser"), ["-u", user, "--", "/usr/bin/python3", script.path, agent.socket, "200", "3"],
                in: URL(fileURLWithPath: "/tmp"), log: agent.folder.appendingPathComponent("idle-\(user).log")
            )
            var connected = false
            for _ in 0..<400 where !connected {
                connected = holder.logText().hasPrefix("200\n")
                if !connected { try await Task.sleep(for: .milliseconds(10)) }
            }
            #expect(connected, "\(user) opened 200 connections: \(holder.logText())")
            // While they are held: root's status and a decryption answer, and no thread was added.
            let busy = ContinuousClock.now
            let status = try await agent.keyhold(["status"])
            let busyStatus = ContinuousClock.now - busy
            let decrypt = try await agent.keyhold(["file", "decrypt", "f.khf", "-o", "f.\(user).out"])
            let during = try Self.threads(pid)
            #expect(status.status == 0 && decrypt.status == 0, "\(status.stderr) \(decrypt.stderr)")
            #expect(try Data(contentsOf: URL(fileURLWithPath: agent.path("f.\(user).out"))) == plain)
            #expect(during <= before + 2, "threads: \(before) before, \(during) with 200 idle connections of \(user)")
            print(
                "idle-connections: \(user): root's status \(busyStatus) with 200 held (\(quietStatus) without); agent threads \(before) -> \(during)")
            _ = await holder.waitForExit(timeout: .seconds(30))
            let lines = holder.logText().split(separator: "\n")
            if closedAtOnce {
                #expect(lines.last == "200", "the agent closed every connection of a non-member at once: \(lines)")
            }
        }
        #expect(try await agent.keyhold(["status"]).status == 0)
    }

    @Test func badTokensLeaveNoHalfEnrolledState() async throws {
        let server = try await ServerProcess(name: "agent-tokens")
        try await server.start()
        defer { server.terminate() }
        let agent = try AgentProcess(name: "badtok")
        try await agent.start()
        defer { agent.terminate() }
        var wrongCA = try await server.token()
        wrongCA.caFingerprint = String(repeating: "0", count: 64)
        let expired = try await server.token(ttl: "1s")
        try await Task.sleep(for: .seconds(2))
        for (token, mentions) in [("garbage", "malformed"), (wrongCA.text, "not the one the token names"), (expired.text, "expired")] {
            let r = try await agent.keyhold(["enroll", token])
            #expect(r.status != 0)
            #expect(r.stderr.contains(mentions) && r.stderr.contains("\nhint: "), "\(r.stderr)")
            #expect(!FileManager.default.fileExists(atPath: agent.stateDir.appendingPathComponent("identity.json").path))
            #expect(try await Self.status(agent)["enrolled"] as? Bool == false)
        }
    }

    @Test func refusesToStartWithLoosePermissions() async throws {
        let server = try await ServerProcess(name: "agent-perm")
        try await server.start()
        defer { server.terminate() }
        let agent = try await Self.enrolledAgent(server, name: "perm")
        await agent.stop()
        let identity = agent.stateDir.appendingPathComponent("identity.json").path
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: identity)
        let status = try await agent.start()
        #expect(status == 78)
        #expect(agent.log().contains("identity.json is accessible to other users"))
        #expect(agent.log().contains("hint: "))
    }
}
