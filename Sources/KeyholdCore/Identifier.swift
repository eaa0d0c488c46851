/// What an ``Identifier`` names; used only as a type tag so a key id cannot be passed where a
/// server id is expected.
public protocol IdentifierKind: Sendable {
    /// The name used in error messages ("key id", "server id" …).
    static var displayName: String { get }
}

/// Tag for ``KeyID``.
public enum KeyIDKind: IdentifierKind {
    /// "key id".
    public static let displayName = "key id"
}
/// Tag for ``ServerID``.
public enum ServerIDKind: IdentifierKind {
    /// "server id".
    public static let displayName = "server id"
}
/// Tag for ``DeviceID``.
public enum DeviceIDKind: IdentifierKind {
    /// "device id".
    public static let displayName = "device id"
}
/// Tag for ``ClientID``.
public enum ClientIDKind: IdentifierKind {
    /// "client id".
    public static let displayName = "client id"
}
/// Tag for ``TokenID``.
public enum TokenIDKind: IdentifierKind {
    /// "token id".
    public static let displayName = "token id"
}
/// Tag for ``ApprovalID``.
public enum ApprovalIDKind: IdentifierKind {
    /// "request id".
    public static let displayName = "request id"
}

/// A 128-bit random identifier, written as a lowercase UUID (`8-4-4-4-12` hexadecimal digits).
///
/// All 128 bits are random: the text has the shape of a UUID but no version or variant bits are
/// set, so every value is a valid identifier. Parsing accepts upper- or lowercase; printing is
/// always lowercase so identifiers compare as text.
public struct Identifier<Kind: IdentifierKind>: Hashable, Sendable, Comparable {
    /// The 16 bytes, most significant first.
    public let high: UInt64
    /// The 8 bytes after ``high``.
    public let low: UInt64

    /// The all-zero identifier, used where none applies (for example a file encrypted with a raw key).
    public static var zero: Self { Self(high: 0, low: 0) }

    /// The identifier with these 16 bytes.
    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// A new random identifier.
    public static func random() -> Self {
        var pair: (UInt64, UInt64) = (0, 0)
        withUnsafeMutableBytes(of: &pair) { SecureRandom.fill($0) }
        return Self(high: pair.0, low: pair.1)
    }

    /// Reads 16 bytes in network order; `nil` unless exactly 16 bytes are given.
    public init?<Bytes: Collection>(bytes: Bytes) where Bytes.Element == UInt8 {
        guard bytes.count == 16 else { return nil }
        var h: UInt64 = 0
        var l: UInt64 = 0
        for (i, b) in bytes.enumerated() {
            if i < 8 { h = h << 8 | UInt64(b) } else { l = l << 8 | UInt64(b) }
        }
        self.init(high: h, low: l)
    }

    /// The 16 bytes in network order.
    public var bytes: [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(16)
        for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: high >> UInt64(shift))) }
        for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: low >> UInt64(shift))) }
        return out
    }

    /// Byte order, as in the text form.
    public static func < (a: Self, b: Self) -> Bool { (a.high, a.low) < (b.high, b.low) }
}

extension Identifier: CustomStringConvertible, LosslessStringConvertible {
    private static var hexDigits: [UInt8] { Array("0123456789abcdef".utf8) }

    /// Lowercase UUID text, for example `0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0`.
    public var description: String {
        let digits = Self.hexDigits
        var out = [UInt8]()
        out.reserveCapacity(36)
        for (i, b) in bytes.enumerated() {
            if i == 4 || i == 6 || i == 8 || i == 10 { out.append(UInt8(ascii: "-")) }
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0xF)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Parses UUID text (`8-4-4-4-12` hexadecimal digits, either case); `nil` for anything else.
    public init?(_ text: String) {
        // Straight into the two words: ids are parsed on every request and every database row.
        var text = text
        let parsed = text.withUTF8 { utf8 -> (UInt64, UInt64)? in
            guard utf8.count == 36 else { return nil }
            var words: (UInt64, UInt64) = (0, 0)
            var digits = 0
            for (i, c) in utf8.enumerated() {
                if i == 8 || i == 13 || i == 18 || i == 23 {
                    guard c == UInt8(ascii: "-") else { return nil }
                    continue
                }
                let v: UInt8
                switch c {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): v = c &- UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): v = c &- UInt8(ascii: "a") &+ 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): v = c &- UInt8(ascii: "A") &+ 10
                default: return nil
                }
                if digits < 16 { words.0 = words.0 << 4 | UInt64(v) } else { words.1 = words.1 << 4 | UInt64(v) }
                digits += 1
            }
            return words
        }
        guard let (high, low) = parsed else { return nil }
        self.init(high: high, low: low)
    }
}

extension Identifier: Codable {
    /// Decodes the UUID text; anything else is a decoding error naming the kind of id.
    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let id = Self(text) else {
            throw DecodingError.dataCorrupted(
                .init(codingPath: decoder.codingPath, debugDescription: "not a valid \(Kind.displayName): \(text)")
            )
        }
        self = id
    }

    /// Encodes the lowercase UUID text.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

/// Identifies one key (file or drive key) everywhere in the system.
public typealias KeyID = Identifier<KeyIDKind>
/// Identifies one administration server.
public typealias ServerID = Identifier<ServerIDKind>
/// Identifies one managed device: the device that created a key (a key record's origin device).
public typealias DeviceID = Identifier<DeviceIDKind>
/// Identifies one enrollment at a server: a device, a secondary server or an administrator, known
/// by the certificate the server issued with this id.
public typealias ClientID = Identifier<ClientIDKind>
/// Identifies one enrollment token.
public typealias TokenID = Identifier<TokenIDKind>
/// Identifies one request for an administrator's approval of a key release.
public typealias ApprovalID = Identifier<ApprovalIDKind>

extension Identifier where Kind == DeviceIDKind {
    /// The device enrolled under `client`: a device's id is the client id of the enrollment it
    /// had when it made the key (after `keyhold reassign` it makes keys under its new one).
    public init(enrollment client: ClientID) {
        self.init(high: client.high, low: client.low)
    }
}
