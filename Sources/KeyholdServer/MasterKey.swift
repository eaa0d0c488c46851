import Crypto
import Foundation
import KeyholdCore
import KeyholdProtocol
import KeyholdStore

/// The server's master key: wraps every key secret the repository stores (AES-256-GCM with the
/// key id as associated data) and computes the fingerprint that detects conflicting secrets.
///
/// It lives in a root-only file (0600) in the data directory, never in the database, so a database
/// dump alone reveals no key.
struct MasterKey: Sendable {
    private let wrapping: SymmetricKey
    private let fingerprinting: SymmetricKey

    init(_ secret: SecretKey) {
        let ikm = secret.withUnsafeBytes { SymmetricKey(data: $0) }
        wrapping = HKDF<SHA256>.deriveKey(inputKeyMaterial: ikm, info: Data("keyhold master: wrap v1".utf8), outputByteCount: 32)
        fingerprinting = HKDF<SHA256>.deriveKey(inputKeyMaterial: ikm, info: Data("keyhold master: fingerprint v1".utf8), outputByteCount: 32)
    }

    /// `nonce || ciphertext || tag`.
    func wrap(_ secret: SecretKey, keyID: KeyID) throws -> [UInt8] {
        let box = try secret.withUnsafeBytes { try AES.GCM.seal($0, using: wrapping, authenticating: keyID.bytes) }
        guard let combined = box.combined else { throw KeyholdError(.internalError, "AES-GCM gave no combined form", hint: "report this bug") }
        return Array(combined)
    }

    func unwrap(_ wrapped: [UInt8], keyID: KeyID) throws -> SecretKey {
        do {
            let box = try AES.GCM.SealedBox(combined: wrapped)
            var plain = try AES.GCM.open(box, using: wrapping, authenticating: keyID.bytes)
            defer { plain.withUnsafeMutableBytes { SecretKey.wipe($0) } }
            return try SecretKey(bytes: plain)
        } catch {
            throw KeyholdError(
                .internalError, "the stored secret of key \(keyID) does not unwrap with this server's master key",
                hint: "check that master.key in the data directory is the one this repository was written with"
            )
        }
    }

    /// A key ready for the repository: its secret wrapped and fingerprinted under this master key.
    func store(_ record: KeyRecord, secret: SecretKey, provenance: KeyProvenance, blocked: Bool = false) throws -> StoredKey {
        StoredKey(
            record: record, wrappedSecret: try wrap(secret, keyID: record.id), secretFingerprint: fingerprint(secret, keyID: record.id),
            provenance: provenance, blocked: blocked
        )
    }

    /// HMAC-SHA256 over the key id and the secret: equal for equal secrets, useless without the master key.
    func fingerprint(_ secret: SecretKey, keyID: KeyID) -> [UInt8] {
        var mac = HMAC<SHA256>(key: fingerprinting)
        mac.update(data: keyID.bytes)
        secret.withUnsafeBytes { mac.update(data: $0) }
        return Array(mac.finalize())
    }
}
