public import Foundation
public import KeyholdClient
public import KeyholdCore
@_exported public import KeyholdLauncher
public import KeyholdProtocol
public import Testing

/// What ``run(_:_:in:stdin:environment:)`` returns.
public typealias RunResult = ProgramResult

/// Runs `executable` with `arguments` to completion (see ``Program/run(_:_:in:stdin:environment:)``).
public func run(
    _ executable: URL, _ arguments: [String], in folder: URL? = nil, stdin: Data? = nil, environment: [String: String] = [:]
) async throws -> ProgramResult {
    try await Program.run(executable, arguments, in: folder, stdin: stdin, environment: environment)
}

extension ServerProcess {
    /// A server for a test: `keyhold-server init` in a new temporary folder, SQLite unless `database` is given.
    public convenience init(name: String = "test", database: String? = nil, initOptions: [String] = []) async throws {
        try await self.init(
            name: name, binaries: Paths.binaries, folder: try Paths.temporaryFolder("server-\(name)"), database: database, initOptions: initOptions
        )
    }

    /// A new enrollment token.
    public func token(role: String = "device", uses: Int = 1, ttl: String = "1h") async throws -> EnrollmentToken {
        try EnrollmentToken(text: try await must(["token", "create", "--role", role, "--uses", "\(uses)", "--ttl", ttl]))
    }

    /// Enrolls a new device through the real enrollment protocol.
    public func enrollDevice(_ name: String = "device") async throws -> EnrolledIdentity {
        try await Enrollment.enroll(token: try await token(), name: name)
    }

    /// An admin API client.
    public func adminClient() throws -> APIClient {
        try APIClient(address: api, caPEM: try file("ca.pem"), certificatePEM: try file("admin.pem"), keyPEM: try file("admin.key"))
    }

    /// The whole audit trail, oldest first.
    public func auditEntries() async throws -> [AuditEvent] {
        try await adminClient().using { client in
            var all: [AuditEvent] = []
            while true {
                let page = try await client.get("\(APIPath.adminAudit)?limit=10000&after=\(all.last?.sequence ?? 0)", as: [AuditEvent].self)
                if page.isEmpty { return all }
                all += page
            }
        }
    }

    /// The number of keys in the repository (`keyhold-server status`).
    public func keyCount() async throws -> Int {
        try await adminClient().using { try await $0.get(APIPath.adminStatus, as: StatusResponse.self).keyCount }
    }
}

extension AgentProcess {
    /// An agent for a test in a new temporary folder (removed with the object).
    public convenience init(name: String = "agent") throws {
        try self.init(name: name, binaries: Paths.binaries, folder: try Paths.temporaryFolder(name), removingFolder: true)
    }

    /// Starts the agent as the tests run it: heartbeat every second, file users in `group`.
    @discardableResult
    public func startForTest(group: String = "keyhold") async throws -> Int32? {
        try await start(["--heartbeat", "1", "--group", group])
    }

    /// Sends one raw request line (docs/spec/agent-socket.md) and returns the decoded answer: for
    /// requests the typed client would not send.
    public func rawRequest(_ body: [String: Any]) async throws -> [String: Any] {
        var line = try JSONSerialization.data(withJSONObject: body)
        line.append(0x0A)
        let answer = try await RawSocket.exchange(socket, line)
        return (try JSONSerialization.jsonObject(with: answer) as? [String: Any]) ?? [:]
    }

    /// Removes the agent's sealed key cache (the agent must be stopped): later keys come from the server.
    public func clearCache() throws {
        for name in ["cache.sealed", "cache.key"] {
            let file = stateDir.appendingPathComponent(name).path
            if FileManager.default.fileExists(atPath: file) { try FileManager.default.removeItem(atPath: file) }
        }
    }
}

/// A failed expectation outside `#expect`.
public struct TestFailure: Error, CustomStringConvertible {
    /// What went wrong.
    public var description: String
    /// A failure saying `d`.
    public init(_ d: String) { description = d }
}

/// A key and its escrow request, as an agent would make them.
public func newKey(_ device: EnrolledIdentity, kind: KeyKind = .file, label: String = "test") -> (KeyRecord, SecretKey, EscrowRequest) {
    let record = KeyRecord(kind: kind, originServerID: device.serverID, originDeviceID: DeviceID(enrollment: device.clientID), label: label)
    let secret = SecretKey.generate()
    return (record, secret, EscrowRequest(key: KeyMaterial(record: record, secret: secret)))
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
