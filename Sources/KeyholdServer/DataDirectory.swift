public import Foundation
import KeyholdCore
public import KeyholdSystem

#if canImport(Glibc)
import Glibc
#endif

/// The server's data directory (mode 0700): the configuration, the master key, the CA and the
/// certificates, the SQLite repository unless PostgreSQL is configured, and while the server runs
/// `runtime.json` and the lock. Created by `keyhold-server init`.
public struct DataDirectory: Sendable {
    /// The directory.
    public let path: String

    /// The data directory at `path`.
    public init(_ path: String) { self.path = path }

    /// A file in the directory.
    public func file(_ name: String) -> String { (path as NSString).appendingPathComponent(name) }

    /// `config.toml`.
    public var config: String { file("config.toml") }
    /// The master key (0600).
    public var masterKey: String { file("master.key") }
    /// The CA certificate.
    public var caCertificate: String { file("ca.pem") }
    /// The CA's private key (0600).
    public var caKey: String { file("ca.key") }
    /// The TLS certificate of both listeners.
    public var tlsCertificate: String { file("tls.pem") }
    /// Its private key (0600).
    public var tlsKey: String { file("tls.key") }
    /// The administrator certificate made by `init`.
    public var adminCertificate: String { file("admin.pem") }
    /// Its private key (0600).
    public var adminKey: String { file("admin.key") }
    /// The SQLite repository.
    public var sqlite: String { file("keyhold.sqlite") }
    /// The primary this server joined (0600: it holds this server's client key at the primary).
    public var primary: String { file("primary.json") }
    /// Held by the running server.
    public var lock: String { file("server.lock") }

    /// Whether `init` finished here (it writes `config.toml` last).
    public var isInitialized: Bool { FileManager.default.fileExists(atPath: config) }

    /// Throws `configuration` with the `init` command as hint unless `init` finished here.
    public func requireInitialized() throws {
        if access(config, F_OK) != 0, errno == EACCES {
            throw KeyholdError(
                .configuration, "cannot read the data directory \(path): permission denied (this is user \(geteuid()))",
                hint: "run as the user that owns it (the unit runs as keyhold-server: 'sudo -u keyhold-server keyhold-server …') or as root"
            )
        }
        guard isInitialized else {
            throw KeyholdError(
                .configuration, "\(path) is not a Keyhold server data directory (no config.toml)",
                hint: "create one with 'keyhold-server init --data-dir \(path)', or pass the right --data-dir"
            )
        }
    }

    /// Takes the directory's lock for this process's life: one running server per data directory.
    public func lockForRunning() throws -> ProcessLock {
        try ProcessLock(path: lock, protecting: "the data directory \(path)", holder: "keyhold-server")
    }

    /// Writes `data` to the file `name` atomically with `mode`.
    public func write(_ name: String, _ data: Data, mode: mode_t) throws {
        try AtomicFileWriter.replace(file(name), with: data, mode: mode)
    }

    /// The contents of `path`, or `configuration` naming it.
    public func read(_ path: String) throws -> Data {
        do {
            return try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw KeyholdError(.configuration, "cannot read \(path)", hint: "check that the data directory is complete and readable by this user")
        }
    }

    /// Refuses secret files that others could read.
    public func checkSecretPermissions() throws {
        for secret in [masterKey, caKey, tlsKey, adminKey] {
            let attrs = try FileManager.default.attributesOfItem(atPath: secret)
            let mode = (attrs[.posixPermissions] as? Int) ?? 0
            guard mode & 0o077 == 0 else {
                throw KeyholdError(
                    .configuration, "\(secret) is readable by other users (mode \(String(mode, radix: 8)))",
                    hint: "run 'chmod 600 \(secret)'"
                )
            }
        }
    }
}
