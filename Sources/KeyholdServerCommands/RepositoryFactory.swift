import Foundation
import KeyholdCore
import KeyholdServer
import KeyholdStore
import KeyholdStorePostgres
import KeyholdStoreSQLite
import ServiceLifecycle

/// The choice of database driver: the only place that knows both drivers.
enum RepositoryFactory {
    /// Refuses a `database` value that names neither driver.
    static func check(_ database: String, in path: String) throws {
        guard database == "sqlite" || database.hasPrefix("postgres://") || database.hasPrefix("postgresql://") else {
            throw KeyholdError(
                .configuration, "\(path): database = \"\(database)\" names no database Keyhold knows",
                hint: "write database = \"sqlite\" or a postgres:// URL (postgres://user@host:5432/keyhold)"
            )
        }
    }

    /// The repository `database` names, for the data directory `dir`.
    static func open(_ database: String, in dir: DataDirectory) throws -> any Repository {
        if database == "sqlite" { return try SQLiteRepository(path: dir.sqlite) }
        try check(database, in: dir.config)
        return try PostgresRepository(url: database)
    }

    /// How `status` shows `database`: never with a password.
    static func describe(_ database: String) -> String {
        guard database.hasPrefix("postgres"), var c = URLComponents(string: database) else { return "sqlite" }
        c.password = nil
        return c.string ?? "postgres"
    }
}

/// Runs a repository's driver (PostgreSQL's connection pool) as the first service of the group,
/// so it stops last, after every part that uses it.
struct RepositoryService: Service {
    let repository: any Repository

    func run() async throws {
        try? await cancelWhenGracefulShutdown { try await repository.run() }
        try await repository.close()
    }
}
