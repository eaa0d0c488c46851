import Foundation
import KeyholdClient
import KeyholdCore
import KeyholdLauncher
import KeyholdProtocol
import KeyholdTestSupport
import Testing
import X509

/// Certificates that renew themselves (issue "Years of service", item 1), against real
/// processes: a device and a secondary with 30-second certificates renew them at a heartbeat once
/// two thirds have passed, keep working, and the certificate each replaced is refused from then
/// on; one that expired anyway is named with the command that enrolls again, and `status` warns.
@Suite(.serialized) struct CertificateLifecycleTests {
    /// The `certificate_expires` of client `id` in `device list --json` or `secondary list --json`.
    static func expiry(_ server: ServerProcess, _ list: String, _ id: ClientID) async throws -> String? {
        let json = try await server.admin([list, "list", "--json"]).stdout
        let rows = (try JSONSerialization.jsonObject(with: json) as? [[String: Any]]) ?? []
        return rows.first { $0["id"] as? String == id.description }?["certificate_expires"] as? String
    }

    /// The notAfter OpenSSL reads from a PEM certificate.
    static func notAfter(_ pem: String, in folder: URL) async throws -> Date {
        let file = folder.appendingPathComponent("read-\(UUID().uuidString).pem")
        try pem.write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        let r = try await Program.run(
            URL(fileURLWithPath: "/usr/bin/openssl"), ["x509", "-in", file.path, "-noout", "-enddate", "-dateopt", "iso_8601"])
        let text = r.stdoutText.replacing("notAfter=", with: "").replacing(" ", with: "T").trimmingCharacters(in: .whitespacesAndNewlines)
        return try #require(ISO8601DateFormatter().date(from: text), "\(r.stdoutText)")
    }

    static func identity(_ file: URL) throws -> EnrolledIdentity {
        try JSONDecoder().decode(EnrolledIdentity.self, from: try Data(contentsOf: file))
    }

    @Test func aDeviceAndASecondaryRenewTheirCertificatesAndTheReplacedOnesAreRefused() async throws {
        let primary = try await ServerProcess(name: "renew-primary", initOptions: ["--use-hierarchy"])
        try primary.setConfig("device_certificate_lifetime", "30")
        try primary.setConfig("server_certificate_lifetime", "30")
        try await primary.start(["--hierarchy-heartbeat", "3600"])
        defer { primary.terminate() }
        let secondary = try await HierarchyTests.server("renew-secondary")
        defer { secondary.terminate() }
        try await HierarchyTests.join(secondary, to: primary)
        let agent = try await AgentIntegrationTests.enrolledAgent(primary, name: "renew-device")
        defer { agent.terminate() }

        let deviceFile = agent.stateDir.appendingPathComponent("identity.json")
        let secondaryFile = secondary.dataDir.appendingPathComponent("primary.json")
        let firstDevice = try Self.identity(deviceFile)
        let firstSecondary = try Self.identity(secondaryFile)
        let deviceExpiry = try #require(try await Self.expiry(primary, "device", firstDevice.clientID))
        let secondaryExpiry = try #require(try await Self.expiry(primary, "secondary", firstSecondary.clientID))
        #expect(
            abs(try await Self.notAfter(firstDevice.certificatePEM, in: agent.folder).timeIntervalSinceNow - 30) < 10,
            "device_certificate_lifetime decides the first certificate's lifetime")

        // The agent renews at a heartbeat (every second here); the secondary at its hierarchy
        // heartbeat, which a sync stands in for (the server's own runs once an hour here).
        var renewed = (device: false, secondary: false)
        for _ in 0..<120 where !(renewed.device && renewed.secondary) {
            try await Task.sleep(for: .milliseconds(500))
            if !renewed.secondary, firstSecondary.renewalDue() { _ = try await HierarchyTests.sync(secondary) }
            renewed.device = try await Self.expiry(primary, "device", firstDevice.clientID) != deviceExpiry
            renewed.secondary = try await Self.expiry(primary, "secondary", firstSecondary.clientID) != secondaryExpiry
        }
        #expect(renewed.device && renewed.secondary, "both became the current certificate at the primary: \(renewed)")

        // The new certificates are what the primary records, and nothing of the old is kept once used.
        let nowDevice = try Self.identity(deviceFile)
        let nowSecondary = try Self.identity(secondaryFile)
        #expect(nowDevice.certificatePEM != firstDevice.certificatePEM && nowDevice.keyPEM != firstDevice.keyPEM, "a new key pair")
        #expect(nowDevice.previousCertificatePEM == nil && nowSecondary.previousCertificatePEM == nil)
        let recordedText = try #require(try await Self.expiry(primary, "device", firstDevice.clientID))
        let recorded = try #require(ISO8601DateFormatter().date(from: recordedText))
        #expect(abs(try await Self.notAfter(nowDevice.certificatePEM, in: agent.folder).timeIntervalSince(recorded)) < 1)

        // The replaced certificates are refused, though still within their validity.
        let old = try firstDevice.client()
        let refused = await #expect(throws: KeyholdError.self) {
            try await old.post(APIPath.heartbeat, HeartbeatRequest(agentVersion: "test", keyCount: 0), as: HeartbeatResponse.self)
        }
        await old.shutdown()
        #expect(refused?.code == .unauthenticated, "\(String(describing: refused))")
        let oldSecondary = try firstSecondary.client()
        let refusedPush = await #expect(throws: KeyholdError.self) {
            try await oldSecondary.post(APIPath.hierarchyPush, PushRequest(keys: [], changesAfter: 0), as: PushResponse.self)
        }
        await oldSecondary.shutdown()
        #expect(refusedPush?.code == .unauthenticated)

        // Both keep working with the new ones: a file escrowed and opened, a push acknowledged.
        let plain = try AgentIntegrationTests.write(agent, "plain", 10_000)
        #expect(try await agent.keyhold(["file", "encrypt", agent.path("plain"), "-o", agent.path("c.khf")]).status == 0)
        try agent.clearCache()
        let back = try await agent.keyhold(["file", "decrypt", agent.path("c.khf"), "-o", agent.path("back")])
        #expect(back.status == 0, "\(back.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: agent.path("back"))) == plain)
        #expect(try await HierarchyTests.sync(secondary).status == 0)

        let trail = try await primary.auditEntries()
        for id in [firstDevice.clientID, firstSecondary.clientID] {
            #expect(trail.contains { $0.action == .certificateRenew && $0.actor.description.hasSuffix(id.description) && $0.result == .ok })
        }
        let agentStatus = try await agent.keyhold(["status"]).stdoutText
        #expect(agentStatus.contains("certificate:     expires "), "\(agentStatus)")
    }

    @Test func anExpiredCertificateIsNamedWithTheEnrollCommandAndStatusWarnsAboutIt() async throws {
        let server = try await ServerProcess(name: "expiry")
        try server.setConfig("device_certificate_lifetime", "10")
        try await server.start()
        defer { server.terminate() }
        // Heartbeats once an hour: the agent never gets to renew.
        let agent = try AgentProcess(name: "expiry-device")
        _ = try await agent.start(["--heartbeat", "3600", "--group", "keyhold"])
        defer { agent.terminate() }
        let token = try await server.must(["token", "create"])
        #expect(try await agent.keyhold(["enroll", token]).status == 0)
        let device = try Self.identity(agent.stateDir.appendingPathComponent("identity.json"))
        let expires = try await Self.notAfter(device.certificatePEM, in: agent.folder)

        // Before: status lists this server's own certificates and warns about none of them.
        let before = try await server.must(["status"])
        #expect(before.contains("certificate:  CA expires ") && before.contains("certificate:  TLS expires "), "\(before)")
        #expect(before.contains("certificate:  administrator administrator ("), "\(before)")
        #expect(!before.contains("warning:"), "\(before)")
        let json = try WireFormat.decoder().decode(StatusResponse.self, from: try await server.admin(["status", "--json"]).stdout)
        let ca = try #require(json.certificates.first { $0.kind == "ca" })
        let caPEM = try server.file("ca.pem")
        #expect(abs(ca.expires.timeIntervalSince(try await Self.notAfter(caPEM, in: agent.folder))) < 1)

        while Date() < expires.addingTimeInterval(1) { try await Task.sleep(for: .milliseconds(250)) }
        _ = try AgentIntegrationTests.write(agent, "x", 100)
        let r = try await agent.keyhold(["file", "encrypt", agent.path("x"), "-o", agent.path("x.khf")])
        #expect(r.status != 0)
        #expect(r.stderr.contains("certificate") && r.stderr.contains("expired"), "\(r.stderr)")
        #expect(r.stderr.contains("hint: ") && r.stderr.contains("keyhold enroll NEW-TOKEN"), "\(r.stderr)")

        let after = try await server.must(["status"])
        #expect(after.contains("warning: the certificate of device ") && after.contains("(\(device.clientID)) EXPIRED at "), "\(after)")
        #expect(after.contains("hint: it renews at the device's next heartbeat"), "\(after)")
    }
}
