public import Foundation
import KeyholdProtocol
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A real `keyhold-server` with its own data directory, on loopback ports the system picks: the
/// one way the tests, the demo and the benchmarks launch servers. ``start(_:)`` returns only once
/// the server answered a real request (`keyhold-server status`), never after a fixed sleep.
public final class ServerProcess: Sendable {
    /// The server's name (its `init --name`).
    public let name: String
    /// The data directory.
    public let dataDir: URL
    /// The folder of the keyhold executables.
    public let binaries: URL
    /// Where the server's log goes.
    public let logFile: URL
    private struct State {
        var child: ChildProcess?
        var api = ""
        var enroll = ""
    }
    private let state = Mutex(State())

    /// The `keyhold-server` executable.
    public var binary: URL { binaries.appendingPathComponent("keyhold-server") }

    /// Creates the data directory `dataDir` with `keyhold-server init` (on ports 0), unless `initialize` is false.
    /// - Parameters:
    ///   - logFile: where `run` writes its log.
    ///   - database: `--db` (SQLite unless given).
    ///   - initOptions: more `init` options (`--use-hierarchy`).
    public init(
        name: String, binaries: URL, dataDir: URL, logFile: URL, database: String? = nil, initOptions: [String] = [], initialize: Bool = true
    ) async throws {
        self.name = name
        self.binaries = binaries
        self.dataDir = dataDir
        self.logFile = logFile
        guard initialize else { return }
        var args = ["init", "--data-dir", dataDir.path, "--listen", "127.0.0.1:0", "--enroll-listen", "127.0.0.1:0", "--name", name]
        if let database { args += ["--db", database] }
        let r = try await Program.run(binary, args + initOptions)
        guard r.status == 0 else { throw LaunchFailure("keyhold-server init of \(name) failed: \(r.stderr)") }
    }

    /// The same with the data directory `folder/data` and the log `folder/server.log`.
    public convenience init(
        name: String, binaries: URL, folder: URL, database: String? = nil, initOptions: [String] = [], initialize: Bool = true
    ) async throws {
        try await self.init(
            name: name, binaries: binaries, dataDir: folder.appendingPathComponent("data"), logFile: folder.appendingPathComponent("server.log"),
            database: database, initOptions: initOptions, initialize: initialize
        )
    }

    /// The bound API address (after ``start(_:)``).
    public var api: String { state.withLock { $0.api } }
    /// The bound enrollment address (after ``start(_:)``).
    public var enroll: String { state.withLock { $0.enroll } }
    /// The running process's id (0 when not started).
    public var pid: Int32 { state.withLock { $0.child?.pid ?? 0 } }
    /// The running process.
    public var child: ChildProcess? { state.withLock { $0.child } }

    /// Starts `keyhold-server run` with `extra` options and waits until it answers a request. A
    /// restart keeps the ports of the first start, as a configured server would.
    public func start(_ extra: [String] = [], logLevel: String = "info", timeout: Duration = .seconds(60)) async throws {
        var args = ["run", "--data-dir", dataDir.path, "--log-level", logLevel] + extra
        let (api, enroll) = state.withLock { ($0.api, $0.enroll) }
        if !api.isEmpty { args += ["--listen", api, "--enroll-listen", enroll] }
        let child = try ChildProcess(binary, args, log: logFile)
        state.withLock { $0.child = child }
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let status = child.exitStatus {
                throw LaunchFailure("server \(name) exited with status \(status):\n\(Self.tail(child.logText()))")
            }
            if let runtime = try? ServerRuntimeInfo.read(from: dataDir.path), runtime.pid == child.pid,
                try await admin(["status", "--json"]).status == 0
            {
                state.withLock {
                    $0.api = runtime.api
                    $0.enroll = runtime.enroll
                }
                return
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw LaunchFailure("server \(name) did not answer within \(timeout):\n\(Self.tail(child.logText()))")
    }

    /// Runs `keyhold-server ARGS --data-dir DIR`.
    public func admin(_ args: [String], stdin: Data? = nil, in folder: URL? = nil) async throws -> ProgramResult {
        try await Program.run(binary, args + ["--data-dir", dataDir.path], in: folder, stdin: stdin)
    }

    /// `admin`, failing unless it exits 0; returns its standard output, trimmed.
    @discardableResult
    public func must(_ args: [String]) async throws -> String {
        let r = try await admin(args)
        guard r.status == 0 else { throw LaunchFailure("keyhold-server \(args.joined(separator: " ")) on \(name) failed: \(r.stderr)") }
        return r.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Sets `key = value` in the data directory's `config.toml` (`value` as TOML writes it: a
    /// number, or a string in quotes), replacing the line `init` wrote, or adding one.
    public func setConfig(_ key: String, _ value: String) throws {
        let url = dataDir.appendingPathComponent("config.toml")
        var lines = try String(contentsOf: url, encoding: .utf8).components(separatedBy: "\n")
        let line = "\(key) = \(value)"
        if let i = lines.firstIndex(where: { $0.hasPrefix("\(key) =") || $0.hasPrefix("\(key)=") }) {
            lines[i] = line
        } else {
            lines.insert(line, at: lines.lastIndex { !$0.isEmpty }.map { $0 + 1 } ?? lines.endIndex)
        }
        try lines.joined(separator: "\n").write(to: url, atomically: true, encoding: .utf8)
    }

    /// SIGTERM without waiting (for a `defer`).
    public func terminate() { child?.terminate() }

    /// SIGTERM and wait; returns the exit status.
    @discardableResult
    public func stop() async -> Int32 { await child?.stop() ?? 0 }

    /// SIGKILL: no chance to clean up.
    public func kill9() async { await child?.stop(SIGKILL) }

    /// Leaves the server running when this object goes away.
    public func detach() { child?.detach() }

    /// The server's log so far.
    public func log() -> String { (try? String(contentsOf: logFile, encoding: .utf8)) ?? "" }

    /// A file of the data directory.
    public func file(_ name: String) throws -> String { try String(contentsOf: dataDir.appendingPathComponent(name), encoding: .utf8) }

    static func tail(_ text: String, lines: Int = 40) -> String {
        text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n")
    }
}

/// A process that could not be launched or did not become ready; the message carries its log.
public struct LaunchFailure: Error, CustomStringConvertible {
    /// What went wrong.
    public var description: String
    /// A failure saying `description`.
    public init(_ description: String) { self.description = description }
}
