import Foundation
import KeyholdCore
import KeyholdProtocol
import Testing

/// The server writes key responses with a direct writer (its hot path); it must give exactly the
/// bytes of the protocol's JSON encoder, whatever the label, date or secret.
@Suite struct KeyResponseJSONTests {
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
            let secret = Data((0..<32).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
            let response = KeyResponse(record: record, secret: secret)
            let direct = try #require(response.wireJSON())
            let encoded = try WireFormat.encoder().encode(response)
            #expect(direct == Array(encoded), "\(String(decoding: direct, as: UTF8.self)) vs \(String(decoding: encoded, as: UTF8.self))")
        }
    }

    @Test func edgesOfTheDateRange() throws {
        for seconds in [0, 59, 86_399, 86_400, 951_782_400, 4_107_542_399, 253_402_300_799] as [Double] {
            let response = KeyResponse(
                record: KeyRecord(kind: .file, originServerID: .random(), originDeviceID: .random(), created: Date(timeIntervalSince1970: seconds)),
                secret: "c2VjcmV0"
            )
            #expect(try #require(response.wireJSON()) == Array(try WireFormat.encoder().encode(response)))
        }
        // Outside the direct writer's range the server falls back to the encoder.
        let early = KeyResponse(
            record: KeyRecord(kind: .file, originServerID: .random(), originDeviceID: .random(), created: Date(timeIntervalSince1970: -1)),
            secret: ""
        )
        #expect(early.wireJSON() == nil)
    }
}
