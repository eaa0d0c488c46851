import Foundation
import KeyholdTestSupport
import Testing

/// The units in `systemd/` pass `systemd-analyze verify` without a single diagnostic (it exits 0
/// even for lines it ignores, so silence is the check).
@Suite(.timeLimit(.minutes(10))) struct SystemdUnitTests {
    /// A template is checked as one of its instances (as udev starts it for /dev/sdb).
    static let units = ["keyhold-server.service", "keyhold-agent.service", "keyhold-unlock@.service"]

    @Test(arguments: units)
    func verifies(_ unit: String) async throws {
        let source = try String(contentsOf: Paths.repository.appendingPathComponent("systemd/\(unit)"), encoding: .utf8)
        let dir = try Paths.temporaryFolder("unit")
        defer { try? FileManager.default.removeItem(at: dir) }
        // verify checks that ExecStart exists: point it at the built executables.
        let local = source.replacingOccurrences(of: "/usr/local/bin/", with: Paths.executable("keyhold").deletingLastPathComponent().path + "/")
        let path = dir.appendingPathComponent(unit.replacingOccurrences(of: "@.", with: "@sdb."))
        try local.write(to: path, atomically: true, encoding: .utf8)
        let r = try await run(URL(fileURLWithPath: "/usr/bin/systemd-analyze"), ["verify", path.path])
        #expect(r.status == 0)
        #expect(r.stderr.isEmpty && r.stdoutText.isEmpty, "systemd-analyze: \(r.stderr)\(r.stdoutText)")
    }

    /// The check above can fail: a unit with a bad value makes systemd-analyze speak.
    @Test func aBrokenUnitIsNoticed() async throws {
        let dir = try Paths.temporaryFolder("unit")
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("broken.service")
        try "[Service]\nExecStart=/bin/true\nNoNewPrivileges=maybe\n".write(to: path, atomically: true, encoding: .utf8)
        let r = try await run(URL(fileURLWithPath: "/usr/bin/systemd-analyze"), ["verify", path.path])
        #expect(!r.stderr.isEmpty)
    }
}
