import Foundation
import KeyholdCore
import Testing

@Suite struct SecretKeyTests {
    @Test func descriptionsNeverShowBytes() throws {
        let bytes = [UInt8](repeating: 0xAB, count: 32)
        let key = try SecretKey(bytes: bytes)
        for text in [key.description, key.debugDescription, "\(key)", String(reflecting: key)] {
            #expect(!text.lowercased().contains("ab"), "\(text)")
            #expect(!text.contains("171"))
            #expect(text.contains("redacted"))
        }
        let material = KeyMaterial(record: KeyRecord(kind: .file, originServerID: .zero, originDeviceID: .zero), secret: key)
        // The key id is random hex and may hold "ab" itself: everything but the id is checked.
        let text = "\(material)".replacingOccurrences(of: material.record.id.description, with: "<id>")
        #expect(text.contains("<id>") && !text.lowercased().contains("ab") && !text.contains("171") && text.contains("redacted"), "\(text)")
    }

    @Test func rejectsWrongLengths() {
        for n in [0, 16, 31, 33, 64] {
            #expect(throws: KeyholdError.self) { try SecretKey(bytes: [UInt8](repeating: 1, count: n)) }
        }
        do {
            _ = try SecretKey(bytes: [UInt8](repeating: 1, count: 31))
        } catch let error as KeyholdError {
            #expect(error.code == .invalidKey)
            #expect(!error.hint.isEmpty)
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }

    @Test func generatedKeysAreRandomAndComparable() throws {
        let a = SecretKey.generate()
        let b = SecretKey.generate()
        #expect(!a.constantTimeEquals(b))
        let copy = try a.withUnsafeBytes { try SecretKey(bytes: Array($0)) }
        #expect(a.constantTimeEquals(copy))
        #expect(a.withUnsafeBytes { $0.count } == 32)
    }

    @Test func wipeZeroesMemory() {
        var buffer = [UInt8](repeating: 0x5A, count: 48)
        buffer.withUnsafeMutableBytes { SecretKey.wipe($0) }
        #expect(buffer.allSatisfy { $0 == 0 })
    }
}

/// Client text on its way to people.
@Suite struct PrintableTextTests {
    @Test func controlAndFormatCharactersAreEscapedOntoOneLine() {
        #expect(PrintableText.escaped("laptop-7") == "laptop-7")
        #expect(PrintableText.escaped("ünïcödé 鍵 🔑") == "ünïcödé 鍵 🔑")
        #expect(PrintableText.escaped("a\nb\tc\r\\") == "a\\nb\\tc\\r\\\\")
        #expect(PrintableText.escaped("bell\u{7}del\u{7F}c1\u{85}rlo\u{202E}ls\u{2028}") == "bell\\u{7}del\\u{7f}c1\\u{85}rlo\\u{202e}ls\\u{2028}")
        #expect(!PrintableText.escaped("x\ny\u{202E}").contains("\n"))
    }

    @Test func cleanMeansPrintableAndBounded() {
        #expect(PrintableText.isClean("laptop 7 (Ümit)", limit: 64))
        #expect(!PrintableText.isClean("laptop\n", limit: 64))
        #expect(!PrintableText.isClean("rlo\u{202E}", limit: 64))
        #expect(!PrintableText.isClean(String(repeating: "x", count: 65), limit: 64))
    }
}
