/// One step of the repository schema. Each driver applies, in order, the migrations it has not
/// applied yet, recording each in `schema_migrations` in the same transaction.
public protocol SchemaMigration: Sendable {
    /// Strictly increasing from 1.
    var version: Int { get }
    var name: String { get }
    /// Statements for SQLite.
    var sqlite: [String] { get }
    /// Statements for PostgreSQL.
    var postgres: [String] { get }
}

/// The repository schema's history. Never edit a released migration: add a new one.
public enum Schema {
    public static let migrations: [any SchemaMigration] = [CreateRepository(), AddKeySequence()]
}

/// Version 1: keys, enrolled clients, enrollment tokens, audit, settings.
struct CreateRepository: SchemaMigration {
    let version = 1
    let name = "create repository"

    var sqlite: [String] {
        [
            """
            CREATE TABLE keys (
              id TEXT PRIMARY KEY, kind TEXT NOT NULL, origin_server_id TEXT NOT NULL, origin_device_id TEXT NOT NULL,
              created REAL NOT NULL, label TEXT NOT NULL, state TEXT NOT NULL,
              wrapped_secret BLOB NOT NULL, secret_fingerprint BLOB NOT NULL, provenance TEXT NOT NULL,
              stored REAL NOT NULL, blocked INTEGER NOT NULL DEFAULT 0)
            """,
            """
            CREATE TABLE clients (
              id TEXT PRIMARY KEY, role TEXT NOT NULL, name TEXT NOT NULL, certificate_fingerprint TEXT NOT NULL,
              enrolled REAL NOT NULL, state TEXT NOT NULL, last_seen REAL, agent_version TEXT, key_count INTEGER)
            """,
            """
            CREATE TABLE enrollment_tokens (
              id TEXT PRIMARY KEY, secret_hash BLOB NOT NULL, role TEXT NOT NULL, uses_left INTEGER NOT NULL,
              expires REAL NOT NULL, created REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0)
            """,
            """
            CREATE TABLE audit (
              seq INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
              key_id TEXT, route TEXT NOT NULL, result TEXT NOT NULL, detail TEXT NOT NULL)
            """,
            "CREATE INDEX audit_key ON audit (key_id)",
            "CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        ]
    }

    var postgres: [String] {
        [
            """
            CREATE TABLE keys (
              id TEXT PRIMARY KEY, kind TEXT NOT NULL, origin_server_id TEXT NOT NULL, origin_device_id TEXT NOT NULL,
              created TIMESTAMPTZ NOT NULL, label TEXT NOT NULL, state TEXT NOT NULL,
              wrapped_secret BYTEA NOT NULL, secret_fingerprint BYTEA NOT NULL, provenance TEXT NOT NULL,
              stored TIMESTAMPTZ NOT NULL, blocked BOOLEAN NOT NULL DEFAULT FALSE)
            """,
            """
            CREATE TABLE clients (
              id TEXT PRIMARY KEY, role TEXT NOT NULL, name TEXT NOT NULL, certificate_fingerprint TEXT NOT NULL,
              enrolled TIMESTAMPTZ NOT NULL, state TEXT NOT NULL, last_seen TIMESTAMPTZ, agent_version TEXT, key_count BIGINT)
            """,
            """
            CREATE TABLE enrollment_tokens (
              id TEXT PRIMARY KEY, secret_hash BYTEA NOT NULL, role TEXT NOT NULL, uses_left BIGINT NOT NULL,
              expires TIMESTAMPTZ NOT NULL, created TIMESTAMPTZ NOT NULL, revoked BOOLEAN NOT NULL DEFAULT FALSE)
            """,
            """
            CREATE TABLE audit (
              seq BIGSERIAL PRIMARY KEY, time TIMESTAMPTZ NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
              key_id TEXT, route TEXT NOT NULL, result TEXT NOT NULL, detail TEXT NOT NULL)
            """,
            "CREATE INDEX audit_key ON audit (key_id)",
            "CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        ]
    }
}

/// Version 2: a sequence number per key, for the hierarchy's incremental push (docs/spec/hierarchy.md §3).
struct AddKeySequence: SchemaMigration {
    let version = 2
    let name = "add key sequence"

    var sqlite: [String] {
        [
            "ALTER TABLE keys ADD COLUMN seq INTEGER NOT NULL DEFAULT 0",
            "UPDATE keys SET seq = rowid",
            "CREATE INDEX keys_seq ON keys (seq)",
        ]
    }

    var postgres: [String] {
        [
            "ALTER TABLE keys ADD COLUMN seq BIGINT NOT NULL DEFAULT 0",
            "UPDATE keys SET seq = t.n FROM (SELECT id, row_number() OVER (ORDER BY stored, id) AS n FROM keys) t WHERE keys.id = t.id",
            "CREATE INDEX keys_seq ON keys (seq)",
        ]
    }
}
