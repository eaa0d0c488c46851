import Foundation
import KeyholdTestSupport
import Testing

/// `keyhold-server doctor` on real data directories: what it finds, the hints it gives, the
/// status it exits with, and that it changes nothing.
@Suite struct DoctorTests {
    func doctor(_ s: ServerProcess) async throws -> RunResult { try await s.admin(["doctor"]) }

    func line(_ r: RunResult, _ prefix: String) -> String? {
        r.stdoutText.split(separator: "\n").map(String.init).first { $0.hasPrefix(prefix) }
    }

    @Test func doctorFindsWhatAServerNeedsAndSaysWhatToFix() async throws {
        let s = try await ServerProcess(name: "doctor")
        defer { s.terminate() }
        let dir = s.dataDir

        // Stopped: everything in order, the server not running is only a warning.
        var r = try await doctor(s)
        #expect(r.status == 0, "\(r.text)")
        #expect(line(r, "ok   database: sqlite is reachable; schema ") != nil, "\(r.text)")
        #expect(line(r, "warn running server: not running") != nil, "\(r.text)")
        #expect(line(r, "ok   primary: none joined") != nil, "\(r.text)")
        #expect(!r.stdoutText.contains("FAIL"))

        // A secret file others may read: a failure with the chmod to run, exit status 78.
        let masterKey = dir.appendingPathComponent("master.key").path
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: masterKey)
        r = try await doctor(s)
        #expect(r.status == 78, "\(r.text)")
        #expect(line(r, "FAIL secret files: master.key has mode 644") != nil && r.stdoutText.contains("hint: chmod 600 \(masterKey)"), "\(r.text)")
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: masterKey)

        // The database gone: named, with where to get it back.
        let sqlite = dir.appendingPathComponent("keyhold.sqlite")
        let aside = dir.appendingPathComponent("aside.sqlite")
        try FileManager.default.moveItem(at: sqlite, to: aside)
        r = try await doctor(s)
        #expect(r.status == 78 && line(r, "FAIL database: keyhold.sqlite is missing") != nil, "\(r.text)")
        #expect(!FileManager.default.fileExists(atPath: sqlite.path), "doctor creates nothing")
        try FileManager.default.moveItem(at: aside, to: sqlite)

        // Running: it answers through the admin API.
        try await s.start()
        r = try await doctor(s)
        #expect(r.status == 0 && line(r, "ok   running server: answers at \(s.api)") != nil, "\(r.text)")

        // Joined to a primary: reachable and accepting; refusing (a warning); gone (unreachable, 75).
        let t = try await ServerProcess(name: "doctor-t", initOptions: ["--use-hierarchy"])
        defer { t.terminate() }
        try await t.start()
        try await HierarchyTests.join(s, to: t)
        r = try await doctor(s)
        #expect(r.status == 0 && line(r, "ok   primary: ") != nil && r.stdoutText.contains("accepts this server's pushes"), "\(r.text)")
        #expect(try await t.admin(["hierarchy", "disable"]).status == 0)
        r = try await doctor(s)
        #expect(r.status == 0 && line(r, "warn primary: ") != nil && r.stdoutText.contains("refuses"), "\(r.text)")
        _ = await t.stop()
        r = try await doctor(s)
        #expect(r.status == 75 && line(r, "FAIL primary: ") != nil, "\(r.text)")

        // A configuration that does not read stops the checks there, with its own message.
        _ = await s.stop()
        let config = dir.appendingPathComponent("config.toml")
        let original = try String(contentsOf: config, encoding: .utf8)
        try (original + "\nlisten_typo = 1\n").write(to: config, atomically: true, encoding: .utf8)
        r = try await doctor(s)
        #expect(r.status == 78 && line(r, "FAIL configuration: ") != nil && r.stdoutText.contains("listen_typo"), "\(r.text)")
        #expect(line(r, "ok   database") == nil, "nothing is checked past a configuration that does not read")
        try original.write(to: config, atomically: true, encoding: .utf8)

        // JSON: one object per check.
        let json = try await s.admin(["doctor", "--json"])
        let checks = try JSONSerialization.jsonObject(with: json.stdout) as? [[String: Any]]
        #expect(checks?.contains { $0["check"] as? String == "database" && $0["level"] as? String == "ok" } == true, "\(json.text)")
    }
}
