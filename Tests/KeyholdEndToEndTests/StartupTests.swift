import Foundation
import KeyholdCore
import KeyholdProtocol
import KeyholdTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Starting the real daemons: configuration files read strictly, listeners that cannot bind, a
/// second process on the same directory; each ends at once with an error that says what to do.
@Suite(.timeLimit(.minutes(10))) struct StartupTests {
    /// Whether any process's command line mentions `text`.
    static func running(_ text: String) async throws -> Bool {
        try await run(URL(fileURLWithPath: "/bin/ps"), ["-eo", "args"]).stdoutText.split(separator: "\n").contains {
            $0.contains(text) && !$0.contains("/bin/ps")
        }
    }

    /// Starts `keyhold-server run` on `server` with `args` and waits for it to end by itself.
    /// The defect was a process that never ended (and spun); on an idle machine these end in well
    /// under a second, but with both cores loaded by other processes a start alone can take
    /// several, so "promptly" is bounded generously.
    static let promptly: Duration = .seconds(30)

    static func runToEnd(_ server: ServerProcess, _ args: [String] = [], within: Duration = promptly) async throws -> (Int32?, String) {
        let log = server.dataDir.deletingLastPathComponent().appendingPathComponent("second-\(UUID().uuidString.prefix(6)).log")
        let child = try ChildProcess(server.binary, ["run", "--data-dir", server.dataDir.path] + args, log: log)
        let status = await child.waitForExit(timeout: within)
        if status == nil { await child.stop(SIGKILL) }
        return (status, child.logText())
    }

    @Test func aMisspeltOrDuplicatedServerConfigKeyIsAnErrorNamingIt() async throws {
        let server = try await ServerProcess(name: "config")
        let config = server.dataDir.appendingPathComponent("config.toml")
        let original = try String(contentsOf: config, encoding: .utf8)
        for (text, mentions) in [
            (original.replacingOccurrences(of: "\nlisten = ", with: "\nlisen = "), "unknown key 'lisen'"),
            (original + "enroll_listen = \"127.0.0.1:9\"\n", "enroll_listen"),
            (
                original.replacingOccurrences(of: "hierarchy_heartbeat = 30", with: "hierarchy_heartbeat = \"30\""),
                "hierarchy_heartbeat must be an integer"
            ),
            (
                original.replacingOccurrences(of: "\nlisten = '127.0.0.1:0'", with: "\nlisten = '127.0.0.1'"),
                "listen = \"127.0.0.1\" is not host:port"
            ),
        ] {
            #expect(text != original, "the test changed the file")
            try text.write(to: config, atomically: true, encoding: .utf8)
            let (runStatus, runLog) = try await Self.runToEnd(server)
            let status = try await server.admin(["status"])
            for (exit, output) in [(runStatus, runLog), (status.status, status.stderr)] {
                #expect(exit == 78, "\(output)")
                let lines = output.split(separator: "\n")
                #expect(
                    lines.first?.hasPrefix("keyhold-server: error: \(config.path)") == true && lines.first?.contains(mentions) == true, "\(output)")
                #expect(lines.contains { $0.hasPrefix("hint: ") }, "\(output)")
            }
        }
        try original.replacingOccurrences(of: "\nlisten = ", with: "\nlisen = ").write(to: config, atomically: true, encoding: .utf8)
        #expect(try await server.admin(["status"]).stderr.contains("hint: did you mean 'listen'?"))
    }

    @Test func aMisspeltAgentConfigKeyIsAnErrorNamingIt() async throws {
        let agent = try AgentProcess(name: "agent-config")
        let file = agent.folder.appendingPathComponent("agent.toml")
        try "socket = \"\(agent.socket)\"\nhartbeat = 5\n".write(to: file, atomically: true, encoding: .utf8)
        let r = try await run(Paths.executable("keyhold-agent"), ["run", "--config", file.path, "--state-dir", agent.stateDir.path])
        #expect(r.status == 78)
        #expect(r.stderr.hasPrefix("keyhold-agent: error: \(file.path): unknown key 'hartbeat'\nhint: did you mean 'heartbeat'?"), "\(r.stderr)")
        try "socket = \"\(agent.socket)\"\nsocket = \"/tmp/other.sock\"\n".write(to: file, atomically: true, encoding: .utf8)
        let twice = try await run(Paths.executable("keyhold-agent"), ["run", "--config", file.path, "--state-dir", agent.stateDir.path])
        #expect(twice.status == 78 && twice.stderr.hasPrefix("keyhold-agent: error: \(file.path):2:"), "\(twice.stderr)")
        #expect(twice.stderr.contains("socket") && twice.stderr.contains("\nhint: "))
        // A file naming every key is read, and a flag overrides it.
        try """
        state_dir = "\(agent.stateDir.path)"
        socket = "/nonexistent/folder/agent.sock"
        group = "keyhold"
        heartbeat = 5
        log_level = "notice"

        """.write(to: file, atomically: true, encoding: .utf8)
        #expect(try await agent.start(["--config", file.path, "--socket", agent.socket]) == nil)
        #expect(try await agent.send(.status).status().enrolled == false)
        await agent.stop()
        // An explicitly named file must exist.
        let missing = try await run(Paths.executable("keyhold-agent"), ["run", "--config", agent.path("none.toml")])
        #expect(missing.status == 78 && missing.stderr.contains("cannot read \(agent.path("none.toml"))"))
    }

    @Test func aSecondServerOnTheSameAddressesExitsAtOnceNamingThem() async throws {
        let first = try await ServerProcess(name: "first")
        try await first.start()
        defer { first.terminate() }
        let second = try await ServerProcess(name: "second")
        for (flag, busy) in [("--listen", first.api), ("--enroll-listen", first.enroll)] {
            let start = ContinuousClock.now
            let (status, log) = try await Self.runToEnd(second, [flag, busy])
            #expect(status == 78, "it must end by itself, non-zero: \(log)")
            #expect(ContinuousClock.now - start < Self.promptly, "it ends by itself, promptly")
            #expect(log.contains("keyhold-server: error: cannot listen on \(busy): address already in use\nhint: "), "\(log)")
            #expect(!log.contains("CancellationError") && !log.contains("Already closed"), "\(log)")
            #expect(try await !Self.running(second.dataDir.path), "nothing of the second server is left running")
        }
        // The first one is unharmed.
        #expect(try await first.admin(["status"]).status == 0)
    }

    @Test func aSecondServerOnTheSameDataDirectoryIsRefused() async throws {
        let server = try await ServerProcess(name: "twice")
        try await server.start()
        defer { server.terminate() }
        let (status, log) = try await Self.runToEnd(server, ["--listen", "127.0.0.1:0", "--enroll-listen", "127.0.0.1:0"])
        #expect(status == 78, "\(log)")
        #expect(
            log.contains("keyhold-server: error: keyhold-server (pid \(server.pid)) is already running on the data directory \(server.dataDir.path)"),
            "\(log)")
        #expect(log.contains("\nhint: stop it first"))
        #expect(try await server.admin(["status"]).status == 0, "the running server keeps its runtime.json and answers")
    }

    @Test func anAgentWhoseSocketCannotBeBoundExitsAtOnceSayingWhy() async throws {
        let agent = try AgentProcess(name: "agent-nobind")
        let start = ContinuousClock.now
        let r = try await run(
            Paths.executable("keyhold-agent"), ["run", "--state-dir", agent.stateDir.path, "--socket", "/proc/keyhold-agent-test.sock"]
        )
        #expect(r.status == 78)
        #expect(r.stderr.hasPrefix("keyhold-agent: error: cannot listen on /proc/keyhold-agent-test.sock: "), "\(r.stderr)")
        #expect(r.stderr.contains("\nhint: "))
        #expect(ContinuousClock.now - start < Self.promptly, "it ends by itself, promptly")
    }
}
