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
    /// blocked, unblocked or destroyed (the hierarchy's push cursor follows it). 0 before storing.
    public var sequence: Int64 = 0
    /// The client of this server that escrowed it (nil for keys that came by the hierarchy, a
    /// push or an import): whose deletion destroys it after the retention.
    public var escrowedBy: ClientID?
    /// When its secret was destroyed; then ``wrappedSecret`` and ``secretFingerprint`` are empty.
    public var destroyed: Date?

    /// A key to store.
    public init(
        record: KeyRecord, wrappedSecret: [UInt8], secretFingerprint: [UInt8], provenance: KeyProvenance, stored: Date = Date(),
        blocked: Bool = false,
        escrowedBy: ClientID? = nil
    ) {
        self.record = record
        self.wrappedSecret = wrappedSecret
        self.secretFingerprint = secretFingerprint
        self.provenance = provenance
        self.stored = stored
        self.blocked = blocked
        self.escrowedBy = escrowedBy
    }

    /// This key as destroyed at `at`: the record stays, the secret and its fingerprint are gone.
    public func destroyedCopy(at: Date) -> StoredKey {
        var key = self
        key.wrappedSecret = []
        key.secretFingerprint = []
        key.destroyed = at
        return key
    }
}

/// One key to destroy (``Repository/destroyKeys(_:at:)``).
public struct KeyDestruction: Sendable {
    /// The key.
    public var keyID: KeyID
    /// Its `key_destroy` record, committed with the destruction.
    public var audit: AuditEvent
    /// When true the key is spared while an active client references it: it escrowed the key
    /// here, or its last drive check names it. An administrator's `key destroy` sets false.
    public var unlessReferenced: Bool

    /// A destruction.
    public init(keyID: KeyID, audit: AuditEvent, unlessReferenced: Bool) {
        self.keyID = keyID
        self.audit = audit
        self.unlessReferenced = unlessReferenced
    }
}

/// What ``Repository/destroyKeys(_:at:)`` did with one key.
public enum KeyDestructionOutcome: String, Sendable, Equatable {
    /// Its secret is erased now.
    case destroyed
    /// It had been destroyed before: nothing changed.
    case alreadyDestroyed = "already_destroyed"
    /// An active client references it: spared, nothing changed.
    case referenced
    /// No key has this id here.
    case notFound = "not_found"
}

/// A key the retention destroys: one of a deleted client's (``Repository/keysDueForDestruction(deletedBefore:limit:)``).
public struct DueKey: Sendable, Equatable {
    /// The key.
    public var keyID: KeyID
    /// The deleted client that escrowed it.
    public var client: ClientID
    /// When that client was deleted.
    public var deleted: Date

    /// A due key.
    public init(keyID: KeyID, client: ClientID, deleted: Date) {
        self.keyID = keyID
        self.client = client
        self.deleted = deleted
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
    /// The id belongs to a destroyed key: refused, nothing changed (a destroyed key stays destroyed).
    case destroyed
}
