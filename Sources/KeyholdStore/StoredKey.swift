public import Foundation
public import KeyholdCore
public import KeyholdProtocol

/// A key as the repository keeps it: its record, its secret wrapped under the server's master key,
/// and a fingerprint that lets the repository tell "same secret" from "different secret" without
/// seeing either.
public struct StoredKey: Sendable, Equatable {
    /// The key's record.
    public var record: KeyRecord
    /// `nonce || ciphertext || tag` of AES-256-GCM under the master key, with the key id as
    /// associated data (see `MasterKey` in KeyholdServer).
    public var wrappedSecret: [UInt8]
    /// HMAC-SHA256 under a key derived from the master key, over the key id and the secret.
    public var secretFingerprint: [UInt8]
    /// How the key reached this repository.
    public var provenance: KeyProvenance
    /// When this repository stored it.
    public var stored: Date
    /// Whether the key may be released (`keyhold-server key block`).
    public var blocked: Bool
    /// Assigned by the repository: strictly increasing in commit order, renewed when the key is
    /// blocked or unblocked (the hierarchy's push cursor follows it). 0 before storing.
    public var sequence: Int64 = 0

    /// A key to store.
    public init(
        record: KeyRecord, wrappedSecret: [UInt8], secretFingerprint: [UInt8], provenance: KeyProvenance, stored: Date = Date(), blocked: Bool = false
    ) {
        self.record = record
        self.wrappedSecret = wrappedSecret
        self.secretFingerprint = secretFingerprint
        self.provenance = provenance
        self.stored = stored
        self.blocked = blocked
    }
}

/// What storing a key did.
public enum KeyInsertOutcome: String, Sendable, Equatable {
    /// The key is new and now durably stored.
    case inserted
    /// The same id with the same secret was already there: nothing changed.
    case alreadyPresent = "already_present"
    /// The same id with a different secret was already there: refused, nothing changed.
    case conflict
}
