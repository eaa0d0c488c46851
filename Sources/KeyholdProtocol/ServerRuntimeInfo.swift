public import Foundation
public import KeyholdCore
import KeyholdSystem

/// `runtime.json` in a server's data directory: what a running `keyhold-server run` bound, written
/// once both listeners accept and removed when it stops. The admin commands read it to find the
/// API (a port of 0 in `config.toml` picks a free one), and so does anything that launches servers.
/// This type is the only reader and writer of the file.
public struct ServerRuntimeInfo: Codable, Sendable, Equatable {
    /// The file's name in the data directory.
    public static let fileName = "runtime.json"

    /// The server's id.
    public var serverID: ServerID
    /// The bound `host:port` of the mutual-TLS API.
    public var api: String
    /// The bound `host:port` of the enrollment listener.
    public var enroll: String
    /// The bound `host:port` of the plain-HTTP metrics listener, when one is configured.
    public var metrics: String?
    /// The process.
    public var pid: Int32
    /// Its version.
    public var version: String
    /// When it started listening.
    public var started: Date

    /// What a server that listens now writes.
    public init(
        serverID: ServerID, api: String, enroll: String, metrics: String? = nil, pid: Int32 = getpid(), version: String = KeyholdVersion.current,
        started: Date = Date()
    ) {
        self.serverID = serverID
        self.metrics = metrics
        self.api = api
        self.enroll = enroll
        self.pid = pid
        self.version = version
        self.started = Date(timeIntervalSince1970: started.timeIntervalSince1970.rounded(.down))
    }

    enum CodingKeys: String, CodingKey {
        case serverID = "server_id"
        case api, enroll, metrics, pid, version, started
    }

    /// The path of the file in `directory`.
    public static func path(in directory: String) -> String { (directory as NSString).appendingPathComponent(fileName) }

    /// The file in `directory`, or nil when there is none (no server runs there, or it is starting).
    /// - Throws: `configuration` when the file exists but is not what a server writes.
    public static func read(from directory: String) throws -> ServerRuntimeInfo? {
        let path = path(in: directory)
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        do {
            return try WireFormat.decoder().decode(Self.self, from: data)
        } catch {
            throw KeyholdError(.configuration, "\(path) is damaged", hint: "remove it; the running server writes it again when it restarts")
        }
    }

    /// Writes the file into `directory` atomically (mode 0644: it holds no secret).
    public func write(to directory: String) throws {
        var data = try WireFormat.encoder().encode(self)
        data.append(0x0A)
        try AtomicFileWriter.replace(Self.path(in: directory), with: data, mode: 0o644)
    }

    /// Removes the file from `directory` (a server that stops).
    public static func remove(from directory: String) {
        unlink(path(in: directory))
    }
}
