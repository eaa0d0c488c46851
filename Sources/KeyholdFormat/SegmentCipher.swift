import Crypto
import Foundation
import KeyholdCore

/// The per-file state of Tink's AES-256-GCM-HKDF streaming AEAD: the derived key and the nonce prefix
/// (`docs/spec/file-format.md` §2–§4).
struct SegmentCipher {
    static let saltLength = StreamConstants.saltLength
    static let noncePrefixLength = StreamConstants.noncePrefixLength
    static let tagLength = StreamConstants.tagLength
    static let headerLength = StreamConstants.tinkHeaderLength

    let derivedKey: SymmetricKey
    let noncePrefix: [UInt8]

    /// Derives the segment key from the file key, the salt and the associated data (the Keyhold header).
    init(key: SecretKey, salt: [UInt8], noncePrefix: [UInt8], associatedData: [UInt8]) {
        precondition(salt.count == Self.saltLength && noncePrefix.count == Self.noncePrefixLength)
        let ikm = key.withUnsafeBytes { SymmetricKey(data: $0) }
        derivedKey = HKDF<SHA256>.deriveKey(
            inputKeyMaterial: ikm, salt: salt, info: associatedData, outputByteCount: 32
        )
        self.noncePrefix = noncePrefix
    }

    /// The Tink header for this file: `0x28 || salt || nonce prefix`.
    static func tinkHeader(salt: [UInt8], noncePrefix: [UInt8]) -> [UInt8] {
        [UInt8(headerLength)] + salt + noncePrefix
    }

    private func nonce(segment: UInt32, last: Bool) -> AES.GCM.Nonce {
        var n = noncePrefix
        n.reserveCapacity(12)
        n += [
            UInt8(segment >> 24), UInt8(truncatingIfNeeded: segment >> 16),
            UInt8(truncatingIfNeeded: segment >> 8), UInt8(truncatingIfNeeded: segment), last ? 1 : 0,
        ]
        // A 12-byte nonce is always valid.
        return try! AES.GCM.Nonce(data: n)
    }

    /// Encrypts one segment and writes `ciphertext || tag` to `sink`.
    func seal(_ plaintext: UnsafeRawBufferPointer, segment: UInt32, last: Bool, to sink: inout some ByteSink) throws {
        let box = try AES.GCM.seal(plaintext, using: derivedKey, nonce: nonce(segment: segment, last: last))
        // `combined` is nonce || ciphertext || tag: write its tail in one piece, without the copies
        // that `ciphertext` and `tag` would make. (It is nil only for nonces other than 12 bytes,
        // which this format never uses.)
        if let combined = box.combined {
            try combined.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
                try sink.write(UnsafeRawBufferPointer(rebasing: raw[12...]))
            }
        } else {
            try (box.ciphertext + box.tag).withUnsafeBytes { (raw: UnsafeRawBufferPointer) in try sink.write(raw) }
        }
    }

    /// Authenticates and decrypts one segment (`ciphertext || tag`), then writes its plaintext to `sink`.
    /// Nothing is written unless the segment authenticates.
    func open(_ segmentBytes: UnsafeRawBufferPointer, segment: UInt32, last: Bool, to sink: inout some ByteSink) throws {
        let split = segmentBytes.count - Self.tagLength
        let plaintext: Data
        do {
            let box = try AES.GCM.SealedBox(
                nonce: nonce(segment: segment, last: last),
                ciphertext: UnsafeRawBufferPointer(rebasing: segmentBytes[..<split]),
                tag: UnsafeRawBufferPointer(rebasing: segmentBytes[split...])
            )
            plaintext = try AES.GCM.open(box, using: derivedKey)
        } catch {
            throw FileFormatError.authenticationFailed(segment: segment, last: last)
        }
        try plaintext.withUnsafeBytes { try sink.write($0) }
    }
}
