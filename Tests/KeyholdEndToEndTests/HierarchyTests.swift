import Foundation
import KeyholdClient
import KeyholdCore
import KeyholdProtocol
import KeyholdTestSupport
import Testing

/// The hierarchy with real processes: top T; S1 and S2 under T; S3 under S1; D1 on S3, D2 on S2.
/// Heartbeats are long; the tests push with `keyhold-server hierarchy sync` to control the timing.
// 20 minutes: its crash loops run beside every other suite of `make test` on two cores and took
// up to 10 there; the limit is a guard against a hang, not a speed goal (those are in make bench).
@Suite(.timeLimit(.minutes(20))) struct HierarchyTests {
    struct Tree {
        let t, s1, s2, s3: ServerProcess
        let d1, d2: AgentProcess
        func terminate() {
            d1.terminate()
            d2.terminate()
            for s in [s3, s2, s1, t] { s.terminate() }
        }
    }

    static func server(_ name: String, hierarchy: Bool = true) async throws -> ServerProcess {
        let s = try await ServerProcess(name: name, initOptions: hierarchy ? ["--use-hierarchy"] : [])
        try await s.start(["--hierarchy-heartbeat", "3600"])
        return s
    }

    static func join(_ secondary: ServerProcess, to primary: ServerProcess) async throws {
        let token = try await primary.admin(["token", "create", "--role", "server"]).stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
        let r = try await secondary.admin(["primary", "join", token])
        guard r.status == 0 else { throw TestFailure("join failed: \(r.stderr)") }
    }

    static func tree() async throws -> Tree {
        let t = try await server("T")
        let s1 = try await server("S1")
        let s2 = try await server("S2")
        let s3 = try await server("S3")
        try await join(s1, to: t)
        try await join(s2, to: t)
        try await join(s3, to: s1)
        return Tree(
            t: t, s1: s1, s2: s2, s3: s3,
            d1: try await AgentIntegrationTests.enrolledAgent(s3, name: "D1"), d2: try await AgentIntegrationTests.enrolledAgent(s2, name: "D2"))
    }

    static func sync(_ s: ServerProcess) async throws -> RunResult { try await s.admin(["hierarchy", "sync"]) }

    static func status(_ s: ServerProcess) async throws -> HierarchyStatus {
        let r = try await s.admin(["status", "--json"])
        return try WireFormat.decoder().decode(StatusResponse.self, from: r.stdout).hierarchy!
    }

    /// D1 encrypts a new file; returns its name and plaintext.
    static func encryptOnD1(_ tree: Tree, _ name: String) async throws -> Data {
        let plain = try AgentIntegrationTests.write(tree.d1, name, 4000)
        let r = try await tree.d1.keyhold(["file", "encrypt", name, "-o", name + ".khf"])
        guard r.status == 0 else { throw TestFailure("encrypt failed: \(r.stderr)") }
        try FileManager.default.copyItem(atPath: tree.d1.path(name + ".khf"), toPath: tree.d2.path(name + ".khf"))
        return plain
    }

    @Test func aFileFromD1OpensOnD2AfterTheKeyClimbed() async throws {
        let tree = try await Self.tree()
        defer { tree.terminate() }
        let plain = try await Self.encryptOnD1(tree, "f1")
        // Before any heartbeat the key is only on S3: D2's server cannot find it.
        var r = try await tree.d2.keyhold(["file", "decrypt", "f1.khf", "-o", "f1.txt"])
        #expect(r.status != 0 && r.stderr.contains("not known to this server or its primaries"), "\(r.stderr)")
        #expect(r.stderr.contains("heartbeat"))
        #expect(try await Self.sync(tree.s3).stdoutText.contains("pushed 1 key"))
        // S3 → S1 only: T still lacks it.
        r = try await tree.d2.keyhold(["file", "decrypt", "f1.khf", "-o", "f1.txt"])
        #expect(r.status != 0)
        #expect(try await Self.sync(tree.s1).stdoutText.contains("pushed 1 key"))
        r = try await tree.d2.keyhold(["file", "decrypt", "f1.khf", "-o", "f1.txt"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: tree.d2.path("f1.txt"))) == plain)

        // Cursors: acknowledged, nothing pending; an idle heartbeat sends nothing.
        let s3 = try await Self.status(tree.s3)
        #expect(s3.pushCursor > 0 && s3.pending == 0 && !s3.primaryRefuses)
        #expect(try await Self.sync(tree.s3).stdoutText.contains("pushed 0 key(s) in 0 batch(es)"))
        // S2 keeps the key it obtained, marked as such; T audited the release to S2.
        #expect(try await tree.s2.admin(["key", "list"]).stdoutText.contains("\thierarchy\t"))
        #expect(
            try await tree.t.auditEntries().contains {
                $0.action == .release && $0.result.description == "ok" && $0.route.description.hasPrefix("secondary:")
                    && $0.actor.description.hasPrefix("secondary:")
            })
        #expect(try await tree.s2.auditEntries().contains { $0.action == .obtain && $0.route.description.hasPrefix("primary:") })
        #expect(try await tree.t.auditEntries().contains { $0.action == .pushReceive && $0.detail.hasPrefix("1 keys: 1 inserted") })
    }

    @Test func aBlockTravelsUpAndNoServerReleasesTheKey() async throws {
        let tree = try await Self.tree()
        defer { tree.terminate() }
        _ = try await Self.encryptOnD1(tree, "f4")
        #expect(try await Self.sync(tree.s3).status == 0)
        #expect(try await Self.sync(tree.s1).status == 0)
        let info = try JSONSerialization.jsonObject(with: try await tree.d1.keyhold(["file", "info", "f4.khf", "--json"]).stdout) as? [String: Any]
        let keyID = try #require(info?["key_id"] as? String)
        // Blocked where it was escrowed, after it already reached the top: the block follows it.
        #expect(try await tree.s3.admin(["key", "block", keyID]).status == 0)
        #expect(try await Self.sync(tree.s3).stdoutText.contains("pushed 1 key"))
        #expect(try await Self.sync(tree.s1).stdoutText.contains("pushed 1 key"))
        #expect(try await tree.t.admin(["key", "list", "--json"]).stdoutText.contains("\"blocked\" : true"))
        let r = try await tree.d2.keyhold(["file", "decrypt", "f4.khf", "-o", "f4.txt"])
        #expect(r.status != 0 && r.stderr.contains("blocked"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: tree.d2.path("f4.txt")))
        #expect(try await tree.t.auditEntries().contains { $0.action == .release && $0.result.description == "key_blocked" })
    }

    /// Defect 13 of "Harden the trust boundary": a block at the top did not reach the secondaries
    /// that already held a copy, so S2 still released the key to a newly enrolled device. Now each
    /// push (an empty one too) brings the primary's state changes down; a change reaches a server
    /// n levels below the one that decided it after n heartbeats (here: syncs) at most.
    @Test func aBlockAtTheTopReachesEveryServerHoldingACopy() async throws {
        let tree = try await Self.tree()
        defer { tree.terminate() }
        _ = try await Self.encryptOnD1(tree, "f13")
        #expect(try await Self.sync(tree.s3).status == 0)
        #expect(try await Self.sync(tree.s1).status == 0)
        let info = try JSONSerialization.jsonObject(with: try await tree.d1.keyhold(["file", "info", "f13.khf", "--json"]).stdout) as? [String: Any]
        let keyText = try #require(info?["key_id"] as? String)
        let keyID = try #require(KeyID(keyText))
        // S2 obtains a copy from T; S1 and S3 hold it already. Every server holds the key now.
        let r = try await tree.d2.keyhold(["file", "decrypt", "f13.khf", "-o", "f13.txt"])
        #expect(r.status == 0, "\(r.stderr)")

        // Newly enrolled devices (no cache) on each secondary.
        let onS2 = try await tree.s2.enrollDevice("newcomer-s2")
        let onS1 = try await tree.s1.enrollDevice("newcomer-s1")
        let onS3 = try await tree.s3.enrollDevice("newcomer-s3")
        func ask(_ device: EnrolledIdentity) async throws -> String {
            do {
                let key = try await using(try device.client()) { try await $0.get(APIPath.key(keyID.description), as: KeyMaterial.self) }
                return key.record.id == keyID ? "released" : "wrong key"
            } catch let error as KeyholdError {
                return error.code.rawValue
            }
        }
        #expect(try await ask(onS2) == "released")
        // S2's copy climbs back as any key it stores does (T has it already): S2 is now idle.
        #expect(try await Self.sync(tree.s2).stdoutText.contains("pushed 1 key"))

        #expect(try await tree.t.admin(["key", "block", keyID.description]).status == 0)
        // One heartbeat of S2 (it has no keys to push: an empty push) brings the block down.
        #expect(try await Self.sync(tree.s2).stdoutText.contains("pushed 0 key(s)"))
        #expect(try await ask(onS2) == "key_blocked")
        // Two levels down: S1's heartbeat, then S3's.
        #expect(try await Self.sync(tree.s1).status == 0)
        #expect(try await ask(onS1) == "key_blocked")
        #expect(try await ask(onS3) == "released", "S3 has not had its heartbeat yet: the documented window")
        #expect(try await Self.sync(tree.s3).status == 0)
        #expect(try await ask(onS3) == "key_blocked")
        let applied = try await tree.s2.auditEntries().filter { $0.action == .block && $0.keyID == keyID }
        let top = try WireFormat.decoder().decode(StatusResponse.self, from: try await tree.t.admin(["status", "--json"]).stdout).serverID
        #expect(applied.count == 1 && applied.first?.route == .primary(top) && applied.first?.detail == "decided above", "\(applied)")

        // An unblock at the top travels the same way.
        #expect(try await tree.t.admin(["key", "unblock", keyID.description]).status == 0)
        for s in [tree.s2, tree.s1, tree.s3] { #expect(try await Self.sync(s).status == 0) }
        for device in [onS2, onS1, onS3] { #expect(try await ask(device) == "released") }

        // A block where the key was escrowed climbs to the top and comes down the other branch.
        #expect(try await tree.s3.admin(["key", "block", keyID.description]).status == 0)
        for s in [tree.s3, tree.s1, tree.s2] { #expect(try await Self.sync(s).status == 0) }
        #expect(try await ask(onS2) == "key_blocked")
        // Nothing is audited for the idle polls: T's trail has no refused or empty pushes.
        #expect(!(try await tree.t.auditEntries().contains { $0.action == .pushReceive && $0.detail.hasPrefix("0 keys") }))
    }

    /// Defect 14 of "Harden the trust boundary": a device of another secondary reads a key id in
    /// a file header and escrows its own secret under it; its server pushes first, so the real
    /// key became a conflict at the top and every lookup there answered with the forged secret.
    /// Keys are now made with ids derived from their secrets, and a primary resolves such a
    /// conflict in favour of the key that proves its id.
    @Test func aForgedKeyUnderAnIdReadFromAFileLosesToTheRealOneAtThePrimary() async throws {
        let tree = try await Self.tree()
        defer { tree.terminate() }
        _ = try await Self.encryptOnD1(tree, "f14")
        let info = try JSONSerialization.jsonObject(with: try await tree.d1.keyhold(["file", "info", "f14.khf", "--json"]).stdout) as? [String: Any]
        let keyText = try #require(info?["key_id"] as? String)
        let keyID = try #require(KeyID(keyText))
        // The attacker: a device of S2, escrowing the id with its own secret (its origin is itself).
        let attacker = try await tree.s2.enrollDevice("attacker")
        let forged = KeyMaterial(
            record: KeyRecord(id: keyID, kind: .file, originServerID: attacker.serverID, originDeviceID: DeviceID(enrollment: attacker.clientID)),
            secret: .generate())
        _ = try await using(try attacker.client()) {
            try await $0.put(APIPath.key(keyID.description), EscrowRequest(key: forged), as: EscrowResponse.self)
        }
        #expect(try await Self.sync(tree.s2).stdoutText.contains("pushed 1 key"), "the forgery reaches the top first")
        // The real key climbs S3 → S1 → T and replaces the forgery there.
        #expect(try await Self.sync(tree.s3).status == 0)
        #expect(try await Self.sync(tree.s1).status == 0)
        let watcher = try await tree.t.enrollDevice("helpdesk")
        let atTop = try await using(try watcher.client()) { try await $0.get(APIPath.key(keyID.description), as: KeyMaterial.self) }
        #expect(atTop.idIsDerived && !atTop.secret.constantTimeEquals(forged.secret), "the top holds the real key")
        #expect(atTop.record.originServerID != attacker.serverID)
        let replaced = try await tree.t.auditEntries().filter { $0.action == .keyReplaced && $0.keyID == keyID }
        #expect(replaced.count == 1 && replaced.first?.actor.description.hasPrefix("secondary:") == true, "\(replaced)")
        // The trail says what happened, in order: the conflict, then its resolution.
        let trail = try await tree.t.auditEntries().filter { $0.keyID == keyID && [.pushReceive, .keyReplaced].contains($0.action) }
        #expect(trail.map(\.action) == [.pushReceive, .keyReplaced] && trail.first?.result == .refused(.conflict), "\(trail)")
    }

    @Test func optionOffOnTheTopRefusesWithItsOwnError() async throws {
        let tree = try await Self.tree()
        defer { tree.terminate() }
        #expect(try await tree.t.admin(["hierarchy", "disable"]).status == 0)
        let plain = try await Self.encryptOnD1(tree, "f2")
        #expect(try await Self.sync(tree.s3).status == 0)
        let refused = try await Self.sync(tree.s1)
        #expect(refused.status != 0 && refused.stderr.contains("hierarchy_disabled"), "\(refused.stderr)")
        #expect(try await Self.status(tree.s1).primaryRefuses)
        #expect(try await tree.s1.admin(["status"]).stdoutText.contains("REFUSES"))
        let r = try await tree.d2.keyhold(["file", "decrypt", "f2.khf", "-o", "f2.txt"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("hierarchy_disabled") && r.stderr.contains("hint: ") && r.stderr.contains("hierarchy enable"), "\(r.stderr)")
        // Turned back on: S1 resumes from its cursor and D2 opens the file.
        #expect(try await tree.t.admin(["hierarchy", "enable"]).status == 0)
        #expect(try await Self.sync(tree.s1).stdoutText.contains("pushed 1 key"))
        #expect(!(try await Self.status(tree.s1).primaryRefuses))
        #expect(try await tree.d2.keyhold(["file", "decrypt", "f2.khf", "-o", "f2.txt"]).status == 0)
        #expect(try Data(contentsOf: URL(fileURLWithPath: tree.d2.path("f2.txt"))) == plain)
    }

    static func hierarchyTree(_ s: ServerProcess) async throws -> HierarchyTree {
        let r = try await s.admin(["hierarchy", "tree", "--json"])
        guard r.status == 0 else { throw TestFailure("hierarchy tree failed: \(r.stderr)") }
        return try WireFormat.decoder().decode(HierarchyTree.self, from: r.stdout)
    }

    @Test func theTreeShowsEachSecondarysLastPushPendingKeysLagAndRefusals() async throws {
        let t = try await Self.server("T")
        defer { t.terminate() }
        let s1 = try await Self.server("S1")
        defer { s1.terminate() }
        try await Self.join(s1, to: t)
        let d1 = try await AgentIntegrationTests.enrolledAgent(s1, name: "D1")
        defer { d1.terminate() }
        _ = try AgentIntegrationTests.write(d1, "a.txt", 100)
        #expect(try await d1.keyhold(["file", "encrypt", "a.txt", "-o", "a.khf"]).status == 0)

        // Before any push: S1 has one key pending for a while; T knows S1 only from its enrollment.
        try await Task.sleep(for: .milliseconds(300))
        var below = try await Self.hierarchyTree(s1)
        #expect(below.upward.pending == 1 && below.lagSeconds >= 0.3, "\(below)")
        var above = try await Self.hierarchyTree(t)
        let id = try #require(above.secondaries.first?.id)
        #expect(above.secondaries.count == 1 && above.secondaries[0].lastPush == nil && above.secondaries[0].pending == nil)

        // After a push: T records it (last push, version, keys) and what S1 reported at its start.
        #expect(try await Self.sync(s1).status == 0)
        above = try await Self.hierarchyTree(t)
        var node = try #require(above.secondaries.first)
        #expect(node.id == id && node.state == .active && node.lastPush != nil && node.version == KeyholdVersion.current, "\(node)")
        #expect(node.keyCount == 1 && node.pending == 1 && (node.lagSeconds ?? 0) >= 0.3 && node.keysReceived == 1 && node.lastKeys != nil)
        #expect(node.lastRefusal == nil)
        below = try await Self.hierarchyTree(s1)
        #expect(below.upward.pending == 0 && below.lagSeconds == 0 && below.upward.lastPushResult == "ok: 1 keys", "\(below.upward)")
        // The push is the secondary's last contact: `device list` shows it.
        let row = try await t.admin(["device", "list"]).stdoutText.split(separator: "\n").first { $0.hasPrefix(id.description) }
        #expect(row.map { !$0.split(separator: "\t")[4].hasPrefix("-") } == true, "last seen after a push: \(row ?? "none")")

        // Refused at T: the refusal is shown on both ends.
        #expect(try await t.admin(["hierarchy", "disable"]).status == 0)
        #expect(try await Self.sync(s1).status == 69)
        node = try #require(try await Self.hierarchyTree(t).secondaries.first)
        #expect(node.lastRefusal == "hierarchy_disabled" && node.lastRefusalAt != nil, "\(node)")
        let text = try await t.admin(["hierarchy", "tree"]).stdoutText
        #expect(text.contains("└── secondaries: 1") && text.contains("last refusal: hierarchy_disabled"), "\(text)")
        #expect(text.contains("1 key(s) received"), "\(text)")
        let upText = try await s1.admin(["hierarchy", "tree"]).stdoutText
        #expect(upText.contains("├── primary \(above.serverID)") && upText.contains("REFUSES"), "\(upText)")
        let list = try await t.admin(["secondary", "list"]).stdoutText
        #expect(list.contains(id.description) && list.contains("hierarchy_disabled"), "\(list)")

        // On again: the next report says nothing is pending.
        #expect(try await t.admin(["hierarchy", "enable"]).status == 0)
        #expect(try await Self.sync(s1).status == 0)
        node = try #require(try await Self.hierarchyTree(t).secondaries.first)
        #expect(node.pending == 0 && node.lagSeconds == 0 && node.keysReceived == 1, "\(node)")
    }

    static func explain(_ s: ServerProcess, _ key: String, device: String? = nil) async throws -> KeyExplanation {
        let r = try await s.admin(["explain", "--key", key, "--json"] + (device.map { ["--device", $0] } ?? []))
        guard r.status == 0 else { throw TestFailure("explain failed: \(r.stderr)") }
        return try WireFormat.decoder().decode(KeyExplanation.self, from: r.stdout)
    }

    static func serverID(_ s: ServerProcess) async throws -> ServerID {
        try WireFormat.decoder().decode(StatusResponse.self, from: try await s.admin(["status", "--json"]).stdout).serverID
    }

    @Test func explainFollowsAKeyHopByHopAndSaysWhyADeviceCanOrCannotGetIt() async throws {
        let tree = try await Self.tree()
        defer { tree.terminate() }
        _ = try await Self.encryptOnD1(tree, "f5")
        let info = try JSONSerialization.jsonObject(with: try await tree.d1.keyhold(["file", "info", "f5.khf", "--json"]).stdout) as? [String: Any]
        let key = try #require(info?["key_id"] as? String)
        let status = try JSONSerialization.jsonObject(with: try await tree.d2.keyhold(["status", "--json"]).stdout) as? [String: Any]
        let d2 = try #require(status?["device_id"] as? String)
        let (t, s1, s2, s3) = (
            try await Self.serverID(tree.t), try await Self.serverID(tree.s1), try await Self.serverID(tree.s2), try await Self.serverID(tree.s3)
        )

        // Escrowed at S3 only: S2 and T do not hold it, and nothing is pushed yet.
        var e = try await Self.explain(tree.s2, key, device: d2)
        #expect(e.hops.map(\.serverID) == [s2, t] && e.hops.allSatisfy { !$0.held && $0.useHierarchy == true }, "\(e.hops)")
        #expect(e.device?.enrolled == true && e.device?.state == .active && e.device?.policyRefusal == nil)
        #expect(e.verdict.contains("not held here or at any primary up to the top"), "\(e.verdict)")
        e = try await Self.explain(tree.s3, key)
        #expect(e.hops.map(\.serverID) == [s3, s1, t] && e.hops[0].held && e.hops[0].provenance == "escrow", "\(e.hops)")
        #expect(e.hops[0].acknowledgedByPrimary == false && !e.hops[1].held)

        // Pushed to the top: S3 sees each hop hold it, each acknowledged below; S2 sees it one up.
        #expect(try await Self.sync(tree.s3).status == 0)
        #expect(try await Self.sync(tree.s1).status == 0)
        e = try await Self.explain(tree.s3, key)
        #expect(e.hops.allSatisfy(\.held) && e.hops[0].acknowledgedByPrimary == true && e.hops[1].acknowledgedByPrimary == true, "\(e.hops)")
        #expect(e.hops[1].provenance == "pushed" && e.hops[2].acknowledgedByPrimary == nil)
        e = try await Self.explain(tree.s2, key, device: d2)
        #expect(!e.hops[0].held && e.hops[1].held && e.verdict.contains("is held at server \(t), 1 server(s) up"), "\(e.verdict)")

        // D2 gets it: S2 now holds it from the hierarchy and remembers what its lookup answered.
        #expect(try await tree.d2.keyhold(["file", "decrypt", "f5.khf", "-o", "f5.txt"]).status == 0)
        e = try await Self.explain(tree.s2, key, device: d2)
        #expect(
            e.hops[0].held && e.hops[0].provenance == "hierarchy" && e.hops[0].lastLookup?.hasPrefix("found, held 1 server(s) up") == true,
            "\(e.hops[0])")
        #expect(e.verdict.contains("is held here"), "\(e.verdict)")

        // Blocked at the top: S2's own copy still answers until the block comes down with S2's
        // next push, and the verdict says both; after that push S2's copy is blocked too.
        #expect(try await tree.t.admin(["key", "block", key]).status == 0)
        e = try await Self.explain(tree.s2, key, device: d2)
        #expect(e.hops[1].blocked == true && e.hops[0].blocked == false, "\(e.hops)")
        #expect(e.verdict.contains("is held here") && e.verdict.contains("blocked at server \(t) above"), "\(e.verdict)")
        #expect(try await Self.sync(tree.s2).status == 0)
        e = try await Self.explain(tree.s2, key, device: d2)
        #expect(e.hops[0].blocked == true && e.verdict.contains("is blocked here, the first server holding it"), "\(e.verdict)")
        let text = try await tree.s2.admin(["explain", "--key", key, "--device", d2]).stdoutText
        #expect(text.contains("1 up: server \(t)") && text.contains("BLOCKED") && text.contains("verdict: key \(key) is blocked here"), "\(text)")
        #expect(e.hops[1].lastLookup == nil, "a primary does not say what it looked up for others")

        // The option off at the top: the hop says it did not answer, and why.
        #expect(try await tree.t.admin(["hierarchy", "disable"]).status == 0)
        e = try await Self.explain(tree.s2, key)
        #expect(e.hops.count == 2 && e.hops[1].refusal?.hasPrefix("hierarchy_disabled") == true && e.hops[1].useHierarchy == false, "\(e.hops)")

        // A device that is not one of S2's.
        let stranger = ClientID.random().description
        e = try await Self.explain(tree.s2, key, device: stranger)
        #expect(e.device?.enrolled == false && e.verdict.contains("is not a device enrolled here"), "\(e.verdict)")
        let bad = try await tree.s2.admin(["explain", "--key", "nonsense"])
        #expect(bad.status == 64 && bad.stderr.contains("is not a key id"), "\(bad.stderr)")
    }

    @Test func optionOffInTheMiddleStopsKeysThere() async throws {
        let tree = try await Self.tree()
        defer { tree.terminate() }
        #expect(try await tree.s1.admin(["hierarchy", "disable"]).status == 0)
        _ = try await Self.encryptOnD1(tree, "f3")
        let refused = try await Self.sync(tree.s3)
        #expect(refused.status != 0 && refused.stderr.contains("hierarchy_disabled"))
        let before = try await Self.status(tree.s3)
        #expect(before.pending == 1 && before.primaryRefuses)
        #expect(try await Self.sync(tree.s1).stdoutText.contains("pushed 0"), "S1 with the option off does not push")
        #expect(try await tree.d2.keyhold(["file", "decrypt", "f3.khf", "-o", "f3.txt"]).status != 0)
        #expect(try await tree.s1.admin(["hierarchy", "enable"]).status == 0)
        #expect(try await Self.sync(tree.s3).stdoutText.contains("pushed 1 key"))
        #expect(try await Self.status(tree.s3).pending == 0)
        #expect(try await Self.sync(tree.s1).stdoutText.contains("pushed 1 key"))
        #expect(try await tree.d2.keyhold(["file", "decrypt", "f3.khf", "-o", "f3.txt"]).status == 0)
    }

    @Test func aRevokedSecondaryIsRefusedOnItsNextLookup() async throws {
        // The primary checks a secondary's enrollment inside the release statement; a revoked one
        // must get client_revoked, be audited as such, and receive no key.
        let t = try await Self.server("RT")
        let s1 = try await Self.server("RS1")
        defer {
            s1.terminate()
            t.terminate()
        }
        try await Self.join(s1, to: t)
        let owner = try await t.enrollDevice("owner")
        var ids: [KeyID] = []
        for _ in 0..<2 {
            let (record, _, request) = newKey(owner)
            _ = try await using(try owner.client()) { try await $0.put(APIPath.key(record.id.description), request, as: EscrowResponse.self) }
            ids.append(record.id)
        }
        let asker = try await s1.enrollDevice("asker")
        let client = try asker.client()
        defer { Task { await client.shutdown() } }
        #expect(try await client.get(APIPath.key(ids[0].description), as: KeyMaterial.self).record.id == ids[0])

        // S1's enrollment at T (its id as T's client, not its own server id).
        let listed = try await t.admin(["secondary", "list"]).stdoutText.split(separator: "\n").dropFirst()
        let s1ID = try #require(listed.first.map { String($0.split(separator: "\t")[0]) })
        #expect(try await t.admin(["secondary", "revoke", s1ID]).status == 0)
        await expectCode("client_revoked") { _ = try await client.get(APIPath.key(ids[1].description), as: KeyMaterial.self) }
        let audit = try await t.auditEntries()
        #expect(audit.filter { $0.action == .release && $0.keyID == ids[1] }.isEmpty)
        #expect(audit.contains { $0.actor.description == "secondary:\(s1ID)" && $0.result.description == "client_revoked" })
        #expect(try await s1.auditEntries().contains { $0.keyID == ids[1] && $0.result.description == "client_revoked" })
    }

    @Test func aConfiguredLoopAndASilentPrimaryGiveBoundedClearErrors() async throws {
        let a = try await Self.server("A")
        let b = try await Self.server("B")
        defer {
            a.terminate()
            b.terminate()
        }
        try await Self.join(a, to: b)
        try await Self.join(b, to: a)
        let d = try await AgentIntegrationTests.enrolledAgent(a, name: "loopdev")
        defer { d.terminate() }
        _ = try await d.keyhold(["key", "new", "-o", "k.json"])
        _ = try AgentIntegrationTests.write(d, "x", 10)
        _ = try await d.keyhold(["file", "encrypt", "x", "-o", "x.khf", "--key-file", "k.json"])
        let loop = try await d.keyhold(["file", "decrypt", "x.khf", "-o", "x.out"])
        #expect(loop.status != 0 && loop.stderr.contains("loop") && loop.stderr.contains("hint: "), "\(loop.stderr)")

        // B stops answering (SIGSTOP): A's lookup gives up within its bounded timeout.
        kill(b.pid, SIGSTOP)
        defer { kill(b.pid, SIGCONT) }
        let start = Date()
        let silent = try await d.keyhold(["file", "decrypt", "x.khf", "-o", "x.out"])
        let waited = Date().timeIntervalSince(start)
        #expect(silent.status != 0 && silent.stderr.contains("cannot reach"), "\(silent.stderr)")
        #expect(waited < 30, "bounded wait, not a hang (\(waited) s)")
    }

    @Test func aSyncRidesOutARestartOfThePrimary() async throws {
        let t = try await Self.server("T-restart")
        let s1 = try await Self.server("S1-restart")
        defer {
            s1.terminate()
            t.terminate()
        }
        try await Self.join(s1, to: t)
        let device = try await s1.enrollDevice("restart")
        let ids = try await using(try device.client()) { client in
            var ids: [KeyID] = []
            for _ in 0..<20 {
                let (record, _, request) = newKey(device)
                _ = try await client.put(APIPath.key(record.id.description), request, as: EscrowResponse.self)
                ids.append(record.id)
            }
            return ids
        }
        // The primary is down when the sync starts and comes back a moment later, on its ports.
        await t.stop()
        let syncing = Task { try await Self.sync(s1) }
        try await Task.sleep(for: .seconds(1))
        try await t.start(["--hierarchy-heartbeat", "3600"])
        let sync = try await syncing.value
        #expect(sync.status == 0, "the sync retried until the primary answered: \(sync.stderr)\n\(s1.log())")
        #expect(sync.stdoutText.contains("pushed 20 key(s)"), "\(sync.stdoutText)")
        #expect(try await t.keyCount() == ids.count)
    }

    @Test func killingThePrimaryMidPushLosesAndDuplicatesNothing() async throws {
        let t = try await Self.server("T-kill")
        let s1 = try await Self.server("S1-kill")
        defer {
            s1.terminate()
            t.terminate()
        }
        try await Self.join(s1, to: t)
        let device = try await s1.enrollDevice("loader")
        let count = 50_000
        // Escrow the keys directly over the device API, 64 at a time.
        let ids = (0..<count).map { _ in KeyID.random() }
        let client = try device.client()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<64 {
                group.addTask {
                    for i in stride(from: worker, to: count, by: 64) {
                        let record = KeyRecord(
                            id: ids[i], kind: .file, originServerID: device.serverID, originDeviceID: DeviceID(enrollment: device.clientID),
                            label: "bulk"
                        )
                        let request = EscrowRequest(key: KeyMaterial(record: record, secret: .generate()))
                        _ = try await client.put(APIPath.key(ids[i].description), request, as: EscrowResponse.self)
                    }
                }
            }
            try await group.waitForAll()
        }
        await client.shutdown()
        // Push, and kill -9 the primary while it is receiving.
        // The watcher kills T the moment S1 records the first acknowledged batch.
        let watcher = try KillWatcher(
            database: s1.dataDir.appendingPathComponent("keyhold.sqlite").path,
            query: "SELECT value FROM settings WHERE name = 'push_cursor'", threshold: 1, pid: t.pid
        )
        let pushing = Task { try await Self.sync(s1) }
        #expect(try await watcher.wait(), "the watcher saw no acknowledged batch")
        await t.kill9()
        _ = try await pushing.value
        let cursorAtKill = try await Self.status(s1).pushCursor
        #expect(cursorAtKill > 0 && cursorAtKill < Int64(count), "the kill happened mid-push (cursor \(cursorAtKill))")
        try await t.start(["--hierarchy-heartbeat", "3600"])
        let resumed = try await Self.sync(s1)
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(try await Self.status(s1).pending == 0)
        // Every key arrived exactly once.
        let list = try await t.admin(["key", "list", "--json"])
        let keys = try WireFormat.decoder().decode([KeyInfo].self, from: list.stdout)
        #expect(keys.count == count)
        #expect(Set(keys.map(\.record.id)) == Set(ids))
    }
}
