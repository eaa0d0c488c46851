import Foundation
public import KeyholdCore

/// The LUKS2 token of type `keyhold` (docs/spec/luks2-token.md): which escrowed key opens which
/// keyslot, and where that key was escrowed.
public struct KeyholdToken: Codable, Sendable, Equatable {
    /// The token type (docs/spec/luks2-token.md).
    public static let type = "keyhold"
    /// The token version this build writes and reads.
    public static let version = 1

    /// Always ``KeyholdToken/type``.
    public var type: String
    /// The keyslot the escrowed key opens, as libcryptsetup wants it: `["0"]`.
    public var keyslots: [String]
    /// The token's version.
    public var keyholdVersion: Int
    /// The escrowed drive key.
    public var keyID: KeyID
    /// The server that escrowed it.
    public var originServerID: ServerID
    /// `host:port` of the server that escrowed the key.
    public var serverAddress: String
    /// While `keyhold drive rekey` adds a keyslot for a new key: that key (escrowed already).
    public var rekeyTo: KeyID?
    /// After a rekey switched the token, until the old key's keyslot is gone and the server
    /// retired it: the key this token replaced.
    public var previousKeyID: KeyID?

    /// A token for the key in `keyslot`.
    public init(keyslot: Int, keyID: KeyID, originServerID: ServerID, serverAddress: String) {
        type = Self.type
        keyslots = [String(keyslot)]
        keyholdVersion = Self.version
        self.keyID = keyID
        self.originServerID = originServerID
        self.serverAddress = serverAddress
    }

    enum CodingKeys: String, CodingKey {
        case type, keyslots
        case keyholdVersion = "keyhold_version"
        case keyID = "key_id"
        case originServerID = "origin_server_id"
        case serverAddress = "server_address"
        case rekeyTo = "rekey_to"
        case previousKeyID = "previous_key_id"
    }

    /// The keyslot number, when the token names exactly one.
    public var keyslot: Int? { keyslots.count == 1 ? Int(keyslots[0]) : nil }

    /// The token's JSON for libcryptsetup.
    public func json() throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(self), as: UTF8.self)
    }

    /// Parses a token's JSON; a `keyhold` token that breaks the rules is an error (not "no token").
    public static func parse(_ json: String, device: String) throws -> KeyholdToken {
        let token: KeyholdToken
        do {
            token = try JSONDecoder().decode(KeyholdToken.self, from: Data(json.utf8))
        } catch {
            throw KeyholdError(
                .invalidHeader, "the keyhold token on \(device) is malformed",
                hint: "see docs/spec/luks2-token.md; 'cryptsetup token export --token-id N \(device)' shows it")
        }
        guard token.keyholdVersion == version else {
            throw KeyholdError(
                .unsupportedVersion, "the keyhold token on \(device) has version \(token.keyholdVersion); this build reads \(version)",
                hint: "unlock it with a Keyhold version that reads it")
        }
        guard token.keyslot != nil else {
            throw KeyholdError(
                .invalidHeader, "the keyhold token on \(device) does not name exactly one keyslot", hint: "see docs/spec/luks2-token.md")
        }
        return token
    }
}
