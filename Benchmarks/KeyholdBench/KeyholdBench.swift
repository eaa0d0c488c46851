// keyhold-bench: the benchmarks' own tool.
//
//   keyhold-bench launch --data-dir DIR --log FILE [--db URL] [run options] [-- init options]
//       inits a server in DIR (unless it exists) and starts it through the launcher the tests and
//       the demo use (ready once it answers a request); prints "PID API-ADDRESS" and leaves it running.
//   keyhold-bench load --data-dir DIR --keys 100000 --clients 64 --seconds 10 [--ceiling]
//       enrolls a device, escrows KEYS new keys, then CLIENTS concurrent keep-alive mutual-TLS
//       connections (LoadClient) fetch random keys for SECONDS; prints keys/s, p50, p99 (JSON). With
//       --ceiling it first measures the health endpoint over the same connections (one line more).
//   keyhold-bench sqlite-limit --database FILE --seconds 10
//       the storage limit on SQLite: the server's release transaction (point read + durable audit
//       insert) through the same driver, without HTTP.
import ArgumentParser
import Foundation
import KeyholdClient
import KeyholdCore
import KeyholdLauncher
import KeyholdProtocol
import KeyholdStore
import KeyholdStoreSQLite

@main
struct KeyholdBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keyhold-bench", subcommands: [Launch.self, Load.self, SQLiteLimit.self, HierarchyBench.self, Seed.self]
    )
}

/// Starts a server for a benchmark script and leaves it running.
struct Launch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "launch")
    @Option var dataDir: String
    @Option var log: String
    @Option var db = "sqlite"
    @Option var logLevel = "error"
    @Option var hierarchyHeartbeat = 3600
    @Option(help: "Run with the metrics listener on at this address (metrics are counted only then).") var metricsListen: String?
    @Argument(parsing: .postTerminator) var initOptions: [String] = []

    func run() async throws {
        let binaries = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        let exists = FileManager.default.fileExists(atPath: dataDir + "/config.toml")
        let server = try await ServerProcess(
            name: URL(fileURLWithPath: dataDir).lastPathComponent, binaries: binaries, dataDir: URL(fileURLWithPath: dataDir),
            logFile: URL(fileURLWithPath: log), database: db, initOptions: initOptions, initialize: !exists
        )
        if !exists {
            // A benchmark measures the server's and the storage's limits with a few load-generator
            // identities, not the per-device budgets and per-address caps that protect it from one
            // client (docs/operations.md): those are lifted for its servers.
            for key in ["release_rate", "release_burst", "max_handshakes_per_address", "enroll_max_connections_per_address"] {
                try server.setConfig(key, "1000000")
            }
        }
        try await server.start(
            ["--hierarchy-heartbeat", "\(hierarchyHeartbeat)"] + (metricsListen.map { ["--metrics-listen", $0] } ?? []), logLevel: logLevel)
        server.detach()
        print("\(server.pid) \(server.api)")
    }
}

struct Result: Codable {
    var mode: String
    var operations: Int
    var seconds: Double
    var perSecond: Double
    var p50ms: Double
    var p99ms: Double
    var errors: Int
}

func percentile(_ sorted: [Double], _ p: Double) -> Double {
    sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
}

func emit(_ r: Result) throws {
    let e = JSONEncoder()
    e.outputFormatting = [.sortedKeys]
    print(String(decoding: try e.encode(r), as: UTF8.self))
}

/// Runs `work` from `concurrency` tasks until `seconds` pass; returns latencies (ms) and errors.
func drive(concurrency: Int, seconds duration: Double, _ work: @escaping @Sendable (Int) async throws -> Void) async -> ([Double], Int, Double) {
    let start = ContinuousClock.now
    let end = start + .milliseconds(Int(duration * 1000))
    let results = await withTaskGroup(of: ([Double], Int).self) { group in
        for worker in 0..<concurrency {
            group.addTask {
                var lat: [Double] = []
                var errors = 0
                var i = worker
                while ContinuousClock.now < end {
                    let t0 = ContinuousClock.now
                    do { try await work(i) } catch { errors += 1 }
                    lat.append(seconds(ContinuousClock.now - t0) * 1000)
                    i += concurrency
                }
                return (lat, errors)
            }
        }
        var all: [Double] = []
        var errors = 0
        for await (l, e) in group {
            all += l
            errors += e
        }
        return (all, errors)
    }
    return (results.0.sorted(), results.1, seconds(ContinuousClock.now - start))
}

struct Load: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "load")
    @Option var dataDir: String
    @Option var keys = 100_000
    @Option var clients = 64
    @Option var seconds = 10.0
    @Flag(help: "Also measure the health endpoint over the same connections (the HTTP ceiling).") var ceiling = false

    func run() async throws {
        let dir = URL(fileURLWithPath: dataDir)
        func read(_ name: String) throws -> String { try String(contentsOf: dir.appendingPathComponent(name), encoding: .utf8) }
        let api = try runningAPI(dataDir)
        let admin = try APIClient(address: api, caPEM: try read("ca.pem"), certificatePEM: try read("admin.pem"), keyPEM: try read("admin.key"))
        let token = try await admin.post(
            APIPath.adminTokens, TokenCreateRequest(role: .device, uses: 1, ttlSeconds: 600), as: TokenCreateResponse.self)
        let device = try await Enrollment.enroll(token: try EnrollmentToken(text: token.token), name: "bench")
        let client = try APIClient(
            address: api, caPEM: device.caPEM, certificatePEM: device.certificatePEM, keyPEM: device.keyPEM,
            maximumConnections: clients)

        // Populate: escrow `keys` keys, 64 at a time.
        FileHandle.standardError.write(Data("escrowing \(keys) keys…\n".utf8))
        let ids = (0..<keys).map { _ in KeyID.random() }
        let serverID = device.serverID
        let deviceID = DeviceID(enrollment: device.clientID)
        let t0 = Date()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<64 {
                group.addTask {
                    for i in stride(from: worker, to: ids.count, by: 64) {
                        let record = KeyRecord(id: ids[i], kind: .file, originServerID: serverID, originDeviceID: deviceID, label: "bench")
                        let request = EscrowRequest(key: KeyMaterial(record: record, secret: .generate()))
                        _ = try await client.put(APIPath.key(ids[i].description), request, as: EscrowResponse.self)
                    }
                }
            }
            try await group.waitForAll()
        }
        let escrowSeconds = Date().timeIntervalSince(t0)
        FileHandle.standardError.write(Data("escrowed in \(String(format: "%.1f", escrowSeconds)) s (\(Int(Double(keys) / escrowSeconds))/s)\n".utf8))

        await client.shutdown()
        await admin.shutdown()

        // The lean client (LoadClient) drives the measurement: first the mutual-TLS HTTP ceiling
        // (the health endpoint: TLS, HTTP and routing, no database), then key release.
        let parts = api.split(separator: ":")
        let host = String(parts.dropLast().joined(separator: ":")).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        let port = Int(parts.last!)!
        let shared = ids
        func measure(_ mode: String, seconds: Double, _ path: @escaping @Sendable () -> String) async throws -> Result {
            let o = try await LoadClient.run(
                host: host, port: port, caPEM: device.caPEM, certificatePEM: device.certificatePEM, keyPEM: device.keyPEM,
                connections: clients, seconds: seconds, path: path
            )
            return Result(
                mode: mode, operations: o.latenciesMs.count, seconds: o.seconds, perSecond: Double(o.latenciesMs.count) / o.seconds,
                p50ms: percentile(o.latenciesMs, 0.5), p99ms: percentile(o.latenciesMs, 0.99), errors: o.errors)
        }
        _ = try await measure("warm-up", seconds: 1) { APIPath.key(shared[Int.random(in: 0..<shared.count)].description) }
        if ceiling {
            try emit(try await measure("http-ceiling", seconds: seconds) { APIPath.health })
        }
        try emit(try await measure("http-release", seconds: seconds) { APIPath.key(shared[Int.random(in: 0..<shared.count)].description) })
    }
}

struct SQLiteLimit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "sqlite-limit")
    @Option var database: String
    @Option var seconds = 10.0
    @Option var clients = 16

    func run() async throws {
        let repo = try SQLiteRepository(path: database)
        var ids: [KeyID] = []
        var after: KeyID? = nil
        while true {
            let page = try await repo.listKeys(after: after, limit: 10_000)
            if page.isEmpty { break }
            ids += page.map(\.record.id)
            after = page.last?.record.id
        }
        let all = ids
        let (lat, errors, elapsed) = await drive(concurrency: clients, seconds: seconds) { _ in
            let id = all[Int.random(in: 0..<all.count)]
            _ = try await repo.releaseKey(ReleaseRequest(keyID: id, actor: .server(.zero), route: .local))
        }
        try emit(
            Result(
                mode: "sqlite-limit", operations: lat.count, seconds: elapsed, perSecond: Double(lat.count) / elapsed,
                p50ms: percentile(lat, 0.5), p99ms: percentile(lat, 0.99), errors: errors))
        try await repo.close()
    }
}

/// Runs `body` with `client` and shuts the client down afterwards, also when `body` throws.
func using<T>(_ client: APIClient, _ body: (APIClient) async throws -> T) async throws -> T {
    try await client.using(body)
}

/// A server's admin client and address, from its data directory.
func adminClient(_ dataDir: String) throws -> (APIClient, String) {
    let dir = URL(fileURLWithPath: dataDir)
    func read(_ name: String) throws -> String { try String(contentsOf: dir.appendingPathComponent(name), encoding: .utf8) }
    let api = try runningAPI(dataDir)
    return (
        try APIClient(
            address: api, caPEM: try read("ca.pem"), certificatePEM: try read("admin.pem"), keyPEM: try read("admin.key"), timeout: .seconds(600)),
        api
    )
}

/// The API address of the server running on `dataDir` (its runtime.json).
func runningAPI(_ dataDir: String) throws -> String {
    guard let runtime = try ServerRuntimeInfo.read(from: dataDir) else {
        throw KeyholdError(.unreachable, "no server runs on \(dataDir) (no runtime.json)", hint: "start it first")
    }
    return runtime.api
}

/// Enrolls a new client of `role` with the server of `dataDir`.
func enroll(_ dataDir: String, role: ClientRole, name: String) async throws -> EnrolledIdentity {
    let token = try await using(try adminClient(dataDir).0) {
        try await $0.post(APIPath.adminTokens, TokenCreateRequest(role: role, uses: 1, ttlSeconds: 600), as: TokenCreateResponse.self)
    }
    return try await Enrollment.enroll(token: try EnrollmentToken(text: token.token), name: name)
}

/// Loads `count` new keys into a server by pushing them as a secondary would (batches of 10000).
func load(into dataDir: String, count: Int) async throws -> [KeyID] {
    let pusher = try await enroll(dataDir, role: .server, name: "bench-loader")
    return try await using(try pusher.client(timeout: .seconds(600))) { client in
        var ids: [KeyID] = []
        ids.reserveCapacity(count)
        var done = 0
        while done < count {
            let n = min(10_000, count - done)
            let keys = (0..<n).map { _ -> PushedKey in
                let record = KeyRecord(kind: .file, originServerID: pusher.serverID, originDeviceID: .random(), label: "bench")
                ids.append(record.id)
                return PushedKey(key: KeyMaterial(record: record, secret: .generate()), blocked: false)
            }
            _ = try await client.post(APIPath.hierarchyPush, PushRequest(keys: keys), as: PushResponse.self)
            done += n
        }
        return ids
    }
}

func seconds(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18 }

/// Hierarchy benchmark over running servers TOP <- MIDDLE <- BOTTOM (all with the option on):
/// time to push KEYS keys from MIDDLE to TOP, the cost of an idle push, and depth-3 lookups
/// (a device on BOTTOM asking for keys that only TOP holds).
struct HierarchyBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "hierarchy")
    @Option var top: String
    @Option var middle: String
    @Option var bottom: String
    @Option var keys = 1_000_000
    @Option var lookups = 2000

    func run() async throws {
        let clock = ContinuousClock()
        FileHandle.standardError.write(Data("loading \(keys) keys into the secondary…\n".utf8))
        var t0 = clock.now
        _ = try await load(into: middle, count: keys)
        let loadSeconds = seconds(clock.now - t0)
        var pushSeconds = 0.0
        var idleMs = 0.0
        let (sync, idle) = try await using(try adminClient(middle).0) { admin in
            t0 = clock.now
            var sync = SyncResponse(pushed: 0, batches: 0, cursor: 0, complete: false)
            while !sync.complete {  // each answer covers a few seconds of pushing
                let part = try await admin.post(APIPath.adminHierarchySync, [String: String](), as: SyncResponse.self)
                sync = SyncResponse(
                    pushed: sync.pushed + part.pushed, batches: sync.batches + part.batches, cursor: part.cursor, complete: part.complete)
            }
            pushSeconds = seconds(clock.now - t0)
            t0 = clock.now
            let idle = try await admin.post(APIPath.adminHierarchySync, [String: String](), as: SyncResponse.self)
            idleMs = seconds(clock.now - t0) * 1000
            return (sync, idle)
        }

        // Depth 3: keys only at the top, asked for by a device of the bottom server.
        let onlyAtTop = try await load(into: top, count: lookups)
        let device = try await enroll(bottom, role: .device, name: "bench-device")
        var latencies = try await using(try device.client()) { client in
            var latencies: [Double] = []
            for id in onlyAtTop {
                let start = clock.now
                _ = try await client.get(APIPath.key(id.description), as: KeyMaterial.self)
                latencies.append(seconds(clock.now - start) * 1000)
            }
            return latencies
        }
        latencies.sort()
        let result: [String: Double] = [
            "keys": Double(sync.pushed), "load_seconds": loadSeconds, "push_seconds": pushSeconds,
            "push_per_second": Double(sync.pushed) / pushSeconds,
            "idle_sync_ms": idleMs, "idle_keys_sent": Double(idle.pushed), "lookup_p50_ms": percentile(latencies, 0.5),
            "lookup_p99_ms": percentile(latencies, 0.99),
        ]
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        print(String(decoding: try e.encode(result), as: UTF8.self))
    }
}

/// Fills a running server (hierarchy option on) with KEYS new keys, as a secondary's pushes would.
struct Seed: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "seed")
    @Option var dataDir: String
    @Option var keys = 1_000_000

    func run() async throws {
        let clock = ContinuousClock()
        let start = clock.now
        _ = try await load(into: dataDir, count: keys)
        print("seeded \(keys) keys in \(String(format: "%.1f", seconds(clock.now - start))) s")
    }
}
