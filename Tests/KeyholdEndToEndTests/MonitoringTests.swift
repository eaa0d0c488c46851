import Foundation
import KeyholdClient
import KeyholdCore
import KeyholdLauncher
import KeyholdProtocol
import KeyholdTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Watching a server run (issue "Watch it run"), with the real peers: Debian's Prometheus
/// scrapes the metrics listener, promtool lints the exposition.
@Suite(.timeLimit(.minutes(10))) struct MonitoringTests {
    /// A secondary with its metrics listener on, two levels under a root server, and an agent of
    /// it writing its metrics textfile: health and readiness answer; Prometheus scrapes the server
    /// and, through node-exporter's textfile collector, the agent; the agent's escrow, then
    /// escrows, a repeated escrow, releases (two of keys held one and two servers up), a refused
    /// release and a push to the primary move the counters Prometheus reports by exactly what was
    /// done; promtool accepts both expositions.
    @Test func prometheusSeesTheCountersMoveByExactlyWhatWasDone() async throws {
        let root = try await HierarchyTests.server("mon-r")
        defer { root.terminate() }
        let top = try await HierarchyTests.server("mon-t")
        defer { top.terminate() }
        let server = try await ServerProcess(name: "mon-s", initOptions: ["--use-hierarchy"])
        try await server.start(["--hierarchy-heartbeat", "3600", "--metrics-listen", "127.0.0.1:0"])
        defer { server.terminate() }
        try await HierarchyTests.join(top, to: root)
        try await HierarchyTests.join(server, to: top)
        // A key held only at the top (one server up), one only at the root (two up).
        var above: [KeyMaterial] = []
        for s in [top, root] {
            let d = try await s.enrollDevice("\(s.name)-d")
            let id = try #require(try ServerRuntimeInfo.read(from: s.dataDir.path)?.serverID)
            let key = KeyMaterial.generate(kind: .file, originServerID: id, originDeviceID: DeviceID(enrollment: d.clientID), label: "above")
            try await using(try d.client()) { c in
                _ = try await c.put(APIPath.key(key.record.id.description), EscrowRequest(key: key), as: EscrowResponse.self)
            }
            above.append(key)
        }
        let metrics = try #require(try ServerRuntimeInfo.read(from: server.dataDir.path)?.metrics)
        #expect(try await Self.get("http://\(metrics)/v1/health") == "ok\n")
        #expect(try await Self.get("http://\(metrics)/v1/ready") == "ready\n")
        let enroll = try #require(try ServerRuntimeInfo.read(from: server.dataDir.path)?.enroll)
        let ready = try await Program.run(URL(fileURLWithPath: "/usr/bin/curl"), ["-sk", "https://\(enroll)/v1/ready"])
        #expect(ready.stdoutText == "ready\n", "the enrollment listener answers readiness too")

        let exposition = try await Self.get("http://\(metrics)/metrics")
        let lint = try await Program.run(URL(fileURLWithPath: "/usr/bin/promtool"), ["check", "metrics"], stdin: Data(exposition.utf8))
        #expect(lint.status == 0, "promtool: \(lint.stdoutText) \(lint.stderr)")
        #expect(!exposition.contains(server.dataDir.path), "no label carries a path")

        // An agent of the server writes its metrics for node-exporter's textfile collector.
        let agent = try AgentProcess(name: "mon-agent")
        let textfiles = try Paths.temporaryFolder("mon-textfiles")
        let textfile = textfiles.appendingPathComponent("keyhold-agent.prom").path
        try await agent.start(["--heartbeat", "1", "--metrics-textfile", textfile])
        defer { agent.terminate() }
        let token = try await server.admin(["token", "create"]).stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try await agent.keyhold(["enroll", token]).status == 0)
        _ = try AgentIntegrationTests.write(agent, "plain.txt", 1000)
        #expect(try await agent.keyhold(["file", "encrypt", "plain.txt", "-o", "plain.khf"]).status == 0)
        let exporter = try await NodeExporterProcess.start(textfiles: textfiles)
        defer { exporter.terminate() }

        let prometheus = try await PrometheusProcess.start(scraping: ["keyhold": metrics, "node": exporter.address])
        defer { prometheus.terminate() }
        #expect(try await prometheus.waitFor("up{job=\"keyhold\"}", toBe: 1), "Prometheus scrapes the server")
        let before = try await prometheus.value("keyhold_escrows_total{outcome=\"inserted\"}")
        #expect(before == 1, "the agent's one file key")

        // The agent's textfile, through node-exporter: one escrow, no failure, one cached key, a recent contact.
        let agentText = try String(contentsOfFile: textfile, encoding: .utf8)
        let agentLint = try await Program.run(URL(fileURLWithPath: "/usr/bin/promtool"), ["check", "metrics"], stdin: Data(agentText.utf8))
        #expect(agentLint.status == 0, "promtool: \(agentLint.stdoutText) \(agentLint.stderr)")
        #expect(try await prometheus.waitFor("keyhold_agent_escrow_duration_seconds_count{job=\"node\"}", toBe: 1))
        #expect(try await prometheus.value("keyhold_agent_escrow_failures_total{job=\"node\"}") == 0)
        #expect(try await prometheus.waitFor("keyhold_agent_cached_keys{job=\"node\"}", toBe: 1))
        let contact = try await prometheus.value("time() - keyhold_agent_last_contact_timestamp_seconds{job=\"node\"}")
        #expect(contact.map { $0 >= 0 && $0 < 60 } == true, "last contact \(contact.map { "\($0)" } ?? "-") s ago")

        // 5 escrows, 1 repeated, 7 releases, 1 of a key nobody escrowed, then a push of the 6.
        let device = try await server.enrollDevice("mon-d")
        let serverID = try #require(try ServerRuntimeInfo.read(from: server.dataDir.path)?.serverID)
        try await using(try device.client()) { client in
            var keys: [KeyMaterial] = []
            for i in 0..<5 {
                let key = KeyMaterial.generate(
                    kind: .file, originServerID: serverID, originDeviceID: DeviceID(enrollment: device.clientID), label: "metrics \(i)")
                _ = try await client.put(APIPath.key(key.record.id.description), EscrowRequest(key: key), as: EscrowResponse.self)
                keys.append(key)
            }
            _ = try await client.put(APIPath.key(keys[0].record.id.description), EscrowRequest(key: keys[0]), as: EscrowResponse.self)
            for i in 0..<7 { _ = try await client.get(APIPath.key(keys[i % 5].record.id.description), as: KeyMaterial.self) }
            await #expect(throws: KeyholdError.self) { try await client.get(APIPath.key(KeyID.random().description), as: KeyMaterial.self) }
            for key in above {
                #expect(try await client.get(APIPath.key(key.record.id.description), as: KeyMaterial.self).secret.constantTimeEquals(key.secret))
            }
        }
        _ = try await server.must(["hierarchy", "sync"])

        let expected: [(String, Double)] = [
            ("keyhold_escrows_total{outcome=\"inserted\"}", 6), ("keyhold_escrows_total{outcome=\"already_present\"}", 1),
            ("keyhold_escrow_duration_seconds_count", 6),
            ("keyhold_releases_total{route=\"device\",result=\"ok\"}", 9),
            ("keyhold_releases_total{route=\"device\",result=\"not_found\"}", 1),
            ("keyhold_enrollments_total{result=\"ok\"}", 2), ("keyhold_hierarchy_keys_pushed_total", 8),
            ("keyhold_keys", 8), ("keyhold_devices{state=\"active\"}", 2), ("keyhold_hierarchy_pending_keys", 0),
            ("keyhold_audit_write_failures_total", 0), ("keyhold_database_errors_total", 0),
            // Each of the 10 releases went through one shared-commit batch; three needed a lookup upward.
            ("keyhold_release_batch_size_sum", 10), ("keyhold_hierarchy_lookups_total{result=\"found\"}", 2),
            ("keyhold_hierarchy_lookups_total{result=\"not_found\"}", 1), ("keyhold_hierarchy_lookup_hops_sum", 3),
            ("keyhold_hierarchy_lookup_hops_bucket{le=\"1.0\"}", 1),
            ("sum(keyhold_http_request_duration_seconds_count{listener=\"api\",route=\"/v1/keys/{id}\",method=\"PUT\"})", 7),
        ]
        #expect(try await prometheus.waitFor(expected[0].0, toBe: expected[0].1), "a scrape after the work")
        #expect(try await prometheus.waitFor(expected[6].0, toBe: expected[6].1), "a scrape after the push")
        for (query, value) in expected {
            let seen = try await prometheus.value(query)
            #expect(seen == value, "\(query): Prometheus says \(seen.map { "\($0)" } ?? "nothing"), \(value) were done")
        }
        let expiry = try #require(try await prometheus.value("keyhold_certificate_expiry_timestamp_seconds{certificate=\"ca\"}"))
        #expect(expiry > Date().timeIntervalSince1970 + 86_400 * 365)
        // The administrators' first expiry is the notAfter OpenSSL reads from init's admin.pem.
        let adminExpiry = try #require(try await prometheus.value("keyhold_certificate_expiry_timestamp_seconds{certificate=\"administrator\"}"))
        let enddate = try await Program.run(
            URL(fileURLWithPath: "/usr/bin/openssl"),
            ["x509", "-in", server.dataDir.appendingPathComponent("admin.pem").path, "-noout", "-enddate", "-dateopt", "iso_8601"])
        let notAfter = try #require(
            ISO8601DateFormatter().date(
                from: enddate.stdoutText.replacing("notAfter=", with: "").replacing(" ", with: "T").trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(abs(adminExpiry - notAfter.timeIntervalSince1970) < 1, "\(enddate.stdoutText)")
        #expect(try await prometheus.value("keyhold_database_connections_max").map { $0 >= 2 } == true)
        #expect(try await server.admin(["admin", "list"]).stdoutText.contains(ISO8601DateFormatter().string(from: notAfter)), "admin list shows it")

        // Every query of the shipped dashboard is valid PromQL over metrics the server exports.
        let dashboard = try Data(contentsOf: Paths.repository.appendingPathComponent("docs/monitoring/keyhold-dashboard.json"))
        let panels = (try JSONSerialization.jsonObject(with: dashboard) as? [String: Any])?["panels"] as? [[String: Any]] ?? []
        let queries = panels.flatMap { ($0["targets"] as? [[String: Any]] ?? []).compactMap { $0["expr"] as? String } }
        #expect(queries.count >= 14)
        let exported = try await Self.get("http://\(metrics)/metrics")
        for query in queries {
            #expect(try await prometheus.isValid(query), "\(query)")
            let names = query.matches(of: /keyhold_[a-z_]+/).map { String($0.output) }
            for name in names {
                let family = name.replacing(/_(bucket|count|sum)$/, with: "")
                #expect(exported.contains("# TYPE \(family) "), "\(query): \(family) is exported")
            }
        }

        // A database that fails: another process adds a trigger that aborts every audit insert
        // (SQLite's WAL lets it write while the server runs). The next release is refused
        // (fail-closed), and both the database error and the audit failure are counted once.
        let sql = "CREATE TRIGGER fault_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'disk trouble (injected)'); END"
        let script = "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); c.commit()"
        let broken = try await Program.run(
            URL(fileURLWithPath: "/usr/bin/python3"), ["-c", script, server.dataDir.appendingPathComponent("keyhold.sqlite").path, sql])
        #expect(broken.status == 0, "\(broken.stderr)")
        try await using(try device.client()) { client in
            await #expect(throws: KeyholdError.self) { try await client.get(APIPath.key(above[0].record.id.description), as: KeyMaterial.self) }
        }
        #expect(try await prometheus.waitFor("keyhold_audit_write_failures_total", toBe: 1))
        #expect(try await prometheus.waitFor("keyhold_database_errors_total", toBe: 1))
    }

    /// The shipped alert rules pass `promtool check rules`, and their unit tests (push lag,
    /// certificate expiry) pass `promtool test rules`.
    @Test func theShippedAlertRulesPassPromtoolsChecksAndUnitTests() async throws {
        let folder = Paths.repository.appendingPathComponent("docs/monitoring")
        let promtool = URL(fileURLWithPath: "/usr/bin/promtool")
        let check = try await Program.run(promtool, ["check", "rules", "keyhold-rules.yml"], in: folder)
        // promtool reads every rule the file ships (the file's own count of `- alert:` entries).
        let shipped = try String(contentsOf: folder.appendingPathComponent("keyhold-rules.yml"), encoding: .utf8)
            .split(separator: "\n").filter { $0.trimmingCharacters(in: .whitespaces).hasPrefix("- alert:") }.count
        #expect(shipped >= 8)
        #expect(check.status == 0 && check.stdoutText.contains("SUCCESS: \(shipped) rules found"), "\(check.stdoutText)\(check.stderr)")
        let unit = try await Program.run(promtool, ["test", "rules", "keyhold-rules.test.yml"], in: folder)
        #expect(unit.status == 0 && unit.stdoutText.contains("SUCCESS"), "\(unit.stdoutText)\(unit.stderr)")
    }

    /// Logs in both formats, at trace, through a whole help-desk scenario (enrollment, escrow,
    /// release, export and import with a password, a reveal): the JSON log is one object per line
    /// with time, level and message, and has one `request` line per API request with its route
    /// template, status and caller; neither log holds a key's bytes, the export password or the
    /// enrollment token's secret. SIGHUP re-reads log_level: at `warning` requests are no longer
    /// logged, back at `info` they are.
    @Test func logsCarryEveryRequestButNoSecretAndSighupRereadsTheLevel() async throws {
        let json = try await ServerProcess(name: "logs-json")
        try await json.start(["--log-format", "json"], logLevel: "trace")
        defer { json.terminate() }
        let text = try await ServerProcess(name: "logs-text")
        try await text.start([], logLevel: "trace")
        defer { text.terminate() }
        let agent = try AgentProcess(name: "logs-agent")
        try await agent.start(["--heartbeat", "1", "--log-format", "json"], logLevel: "trace")
        defer { agent.terminate() }
        let token = try await json.admin(["token", "create"]).stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try await agent.keyhold(["enroll", token]).status == 0)
        _ = try AgentIntegrationTests.write(agent, "plain.txt", 5000)
        #expect(try await agent.keyhold(["file", "encrypt", "plain.txt", "-o", "plain.khf"]).status == 0)
        agent.terminate()
        try agent.clearCache()
        try await agent.start(["--heartbeat", "1", "--log-format", "json"], logLevel: "trace")
        #expect(try await agent.keyhold(["file", "decrypt", "plain.khf", "-o", "back.txt"]).status == 0, "released by the server")
        let keyID = try HelpDeskTests.fileKey(try await agent.keyhold(["file", "info", "plain.khf", "--json"]).stdout)
        let password = "export passphrase for the log test"
        let passwordFile = json.dataDir.deletingLastPathComponent().appendingPathComponent("pw").path
        try password.write(toFile: passwordFile, atomically: true, encoding: .utf8)
        let exportFile = json.dataDir.deletingLastPathComponent().appendingPathComponent("keys.age").path
        #expect(try await json.admin(["key", "export", "-o", exportFile, "--all", "--password-file", passwordFile]).status == 0)
        #expect(try await text.admin(["key", "import", exportFile, "--password-file", passwordFile]).status == 0)
        let revealed = try WireFormat.decoder().decode(
            RevealResponse.self, from: Data(try await text.must(["key", "reveal", keyID.description, "--reason", "log test", "--json"]).utf8))

        let logs = [("server json", json.log()), ("server text", text.log()), ("agent json", agent.log())]
        let tokenSecret = try #require(token.split(separator: ".").last.map(String.init))
        for (name, log) in logs {
            #expect(!log.isEmpty, "\(name) logged")
            for (what, secret) in [
                ("key hex", revealed.secretHex), ("key base64", revealed.secretBase64), ("export password", password),
                ("token", token), ("token secret", tokenSecret),
            ] {
                #expect(!log.contains(secret), "\(name) holds the \(what)")
            }
        }
        var requests: [[String: Any]] = []
        for line in json.log().split(separator: "\n") {
            let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            #expect(object?["time"] is String && object?["level"] is String && object?["message"] is String, "not a JSON log line: \(line)")
            if object?["message"] as? String == "request", let metadata = object?["metadata"] as? [String: Any] { requests.append(metadata) }
        }
        let release = requests.first { $0["route"] as? String == "/v1/keys/{id}" && $0["method"] as? String == "GET" }
        #expect(release?["status"] as? String == "200" && (release?["actor"] as? String)?.hasPrefix("device:") == true, "\(requests.prefix(3))")
        #expect(requests.contains { $0["route"] as? String == "/v1/enroll" && $0["actor"] as? String == "anonymous" })

        // SIGHUP re-reads log_level from config.toml (the agent stops first: its heartbeats are requests too).
        agent.terminate()
        let config = json.dataDir.appendingPathComponent("config.toml").path
        let original = try String(contentsOfFile: config, encoding: .utf8)
        func setLevel(_ level: String) async throws {
            let changed = original.replacing(/log_level = ['"][a-z]+['"]/, with: "log_level = '\(level)'")
            #expect(changed != original || level == "info", "log_level is in config.toml")
            try changed.write(toFile: config, atomically: true, encoding: .utf8)
            let before = json.log().components(separatedBy: "SIGHUP: log level re-read").count
            kill(json.pid, SIGHUP)
            for _ in 0..<100 where json.log().components(separatedBy: "SIGHUP: log level re-read").count == before {
                try await Task.sleep(for: .milliseconds(50))
            }
            try await Task.sleep(for: .milliseconds(200))  // the level is set just after the line is written
        }
        func requestLines() -> Int { json.log().components(separatedBy: "\"message\":\"request\"").count }
        try await setLevel("warning")
        #expect(json.log().contains(#""log_level":"warning""#), "the new level was read")
        let quiet = requestLines()
        _ = try await json.must(["status"])
        #expect(requestLines() == quiet, "at warning no request is logged")
        try await setLevel("info")
        _ = try await json.must(["status"])
        #expect(requestLines() > quiet, "back at info requests are logged")
    }

    /// `GET url` with curl: the body.
    static func get(_ url: String) async throws -> String {
        let r = try await Program.run(URL(fileURLWithPath: "/usr/bin/curl"), ["-sf", url])
        guard r.status == 0 else { throw TestFailure("curl \(url): \(r.status) \(r.stderr)") }
        return r.stdoutText
    }
}

/// Debian's Prometheus, scraping one target every second into a throwaway database.
struct PrometheusProcess {
    let child: ChildProcess
    let address: String

    static func start(scraping targets: [String: String]) async throws -> PrometheusProcess {
        let folder = try Paths.temporaryFolder("prometheus")
        let config = folder.appendingPathComponent("prometheus.yml")
        try """
        global:
          scrape_interval: 1s
          evaluation_interval: 1s
        scrape_configs:
        \(targets.sorted { $0.key < $1.key }.map { "  - job_name: \($0.key)\n    static_configs:\n      - targets: ['\($0.value)']" }.joined(separator: "\n"))
        """.write(to: config, atomically: true, encoding: .utf8)
        let address = "127.0.0.1:\(try freePort())"
        let child = try ChildProcess(
            URL(fileURLWithPath: "/usr/bin/prometheus"),
            [
                "--config.file=\(config.path)", "--storage.tsdb.path=\(folder.appendingPathComponent("data").path)",
                "--web.listen-address=\(address)",
            ], log: folder.appendingPathComponent("prometheus.log"))
        let prometheus = PrometheusProcess(child: child, address: address)
        for _ in 0..<300 {
            if (try? await MonitoringTests.get("http://\(address)/-/ready")) != nil { return prometheus }
            if let status = child.exitStatus { throw TestFailure("prometheus exited with \(status): \(child.logText().suffix(2000))") }
            try await Task.sleep(for: .milliseconds(100))
        }
        child.terminate()
        throw TestFailure("prometheus did not become ready: \(child.logText().suffix(2000))")
    }

    /// The instant value of `query` (nil when it selects nothing).
    func value(_ query: String) async throws -> Double? {
        let encoded = query.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? query
        let body = try await MonitoringTests.get("http://\(address)/api/v1/query?query=\(encoded)")
        let json = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any]
        let result = (json?["data"] as? [String: Any])?["result"] as? [[String: Any]] ?? []
        guard let first = result.first, let pair = first["value"] as? [Any], pair.count == 2, let text = pair[1] as? String else { return nil }
        return Double(text)
    }

    /// Whether Prometheus evaluates `query` without an error.
    func isValid(_ query: String) async throws -> Bool {
        let encoded = query.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? query
        let r = try await Program.run(URL(fileURLWithPath: "/usr/bin/curl"), ["-s", "http://\(address)/api/v1/query?query=\(encoded)"])
        return r.stdoutText.contains("\"status\":\"success\"")
    }

    /// Waits (up to 30 s) until `query` has `value`.
    func waitFor(_ query: String, toBe value: Double) async throws -> Bool {
        for _ in 0..<150 {
            if try await self.value(query) == value { return true }
            try await Task.sleep(for: .milliseconds(200))
        }
        return false
    }

    func terminate() { child.terminate() }

    /// A TCP port nobody listens on now (bound to port 0, read, closed).
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw TestFailure("no free port: \(String(cString: strerror(errno)))") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}

/// Debian's node-exporter with only its textfile collector, reading `textfiles`.
struct NodeExporterProcess {
    let child: ChildProcess
    let address: String

    static func start(textfiles: URL) async throws -> NodeExporterProcess {
        let address = "127.0.0.1:\(try PrometheusProcess.freePort())"
        let child = try ChildProcess(
            URL(fileURLWithPath: "/usr/bin/prometheus-node-exporter"),
            [
                "--web.listen-address=\(address)", "--collector.disable-defaults", "--collector.textfile",
                "--collector.textfile.directory=\(textfiles.path)",
            ], log: textfiles.deletingLastPathComponent().appendingPathComponent("node-exporter.log"))
        for _ in 0..<300 {
            if (try? await MonitoringTests.get("http://\(address)/metrics")) != nil { return NodeExporterProcess(child: child, address: address) }
            if let status = child.exitStatus { throw TestFailure("node-exporter exited with \(status): \(child.logText().suffix(2000))") }
            try await Task.sleep(for: .milliseconds(100))
        }
        child.terminate()
        throw TestFailure("node-exporter did not answer: \(child.logText().suffix(2000))")
    }

    func terminate() { child.terminate() }
}
