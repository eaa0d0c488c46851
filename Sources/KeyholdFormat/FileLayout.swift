import KeyholdCore

// This file needs no cryptography, so the header fuzzer (Fuzz/) can compile it with plain swiftc.

/// Sizes fixed by Tink's AES-256-GCM-HKDF streaming format (`docs/spec/file-format.md` §2, §4).
enum StreamConstants {
    static let saltLength = 32
    static let noncePrefixLength = 7
    static let tagLength = 16
    /// Length of the Tink header: one length byte, the salt, the nonce prefix.
    static let tinkHeaderLength = 1 + saltLength + noncePrefixLength
}

/// The sizes a Keyhold file claims, computed from its header and its length alone
/// (`docs/spec/file-format.md` §7). Unauthenticated until the file is decrypted.
public struct FileLayout: Sendable, Equatable {
    /// Total size of the file.
    public var fileSize: Int
    /// Number of segments.
    public var segments: Int
    /// Plaintext length the segments hold.
    public var plaintextLength: Int

    /// Computes the layout; throws `truncated` when the size cannot hold the headers and one tag.
    public init(header: FileHeader, fileSize: Int) throws {
        let body = fileSize - FileHeader.length - StreamConstants.tinkHeaderLength
        guard body >= StreamConstants.tagLength else { throw FileFormatError.shortLastSegment }
        let first = header.segmentSize - StreamConstants.tinkHeaderLength
        var n = 1
        if body > first {
            let rest = body - first
            n += (rest + header.segmentSize - 1) / header.segmentSize
            // A trailing piece shorter than a tag cannot be a segment.
            guard rest % header.segmentSize == 0 || rest % header.segmentSize >= StreamConstants.tagLength else {
                throw FileFormatError.shortLastSegment
            }
        }
        self.fileSize = fileSize
        self.segments = n
        self.plaintextLength = body - StreamConstants.tagLength * n
    }

    /// Size of the encrypted file for a plaintext of `plaintextLength` bytes.
    public static func encryptedSize(plaintextLength: Int, segmentSize: Int) -> Int {
        let full = segmentSize - StreamConstants.tagLength
        let first = full - StreamConstants.tinkHeaderLength
        var n = 1
        if plaintextLength > first { n += (plaintextLength - first + full - 1) / full }
        return FileHeader.length + StreamConstants.tinkHeaderLength + plaintextLength + StreamConstants.tagLength * n
    }
}

/// The format's errors, worded once.
enum FileFormatError {
    static func authenticationFailed(segment: UInt32, last: Bool) -> KeyholdError {
        let ending =
            last
            ? "the key is wrong, or the file was altered or cut short"
            : "the key is wrong, or the file was altered, reordered or extended"
        return KeyholdError(
            .authenticationFailed,
            "segment \(segment) failed authentication: \(ending)",
            hint: "check that you use the right key; if you do, the file is damaged: restore it from a copy"
        )
    }

    static func truncatedTinkHeader(count: Int) -> KeyholdError {
        KeyholdError(
            .truncated,
            "the input ends inside the stream header (\(count) of \(StreamConstants.tinkHeaderLength) bytes)",
            hint: "the file was cut short; copy it again from its source"
        )
    }

    static let shortLastSegment = KeyholdError(
        .truncated,
        "the last segment is shorter than an authentication tag",
        hint: "the file was cut short; copy it again from its source"
    )

    static let tooManySegments = KeyholdError(
        .inputTooLarge,
        "the input needs more than 2^32 segments",
        hint: "use a larger --segment-size"
    )
}
