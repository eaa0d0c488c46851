public import Foundation
public import KeyholdCore

/// `POST /v1/admin/keys/export`: which keys, and the password that protects the file. The answer
/// is the export file itself (an age file, `application/octet-stream`), streamed.
public struct ExportRequest: Codable, Sendable {
    /// The password that protects the file.
    public var password: String
    /// Exactly one of the selections below.
    public var all: Bool
    /// These keys.
    public var keys: [KeyID]?
    /// The keys a device created.
    public var device: DeviceID?
    /// Keys created at or after this time.
    public var since: Date?

    /// A request with one selection.
    public init(password: String, all: Bool = false, keys: [KeyID]? = nil, device: DeviceID? = nil, since: Date? = nil) {
        self.password = password
        self.all = all
        self.keys = keys
        self.device = device
        self.since = since
    }

    /// The selection in words, for audit records and messages.
    public var selectionDescription: String {
        if all { return "all keys" }
        if let keys { return "\(keys.count) named key\(keys.count == 1 ? "" : "s")" }
        if let device { return "keys of device \(device)" }
        if let since { return "keys created since \(ISO8601DateFormatter().string(from: since))" }
        return "nothing"
    }

    /// How many selections the request names (exactly one is valid).
    public var selectionCount: Int { (all ? 1 : 0) + (keys == nil ? 0 : 1) + (device == nil ? 0 : 1) + (since == nil ? 0 : 1) }
}

/// The answer to `POST /v1/admin/keys/import` (body: the export file; password: the
/// `Keyhold-Password` header, base64 of its UTF-8).
public struct ImportResponse: Codable, Sendable {
    /// Keys stored now.
    public var inserted: Int
    /// Keys that were there with the same secret.
    public var alreadyPresent: Int
    /// The server id the document names as its source.
    public var sourceServer: String?
    /// Keys of the file destroyed here: not brought back (a destroyed key stays destroyed).
    public var destroyed: Int

    /// A result.
    public init(inserted: Int, alreadyPresent: Int, sourceServer: String?, destroyed: Int = 0) {
        self.inserted = inserted
        self.alreadyPresent = alreadyPresent
        self.sourceServer = sourceServer
        self.destroyed = destroyed
    }

    enum CodingKeys: String, CodingKey {
        case inserted
        case alreadyPresent = "already_present"
        case sourceServer = "source_server"
        case destroyed
    }

    /// Decodes a result; one without `destroyed` (from an older server) had none.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        inserted = try c.decode(Int.self, forKey: .inserted)
        alreadyPresent = try c.decode(Int.self, forKey: .alreadyPresent)
        sourceServer = try c.decodeIfPresent(String.self, forKey: .sourceServer)
        destroyed = try c.decodeIfPresent(Int.self, forKey: .destroyed) ?? 0
    }
}

/// Export passwords: what both ends accept.
public enum TransferPassword {
    /// The shortest password a new export file may have.
    public static let minimumLength = 8
    /// The HTTP header that carries an import's password (base64 of its UTF-8).
    public static let header = "Keyhold-Password"

    /// Refuses an empty or short password for a new export file.
    public static func checkNew(_ password: String) throws {
        guard password.count >= minimumLength else {
            throw KeyholdError(
                .usage, "the password is \(password.isEmpty ? "empty" : "shorter than \(minimumLength) characters")",
                hint: "choose a passphrase of at least \(minimumLength) characters (several words are best)")
        }
    }

    /// Refuses an empty password for opening a file (a file from `age` may have any non-empty one).
    public static func checkExisting(_ password: String) throws {
        guard !password.isEmpty else { throw KeyholdError(.usage, "the password is empty", hint: "give the password the file was exported with") }
    }
}
