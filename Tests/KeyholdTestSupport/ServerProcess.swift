public import Foundation
public import KeyholdClient
public import KeyholdCore
public import KeyholdProtocol
public import Testing

/// A real `keyhold-server` process on loopback (random ports) with its own data directory.
public final class ServerProcess: @unchecked Sendable {
    // @unchecked: `process` is only touched from the test that owns this object, sequentially.
    public let dataDir: URL
    public let binary = Paths.executable("keyhold-server")
    private var process: Process?
    public private(set) var api = ""
    public private(set) var enroll = ""
    private let logFile: URL

    /// Creates the data directory with `keyhold-server init` (SQLite unless `database` is given).
    public init(name: String = "test", database: String? = nil, dataDir: URL? = nil, initOptions: [String] = []) throws {
        self.dataDir = try dataDir ?? Paths.temporaryFolder("server-\(name)").appendingPathComponent("data")
        logFile = self.dataDir.deletingLastPathComponent().appendingPathComponent("server-\(UUID().uuidString.prefix(6)).log")
        if dataDir == nil {
            var args = ["init", "--data-dir", self.dataDir.path, "--listen", "127.0.0.1:0", "--enroll-listen", "127.0.0.1:0", "--name", name]
            if let database { args += ["--db", database] }
            args += initOptions
            let r = try run(binary, args)
            guard r.status == 0 else { throw TestFailure("init failed: \(r.stderr)") }
        }
    }

    /// Starts `keyhold-server run` and waits until both listeners are bound. A restart keeps the
    /// ports of the first start, as a configured server would.
    public func start(extra: [String] = []) throws {
        try? FileManager.default.removeItem(at: dataDir.appendingPathComponent("runtime.json"))
        var extra = extra
        if !api.isEmpty { extra += ["--listen", api, "--enroll-listen", enroll] }
        let p = Process()
        p.executableURL = binary
        p.arguments = ["run", "--data-dir", dataDir.path, "--log-level", "warning"] + extra
        FileManager.default.createFile(atPath: logFile.path, contents: nil)
        let logHandle = try FileHandle(forWritingTo: logFile)
        logHandle.seekToEndOfFile()
        p.standardOutput = logHandle
        p.standardError = logHandle
        try p.run()
        process = p
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            if let data = FileManager.default.contents(atPath: dataDir.appendingPathComponent("runtime.json").path),
               let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
               let a = json["api"] as? String, let e = json["enroll"] as? String {
                api = a
                enroll = e
                return
            }
            guard p.isRunning else { throw TestFailure("server exited: \(log())") }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw TestFailure("server did not start: \(log())")
    }

    public var pid: Int32 { process?.processIdentifier ?? 0 }

    /// SIGTERM and wait; returns the exit status.
    @discardableResult
    public func stop() -> Int32 {
        guard let p = process, p.isRunning else { return process?.terminationStatus ?? 0 }
        p.terminate()
        p.waitUntilExit()
        return p.terminationStatus
    }

    /// SIGKILL: no chance to clean up.
    public func kill9() {
        guard let p = process, p.isRunning else { return }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
    }

    public func log() -> String { (try? String(contentsOf: logFile, encoding: .utf8)) ?? "" }

    public func file(_ name: String) throws -> String { try String(contentsOf: dataDir.appendingPathComponent(name), encoding: .utf8) }

    /// Runs an admin subcommand (`keyhold-server ARGS --data-dir DIR`).
    public func admin(_ args: [String]) throws -> RunResult {
        try run(binary, args + ["--data-dir", dataDir.path])
    }

    /// A new enrollment token.
    public func token(role: String = "device", uses: Int = 1, ttl: String = "1h") throws -> EnrollmentToken {
        let r = try admin(["token", "create", "--role", role, "--uses", "\(uses)", "--ttl", ttl])
        guard r.status == 0 else { throw TestFailure("token create failed: \(r.stderr)") }
        return try EnrollmentToken(text: r.stdoutText)
    }

    /// Enrolls a new device through the real enrollment protocol.
    public func enrollDevice(_ name: String = "device") async throws -> EnrolledIdentity {
        try await Enrollment.enroll(token: try token(), name: name)
    }

    /// An admin API client.
    public func adminClient() throws -> APIClient {
        try APIClient(address: api, caPEM: try file("ca.pem"), certificatePEM: try file("admin.pem"), keyPEM: try file("admin.key"))
    }

    /// The whole audit trail, oldest first.
    public func auditEntries() async throws -> [AuditEntry] {
        let client = try adminClient()
        defer { Task { await client.shutdown() } }
        var all: [AuditEntry] = []
        while true {
            let page = try await client.get("\(APIPath.adminAudit)?limit=10000&after=\(all.last?.sequence ?? 0)", as: [AuditEntry].self)
            if page.isEmpty { return all }
            all += page
        }
    }

    /// The number of keys in the repository (`keyhold-server status`).
    public func keyCount() async throws -> Int {
        let client = try adminClient()
        defer { Task { await client.shutdown() } }
        return try await client.get(APIPath.adminStatus, as: StatusResponse.self).keyCount
    }

    deinit {
        if let p = process, p.isRunning { kill(p.processIdentifier, SIGKILL) }
    }
}

public struct TestFailure: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

/// A key and its escrow request, as an agent would make them.
public func newKey(_ device: EnrolledIdentity, label: String = "test") -> (KeyRecord, SecretKey, EscrowRequest) {
    let record = KeyRecord(kind: .file, originServerID: device.serverID, originDeviceID: device.clientID, label: label)
    let secret = SecretKey.generate()
    return (record, secret, EscrowRequest(record: record, secret: secret.withUnsafeBytes { Data($0).base64EncodedString() }))
}

/// Runs `body` with a client and shuts it down afterwards.
public func using<T>(_ client: APIClient, _ body: (APIClient) async throws -> T) async throws -> T {
    try await client.using(body)
}

/// Asserts that `body` throws a KeyholdError with `code`.
public func expectCode(_ code: String, sourceLocation: SourceLocation = #_sourceLocation, _ body: () async throws -> Void) async {
    do {
        try await body()
        Issue.record("expected error \(code), got success", sourceLocation: sourceLocation)
    } catch let e as KeyholdError {
        #expect(e.code.rawValue == code, "\(e.message)", sourceLocation: sourceLocation)
        #expect(!e.hint.isEmpty, sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected KeyholdError \(code), got \(error)", sourceLocation: sourceLocation)
    }
}
