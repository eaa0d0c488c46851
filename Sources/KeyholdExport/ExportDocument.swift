public import Foundation
public import KeyholdCore

/// One key in an export document: the key record's fields (as ``KeyRecord`` codes them, so the
/// same as in a key file) plus `blocked` and `secret`, side by side in one JSON object.
public struct ExportedKey: Codable, Sendable {
    /// The key's record.
    public var record: KeyRecord
    /// Whether the exporting server held it blocked.
    public var blocked: Bool
    /// The 32-byte secret, base64 (standard, padded).
    public var secret: String

    private enum ExtraKeys: String, CodingKey { case blocked, secret }

    /// An element for `material`.
    public init(_ material: KeyMaterial, blocked: Bool) {
        record = material.record
        self.blocked = blocked
        secret = material.secret.withUnsafeBytes { Data($0).base64EncodedString() }
    }

    /// Decodes one element (one flat object, docs/spec/export.md).
    public init(from decoder: any Decoder) throws {
        record = try KeyRecord(from: decoder)
        let extra = try decoder.container(keyedBy: ExtraKeys.self)
        blocked = try extra.decode(Bool.self, forKey: .blocked)
        secret = try extra.decode(String.self, forKey: .secret)
    }

    /// Encodes one element (one flat object with sorted keys).
    public func encode(to encoder: any Encoder) throws {
        try record.encode(to: encoder)
        var extra = encoder.container(keyedBy: ExtraKeys.self)
        try extra.encode(blocked, forKey: .blocked)
        try extra.encode(secret, forKey: .secret)
    }

    /// The secret as a key; `invalid_key` unless it is base64 of exactly 32 bytes.
    public func secretKey() throws -> SecretKey {
        guard let bytes = Data(base64Encoded: secret), bytes.count == SecretKey.byteCount else {
            throw KeyholdError(
                .invalidKey, "key \(record.id) in the export has a secret that is not 32 bytes of base64",
                hint: "the export document is malformed; see docs/spec/export.md")
        }
        return try SecretKey(bytes: bytes)
    }
}

/// The export document (docs/spec/export.md), written as a stream:
/// `{"format":"keyhold-key-export","version":1,"exported":…,"server":…,"keys":[…],"count":N}`.
public struct ExportDocumentWriter {
    /// The document's `format` field.
    public static let format = "keyhold-key-export"
    /// The document version this build writes and reads.
    public static let version = 1
    private let encoder: JSONEncoder
    /// Keys written so far.
    public private(set) var count = 0

    /// A writer at the start of a document.
    public init() {
        encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
    }

    /// Everything up to the opening bracket of `keys`.
    public func opening(server: ServerID, exported: Date) -> [UInt8] {
        let time = ISO8601DateFormatter().string(from: exported)
        return Array("{\"format\":\"\(Self.format)\",\"version\":\(Self.version),\"exported\":\"\(time)\",\"server\":\"\(server)\",\"keys\":[\n".utf8)
    }

    /// One element, with the separator it needs.
    public mutating func element(_ key: ExportedKey) throws -> [UInt8] {
        var out: [UInt8] = count == 0 ? [] : Array(",\n".utf8)
        out += try encoder.encode(key)
        count += 1
        return out
    }

    /// The document's end (after the last element).
    public func closing() -> [UInt8] {
        Array("\n],\"count\":\(count)}\n".utf8)
    }
}

/// Reads an export document incrementally with bounded memory: `feed` returns the keys completed
/// so far; `finish` checks the document ended properly and `count` matches.
///
/// The top-level object is scanned member by member; `format` and `version` must come before
/// `keys` (so a document of an unknown version is refused before any key is read). Each member
/// value and each key is at most 1 MiB. Values are decoded by Foundation's JSON parser; this type
/// only finds where they end.
public struct ExportDocumentReader {
    private enum State {
        case start, memberName, colon
        case value(String)
        case afterMember, elementOrEnd, element, afterElement, end
    }
    private var state = State.start
    private var buffer: [UInt8] = []
    private var position = 0
    /// The `format` the document declares, once read.
    public private(set) var format: String?
    /// The `version` the document declares, once read.
    public private(set) var version: Int?
    /// The exporting server's id, once read.
    public private(set) var server: String?
    /// When the file was made, once read.
    public private(set) var exported: String?
    /// The key count the document's end declares, once read.
    public private(set) var declaredCount: Int?
    /// Keys read so far.
    public private(set) var keysRead = 0
    private let decoder: JSONDecoder
    /// When false, keys are only counted (`feed` returns none): checking a file just written.
    private let decodeKeys: Bool
    static let valueLimit = 1 << 20

    /// A reader; without `decodeKeys` it only checks and counts the keys.
    public init(decodeKeys: Bool = true) {
        self.decodeKeys = decodeKeys
        decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
    }

    static func malformed(_ message: String) -> KeyholdError {
        KeyholdError(
            .invalidRequest, "the export document is malformed: \(message)",
            hint: "export files are written by 'keyhold-server key export'; see docs/spec/export.md")
    }

    /// Reads the next bytes of the document; returns the keys they completed. Throws at the first malformed byte.
    public mutating func feed(_ bytes: some Collection<UInt8>) throws -> [ExportedKey] {
        buffer.append(contentsOf: bytes)
        var pending: [ArraySlice<UInt8>] = []
        defer { compact() }
        loop: while true {
            skipWhitespace()
            guard position < buffer.count else { break }
            let byte = buffer[position]
            switch state {
            case .start:
                guard byte == UInt8(ascii: "{") else { throw Self.malformed("it does not start with a JSON object") }
                position += 1
                state = .memberName
            case .memberName:
                if byte == UInt8(ascii: "}") {
                    position += 1
                    state = .end
                    continue
                }
                guard byte == UInt8(ascii: "\"") else { throw Self.malformed("expected a member name at byte \(position)") }
                guard let end = try scanValue(position) else { break loop }
                let name = try decodeFragment(buffer[position..<end], as: String.self)
                position = end
                pendingName = name
                state = .colon
            case .colon:
                guard byte == UInt8(ascii: ":"), let name = pendingName else { throw Self.malformed("expected ':' at byte \(position)") }
                position += 1
                state = .value(name)
            case .value(let name):
                if name == "keys" {
                    guard format == ExportDocumentWriter.format else {
                        throw Self.malformed("\"format\" must be \"\(ExportDocumentWriter.format)\" and come before \"keys\"")
                    }
                    guard version != nil else { throw Self.malformed("\"version\" must come before \"keys\"") }
                    guard byte == UInt8(ascii: "[") else { throw Self.malformed("\"keys\" is not an array") }
                    position += 1
                    state = .elementOrEnd
                    continue
                }
                guard let end = try scanValue(position) else { break loop }
                try member(name, buffer[position..<end])
                position = end
                state = .afterMember
            case .afterMember:
                if byte == UInt8(ascii: ",") {
                    position += 1
                    state = .memberName
                } else if byte == UInt8(ascii: "}") {
                    position += 1
                    state = .end
                } else {
                    throw Self.malformed("expected ',' or '}' at byte \(position)")
                }
            case .elementOrEnd, .element:
                if byte == UInt8(ascii: "]"), case .elementOrEnd = state {
                    position += 1
                    state = .afterMember
                    continue
                }
                guard byte == UInt8(ascii: "{") else { throw Self.malformed("key \(keysRead + pending.count + 1) is not an object") }
                guard let end = try scanValue(position) else { break loop }
                pending.append(buffer[position..<end])
                position = end
                state = .afterElement
            case .afterElement:
                if byte == UInt8(ascii: ",") {
                    position += 1
                    state = .element
                } else if byte == UInt8(ascii: "]") {
                    position += 1
                    state = .afterMember
                } else {
                    throw Self.malformed("expected ',' or ']' after key \(keysRead + pending.count)")
                }
            case .end:
                throw Self.malformed("data after the end of the document")
            }
        }
        return try decodeKeys(pending)
    }

    /// Checks that the document ended complete (its declared count matches).
    public mutating func finish() throws {
        skipWhitespace()
        guard case .end = state, position == buffer.count else { throw Self.malformed("the document ends early (after \(keysRead) keys)") }
        guard format != nil, version != nil else { throw Self.malformed("no \"format\"/\"version\"") }
        if let declaredCount, declaredCount != keysRead {
            throw Self.malformed("\"count\" says \(declaredCount) keys but the document holds \(keysRead)")
        }
    }

    private var pendingName: String?

    private mutating func member(_ name: String, _ bytes: ArraySlice<UInt8>) throws {
        switch name {
        case "format":
            let value = try decodeFragment(bytes, as: String.self)
            guard value == ExportDocumentWriter.format else {
                throw Self.malformed("\"format\" is \"\(value)\", not \"\(ExportDocumentWriter.format)\"")
            }
            format = value
        case "version":
            guard format != nil else { throw Self.malformed("\"format\" must come before \"version\"") }
            let value = try decodeFragment(bytes, as: Int.self)
            guard value == ExportDocumentWriter.version else {
                throw KeyholdError(
                    .unsupportedVersion, "the export document has version \(value); this build reads version \(ExportDocumentWriter.version)",
                    hint: "import it with a Keyhold version that reads it")
            }
            version = value
        case "server": server = try decodeFragment(bytes, as: String.self)
        case "exported": exported = try decodeFragment(bytes, as: String.self)
        case "count": declaredCount = try decodeFragment(bytes, as: Int.self)
        default: break  // unknown members are ignored (later minor additions)
        }
    }

    private func decodeFragment<T: Decodable>(_ bytes: ArraySlice<UInt8>, as: T.Type) throws -> T {
        do {
            return try decoder.decode([T].self, from: Data("[".utf8) + Data(bytes) + Data("]".utf8))[0]
        } catch {
            throw Self.malformed("a value is not a valid \(T.self)")
        }
    }

    private mutating func decodeKeys(_ elements: [ArraySlice<UInt8>]) throws -> [ExportedKey] {
        guard !elements.isEmpty else { return [] }
        guard decodeKeys else {
            keysRead += elements.count
            return []
        }
        var data = Data("[".utf8)
        for (i, e) in elements.enumerated() {
            if i > 0 { data.append(UInt8(ascii: ",")) }
            data.append(contentsOf: e)
        }
        data.append(UInt8(ascii: "]"))
        let keys: [ExportedKey]
        do {
            keys = try decoder.decode([ExportedKey].self, from: data)
        } catch {
            // Find the first bad one for the message.
            for (i, e) in elements.enumerated() where (try? decoder.decode(ExportedKey.self, from: Data(e))) == nil {
                throw Self.malformed("key \(keysRead + i + 1) is not a valid key record")
            }
            throw Self.malformed("keys \(keysRead + 1)…\(keysRead + elements.count) are not valid key records")
        }
        keysRead += keys.count
        return keys
    }

    private mutating func skipWhitespace() {
        while position < buffer.count, [0x20, 0x0A, 0x0D, 0x09].contains(buffer[position]) { position += 1 }
    }

    /// Drops consumed bytes (keeps memory bounded by one unfinished value).
    private mutating func compact() {
        if position > 0 {
            buffer.removeFirst(position)
            position = 0
        }
    }

    /// The end (exclusive) of the JSON value starting at `start`, or nil when the buffer ends first.
    private func scanValue(_ start: Int) throws -> Int? {
        var i = start
        var depth = 0
        var inString = false
        var escaped = false
        while i < buffer.count {
            if i - start > Self.valueLimit { throw Self.malformed("a value is larger than \(Self.valueLimit >> 20) MiB") }
            let b = buffer[i]
            if inString {
                if escaped {
                    escaped = false
                } else if b == UInt8(ascii: "\\") {
                    escaped = true
                } else if b == UInt8(ascii: "\"") {
                    inString = false
                    if depth == 0 { return i + 1 }
                }
            } else {
                switch b {
                case UInt8(ascii: "\""): inString = true
                case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1
                case UInt8(ascii: "}"), UInt8(ascii: "]"):
                    if depth == 0 { return i }  // end of a scalar
                    depth -= 1
                    if depth == 0 { return i + 1 }
                case UInt8(ascii: ","), 0x20, 0x0A, 0x0D, 0x09:
                    if depth == 0 { return i }
                default: break
                }
            }
            i += 1
        }
        return nil
    }
}
