import Foundation
import KeyholdConfig
import KeyholdCore
import KeyholdProtocol
import KeyholdServer
import Logging

/// `config.toml` in a server's data directory (written by `init`; `run` flags override it). Every
/// key is listed in docs/operations.md; an unknown, duplicated or mistyped key is an error.
struct ServerConfigFile: Equatable {
    var serverID: ServerID
    var name: String
    var listen: HostPort
    var enrollListen: HostPort
    /// `sqlite` (the file in the data directory) or a `postgres://` URL.
    var database: String
    /// Addresses written into enrollment tokens; nil: the bound listen addresses.
    var advertiseAPI: String?
    var advertiseEnroll: String?
    /// Seconds between pushes to the primary.
    var hierarchyHeartbeat = 30
    var logLevel: Logger.Level = .info

    /// Reads and checks `path`.
    static func read(_ path: String) throws -> ServerConfigFile {
        let file = try ConfigFile(path: path)
        // Every key is read first, so that a misspelt key is reported as such, not as a missing one.
        let id = try file.string("server_id")
        let name = try file.string("name")
        let listen = try file.address("listen")
        let enrollListen = try file.address("enroll_listen")
        let database = try file.string("database")
        let advertise = try ["advertise_api", "advertise_enroll"].map { key -> String? in
            guard let text = try file.string(key), !text.isEmpty else { return nil }
            guard (try? HostPort(text)) != nil else {
                throw KeyholdError(
                    .configuration, "\(path): \(key) = \"\(text)\" is not host:port",
                    hint: "write the address devices use, like \"keys.example.org:8443\"")
            }
            return text
        }
        let heartbeat = try file.integer("hierarchy_heartbeat", in: 1...86_400)
        let level = try file.choice("log_level", of: Logger.Level.allCases.map(\.rawValue))
        try file.finish()

        let hint = "add it, or re-create the data directory with 'keyhold-server init'"
        guard let serverID = ServerID(try file.require(id, "server_id", hint: hint)) else {
            throw KeyholdError(.configuration, "\(path): server_id is not a UUID", hint: "restore config.toml from a backup")
        }
        var config = ServerConfigFile(
            serverID: serverID, name: name ?? "", listen: try file.require(listen, "listen", hint: hint),
            enrollListen: try file.require(enrollListen, "enroll_listen", hint: hint), database: database ?? "sqlite",
            advertiseAPI: advertise[0], advertiseEnroll: advertise[1]
        )
        if let heartbeat { config.hierarchyHeartbeat = heartbeat }
        if let level { config.logLevel = Logger.Level(rawValue: level) ?? .info }
        try RepositoryFactory.check(config.database, in: path)
        return config
    }

    /// The file's text, every key under a comment.
    func render() -> String {
        var w = ConfigWriter(header: [
            "Keyhold administration server (docs/operations.md lists every key). Command-line options override these values."
        ])
        w.add("server_id", serverID.description, comment: "this server's identity: do not change it")
        w.add("name", name)
        w.add("listen", listen.description, comment: "mutual-TLS API (host:port)")
        w.add("enroll_listen", enrollListen.description, comment: "enrollment listener (host:port; no client certificate)")
        w.add("database", database, comment: "\"sqlite\" for keyhold.sqlite in this directory, or a postgres:// URL")
        w.add("advertise_api", advertiseAPI ?? "", comment: "addresses written into enrollment tokens (empty: the bound listen addresses)")
        w.add("advertise_enroll", advertiseEnroll ?? "")
        w.add("hierarchy_heartbeat", hierarchyHeartbeat, comment: "seconds between pushes to the primary")
        w.add("log_level", logLevel.rawValue, comment: "trace, debug, info, notice, warning, error or critical")
        return w.text
    }
}
