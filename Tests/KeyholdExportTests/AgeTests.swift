import Foundation
import KeyholdCore
import KeyholdExport
import Testing

/// The age encoder and decoder against each other; the real `age` tool checks them in
/// Tests/python/test_export_interop.py.
@Suite struct AgeTests {
    let password = Array("correct horse battery staple".utf8)

    func encrypt(_ plaintext: [UInt8], workFactor: Int = 10, pieces: Int = 7) throws -> [UInt8] {
        var e = try AgeEncryptor(password: password, workFactor: workFactor)
        var out = e.start()
        let step = max(1, plaintext.count / pieces)
        var i = 0
        while i < plaintext.count {
            out += try e.append(plaintext[i..<min(plaintext.count, i + step)])
            i += step
        }
        out += try e.finish()
        return out
    }

    func decrypt(_ file: [UInt8], password: [UInt8]? = nil, piece: Int = 4093) throws -> [UInt8] {
        var d = AgeDecryptor(password: password ?? self.password)
        var out: [UInt8] = []
        var i = 0
        while i < file.count {
            out += try d.feed(file[i..<min(file.count, i + piece)])
            i += piece
        }
        out += try d.finish()
        return out
    }

    static let sizes = [0, 1, 65_535, 65_536, 65_537, 2 * 65_536, 200_000]

    @Test(arguments: sizes)
    func roundTrip(size: Int) throws {
        let plaintext = SecureRandom.bytes(count: size)
        let file = try encrypt(plaintext)
        #expect(String(decoding: file.prefix(22), as: UTF8.self) == "age-encryption.org/v1\n")
        let chunks = max(1, (size + 65_535) / 65_536)
        let headerEnd = file.firstRange(of: Array("\n--- ".utf8))!.upperBound + 44
        #expect(file.count == headerEnd + 16 + size + 16 * chunks)
        #expect(try decrypt(file) == plaintext)
        #expect(try decrypt(file, piece: 1) == plaintext)
    }

    @Test func headerNamesScryptAndWorkFactor() throws {
        let file = try encrypt([1, 2, 3], workFactor: 18)
        let lines = String(decoding: file.prefix(200), as: UTF8.self).split(separator: "\n")
        let stanza = lines[1].split(separator: " ")
        #expect(stanza[0] == "->" && stanza[1] == "scrypt" && stanza[3] == "18")
        var d = AgeDecryptor(password: password)
        _ = try d.feed(file)
        #expect(try d.finish() == [1, 2, 3])
        #expect(d.workFactor == 18)
    }

    @Test func wrongPasswordIsRefused() throws {
        let file = try encrypt(Array("secret keys".utf8))
        let error = try #require(throws: KeyholdError.self) { try decrypt(file, password: Array("Correct horse battery staple".utf8)) }
        #expect(error.code == .wrongPassword)
    }

    /// Cut the file at every class of point: inside the header, at the MAC line, inside the nonce,
    /// inside a chunk, at a chunk boundary, inside the last tag.
    @Test func everyTruncationIsRefused() throws {
        let plaintext = SecureRandom.bytes(count: 3 * 65_536 + 100)
        let file = try encrypt(plaintext)
        let headerEnd = file.firstRange(of: Array("\n--- ".utf8))!.upperBound + 44
        let sealed = 65_536 + 16
        let points = [
            0, 5, 30, headerEnd - 10, headerEnd - 1, headerEnd, headerEnd + 8, headerEnd + 16, headerEnd + 16 + 100,
            headerEnd + 16 + sealed, headerEnd + 16 + 2 * sealed, headerEnd + 16 + 3 * sealed, file.count - 16, file.count - 1,
        ]
        for point in points {
            #expect(throws: KeyholdError.self, "cut at \(point)") { try decrypt(Array(file[..<point])) }
        }
        let atBoundary = try #require(throws: KeyholdError.self) { try decrypt(Array(file[..<(headerEnd + 16 + sealed)])) }
        #expect(atBoundary.code == .truncated)
    }

    @Test func everyFlippedBitRegionIsRefused() throws {
        let file = try encrypt(SecureRandom.bytes(count: 70_000))
        let headerEnd = file.firstRange(of: Array("\n--- ".utf8))!.upperBound + 44
        // version line, stanza salt, stanza body, MAC, nonce, first chunk, last tag
        for offset in [3, 35, 70, headerEnd - 5, headerEnd + 3, headerEnd + 16 + 10, file.count - 1] {
            var bad = file
            bad[offset] ^= 0x01
            #expect(throws: KeyholdError.self, "bit flipped at \(offset)") { try decrypt(bad) }
        }
    }

    @Test func trailingDataIsRefused() throws {
        var file = try encrypt(Array("x".utf8))
        file += [0]
        #expect(throws: KeyholdError.self) { try decrypt(file) }
    }

    @Test func headerRules() throws {
        let file = try encrypt(Array("x".utf8))
        let text = String(decoding: file, as: UTF8.self)
        let stanza = String(text.split(separator: "\n")[1])
        func refuse(_ replacement: String, _ note: Comment) {
            let bad = Array(text.replacingOccurrences(of: stanza, with: replacement).utf8)
            #expect(throws: KeyholdError.self, note) { try decrypt(bad) }
        }
        let parts = stanza.split(separator: " ")
        refuse("-> X25519 \(parts[2])", "not a password recipient")
        refuse("\(parts[0]) \(parts[1]) \(parts[2]) 010", "leading zero in the work factor")
        refuse("\(parts[0]) \(parts[1]) \(parts[2]) 21", "work factor above the limit")
        refuse("\(parts[0]) \(parts[1]) \(parts[2])", "missing work factor")
        refuse("\(parts[0]) \(parts[1]) \(parts[2])= \(parts[3])", "padded base64")
    }
}

@Suite struct ExportDocumentTests {
    func document(_ keys: [ExportedKey]) throws -> [UInt8] {
        var writer = ExportDocumentWriter()
        var out = writer.opening(server: .random(), exported: Date())
        for k in keys { out += try writer.element(k) }
        return out + writer.closing()
    }

    func sampleKeys(_ n: Int) -> [ExportedKey] {
        (0..<n).map { i in
            ExportedKey(
                KeyMaterial(
                    record: KeyRecord(kind: .file, originServerID: .random(), originDeviceID: .random(), label: "k\(i) \"quoted\" {braces}"),
                    secret: .generate()), blocked: i % 3 == 0)
        }
    }

    func read(_ bytes: [UInt8], piece: Int) throws -> [ExportedKey] {
        var reader = ExportDocumentReader()
        var keys: [ExportedKey] = []
        var i = 0
        while i < bytes.count {
            keys += try reader.feed(bytes[i..<min(bytes.count, i + piece)])
            i += piece
        }
        try reader.finish()
        return keys
    }

    @Test(arguments: [1, 7, 100_000])
    func roundTripInAnyPieces(piece: Int) throws {
        let keys = sampleKeys(25)
        let back = try read(try document(keys), piece: piece)
        #expect(back.map(\.record.id) == keys.map(\.record.id))
        #expect(back.map(\.secret) == keys.map(\.secret))
        #expect(back.map(\.blocked) == keys.map(\.blocked))
        #expect(back.map(\.record.label) == keys.map(\.record.label))
    }

    @Test func anElementIsOneFlatObjectWithSortedKeys() throws {
        // docs/spec/export.md: the record's fields, `blocked` and `secret` side by side.
        let record = KeyRecord(
            id: KeyID("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")!, kind: .drive, originServerID: ServerID("11111111-2222-3333-4444-555555555555")!,
            originDeviceID: DeviceID("66666666-7777-8888-9999-aaaaaaaaaaaa")!, created: Date(timeIntervalSince1970: 1_800_000_000),
            label: "USB \"stick\"/1"
        )
        var writer = ExportDocumentWriter()
        let element = try writer.element(
            ExportedKey(KeyMaterial(record: record, secret: try SecretKey(bytes: Data(repeating: 7, count: 32))), blocked: true))
        let expected =
            #"{"blocked":true,"created":"2027-01-15T08:00:00Z","id":"0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0","kind":"drive","label":"USB \"stick\"/1","#
            + #""origin_device_id":"66666666-7777-8888-9999-aaaaaaaaaaaa","origin_server_id":"11111111-2222-3333-4444-555555555555","#
            + #""secret":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=","state":"active"}"#
        #expect(String(decoding: element, as: UTF8.self) == expected)
        var reader = ExportDocumentReader()
        let back = try reader.feed(writer.opening(server: record.originServerID, exported: Date()) + element + writer.closing())
        #expect(back.map(\.record) == [record] && back.map(\.blocked) == [true])
    }

    @Test func emptyExportAndForeignLayout() throws {
        #expect(try read(try document([]), piece: 3).isEmpty)
        // Any JSON layout works: pretty-printed, other member order after version, no count.
        let keys = sampleKeys(2)
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        let items = try keys.map { String(decoding: try encoder.encode($0), as: UTF8.self) }.joined(separator: " ,\n\t ")
        let text = "  {\n \"format\" : \"keyhold-key-export\", \"version\":1, \"note\": {\"a\": [1, \"]\"]}, \"keys\" : [ \(items) ] }\n"
        #expect(try read(Array(text.utf8), piece: 5).map(\.record.id) == keys.map(\.record.id))
    }

    @Test func malformedDocumentsAreRefused() throws {
        let good = String(decoding: try document(sampleKeys(2)), as: UTF8.self)
        let cases: [(String, KeyholdError.Code)] = [
            (good.replacingOccurrences(of: "\"version\":1", with: "\"version\":2"), .unsupportedVersion),
            (good.replacingOccurrences(of: "keyhold-key-export", with: "something-else"), .invalidRequest),
            (good.replacingOccurrences(of: "\"count\":2", with: "\"count\":3"), .invalidRequest),
            (String(good.dropLast(3)), .invalidRequest),
            (good + "{}", .invalidRequest),
            ("{\"keys\":[],\"format\":\"keyhold-key-export\",\"version\":1}", .invalidRequest),
            ("[]", .invalidRequest),
        ]
        for (text, code) in cases {
            let error = try #require(throws: KeyholdError.self, "\(text.prefix(60))") { try read(Array(text.utf8), piece: 11) }
            #expect(error.code == code)
        }
    }
}
