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
    /// The client of this server the key is held for, whose deletion destroys it after the
    /// retention: the device that escrowed (or re-escrowed) it here, or the secondary that pushed
    /// it as its own; nil for keys obtained from the primary or imported. A device's escrow takes
    /// a key over from anyone but an active device, a secondary's push from anyone inactive.
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
    /// When it is destroyed, checked inside the destroying transaction.
    public var rule: DestructionRule

    /// A destruction.
    public init(keyID: KeyID, audit: AuditEvent, rule: DestructionRule) {
        self.keyID = keyID
        self.audit = audit
        self.rule = rule
    }
}

/// When a destruction goes ahead (docs/operations.md, "Deleting devices and destroying keys").
/// Every driver reads a key's facts in its transaction and asks ``allows(owner:ownerActive:ownerDeleted:activeDriveCheck:)``.
public enum DestructionRule: Sendable, Equatable {
    /// On purpose (`key destroy`): whoever uses the key.
    case always
    /// The retention: while the key's owner was deleted at or before the cutoff, and no active
    /// device's last drive check names the key.
    case due(deletedBefore: Date)
    /// A secondary's notice: only a key held here for that secondary, and not while an active
    /// device's last drive check names it.
    case ownedBy(ClientID)
    /// The primary's change feed: not while the key's owner is active, nor while an active
    /// device's last drive check names it.
    case unlessReferenced

    /// Whether a key with these facts is destroyed under this rule.
    public func allows(owner: ClientID?, ownerActive: Bool, ownerDeleted: Date?, activeDriveCheck: Bool) -> Bool {
        switch self {
        case .always: return true
        case .due(let cutoff): return !activeDriveCheck && ownerDeleted.map { $0 <= cutoff } == true
        case .ownedBy(let client): return !activeDriveCheck && owner == client
        case .unlessReferenced: return !activeDriveCheck && !ownerActive
        }
    }
}

/// What ``Repository/destroyKeys(_:at:)`` did with one key.
public enum KeyDestructionOutcome: String, Sendable, Equatable {
    /// Its secret is erased now.
    case destroyed
    /// It had been destroyed before: nothing changed.
    case alreadyDestroyed = "already_destroyed"
    /// The rule spared it (it is still used here, or not the notifier's): nothing changed.
    case spared
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
