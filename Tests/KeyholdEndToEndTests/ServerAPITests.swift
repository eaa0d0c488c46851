import AsyncHTTPClient
import Crypto
import Foundation
import KeyholdClient
import KeyholdCore
import KeyholdProtocol
import KeyholdTestSupport
import NIOSSL
import Testing

/// A real keyhold-server on loopback with real TLS.
@Suite(.timeLimit(.minutes(10))) struct ServerAPITests {
    @Test func clientWithoutCertificateIsRefusedAtTheHandshake() async throws {
        let server = try await ServerProcess(name: "tls")
        try await server.start()
        defer { server.terminate() }
        let anonymous = try APIClient(address: server.api, caPEM: try server.file("ca.pem"))
        await expectCode("unreachable") {
            _ = try await using(anonymous) { try await $0.get(APIPath.adminStatus, as: StatusResponse.self) }
        }
        // The same call with the admin certificate works, so the refusal is about the certificate.
        let status = try await using(try server.adminClient()) { try await $0.get(APIPath.adminStatus, as: StatusResponse.self) }
        #expect(status.keyCount == 0)
        // And the enrollment listener needs none.
        #expect(try await APIClient.fetchCA(address: server.enroll).contains("BEGIN CERTIFICATE"))
    }

    @Test func certificateFromAnotherCAIsRefused() async throws {
        let server = try await ServerProcess(name: "one")
        let other = try await ServerProcess(name: "two")
        try await server.start()
        defer { server.terminate() }
        // other's admin certificate, trusting server's CA for the server side.
        let foreign = try APIClient(
            address: server.api, caPEM: try server.file("ca.pem"),
            certificatePEM: try other.file("admin.pem"), keyPEM: try other.file("admin.key")
        )
        await expectCode("unreachable") {
            _ = try await using(foreign) { try await $0.get(APIPath.adminStatus, as: StatusResponse.self) }
        }
    }

    @Test func escrowThenFetchAndAuditRows() async throws {
        let server = try await ServerProcess(name: "escrow")
        try await server.start()
        defer { server.terminate() }
        let d1 = try await server.enrollDevice("d1")
        let d2 = try await server.enrollDevice("d2")
        let (record, secret, request) = newKey(d1)
        let ack = try await using(try d1.client()) { try await $0.put(APIPath.key(record.id.description), request, as: EscrowResponse.self) }
        #expect(ack == EscrowResponse(keyID: record.id, outcome: .inserted))
        // Idempotent for the same secret.
        let again = try await using(try d1.client()) { try await $0.put(APIPath.key(record.id.description), request, as: EscrowResponse.self) }
        #expect(again.outcome == .alreadyPresent)
        // Another enrolled device of the same server gets it.
        let fetched = try await using(try d2.client()) { try await $0.get(APIPath.key(record.id.description), as: KeyMaterial.self) }
        #expect(fetched.record == record)
        #expect(fetched.secret.constantTimeEquals(secret))
        // Unknown key: not_found, audited.
        let missing = KeyID.random()
        await expectCode("not_found") {
            _ = try await using(try d2.client()) { try await $0.get(APIPath.key(missing.description), as: KeyMaterial.self) }
        }

        let audit = try await server.auditEntries()
        let escrows = audit.filter { $0.action == .escrow && $0.keyID == record.id }
        #expect(escrows.count == 2)
        #expect(escrows.allSatisfy { $0.actor.description == "device:\(d1.clientID)" && $0.result.description == "ok" })
        let releases = audit.filter { $0.action == .release }
        #expect(releases.map(\.result.description) == ["ok", "not_found"])
        #expect(releases.first?.actor.description == "device:\(d2.clientID)")
        #expect(releases.first?.keyID == record.id)
    }

    @Test func conflictingSecretIsRefusedAndChangesNothing() async throws {
        let server = try await ServerProcess(name: "conflict")
        try await server.start()
        defer { server.terminate() }
        let d1 = try await server.enrollDevice()
        let (record, secret, request) = newKey(d1)
        _ = try await using(try d1.client()) { try await $0.put(APIPath.key(record.id.description), request, as: EscrowResponse.self) }
        var impostor = request
        impostor.key.secret = .generate()
        await expectCode("conflict") {
            _ = try await using(try d1.client()) { try await $0.put(APIPath.key(record.id.description), impostor, as: EscrowResponse.self) }
        }
        let fetched = try await using(try d1.client()) { try await $0.get(APIPath.key(record.id.description), as: KeyMaterial.self) }
        #expect(fetched.secret.constantTimeEquals(secret))
        #expect(try await server.auditEntries().contains { $0.action == .escrow && $0.result.description == "conflict" })
    }

    @Test func blockedKeyIsNeverReleased() async throws {
        let server = try await ServerProcess(name: "block")
        try await server.start()
        defer { server.terminate() }
        let d1 = try await server.enrollDevice()
        let (record, _, request) = newKey(d1)
        _ = try await using(try d1.client()) { try await $0.put(APIPath.key(record.id.description), request, as: EscrowResponse.self) }
        let blocked = try await server.admin(["key", "block", record.id.description])
        #expect(blocked.status == 0, "\(blocked.stderr)")
        await expectCode("key_blocked") {
            _ = try await using(try d1.client()) { try await $0.get(APIPath.key(record.id.description), as: KeyMaterial.self) }
        }
        let list = try await server.admin(["key", "list", "--json"])
        #expect(list.stdoutText.contains("\"blocked\" : true"))
        #expect(!list.stdoutText.contains("secret"), "key list never shows secrets")
        #expect(try await server.admin(["key", "unblock", record.id.description]).status == 0)
        _ = try await using(try d1.client()) { try await $0.get(APIPath.key(record.id.description), as: KeyMaterial.self) }
        let results = try await server.auditEntries().filter { $0.keyID == record.id }.map { "\($0.action):\($0.result)" }
        #expect(results == ["escrow:ok", "block:ok", "release:key_blocked", "unblock:ok", "release:ok"])
    }

    @Test func revokedDeviceIsRefusedOnItsNextRequest() async throws {
        let server = try await ServerProcess(name: "revoke")
        try await server.start()
        defer { server.terminate() }
        let d1 = try await server.enrollDevice("laptop")
        let client = try d1.client()
        _ = try await client.post(APIPath.heartbeat, HeartbeatRequest(agentVersion: "0.1.0", keyCount: 0), as: HeartbeatResponse.self)
        let (record, _, request) = newKey(d1)
        _ = try await client.put(APIPath.key(record.id.description), request, as: EscrowResponse.self)
        _ = try await client.get(APIPath.key(record.id.description), as: KeyMaterial.self)
        let list = try await server.admin(["device", "list"])
        #expect(list.stdoutText.contains("\(d1.clientID)\tdevice\tactive\tlaptop"))
        #expect(try await server.admin(["device", "revoke", d1.clientID.description]).status == 0)
        // The same keep-alive client, on its very next request: a key request (whose enrollment
        // check rides in the release statement) and a heartbeat.
        await expectCode("client_revoked") { _ = try await client.get(APIPath.key(record.id.description), as: KeyMaterial.self) }
        await expectCode("client_revoked") {
            _ = try await client.post(APIPath.heartbeat, HeartbeatRequest(agentVersion: "0.1.0", keyCount: 0), as: HeartbeatResponse.self)
        }
        await client.shutdown()
        let audit = try await server.auditEntries()
        #expect(audit.filter { $0.action == .release }.map(\.result.description) == ["ok"])
        #expect(audit.filter { $0.result.description == "client_revoked" }.count == 2)
        #expect(try await server.admin(["device", "list"]).stdoutText.contains("\(d1.clientID)\tdevice\trevoked"))
    }

    @Test func deviceCertificateOnAnAdminEndpointIsForbidden() async throws {
        let server = try await ServerProcess(name: "forbid")
        try await server.start()
        defer { server.terminate() }
        let d1 = try await server.enrollDevice()
        await expectCode("forbidden") { _ = try await using(try d1.client()) { try await $0.get(APIPath.adminStatus, as: StatusResponse.self) } }
        await expectCode("forbidden") {
            _ = try await using(try d1.client()) {
                try await $0.post(APIPath.adminTokens, TokenCreateRequest(role: .device, uses: 5, ttlSeconds: 60), as: TokenCreateResponse.self)
            }
        }
    }

    @Test func tokenExpiryUseCountAndReplay() async throws {
        let server = try await ServerProcess(name: "tokens")
        try await server.start()
        defer { server.terminate() }
        // Use count: a two-use token enrolls twice, then is used up.
        let twice = try await server.token(uses: 2)
        _ = try await Enrollment.enroll(token: twice, name: "a")
        _ = try await Enrollment.enroll(token: twice, name: "b")
        await expectCode("token_invalid") { _ = try await Enrollment.enroll(token: twice, name: "c") }
        // Replay of a used single-use token.
        let once = try await server.token(uses: 1)
        _ = try await Enrollment.enroll(token: once, name: "d")
        await expectCode("token_invalid") { _ = try await Enrollment.enroll(token: once, name: "d-replay") }
        // A guessed secret for a valid token id.
        var forged = try await server.token(uses: 1)
        forged.secret = Base64URL.encode(SecureRandom.bytes(count: 32))
        await expectCode("token_invalid") { _ = try await Enrollment.enroll(token: forged, name: "e") }
        // Expiry.
        let short = try await server.token(uses: 5, ttl: "1s")
        try await Task.sleep(for: .seconds(2))
        await expectCode("token_invalid") { _ = try await Enrollment.enroll(token: short, name: "f") }
        // A token whose CA fingerprint is not this server's: the client refuses before sending anything.
        var wrongCA = try await server.token(uses: 1)
        wrongCA.caFingerprint = String(repeating: "ab", count: 32)
        await expectCode("token_invalid") { _ = try await Enrollment.enroll(token: wrongCA, name: "g") }

        // Used up, replayed and expired: the real token with its secret, audited one by one. The
        // guessed secret authenticated nobody: counted, and summed up in an enroll_refusals record
        // when the server stops.
        let audit = try await server.auditEntries().filter { $0.action == .enroll }
        #expect(audit.filter { $0.result.description == "ok" }.count == 3)
        #expect(audit.filter { $0.result.description == "token_invalid" }.count == 3)
        #expect(await server.stop() == 0)
        try await server.start()
        let summaries = try await server.auditEntries().filter { $0.action == .enrollRefusals }
        #expect(summaries.map(\.result.description) == ["token_invalid"] && summaries.first?.detail.hasPrefix("1 refused") == true)
        let clients = try await server.admin(["device", "list", "--json"]).stdoutText
        #expect(!clients.contains("\"g\"") && !clients.contains("\"f\"") && !clients.contains("d-replay"))
    }

    /// A leaked multi-use token is stopped at once: `token list` shows it (never its secret) with
    /// its uses left and state, `token revoke` ends it, the next enrollment with it is refused as
    /// revoked, and the revocation is audited under the administrator's name.
    @Test func aLeakedMultiUseTokenIsStoppedAtOnceByRevoke() async throws {
        let server = try await ServerProcess(name: "token-revoke")
        try await server.start()
        defer { server.terminate() }
        let created = try WireFormat.decoder().decode(
            TokenCreateResponse.self, from: try await server.admin(["token", "create", "--uses", "5", "--ttl", "7d", "--json"]).stdout)
        let token = try EnrollmentToken(text: created.token)
        _ = try await Enrollment.enroll(token: token, name: "first")
        let other = try await server.token(role: "server", uses: 1)

        let listed = try WireFormat.decoder().decode([TokenInfo].self, from: try await server.admin(["token", "list", "--json"]).stdout)
        let entry = try #require(listed.first { $0.id == created.id })
        #expect(entry.usesLeft == 4 && entry.state == .active && entry.role == .device)
        #expect(abs(entry.expires.timeIntervalSince(created.expires)) < 1)
        #expect(listed.first { $0.id == other.id }?.state == .active)
        let text = try await server.admin(["token", "list"]).stdoutText
        #expect(text.contains("\(created.id)\tdevice\tactive\t4\t"), "\(text)")
        #expect(!text.contains(token.secret) && !created.token.isEmpty, "no secret in the listing")

        let revoked = try await server.admin(["token", "revoke", created.id.description])
        #expect(revoked.status == 0 && revoked.stdoutText.contains("revoked token \(created.id)"), "\(revoked.stderr)")
        await expectCode("token_invalid") { _ = try await Enrollment.enroll(token: token, name: "second") }
        let after = try WireFormat.decoder().decode([TokenInfo].self, from: try await server.admin(["token", "list", "--json"]).stdout)
        #expect(after.first { $0.id == created.id }?.state == .revoked)
        #expect(after.first { $0.id == other.id }?.state == .active, "other tokens are untouched")
        #expect(
            try await server.auditEntries().contains {
                $0.action == .tokenRevoke && $0.detail == "token \(created.id)" && $0.actor.description.hasPrefix("admin:")
            })
        let refused = try await server.auditEntries().filter { $0.action == .enroll && $0.result.description == "token_invalid" }
        #expect(refused.count == 1 && refused[0].detail.contains("revoked"), "\(refused.map(\.detail))")

        let unknown = try await server.admin(["token", "revoke", TokenID.random().description])
        #expect(unknown.status != 0 && unknown.stderr.contains("keyhold-server: error: no enrollment token has the id"), "\(unknown.stderr)")
        #expect(unknown.stderr.contains("hint:"))
    }

    @Test func noSecretBytesInTheDatabaseFile() async throws {
        let server = try await ServerProcess(name: "atrest")
        try await server.start()
        let d1 = try await server.enrollDevice()
        var secrets: [[UInt8]] = []
        for _ in 0..<20 {
            let (record, secret, request) = newKey(d1)
            secrets.append(secret.withUnsafeBytes { Array($0) })
            _ = try await using(try d1.client()) { try await $0.put(APIPath.key(record.id.description), request, as: EscrowResponse.self) }
        }
        await server.stop()
        var dump = Data()
        for name in ["keyhold.sqlite", "keyhold.sqlite-wal"] {
            dump += (try? Data(contentsOf: server.dataDir.appendingPathComponent(name))) ?? Data()
        }
        #expect(dump.count > 10_000)
        for secret in secrets {
            #expect(dump.range(of: Data(secret)) == nil)
            #expect(dump.range(of: Data(secret.prefix(12))) == nil)
            #expect(dump.range(of: Data(Data(secret).base64EncodedString().utf8)) == nil)
        }
    }

    @Test func killedRightAfterAnAcknowledgedEscrowLosesNothing() async throws {
        let server = try await ServerProcess(name: "kill9")
        try await server.start()
        let d1 = try await server.enrollDevice()
        let (record, secret, request) = newKey(d1)
        _ = try await using(try d1.client()) { try await $0.put(APIPath.key(record.id.description), request, as: EscrowResponse.self) }
        await server.kill9()
        try await server.start()
        defer { server.terminate() }
        let fetched = try await using(try d1.client()) { try await $0.get(APIPath.key(record.id.description), as: KeyMaterial.self) }
        #expect(fetched.secret.constantTimeEquals(secret))
    }

    @Test func stopsGracefullyOnSIGTERM() async throws {
        let server = try await ServerProcess(name: "sigterm")
        try await server.start()
        #expect(FileManager.default.fileExists(atPath: server.dataDir.appendingPathComponent("runtime.json").path))
        #expect(await server.stop() == 0)
        #expect(!FileManager.default.fileExists(atPath: server.dataDir.appendingPathComponent("runtime.json").path))
    }

    @Test func statusAndAuditCommands() async throws {
        let server = try await ServerProcess(name: "cli")
        try await server.start()
        defer { server.terminate() }
        let d1 = try await server.enrollDevice()
        let (record, _, request) = newKey(d1)
        _ = try await using(try d1.client()) { try await $0.put(APIPath.key(record.id.description), request, as: EscrowResponse.self) }
        let status = try await server.admin(["status", "--json"])
        #expect(status.status == 0)
        let object = try #require(try JSONSerialization.jsonObject(with: status.stdout) as? [String: Any])
        #expect(object["key_count"] as? Int == 1)
        #expect(object["devices"] as? Int == 1)
        let audit = try await server.admin(["audit"])
        #expect(audit.stdoutText.contains("escrow\t\(record.id)"))
        let bad = try await server.admin(["key", "block", "not-a-key"])
        #expect(bad.status != 0)
        #expect(bad.stderr.hasPrefix("keyhold-server: error: "))
        #expect(bad.stderr.contains("\nhint: "))
    }
}
