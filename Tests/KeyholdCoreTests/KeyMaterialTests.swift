import Foundation
import KeyholdCore
import Testing

@Suite struct KeyMaterialTests {
    func sample() -> KeyMaterial {
        KeyMaterial(
            record: KeyRecord(
                kind: .drive, originServerID: .random(), originDeviceID: .random(),
                created: Date(timeIntervalSince1970: 1_800_000_000), label: "SanDisk Ultra 4C53", state: .active
            ),
            secret: .generate()
        )
    }

    @Test func keyFileRoundTrip() throws {
        let m = sample()
        let json = try m.keyFileJSON()
        let back = try KeyMaterial(keyFileJSON: json)
        #expect(back.record == m.record)
        #expect(back.secret.constantTimeEquals(m.secret))
        let object = try #require(try JSONSerialization.jsonObject(with: json) as? [String: Any])
        #expect(Set(object.keys) == ["id", "kind", "origin_server_id", "origin_device_id", "created", "label", "state", "secret"])
        #expect(object["kind"] as? String == "drive")
        #expect(object["created"] as? String == "2027-01-15T08:00:00Z")
    }

    @Test func malformedKeyFilesNameTheProblem() throws {
        var object = try #require(try JSONSerialization.jsonObject(with: sample().keyFileJSON()) as? [String: Any])
        object.removeValue(forKey: "origin_server_id")
        let missing = try JSONSerialization.data(withJSONObject: object)
        let e1 = #expect(throws: KeyholdError.self) { try KeyMaterial(keyFileJSON: missing) }
        #expect(e1?.code == .invalidKey)
        #expect(e1?.message.contains("origin_server_id") == true)

        object["origin_server_id"] = ServerID.random().description
        object["secret"] = "AAAA"
        let short = try JSONSerialization.data(withJSONObject: object)
        let e2 = #expect(throws: KeyholdError.self) { try KeyMaterial(keyFileJSON: short) }
        #expect(e2?.message.contains("32 bytes") == true)

        object["secret"] = Data(count: 32).base64EncodedString()
        object["kind"] = "usb"
        let kind = try JSONSerialization.data(withJSONObject: object)
        #expect(throws: KeyholdError.self) { try KeyMaterial(keyFileJSON: kind) }
    }

    @Test func errorsCarryCodeMessageAndHint() {
        let e = KeyholdError(.truncated, "cut", hint: "copy again")
        #expect(e.code.rawValue == "truncated")
        #expect(e.description == "truncated: cut")
        #expect(KeyholdError.Code.authenticationFailed.rawValue == "authentication_failed")
    }
}
