import Crypto
public import Foundation
public import KeyholdCore

extension KeyMaterial {
    /// The HKDF `info` of a key id (docs/spec/key-id.md).
    static let idInfo = Array("keyhold key id v1".utf8)

    /// The id a key with `secret` carries: the first 16 bytes of HKDF-SHA256 with the secret as
    /// input key material, an empty salt and the info `keyhold key id v1` (docs/spec/key-id.md).
    /// Knowing an id tells nothing about the secret, and nobody can choose a second secret for
    /// an id, so a key whose id is derived proves itself in a conflict.
    public static func derivedID(for secret: SecretKey) -> KeyID {
        let bytes = secret.withUnsafeBytes { ikm in
            HKDF<SHA256>.deriveKey(inputKeyMaterial: SymmetricKey(data: ikm), info: idInfo, outputByteCount: 16)
                .withUnsafeBytes { Array($0) }
        }
        return KeyID(bytes: bytes)!
    }

    /// Whether the id is derived from the secret (every key this version makes; keys made before
    /// it have random ids and prove nothing).
    public var idIsDerived: Bool { record.id == Self.derivedID(for: secret) }

    /// A new key: a random secret and the id derived from it.
    public static func generate(
        kind: KeyKind, originServerID: ServerID, originDeviceID: DeviceID, created: Date = Date(), label: String = ""
    )
        -> KeyMaterial
    {
        let secret = SecretKey.generate()
        return KeyMaterial(
            record: KeyRecord(
                id: derivedID(for: secret), kind: kind, originServerID: originServerID, originDeviceID: originDeviceID, created: created,
                label: label),
            secret: secret)
    }
}
