import Foundation
import KeyholdClient
import KeyholdCore
import KeyholdProtocol
import KeyholdTestSupport
import SwiftASN1
import Testing
import X509

/// CA rotation (issue "Years of service", item 3; docs/operations.md, "CA rotation"), with real
/// processes: a primary whose CA is rotated, a real agent and a secondary that joined it. Nobody
/// is re-enrolled; the device and the secondary keep getting keys before, during and after the
/// overlap; they learn the new CA through its cross-signature and renew under it; `ca
/// retire-old` is refused while a client still holds a certificate from the old CA.
@Suite(.serialized, .timeLimit(.minutes(10))) struct CARotationTests {
    static func caStatus(_ server: ServerProcess) async throws -> CAStatus {
        let r = try await server.admin(["ca", "status", "--json"])
        guard r.status == 0 else { throw TestFailure("ca status failed: \(r.stderr)") }
        return try WireFormat.decoder().decode(CAStatus.self, from: r.stdout)
    }

    static func identity(_ file: URL) throws -> EnrolledIdentity {
        try JSONDecoder().decode(EnrolledIdentity.self, from: try Data(contentsOf: file))
    }

    static func certificateCount(_ pem: String) -> Int { pem.components(separatedBy: "-----BEGIN CERTIFICATE-----").count - 1 }

    /// Waits until `condition` holds, checking twice a second.
    static func waitFor(_ what: String, within: Duration = .seconds(60), _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + within
        while ContinuousClock.now < deadline {
            if try await condition() { return }
            try await Task.sleep(for: .milliseconds(500))
        }
        throw TestFailure("\(what) did not happen within \(within)")
    }

    @Test func theCARotatesWithoutReEnrollingAnyone() async throws {
        let p = try await ServerProcess(name: "ca-primary", initOptions: ["--use-hierarchy"])
        try await p.start(["--hierarchy-heartbeat", "3600"])
        defer { p.terminate() }
        let s = try await ServerProcess(name: "ca-secondary", initOptions: ["--use-hierarchy"])
        try await s.start(["--hierarchy-heartbeat", "1"])
        defer { s.terminate() }
        try await HierarchyTests.join(s, to: p)
        let device = try await AgentIntegrationTests.enrolledAgent(p, name: "ca-device")
        defer { device.terminate() }
        // A device of the secondary asks it for keys held at the primary: each first request is
        // a lookup with the secondary's certificate at the primary.
        let below = try await s.enrollDevice("below")
        // Holds a certificate from the old CA until it is revoked (a test client: it never renews).
        let stale = try await p.enrollDevice("stale")
        let escrower = try await p.enrollDevice("escrower")
        var pool: [(KeyID, SecretKey)] = []
        for _ in 0..<6 { pool.append(try await KeyRetentionTests.escrow(escrower, label: "pool")) }
        #expect(try await p.admin(["device", "revoke", escrower.clientID.description]).status == 0)

        let plain = try AgentIntegrationTests.write(device, "plain", 5000)
        #expect(try await device.keyhold(["file", "encrypt", device.path("plain"), "-o", device.path("c.khf")]).status == 0)
        func deviceReleases(_ phase: String) async throws {
            try device.clearCache()
            let r = try await device.keyhold(["file", "decrypt", device.path("c.khf"), "-o", device.path("back-\(phase)")])
            #expect(r.status == 0, "\(phase): \(r.stderr)")
            #expect(try Data(contentsOf: URL(fileURLWithPath: device.path("back-\(phase)"))) == plain, "\(phase)")
        }
        func secondaryLooksUp(_ n: Int, _ phase: String) async throws {
            let (id, secret) = pool[n]
            #expect(try await KeyRetentionTests.release(id, to: below).secret.constantTimeEquals(secret), "\(phase)")
        }
        let deviceFile = device.stateDir.appendingPathComponent("identity.json")
        let secondaryFile = s.dataDir.appendingPathComponent("primary.json")
        let enrolledAs = (device: try Self.identity(deviceFile).clientID, secondary: try Self.identity(secondaryFile).clientID)
        let oldCA = try String(contentsOf: p.dataDir.appendingPathComponent("ca.pem"), encoding: .utf8)

        // Before.
        try await deviceReleases("before")
        try await secondaryLooksUp(0, "before")
        #expect(try await Self.caStatus(p).previous == nil)

        // The rotation: a new CA, the old one still trusted.
        let rotate = try await p.admin(["ca", "rotate"])
        #expect(rotate.status == 0 && rotate.stdoutText.contains("new CA"), "\(rotate.text)")
        let newCA = try String(contentsOf: p.dataDir.appendingPathComponent("ca.pem"), encoding: .utf8)
        #expect(newCA != oldCA)
        let newSubject = try Certificate(pemEncoded: newCA).subject
        #expect(try await Self.caStatus(p).previous != nil)

        // During the overlap, before anyone renewed: a client that knows only the old CA is served.
        #expect(try await KeyRetentionTests.release(pool[1].0, to: stale).secret.constantTimeEquals(pool[1].1))
        try await deviceReleases("overlap")
        try await secondaryLooksUp(2, "overlap")
        let refused = try await p.admin(["ca", "retire-old"])
        #expect(refused.status != 0 && refused.stderr.contains("stale"), "refused while 'stale' holds an old-CA certificate: \(refused.text)")

        // The agent and the secondary learn the new CA at their next heartbeat and renew under it;
        // admin.pem was re-issued by the rotation itself. Only the stale client is left.
        try await Self.waitFor("the device and the secondary renewing under the new CA") {
            try await Self.caStatus(p).onPrevious.map(\.id) == [stale.clientID]
        }
        for file in [deviceFile, secondaryFile] {
            let identity = try Self.identity(file)
            #expect(Self.certificateCount(identity.caPEM) == 2, "\(file.lastPathComponent) trusts both CAs during the overlap")
            #expect(try Certificate(pemEncoded: identity.certificatePEM).issuer == newSubject, "\(file.lastPathComponent) renewed under the new CA")
        }
        // Nobody was re-enrolled: the same enrollments, renewed.
        #expect(try Self.identity(deviceFile).clientID == enrolledAs.device && Self.identity(secondaryFile).clientID == enrolledAs.secondary)
        try await deviceReleases("renewed")
        try await secondaryLooksUp(3, "renewed")

        // Once the last holder is gone, the overlap ends.
        #expect(try await p.admin(["device", "revoke", stale.clientID.description]).status == 0)
        let retire = try await p.admin(["ca", "retire-old"])
        #expect(retire.status == 0, "\(retire.text)")
        #expect(try await Self.caStatus(p).previous == nil)

        // After: only the new CA is trusted, by the server and, within a heartbeat, by its clients.
        // An old-CA certificate is refused in the TLS handshake now, before the server looks its
        // client up (which would answer client_revoked).
        var oldCertificate = stale
        oldCertificate.caPEM = newCA
        do {
            _ = try await KeyRetentionTests.release(pool[4].0, to: oldCertificate)
            Issue.record("a certificate from the retired CA was accepted")
        } catch let error as KeyholdError {
            #expect(error.code != .clientRevoked, "\(error.code): \(error.message)")
        }
        try await deviceReleases("after")
        try await secondaryLooksUp(4, "after")
        try await Self.waitFor("the device and the secondary dropping the old CA") {
            try [deviceFile, secondaryFile].allSatisfy { Self.certificateCount(try Self.identity($0).caPEM) == 1 }
        }
        #expect(try Self.identity(deviceFile).caPEM.contains(newCA.trimmingCharacters(in: .whitespacesAndNewlines)))
        try await deviceReleases("final")
        try await secondaryLooksUp(5, "final")
        let newcomer = try await p.enrollDevice("newcomer")
        #expect(try Certificate(pemEncoded: newcomer.certificatePEM).issuer == newSubject)

        let actions = try await p.auditEntries().map(\.action)
        #expect(actions.contains(.caRotate) && actions.contains(.caRetire))
    }
}
