public import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A real `keyhold-agent` process with its own state directory and socket, and a way to run
/// `keyhold` against it (`KEYHOLD_SOCKET`).
public final class AgentProcess: @unchecked Sendable {
    // @unchecked: `process` is only touched from the test that owns this object, sequentially.
    public let folder: URL
    public let stateDir: URL
    public let socket: String
    private var process: Process?
    private let logFile: URL
    private let group: String

    /// - Parameter group: the group whose members may use files through the agent.
    public init(name: String = "agent", group: String = "keyhold") throws {
        folder = try Paths.temporaryFolder(name)
        // The socket's folder must be reachable by the non-root users some tests run as.
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: folder.path)
        stateDir = folder.appendingPathComponent("state")
        socket = folder.appendingPathComponent("agent.sock").path
        logFile = folder.appendingPathComponent("agent.log")
        self.group = group
    }

    /// Starts the agent and waits for its socket; returns the exit status instead if it stops at once.
    @discardableResult
    public func start() throws -> Int32? {
        let p = Process()
        p.executableURL = Paths.executable("keyhold-agent")
        p.arguments = ["run", "--state-dir", stateDir.path, "--socket", socket, "--heartbeat", "1", "--group", group, "--log-level", "notice"]
        FileManager.default.createFile(atPath: logFile.path, contents: nil)
        let handle = try FileHandle(forWritingTo: logFile)
        handle.seekToEndOfFile()
        p.standardOutput = handle
        p.standardError = handle
        try p.run()
        process = p
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if FileManager.default.fileExists(atPath: socket) { return nil }
            if !p.isRunning { return p.terminationStatus }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw TestFailure("agent did not start: \(log())")
    }

    public func stop() {
        guard let p = process, p.isRunning else { return }
        p.terminate()
        p.waitUntilExit()
    }

    public func log() -> String { (try? String(contentsOf: logFile, encoding: .utf8)) ?? "" }

    /// Runs `keyhold ARGS` against this agent, in this agent's folder.
    public func keyhold(_ args: [String], stdin: Data? = nil) throws -> RunResult {
        try run(Paths.executable("keyhold"), args, in: folder, stdin: stdin, environment: ["KEYHOLD_SOCKET": socket, "KEYHOLD_NO_PROGRESS": "1"])
    }

    public func path(_ name: String) -> String { folder.appendingPathComponent(name).path }

    /// Sends one raw request line to the agent's socket (docs/spec/agent-socket.md) and returns
    /// the decoded answer; for what the `keyhold` command has no verb for (fetching a key by id).
    public func request(_ body: [String: Any]) throws -> [String: Any] {
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket: errno \(errno)") }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let bytes = Array(self.socket.utf8)
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else { throw TestFailure("connect to \(self.socket): errno \(errno)") }
        var line = try JSONSerialization.data(withJSONObject: body)
        line.append(0x0A)
        _ = line.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        var answer = Data()
        var buffer = [UInt8](repeating: 0, count: 16_384)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            answer.append(contentsOf: buffer[..<n])
        }
        return (try JSONSerialization.jsonObject(with: answer) as? [String: Any]) ?? [:]
    }

    /// Removes the agent's sealed key cache (the agent must be stopped): later keys come from the server.
    public func clearCache() throws {
        for name in ["cache.sealed", "cache.key"] {
            let file = stateDir.appendingPathComponent(name).path
            if FileManager.default.fileExists(atPath: file) { try FileManager.default.removeItem(atPath: file) }
        }
    }

    deinit {
        if let p = process, p.isRunning { kill(p.processIdentifier, SIGKILL) }
        try? FileManager.default.removeItem(at: folder)
    }
}
