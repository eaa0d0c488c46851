public import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The result of running a program to completion.
public struct ProgramResult: Sendable {
    /// The exit status (128 + N for a signal N).
    public var status: Int32
    /// Everything it wrote to standard output.
    public var stdout: Data
    /// Everything it wrote to standard error.
    public var stderr: String
    /// Standard output as text.
    public var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
    /// Both outputs, for messages.
    public var text: String { stdoutText + stderr }
}

/// Running other programs, the one way Keyhold's tests, demo and benchmarks do it. Waiting happens
/// on Dispatch's threads, never on a Swift concurrency thread, so a test that waits for a program
/// does not stall the other tests' tasks.
public enum Program {
    /// Runs `executable` to completion with `arguments` in `folder`, feeding it `stdin`.
    public static func run(
        _ executable: URL, _ arguments: [String], in folder: URL? = nil, stdin: Data? = nil, environment: [String: String] = [:]
    ) async throws -> ProgramResult {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async {
                continuation.resume(with: Result { try runBlocking(executable, arguments, in: folder, stdin: stdin, environment: environment) })
            }
        }
    }

    /// The same, waiting on the calling thread: for synchronous code outside Swift concurrency.
    public static func runBlocking(
        _ executable: URL, _ arguments: [String], in folder: URL? = nil, stdin: Data? = nil, environment: [String: String] = [:]
    ) throws -> ProgramResult {
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        if let folder { process.currentDirectoryURL = folder }
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let out = Pipe()
        let err = Pipe()
        let input = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = stdin == nil ? FileHandle.nullDevice : input
        try process.run()
        // Feed stdin and drain both pipes at once, so neither side blocks on a full pipe.
        let group = DispatchGroup()
        let outData = Mutex(Data())
        let errData = Mutex(Data())
        DispatchQueue.global().async(group: group) {
            let d = readToEnd(out.fileHandleForReading.fileDescriptor)
            outData.withLock { $0 = d }
        }
        DispatchQueue.global().async(group: group) {
            let d = readToEnd(err.fileHandleForReading.fileDescriptor)
            errData.withLock { $0 = d }
        }
        if let stdin {
            writeAll(stdin, to: input.fileHandleForWriting.fileDescriptor)
            try input.fileHandleForWriting.close()
        }
        group.wait()
        process.waitUntilExit()
        let status = process.terminationReason == .uncaughtSignal ? 128 + process.terminationStatus : process.terminationStatus
        return ProgramResult(status: status, stdout: outData.withLock { $0 }, stderr: String(decoding: errData.withLock { $0 }, as: UTF8.self))
    }

    // Foundation's FileHandle.readDataToEndOfFile and write(_:) end the process (a `try!`
    // inside) when a signal interrupts the call (EINTR), which a busy test process with many
    // children meets; these retry instead.

    /// Everything readable from `fd` until its end (EINTR retried; another error ends the read).
    static func readToEnd(_ fd: Int32) -> Data {
        var data = Data()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n > 0 {
                data.append(contentsOf: buffer[..<n])
            } else if n < 0 && errno == EINTR {
                continue
            } else {
                return data
            }
        }
    }

    /// Writes all of `data` to `fd` (EINTR retried; a reader that went away ends the write).
    static func writeAll(_ data: Data, to fd: Int32) {
        var offset = 0
        let bytes = [UInt8](data)
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n > 0 {
                offset += n
            } else if n < 0 && errno == EINTR {
                continue
            } else {
                return
            }
        }
    }
}

/// A long-running program (a server, an agent) with its output in a log file. It is killed when
/// this object goes away, unless ``detach()`` was called.
public final class ChildProcess: Sendable {
    /// The log file (standard output and error).
    public let log: URL
    /// The process id.
    public let pid: Int32
    private let process: Mutex<Process?>
    private let detached = Mutex(false)

    /// Starts `executable` with `arguments` in `folder`, appending its output to `log`.
    public init(_ executable: URL, _ arguments: [String], in folder: URL? = nil, log: URL, environment: [String: String] = [:]) throws {
        let p = Process()
        p.executableURL = executable
        p.arguments = arguments
        if let folder { p.currentDirectoryURL = folder }
        p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        if !FileManager.default.fileExists(atPath: log.path) { _ = FileManager.default.createFile(atPath: log.path, contents: nil) }
        let handle = try FileHandle(forWritingTo: log)
        handle.seekToEndOfFile()
        p.standardOutput = handle
        p.standardError = handle
        p.standardInput = FileHandle.nullDevice
        try p.run()
        self.log = log
        self.pid = p.processIdentifier
        self.process = Mutex(p)
    }

    /// Whether it still runs.
    public var isRunning: Bool { process.withLock { $0?.isRunning ?? false } }

    /// Its exit status once it ended (128 + N for a signal N), else nil.
    public var exitStatus: Int32? {
        process.withLock { p in
            guard let p, !p.isRunning else { return nil }
            return p.terminationReason == .uncaughtSignal ? 128 + p.terminationStatus : p.terminationStatus
        }
    }

    /// Sends `signal` (SIGTERM by default) and waits up to `timeout` for the end; then SIGKILL.
    /// Returns the exit status.
    @discardableResult
    public func stop(_ signal: Int32 = SIGTERM, timeout: Duration = .seconds(20)) async -> Int32 {
        if isRunning { kill(pid, signal) }
        let deadline = ContinuousClock.now + timeout
        while isRunning, ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(20)) }
        if isRunning {
            kill(pid, SIGKILL)
            while isRunning { try? await Task.sleep(for: .milliseconds(20)) }
        }
        return exitStatus ?? -1
    }

    /// Sends SIGTERM and returns at once (for a `defer`; the object's end kills what is left).
    public func terminate() {
        if isRunning { kill(pid, SIGTERM) }
    }

    /// The same as ``stop(_:timeout:)``, waiting on the calling thread.
    @discardableResult
    public func stopBlocking(_ signal: Int32 = SIGTERM, timeout: TimeInterval = 20) -> Int32 {
        if isRunning { kill(pid, signal) }
        let deadline = Date().addingTimeInterval(timeout)
        while isRunning, Date() < deadline { usleep(20_000) }
        if isRunning {
            kill(pid, SIGKILL)
            while isRunning { usleep(20_000) }
        }
        return exitStatus ?? -1
    }

    /// Waits up to `timeout` for it to end by itself; returns its exit status, or nil if it still runs.
    public func waitForExit(timeout: Duration) async -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while isRunning, ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(20)) }
        return exitStatus
    }

    /// Leaves it running when this object goes away (a benchmark script stops it by pid).
    public func detach() { detached.withLock { $0 = true } }

    /// The log's text.
    public func logText() -> String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }

    deinit {
        if !detached.withLock({ $0 }), isRunning { kill(pid, SIGKILL) }
    }
}
