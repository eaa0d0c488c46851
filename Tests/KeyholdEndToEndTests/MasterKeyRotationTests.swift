import Foundation
import KeyholdClient
import KeyholdCore
import KeyholdProtocol
import KeyholdTestSupport
import Testing

/// Master-key rotation (issue "Years of service", item 4; docs/operations.md, "Master-key
/// rotation"), against real server processes: every stored secret is rewrapped under a new
/// version in the background while the server serves, the rewrap goes on after `kill -9`, the
/// old version is retired only once no key uses it, and several processes on one PostgreSQL
/// database agree on the versions.
// The limit guards against a hang: `make rotation-full` runs the test with 100,000 keys
// (KEYHOLD_ROTATION_KEYS), which takes tens of minutes on two cores; `make test` uses 1,000.
@Suite(.serialized, .timeLimit(.minutes(90))) struct MasterKeyRotationTests {
    /// Keys escrowed before the rotation: 1,000, or KEYHOLD_ROTATION_KEYS (`make rotation-full`: 100,000).
    static let keyCount = ProcessInfo.processInfo.environment["KEYHOLD_ROTATION_KEYS"].flatMap { Int($0) }.map { max(200, $0) } ?? 1000

    static func status(_ server: ServerProcess) async throws -> MasterKeyStatus {
        try await server.adminClient().using { try await $0.get(APIPath.adminMasterKey, as: MasterKeyStatus.self) }
    }

    /// Escrows `count` keys over `lanes` connections; the secrets by key id.
    static func escrow(_ count: Int, by device: EnrolledIdentity, lanes: Int = 8) async throws -> [KeyID: SecretKey] {
        try await withThrowingTaskGroup(of: [KeyID: SecretKey].self) { group in
            for lane in 0..<lanes {
                group.addTask {
                    try await using(try device.client()) { client in
                        var mine: [KeyID: SecretKey] = [:]
                        for _ in stride(from: lane, to: count, by: lanes) {
                            let (record, secret, request) = newKey(device, label: "rotation")
                            _ = try await client.put(APIPath.key(record.id.description), request, as: EscrowResponse.self)
                            mine[record.id] = secret
                        }
                        return mine
                    }
                }
            }
            return try await group.reduce(into: [:]) { $0.merge($1) { a, _ in a } }
        }
    }

    /// How many of `keys` are released with another secret than the one escrowed (0: all are right).
    static func wrongReleases(_ keys: [KeyID: SecretKey], by device: EnrolledIdentity, address: String? = nil) async throws -> Int {
        var device = device
        if let address { device.apiAddress = address }
        return try await using(try device.client()) { client in
            var wrong = 0
            for (id, secret) in keys {
                let released = try await client.get(APIPath.key(id.description), as: KeyMaterial.self)
                if !released.secret.constantTimeEquals(secret) { wrong += 1 }
            }
            return wrong
        }
    }

    /// Waits until `condition` holds for the master-key status of `server`.
    static func waitFor(
        _ server: ServerProcess, within: Duration = .seconds(120), _ what: String, _ condition: (MasterKeyStatus) -> Bool
    ) async throws -> MasterKeyStatus {
        let deadline = ContinuousClock.now + within
        while ContinuousClock.now < deadline {
            let status = try await Self.status(server)
            if condition(status) { return status }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw TestFailure("\(what) did not happen within \(within): \(try await Self.status(server))")
    }

    /// Rotates on `server` itself (the CLI reaches whichever process it finds for the database).
    static func rotate(_ server: ServerProcess, prepare: Bool = false) async throws -> MasterKeyStatus {
        try await server.adminClient().using {
            try await $0.post(APIPath.adminMasterKeyRotate, MasterKeyRotateRequest(prepare: prepare), as: MasterKeyStatus.self)
        }
    }

    /// Lets one device release every key of these tests at once (the release budget is not what they test).
    static func unlimitedReleases(_ server: ServerProcess) throws {
        try server.setConfig("release_rate", "100000")
        try server.setConfig("release_burst", "100000")
        try server.setConfig("release_alert_keys", "10000000")
    }

    /// Releases keys of `keys` in turn until cancelled, through every restart (a request that
    /// meets a killed server fails and the loop goes on): how many were answered, and how many of
    /// those with another secret than the one escrowed.
    static func releaseLoop(_ keys: [KeyID: SecretKey], by device: EnrolledIdentity) -> Task<(answered: Int, wrong: Int), Never> {
        Task {
            var answered = 0
            var wrong = 0
            let pairs = Array(keys)
            var next = 0
            while !Task.isCancelled {
                let (id, secret) = pairs[next % pairs.count]
                next += 1
                do {
                    let released = try await using(try device.client()) { try await $0.get(APIPath.key(id.description), as: KeyMaterial.self) }
                    answered += 1
                    if !released.secret.constantTimeEquals(secret) { wrong += 1 }
                } catch {
                    try? await Task.sleep(for: .milliseconds(50))
                }
            }
            return (answered, wrong)
        }
    }

    @Test(arguments: ["sqlite", "postgres"])
    func aRotationRewrapsEveryKeyWhileServingGoesOnAfterKill9AndRetiresTheOldVersionOnlyWhenUnused(_ backend: String) async throws {
        let server =
            backend == "postgres"
            ? try await ServerProcess(name: "rotate-pg", database: try await SharedPostgresTests.freshDatabase().url)
            : try await ServerProcess(name: "rotate")
        // Small, slow batches (about 40 keys a second): the rewrap lasts long enough to be killed
        // twice in the middle and to serve meanwhile, however loaded the machine.
        try server.setConfig("master_key_rewrap_batch", "10")
        try server.setConfig("master_key_rewrap_pause", "250")
        try Self.unlimitedReleases(server)
        try await server.start()
        defer { server.terminate() }
        let device = try await server.enrollDevice("rotation-device")
        let count = Self.keyCount
        var secrets = try await Self.escrow(count, by: device)
        let legacy = try Data(contentsOf: server.dataDir.appendingPathComponent("master.key"))
        #expect(legacy.count == 32, "init writes the one-version form")
        // A release loop runs throughout the rotation, the kills and the restarts.
        let releasing = Self.releaseLoop(secrets, by: device)
        let before = try await Self.status(server)
        #expect(before.current == 1 && before.remaining == 0 && before.total == count)

        let rotated = try await server.admin(["master-key", "rotate", "--no-wait", "--json"])
        #expect(rotated.status == 0, "\(rotated.stderr)")
        let answer = try WireFormat.decoder().decode(MasterKeyStatus.self, from: rotated.stdout)
        #expect(answer.current == 2 && answer.versions.map(\.version) == [1, 2])
        let file = try #require(
            try JSONSerialization.jsonObject(with: Data(contentsOf: server.dataDir.appendingPathComponent("master.key"))) as? [String: Any])
        #expect((file["versions"] as? [[String: Any]])?.compactMap { $0["version"] as? Int } == [1, 2])
        #expect(try server.dataDir.appendingPathComponent("master.key").resourceValues(forKeys: [.fileSizeKey]).fileSize ?? 0 > 32)

        // Retiring now is refused, with what to do, and changes nothing.
        let early = try await server.admin(["master-key", "retire-old"])
        #expect(early.status != 0 && early.stderr.hasPrefix("keyhold-server: error: ") && early.stderr.contains("\nhint: "), "\(early.stderr)")
        #expect(try await Self.status(server).versions.allSatisfy { $0.retired == nil })

        // Killed twice in the middle of the rewrap: each restart goes on from where it stopped.
        var remaining = count
        for round in 1...2 {
            let target = remaining - 30
            remaining = try await Self.waitFor(server, "rewrap progress before kill \(round)") { $0.remaining < target }.remaining
            #expect(remaining > 0, "the kill comes before the end")
            await server.kill9()
            try await server.start()
            let resumed = try await Self.status(server)
            #expect(resumed.current == 2)
            #expect(resumed.remaining <= remaining, "no progress is lost: \(resumed.remaining) > \(remaining)")
            #expect(resumed.remaining > 0, "restarted in the middle")
            remaining = resumed.remaining
        }

        // While it rewraps, the server serves: old keys are released right, new ones go under version 2.
        #expect(try await Self.wrongReleases(Dictionary(uniqueKeysWithValues: secrets.prefix(100).map { ($0.key, $0.value) }), by: device) == 0)
        let young = try await Self.escrow(50, by: device, lanes: 2)
        secrets.merge(young) { a, _ in a }
        #expect(try await Self.status(server).versions.first { $0.version == 2 }?.keys ?? 0 >= 50)
        // The rest at full speed (the pace is read at start).
        _ = await server.stop()
        try server.setConfig("master_key_rewrap_batch", "1000")
        try server.setConfig("master_key_rewrap_pause", "0")
        try await server.start()
        let done = try await Self.waitFor(server, "the end of the rewrap") { $0.remaining == 0 }
        #expect(done.total == count + 50)
        #expect(done.versions.map(\.keys) == [0, count + 50])
        #expect(try await Self.wrongReleases(secrets, by: device) == 0, "every acknowledged key has its own secret")
        releasing.cancel()
        let loop = await releasing.value
        #expect(loop.answered > 100 && loop.wrong == 0, "releases went on throughout, each with its own secret: \(loop)")

        // Retired once no key is left under version 1 (and the new version has been current a while).
        let activated = try #require(done.versions.first { $0.version == 2 }?.activated)
        let wait = 11 - Date().timeIntervalSince(activated)
        if wait > 0 { try await Task.sleep(for: .seconds(wait)) }
        let retire = try await server.admin(["master-key", "retire-old"])
        #expect(retire.status == 0, "\(retire.stderr)")
        let retired = try await Self.status(server)
        #expect(retired.versions.map(\.state) == ["retired", "current"])
        let after = try #require(
            try JSONSerialization.jsonObject(with: Data(contentsOf: server.dataDir.appendingPathComponent("master.key"))) as? [String: Any])
        #expect((after["versions"] as? [[String: Any]])?.compactMap { $0["version"] as? Int } == [2], "version 1 left master.key")
        let trail = try await server.auditEntries()
        #expect(trail.filter { $0.action == .masterKeyRotate && $0.result.description == "ok" }.count == 2, "prepared and made current")
        let retirements = trail.filter { $0.action == .masterKeyRetire }
        #expect(retirements.count == 2 && retirements.last?.result.description == "ok", "the refusal, then the retirement")
        #expect(retirements.first?.result.description != "ok")

        // A second rotation in the foreground shows the progress and returns when it is done.
        let again = try await server.admin(["master-key", "rotate"])
        #expect(again.status == 0, "\(again.stderr)")
        #expect(again.stdoutText.contains("every key is wrapped under version 3"), "\(again.stdoutText)")
        #expect(try await Self.status(server).versions.first { $0.version == 3 }?.keys == count + 50)

        // Restarted, it serves every key; with the old 32-byte file back, it refuses to start.
        _ = await server.stop()
        try await server.start()
        #expect(try await Self.wrongReleases(secrets, by: device) == 0)
        _ = await server.stop()
        try legacy.write(to: server.dataDir.appendingPathComponent("master.key"))
        await #expect {
            try await server.start(timeout: .seconds(20))
        } throws: { error in
            "\(error)".contains("master.key") && "\(error)".contains("hint")
        }
    }

    /// `/v1/ready` of `server`'s enrollment listener: the body (and 503 when not ready).
    static func ready(_ server: ServerProcess) async throws -> String {
        try await Program.run(URL(fileURLWithPath: "/usr/bin/curl"), ["-sk", "https://\(server.enroll)/v1/ready"]).stdoutText
    }

    @Test func processesOnOnePostgresDatabaseAgreeOnTheVersions() async throws {
        let (a, b) = try await SharedPostgresTests.twoProcesses("mk")
        let bDir = b.dataDir
        try a.setConfig("master_key_rewrap_batch", "50")
        try Self.unlimitedReleases(a)
        try Self.unlimitedReleases(b)
        try await a.start()
        defer { a.terminate() }
        try await b.start()
        defer { b.terminate() }
        let device = try await a.enrollDevice("mk-device")
        var secrets = try await Self.escrow(300, by: device)
        func copyFile() throws {
            let file = bDir.appendingPathComponent("master.key")
            try FileManager.default.removeItem(at: file)
            try FileManager.default.copyItem(at: a.dataDir.appendingPathComponent("master.key"), to: file)
        }

        // The documented procedure: prepare on A (B, without the version, still serves: nothing is
        // wrapped under it), copy master.key to B, rotate on A.
        _ = try await Self.rotate(a, prepare: true)
        let seen = try await Self.status(b)
        #expect(seen.versions.map(\.state) == ["current", "prepared"] && seen.versions.last?.held == false)
        #expect(try await Self.ready(b) == "ready\n")
        #expect(try await Self.wrongReleases(secrets, by: device, address: b.api) == 0)
        try copyFile()
        _ = try await Self.waitFor(b, within: .seconds(10), "B reading the copied file") { $0.versions.allSatisfy(\.held) }
        #expect(try await Self.rotate(a).current == 2)
        _ = try await Self.waitFor(b, within: .seconds(10), "B taking up version 2") { $0.current == 2 }
        var viaB = device
        viaB.apiAddress = b.api
        secrets.merge(try await Self.escrow(20, by: viaB)) { x, _ in x }
        let done = try await Self.waitFor(a, "the rewrap") { $0.remaining == 0 }
        #expect(done.versions.map(\.keys) == [0, 320], "B wrapped its new keys under version 2 too")
        #expect(try await Self.wrongReleases(secrets, by: device) == 0)
        #expect(try await Self.wrongReleases(secrets, by: device, address: b.api) == 0)

        // Rotated on A without the copy: B is not ready, says why, and wraps nothing under an old
        // version; once the file is there it serves again by itself.
        #expect(try await Self.rotate(a).current == 3)
        let lacking = try await Self.waitFor(b, within: .seconds(10), "B noticing version 3") { $0.current == 3 }
        #expect(lacking.versions.last?.held == false)
        // B looks at the versions every second (a version's first seconds are why retire-old waits).
        var notReady = try await Self.ready(b)
        for _ in 0..<100 where notReady == "ready\n" {
            try await Task.sleep(for: .milliseconds(100))
            notReady = try await Self.ready(b)
        }
        #expect(notReady.contains("lacks version 3"), "\(notReady)")
        await expectCode("configuration") { _ = try await Self.escrow(1, by: viaB, lanes: 1) }
        try copyFile()
        _ = try await Self.waitFor(b, within: .seconds(10), "B reading the copied file") { $0.versions.allSatisfy { $0.held || $0.retired != nil } }
        #expect(try await Self.ready(b) == "ready\n")
        secrets.merge(try await Self.escrow(5, by: viaB, lanes: 1)) { x, _ in x }
        _ = try await Self.waitFor(a, "the second rewrap") { $0.remaining == 0 }
        #expect(try await Self.status(a).versions.map(\.keys) == [0, 0, 325])
        #expect(try await Self.wrongReleases(secrets, by: device, address: b.api) == 0)
    }
}
