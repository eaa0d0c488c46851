import Crypto
import Foundation
import KeyholdCore
import KeyholdProtocol
import KeyholdStore
import Synchronization

/// The server's master key: wraps every key secret the repository stores (AES-256-GCM with the
/// key id as associated data) and computes the fingerprint that detects conflicting secrets.
///
/// It lives in a root-only file (0600) in the data directory, never in the database, so a database
/// dump alone reveals no key. The file holds one or more versions (``MasterKeyFile``); secrets
/// are wrapped under the current one and unwrapped under the version their header names
/// (``WrappedSecretHeader``). The fingerprint key does not change with the versions: it says
/// only whether two secrets are equal, and a rotation must not make equal secrets look different.
///
/// Shared by the request handlers, the hierarchy and the rewrap; the versions change under a
/// lock when a rotation adds, activates or retires one.
final class MasterKey: Sendable {
    private struct Ring {
        var wrapping: [Int: SymmetricKey]
        var current: Int
    }

    private let ring: Mutex<Ring>
    private let fingerprinting: SymmetricKey

    /// A master key of one version (1), as `init` writes it.
    convenience init(_ secret: SecretKey) {
        self.init(file: MasterKeyFile(legacy: secret))
    }

    /// The versions of `file`, the highest one current until ``use(current:)`` says otherwise.
    init(file: MasterKeyFile) {
        fingerprinting = SymmetricKey(data: file.fingerprintKey)
        ring = Mutex(Ring(wrapping: Self.wrappingKeys(file), current: file.versions.map(\.version).max() ?? 1))
    }

    private static func wrappingKeys(_ file: MasterKeyFile) -> [Int: SymmetricKey] {
        Dictionary(uniqueKeysWithValues: file.versions.map { ($0.version, Self.wrappingKey($0.key)) })
    }

    static func wrappingKey(_ key: Data) -> SymmetricKey {
        HKDF<SHA256>.deriveKey(inputKeyMaterial: SymmetricKey(data: key), info: Data("keyhold master: wrap v1".utf8), outputByteCount: 32)
    }

    /// The version new secrets are wrapped under.
    var currentVersion: Int { ring.withLock { $0.current } }
    /// The versions this process holds.
    var versions: Set<Int> { ring.withLock { Set($0.wrapping.keys) } }

    /// Wraps under `version` from now on; false when this process lacks it, and then wrapping
    /// fails (with what to do) until it has it: a secret wrapped under an older version after a
    /// newer one became current could outlive that version's retirement.
    @discardableResult
    func use(current version: Int) -> Bool {
        ring.withLock { ring in
            ring.current = version
            return ring.wrapping[version] != nil
        }
    }

    /// Takes the versions of `file` (re-read from disk: another process added or dropped one).
    func reload(_ file: MasterKeyFile) {
        let keys = Self.wrappingKeys(file)
        ring.withLock { $0.wrapping = keys }
    }

    /// `header || nonce || ciphertext || tag` under the current version (no header for version 1),
    /// with the header and the key id as associated data.
    func wrap(_ secret: SecretKey, keyID: KeyID) throws -> [UInt8] {
        let (version, key) = ring.withLock { ($0.current, $0.wrapping[$0.current]) }
        guard let key else {
            throw KeyholdError(
                .configuration, "this server process's master.key lacks master-key version \(version), the current one",
                hint: "copy master.key from the server process where 'keyhold-server master-key rotate' ran (it is re-read every second), then retry")
        }
        let header = version == 1 ? [] : WrappedSecretHeader.bytes(version: version)
        let box = try secret.withUnsafeBytes { try AES.GCM.seal($0, using: key, authenticating: header + keyID.bytes) }
        guard let combined = box.combined else { throw KeyholdError(.internalError, "AES-GCM gave no combined form", hint: "report this bug") }
        return header + Array(combined)
    }

    func unwrap(_ wrapped: [UInt8], keyID: KeyID) throws -> SecretKey {
        let version = WrappedSecretHeader.version(of: wrapped)
        guard let key = ring.withLock({ $0.wrapping[version] }) else {
            throw KeyholdError(
                .internalError, "the stored secret of key \(keyID) is wrapped under master key version \(version), which master.key does not hold",
                hint: "copy master.key from the server process where 'keyhold-server master-key rotate' ran, then restart this one"
            )
        }
        do {
            let headerCount = version == 1 ? 0 : WrappedSecretHeader.count
            let box = try AES.GCM.SealedBox(combined: wrapped[headerCount...])
            var plain = try AES.GCM.open(box, using: key, authenticating: Array(wrapped[..<headerCount]) + keyID.bytes)
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

/// `master.key` (docs/operations.md, "Master-key rotation"). Either the 32 bytes `init` writes
/// (version 1, from which the wrapping and fingerprint keys are derived), or, once a rotation
/// has run, a JSON document:
///
/// ```json
/// {"format": "keyhold-master-key/1", "fingerprint_key": "<base64>",
///  "versions": [{"version": 1, "key": "<base64>", "created": "2026-12-03T09:00:00Z"}, …]}
/// ```
///
/// `fingerprint_key` is the fingerprint key derived from version 1 (kept when version 1 is
/// retired); each version's `key` is 32 random bytes.
struct MasterKeyFile: Codable, Equatable {
    struct Version: Codable, Equatable {
        var version: Int
        var key: Data
        var created: Date
    }

    static let formatName = "keyhold-master-key/1"
    var format = Self.formatName
    var fingerprintKey: Data
    var versions: [Version]

    enum CodingKeys: String, CodingKey {
        case format
        case fingerprintKey = "fingerprint_key"
        case versions
    }

    /// The one-version file of a master key written before rotation existed.
    init(legacy secret: SecretKey) {
        let key = secret.withUnsafeBytes { Data($0) }
        fingerprintKey = HKDF<SHA256>.deriveKey(
            inputKeyMaterial: SymmetricKey(data: key), info: Data("keyhold master: fingerprint v1".utf8), outputByteCount: 32
        ).withUnsafeBytes { Data($0) }
        versions = [Version(version: 1, key: key, created: Date(timeIntervalSince1970: 0))]
    }

    /// Reads either form.
    init(contents: Data, path: String) throws {
        if contents.count == SecretKey.byteCount {
            self.init(legacy: try SecretKey(bytes: contents))
            return
        }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        let bad = KeyholdError(
            .configuration, "\(path) is neither a 32-byte master key nor a master-key file of this version",
            hint: "restore master.key from the backup of this data directory")
        guard let file = try? decoder.decode(MasterKeyFile.self, from: contents), file.format == Self.formatName,
            file.fingerprintKey.count == 32, !file.versions.isEmpty,
            file.versions.allSatisfy({ $0.key.count == 32 && (1...0xFFFF).contains($0.version) }),
            Set(file.versions.map(\.version)).count == file.versions.count
        else { throw bad }
        self = file
    }

    /// The JSON form (always: once rotated, the file names its versions).
    func encoded() throws -> Data {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try encoder.encode(self) + Data("\n".utf8)
    }

    /// The check value of a version's key, which the repository keeps to tell processes whose
    /// files disagree apart (16 bytes; reveals nothing of the key).
    static func check(_ key: Data) -> [UInt8] {
        HKDF<SHA256>.deriveKey(inputKeyMaterial: SymmetricKey(data: key), info: Data("keyhold master: check".utf8), outputByteCount: 16)
            .withUnsafeBytes { Array($0) }
    }

    /// A new version numbered `number`.
    mutating func add(version number: Int, now: Date = Date()) {
        versions.append(Version(version: number, key: Data(SecureRandom.bytes(count: 32)), created: now))
    }
}
