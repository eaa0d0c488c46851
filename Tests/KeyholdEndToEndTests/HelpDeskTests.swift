import Foundation
import KeyholdClient
import KeyholdCore
import KeyholdLauncher
import KeyholdProtocol
import KeyholdTestSupport
import Testing

/// The help-desk path (issue "The help-desk path"), against real processes.
// 20 minutes: its crash loops run beside every other suite of `make test` on two cores and took
// up to 10 there; the limit is a guard against a hang, not a speed goal (those are in make bench).
@Suite(.timeLimit(.minutes(20))) struct HelpDeskTests {
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
        #expect(again.status == 65 && again.stderr.contains("already named 'alice'"), "\(again.stderr)")

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
        #expect(half.status == 64 && half.stderr.contains("needs its key"))

        // Revoked by the first administrator: refused from the next request on.
        #expect(try await server.admin(["admin", "revoke", alice.id.description]).status == 0)
        let refused = try await server.admin(["status"] + asAlice)
        #expect(refused.status == 77 && refused.stderr.contains("revoked"), "\(refused.stderr)")
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
        #expect(empty.status == 65 && empty.stderr.contains("needs a reason"), "\(empty.stderr)")
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

    /// Offline access end to end: a device that cannot reach its server prints a request code;
    /// the administrator answers it; the response opens the file on that device, once — and not
    /// on another device, not after its expiry, and not with a character changed (which is
    /// reported by its group).
    @Test func anOfflineDeviceOpensAFileWithAResponseCodeOnceAndNowhereElse() async throws {
        let server = try await ServerProcess(name: "offline")
        try await server.start()
        defer { server.terminate() }
        let owner = try await AgentIntegrationTests.enrolledAgent(server, name: "offline-owner")
        defer { owner.terminate() }
        let colleague = try await AgentIntegrationTests.enrolledAgent(server, name: "offline-colleague")
        defer { colleague.terminate() }
        let third = try await AgentIntegrationTests.enrolledAgent(server, name: "offline-third")
        defer { third.terminate() }
        let plain = try AgentIntegrationTests.write(owner, "plan.txt", 50_000)
        #expect(try await owner.keyhold(["file", "encrypt", "plan.txt", "-o", "plan.khf"]).status == 0)
        for agent in [colleague, third] { try FileManager.default.copyItem(atPath: owner.path("plan.khf"), toPath: agent.path("plan.khf")) }

        // From here the devices cannot reach their server.
        #expect(await server.stop() == 0)
        #expect(try await colleague.keyhold(["file", "decrypt", "plan.khf", "-o", "plan.txt"]).status != 0)
        let asked = try await colleague.keyhold(["file", "decrypt", "plan.khf", "--offline", "--request-file", colleague.path("request.txt")])
        #expect(asked.status == 0, "\(asked.stderr)")
        let code = asked.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try String(contentsOfFile: colleague.path("request.txt"), encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) == code)
        #expect(asked.stderr.contains("keyhold-server key respond CODE") && asked.stderr.contains("--response CODE"))
        let request = try OfflineRequest(code: code)
        let colleagueID = try await AgentIntegrationTests.status(colleague)["device_id"] as? String
        #expect(request.deviceID.description == colleagueID)

        // The administrator answers at the server.
        try await server.start()
        let noReason = try await server.admin(["key", "respond", code, "--reason", ""])
        #expect(noReason.status == 65 && noReason.stderr.contains("needs a reason"))
        let answer = try WireFormat.decoder().decode(
            OfflineRespondResponse.self,
            from: Data(
                try await server.must(["key", "respond", "--request-file", colleague.path("request.txt"), "--reason", "ticket 9: abroad", "--json"])
                    .utf8
            ))
        #expect(answer.keyID == request.keyID && answer.deviceID == request.deviceID && answer.requestID == request.requestIDText)
        let mangled = String(code.prefix(22)) + (code.dropFirst(22).first == "A" ? "B" : "A") + String(code.dropFirst(23))
        let typo = try await server.admin(["key", "respond", mangled, "--reason", "x"])
        #expect(typo.status == 65 && typo.stderr.contains("error: group 4 of ") && typo.stderr.contains("is mistyped"), "\(typo.stderr)")
        #expect(await server.stop() == 0)

        // A character changed in the response is reported by its group; another device cannot use it.
        let response = answer.responseCode
        let position = response.index(response.startIndex, offsetBy: 31)
        let changed = String(response[..<position]) + (response[position] == "7" ? "8" : "7") + String(response[response.index(after: position)...])
        let wrong = try await colleague.keyhold(["file", "decrypt", "plan.khf", "-o", "plan.txt", "--response", changed])
        let group = response[..<position].filter { $0 == "-" }.count + 1
        #expect(wrong.status == 65 && wrong.stderr.contains("keyhold: error: group \(group) of "), "\(wrong.stderr)")
        let elsewhere = try await third.keyhold(["file", "decrypt", "plan.khf", "-o", "plan.txt", "--response", response])
        #expect(elsewhere.status == 65 && elsewhere.stderr.contains("no open request"), "\(elsewhere.stderr)")
        #expect(!FileManager.default.fileExists(atPath: third.path("plan.txt")))

        // On the device that asked: the file opens, once.
        let opened = try await colleague.keyhold(["file", "decrypt", "plan.khf", "-o", "plan.txt", "--response", response])
        #expect(opened.status == 0, "\(opened.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: colleague.path("plan.txt"))) == plain)
        let twice = try await colleague.keyhold(["file", "decrypt", "plan.khf", "-o", "again.txt", "--response", response])
        #expect(twice.status == 65 && twice.stderr.contains("no open request"), "\(twice.stderr)")

        // A response past its expiry is refused, and says so.
        let second = try await colleague.keyhold(["file", "decrypt", "plan.khf", "--offline"]).stdoutText.trimmingCharacters(
            in: .whitespacesAndNewlines)
        try await server.start()
        let short = try WireFormat.decoder().decode(
            OfflineRespondResponse.self,
            from: Data(try await server.must(["key", "respond", second, "--reason", "short", "--valid", "1", "--json"]).utf8))
        #expect(await server.stop() == 0)
        try await Task.sleep(for: .seconds(2.5))
        let late = try await colleague.keyhold(["file", "decrypt", "plan.khf", "-o", "late.txt", "--response", short.responseCode])
        #expect(late.status == 65 && late.stderr.contains("expired"), "\(late.stderr)")

        try await server.start()
        let releases = try await server.auditEntries().filter { $0.action == .offlineRelease }
        #expect(releases.count == 2 && releases.allSatisfy { $0.keyID == request.keyID && $0.detail.contains("device \(request.deviceID)") })
        #expect(releases[0].detail.contains("ticket 9: abroad") && releases[0].detail.contains("request \(request.requestIDText)"))
        let keys = try WireFormat.decoder().decode([KeyInfo].self, from: Data(try await server.must(["key", "list", "--json"]).utf8))
        #expect(keys.first { $0.record.id == request.keyID }?.rotationRequired == true)
    }

    /// Offline access for a drive: a device whose server is out of reach prints a request code
    /// for the drive's key; the administrator's response opens the drive's keyslot once (here
    /// with --verify-only: there is no device-mapper), on that device only; the key is marked for
    /// rotation and the check reaches the server once it is back.
    @Test func aDriveUnlocksOfflineWithAResponseCodeOnce() async throws {
        let server = try await ServerProcess(name: "offline-drive")
        try await server.start()
        defer { server.terminate() }
        let owner = try await AgentIntegrationTests.enrolledAgent(server, name: "offline-drive-owner")
        defer { owner.terminate() }
        let colleague = try await AgentIntegrationTests.enrolledAgent(server, name: "offline-drive-colleague")
        defer { colleague.terminate() }
        let image = try DriveTests.image(owner, "stick.img")
        #expect(try await owner.keyhold(["drive", "encrypt", image]).status == 0)
        let keyID = try Self.tokenKey(try await DriveTests.info(owner, image))

        #expect(await server.stop() == 0)
        let unreachable = try await colleague.keyhold(["drive", "unlock", image, "--verify-only"])
        #expect(unreachable.status != 0)
        let both = try await colleague.keyhold(["drive", "unlock", image, "--offline", "--response", "X"])
        #expect(both.status == 64 || both.status == 1, "\(both.stderr)")
        let asked = try await colleague.keyhold(["drive", "unlock", image, "--offline"])
        #expect(asked.status == 0, "\(asked.stderr)")
        let request = try OfflineRequest(code: asked.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines))
        #expect(request.keyID.description == keyID)

        try await server.start()
        let answer = try WireFormat.decoder().decode(
            OfflineRespondResponse.self,
            from: Data(try await server.must(["key", "respond", request.code, "--reason", "ticket 12: stick abroad", "--json"]).utf8))
        #expect(await server.stop() == 0)

        let elsewhere = try await owner.keyhold(["drive", "unlock", image, "--verify-only", "--response", answer.responseCode])
        #expect(elsewhere.status == 65 && elsewhere.stderr.contains("no open request"), "\(elsewhere.stderr)")
        let opened = try await colleague.keyhold(["drive", "unlock", image, "--verify-only", "--response", answer.responseCode])
        #expect(opened.status == 0 && opened.stdoutText.contains("verified: the escrowed key \(keyID) opens keyslot 0"), "\(opened.stderr)")
        let twice = try await colleague.keyhold(["drive", "unlock", image, "--verify-only", "--response", answer.responseCode])
        #expect(twice.status == 65 && twice.stderr.contains("no open request"), "\(twice.stderr)")

        try await server.start()
        var check: EscrowCheck?
        for _ in 0..<50 {
            let keys = try WireFormat.decoder().decode([KeyInfo].self, from: Data(try await server.must(["key", "list", "--json"]).utf8))
            let key = keys.first { $0.record.id.description == keyID }
            #expect(key?.rotationRequired == true)
            check = key?.check
            if check != nil { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        let colleagueID = try await AgentIntegrationTests.status(colleague)["device_id"] as? String
        #expect(check?.opens == true && check?.deviceID.description == colleagueID, "the offline check arrived with a later heartbeat")
        #expect(try await server.auditEntries().contains { $0.action == .offlineRelease && $0.keyID?.description == keyID })
    }

    /// Rotation after a reveal: `drive rekey` escrows a new key first, and afterwards the revealed
    /// key no longer opens the drive in cryptsetup while the new escrowed one does; the server
    /// retired (blocked) the old key; the trail shows reveal, the new escrow and the retirement.
    @Test func aRevealedDriveKeyIsReplacedByRekeyAndNoLongerOpensTheDrive() async throws {
        let server = try await ServerProcess(name: "rekey")
        try await server.start()
        defer { server.terminate() }
        let agent = try await AgentIntegrationTests.enrolledAgent(server, name: "rekey-d")
        defer { agent.terminate() }
        let image = try DriveTests.image(agent, "stick.img")
        let recovery = agent.path("recovery.txt")
        try Data("correct horse battery".utf8).write(to: URL(fileURLWithPath: recovery))
        #expect(try await agent.keyhold(["drive", "encrypt", image, "--recovery-passphrase-file", recovery]).status == 0)
        let oldID = try Self.tokenKey(try await DriveTests.info(agent, image))
        let revealed = try WireFormat.decoder().decode(
            RevealResponse.self, from: Data(try await server.must(["key", "reveal", oldID, "--reason", "ticket 1", "--json"]).utf8))
        let oldFile = agent.path("old.key")
        try Data(base64Encoded: revealed.secretBase64)!.write(to: URL(fileURLWithPath: oldFile))

        let rekey = try await agent.keyhold(["drive", "rekey", image])
        #expect(rekey.status == 0, "\(rekey.stderr)")
        let info = try await DriveTests.info(agent, image)
        let newID = try Self.tokenKey(info)
        #expect(newID != oldID)
        #expect(Set(info["keyslots"] as? [Int] ?? []) == [1, 2], "the recovery keyslot (1) and the new key's (2); the old key's (0) is gone")
        let newFile = agent.path("new.key")
        try await DriveTests.escrowedKeyFile(server, keyID: newID, to: newFile)
        #expect(try await DriveTests.tool(["open", "--test-passphrase", "--key-file", newFile, image]).status == 0)
        #expect(try await DriveTests.tool(["open", "--test-passphrase", "--key-file", oldFile, image]).status != 0, "the revealed key opens nothing")
        #expect(try await DriveTests.tool(["open", "--test-passphrase", "--key-file", recovery, image]).status == 0, "the recovery keyslot stays")

        let trail = try await server.auditEntries()
        #expect(trail.contains { $0.action == .reveal && $0.keyID?.description == oldID })
        #expect(trail.contains { $0.action == .escrow && $0.keyID?.description == newID })
        #expect(trail.contains { $0.action == .retire && $0.keyID?.description == oldID && $0.result == .ok && $0.detail.contains(newID) })
        let keys = try WireFormat.decoder().decode([KeyInfo].self, from: Data(try await server.must(["key", "list", "--json"]).utf8))
        #expect(keys.first { $0.record.id.description == oldID }?.blocked == true, "the old key is released by no server")
        #expect(keys.first { $0.record.id.description == newID }?.blocked == false)
    }

    /// `kill -9` of `keyhold drive rekey` after each of its steps (the process kills itself with
    /// SIGKILL there): the drive opens with the key its token names, and running the command
    /// again finishes the job — one key, the new one, in the end.
    @Test func aRekeyKilledAfterAnyStepLeavesADriveThatOpensAndFinishesWhenRunAgain() async throws {
        let server = try await ServerProcess(name: "rekey-kill")
        try await server.start()
        defer { server.terminate() }
        let agent = try await AgentIntegrationTests.enrolledAgent(server, name: "rekey-kill-d")
        defer { agent.terminate() }
        // (step, whether the token names the new key right after the kill)
        let steps: [(String, Bool)] = [
            ("escrow", false), ("intent", false), ("keyslot", false), ("token", true), ("old-keyslot", true), ("retire", true),
        ]
        var outcomes: [String] = []
        for (step, switched) in steps {
            let image = try DriveTests.image(agent, "\(step).img")
            #expect(try await agent.keyhold(["drive", "encrypt", image]).status == 0)
            let before = try Self.tokenKey(try await DriveTests.info(agent, image))
            let killed = try await agent.keyhold(["drive", "rekey", image], environment: ["KEYHOLD_TEST_FAULT": "drive-rekey:\(step)"])
            #expect(killed.status != 0, "the fault killed the command after \(step)")
            let named = try Self.tokenKey(try await DriveTests.info(agent, image))
            let file = agent.path("\(step).key")
            try await Self.keyFile(agent, server, named, to: file)
            let opens = try await DriveTests.tool(["open", "--test-passphrase", "--key-file", file, image]).status == 0
            #expect(opens, "after \(step) the key the token names opens the drive")
            #expect((named != before) == switched, "after \(step) the token names the \(switched ? "new" : "old") key")

            let again = try await agent.keyhold(["drive", "rekey", image])
            #expect(again.status == 0, "\(step): \(again.stderr)")
            let final = try Self.tokenKey(try await DriveTests.info(agent, image))
            let finalFile = agent.path("\(step)-final.key")
            try await Self.keyFile(agent, server, final, to: finalFile)
            let slots = (try await DriveTests.info(agent, image))["keyslots"] as? [Int] ?? []
            let finalOpens = try await DriveTests.tool(["open", "--test-passphrase", "--key-file", finalFile, image]).status == 0
            let oldFile = agent.path("\(step)-old.key")
            try await Self.keyFile(agent, server, before, to: oldFile, revealing: true)
            let oldOpens = try await DriveTests.tool(["open", "--test-passphrase", "--key-file", oldFile, image]).status == 0
            #expect(final != before && finalOpens && !oldOpens && slots.count == 1, "\(step): one keyslot, the new key's")
            outcomes.append(
                "\(step): \(opens ? "opens" : "LOCKED") with the \(named == before ? "old" : "new") key; finished: \(finalOpens && !oldOpens)")
        }
        #expect(outcomes.count == steps.count, "\(outcomes.joined(separator: "\n"))")
    }

    /// Rotation at the next managed unlock: after a reveal, `drive unlock` re-keys the drive
    /// before it activates it (here, without device-mapper, the activation itself then fails with
    /// its own error; the QEMU test of make vm-test goes all the way). The revealed key opens
    /// nothing afterwards, the new escrowed key does, the trail shows reveal, escrow and retire;
    /// a second unlock leaves the new key alone.
    @Test func aRevealedDriveKeyIsReplacedAtTheNextManagedUnlock() async throws {
        let server = try await ServerProcess(name: "unlock-rekey")
        try await server.start()
        defer { server.terminate() }
        let agent = try await AgentIntegrationTests.enrolledAgent(server, name: "unlock-rekey-d")
        defer { agent.terminate() }
        let image = try DriveTests.image(agent, "stick.img")
        #expect(try await agent.keyhold(["drive", "encrypt", image]).status == 0)
        let oldID = try Self.tokenKey(try await DriveTests.info(agent, image))
        let untouched = try await agent.keyhold(["drive", "unlock", image])
        #expect(try Self.tokenKey(try await DriveTests.info(agent, image)) == oldID, "no reveal, no rekey: \(untouched.stdoutText)")

        let oldFile = agent.path("old.key")
        try await Self.keyFile(agent, server, oldID, to: oldFile, revealing: true)
        let unlock = try await agent.keyhold(["drive", "unlock", image])
        let activated = unlock.status == 0
        #expect(activated || unlock.stderr.contains("no device-mapper"), "\(unlock.stderr)")
        #expect(unlock.stdoutText.contains("re-keying \(image) first") && unlock.stdoutText.contains("Re-keyed \(image)"), "\(unlock.stdoutText)")
        let newID = try Self.tokenKey(try await DriveTests.info(agent, image))
        #expect(newID != oldID)
        let newFile = agent.path("new.key")
        try await DriveTests.escrowedKeyFile(server, keyID: newID, to: newFile)
        #expect(try await DriveTests.tool(["open", "--test-passphrase", "--key-file", newFile, image]).status == 0)
        #expect(try await DriveTests.tool(["open", "--test-passphrase", "--key-file", oldFile, image]).status != 0, "the revealed key opens nothing")

        let trail = try await server.auditEntries()
        #expect(trail.contains { $0.action == .reveal && $0.keyID?.description == oldID })
        #expect(trail.contains { $0.action == .escrow && $0.keyID?.description == newID })
        #expect(trail.contains { $0.action == .retire && $0.keyID?.description == oldID && $0.result == .ok })
        _ = try await agent.keyhold(["drive", "unlock", image])
        #expect(try Self.tokenKey(try await DriveTests.info(agent, image)) == newID, "the new key is not marked: it stays")
    }

    /// Escrow checks: a drive whose keyslot was replaced with `cryptsetup luksChangeKey` no
    /// longer opens with its escrowed key; the unlock says so, and after the agent's next
    /// heartbeat `key list` and `device list` show DRIFT, `status` prints an error and the trail
    /// holds an `escrow_drift` record — while a drive that opens shows `verified <time>`.
    @Test func aDriveWhoseKeyslotWasChangedWithLuksChangeKeyShowsDriftAfterTheNextHeartbeat() async throws {
        let server = try await ServerProcess(name: "drift")
        try await server.start()
        defer { server.terminate() }
        let agent = try await AgentIntegrationTests.enrolledAgent(server, name: "drift-d")
        defer { agent.terminate() }
        let changed = try DriveTests.image(agent, "changed.img")
        let kept = try DriveTests.image(agent, "kept.img")
        #expect(try await agent.keyhold(["drive", "encrypt", changed]).status == 0)
        #expect(try await agent.keyhold(["drive", "encrypt", kept]).status == 0)
        let changedID = try Self.tokenKey(try await DriveTests.info(agent, changed))
        let keptID = try Self.tokenKey(try await DriveTests.info(agent, kept))
        let escrowed = agent.path("escrowed.key")
        try await DriveTests.escrowedKeyFile(server, keyID: changedID, to: escrowed)
        let other = agent.path("other.key")
        try Data((0..<32).map { UInt8($0 &* 7 &+ 1) }).write(to: URL(fileURLWithPath: other))
        let change = try await DriveTests.tool([
            "luksChangeKey", changed, other, "--key-file", escrowed, "--key-slot", "0", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
        ])
        #expect(change.status == 0, "\(change.stderr)")

        let refused = try await agent.keyhold(["drive", "unlock", "--verify-only", changed])
        #expect(refused.status == 65 && refused.stderr.contains("no longer opens keyslot 0"), "\(refused.stderr)")
        #expect(refused.stderr.contains("hint: "))
        let verified = try await agent.keyhold(["drive", "unlock", "--verify-only", kept])
        #expect(verified.status == 0, "\(verified.stderr)")

        var keys: [KeyInfo] = []
        for _ in 0..<100 {
            keys = try WireFormat.decoder().decode([KeyInfo].self, from: Data(try await server.must(["key", "list", "--json"]).utf8))
            if keys.filter({ $0.check != nil }).count == 2 { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        let deviceID = try #require(try await AgentIntegrationTests.status(agent)["device_id"] as? String)
        let drifted = try #require(keys.first { $0.record.id.description == changedID }?.check)
        let fine = try #require(keys.first { $0.record.id.description == keptID }?.check)
        #expect(!drifted.opens && drifted.deviceID.description == deviceID)
        #expect(fine.opens && fine.deviceID.description == deviceID)
        let list = try await server.must(["key", "list"])
        #expect(list.split(separator: "\n").contains { $0.hasPrefix(changedID) && $0.contains("\tDRIFT since ") }, "\(list)")
        #expect(list.split(separator: "\n").contains { $0.hasPrefix(keptID) && $0.contains("\tverified ") }, "\(list)")
        let devices = try await server.must(["device", "list"])
        let rows = devices.split(separator: "\n").map { $0.split(separator: "\t", omittingEmptySubsequences: false) }
        let escrowColumn = try #require(rows.first?.firstIndex(of: "escrow"))
        #expect(rows.contains { $0.first == Substring(deviceID) && $0[escrowColumn] == "DRIFT (1 key)" }, "\(devices)")
        let status = try await server.must(["status"])
        #expect(status.contains("error: DRIFT: the escrowed key \(changedID) no longer opens its drive"), "\(status)")
        #expect(!status.contains(keptID))
        let trail = try await server.auditEntries()
        #expect(trail.filter { $0.action == .escrowDrift && $0.keyID?.description == changedID }.count == 1)
        #expect(!trail.contains { $0.action == .escrowDrift && $0.keyID?.description == keptID })
    }

    /// Rotation of a file key: after a reveal the agent stops using the key for new files (told
    /// at its next heartbeat), and `file rekey` re-encrypts a file in place under a new escrowed
    /// key — same plaintext, the revealed key no longer opens it, other files under the old key
    /// still open. A damaged file is refused and left byte for byte as it was, with no temporary
    /// file beside it.
    @Test func aRevealedFileKeyIsReplacedByFileRekeyAndNewFilesGetANewKey() async throws {
        let server = try await ServerProcess(name: "file-rekey")
        try await server.start()
        defer { server.terminate() }
        let agent = try await AgentIntegrationTests.enrolledAgent(server, name: "file-rekey-d")
        defer { agent.terminate() }
        let folder = agent.path("files")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let plain = try AgentIntegrationTests.write(agent, "files/plan.txt", 300_000)
        for name in ["a", "b", "damaged"] {
            #expect(try await agent.keyhold(["file", "encrypt", agent.path("files/plan.txt"), "-o", agent.path("files/\(name).khf")]).status == 0)
        }
        let old = try Self.fileKey(try await agent.keyhold(["file", "info", agent.path("files/a.khf"), "--json"]).stdout)
        let revealed = agent.path("revealed.key")
        try await Self.keyFile(agent, server, old.description, to: revealed, revealing: true)

        // Told at the next heartbeat: new files get a new key.
        var active: String?
        for _ in 0..<50 {
            active = try await AgentIntegrationTests.status(agent)["active_file_key"] as? String
            if active == nil || active != old.description { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        #expect(active != old.description, "the revealed key is no longer the active file key")

        let rekey = try await agent.keyhold(["file", "rekey", agent.path("files/a.khf")])
        #expect(rekey.status == 0, "\(rekey.stderr)")
        let new = try Self.fileKey(try await agent.keyhold(["file", "info", agent.path("files/a.khf"), "--json"]).stdout)
        #expect(new != old && rekey.stderr.contains("key \(old) -> \(new)"), "\(rekey.stderr)")
        let back = try await agent.keyhold(["file", "decrypt", agent.path("files/a.khf"), "-o", agent.path("a.out")])
        #expect(back.status == 0, "\(back.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: agent.path("a.out"))) == plain)
        let withOld = try await agent.keyhold(["file", "decrypt", agent.path("files/a.khf"), "-o", agent.path("a.old"), "--key-file", revealed])
        #expect(withOld.status == 65, "the revealed key opens the re-keyed file no more")
        #expect(try await agent.keyhold(["file", "decrypt", agent.path("files/b.khf"), "-o", agent.path("b.out")]).status == 0)
        let trail = try await server.auditEntries()
        #expect(trail.contains { $0.action == .escrow && $0.keyID == new }, "the new key was escrowed")

        // A damaged file: refused, unchanged, nothing left beside it.
        let damagedPath = agent.path("files/damaged.khf")
        var bytes = try Data(contentsOf: URL(fileURLWithPath: damagedPath))
        bytes[bytes.count - 100] ^= 0x01
        try bytes.write(to: URL(fileURLWithPath: damagedPath))
        let refused = try await agent.keyhold(["file", "rekey", damagedPath])
        #expect(refused.status == 65 && refused.stderr.contains("hint: "), "\(refused.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: damagedPath)) == bytes)
        let left = try FileManager.default.contentsOfDirectory(atPath: folder).sorted()
        #expect(left == ["a.khf", "b.khf", "damaged.khf", "plan.txt"], "\(left)")
    }

    /// The key id in a `file info --json` answer.
    static func fileKey(_ json: Data) throws -> KeyID {
        let text = try #require((try JSONSerialization.jsonObject(with: json) as? [String: Any])?["key_id"] as? String)
        return try #require(KeyID(text))
    }

    /// The key id the drive's keyhold token names.
    static func tokenKey(_ info: [String: Any]) throws -> String {
        try #require((info["keyhold"] as? [String: Any])?["key_id"] as? String)
    }

    /// The 32 bytes of key `id`, from the server: released to another device, or (for a retired,
    /// blocked key) revealed to the administrator.
    static func keyFile(_ agent: AgentProcess, _ server: ServerProcess, _ id: String, to path: String, revealing: Bool = false) async throws {
        if revealing {
            let key = try WireFormat.decoder().decode(
                RevealResponse.self, from: Data(try await server.must(["key", "reveal", id, "--reason", "test", "--json"]).utf8))
            try Data(base64Encoded: key.secretBase64)!.write(to: URL(fileURLWithPath: path))
        } else {
            try await DriveTests.escrowedKeyFile(server, keyID: id, to: path)
        }
    }
}
