import Foundation
import KeyholdClient
import KeyholdCore
import KeyholdProtocol
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
        #expect(asDevice.status == 1 && asDevice.stderr.contains("is an administrator, not a device"), "\(asDevice.stderr)")
        #expect(asDevice.stderr.contains("hint: revoke administrators with 'keyhold-server admin revoke"))
        let last = try await server.admin(["admin", "revoke", first.id.description])
        #expect(last.status == 1 && last.stderr.contains("is the last active administrator"), "\(last.stderr)")
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
        let pusher = try await Enrollment.enroll(token: try await server.token(role: "server"), name: "pusher")
        try await using(try pusher.client()) { client in
            for n in [10_000, 1] {
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
        let refusals = try await server.auditEntries().filter { $0.action == .enroll && $0.result != .ok }
        #expect(refusals.map(\.result) == [.refused(.invalidRequest), .refused(.tokenInvalid), .refused(.invalidRequest)])
        #expect(refusals.allSatisfy { $0.actor == .anonymous && $0.detail.hasPrefix("token \(token.id): ") })
        #expect(!refusals[2].detail.contains("\n"), "the refused name is escaped in the record")
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
