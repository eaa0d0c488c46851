import Foundation
import KeyholdClient
import KeyholdCore
import KeyholdLauncher
import KeyholdProtocol
import KeyholdTestSupport
import SwiftASN1
import Testing
import X509

/// Certificates that renew themselves (issue "Years of service", item 1), against real
/// processes: a device and a secondary with 30-second certificates renew them at a heartbeat once
/// two thirds have passed, keep working, and the certificate each replaced is refused from then
/// on; one that expired anyway is named with the command that enrolls again, and `status` warns.
@Suite(.serialized, .timeLimit(.minutes(10))) struct CertificateLifecycleTests {
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

    /// The error code a request with `identity`'s certificate gets (nil: it was answered).
    static func refusal<B: Encodable & Sendable, R: Decodable>(
        _ identity: EnrolledIdentity, _ path: String, _ body: B, _ answer: R.Type
    ) async throws -> KeyholdError.Code? {
        let client = try identity.client()
        defer { Task { await client.shutdown() } }
        do {
            _ = try await client.post(path, body, as: R.self)
            return nil
        } catch let error as KeyholdError {
            return error.code
        }
    }

    static func identity(_ file: URL) throws -> EnrolledIdentity {
        try JSONDecoder().decode(EnrolledIdentity.self, from: try Data(contentsOf: file))
    }

    @Test func aDeviceAndASecondaryRenewTheirCertificatesAndTheReplacedOnesAreRefused() async throws {
        // 120 s: renewal comes at about 76 s, and the replaced certificates stay valid long enough
        // after it (44 s, checked at once) to show that the server, not their expiry, refuses them.
        let primary = try await ServerProcess(name: "renew-primary", initOptions: ["--use-hierarchy"])
        try primary.setConfig("device_certificate_lifetime", "120")
        try primary.setConfig("server_certificate_lifetime", "120")
        try await primary.start(["--hierarchy-heartbeat", "3600"])
        defer { primary.terminate() }
        let secondary = try await ServerProcess(name: "renew-secondary", initOptions: ["--use-hierarchy"])
        try await secondary.start(["--hierarchy-heartbeat", "1"])
        defer { secondary.terminate() }
        try await HierarchyTests.join(secondary, to: primary)
        let agent = try await AgentIntegrationTests.enrolledAgent(primary, name: "renew-device")
        defer { agent.terminate() }

        let deviceFile = agent.stateDir.appendingPathComponent("identity.json")
        let secondaryFile = secondary.dataDir.appendingPathComponent("primary.json")
        let firstDevice = try Self.identity(deviceFile)
        let firstSecondary = try Self.identity(secondaryFile)
        let deviceExpiry = try #require(try await Self.expiry(primary, "device", firstDevice.clientID))
        let first = try Certificate(pemEncoded: firstDevice.certificatePEM)
        #expect(
            abs(first.notValidAfter.timeIntervalSince(first.notValidBefore) - 132) < 1,
            "device_certificate_lifetime (120 s) decides the lifetime, valid from a tenth of it before issue")
        #expect(abs(try await Self.notAfter(firstDevice.certificatePEM, in: agent.folder).timeIntervalSince(first.notValidAfter)) < 1)

        // The agent renews at a heartbeat (every second here), the secondary at its hierarchy
        // heartbeat (every second too): watched in their files, without extra processes.
        // As soon as each has used its new certificate, the one it replaced is tried (while it is
        // still valid): the server refuses it.
        var renewed = (device: false, secondary: false)
        var refused = (device: KeyholdError.Code?.none, secondary: KeyholdError.Code?.none)
        let deadline = first.notValidAfter.addingTimeInterval(-5)
        while !(renewed.device && renewed.secondary) && Date() < deadline {
            try await Task.sleep(for: .milliseconds(500))
            let device = try Self.identity(deviceFile)
            if !renewed.device && device.certificatePEM != firstDevice.certificatePEM && device.previousCertificatePEM == nil {
                renewed.device = true
                refused.device = try await Self.refusal(
                    firstDevice, APIPath.heartbeat, HeartbeatRequest(agentVersion: "test", keyCount: 0), HeartbeatResponse.self)
            }
            let server = try Self.identity(secondaryFile)
            if !renewed.secondary && server.certificatePEM != firstSecondary.certificatePEM && server.previousCertificatePEM == nil {
                renewed.secondary = true
                refused.secondary = try await Self.refusal(
                    firstSecondary, APIPath.hierarchyPush, PushRequest(keys: [], changesAfter: 0), PushResponse.self)
            }
        }
        #expect(renewed.device && renewed.secondary, "both renewed and used their new certificates: \(renewed)")
        #expect(refused.device == .unauthenticated && refused.secondary == .unauthenticated, "\(refused)")
        #expect(try await Self.expiry(primary, "device", firstDevice.clientID) != deviceExpiry)

        // The new certificates are what the primary records, and nothing of the old is kept once used.
        let nowDevice = try Self.identity(deviceFile)
        let nowSecondary = try Self.identity(secondaryFile)
        #expect(nowDevice.certificatePEM != firstDevice.certificatePEM && nowDevice.keyPEM != firstDevice.keyPEM, "a new key pair")
        #expect(nowDevice.previousCertificatePEM == nil && nowSecondary.previousCertificatePEM == nil)
        let recordedText = try #require(try await Self.expiry(primary, "device", firstDevice.clientID))
        let recorded = try #require(ISO8601DateFormatter().date(from: recordedText))
        #expect(abs(try await Self.notAfter(nowDevice.certificatePEM, in: agent.folder).timeIntervalSince(recorded)) < 1)

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
        // 40 s: status runs well before the last quarter (10 s), when a warning would be due.
        try server.setConfig("device_certificate_lifetime", "40")
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

    /// SHA-256 of the certificate a listener presents, as OpenSSL's client sees it.
    static func served(_ address: String) async throws -> String {
        let r = try await Program.run(
            URL(fileURLWithPath: "/bin/sh"),
            ["-c", "openssl s_client -connect \(address) </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256"])
        return r.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// SHA-256 of a PEM certificate file, as OpenSSL reads it.
    static func fingerprint(_ file: URL) async throws -> String {
        let r = try await Program.run(URL(fileURLWithPath: "/usr/bin/openssl"), ["x509", "-in", file.path, "-noout", "-fingerprint", "-sha256"])
        return r.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test func theTLSCertificateRenewsOnDemandAndByItselfWithoutARestart() async throws {
        let server = try await ServerProcess(name: "tls-renew")
        try server.setConfig("tls_certificate_lifetime", "30")
        try await server.start()
        defer { server.terminate() }
        let agent = try await AgentIntegrationTests.enrolledAgent(server, name: "tls-renew-d")
        defer { agent.terminate() }
        let pem = server.dataDir.appendingPathComponent("tls.pem")
        let first = try await Self.fingerprint(pem)
        #expect(first.contains("Fingerprint="), "\(first)")
        #expect(try await Self.served(server.enroll) == first)
        let pid = server.pid

        // On demand: a new certificate on disk, served at once, by the same process.
        let renewed = try await server.admin(["tls", "renew"])
        #expect(renewed.status == 0 && renewed.stdoutText.contains("expires "), "\(renewed.stderr)")
        let second = try await Self.fingerprint(pem)
        #expect(second != first)
        #expect(try await Self.served(server.enroll) == second && server.pid == pid)
        let tls = try Certificate(pemEncoded: try server.file("tls.pem"))
        #expect(abs(tls.notValidAfter.timeIntervalSince(tls.notValidBefore) - 33) < 1, "tls_certificate_lifetime decides a renewed one's lifetime")
        // The agent pins the CA, not the certificate: it goes on working on new connections.
        let plain = try AgentIntegrationTests.write(agent, "p", 1000)
        #expect(try await agent.keyhold(["file", "encrypt", agent.path("p"), "-o", agent.path("p.khf")]).status == 0)

        // By itself, once two thirds of the 30 seconds have passed.
        var third = second
        while third == second && Date() < tls.notValidAfter {
            try await Task.sleep(for: .seconds(1))
            third = try await Self.fingerprint(pem)
        }
        #expect(third != second, "renewed by the server itself")
        #expect(try await Self.served(server.enroll) == third && server.pid == pid)
        try agent.clearCache()
        let back = try await agent.keyhold(["file", "decrypt", agent.path("p.khf"), "-o", agent.path("p.out")])
        #expect(back.status == 0, "\(back.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: agent.path("p.out"))) == plain)
        let left = try FileManager.default.contentsOfDirectory(atPath: server.dataDir.path).filter { $0.hasSuffix(".next") }
        #expect(left.isEmpty, "\(left)")
        let trail = try await server.auditEntries().filter { $0.action == .tlsRenew }
        #expect(trail.count >= 2 && trail.first?.actor.description.hasPrefix("admin:") == true, "\(trail)")
        #expect(trail.dropFirst().allSatisfy { $0.actor.description.hasPrefix("server:") && $0.route == .local })
    }
}
