public import KeyholdCore

/// What one encryption or decryption did.
public struct StreamSummary: Sendable, Equatable {
    /// Plaintext bytes read (encrypt) or released (decrypt).
    public var plaintextBytes: Int
    /// Number of segments written or authenticated.
    public var segments: Int
}

/// Encrypts and decrypts Keyhold files (`docs/spec/file-format.md`) as streams.
///
/// Memory does not depend on the input size: encryption holds two plaintext segments, decryption
/// two ciphertext segments (at most 2 × 8 MiB for the largest allowed segment size).
public enum KeyholdFile {
    /// Encrypts everything `source` yields under `key`, writing header and body to `sink`.
    ///
    /// - Parameter progress: called after each segment with the plaintext bytes done so far.
    @discardableResult
    public static func encrypt(
        from source: inout some ByteSource,
        to sink: inout some ByteSink,
        key: SecretKey,
        header: FileHeader,
        progress: (Int) -> Void = { _ in }
    ) throws -> StreamSummary {
        let salt = SecureRandom.bytes(count: SegmentCipher.saltLength)
        let prefix = SecureRandom.bytes(count: SegmentCipher.noncePrefixLength)
        let headerBytes = header.encoded
        let cipher = SegmentCipher(key: key, salt: salt, noncePrefix: prefix, associatedData: headerBytes)
        try headerBytes.withUnsafeBytes { try sink.write($0) }
        try SegmentCipher.tinkHeader(salt: salt, noncePrefix: prefix).withUnsafeBytes { try sink.write($0) }

        let full = header.segmentSize - SegmentCipher.tagLength
        let first = full - SegmentCipher.headerLength
        var current = [UInt8](repeating: 0, count: full)
        var next = [UInt8](repeating: 0, count: full)
        var total = 0
        var segment: UInt32 = 0
        var currentCount = try current.withUnsafeMutableBytes {
            try source.readFully(into: UnsafeMutableRawBufferPointer(rebasing: $0[..<first]))
        }
        var capacity = first
        while true {
            // A segment is the last one when the input ends inside it or right after it (no empty
            // trailing segment, as Tink writes).
            var nextCount = 0
            if currentCount == capacity {
                nextCount = try next.withUnsafeMutableBytes { try source.readFully(into: $0) }
            }
            let last = nextCount == 0
            try current.withUnsafeBytes {
                try cipher.seal(UnsafeRawBufferPointer(rebasing: $0[..<currentCount]), segment: segment, last: last, to: &sink)
            }
            total += currentCount
            progress(total)
            if last { break }
            guard segment < UInt32.max else { throw FileFormatError.tooManySegments }
            segment += 1
            swap(&current, &next)
            currentCount = nextCount
            capacity = full
        }
        return StreamSummary(plaintextBytes: total, segments: Int(segment) + 1)
    }

    /// Reads and checks the Keyhold header and the Tink header; returns the header and the salt and nonce prefix.
    static func readHeaders(from source: inout some ByteSource) throws -> (FileHeader, salt: [UInt8], prefix: [UInt8]) {
        var headerBytes = [UInt8](repeating: 0, count: FileHeader.length)
        let n = try headerBytes.withUnsafeMutableBytes { try source.readFully(into: $0) }
        let header = try FileHeader(parsing: headerBytes[..<n])
        var tink = [UInt8](repeating: 0, count: SegmentCipher.headerLength)
        let m = try tink.withUnsafeMutableBytes { try source.readFully(into: $0) }
        guard m > 0, tink[0] == SegmentCipher.headerLength else {
            if m == 0 { throw FileFormatError.truncatedTinkHeader(count: 0) }
            throw KeyholdError(
                .invalidHeader,
                "the stream header length byte is \(tink[0]), expected \(SegmentCipher.headerLength)",
                hint: "the file is damaged or was not written by keyhold; restore it from a copy"
            )
        }
        guard m == SegmentCipher.headerLength else { throw FileFormatError.truncatedTinkHeader(count: m) }
        return (header, Array(tink[1...SegmentCipher.saltLength]), Array(tink[(1 + SegmentCipher.saltLength)...]))
    }

    /// Reads only the Keyhold header of a file, without a key.
    public static func readHeader(from source: inout some ByteSource) throws -> FileHeader {
        try readHeaders(from: &source).0
    }

    /// Decrypts a Keyhold file from `source`, writing plaintext to `sink` one authenticated segment
    /// at a time.
    ///
    /// - Parameter expecting: when given, the header's key id must match it (`key_mismatch`),
    ///   checked before any decryption.
    /// - Parameter progress: called after each segment with the plaintext bytes released so far.
    @discardableResult
    public static func decrypt(
        from source: inout some ByteSource,
        to sink: inout some ByteSink,
        key: SecretKey,
        expecting keyID: KeyID? = nil,
        progress: (Int) -> Void = { _ in }
    ) throws -> StreamSummary {
        let (header, salt, prefix) = try readHeaders(from: &source)
        if let keyID, keyID != header.keyID {
            throw KeyholdError(
                .keyMismatch,
                "the file was encrypted with key \(header.keyID), not with key \(keyID)",
                hint: "use the key the file names ('keyhold file info FILE' shows its key id)"
            )
        }
        let cipher = SegmentCipher(key: key, salt: salt, noncePrefix: prefix, associatedData: header.encoded)
        let full = header.segmentSize
        var current = [UInt8](repeating: 0, count: full)
        var next = [UInt8](repeating: 0, count: full)
        var capacity = full - SegmentCipher.headerLength
        var currentCount = try current.withUnsafeMutableBytes {
            try source.readFully(into: UnsafeMutableRawBufferPointer(rebasing: $0[..<capacity]))
        }
        var segment: UInt32 = 0
        var total = 0
        while true {
            // Look ahead one segment: this one is last exactly when nothing follows it.
            var nextCount = 0
            if currentCount == capacity {
                nextCount = try next.withUnsafeMutableBytes { try source.readFully(into: $0) }
            }
            let last = nextCount == 0
            guard currentCount >= SegmentCipher.tagLength else { throw FileFormatError.shortLastSegment }
            try current.withUnsafeBytes {
                try cipher.open(UnsafeRawBufferPointer(rebasing: $0[..<currentCount]), segment: segment, last: last, to: &sink)
            }
            total += currentCount - SegmentCipher.tagLength
            progress(total)
            if last { break }
            guard segment < UInt32.max else { throw FileFormatError.tooManySegments }
            segment += 1
            swap(&current, &next)
            currentCount = nextCount
            capacity = full
        }
        return StreamSummary(plaintextBytes: total, segments: Int(segment) + 1)
    }
}
