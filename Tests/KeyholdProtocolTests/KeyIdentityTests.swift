import KeyholdCore
import KeyholdProtocol
import KeyholdTestSupport
import Testing

/// Key ids derived from secrets (docs/spec/key-id.md), against vectors computed with Python's
/// `cryptography` (scripts/gen-key-id-vectors.py).
@Suite struct KeyIdentityTests {
    @Test(arguments: try TestVector.load(suite: "key-id"))
    func theDerivedIDMatchesAnIndependentImplementation(_ vector: TestVector) throws {
        let secret = try SecretKey(bytes: vector.key)
        let text = try #require(vector.fields["id"])
        let expected = try #require(KeyID(text))
        #expect(KeyMaterial.derivedID(for: secret) == expected)
    }

    @Test func newKeysProveTheirIDAndOthersDoNot() throws {
        let key = KeyMaterial.generate(kind: .file, originServerID: .random(), originDeviceID: .random(), label: "x")
        #expect(key.idIsDerived)
        #expect(key.record.label == "x" && key.record.kind == .file)
        // Another secret under the same id, or a random id: nothing proven.
        #expect(!KeyMaterial(record: key.record, secret: .generate()).idIsDerived)
        #expect(!KeyMaterial(record: KeyRecord(kind: .file, originServerID: .random(), originDeviceID: .random()), secret: key.secret).idIsDerived)
    }
}
