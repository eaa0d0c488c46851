import KeyholdStore
import Logging
import PostgresNIO

/// postgres-nio's client with every operation counted in the driver's ``StoreStatistics``: how
/// many hold (or wait for) one of the pool's connections, and which failed in PostgreSQL or on
/// the way to it (`PSQLError`, or a transaction whose BEGIN, COMMIT or ROLLBACK failed), not an
/// error the repository's own code threw to roll a transaction back.
///
/// postgres-nio keeps its pool's own observer internal, so the count is of operations: one that
/// waits for a free connection counts as in use, which is what an operator needs to see.
struct TrackedClient: Sendable {
    let client: PostgresClient
    let statistics: StoreStatistics

    /// `client` with `connections` connections at most.
    init(_ client: PostgresClient, connections: Int) {
        self.client = client
        self.statistics = StoreStatistics(connections: connections)
    }

    /// Runs the pool until cancelled.
    func run() async { await client.run() }

    /// `client.query`, counted.
    @discardableResult
    func query(_ query: PostgresQuery, logger: Logger) async throws -> PostgresRowSequence {
        try await statistics.track(isDatabaseError: Self.isDatabaseError) { try await client.query(query, logger: logger) }
    }

    /// `client.execute` of a prepared statement, counted.
    func execute<Statement: PostgresPreparedStatement, Row>(
        _ statement: Statement, logger: Logger
    ) async throws -> AsyncThrowingMapSequence<PostgresRowSequence, Row> where Row == Statement.Row {
        try await statistics.track(isDatabaseError: Self.isDatabaseError) { try await client.execute(statement, logger: logger) }
    }

    /// `client.withTransaction`, counted.
    func withTransaction<Result>(
        logger: Logger, isolation: isolated (any Actor)? = #isolation, _ closure: (PostgresConnection) async throws -> sending Result
    ) async throws -> sending Result {
        try await statistics.track(isolation: isolation, isDatabaseError: Self.isDatabaseError) {
            try await client.withTransaction(logger: logger, isolation: isolation, closure)
        }
    }

    /// `client.withConnection`, counted.
    func withConnection<Result>(
        isolation: isolated (any Actor)? = #isolation, _ closure: (PostgresConnection) async throws -> sending Result
    ) async throws -> sending Result {
        try await statistics.track(isolation: isolation, isDatabaseError: Self.isDatabaseError) {
            try await client.withConnection(isolation: isolation, closure)
        }
    }

    /// Whether `error` came from PostgreSQL or the connection to it.
    static func isDatabaseError(_ error: any Error) -> Bool {
        if error is PSQLError { return true }
        guard let transaction = error as? PostgresTransactionError else { return false }
        if transaction.beginError != nil || transaction.commitError != nil || transaction.rollbackError != nil { return true }
        return transaction.closureError.map(isDatabaseError) ?? false
    }
}
