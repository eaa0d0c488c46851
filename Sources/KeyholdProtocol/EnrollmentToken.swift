public import Foundation
public import KeyholdCore

/// The text an administrator hands to a device (or a secondary server) to enroll it:
/// `kh1.` followed by base64url (no padding) of a small JSON object with the server's API and
/// enrollment addresses, the SHA-256 of its CA certificate, the token id and a 32-byte secret.
public struct EnrollmentToken: Codable, Sendable, Equatable {
    /// `host:port` of the mutual-TLS API.
    public var apiAddress: String
    /// `host:port` of the enrollment listener (server-authenticated TLS only).
    public var enrollAddress: String
    /// Lowercase hex SHA-256 of the server's CA certificate (DER).
    public var caFingerprint: String
    /// The token's id.
    public var id: TokenID
    /// base64url secret; the server stores only its SHA-256.
    public var secret: String

    /// A token.
    public init(apiAddress: String, enrollAddress: String, caFingerprint: String, id: TokenID, secret: String) {
        self.apiAddress = apiAddress
        self.enrollAddress = enrollAddress
        self.caFingerprint = caFingerprint
        self.id = id
        self.secret = secret
    }

    enum CodingKeys: String, CodingKey {
        case apiAddress = "a"
        case enrollAddress = "e"
        case caFingerprint = "f"
        case id = "i"
        case secret = "s"
    }

    static let prefix = "kh1."

    /// The token text.
    public var text: String {
        let json = (try? WireFormat.encoder().encode(self)) ?? Data()
        return Self.prefix + Base64URL.encode(json)
    }

    /// Parses token text. Throws `token_invalid` with a hint for anything malformed.
    public init(text: String) throws {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard trimmed.hasPrefix(Self.prefix), let data = Base64URL.decode(String(trimmed.dropFirst(Self.prefix.count))),
            let token = try? WireFormat.decoder().decode(Self.self, from: data),
            token.caFingerprint.count == 64, token.caFingerprint.allSatisfy(\.isHexDigit), !token.secret.isEmpty
        else {
            throw KeyholdError(
                .tokenInvalid, "the enrollment token is malformed",
                hint: "copy the whole token printed by 'keyhold-server token create' (it starts with kh1.)"
            )
        }
        self = token
    }
}

/// base64url without padding (RFC 4648 §5).
public enum Base64URL {
    /// base64url of `data`, without padding.
    public static func encode<D: DataProtocol>(_ data: D) -> String {
        Data(data).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    /// The bytes of base64url `text` (no padding); nil for anything else.
    public static func decode(_ text: String) -> Data? {
        // Strict: only the base64url alphabet, no padding.
        guard text.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }) else { return nil }
        var s = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while s.count % 4 != 0 { s += "=" }
        return Data(base64Encoded: s)
    }
}
