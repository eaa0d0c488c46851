import Foundation
import KeyholdCore
import KeyholdProtocol
import Testing

/// The server writes key responses with a direct writer (its hot path); it must give exactly the
/// bytes of the protocol's JSON encoder, whatever the label, date or secret.
@Suite struct KeyMaterialWireJSONTests {
    /// Labels with every ASCII control character, quotes, backslashes, slashes and non-ASCII text.
    static let labels: [String] = [
        "", "laptop", "SanDisk Ultra 4C530001", "quote \" backslash \\ slash /", "tab\tnew\nline\rcr",
        "ünïcödé ✓ 鍵 🔑", String((0..<32).map { Character(Unicode.Scalar(UInt8($0))) }) + "\u{7F}",
    ]

    @Test(arguments: labels)
    func directWriterMatchesTheEncoder(label: String) throws {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<300 {
            let seconds = Double.random(in: 0..<253_402_300_800, using: &generator)
            let record = KeyRecord(
                kind: Bool.random() ? .file : .drive, originServerID: .random(), originDeviceID: .random(),
                created: Date(timeIntervalSince1970: seconds), label: label, state: Bool.random() ? .active : .revoked
            )
            let response = KeyMaterial(record: record, secret: .generate())
            let direct = try #require(response.wireJSON())
            let encoded = try WireFormat.encoder().encode(response)
            #expect(direct == Array(encoded), "\(String(decoding: direct, as: UTF8.self)) vs \(String(decoding: encoded, as: UTF8.self))")
        }
    }

    @Test func theSecretRoundTripsThroughTheWireForm() throws {
        let key = KeyMaterial(
            record: KeyRecord(kind: .drive, originServerID: .random(), originDeviceID: .random(), label: "stick"), secret: .generate())
        let back = try WireFormat.decoder().decode(KeyMaterial.self, from: Data(try #require(key.wireJSON())))
        #expect(back.record == key.record)
        #expect(back.secret.constantTimeEquals(key.secret))
        // A secret of another length is refused by the decoder itself.
        let short = #"{"record":\#(String(decoding: try WireFormat.encoder().encode(key.record), as: UTF8.self)),"secret":"c2VjcmV0"}"#
        #expect(throws: DecodingError.self) { try WireFormat.decoder().decode(KeyMaterial.self, from: Data(short.utf8)) }
    }

    @Test func edgesOfTheDateRange() throws {
        for seconds in [0, 59, 86_399, 86_400, 951_782_400, 4_107_542_399, 253_402_300_799] as [Double] {
            let response = KeyMaterial(
                record: KeyRecord(kind: .file, originServerID: .random(), originDeviceID: .random(), created: Date(timeIntervalSince1970: seconds)),
                secret: .generate()
            )
            #expect(try #require(response.wireJSON()) == Array(try WireFormat.encoder().encode(response)))
        }
        // Outside the direct writer's range the server falls back to the encoder.
        let early = KeyMaterial(
            record: KeyRecord(kind: .file, originServerID: .random(), originDeviceID: .random(), created: Date(timeIntervalSince1970: -1)),
            secret: .generate()
        )
        #expect(early.wireJSON() == nil)
    }
}
