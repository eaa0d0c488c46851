public import Foundation
public import KeyholdCore

/// A version of the server's master key as the repository knows it (docs/operations.md,
/// "Master-key rotation"). The key itself never enters the repository: only a check value
/// derived from it, so that every server process on one database can tell whether its
/// `master.key` holds the same key under the same version number.
public struct MasterKeyVersionRecord: Sendable, Equatable {
    /// 1, 2, … (version 1 is the key `init` made).
    public var version: Int
    /// 16 bytes derived from the version's key (HKDF); equal for the same key, useless without it.
    public var check: [UInt8]
    /// When it was registered.
    public var created: Date
    /// When it became the version new secrets are wrapped under (nil while only prepared).
    public var activated: Date?
    /// When `master-key retire-old` ended it (no key was wrapped under it any more).
    public var retired: Date?

    /// A version record.
    public init(version: Int, check: [UInt8], created: Date = Date(), activated: Date? = nil, retired: Date? = nil) {
        self.version = version
        self.check = check
        self.created = created
        self.activated = activated
        self.retired = retired
    }
}

extension Array where Element == MasterKeyVersionRecord {
    /// The version new secrets are wrapped under: the highest activated one not retired; nil
    /// before any version was registered (a repository older than master-key rotation, all v1).
    public var current: MasterKeyVersionRecord? { filter { $0.activated != nil && $0.retired == nil }.max { $0.version < $1.version } }
}

/// What registering a master-key version did.
public enum MasterKeyRegistration: String, Sendable, Equatable {
    /// The version is new and now recorded.
    case registered
    /// The same version with the same check value was already recorded.
    case alreadyRegistered = "already_registered"
    /// The version number is taken by another key: nothing changed.
    case conflict
}

/// One key's secret wrapped again under another master-key version, to be stored only while
/// the row still holds `old` (a compare-and-set: a concurrent replacement wins).
public struct KeyRewrap: Sendable, Equatable {
    /// The key.
    public var id: KeyID
    /// The wrapped secret read.
    public var old: [UInt8]
    /// The same secret wrapped under `version`.
    public var new: [UInt8]

    /// A rewrap.
    public init(id: KeyID, old: [UInt8], new: [UInt8]) {
        self.id = id
        self.old = old
        self.new = new
    }
}

/// The wrapped-secret header that names the master-key version (docs/operations.md,
/// "Master-key rotation"): version 1 is the bare `nonce || ciphertext || tag` (60 bytes) that
/// servers wrote before rotation existed; later versions are `"KM" || u16 big-endian version`
/// followed by the same 60 bytes.
public enum WrappedSecretHeader {
    /// The header's bytes.
    public static let magic: [UInt8] = Array("KM".utf8)
    /// Header length.
    public static let count = 4
    /// A wrapped secret's length without the header.
    public static let bareCount = 12 + 32 + 16

    /// The header of `version` (≥ 2).
    public static func bytes(version: Int) -> [UInt8] { magic + [UInt8(version >> 8 & 0xFF), UInt8(version & 0xFF)] }

    /// The master-key version `wrapped` was made under.
    public static func version(of wrapped: [UInt8]) -> Int {
        guard wrapped.count == count + bareCount, wrapped[0] == magic[0], wrapped[1] == magic[1] else { return 1 }
        return Int(wrapped[2]) << 8 | Int(wrapped[3])
    }
}

extension StoredKey {
    /// The master-key version the secret is wrapped under.
    public var masterVersion: Int { WrappedSecretHeader.version(of: wrappedSecret) }
}
