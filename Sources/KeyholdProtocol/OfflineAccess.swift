public import Crypto
public import Foundation
public import KeyholdCore

/// The text form of offline request and response codes (docs/spec/offline-access.md §4):
/// Crockford's base32 in groups of five characters, each followed by a Luhn mod 32 check
/// character over the group's index and characters, groups joined by `-`.
public enum OfflineCodeText {
    /// Crockford's base32 alphabet.
    static let alphabet = Array("0123456789ABCDEFGHJKMNPQRSTVWXYZ".utf8)
    /// Characters per group, before its check character.
    static let groupSize = 5

    /// `payload` as grouped, checked text.
    public static func encode(_ payload: [UInt8]) -> String {
        let (values, _) = regroup(payload, from: 8, to: 5, padLast: true)
        var groups: [String] = []
        for (index, start) in stride(from: 0, to: values.count, by: groupSize).enumerated() {
            let group = Array(values[start..<min(start + groupSize, values.count)])
            let check = luhnCheck([UInt8(index % 32)] + group)
            groups.append(String(decoding: (group + [check]).map { alphabet[Int($0)] }, as: UTF8.self))
        }
        return groups.joined(separator: "-")
    }

    /// The payload of `text`, of `byteCount` bytes; a mistyped group is named by its number
    /// (from 1), before anything else is looked at.
    public static func decode(_ text: String, byteCount: Int) throws -> [UInt8] {
        let cleaned = text.uppercased().filter { !$0.isWhitespace }
        let groups = cleaned.split(separator: "-", omittingEmptySubsequences: false)
        let characters = (byteCount * 8 + 4) / 5
        let expectedGroups = (characters + groupSize - 1) / groupSize
        var values: [UInt8] = []
        for (index, group) in groups.enumerated() {
            var groupValues: [UInt8] = []
            for character in group {
                guard let value = Self.value(of: character) else {
                    throw invalid("group \(index + 1) of \(groups.count) holds '\(character)', which no code uses")
                }
                groupValues.append(value)
            }
            guard groupValues.count >= 2, luhnValid([UInt8(index % 32)] + groupValues) else {
                throw invalid("group \(index + 1) of \(groups.count) (\(group)) is mistyped")
            }
            values += groupValues.dropLast()
        }
        guard groups.count == expectedGroups, values.count == characters else {
            throw invalid("the code has \(groups.count) groups, not the \(expectedGroups) of a whole code")
        }
        let (out, leftover) = regroup(values, from: 5, to: 8, padLast: false)
        guard leftover == 0 else { throw invalid("the code's last group is mistyped") }
        return out
    }

    /// `values` of `from` bits each as one big-endian bit string, cut into values of `to` bits;
    /// the bits left over are padded with zeros into a last value (`padLast`) or returned.
    static func regroup(_ values: [UInt8], from: Int, to: Int, padLast: Bool) -> ([UInt8], leftover: Int) {
        var out: [UInt8] = []
        var buffer = 0
        var bits = 0
        for value in values {
            buffer = buffer << from | Int(value)
            bits += from
            while bits >= to {
                bits -= to
                out.append(UInt8(buffer >> bits & (1 << to - 1)))
            }
            buffer &= (1 << bits) - 1
        }
        if padLast && bits > 0 {
            out.append(UInt8(buffer << (to - bits) & (1 << to - 1)))
            return (out, 0)
        }
        return (out, buffer)
    }

    /// The value of a character as read: lower case, `O` for 0, `I` and `L` for 1.
    static func value(of character: Character) -> UInt8? {
        switch character {
        case "O": return 0
        case "I", "L": return 1
        default:
            guard let ascii = character.asciiValue, let index = alphabet.firstIndex(of: ascii) else { return nil }
            return UInt8(index)
        }
    }

    /// The Luhn mod 32 check value of `values`.
    static func luhnCheck(_ values: [UInt8]) -> UInt8 {
        var sum = 0
        var factor = 2
        for value in values.reversed() {
            let addend = factor * Int(value)
            sum += addend / 32 + addend % 32
            factor = factor == 2 ? 1 : 2
        }
        return UInt8((32 - sum % 32) % 32)
    }

    /// Whether the last of `values` is the Luhn mod 32 check of the others.
    static func luhnValid(_ values: [UInt8]) -> Bool {
        luhnCheck(Array(values.dropLast())) == values.last
    }

    static func invalid(_ message: String) -> KeyholdError {
        KeyholdError(.invalidCode, message, hint: "compare the code character by character and type it again (groups are separated by '-')")
    }
}

/// A device's request for one key while it cannot reach its server (docs/spec/offline-access.md §2).
public struct OfflineRequest: Sendable, Equatable {
    /// The first byte: request, version 1.
    public static let type: UInt8 = 0x11
    /// The payload's size.
    public static let byteCount = 73

    /// The key asked for.
    public var keyID: KeyID
    /// The asking device's client id at its server.
    public var deviceID: ClientID
    /// 8 random bytes naming this request.
    public var requestID: [UInt8]
    /// The request's ephemeral X25519 public key.
    public var publicKey: Curve25519.KeyAgreement.PublicKey

    /// A new request for `keyID` by `deviceID`, and the private key to keep for its response.
    public static func make(keyID: KeyID, deviceID: ClientID) -> (OfflineRequest, Curve25519.KeyAgreement.PrivateKey) {
        let key = Curve25519.KeyAgreement.PrivateKey()
        return (OfflineRequest(keyID: keyID, deviceID: deviceID, requestID: SecureRandom.bytes(count: 8), publicKey: key.publicKey), key)
    }

    /// A request of these fields.
    public init(keyID: KeyID, deviceID: ClientID, requestID: [UInt8], publicKey: Curve25519.KeyAgreement.PublicKey) {
        self.keyID = keyID
        self.deviceID = deviceID
        self.requestID = requestID
        self.publicKey = publicKey
    }

    /// Reads the 73 bytes of a request.
    public init(bytes: [UInt8]) throws {
        guard bytes.count == Self.byteCount, bytes[0] == Self.type else {
            throw OfflineCodeText.invalid(
                bytes.first == OfflineResponse.type ? "this is a response code, not a request code" : "this is not a Keyhold offline request code")
        }
        keyID = KeyID(bytes: bytes[1..<17])!
        deviceID = ClientID(bytes: bytes[17..<33])!
        requestID = Array(bytes[33..<41])
        publicKey = try Curve25519.KeyAgreement.PublicKey(rawRepresentation: bytes[41..<73])
    }

    /// Reads a request code.
    public init(code: String) throws { try self.init(bytes: try OfflineCodeText.decode(code, byteCount: Self.byteCount)) }

    /// The 73 bytes.
    public var bytes: [UInt8] { [Self.type] + keyID.bytes + deviceID.bytes + requestID + Array(publicKey.rawRepresentation) }

    /// The request code.
    public var code: String { OfflineCodeText.encode(bytes) }

    /// Equal when their bytes are.
    public static func == (a: Self, b: Self) -> Bool { a.bytes == b.bytes }

    /// The request id in hex (what the audit trail records).
    public var requestIDText: String { Hex.lowercase(requestID) }
}

/// A key sealed to one ``OfflineRequest`` (docs/spec/offline-access.md §3).
public struct OfflineResponse: Sendable, Equatable {
    /// The first byte: response, version 1.
    public static let type: UInt8 = 0x21
    /// The payload's size.
    public static let byteCount = 93
    /// The HKDF `info` of the sealing key.
    static let info = Array("keyhold offline response v1".utf8)

    /// The request id it answers.
    public var requestID: [UInt8]
    /// Until when it may be used (whole seconds).
    public var expiry: Date
    /// The response's ephemeral X25519 public key.
    public var publicKey: Curve25519.KeyAgreement.PublicKey
    /// The sealed key: 32 bytes of ciphertext and the 16-byte tag.
    public var sealed: [UInt8]

    /// Seals `secret` to `request`, valid until `expiry`, with a fresh ephemeral key (or
    /// `ephemeral`, for the vectors).
    public static func seal(
        _ secret: SecretKey, to request: OfflineRequest, expiry: Date, ephemeral: Curve25519.KeyAgreement.PrivateKey = .init()
    ) throws -> OfflineResponse {
        var response = OfflineResponse(requestID: request.requestID, expiry: expiry, publicKey: ephemeral.publicKey, sealed: [])
        let key = try sealingKey(ephemeral.sharedSecretFromKeyAgreement(with: request.publicKey), request: request)
        let box = try secret.withUnsafeBytes { plaintext in
            try AES.GCM.seal(plaintext, using: key, nonce: try AES.GCM.Nonce(data: [UInt8](repeating: 0, count: 12)), authenticating: response.header)
        }
        response.sealed = Array(box.ciphertext) + Array(box.tag)
        return response
    }

    /// A response of these fields.
    public init(requestID: [UInt8], expiry: Date, publicKey: Curve25519.KeyAgreement.PublicKey, sealed: [UInt8]) {
        self.requestID = requestID
        self.expiry = Date(timeIntervalSince1970: expiry.timeIntervalSince1970.rounded(.down))
        self.publicKey = publicKey
        self.sealed = sealed
    }

    /// Reads the 93 bytes of a response.
    public init(bytes: [UInt8]) throws {
        guard bytes.count == Self.byteCount, bytes[0] == Self.type else {
            throw OfflineCodeText.invalid(
                bytes.first == OfflineRequest.type ? "this is a request code, not a response code" : "this is not a Keyhold offline response code")
        }
        requestID = Array(bytes[1..<9])
        expiry = Date(timeIntervalSince1970: TimeInterval(bytes[9..<13].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }))
        publicKey = try Curve25519.KeyAgreement.PublicKey(rawRepresentation: bytes[13..<45])
        sealed = Array(bytes[45...])
    }

    /// Reads a response code.
    public init(code: String) throws { try self.init(bytes: try OfflineCodeText.decode(code, byteCount: Self.byteCount)) }

    /// Bytes 0..<45: what the AEAD authenticates besides the key.
    var header: [UInt8] {
        let seconds = UInt32(clamping: Int64(expiry.timeIntervalSince1970))
        return [Self.type] + requestID + [24, 16, 8, 0].map { UInt8(truncatingIfNeeded: seconds >> $0) } + Array(publicKey.rawRepresentation)
    }

    /// The 93 bytes.
    public var bytes: [UInt8] { header + sealed }

    /// The response code.
    public var code: String { OfflineCodeText.encode(bytes) }

    /// Equal when their bytes are.
    public static func == (a: Self, b: Self) -> Bool { a.bytes == b.bytes }

    /// The key, opened with the private key of `request` — refused when the response answers
    /// another request, has expired by `now`, or does not open (another device's, or altered).
    public func open(_ request: OfflineRequest, with privateKey: Curve25519.KeyAgreement.PrivateKey, now: Date = Date()) throws -> SecretKey {
        guard requestID == request.requestID else {
            throw OfflineCodeText.invalid("this response answers request \(Hex.lowercase(requestID)), not \(request.requestIDText)")
        }
        guard expiry > now else {
            throw KeyholdError(
                .invalidCode, "the response expired at \(ISO8601DateFormatter().string(from: expiry))",
                hint: "ask the administrator for a new response to the same request code")
        }
        let key = try Self.sealingKey(privateKey.sharedSecretFromKeyAgreement(with: publicKey), request: request)
        do {
            let box = try AES.GCM.SealedBox(
                nonce: try AES.GCM.Nonce(data: [UInt8](repeating: 0, count: 12)), ciphertext: sealed.prefix(32), tag: sealed.suffix(16))
            return try SecretKey(bytes: try AES.GCM.open(box, using: key, authenticating: header))
        } catch {
            throw KeyholdError(
                .authenticationFailed, "the response does not open with this device's request: it was made for another request or changed",
                hint: "check that the administrator answered the request code this device printed")
        }
    }

    /// HKDF-SHA256 over the X25519 result, salted with the request's hash (§3).
    static func sealingKey(_ shared: SharedSecret, request: OfflineRequest) throws -> SymmetricKey {
        let zero = shared.withUnsafeBytes { $0.allSatisfy { $0 == 0 } }
        guard !zero else { throw KeyholdError(.invalidCode, "the code's public key is not usable", hint: "make a new request") }
        return shared.hkdfDerivedSymmetricKey(
            using: SHA256.self, salt: Array(SHA256.hash(data: request.bytes)), sharedInfo: info, outputByteCount: 32)
    }
}
