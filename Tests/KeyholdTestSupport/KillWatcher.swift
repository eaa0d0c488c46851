import Foundation

/// Kills a process the moment a SQLite query on another server's database reaches a threshold —
/// from a separate watcher process, so the timing does not depend on the test's own tasks (on a
/// loaded machine those can wait behind other suites long enough to miss the moment).
public final class KillWatcher: @unchecked Sendable {
    // @unchecked: `process` is set once in init and then only read.
    private let process: Process

    /// - Parameters:
    ///   - database: the SQLite file to watch (read-only, as a concurrent WAL reader).
    ///   - query: a query returning one integer.
    ///   - threshold: kill once the value is at least this.
    ///   - pid: the process to `SIGKILL`.
    public init(database: String, query: String, threshold: Int, pid: Int32) throws {
        let script = """
            import os, signal, sqlite3, sys, time
            db, query, threshold, pid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            end = time.time() + 120
            while time.time() < end:
                row = con.execute(query).fetchone()
                if row and row[0] is not None and int(row[0]) >= threshold:
                    os.kill(pid, signal.SIGKILL)
                    sys.exit(0)
                time.sleep(0.002)
            sys.exit(1)
            """
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script, database, query, String(threshold), String(pid)]
        try process.run()
    }

    /// Waits until the watcher is done; true if it killed the process.
    public func wait() async throws -> Bool {
        while process.isRunning { try await Task.sleep(for: .milliseconds(20)) }
        return process.terminationStatus == 0
    }
}
