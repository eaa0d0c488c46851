public import Foundation
import KeyholdAgentClient
public import KeyholdProtocol
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A real `keyhold-agent` with its own state directory and socket in `folder`, and a way to run
/// `keyhold` against it (`KEYHOLD_SOCKET`): the one way the tests and the demo launch agents.
/// ``start(_:)`` returns once the agent answered a `status` request on its socket.
public final class AgentProcess: Sendable {
    /// The agent's name.
    public let name: String
    /// Its folder (state directory, socket, log, and the working folder of ``keyhold(_:stdin:)``).
    public let folder: URL
    /// The state directory.
    public let stateDir: URL
    /// The socket.
    public let socket: String
    /// The folder of the keyhold executables.
    public let binaries: URL
    /// Where the agent's log goes.
    public let logFile: URL
    private let child = Mutex<ChildProcess?>(nil)
    private let removesFolder: Bool

    /// An agent in `folder` (created, mode 0755 so that the non-root users of some tests reach the
    /// socket); with `removingFolder`, the folder goes when this object does.
    public init(name: String, binaries: URL, folder: URL, removingFolder: Bool = false) throws {
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: folder.path)
        self.name = name
        self.folder = folder
        self.removesFolder = removingFolder
        self.binaries = binaries
        stateDir = folder.appendingPathComponent("state")
        socket = folder.appendingPathComponent("agent.sock").path
        logFile = folder.appendingPathComponent("agent.log")
    }

    /// The running process (nil before ``start(_:)``).
    public var process: ChildProcess? { child.withLock { $0 } }

    /// Starts `keyhold-agent run` with `extra` options (`--group`, `--heartbeat` …) and waits until it
    /// answers `status`. If it stops at once instead, returns its exit status.
    @discardableResult
    public func start(_ extra: [String] = [], logLevel: String = "info", timeout: Duration = .seconds(30)) async throws -> Int32? {
        let args = ["run", "--state-dir", stateDir.path, "--socket", socket, "--log-level", logLevel] + extra
        let started = try ChildProcess(binaries.appendingPathComponent("keyhold-agent"), args, log: logFile)
        child.withLock { $0 = started }
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let status = started.exitStatus { return status }
            if (try? await send(.status, timeout: 2)) != nil { return nil }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw LaunchFailure("agent \(name) did not answer within \(timeout):\n\(ServerProcess.tail(started.logText()))")
    }

    /// SIGTERM without waiting (for a `defer`).
    public func terminate() { process?.terminate() }

    /// SIGTERM and wait; returns the exit status.
    @discardableResult
    public func stop() async -> Int32 { await process?.stop() ?? 0 }

    /// Sends one request to the agent's socket (on a Dispatch thread: the client blocks).
    public func send(_ request: AgentRequest, timeout: Int = 60) async throws -> AgentResponse {
        let client = AgentClient(path: socket, timeout: timeout)
        return try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(with: Result { try client.send(request) }) }
        }
    }

    /// Runs `keyhold ARGS` against this agent, in this agent's folder.
    public func keyhold(_ args: [String], stdin: Data? = nil, environment: [String: String] = [:]) async throws -> ProgramResult {
        try await Program.run(
            binaries.appendingPathComponent("keyhold"), args, in: folder, stdin: stdin,
            environment: ["KEYHOLD_SOCKET": socket, "KEYHOLD_NO_PROGRESS": "1"].merging(environment) { $1 }
        )
    }

    /// A path in the agent's folder.
    public func path(_ name: String) -> String { folder.appendingPathComponent(name).path }

    /// The agent's log so far.
    public func log() -> String { (try? String(contentsOf: logFile, encoding: .utf8)) ?? "" }

    deinit {
        if let child = child.withLock({ $0 }), child.isRunning { kill(child.pid, SIGKILL) }
        if removesFolder { try? FileManager.default.removeItem(at: folder) }
    }
}
