import Foundation
import KeyholdCore
import Testing

@Suite struct IdentifierTests {
    @Test func textRoundTripIsLowercaseUUID() throws {
        let id = KeyID.random()
        let text = id.description
        #expect(text.count == 36)
        #expect(text == text.lowercased())
        #expect(text.split(separator: "-").map(\.count) == [8, 4, 4, 4, 12])
        #expect(KeyID(text) == id)
        #expect(KeyID(text.uppercased()) == id)
        // Foundation reads it as a UUID with the same bytes.
        let uuid = try #require(UUID(uuidString: text))
        #expect(withUnsafeBytes(of: uuid.uuid) { Array($0) } == id.bytes)
    }

    @Test func bytesRoundTrip() {
        let id = ServerID.random()
        #expect(id.bytes.count == 16)
        #expect(ServerID(bytes: id.bytes) == id)
        #expect(ServerID(bytes: id.bytes.dropLast()) == nil)
        #expect(KeyID(bytes: [UInt8](0..<16))?.description == "00010203-0405-0607-0809-0a0b0c0d0e0f")
    }

    @Test(arguments: [
        "", "0f1e2d3c4b5a69788796a5b4c3d2e1f0", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0a",
        "0f1e2d3c_4b5a-6978-8796-a5b4c3d2e1f0", "0f1e2d3g-4b5a-6978-8796-a5b4c3d2e1f0", " f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
    ])
    func rejectsMalformedText(_ text: String) {
        #expect(KeyID(text) == nil)
    }

    @Test func randomIdentifiersDiffer() {
        let ids = Set((0..<1000).map { _ in KeyID.random() })
        #expect(ids.count == 1000)
        #expect(!ids.contains(.zero))
    }

    @Test func codableAsString() throws {
        let id = DeviceID.random()
        let json = try JSONEncoder().encode([id])
        #expect(String(decoding: json, as: UTF8.self) == "[\"\(id)\"]")
        #expect(try JSONDecoder().decode([DeviceID].self, from: json) == [id])
        #expect(throws: DecodingError.self) { try JSONDecoder().decode([DeviceID].self, from: Data("[\"nope\"]".utf8)) }
    }
}
