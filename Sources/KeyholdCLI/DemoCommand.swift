import ArgumentParser
import CKeyholdAllocator
import Dispatch
import Foundation
import KeyholdCommandLine
import KeyholdCore
import KeyholdLauncher
import KeyholdProtocol
import KeyholdSystem
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `keyhold demo`: the narrated tour that `make run` shows. On loopback, with the embedded SQLite
/// default in a temporary folder, it starts real `keyhold-server` processes (a top server T with
/// secondaries S1 and S2, the hierarchy on; and a separate server S3) and real `keyhold-agent`
/// processes (D1 on S1, D2 on S2, D3 on S3), then runs the real commands, printing each with its
/// output and checking each result. It ends with a summary table and stops everything it started
/// (also on Ctrl-C), unless `--keep`.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Walk through Keyhold with real servers and agents on this machine, narrated.",
        discussion: """
            Needs keyhold-server and keyhold-agent next to this keyhold executable (make run builds them).
            Example:
              keyhold demo --keep
            """
    )

    @Flag(help: "Leave the servers and agents running at the end, and print how to talk to them.")
    var keep = false

    @Option(help: ArgumentHelp("Seconds between the servers' hierarchy heartbeats.", valueName: "seconds"))
    var heartbeat = 2

    func run() async throws {
        keyhold_line_buffered_stdout()  // the narration and the children's output stay in order
        let folder = try Self.makeFolder()
        let bin = (Self.executablePath() as NSString).deletingLastPathComponent
        for tool in ["keyhold-server", "keyhold-agent"] where !FileManager.default.isExecutableFile(atPath: "\(bin)/\(tool)") {
            throw KeyholdError(
                .configuration, "\(tool) is not next to keyhold in \(bin)", hint: "build it: 'swift build --product \(tool)' (make run does)")
        }
        let demo = Demo(folder: folder, bin: bin, heartbeat: max(1, heartbeat))
        let signals = DemoChildren.shared.stopOnSignals()
        defer { withExtendedLifetime(signals) {} }
        await demo.tour()
        demo.summary()
        if keep && demo.failures == 0 {
            demo.printHowToTalk()
        } else {
            DemoChildren.shared.stopAll()
            try? FileManager.default.removeItem(atPath: folder)
            print("Stopped every server and agent the demo started; removed \(folder).")
        }
        if demo.failures > 0 { throw ExitCode(1) }
    }

    static func makeFolder() throws -> String {
        let base = FileManager.default.temporaryDirectory.path
        var template = Array("\(base)/keyhold-demo-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw SystemCall.error("create a demo folder in", path: base, errno: errno)
        }
        return String(cString: made)
    }

    static func executablePath() -> String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }
}

/// Every server and agent the demo started, so that the end of the demo, Ctrl-C or SIGTERM stops
/// them all (agents first, then servers: the reverse of starting).
final class DemoChildren: Sendable {
    static let shared = DemoChildren()
    private let servers = Mutex<[ServerProcess]>([])
    private let agents = Mutex<[AgentProcess]>([])

    func add(server: ServerProcess) { servers.withLock { $0.append(server) } }
    func add(agent: AgentProcess) { agents.withLock { $0.append(agent) } }

    /// The running processes, agents first.
    private func children() -> [ChildProcess] {
        let agents: [ChildProcess] = self.agents.withLock { $0.compactMap(\.process) }
        let servers: [ChildProcess] = self.servers.withLock { $0.compactMap(\.child) }
        return Array(agents.reversed()) + Array(servers.reversed())
    }

    /// SIGTERM to each, then waits (SIGKILL after 10 s); waits on the calling thread.
    func stopAll() {
        let all = children()
        for child in all where child.isRunning { kill(child.pid, SIGTERM) }
        for child in all { child.stopBlocking(timeout: 10) }
        agents.withLock { $0 = [] }
        servers.withLock { $0 = [] }
    }

    /// The process ids, for the `--keep` message.
    func pidList() -> String {
        let all = children()
        for child in all { child.detach() }
        return all.map { String($0.pid) }.joined(separator: " ")
    }

    /// Handles SIGINT and SIGTERM from now on; keep the returned sources alive while they should act.
    func stopOnSignals() -> [any DispatchSourceSignal] {
        [SIGINT, SIGTERM].map { sig in
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler {
                print("\nInterrupted: stopping every server and agent the demo started…")
                DemoChildren.shared.stopAll()
                exit(130)
            }
            source.resume()
            return source
        }
    }
}

/// One demo run: its folder, its servers and agents, and the results of its steps.
private final class Demo {
    let folder: String
    let bin: String
    let heartbeat: Int
    var rows: [(step: String, result: String, seconds: Double)] = []
    var failures = 0
    var servers: [String: String] = [:]  // name -> API address
    var agents: [String] = []
    var keyID = ""

    struct Outcome {
        var status: Int32
        var stdout: String
        var stderr: String
        var text: String { stdout + stderr }
    }

    init(folder: String, bin: String, heartbeat: Int) {
        self.folder = folder
        self.bin = bin
        self.heartbeat = heartbeat
    }

    // MARK: The tour

    func tour() async {
        print(
            """
            Keyhold demo. On this machine, on loopback ports, each with its own SQLite database in
            \(folder):
              servers  T (top), S1 and S2 under T, "use hierarchy" on; S3 on its own
              devices  D1 enrolled with S1, D2 with S2, D3 with S3 (each a real keyhold-agent)
            Every command below is run for real; its output is indented under it.

            """)

        await step("Start servers T, S1, S2, S3; join S1 and S2 to T", expect: "four servers; S1 and S2 push to T") {
            for name in ["T", "S1", "S2", "S3"] { try await startServer(name, hierarchy: name != "S3") }
            for name in ["S1", "S2"] {
                let token = try must(await server("T", ["token", "create", "--role", "server"], echo: false)).stdout.trimmingCharacters(
                    in: .whitespacesAndNewlines)
                print("  (T made a server-role token for \(name))")
                try must(await server(name, ["primary", "join", token]))
            }
            return "T at \(servers["T"]!), S1 at \(servers["S1"]!), S2 at \(servers["S2"]!), S3 at \(servers["S3"]!)"
        }

        await step("Start agents D1, D2, D3 and enroll them", expect: "each device holds a certificate from its server") {
            for (agent, server) in [("D1", "S1"), ("D2", "S2"), ("D3", "S3")] {
                try await startAgent(agent)
                let token = try must(await self.server(server, ["token", "create"], echo: false)).stdout.trimmingCharacters(
                    in: .whitespacesAndNewlines)
                print("  (\(server) made a device token for \(agent))")
                try must(await keyhold(agent, ["enroll", token]))
            }
            return "D1 → S1, D2 → S2, D3 → S3"
        }

        let plain = (1...4000).map { "Board minutes, line \($0): figures that must not leak.\n" }.joined()
        try? plain.write(toFile: "\(folder)/D1/minutes.txt", atomically: true, encoding: .utf8)

        await step("D1 encrypts a file (its key is escrowed with S1 first)", expect: "minutes.khf; S1's audit shows the escrow") {
            try must(await keyhold("D1", ["file", "encrypt", "minutes.txt", "-o", "minutes.khf"]))
            let info = try must(await keyhold("D1", ["file", "info", "minutes.khf", "--json"], echo: false))
            keyID = ((try? JSONSerialization.jsonObject(with: Data(info.stdout.utf8))) as? [String: Any])?["key_id"] as? String ?? ""
            let audit = try must(await server("S1", ["audit"], echo: false)).stdout
            let cipher = (try? Data(contentsOf: URL(fileURLWithPath: "\(folder)/D1/minutes.khf"))) ?? Data()
            guard audit.contains("escrow") && audit.contains(keyID), cipher.range(of: Data("Board minutes".utf8)) == nil else {
                throw DemoFailure("no escrow record or plaintext in the file")
            }
            return "key \(keyID.prefix(8))… escrowed with S1, then used"
        }

        await step("D2 opens D1's file: S2 asks T, which has it from S1's heartbeat", expect: "the same bytes on D2") {
            try copy("D1/minutes.khf", "D2/minutes.khf")
            try await waitForPush("S1")
            try must(await keyhold("D2", ["file", "decrypt", "minutes.khf", "-o", "minutes.txt"]))
            let back = try? String(contentsOfFile: "\(folder)/D2/minutes.txt", encoding: .utf8)
            guard back == plain else { throw DemoFailure("D2's copy differs") }
            let obtained = try must(await server("S2", ["audit"], echo: false)).stdout.contains("obtain")
            return "identical; S2 obtained the key through the hierarchy: \(obtained)"
        }

        await step("A damaged copy is refused", expect: "authentication_failed, no output file") {
            var bytes = (try? Data(contentsOf: URL(fileURLWithPath: "\(folder)/D2/minutes.khf"))) ?? Data()
            bytes[bytes.count / 2] ^= 0x01
            try bytes.write(to: URL(fileURLWithPath: "\(folder)/D2/damaged.khf"))
            print("  (flipped one bit in the middle of a copy: damaged.khf)")
            let o = await keyhold("D2", ["file", "decrypt", "damaged.khf", "-o", "damaged.txt"])
            guard o.status != 0, o.stderr.contains("failed authentication"), !FileManager.default.fileExists(atPath: "\(folder)/D2/damaged.txt")
            else {
                throw DemoFailure("the damaged file was not refused cleanly")
            }
            return "refused (exit \(o.status)); damaged.txt not created"
        }

        await step("D1 encrypts a drive image; D2 unlocks it through the hierarchy", expect: "LUKS2 with a keyhold token; D2's key opens it") {
            guard geteuid() == 0 else { throw DemoFailure("drive commands need root: run 'sudo make run' (or as root) to see this step") }
            try makeImage("D1/stick.img")
            try must(await keyhold("D1", ["drive", "encrypt", "stick.img"]))
            try must(await keyhold("D1", ["drive", "info", "stick.img"]))
            try copy("D1/stick.img", "D2/stick.img")
            try await waitForPush("S1")
            let unlock = await keyhold("D2", ["drive", "unlock", "stick.img"])
            if unlock.status == 0 {
                try must(await keyhold("D2", ["drive", "lock", "stick.img"]))
                return "unlocked as /dev/mapper/keyhold-… on D2, then locked"
            }
            guard unlock.stderr.contains("device-mapper") else { throw DemoFailure("unlock failed: \(unlock.stderr)") }
            print("  (this kernel has no device-mapper, so nothing can be activated here; the VM test does that.")
            print("   Checking the escrowed key against the LUKS header instead:)")
            try must(await keyhold("D2", ["drive", "unlock", "stick.img", "--verify-only"]))
            return "key verified against the LUKS header on D2 (activation needs device-mapper, absent here)"
        }

        await step("Option off on T: D2 is refused with hierarchy_disabled", expect: "a clear error and hint; on again, it works") {
            guard geteuid() == 0 else { throw DemoFailure("needs a second drive image: run as root") }
            print("  (D1 encrypts a second stick; S1's heartbeat pushes its key to T)")
            try makeImage("D1/stick2.img")
            try must(await keyhold("D1", ["drive", "encrypt", "stick2.img"], echo: false))
            try copy("D1/stick2.img", "D2/stick2.img")
            try await waitForPush("S1")
            try must(await server("T", ["hierarchy", "disable"]))
            let refused = await keyhold("D2", ["drive", "unlock", "stick2.img", "--verify-only"])
            guard refused.status != 0, refused.stderr.contains("hierarchy_disabled"), refused.stderr.contains("\nhint: ") else {
                throw DemoFailure("expected a hierarchy_disabled refusal, got: \(refused.text)")
            }
            let s2Status = try must(await server("S2", ["status"])).stdout
            try must(await server("T", ["hierarchy", "enable"]))
            try must(await keyhold("D2", ["drive", "unlock", "stick2.img", "--verify-only"]))
            return
                "refused with hierarchy_disabled while off\(s2Status.lowercased().contains("refuses") ? " (S2's status: T refuses)" : ""); opened once T turned it back on"
        }

        await step("Reassign D1 from S1 to S2; it still opens its data", expect: "D1 on S2; every key it holds re-escrowed there") {
            let token = try must(await server("S2", ["token", "create"], echo: false)).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            print("  (S2 made a device token for D1)")
            try must(await keyhold("D1", ["reassign", token, "--dry-run"]))
            try must(await keyhold("D1", ["reassign", token]))
            let status = try must(await keyhold("D1", ["status"])).stdout
            guard status.contains(servers["S2"]!) else { throw DemoFailure("D1 does not name S2") }
            try must(await keyhold("D1", ["file", "decrypt", "minutes.khf", "-o", "minutes.again.txt"]))
            let s1 = try must(await server("S1", ["device", "list"])).stdout
            guard s1.contains("moved") else { throw DemoFailure("S1 does not show D1 as moved") }
            return "D1 now at S2, file opens; S1 lists it as moved"
        }

        await step("Export S1's keys (password); import into S3; D3 opens D1's file", expect: "an age file; D3 decrypts") {
            let password = "\(folder)/export-password"
            try "correct horse battery staple\n".write(toFile: password, atomically: true, encoding: .utf8)
            print("  (the password is in export-password; interactively it is asked twice without echo)")
            try must(await server("S1", ["key", "export", "-o", "s1-keys.age", "--all", "--password-file", "export-password"]))
            let head =
                (try? Data(contentsOf: URL(fileURLWithPath: "\(folder)/s1-keys.age")).prefix(22)).map { String(decoding: $0, as: UTF8.self) } ?? ""
            guard head == "age-encryption.org/v1\n" else { throw DemoFailure("not an age file") }
            try must(await server("S3", ["key", "import", "s1-keys.age", "--password-file", "export-password"]))
            try copy("D1/minutes.khf", "D3/minutes.khf")
            try must(await keyhold("D3", ["file", "decrypt", "minutes.khf", "-o", "minutes.txt"]))
            let back = try? String(contentsOfFile: "\(folder)/D3/minutes.txt", encoding: .utf8)
            guard back == plain else { throw DemoFailure("D3's copy differs") }
            return "s1-keys.age is a standard age file (age -d opens it); D3 on S3 opened D1's file"
        }
    }

    // MARK: Steps and processes

    func step(_ title: String, expect: String, _ body: () async throws -> String) async {
        print("== \(rows.count + 1). \(title)\n   (expected: \(expect))")
        let start = Date()
        var ok = true
        var detail: String
        do {
            detail = try await body()
        } catch let failure as DemoFailure {
            ok = false
            detail = failure.description
        } catch {
            ok = false
            detail = "\(error)"
        }
        let seconds = Date().timeIntervalSince(start)
        print("   \(ok ? "OK" : "FAILED"): \(detail)\n")
        rows.append((title, ok ? "ok: \(detail)" : "FAILED: \(detail)", seconds))
        if !ok { failures += 1 }
    }

    /// Inits and starts server `name` in `folder/name` through the launcher (which waits until
    /// the server answers a request), narrating the commands.
    func startServer(_ name: String, hierarchy: Bool) async throws {
        let initArgs = ["--listen", "127.0.0.1:0", "--enroll-listen", "127.0.0.1:0", "--name", name] + (hierarchy ? ["--use-hierarchy"] : [])
        print("  $ keyhold-server init --data-dir \(name) " + initArgs.joined(separator: " "))
        let server = try await ServerProcess(
            name: name, binaries: URL(fileURLWithPath: bin), dataDir: URL(fileURLWithPath: "\(folder)/\(name)"),
            logFile: URL(fileURLWithPath: "\(folder)/\(name).log"), initOptions: hierarchy ? ["--use-hierarchy"] : []
        )
        print("  $ keyhold-server run --data-dir \(name) --hierarchy-heartbeat \(heartbeat) --log-level warning &")
        DemoChildren.shared.add(server: server)
        do {
            try await server.start(["--hierarchy-heartbeat", "\(heartbeat)"], logLevel: "warning")
        } catch {
            throw DemoFailure("server \(name) did not start; see \(folder)/\(name).log")
        }
        servers[name] = server.api
    }

    /// Starts agent `name` in `folder/name` through the launcher (which waits until it answers).
    func startAgent(_ name: String) async throws {
        let agent = try AgentProcess(name: name, binaries: URL(fileURLWithPath: bin), folder: URL(fileURLWithPath: "\(folder)/\(name)"))
        print("  $ keyhold-agent run --state-dir \(name)/state --socket \(name)/agent.sock --heartbeat 5 &")
        DemoChildren.shared.add(agent: agent)
        guard try await agent.start(["--heartbeat", "5"], logLevel: "notice") == nil else {
            throw DemoFailure("agent \(name) did not start; see \(folder)/\(name)/agent.log")
        }
        agents.append(name)
    }

    /// Waits until `name`'s heartbeat has pushed everything to its primary (status: pending 0).
    func waitForPush(_ name: String) async throws {
        print("  (waiting for \(name)'s next heartbeat to push its new keys to T…)")
        for _ in 0..<(40 * heartbeat + 200) {
            let o = await server(name, ["status", "--json"], echo: false)
            if let status = try? WireFormat.decoder().decode(StatusResponse.self, from: Data(o.stdout.utf8)), let h = status.hierarchy,
                h.pending == 0, h.lastPushResult?.hasPrefix("ok") == true
            {
                let s = await server(name, ["status"], echo: false).stdout.split(separator: "\n").filter {
                    $0.contains("push") || $0.contains("pending")
                }
                for line in s { print("    \(line)") }
                return
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw DemoFailure("\(name) did not push within its heartbeat")
    }

    func makeImage(_ path: String) throws {
        let full = "\(folder)/\(path)"
        _ = FileManager.default.createFile(atPath: full, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: full))
        try handle.truncate(atOffset: 48 << 20)
        try handle.close()
        print("  (a 48 MiB image file \(path) stands in for a USB stick)")
    }

    func copy(_ from: String, _ to: String) throws {
        try? FileManager.default.removeItem(atPath: "\(folder)/\(to)")
        try FileManager.default.copyItem(atPath: "\(folder)/\(from)", toPath: "\(folder)/\(to)")
        print("  (copied \(from) to \(to))")
    }

    @discardableResult
    func must(_ o: Outcome) throws -> Outcome {
        guard o.status == 0 else { throw DemoFailure("exit \(o.status): \(o.stderr.trimmingCharacters(in: .whitespacesAndNewlines))") }
        return o
    }

    func server(_ name: String, _ args: [String], echo: Bool = true) async -> Outcome {
        if echo { print("  $ keyhold-server " + args.map(Self.quote).joined(separator: " ") + " --data-dir \(name)") }
        return await execute("\(bin)/keyhold-server", args + ["--data-dir", name], echo: echo)
    }

    func keyhold(_ agent: String, _ args: [String], echo: Bool = true) async -> Outcome {
        if echo { print("  [\(agent)] $ keyhold " + args.map(Self.quote).joined(separator: " ")) }
        return await execute(
            "\(bin)/keyhold", args, in: "\(folder)/\(agent)", environment: ["KEYHOLD_SOCKET": "\(folder)/\(agent)/agent.sock"], echo: echo)
    }

    /// Runs a command to completion in the demo's folder (through the launcher's `Program`).
    func execute(_ path: String, _ args: [String], in directory: String? = nil, environment: [String: String] = [:], echo: Bool) async -> Outcome {
        var env = environment
        env["KEYHOLD_NO_PROGRESS"] = "1"
        let o: Outcome
        do {
            let r = try await Program.run(
                URL(fileURLWithPath: path), args, in: URL(fileURLWithPath: directory ?? folder), environment: env
            )
            o = Outcome(status: r.status, stdout: r.stdoutText, stderr: r.stderr)
        } catch {
            o = Outcome(status: 127, stdout: "", stderr: "\(error)")
        }
        if echo {
            for line in (o.stdout + o.stderr).split(separator: "\n") { print("      \(line)") }
        }
        return o
    }

    /// How an argument is shown: quoted when it has spaces; enrollment tokens shortened (the real,
    /// whole token is what runs).
    static func quote(_ s: String) -> String {
        if s.hasPrefix("kh1."), s.count > 24 { return String(s.prefix(16)) + "…" }
        return s.contains(" ") || s.contains("\"") ? "'\(s)'" : s
    }

    // MARK: The end

    func summary() {
        let width = min(70, max(4, rows.map(\.step.count).max() ?? 0))
        print("Summary")
        print("  " + "step".padding(toLength: width, withPad: " ", startingAt: 0) + "    time  result")
        for (i, row) in rows.enumerated() {
            let t = String(format: "%6.1fs", row.seconds)
            let title = "\(i + 1). \(row.step)"
            print("  " + title.padding(toLength: width, withPad: " ", startingAt: 0) + "  \(t)  \(row.result)")
        }
        print(failures == 0 ? "\nAll \(rows.count) steps gave the expected result." : "\n\(failures) step(s) FAILED.")
    }

    func printHowToTalk() {
        print(
            """

            Still running (--keep), in \(folder):
              servers  \(["T", "S1", "S2", "S3"].map { "\($0) at \(servers[$0] ?? "?")" }.joined(separator: ", "))
              agents   \(agents.map { "\($0): socket \(folder)/\($0)/agent.sock" }.joined(separator: "\n           "))
            Try:
              cd \(folder)
              \(bin)/keyhold-server status --data-dir T     # also S1, S2, S3; audit, key list, device list …
              KEYHOLD_SOCKET=$PWD/D2/agent.sock \(bin)/keyhold status
            Stop them all with:  kill \(DemoChildren.shared.pidList())
            """)
    }
}

struct DemoFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
