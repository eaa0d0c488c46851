// This file needs no cryptography, so the header fuzzer (Fuzz/) can compile it with plain swiftc.
public import KeyholdCore

/// The fixed 45-byte header at the start of every Keyhold file (`docs/spec/file-format.md` §1).
///
/// Parsing is strict: every byte is significant, there are no reserved bits, and
/// `FileHeader(parsing:)` followed by ``encoded`` gives back exactly the parsed bytes.
public struct FileHeader: Hashable, Sendable {
    /// `\x89KHF\r\n\x1a\n`.
    public static let magic: [UInt8] = [0x89, 0x4B, 0x48, 0x46, 0x0D, 0x0A, 0x1A, 0x0A]
    /// The only version this build reads and writes.
    public static let version: UInt8 = 1
    /// Length of the encoded header.
    public static let length = 45
    /// Smallest allowed ciphertext segment size.
    public static let minimumSegmentSize = 1024
    /// Largest allowed ciphertext segment size; caps what a hostile header can make a reader allocate.
    public static let maximumSegmentSize = 8 * 1024 * 1024
    /// The segment size writers use unless told otherwise (Tink's `AES256_GCM_HKDF_1MB`).
    public static let defaultSegmentSize = 1024 * 1024

    /// The key the file is encrypted with.
    public var keyID: KeyID
    /// The server that escrowed that key.
    public var originServerID: ServerID
    /// The ciphertext segment size `S` of the streaming body.
    public var segmentSize: Int

    /// Creates a header, checking the segment size.
    public init(keyID: KeyID, originServerID: ServerID, segmentSize: Int = FileHeader.defaultSegmentSize) throws {
        guard (Self.minimumSegmentSize...Self.maximumSegmentSize).contains(segmentSize) else {
            throw KeyholdError(
                .invalidHeader,
                "segment size \(segmentSize) is outside \(Self.minimumSegmentSize)...\(Self.maximumSegmentSize)",
                hint: "use a segment size between 1 KiB and 8 MiB, or leave the default (1 MiB)"
            )
        }
        self.keyID = keyID
        self.originServerID = originServerID
        self.segmentSize = segmentSize
    }

    /// Parses the first ``length`` bytes of `bytes`.
    ///
    /// - Throws: `truncated`, `not_keyhold_file`, `unsupported_version` or `invalid_header`.
    public init<Bytes: Collection>(parsing bytes: Bytes) throws where Bytes.Element == UInt8 {
        let b = Array(bytes.prefix(Self.length))
        let magicPart = Array(b.prefix(Self.magic.count))
        guard magicPart == Array(Self.magic.prefix(magicPart.count)) else {
            throw KeyholdError(
                .notKeyholdFile,
                "the input is not a Keyhold encrypted file (wrong magic bytes)",
                hint: "check the file name; 'keyhold file info FILE' recognises Keyhold files"
            )
        }
        guard b.count == Self.length else { throw Self.truncatedHeader(count: b.count) }
        guard b[8] == Self.version else {
            throw KeyholdError(
                .unsupportedVersion,
                "the file has format version \(b[8]); this keyhold reads version \(Self.version)",
                hint: "decrypt it with the keyhold release that wrote it, or a newer one"
            )
        }
        let size = b[41...44].reduce(0) { $0 << 8 | Int($1) }
        // `init?(bytes:)` cannot fail on exactly 16 bytes.
        try self.init(keyID: KeyID(bytes: b[9..<25])!, originServerID: ServerID(bytes: b[25..<41])!, segmentSize: size)
    }

    /// The 45 header bytes; also the associated data of the streaming body.
    public var encoded: [UInt8] {
        var out = Self.magic
        out.reserveCapacity(Self.length)
        out.append(Self.version)
        out += keyID.bytes
        out += originServerID.bytes
        let s = UInt32(segmentSize)
        out += [UInt8(s >> 24), UInt8(truncatingIfNeeded: s >> 16), UInt8(truncatingIfNeeded: s >> 8), UInt8(truncatingIfNeeded: s)]
        return out
    }

    static func truncatedHeader(count: Int) -> KeyholdError {
        KeyholdError(
            .truncated,
            count == 0 ? "the input is empty" : "the input ends inside the Keyhold header (\(count) bytes)",
            hint: "the file was cut short; copy it again from its source"
        )
    }
}
