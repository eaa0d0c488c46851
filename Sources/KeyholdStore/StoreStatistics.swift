import Synchronization

/// What a driver reports about its own work, for the server's metrics: operations holding (or
/// waiting for) a database connection, the pool's size, errors the database raised and the size
/// of each batch of shared releases.
///
/// The drivers count; whoever watches (the server's metrics) reads the gauges at a scrape and
/// hears the events through ``observe(_:)``. Without an observer nothing but two atomic counters
/// moves.
public final class StoreStatistics: Sendable {
    /// An event a driver reports.
    public enum Event: Sendable, Equatable {
        /// A batch of `size` releases shared one statement and one commit.
        case releaseBatch(size: Int)
        /// The database (not a request's content) failed an operation: a lost connection, a
        /// failed statement, a full disk, a broken trigger.
        case databaseError
    }

    /// How many operations may hold a connection at once (0 for the memory driver).
    public let connections: Int
    private let active = Atomic<Int>(0)
    private let observer = Mutex<(@Sendable (Event) -> Void)?>(nil)

    /// Statistics of a driver with `connections` connections.
    public init(connections: Int) { self.connections = connections }

    /// Operations that hold a connection or wait for one, now.
    public var inFlight: Int { active.load(ordering: .relaxed) }

    /// Sends every later event to `observer` (replacing an earlier one).
    public func observe(_ observer: @escaping @Sendable (Event) -> Void) {
        self.observer.withLock { $0 = observer }
    }

    /// Reports `event` to the observer, if any.
    public func report(_ event: Event) {
        guard let observer = observer.withLock({ $0 }) else { return }
        observer(event)
    }

    /// Runs one database operation, counted while it runs; an error for which `isDatabaseError`
    /// holds is reported as ``Event/databaseError`` (errors a request's own content causes are
    /// not).
    public func track<T>(
        isolation: isolated (any Actor)? = #isolation, isDatabaseError: (any Error) -> Bool, _ body: () async throws -> sending T
    ) async throws -> sending T {
        active.add(1, ordering: .relaxed)
        defer { active.subtract(1, ordering: .relaxed) }
        do {
            return try await body()
        } catch {
            if isDatabaseError(error) { report(.databaseError) }
            throw error
        }
    }
}
