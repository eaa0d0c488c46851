import Foundation
import KeyholdClient
import KeyholdCore
import KeyholdLauncher
import KeyholdProtocol
import KeyholdTestSupport
import Testing

/// The help-desk path (issue "The help-desk path"), against real processes.
@Suite(.timeLimit(.minutes(10))) struct HelpDeskTests {
    /// Named administrators: `admin add` makes a certificate for a person (and a PKCS#12 bundle
    /// that an independent implementation, OpenSSL, opens); they act under their own id and name
    /// in the audit trail; a second one of the same name is refused; revocation is immediate.
    @Test func namedAdministratorsActUnderTheirOwnNameAndAreRevokedAtOnce() async throws {
        let server = try await ServerProcess(name: "admins-named")
        try await server.start()
        defer { server.terminate() }
        let folder = server.dataDir.deletingLastPathComponent().appendingPathComponent("alice")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let password = folder.appendingPathComponent("pw").path
        try "correct horse battery\n".write(toFile: password, atomically: true, encoding: .utf8)
        let p12 = folder.appendingPathComponent("alice.p12").path
        let added = try await server.admin(["admin", "add", "alice", "--out-dir", folder.path, "--p12", p12, "--p12-password-file", password])
        #expect(added.status == 0, "\(added.stderr)")
        let pem = folder.appendingPathComponent("alice.pem").path
        let key = folder.appendingPathComponent("alice.key").path
        #expect(added.stdoutText.contains("certificate: \(pem)") && added.stdoutText.contains("key:         \(key)"))
        let mode = try FileManager.default.attributesOfItem(atPath: key)[.posixPermissions] as? Int
        let p12Mode = try FileManager.default.attributesOfItem(atPath: p12)[.posixPermissions] as? Int
        #expect(mode == 0o600 && p12Mode == 0o600)

        // The bundle opens in OpenSSL with the password and holds alice's certificate and key.
        let opened = try await Program.run(
            URL(fileURLWithPath: "/usr/bin/openssl"), ["pkcs12", "-in", p12, "-passin", "file:\(password)", "-nodes"])
        #expect(opened.status == 0, "\(opened.stderr)")
        let certificateText = try String(contentsOfFile: pem, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(opened.stdoutText.contains(certificateText.split(separator: "\n").dropFirst().prefix(3).joined(separator: "\n")))
        #expect(opened.stdoutText.contains("BEGIN PRIVATE KEY") && opened.stdoutText.contains("friendlyName: Keyhold administrator alice"))
        let wrong = try await Program.run(URL(fileURLWithPath: "/usr/bin/openssl"), ["pkcs12", "-in", p12, "-passin", "pass:wrong", "-nodes"])
        #expect(wrong.status != 0, "a wrong password does not open the bundle")

        let admins = try WireFormat.decoder().decode([ClientInfo].self, from: Data(try await server.must(["admin", "list", "--json"]).utf8))
        let alice = try #require(admins.first { $0.name == "alice" })
        #expect(admins.count == 2 && alice.state == .active && alice.role == .admin)
        let again = try await server.admin(["admin", "add", "alice", "--out-dir", server.dataDir.path])
        #expect(again.status == 1 && again.stderr.contains("already named 'alice'"), "\(again.stderr)")

        // Alice acts with her own certificate; the trail names her.
        let asAlice = ["--admin-cert", pem, "--admin-key", key]
        let token = try await server.admin(["token", "create"] + asAlice)
        #expect(token.status == 0, "\(token.stderr)")
        let created = try #require(try await server.auditEntries().last { $0.action == .tokenCreate })
        #expect(created.actor == .administrator(alice.id))
        let added2 = try #require(try await server.auditEntries().first { $0.action == .adminAdd })
        #expect(added2.detail.contains(alice.id.description) && added2.actor != .administrator(alice.id))
        let trail = try await server.must(["audit"])
        #expect(trail.contains("admin:\(alice.id) (alice)\ttoken_create"), "\(trail.suffix(400))")
        let half = try await server.admin(["status", "--admin-cert", pem])
        #expect(half.status == 1 && half.stderr.contains("needs its key"))

        // Revoked by the first administrator: refused from the next request on.
        #expect(try await server.admin(["admin", "revoke", alice.id.description]).status == 0)
        let refused = try await server.admin(["status"] + asAlice)
        #expect(refused.status == 1 && refused.stderr.contains("revoked"), "\(refused.stderr)")
    }

    /// Reveal with a reason: the administrator gets the drive key and the command that opens the
    /// drive; the command, run as shown (with `--test-passphrase`, as there is no device-mapper
    /// here), opens the image in the real cryptsetup; the reveal is audited with the reason and
    /// the key is marked for rotation.
    @Test func aRevealedDriveKeyOpensTheDriveWithTheCommandShownAndIsMarkedForRotation() async throws {
        let server = try await ServerProcess(name: "reveal")
        try await server.start()
        defer { server.terminate() }
        let agent = try await AgentIntegrationTests.enrolledAgent(server, name: "reveal-d")
        defer { agent.terminate() }
        let image = try DriveTests.image(agent, "stick.img")
        #expect(try await agent.keyhold(["drive", "encrypt", image]).status == 0)
        let keyID = try #require((try await DriveTests.info(agent, image)["keyhold"] as? [String: Any])?["key_id"] as? String)
        // A second key, not revealed, to show the mark is per key.
        #expect(try await agent.keyhold(["file", "encrypt", "/etc/hostname", "-o", agent.path("h.khf")]).status == 0)

        let noReason = try await server.admin(["key", "reveal", keyID])
        #expect(noReason.status != 0 && noReason.stderr.contains("--reason"))
        let empty = try await server.admin(["key", "reveal", keyID, "--reason", ""])
        #expect(empty.status == 1 && empty.stderr.contains("needs a reason"), "\(empty.stderr)")
        #expect(try await server.auditEntries().filter { $0.action == .reveal }.isEmpty, "nothing revealed without a reason")

        let revealed = try WireFormat.decoder().decode(
            RevealResponse.self,
            from: Data(try await server.must(["key", "reveal", keyID, "--reason", "ticket 4711: user locked out", "--json"]).utf8))
        #expect(revealed.record.id.description == keyID && revealed.record.kind == .drive)
        #expect(revealed.secretHex.count == 64 && Data(base64Encoded: revealed.secretBase64).map { Hex.lowercase(Array($0)) } == revealed.secretHex)
        let command = try #require(revealed.openCommand)
        #expect(command.hasPrefix("echo '\(revealed.secretBase64)' | base64 -d | cryptsetup open --key-file - DEVICE "))
        let tested = command.replacingOccurrences(of: "cryptsetup open", with: "/usr/sbin/cryptsetup open --test-passphrase")
            .replacingOccurrences(of: "DEVICE", with: "'\(image)'")
        #expect(try await run(URL(fileURLWithPath: "/bin/sh"), ["-c", tested]).status == 0, "\(tested)")
        let other = command.replacingOccurrences(of: revealed.secretBase64, with: Data(SecureRandom.bytes(count: 32)).base64EncodedString())
            .replacingOccurrences(of: "cryptsetup open", with: "/usr/sbin/cryptsetup open --test-passphrase").replacingOccurrences(
                of: "DEVICE", with: "'\(image)'")
        #expect(try await run(URL(fileURLWithPath: "/bin/sh"), ["-c", other]).status != 0, "another key does not open it")

        let text = try await server.must(["key", "reveal", keyID, "--reason", "second look"])
        #expect(text.contains("hex:    \(revealed.secretHex)") && text.contains("cryptsetup open --key-file - DEVICE"))

        let keys = try WireFormat.decoder().decode([KeyInfo].self, from: Data(try await server.must(["key", "list", "--json"]).utf8))
        #expect(keys.count == 2 && keys.filter(\.rotationRequired).map(\.record.id.description) == [keyID])
        #expect(try await server.must(["key", "list"]).contains("\(keyID)\tdrive\tactive\tfalse\trequired\t"))
        let reveals = try await server.auditEntries().filter { $0.action == .reveal }
        #expect(reveals.count == 2 && reveals.allSatisfy { $0.keyID?.description == keyID && $0.result == .ok })
        #expect(reveals[0].detail.contains("ticket 4711: user locked out"))
        if case .administrator = reveals[0].actor {} else { Issue.record("revealed to \(reveals[0].actor)") }
    }
}
