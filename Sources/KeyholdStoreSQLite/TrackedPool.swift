import GRDB
import KeyholdStore

/// GRDB's pool with every access counted in the driver's ``StoreStatistics``: how many hold (or
/// wait for) the writer or a reader, and which failed in SQLite itself (GRDB's `DatabaseError`,
/// not an error the repository's own code threw to roll a transaction back).
struct TrackedPool: Sendable {
    let pool: DatabasePool
    let statistics: StoreStatistics

    /// A pool of `pool`'s readers and its one writer.
    init(_ pool: DatabasePool) {
        self.pool = pool
        self.statistics = StoreStatistics(connections: pool.configuration.maximumReaderCount + 1)
    }

    /// `pool.write` (one transaction), counted.
    func write<T: Sendable>(_ updates: @Sendable (Database) throws -> T) async throws -> T {
        try await statistics.track(isDatabaseError: Self.isDatabaseError) { try await pool.write(updates) }
    }

    /// `pool.read` (a snapshot), counted.
    func read<T: Sendable>(_ value: @Sendable (Database) throws -> T) async throws -> T {
        try await statistics.track(isDatabaseError: Self.isDatabaseError) { try await pool.read(value) }
    }

    /// `pool.writeWithoutTransaction` (for a checkpoint), counted.
    func writeWithoutTransaction<T: Sendable>(_ updates: @Sendable (Database) throws -> T) async throws -> T {
        try await statistics.track(isDatabaseError: Self.isDatabaseError) { try await pool.writeWithoutTransaction(updates) }
    }

    /// Closes the pool.
    func close() throws { try pool.close() }

    static func isDatabaseError(_ error: any Error) -> Bool { error is DatabaseError }
}
