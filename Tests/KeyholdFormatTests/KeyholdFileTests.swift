import Crypto
import Foundation
import KeyholdCore
import KeyholdFormat
import Testing

@Suite struct KeyholdFileTests {
    static let small = 1024
    /// Plaintext bytes in segment 0 and in later segments, for a segment size.
    static func capacities(_ s: Int) -> (first: Int, full: Int) { (s - 56, s - 16) }

    static func roundTrip(size: Int, segmentSize: Int, chunk: Int = .max) throws -> ([UInt8], [UInt8], StreamSummary) {
        let key = SecretKey.generate()
        let header = try FileHeader(keyID: .random(), originServerID: .random(), segmentSize: segmentSize)
        let plaintext = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        var source = MemorySource(plaintext, chunk: chunk)
        var sink = MemorySink()
        let enc = try KeyholdFile.encrypt(from: &source, to: &sink, key: key, header: header)
        #expect(enc.plaintextBytes == size)
        var csource = MemorySource(sink.bytes, chunk: chunk)
        var out = MemorySink()
        let dec = try KeyholdFile.decrypt(from: &csource, to: &out, key: key, expecting: header.keyID)
        #expect(dec == enc)
        #expect(sink.bytes.count == FileLayout.encryptedSize(plaintextLength: size, segmentSize: segmentSize))
        let layout = try FileLayout(header: header, fileSize: sink.bytes.count)
        #expect(layout.plaintextLength == size)
        #expect(layout.segments == enc.segments)
        return (plaintext, out.bytes, enc)
    }

    @Test(arguments: [
        0, 1, 1024 - 56 - 1, 1024 - 56, 1024 - 56 + 1, 1024 - 56 + 1008 - 1, 1024 - 56 + 1008, 1024 - 56 + 1008 + 1, 10_000,
    ])
    func roundTripSmallSegments(size: Int) throws {
        let (p, d, summary) = try Self.roundTrip(size: size, segmentSize: Self.small)
        #expect(p == d)
        // No empty trailing segment: n = 1 for anything that fits segment 0.
        if size <= 1024 - 56 { #expect(summary.segments == 1) }
        if size == 1024 - 56 + 1008 { #expect(summary.segments == 2) }
    }

    @Test(arguments: [0, 1, (1 << 20) - 57, (1 << 20) - 56, (1 << 20) - 55, 5 * (1 << 20) + 12345])
    func roundTripDefaultSegments(size: Int) throws {
        let (p, d, _) = try Self.roundTrip(size: size, segmentSize: FileHeader.defaultSegmentSize)
        #expect(p == d)
    }

    @Test func shortReadsDoNotChangeTheOutput() throws {
        // A source that returns 7 bytes at a time (like a slow pipe) must give the same segmenting.
        let (p, d, summary) = try Self.roundTrip(size: 5000, segmentSize: Self.small, chunk: 7)
        #expect(p == d)
        #expect(summary.segments == 5)
    }

    @Test func encryptionIsRandomised() throws {
        let key = SecretKey.generate()
        let header = try FileHeader(keyID: .random(), originServerID: .zero)
        var outputs: [[UInt8]] = []
        for _ in 0..<2 {
            var source = MemorySource(Array("same plaintext".utf8))
            var sink = MemorySink()
            try KeyholdFile.encrypt(from: &source, to: &sink, key: key, header: header)
            outputs.append(sink.bytes)
        }
        #expect(outputs[0].prefix(45) == outputs[1].prefix(45))
        #expect(outputs[0] != outputs[1], "fresh salt and nonce prefix per file")
    }

    @Test func keyMismatchIsCheckedBeforeDecryption() throws {
        let key = SecretKey.generate()
        let header = try FileHeader(keyID: .random(), originServerID: .zero)
        var source = MemorySource([1, 2, 3])
        var sink = MemorySink()
        try KeyholdFile.encrypt(from: &source, to: &sink, key: key, header: header)
        var csource = MemorySource(sink.bytes)
        var out = MemorySink()
        let error = #expect(throws: KeyholdError.self) {
            try KeyholdFile.decrypt(from: &csource, to: &out, key: key, expecting: .random())
        }
        #expect(error?.code == .keyMismatch)
        #expect(out.bytes.isEmpty)
    }

    @Test func headerLayoutMatchesTheSpec() throws {
        let keyID = KeyID(bytes: [UInt8](1...16))!
        let server = ServerID(bytes: [UInt8](17...32))!
        let header = try FileHeader(keyID: keyID, originServerID: server, segmentSize: 0x0010_0000)
        let expected: [UInt8] = [0x89, 0x4B, 0x48, 0x46, 0x0D, 0x0A, 0x1A, 0x0A, 0x01] + [UInt8](1...32) + [0x00, 0x10, 0x00, 0x00]
        #expect(header.encoded == expected)
        #expect(try FileHeader(parsing: expected) == header)
    }

    @Test func headerRejectsOutOfRangeSegmentSizes() {
        for s in [0, 56, 1023, 8 * 1024 * 1024 + 1] {
            let e = #expect(throws: KeyholdError.self) { try FileHeader(keyID: .zero, originServerID: .zero, segmentSize: s) }
            #expect(e?.code == .invalidHeader)
        }
    }

    /// The body after the Keyhold header is Tink's stream: check the Tink header and the segment
    /// lengths directly, and decrypt segment 0 by hand with swift-crypto's primitives.
    @Test func bodyIsTinkStreamLayout() throws {
        let key = SecretKey.generate()
        let header = try FileHeader(keyID: .random(), originServerID: .random(), segmentSize: 1024)
        let plaintext = [UInt8](repeating: 0x61, count: 2000)
        var source = MemorySource(plaintext)
        var sink = MemorySink()
        try KeyholdFile.encrypt(from: &source, to: &sink, key: key, header: header)
        let file = sink.bytes
        #expect(file[45] == 40)
        let salt = Array(file[46..<78])
        let prefix = Array(file[78..<85])
        let dk = key.withUnsafeBytes { ikm in
            HKDF<SHA256>.deriveKey(inputKeyMaterial: SymmetricKey(data: ikm), salt: salt, info: header.encoded, outputByteCount: 32)
        }
        let seg0 = Array(file[85..<(85 + 1024 - 40)])
        let box = try AES.GCM.SealedBox(
            nonce: AES.GCM.Nonce(data: prefix + [0, 0, 0, 0, 0]), ciphertext: seg0.dropLast(16), tag: seg0.suffix(16)
        )
        #expect(Array(try AES.GCM.open(box, using: dk)) == Array(plaintext.prefix(1024 - 56)))
    }
}
