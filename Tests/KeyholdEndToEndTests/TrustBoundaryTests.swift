import Foundation
import KeyholdClient
import KeyholdCore
import KeyholdProtocol
import KeyholdSystem
import KeyholdTestSupport
import Testing

/// Regression tests for the defects of "Harden the trust boundary", against real processes (each
/// test names the defect it covers).
@Suite(.timeLimit(.minutes(10))) struct TrustBoundaryTests {
    /// Defect 5: an administrator could revoke the administrators as if they were devices.
    @Test func administratorsAreNotDevicesAndTheLastOneStays() async throws {
        let server = try await ServerProcess(name: "admins")
        try await server.start()
        defer { server.terminate() }
        let admins = try WireFormat.decoder().decode([ClientInfo].self, from: Data(try await server.must(["admin", "list", "--json"]).utf8))
        let first = try #require(admins.first)
        #expect(admins.count == 1 && first.role == .admin && first.state == .active)

        let asDevice = try await server.admin(["device", "revoke", first.id.description])
        #expect(asDevice.status == 77 && asDevice.stderr.contains("is an administrator, not a device"), "\(asDevice.stderr)")
        #expect(asDevice.stderr.contains("hint: revoke administrators with 'keyhold-server admin revoke"))
        let last = try await server.admin(["admin", "revoke", first.id.description])
        #expect(last.status == 77 && last.stderr.contains("is the last active administrator"), "\(last.stderr)")
        #expect(try await server.admin(["status"]).status == 0, "the administrator still works")

        // The local way back: a new certificate from the data directory, audited; then the old one can go.
        let recover = try await server.admin(["admin", "recover"])
        #expect(recover.status == 0, "\(recover.stderr)")
        let now = try WireFormat.decoder().decode([ClientInfo].self, from: Data(try await server.must(["admin", "list", "--json"]).utf8))
        let second = try #require(now.first { $0.id != first.id })
        #expect(try await server.admin(["admin", "revoke", first.id.description]).status == 0)
        #expect(try await server.admin(["status"]).status == 0, "the recovered certificate administers the server")
        let audit = try await server.auditEntries()
        #expect(audit.contains { $0.action == .adminRecover && $0.actor == .administrator(second.id) && $0.route == .local })
        #expect(audit.contains { $0.action == .revoke && $0.detail == "administrator \(first.id)" })
    }

    /// Defect 8: `?limit=-1` returned everything past the cap, and `audit` printed 1000 records
    /// without saying there were more (hiding the newest).
    @Test func everyQueryIsValidatedAndTheAuditCommandLeavesNothingOut() async throws {
        let server = try await ServerProcess(name: "audit-pages", initOptions: ["--use-hierarchy"])
        try await server.start()
        defer { server.terminate() }
        try await using(try server.adminClient()) { admin in
            for query in ["limit=-1", "limit=0", "limit=10001", "after=-5", "limit=ten", "after=not-a-key"] {
                await expectCode("invalid_request") { _ = try await admin.get("\(APIPath.adminAudit)?\(query)", as: [AuditEvent].self) }
            }
            await expectCode("invalid_request") { _ = try await admin.get("\(APIPath.adminKeys)?limit=-1", as: KeyListResponse.self) }
        }
        // More than one page of records: a secondary pushes 10001 keys, an export audits each.
        // (Batches of 2000: one of 10000 may take longer than the client's timeout on a loaded machine.)
        let pusher = try await Enrollment.enroll(token: try await server.token(role: "server"), name: "pusher")
        try await using(try pusher.client()) { client in
            for n in [2000, 2000, 2000, 2000, 2000, 1] {
                let keys = (0..<n).map { _ in
                    PushedKey(
                        key: KeyMaterial(record: KeyRecord(kind: .file, originServerID: .random(), originDeviceID: .random()), secret: .generate()),
                        blocked: false)
                }
                _ = try await client.post(APIPath.hierarchyPush, PushRequest(keys: keys), as: PushResponse.self)
            }
        }
        let password = server.dataDir.deletingLastPathComponent().appendingPathComponent("pw")
        try "a long enough password\n".write(to: password, atomically: true, encoding: .utf8)
        let marker = Date()
        try await Task.sleep(for: .seconds(1.1))
        let export = try await server.admin([
            "key", "export", "--all", "-o", server.dataDir.deletingLastPathComponent().appendingPathComponent("all.age").path, "--password-file",
            password.path,
        ])
        #expect(export.status == 0, "\(export.stderr)")
        let everything = try await server.auditEntries()
        #expect(everything.count > 10_001)
        let all = try await server.must(["audit"]).split(separator: "\n")
        #expect(all.count == everything.count, "every record is printed: \(all.count) of \(everything.count)")
        #expect(all.last?.hasPrefix("\(everything.last?.sequence ?? -1)\t") == true, "the newest is there")
        let last = try await server.must(["audit", "--last", "3"]).split(separator: "\n")
        #expect(last.map { String($0.prefix { $0 != "\t" }) } == everything.suffix(3).map { "\($0.sequence ?? -1)" })
        let since = try await server.must(["audit", "--since", ISO8601DateFormatter().string(from: marker.addingTimeInterval(1))]).split(
            separator: "\n")
        #expect(since.count == everything.filter { $0.time >= marker.addingTimeInterval(1) }.count && since.count >= 10_001, "\(since.count)")
        // --follow keeps printing what comes.
        let log = server.dataDir.deletingLastPathComponent().appendingPathComponent("follow.log")
        let follower = try ChildProcess(server.binary, ["audit", "--follow", "--last", "1", "--data-dir", server.dataDir.path], log: log)
        defer { follower.terminate() }
        try await Task.sleep(for: .seconds(2))
        _ = try await server.must(["token", "create"])
        var seen = false
        for _ in 0..<100 where !seen {
            seen = follower.logText().contains("\ttoken_create\t")
            if !seen { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(seen, "\(follower.logText())")
    }

    /// Defect 9: token lifetimes and uses had no bound.
    @Test func tokenLifetimesAndUsesAreBounded() async throws {
        let server = try await ServerProcess(name: "tokens")
        try await server.start()
        defer { server.terminate() }
        for (args, mentions) in [
            (["--ttl", "9223372036854775807"], "30 days"), (["--ttl", "9223372036854775807d"], "is not a duration"),
            (["--ttl", "31d"], "30 days"), (["--uses", "100000"], "1 to 10000 enrollments"), (["--uses", "0"], "1 to 10000 enrollments"),
        ] {
            let r = try await server.admin(["token", "create"] + args)
            #expect(r.status != 0 && r.stderr.contains(mentions) && r.stderr.contains("\nhint: "), "\(args): \(r.stderr)")
        }
        #expect(try await server.admin(["token", "create", "--ttl", "30d", "--uses", "10000"]).status == 0)
    }

    /// Defect 10: a bad certificate request used up the token, and such refusals were not audited.
    @Test func aBadEnrollmentRequestCostsTheTokenNothingAndIsAudited() async throws {
        let server = try await ServerProcess(name: "enroll-bad")
        try await server.start()
        defer { server.terminate() }
        let token = try await server.token(uses: 1)
        let enroll = try APIClient(address: server.enroll, caPEM: try server.file("ca.pem"), verifyHostname: false)
        defer { Task { await enroll.shutdown() } }
        let garbage = EnrollRequest(tokenID: token.id, secret: token.secret, csrPEM: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", name: "x")
        await expectCode("invalid_request") { _ = try await enroll.post(APIPath.enroll, garbage, as: EnrollResponse.self) }
        let forged = EnrollRequest(tokenID: token.id, secret: "not*base64url", csrPEM: "", name: "x")
        await expectCode("token_invalid") { _ = try await enroll.post(APIPath.enroll, forged, as: EnrollResponse.self) }
        let controlName = EnrollRequest(tokenID: token.id, secret: token.secret, csrPEM: "", name: "laptop\n2026-12-01 admin:root revoke")
        await expectCode("invalid_request") { _ = try await enroll.post(APIPath.enroll, controlName, as: EnrollResponse.self) }
        // The single-use token still enrolls a device.
        let device = try await Enrollment.enroll(token: token, name: "good")
        #expect(device.role == .device)
        // The requests that named the real token with its secret are audited one by one; the one
        // with a malformed secret authenticated nobody and is counted in the summary (defect 3).
        let refusals = try await server.auditEntries().filter { $0.action == .enroll && $0.result != .ok }
        #expect(refusals.map(\.result) == [.refused(.invalidRequest), .refused(.invalidRequest)])
        #expect(refusals.allSatisfy { $0.actor == .anonymous && $0.detail.hasPrefix("token \(token.id) from 127.0.0.1: ") })
        #expect(refusals.count == 2 && !refusals[1].detail.contains("\n"), "the refused name is escaped in the record")
        #expect(await server.stop() == 0)
        try await server.start()
        let summaries = try await server.auditEntries().filter { $0.action == .enrollRefusals }
        #expect(summaries.map(\.result) == [.refused(.tokenInvalid)], "the stop wrote the summary of the counted refusal")
        #expect(summaries.first?.detail.hasPrefix("1 refused from 1 addresses") == true, "\(summaries)")
    }

    /// Defect 4: one device certificate pulled 2,000 keys of another device and nothing noticed.
    /// Now releases have a budget per device (429 with Retry-After beyond it, each refusal
    /// audited), and a device that receives the threshold's number of distinct keys raises an
    /// alert (a warning in the log and a release_alert audit record), once per window.
    @Test func releasesHaveABudgetPerDeviceAndAHarvestRaisesAnAlert() async throws {
        let server = try await ServerProcess(name: "harvest")
        for (key, value) in [("release_rate", "2"), ("release_burst", "10"), ("release_alert_keys", "40")] { try server.setConfig(key, value) }
        try await server.start()
        defer { server.terminate() }
        let owner = try await server.enrollDevice("owner")
        let thief = try await server.enrollDevice("stolen")
        var keys: [KeyID] = []
        try await using(try owner.client()) { client in
            for _ in 0..<60 {
                let (record, _, request) = newKey(owner)
                _ = try await client.put(APIPath.key(record.id.description), request, as: EscrowResponse.self)
                keys.append(record.id)
            }
        }
        let started = ContinuousClock.now
        var released: Set<KeyID> = []
        var limited = 0
        try await using(try thief.client()) { client in
            for id in keys.prefix(30) {
                do {
                    _ = try await client.get(APIPath.key(id.description), as: KeyMaterial.self)
                    released.insert(id)
                } catch let error as KeyholdError {
                    #expect(error.code == .rateLimited, "\(error)")
                    #expect(error.hint.contains("wait"))
                    limited += 1
                }
            }
        }
        let refill = Int((ContinuousClock.now - started).components.seconds) * 2 + 2
        #expect(released.count >= 10 && released.count <= 10 + refill, "the burst of 10, plus 2/s: \(released.count)")
        #expect(limited == 30 - released.count)
        var audit = try await server.auditEntries()
        #expect(audit.filter { $0.action == .release && $0.result == .refused(.rateLimited) && $0.actor == .device(thief.clientID) }.count == limited)

        // Within the budget (waiting as Retry-After says), distinct keys up to the threshold of 40:
        // the 40th raises the alert, once; the same key again counts once.
        try await using(try thief.client()) { client in
            for id in keys.dropFirst(30) where released.count < 40 {
                while !released.contains(id) {
                    do {
                        _ = try await client.get(APIPath.key(id.description), as: KeyMaterial.self)
                        released.insert(id)
                    } catch let error as KeyholdError where error.code == .rateLimited {
                        try await Task.sleep(for: .milliseconds(600))
                    }
                }
                if released.count == 39 {
                    #expect(!(try await server.auditEntries().contains { $0.action == .releaseAlert }), "39 distinct keys: no alert yet")
                }
            }
            try await Task.sleep(for: .seconds(1))
            _ = try await client.get(APIPath.key(keys[0].description), as: KeyMaterial.self)
        }
        audit = try await server.auditEntries()
        let alerts = audit.filter { $0.action == .releaseAlert }
        #expect(alerts.count == 1 && alerts.first?.actor == .device(thief.clientID), "\(alerts)")
        #expect(alerts.first?.detail.hasPrefix("40 distinct keys released to this device within 3600 s") == true)
        #expect(server.log().contains("release alert: one device received many distinct keys"))

        // 429 carries Retry-After.
        let folder = server.dataDir.deletingLastPathComponent()
        let (cert, key) = (folder.appendingPathComponent("thief.pem"), folder.appendingPathComponent("thief.key"))
        try thief.certificatePEM.write(to: cert, atomically: true, encoding: .utf8)
        try thief.keyPEM.write(to: key, atomically: true, encoding: .utf8)
        let head = try await run(
            URL(fileURLWithPath: "/usr/bin/curl"),
            ["-sk", "-i", "--cert", cert.path, "--key", key.path] + Array(repeating: "https://\(server.api)/v1/keys/\(keys[1])", count: 20))
        #expect(head.stdoutText.contains("HTTP/1.1 429") && head.stdoutText.lowercased().contains("retry-after: "), "\(head.stdoutText.prefix(600))")
    }

    /// Defect 4, the policy: `release_policy` decides who may receive another device's key.
    @Test func theReleasePolicyDecidesWhoReceivesAnotherDevicesKey() async throws {
        let server = try await ServerProcess(name: "policy", initOptions: ["--use-hierarchy"])
        try await server.start()
        defer { server.terminate() }
        let owner = try await server.enrollDevice("owner")
        let other = try await server.enrollDevice("other")
        let (record, _, request) = newKey(owner)
        _ = try await using(try owner.client()) { try await $0.put(APIPath.key(record.id.description), request, as: EscrowResponse.self) }
        // A key that came up from a secondary: its origin is another server.
        let pushed = KeyMaterial(record: KeyRecord(kind: .file, originServerID: .random(), originDeviceID: .random()), secret: .generate())
        let secondary = try await Enrollment.enroll(token: try await server.token(role: "server"), name: "secondary")
        _ = try await using(try secondary.client()) {
            try await $0.post(APIPath.hierarchyPush, PushRequest(keys: [PushedKey(key: pushed, blocked: false)]), as: PushResponse.self)
        }
        func fetch(_ device: EnrolledIdentity, _ id: KeyID) async throws -> String {
            do {
                let key = try await using(try device.client()) { try await $0.get(APIPath.key(id.description), as: KeyMaterial.self) }
                return key.record.id == id ? "released" : "wrong key"
            } catch let error as KeyholdError {
                return error.code.rawValue
            }
        }
        // (policy, [owner's key to the owner, owner's key to the other device, pushed key to the other device])
        for (policy, expected) in [
            ("any", ["released", "released", "released"]), ("same_server", ["released", "released", "forbidden"]),
            ("origin_device", ["released", "forbidden", "forbidden"]), ("approval", ["released", "pending_approval", "pending_approval"]),
        ] {
            #expect(await server.stop() == 0)
            try server.setConfig("release_policy", "\"\(policy)\"")
            try await server.start()
            let got = [try await fetch(owner, record.id), try await fetch(other, record.id), try await fetch(other, pushed.record.id)]
            #expect(got == expected, "release_policy = \(policy)")
        }
        let refusals = try await server.auditEntries().filter { $0.action == .release && $0.result == .refused(.forbidden) }
        #expect(refusals.count == 3 && refusals.allSatisfy { $0.detail.hasPrefix("release_policy ") && $0.actor == .device(other.clientID) })
        // A policy the server does not know is a configuration error naming the key.
        #expect(await server.stop() == 0)
        try server.setConfig("release_policy", "\"nobody\"")
        let refused = try await server.admin(["status"])
        #expect(
            refused.status == 78 && refused.stderr.contains("release_policy = \"nobody\" is not one of any, same_server, origin_device, approval"),
            "\(refused.stderr)")
    }

    /// Defect 4, `release_policy = approval`: a colleague's file opens only after an
    /// administrator approved the request, with the user told what to do, through the real
    /// agent and `keyhold`; every step is in the audit trail.
    @Test func underTheApprovalPolicyAColleaguesFileOpensOnceAnAdministratorApproves() async throws {
        let server = try await ServerProcess(name: "approval")
        try server.setConfig("release_policy", "\"approval\"")
        try await server.start()
        defer { server.terminate() }
        let owner = try await AgentIntegrationTests.enrolledAgent(server, name: "approval-owner")
        defer { owner.terminate() }
        let colleague = try await AgentIntegrationTests.enrolledAgent(server, name: "approval-colleague")
        defer { colleague.terminate() }
        let plain = try AgentIntegrationTests.write(owner, "plan.txt", 20_000)
        #expect(try await owner.keyhold(["file", "encrypt", "plan.txt", "-o", "plan.khf"]).status == 0)
        try FileManager.default.copyItem(atPath: owner.path("plan.khf"), toPath: colleague.path("plan.khf"))

        let waiting = try await colleague.keyhold(["file", "decrypt", "plan.khf", "-o", "plan.txt"])
        #expect(waiting.status != 0)
        #expect(
            waiting.stderr.hasPrefix("keyhold: error: key ") && waiting.stderr.contains("waits for an administrator's approval"), "\(waiting.stderr)")
        #expect(waiting.stderr.contains("\nhint: ask your administrator to run 'keyhold-server release approve "))
        #expect(!FileManager.default.fileExists(atPath: colleague.path("plan.txt")))
        #expect(try await colleague.keyhold(["file", "decrypt", "plan.khf", "-o", "plan.txt"]).status != 0, "asking again still waits")

        let open = try WireFormat.decoder().decode(
            [ApprovalInfo].self, from: Data(try await server.must(["release", "list", "--json"]).utf8))
        let request = try #require(open.first)
        let colleagueID = try await AgentIntegrationTests.status(colleague)["device_id"] as? String
        #expect(open.count == 1 && request.state == .pending && request.clientID.description == colleagueID)
        #expect(waiting.stderr.contains(request.id.description))
        let approved = try await server.admin(["release", "approve", request.id.description, "--reason", "ticket 4711: plan shared"])
        #expect(approved.status == 0 && approved.stdoutText.hasPrefix("approved request \(request.id)"), "\(approved.text)")

        let opened = try await colleague.keyhold(["file", "decrypt", "plan.khf", "-o", "plan.txt"])
        #expect(opened.status == 0, "\(opened.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: colleague.path("plan.txt"))) == plain)
        #expect(try await server.must(["release", "list"]).split(separator: "\n").count == 1, "no open request is left")

        let trail = try await server.auditEntries().filter {
            [.releaseRequest, .releaseApprove, .release].contains($0.action) && $0.keyID == request.keyID
        }
        #expect(trail.map(\.action) == [.releaseRequest, .releaseApprove, .release], "one request however often asked, one approval, one release")
        let approval = try #require(trail.first { $0.action == .releaseApprove })
        #expect(approval.detail.contains("ticket 4711: plan shared"))
        if case .administrator = approval.actor {} else { Issue.record("approved by \(approval.actor)") }
        #expect(trail.last?.action == .release && trail.last?.result == .ok && trail.last?.detail.contains("request \(request.id)") == true)
    }

    /// Defect 2: no caps or timeouts on the listeners, so idle connections from anyone could
    /// exhaust the server's descriptors. 500 idle TCP connections to each listener from another
    /// address (127.0.0.2) are cut to the per-address caps at once and closed by the handshake
    /// timeout, while a device releases keys and the administrator works as usual.
    @Test func idleConnectionsAreCappedAndTimedOutWhileDevicesAreServed() async throws {
        OpenFileLimit.raiseToHardLimit()  // this process holds the 1000 connections
        let server = try await ServerProcess(name: "idle")
        // 60 s: long enough that the connections under the caps are still held when the excess
        // is gone, even when the excess takes long to close on a machine busy with other suites.
        try server.setConfig("handshake_timeout", "60")
        try await server.start()
        defer { server.terminate() }
        let device = try await server.enrollDevice("honest")
        var keys: [(KeyRecord, SecretKey)] = []
        try await using(try device.client()) { client in
            for _ in 0..<20 {
                let (record, secret, request) = newKey(device)
                _ = try await client.put(APIPath.key(record.id.description), request, as: EscrowResponse.self)
                keys.append((record, secret))
            }
        }

        let api = try IdleSockets(to: try HostPort(server.api), from: "127.0.0.2", count: 500)
        let enroll = try IdleSockets(to: try HostPort(server.enroll), from: "127.0.0.2", count: 500)
        defer {
            api.close()
            enroll.close()
        }
        // The defaults (docs/operations.md): 64 API connections per address in their handshake,
        // 8 enrollment connections per address. Connects beyond the accept backlog are retried by
        // the kernel, so the excess is closed over a few seconds (more while other suites run), not at once.
        let capped = ContinuousClock.now + .seconds(45)
        while ContinuousClock.now < capped, api.stillOpen() > 64 || enroll.stillOpen() > 8 { try await Task.sleep(for: .milliseconds(200)) }
        let (apiOpen, enrollOpen) = (api.stillOpen(), enroll.stillOpen())
        #expect(apiOpen <= 64, "API connections in their handshake per address: \(apiOpen)")
        #expect(enrollOpen <= 8, "enrollment connections per address: \(enrollOpen)")
        #expect(apiOpen > 0 && enrollOpen > 0, "connections under the caps are held until the handshake timeout")

        // Meanwhile: releases, the administrator and a new enrollment from another address work.
        try await using(try device.client()) { client in
            for (record, secret) in keys {
                let released = try await client.get(APIPath.key(record.id.description), as: KeyMaterial.self)
                #expect(released.secret.constantTimeEquals(secret))
            }
        }
        #expect(try await server.admin(["status"]).status == 0)
        _ = try await server.enrollDevice("newcomer")

        // The handshake timeout (60 s here) closes what the caps let in.
        let deadline = ContinuousClock.now + .seconds(90)
        while ContinuousClock.now < deadline, api.stillOpen() + enroll.stillOpen() > 0 { try await Task.sleep(for: .milliseconds(200)) }
        #expect(api.stillOpen() == 0 && enroll.stillOpen() == 0, "every idle connection was closed by the server")
        #expect(server.log().contains("refusing connections over the listener's caps"))
    }

    /// Defect 3: every bogus enrollment wrote a durable audit row, so a flood of them slowed the
    /// devices' releases. Now a source address has a request budget (429 with Retry-After beyond
    /// it), and anonymous refusals are summed up per window instead of written one by one.
    @Test func anonymousRefusalsAreRateLimitedAndSummedUpNotAuditedOneByOne() async throws {
        let server = try await ServerProcess(name: "flood")
        try server.setConfig("refusal_summary_interval", "2")
        try await server.start()
        defer { server.terminate() }
        let device = try await server.enrollDevice("honest")
        let (record, secret, request) = newKey(device)
        _ = try await using(try device.client()) { try await $0.put(APIPath.key(record.id.description), request, as: EscrowResponse.self) }
        let before = try await server.auditEntries().count

        let flood = 3000
        let floodStarted = ContinuousClock.now
        let bogus = EnrollRequest(tokenID: .random(), secret: Base64URL.encode(SecureRandom.bytes(count: 32)), csrPEM: "", name: "x")
        let enroll = try APIClient(address: server.enroll, caPEM: try server.file("ca.pem"), verifyHostname: false)
        let codes = try await withThrowingTaskGroup(of: [String].self) { group in
            for _ in 0..<6 {
                group.addTask {
                    var codes: [String] = []
                    for _ in 0..<(flood / 6) {
                        do {
                            _ = try await enroll.post(APIPath.enroll, bogus, as: EnrollResponse.self)
                            codes.append("enrolled")
                        } catch let error as KeyholdError {
                            codes.append(error.code.rawValue)
                        }
                    }
                    return codes
                }
            }
            // The device keeps being served during the flood.
            group.addTask {
                try await using(try device.client()) { client in
                    for _ in 0..<50 {
                        let released = try await client.get(APIPath.key(record.id.description), as: KeyMaterial.self)
                        #expect(released.secret.constantTimeEquals(secret))
                    }
                }
                return []
            }
            return try await group.reduce(into: []) { $0 += $1 }
        }
        await enroll.shutdown()
        let counted = Dictionary(grouping: codes, by: { $0 }).mapValues(\.count)
        #expect(counted["enrolled"] == nil)
        #expect((counted["token_invalid"] ?? 0) >= 20, "\(counted)")
        #expect((counted["rate_limited"] ?? 0) > flood / 2, "most of the flood is over the budget: \(counted)")
        #expect((counted["token_invalid"] ?? 0) + (counted["rate_limited"] ?? 0) == flood)

        // 429 carries Retry-After (a burst of 30 from curl, over the budget of 20).
        let url = "https://\(server.enroll)/v1/enroll"
        let curl = try await run(
            URL(fileURLWithPath: "/usr/bin/curl"),
            ["-sk", "-i", "-X", "POST", "--data", "{}", "-H", "content-type: application/json"] + Array(repeating: url, count: 30))
        #expect(curl.stdoutText.contains("HTTP/1.1 429"), "\(curl.stdoutText.prefix(2000))")
        #expect(curl.stdoutText.lowercased().contains("retry-after: "))
        let curlRefusals = curl.stdoutText.components(separatedBy: "HTTP/1.1 ").count - 1
        #expect(curlRefusals == 30)

        // Once the budget refills, the same address enrolls again.
        try await Task.sleep(for: .seconds(2))
        _ = try await server.enrollDevice("after the flood")

        // A few summary records, no row per refusal; their counts add up to every refusal.
        try await Task.sleep(for: .seconds(3))
        let added = try await server.auditEntries().dropFirst(before)
        #expect(!added.contains { $0.action == .enroll && $0.result != .ok }, "no anonymous refusal is audited one by one")
        let summaries = added.filter { $0.action == .enrollRefusals }
        // One record per reason (token_invalid, rate_limited, invalid_request) per 2-second window.
        let windows = Int((ContinuousClock.now - floodStarted).components.seconds) / 2 + 2
        #expect(summaries.count <= 3 * windows, "\(summaries.count) summary records in \(windows) windows")
        #expect(summaries.count * 10 < flood, "far fewer records than refusals")
        let total = summaries.compactMap { Int($0.detail.prefix { $0.isNumber }) }.reduce(0, +)
        #expect(total == flood + curlRefusals, "the summaries count \(total) refusals")
        #expect(summaries.allSatisfy { $0.actor == .anonymous && $0.detail.contains("most from 127.0.0.1") })
    }

    /// Defect 6: escrow stored the origin server and device the caller named.
    @Test func theServerNotTheCallerSaysWhoEscrowedAKey() async throws {
        let server = try await ServerProcess(name: "origin")
        try await server.start()
        defer { server.terminate() }
        let d1 = try await server.enrollDevice("d1")
        let d2 = try await server.enrollDevice("d2")
        func escrow(_ origin: (ServerID, DeviceID), reassignedFrom: ServerID? = nil) async throws -> EscrowResponse {
            let record = KeyRecord(kind: .file, originServerID: origin.0, originDeviceID: origin.1)
            let request = EscrowRequest(key: KeyMaterial(record: record, secret: .generate()), reassignedFrom: reassignedFrom)
            return try await using(try d1.client()) { try await $0.put(APIPath.key(record.id.description), request, as: EscrowResponse.self) }
        }
        let d1Device = DeviceID(enrollment: d1.clientID)
        let d2Device = DeviceID(enrollment: d2.clientID)
        await expectCode("invalid_request") { _ = try await escrow((d1.serverID, d2Device)) }
        await expectCode("invalid_request") { _ = try await escrow((.random(), d1Device)) }
        await expectCode("invalid_request") { _ = try await escrow((d1.serverID, d2Device), reassignedFrom: .random()) }
        await expectCode("invalid_request") { _ = try await escrow((d1.serverID, d1Device), reassignedFrom: d1.serverID) }
        // Its own new key, and (moving here) a key of another server it held, are stored.
        #expect(try await escrow((d1.serverID, d1Device)).outcome == .inserted)
        #expect(try await escrow((.random(), .random()), reassignedFrom: .random()).outcome == .inserted)
        let refusals = try await server.auditEntries().filter { $0.result == .refused(.invalidRequest) }
        #expect(refusals.count == 4 && refusals.allSatisfy { $0.actor == .device(d1.clientID) && $0.detail.hasPrefix("origin refused: ") })
        let keys = try WireFormat.decoder().decode([KeyInfo].self, from: Data(try await server.must(["key", "list", "--json"]).utf8))
        #expect(keys.count == 2 && !keys.contains { $0.record.originDeviceID == d2Device })
    }

    /// Defect 7: names and labels reached text output unescaped and could forge lines.
    @Test func clientTextIsEscapedInEveryTextOutput() async throws {
        let server = try await ServerProcess(name: "escape")
        try await server.start()
        defer { server.terminate() }
        let device = try await server.enrollDevice("laptop")
        let forged = "stick\n\(KeyID.random())\tfile\tactive\tfalse\tescrow"
        let record = KeyRecord(kind: .drive, originServerID: device.serverID, originDeviceID: DeviceID(enrollment: device.clientID), label: forged)
        _ = try await using(try device.client()) {
            try await $0.put(
                APIPath.key(record.id.description), EscrowRequest(key: KeyMaterial(record: record, secret: .generate())), as: EscrowResponse.self)
        }
        let list = try await server.must(["key", "list"])
        #expect(list.split(separator: "\n").count == 2, "a header and one row: \(list)")
        #expect(list.contains("stick\\n") && list.contains("\\tfile"), "\(list)")
        // JSON output keeps the exact text (JSON escapes it).
        #expect(try await server.must(["key", "list", "--json"]).contains(#"stick\n"#))
        let huge = KeyRecord(
            kind: .file, originServerID: device.serverID, originDeviceID: DeviceID(enrollment: device.clientID),
            label: String(repeating: "x", count: 300))
        await expectCode("invalid_request") {
            _ = try await using(try device.client()) {
                try await $0.put(
                    APIPath.key(huge.id.description), EscrowRequest(key: KeyMaterial(record: huge, secret: .generate())), as: EscrowResponse.self)
            }
        }
    }

    /// Defect 11: role checks came late (an administrator certificate got 200 on the device heartbeat;
    /// a device's push body was decoded before the refusal).
    @Test func rolesAreCheckedOnTheRouteBeforeTheBody() async throws {
        let server = try await ServerProcess(name: "roles", initOptions: ["--use-hierarchy"])
        try await server.start()
        defer { server.terminate() }
        await expectCode("forbidden") {
            try await using(try server.adminClient()) {
                _ = try await $0.post(APIPath.heartbeat, HeartbeatRequest(agentVersion: "x", keyCount: 0), as: HeartbeatResponse.self)
            }
        }
        let device = try await server.enrollDevice()
        let big = PushRequest(
            keys: (0..<9000).map { _ in
                PushedKey(
                    key: KeyMaterial(record: KeyRecord(kind: .file, originServerID: .random(), originDeviceID: .random()), secret: .generate()),
                    blocked: false)
            })
        await expectCode("forbidden") {
            try await using(try device.client()) { _ = try await $0.post(APIPath.hierarchyPush, big, as: PushResponse.self) }
        }
        #expect(try await server.keyCount() == 0)
    }

    /// Defect 12: a revoked agent heartbeated forever, adding a refusal to the audit every period.
    @Test func aRevokedAgentStopsItsHeartbeats() async throws {
        let server = try await ServerProcess(name: "revoked-agent")
        try await server.start()
        defer { server.terminate() }
        let agent = try await AgentIntegrationTests.enrolledAgent(server, name: "revoked")
        defer { agent.terminate() }
        let id = try #require(try await agent.send(.status).status().deviceID)
        #expect(try await server.admin(["device", "revoke", id.description]).status == 0)
        // Heartbeats come every second: wait for the refusal, then a while longer.
        var stopped: String?
        for _ in 0..<100 where stopped == nil {
            stopped = try await agent.send(.status).status().heartbeatStopped
            if stopped == nil { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(stopped?.contains("enroll it again") == true, "\(String(describing: stopped))")
        let refusalsThen = try await server.auditEntries().filter { $0.actor == .device(id) && $0.result == .refused(.clientRevoked) }.count
        try await Task.sleep(for: .seconds(4))
        let refusalsNow = try await server.auditEntries().filter { $0.actor == .device(id) && $0.result == .refused(.clientRevoked) }.count
        #expect(refusalsThen >= 1 && refusalsNow == refusalsThen, "no more heartbeats after the refusal (\(refusalsThen) → \(refusalsNow))")
        let text = try await agent.keyhold(["status"]).stdoutText
        #expect(text.contains("heartbeats:      STOPPED: the server revoked this device"), "\(text)")
    }
}

/// Raw TCP connections that never say a word (no TLS handshake), made from a chosen source
/// address without blocking.
final class IdleSockets: Sendable {
    let descriptors: [Int32]

    init(to target: HostPort, from source: String, count: Int) throws {
        var made: [Int32] = []
        for _ in 0..<count {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            guard fd >= 0 else { throw LaunchFailure("socket: \(String(cString: strerror(errno)))") }
            var local = sockaddr_in()
            local.sin_family = sa_family_t(AF_INET)
            inet_pton(AF_INET, source, &local.sin_addr)
            var remote = sockaddr_in()
            remote.sin_family = sa_family_t(AF_INET)
            remote.sin_port = in_port_t(UInt16(target.port).bigEndian)
            inet_pton(AF_INET, target.host, &remote.sin_addr)
            let bound = withUnsafePointer(to: &local) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            let connected = withUnsafePointer(to: &remote) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard bound == 0, connected == 0 || errno == EINPROGRESS else {
                throw LaunchFailure("connect from \(source): \(String(cString: strerror(errno)))")
            }
            made.append(fd)
        }
        descriptors = made
    }

    /// How many the server has not closed (a read would block rather than see the end).
    func stillOpen() -> Int {
        var byte: UInt8 = 0
        return descriptors.filter { fd in
            let n = recv(fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
            return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)
        }.count
    }

    func close() { for fd in descriptors { _ = Glibc.close(fd) } }
}
