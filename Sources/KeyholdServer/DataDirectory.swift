import Foundation
import KeyholdCommandLine
import KeyholdCore

/// The server's data directory: configuration, master key, CA and certificates (and the SQLite
/// repository unless PostgreSQL is configured). Created by `keyhold-server init`, mode 0700.
struct DataDirectory: Sendable {
    let url: URL

    init(_ path: String) { url = URL(fileURLWithPath: path) }

    var path: String { url.path }
    func file(_ name: String) -> String { url.appendingPathComponent(name).path }

    var config: String { file("config.toml") }
    var masterKey: String { file("master.key") }
    var caCertificate: String { file("ca.pem") }
    var caKey: String { file("ca.key") }
    var tlsCertificate: String { file("tls.pem") }
    var tlsKey: String { file("tls.key") }
    var adminCertificate: String { file("admin.pem") }
    var adminKey: String { file("admin.key") }
    var sqlite: String { file("keyhold.sqlite") }
    /// Written when the server listens: the addresses it actually bound (useful with port 0).
    var runtime: String { file("runtime.json") }

    var isInitialized: Bool { FileManager.default.fileExists(atPath: config) }

    func requireInitialized() throws {
        guard isInitialized else {
            throw KeyholdError(
                .configuration, "\(path) is not a Keyhold server data directory (no config.toml)",
                hint: "create one with 'keyhold-server init --data-dir \(path)', or pass the right --data-dir"
            )
        }
    }

    /// Writes `data` to `name` atomically with `mode`.
    func write(_ name: String, _ data: Data, mode: mode_t) throws {
        try AtomicFileWriter.replace(url.appendingPathComponent(name).path, with: data, mode: mode)
    }

    func read(_ path: String) throws -> Data {
        do {
            return try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw KeyholdError(.configuration, "cannot read \(path)", hint: "check that the data directory is complete and readable by this user")
        }
    }

    /// Refuses secret files that others could read.
    func checkSecretPermissions() throws {
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

/// `config.toml`: flat `key = value` lines (strings in double quotes, integers, true/false),
/// `#` comments. Command-line options override it.
struct ServerConfig: Sendable, Equatable {
    var serverID: ServerID
    var name: String
    /// `host:port` of the mutual-TLS API.
    var listen: String
    /// `host:port` of the enrollment listener.
    var enrollListen: String
    /// `sqlite` (the file in the data directory) or a `postgres://` URL.
    var database: String
    /// Addresses put into enrollment tokens; empty means the bound listen addresses.
    var advertiseAPI: String
    var advertiseEnroll: String

    func render() -> String {
        """
        # Keyhold administration server. Command-line options override these values.
        server_id = "\(serverID)"
        name = "\(name)"
        # mutual-TLS API and enrollment listener (host:port)
        listen = "\(listen)"
        enroll_listen = "\(enrollListen)"
        # "sqlite" for keyhold.sqlite in this directory, or a postgres:// URL
        database = "\(database)"
        # addresses written into enrollment tokens (empty: the listen addresses)
        advertise_api = "\(advertiseAPI)"
        advertise_enroll = "\(advertiseEnroll)"

        """
    }

    static func parse(_ text: String, path: String) throws -> ServerConfig {
        var values: [String: String] = [:]
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            guard let eq = line.firstIndex(of: "=") else {
                throw KeyholdError(.configuration, "\(path):\(n + 1): expected 'key = value'", hint: "fix the line or remove it")
            }
            let key = line[..<eq].trimmingCharacters(in: .whitespaces)
            var value = line[line.index(after: eq)...].trimmingCharacters(in: .whitespaces)
            if value.hasPrefix("\"") {
                guard value.count >= 2, value.hasSuffix("\"") else {
                    throw KeyholdError(.configuration, "\(path):\(n + 1): unterminated string", hint: "close the string with a double quote")
                }
                value = String(value.dropFirst().dropLast())
            }
            values[key] = value
        }
        func need(_ k: String) throws -> String {
            guard let v = values[k] else { throw KeyholdError(.configuration, "\(path): missing \(k)", hint: "add '\(k) = …' or re-create the data directory with 'keyhold-server init'") }
            return v
        }
        guard let id = ServerID(try need("server_id")) else {
            throw KeyholdError(.configuration, "\(path): server_id is not a UUID", hint: "restore config.toml from a backup")
        }
        return ServerConfig(
            serverID: id, name: values["name"] ?? "", listen: try need("listen"), enrollListen: try need("enroll_listen"),
            database: values["database"] ?? "sqlite", advertiseAPI: values["advertise_api"] ?? "", advertiseEnroll: values["advertise_enroll"] ?? ""
        )
    }
}

/// `host:port` parsing.
enum HostPort {
    static func split(_ text: String) throws -> (host: String, port: Int) {
        var host = text
        var portText = ""
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            host = String(text[text.index(after: text.startIndex)..<close])
            portText = String(text[close...].dropFirst(2))
        } else if let colon = text.lastIndex(of: ":") {
            host = String(text[..<colon])
            portText = String(text[text.index(after: colon)...])
        }
        guard let port = Int(portText), (0...65535).contains(port), !host.isEmpty else {
            throw KeyholdError(.configuration, "'\(text)' is not host:port", hint: "write it like 127.0.0.1:8443 or [::1]:8443")
        }
        return (host, port)
    }
}
