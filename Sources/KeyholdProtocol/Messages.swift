import Crypto
public import Foundation
public import KeyholdCore

// Wire messages of the server API (docs/spec/protocol.md). JSON, snake_case keys, dates as
// ISO 8601, byte strings as standard base64.

/// The body of every error response: a ``KeyholdError`` on the wire.
public struct ErrorBody: Codable, Sendable, Equatable {
    /// The stable code (docs/spec/protocol.md §5).
    public var code: KeyholdError.Code
    /// What went wrong.
    public var message: String
    /// What to do next.
    public var hint: String

    /// The body for `error`.
    public init(_ error: KeyholdError) {
        self.code = error.code
        self.message = error.message
        self.hint = error.hint
    }

    /// The error it carries.
    public var error: KeyholdError { KeyholdError(code, message, hint: hint) }

    enum CodingKeys: String, CodingKey { case code, message, hint }

    /// Decodes an error body. A code this build does not know (a newer peer) becomes `internal`,
    /// with the code kept in the message, so the person still sees what the peer said.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let text = try c.decode(String.self, forKey: .code)
        message = try c.decode(String.self, forKey: .message)
        hint = try c.decode(String.self, forKey: .hint)
        if let known = KeyholdError.Code(rawValue: text) {
            code = known
        } else {
            code = .internalError
            message = "\(message) (code \(text))"
        }
    }
}

/// `POST /v1/enroll` (enrollment port).
public struct EnrollRequest: Codable, Sendable {
    /// The token's id.
    public var tokenID: TokenID
    /// The token's secret, base64url as in the token.
    public var secret: String
    /// PEM certificate signing request; the private key never leaves the caller.
    public var csrPEM: String
    /// A name for people (host name).
    public var name: String
    /// A request for `tokenID` with its secret, a CSR and a name.
    public init(tokenID: TokenID, secret: String, csrPEM: String, name: String) {
        self.tokenID = tokenID
        self.secret = secret
        self.csrPEM = csrPEM
        self.name = name
    }
    enum CodingKeys: String, CodingKey {
        case tokenID = "token_id"
        case secret
        case csrPEM = "csr_pem"
        case name
    }
}

/// The answer to an enrollment: the new client's id and certificate.
public struct EnrollResponse: Codable, Sendable {
    /// The client id the certificate names.
    public var clientID: ClientID
    /// The role the token granted.
    public var role: ClientRole
    /// The issued certificate.
    public var certificatePEM: String
    /// The server's CA certificate.
    public var caPEM: String
    /// The server's id.
    public var serverID: ServerID
    /// An answer.
    public init(clientID: ClientID, role: ClientRole, certificatePEM: String, caPEM: String, serverID: ServerID) {
        self.clientID = clientID
        self.role = role
        self.certificatePEM = certificatePEM
        self.caPEM = caPEM
        self.serverID = serverID
    }
    enum CodingKeys: String, CodingKey {
        case clientID = "client_id"
        case role
        case certificatePEM = "certificate_pem"
        case caPEM = "ca_pem"
        case serverID = "server_id"
    }
}

/// `PUT /v1/keys/{id}`: escrow a key. The server answers only after its repository committed.
/// On the wire: the key's wire form (`record`, `secret`) and `reassigned_from`.
public struct EscrowRequest: Codable, Sendable {
    /// The key and its secret.
    public var key: KeyMaterial
    /// Set when a device moving here (`keyhold reassign`) re-escrows a key it held with this
    /// server; the audit record then says `reescrow` and names the previous server.
    public var reassignedFrom: ServerID?

    /// A request to escrow `key`.
    public init(key: KeyMaterial, reassignedFrom: ServerID? = nil) {
        self.key = key
        self.reassignedFrom = reassignedFrom
    }

    enum CodingKeys: String, CodingKey { case reassignedFrom = "reassigned_from" }

    /// Decodes the key's fields and `reassigned_from` from one object.
    public init(from decoder: any Decoder) throws {
        key = try KeyMaterial(from: decoder)
        reassignedFrom = try decoder.container(keyedBy: CodingKeys.self).decodeIfPresent(ServerID.self, forKey: .reassignedFrom)
    }

    /// Encodes the key's fields and `reassigned_from` into one object.
    public func encode(to encoder: any Encoder) throws {
        try key.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encodeIfPresent(reassignedFrom, forKey: .reassignedFrom)
    }
}

/// `POST /v1/leave`: a device tells its old server that it moved (best effort, `keyhold reassign`).
public struct LeaveRequest: Codable, Sendable {
    /// The server it moved to.
    public var newServerID: ServerID
    /// That server's API address.
    public var newAddress: String
    /// A notice of a move to `newServerID` at `newAddress`.
    public init(newServerID: ServerID, newAddress: String) {
        self.newServerID = newServerID
        self.newAddress = newAddress
    }

    enum CodingKeys: String, CodingKey {
        case newServerID = "new_server_id"
        case newAddress = "new_address"
    }
}

/// The acknowledgement of an escrow, sent after the commit.
public struct EscrowResponse: Codable, Sendable, Equatable {
    /// The key.
    public var keyID: KeyID
    /// Whether it was stored now or was already there.
    public var outcome: EscrowOutcome
    /// An acknowledgement.
    public init(keyID: KeyID, outcome: EscrowOutcome) {
        self.keyID = keyID
        self.outcome = outcome
    }
    enum CodingKeys: String, CodingKey {
        case keyID = "key_id"
        case outcome
    }
}

/// `POST /v1/heartbeat`.
public struct HeartbeatRequest: Codable, Sendable {
    /// The agent's version.
    public var agentVersion: String
    /// How many keys the agent holds.
    public var keyCount: Int
    /// The escrow checks of the drives unlocked (or tried) since the last heartbeat, the newest
    /// per key; at most ``checkLimit``.
    public var driveChecks: [DriveCheck]
    /// The key the agent encrypts new files with: the answer says whether it must be replaced.
    public var activeFileKey: KeyID?
    /// The most drive checks one heartbeat carries.
    public static let checkLimit = 256
    /// A heartbeat.
    public init(agentVersion: String, keyCount: Int, driveChecks: [DriveCheck] = [], activeFileKey: KeyID? = nil) {
        self.agentVersion = agentVersion
        self.keyCount = keyCount
        self.driveChecks = driveChecks
        self.activeFileKey = activeFileKey
    }
    enum CodingKeys: String, CodingKey {
        case agentVersion = "agent_version"
        case keyCount = "key_count"
        case driveChecks = "drive_checks"
        case activeFileKey = "active_file_key"
    }
    /// Decodes; `drive_checks` and `active_file_key` are absent from older agents' heartbeats.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        agentVersion = try c.decode(String.self, forKey: .agentVersion)
        keyCount = try c.decode(Int.self, forKey: .keyCount)
        driveChecks = try c.decodeIfPresent([DriveCheck].self, forKey: .driveChecks) ?? []
        activeFileKey = try c.decodeIfPresent(KeyID.self, forKey: .activeFileKey)
    }
}

/// What a device found when it unlocked a drive (or tried to): whether the key the drive's
/// keyhold token names — the escrowed one — still opens a keyslot of that drive.
public struct DriveCheck: Codable, Sendable, Equatable {
    /// The key the drive's token names.
    public var keyID: KeyID
    /// Whether it opened the token's keyslot (false: the keyslots were changed outside Keyhold).
    public var opens: Bool
    /// When the device checked.
    public var checked: Date
    /// One check.
    public init(keyID: KeyID, opens: Bool, checked: Date) {
        self.keyID = keyID
        self.opens = opens
        self.checked = checked
    }
    enum CodingKeys: String, CodingKey {
        case keyID = "key_id"
        case opens, checked
    }
}

/// `GET /v1/keys/{id}/status`: what a device needs to know about a key it holds, without its secret.
public struct KeyStatusResponse: Codable, Sendable, Equatable {
    /// The key.
    public var keyID: KeyID
    /// Whether it is blocked (or retired) here.
    public var blocked: Bool
    /// Whether it was revealed and should be replaced (a drive is re-keyed at its next unlock).
    public var rotationRequired: Bool
    /// A status.
    public init(keyID: KeyID, blocked: Bool, rotationRequired: Bool) {
        self.keyID = keyID
        self.blocked = blocked
        self.rotationRequired = rotationRequired
    }
    enum CodingKeys: String, CodingKey {
        case keyID = "key_id"
        case blocked
        case rotationRequired = "rotation_required"
    }
}

/// The last escrow check of a drive key, as a server records it from a device's heartbeat.
public struct EscrowCheck: Codable, Sendable, Equatable {
    /// The device that checked.
    public var deviceID: ClientID
    /// When it checked.
    public var checked: Date
    /// Whether the escrowed key opened the drive: `verified`, else `DRIFT`.
    public var opens: Bool
    /// A check.
    public init(deviceID: ClientID, checked: Date, opens: Bool) {
        self.deviceID = deviceID
        self.checked = checked
        self.opens = opens
    }
    /// `verified <time>` or `DRIFT` (with the time), as the lists print it.
    public var summary: String {
        opens ? "verified \(ISO8601DateFormatter().string(from: checked))" : "DRIFT since \(ISO8601DateFormatter().string(from: checked))"
    }
    enum CodingKeys: String, CodingKey {
        case deviceID = "device_id"
        case checked, opens
    }
}

/// The answer to a heartbeat.
public struct HeartbeatResponse: Codable, Sendable {
    /// The server's id.
    public var serverID: ServerID
    /// The server's clock.
    public var serverTime: Date
    /// The heartbeat's `active_file_key` was revealed (or answered offline): the agent makes a
    /// new file key for the files it encrypts from now on.
    public var rotateFileKey: Bool
    /// The CAs to trust now (absent from older servers' answers).
    public var ca: CATrust?
    /// An answer.
    public init(serverID: ServerID, serverTime: Date, rotateFileKey: Bool = false, ca: CATrust? = nil) {
        self.serverID = serverID
        self.serverTime = serverTime
        self.rotateFileKey = rotateFileKey
        self.ca = ca
    }
    enum CodingKeys: String, CodingKey {
        case serverID = "server_id"
        case serverTime = "server_time"
        case rotateFileKey = "rotate_file_key"
        case ca
    }
    /// Decodes; `rotate_file_key` and `ca` are absent from older servers' answers.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        serverID = try c.decode(ServerID.self, forKey: .serverID)
        serverTime = try c.decode(Date.self, forKey: .serverTime)
        rotateFileKey = try c.decodeIfPresent(Bool.self, forKey: .rotateFileKey) ?? false
        ca = try c.decodeIfPresent(CATrust.self, forKey: .ca)
    }
}

/// A certificate and when it expires, as `status` shows it.
public struct CertificateExpiry: Codable, Sendable, Equatable {
    /// `ca`, `tls`, `primary` (this server's certificate at its primary), `administrator`,
    /// `device` or `secondary`.
    public var kind: String
    /// Whose it is (administrators, devices, secondaries): `NAME (ID)`.
    public var holder: String?
    /// When it expires.
    public var expires: Date
    /// Whether `status` warns about it: it expires within 30 days (a device's or secondary's:
    /// within a quarter of its lifetime, when that is shorter, since it renews with a third left).
    public var soon: Bool
    /// An entry.
    public init(kind: String, holder: String? = nil, expires: Date, soon: Bool) {
        self.kind = kind
        self.holder = holder
        self.expires = expires
        self.soon = soon
    }
}

/// The server's renewed TLS certificate (`POST /v1/admin/tls/renew`).
public struct TLSRenewResponse: Codable, Sendable {
    /// When it expires.
    public var expires: Date
    /// Lowercase hex SHA-256 of its DER encoding.
    public var fingerprint: String
    /// An answer.
    public init(expires: Date, fingerprint: String) {
        self.expires = expires
        self.fingerprint = fingerprint
    }
}

/// When a certificate is renewed (docs/operations.md, "Certificate renewal"): once two thirds of
/// its lifetime have passed. Devices, secondaries and the server's own TLS certificate follow it.
public enum CertificateRenewal {
    /// Whether a certificate valid from `notValidBefore` to `notValidAfter` is due at `now`.
    public static func isDue(notValidBefore: Date, notValidAfter: Date, now: Date = Date()) -> Bool {
        now >= notValidBefore.addingTimeInterval(notValidAfter.timeIntervalSince(notValidBefore) * 2 / 3)
    }
}

/// A client's request for a renewed certificate: a CSR over a key pair it made for it.
public struct CertificateRenewRequest: Codable, Sendable {
    /// PKCS#10, PEM.
    public var csrPEM: String
    /// A request.
    public init(csrPEM: String) { self.csrPEM = csrPEM }
    enum CodingKeys: String, CodingKey { case csrPEM = "csr_pem" }
}

/// The renewed certificate: the same role and id, from the server's CA.
public struct CertificateRenewResponse: Codable, Sendable {
    /// The certificate, PEM.
    public var certificatePEM: String
    /// When it expires.
    public var expires: Date
    /// An answer.
    public init(certificatePEM: String, expires: Date) {
        self.certificatePEM = certificatePEM
        self.expires = expires
    }
    enum CodingKeys: String, CodingKey {
        case certificatePEM = "certificate_pem"
        case expires
    }
}

/// Key metadata for administrators (never the secret).
public struct KeyInfo: Codable, Sendable, Equatable {
    /// The key's record.
    public var record: KeyRecord
    /// How it reached this server.
    public var provenance: KeyProvenance
    /// When this server stored it.
    public var stored: Date
    /// Whether it is blocked.
    public var blocked: Bool
    /// Whether it was revealed to an administrator and should be replaced (`key reveal`).
    public var rotationRequired: Bool
    /// For a drive key: the last escrow check a device reported (nil: never checked).
    public var check: EscrowCheck?
    /// When its secret was destroyed (nil: it is held).
    public var destroyed: Date?
    /// Metadata of one key.
    public init(
        record: KeyRecord, provenance: KeyProvenance, stored: Date, blocked: Bool, rotationRequired: Bool = false, check: EscrowCheck? = nil,
        destroyed: Date? = nil
    ) {
        self.record = record
        self.provenance = provenance
        self.stored = stored
        self.blocked = blocked
        self.rotationRequired = rotationRequired
        self.check = check
        self.destroyed = destroyed
    }
    enum CodingKeys: String, CodingKey {
        case record, provenance, stored, blocked, check, destroyed
        case rotationRequired = "rotation_required"
    }
    /// Decodes; `rotation_required`, `check` and `destroyed` are absent from older servers' answers.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        record = try c.decode(KeyRecord.self, forKey: .record)
        provenance = try c.decode(KeyProvenance.self, forKey: .provenance)
        stored = try c.decode(Date.self, forKey: .stored)
        blocked = try c.decode(Bool.self, forKey: .blocked)
        rotationRequired = try c.decodeIfPresent(Bool.self, forKey: .rotationRequired) ?? false
        check = try c.decodeIfPresent(EscrowCheck.self, forKey: .check)
        destroyed = try c.decodeIfPresent(Date.self, forKey: .destroyed)
    }
}

/// `POST /v1/admin/keys/{id}/destroy`.
public struct KeyDestroyRequest: Codable, Sendable {
    /// Why the key is destroyed (required; recorded with the administrator).
    public var reason: String
    /// A request with `reason`.
    public init(reason: String) { self.reason = reason }
}

/// The answer to `POST /v1/admin/keys/{id}/destroy`.
public struct KeyDestroyResponse: Codable, Sendable, Equatable {
    /// The key.
    public var keyID: KeyID
    /// When its secret was destroyed (now, or earlier when it already was).
    public var destroyed: Date
    /// False when it had been destroyed before (nothing changed).
    public var newlyDestroyed: Bool
    /// An answer.
    public init(keyID: KeyID, destroyed: Date, newlyDestroyed: Bool) {
        self.keyID = keyID
        self.destroyed = destroyed
        self.newlyDestroyed = newlyDestroyed
    }
    enum CodingKeys: String, CodingKey {
        case keyID = "key_id"
        case destroyed
        case newlyDestroyed = "newly_destroyed"
    }
}

/// The answer to `POST /v1/admin/clients/{id}/delete`.
public struct ClientDeleteResponse: Codable, Sendable, Equatable {
    /// The client.
    public var id: ClientID
    /// When it was deleted.
    public var deleted: Date
    /// When its keys become due for destruction (deletion plus `key_retention_days`).
    public var keysDestroyedAfter: Date
    /// Keys it escrowed here (the retention destroys those no active device still references).
    public var keys: Int
    /// An answer.
    public init(id: ClientID, deleted: Date, keysDestroyedAfter: Date, keys: Int) {
        self.id = id
        self.deleted = deleted
        self.keysDestroyedAfter = keysDestroyedAfter
        self.keys = keys
    }
    enum CodingKeys: String, CodingKey {
        case id, deleted, keys
        case keysDestroyedAfter = "keys_destroyed_after"
    }
}

/// `POST /v1/admin/keys/{id}/reveal`.
public struct RevealRequest: Codable, Sendable {
    /// Why the key is revealed (required; recorded with the administrator).
    public var reason: String
    /// A request with `reason`.
    public init(reason: String) { self.reason = reason }
}

/// A key revealed to an administrator: the secret, and for a drive key the command that opens
/// the drive on any Linux machine.
public struct RevealResponse: Codable, Sendable {
    /// The key's record.
    public var record: KeyRecord
    /// The 32 bytes in lowercase hex.
    public var secretHex: String
    /// The 32 bytes in base64.
    public var secretBase64: String
    /// For a drive key: a shell command that opens the drive, `DEVICE` standing for its device path.
    public var openCommand: String?
    /// Whether the key is blocked here (revealed anyway: an administrator asked on purpose).
    public var blocked: Bool
    /// An answer.
    public init(record: KeyRecord, secretHex: String, secretBase64: String, openCommand: String?, blocked: Bool) {
        self.record = record
        self.secretHex = secretHex
        self.secretBase64 = secretBase64
        self.openCommand = openCommand
        self.blocked = blocked
    }
    enum CodingKeys: String, CodingKey {
        case record, blocked
        case secretHex = "secret_hex"
        case secretBase64 = "secret_base64"
        case openCommand = "open_command"
    }
}

/// One page of `GET /v1/admin/keys`.
public struct KeyListResponse: Codable, Sendable {
    /// The keys, in id order.
    public var keys: [KeyInfo]
    /// Pass as `after` for the next page; absent on the last page.
    public var next: KeyID?
    /// A page.
    public init(keys: [KeyInfo], next: KeyID?) {
        self.keys = keys
        self.next = next
    }
}

/// An enrolled device or secondary, for administrators.
public struct ClientInfo: Codable, Sendable, Equatable {
    /// Its client id.
    public var id: ClientID
    /// What it is.
    public var role: ClientRole
    /// The name it gave at enrollment.
    public var name: String
    /// Whether it is served.
    public var state: EnrollmentState
    /// When it enrolled.
    public var enrolled: Date
    /// Its last heartbeat.
    public var lastSeen: Date?
    /// The version its last heartbeat reported.
    public var agentVersion: String?
    /// The key count its last heartbeat reported.
    public var keyCount: Int?
    /// The escrow checks of the drives it unlocked: the newest verified one, and the drive keys
    /// whose last check found that the escrowed key no longer opens the drive (`DRIFT`).
    public var escrowVerified: Date?
    /// Drive keys whose last check by this device was a drift.
    public var escrowDrift: [KeyID]
    /// When its certificate expires (absent for clients enrolled before servers recorded it).
    public var certificateExpires: Date?
    /// When an administrator deleted it (state `deleted`).
    public var deleted: Date?
    /// One client.
    public init(
        id: ClientID, role: ClientRole, name: String, state: EnrollmentState, enrolled: Date, lastSeen: Date?, agentVersion: String?,
        keyCount: Int?, escrowVerified: Date? = nil, escrowDrift: [KeyID] = [], certificateExpires: Date? = nil, deleted: Date? = nil
    ) {
        self.certificateExpires = certificateExpires
        self.deleted = deleted
        self.escrowVerified = escrowVerified
        self.escrowDrift = escrowDrift
        self.id = id
        self.role = role
        self.name = name
        self.state = state
        self.enrolled = enrolled
        self.lastSeen = lastSeen
        self.agentVersion = agentVersion
        self.keyCount = keyCount
    }
    enum CodingKeys: String, CodingKey {
        case id, role, name, state, enrolled
        case lastSeen = "last_seen"
        case agentVersion = "agent_version"
        case keyCount = "key_count"
        case escrowVerified = "escrow_verified"
        case escrowDrift = "escrow_drift"
        case certificateExpires = "certificate_expires"
        case deleted
    }
    /// Decodes; the escrow, expiry and deletion fields are absent from older servers' answers.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        id = try c.decode(ClientID.self, forKey: .id)
        role = try c.decode(ClientRole.self, forKey: .role)
        name = try c.decode(String.self, forKey: .name)
        state = try c.decode(EnrollmentState.self, forKey: .state)
        enrolled = try c.decode(Date.self, forKey: .enrolled)
        lastSeen = try c.decodeIfPresent(Date.self, forKey: .lastSeen)
        agentVersion = try c.decodeIfPresent(String.self, forKey: .agentVersion)
        keyCount = try c.decodeIfPresent(Int.self, forKey: .keyCount)
        escrowVerified = try c.decodeIfPresent(Date.self, forKey: .escrowVerified)
        escrowDrift = try c.decodeIfPresent([KeyID].self, forKey: .escrowDrift) ?? []
        certificateExpires = try c.decodeIfPresent(Date.self, forKey: .certificateExpires)
        deleted = try c.decodeIfPresent(Date.self, forKey: .deleted)
    }
    /// `verified <time>`, `DRIFT (n keys)` or `-`, as `device list` prints it.
    public var escrowSummary: String {
        if !escrowDrift.isEmpty { return "DRIFT (\(escrowDrift.count) key\(escrowDrift.count == 1 ? "" : "s"))" }
        return escrowVerified.map { "verified \(ISO8601DateFormatter().string(from: $0))" } ?? "-"
    }
}

/// `POST /v1/admin/tokens`.
public struct TokenCreateRequest: Codable, Sendable {
    /// The role it grants (`device` or `server`).
    public var role: ClientRole
    /// How many enrollments it allows.
    public var uses: Int
    /// How long it is valid.
    public var ttlSeconds: Int
    /// A request for a token.
    public init(role: ClientRole, uses: Int, ttlSeconds: Int) {
        self.role = role
        self.uses = uses
        self.ttlSeconds = ttlSeconds
    }
    enum CodingKeys: String, CodingKey {
        case role, uses
        case ttlSeconds = "ttl_seconds"
    }
}

/// A new token.
public struct TokenCreateResponse: Codable, Sendable {
    /// The text to hand over (`kh1.…`).
    public var token: String
    /// Its id.
    public var id: TokenID
    /// When it expires.
    public var expires: Date
    /// A token.
    public init(token: String, id: TokenID, expires: Date) {
        self.token = token
        self.id = id
        self.expires = expires
    }
}

/// One enrollment token as `GET /v1/admin/tokens` lists it: never its secret.
public struct TokenInfo: Codable, Sendable, Equatable {
    /// Whether a token can still enroll anyone, and if not, why.
    public enum State: String, Codable, Sendable {
        /// It has uses left and has not expired.
        case active
        /// Every use was taken.
        case usedUp = "used_up"
        /// Its lifetime ended.
        case expired
        /// An administrator revoked it.
        case revoked
    }

    /// Its id (the part of the token text before the secret).
    public var id: TokenID
    /// The role it grants.
    public var role: ClientRole
    /// Enrollments it still allows.
    public var usesLeft: Int
    /// When it was made.
    public var created: Date
    /// When it stops working.
    public var expires: Date
    /// Whether it still works, and if not, why (revoked before expired before used up).
    public var state: State

    /// A token's listing.
    public init(id: TokenID, role: ClientRole, usesLeft: Int, created: Date, expires: Date, state: State) {
        self.id = id
        self.role = role
        self.usesLeft = usesLeft
        self.created = created
        self.expires = expires
        self.state = state
    }

    enum CodingKeys: String, CodingKey {
        case id, role, created, expires, state
        case usesLeft = "uses_left"
    }
}

/// `POST /v1/admin/master-key/rotate`.
public struct MasterKeyRotateRequest: Codable, Sendable {
    /// Only add the version (to `master.key` and the repository), without wrapping under it yet:
    /// the first step when several server processes share one database (copy the file to each,
    /// then rotate without `prepare`).
    public var prepare: Bool
    /// A request.
    public init(prepare: Bool = false) { self.prepare = prepare }
}

/// One master-key version in ``MasterKeyStatus``.
public struct MasterKeyVersionInfo: Codable, Sendable, Equatable {
    /// Its number.
    public var version: Int
    /// `prepared` (not wrapped under yet), `current`, `previous` (being rewrapped away from or
    /// waiting for `retire-old`) or `retired`.
    public var state: String
    /// Keys whose secret is wrapped under it.
    public var keys: Int
    /// Whether this server process's `master.key` holds it.
    public var held: Bool
    /// When it was registered.
    public var created: Date
    /// When it was made current (nil while prepared).
    public var activated: Date?
    /// When `retire-old` ended it.
    public var retired: Date?
    /// A version.
    public init(version: Int, state: String, keys: Int, held: Bool, created: Date, activated: Date?, retired: Date?) {
        self.version = version
        self.state = state
        self.keys = keys
        self.held = held
        self.created = created
        self.activated = activated
        self.retired = retired
    }
}

/// `GET /v1/admin/master-key`, and the answer of rotate and retire-old.
public struct MasterKeyStatus: Codable, Sendable {
    /// The version new secrets are wrapped under.
    public var current: Int
    /// Every version the repository knows, oldest first.
    public var versions: [MasterKeyVersionInfo]
    /// Keys still wrapped under an older version than the current one (0: the rewrap is done).
    public var remaining: Int
    /// Keys stored in all.
    public var total: Int
    /// A status.
    public init(current: Int, versions: [MasterKeyVersionInfo], remaining: Int, total: Int) {
        self.current = current
        self.versions = versions
        self.remaining = remaining
        self.total = total
    }
}

/// `GET /v1/admin/status`.
public struct StatusResponse: Codable, Sendable {
    /// The server's id.
    public var serverID: ServerID
    /// Its version.
    public var version: String
    /// Its database (a URL without the password, or `sqlite`).
    public var database: String
    /// Keys stored.
    public var keyCount: Int
    /// Active devices.
    public var devices: Int
    /// Active secondaries.
    public var secondaries: Int
    /// When the process started.
    public var started: Date
    /// Its place in the hierarchy.
    public var hierarchy: HierarchyStatus?
    /// Drive keys whose last escrow check was a drift (the escrowed key no longer opens the
    /// drive), at most 100 of them: each is an error an administrator must act on.
    public var escrowDrift: [KeyID]
    /// This server's certificates (CA, TLS, its certificate at its primary) and the active
    /// administrators'.
    public var certificates: [CertificateExpiry]
    /// Active devices and secondaries whose certificates are due to expire without having been
    /// renewed (at most 100), and how many there are in all.
    public var expiringClients: [CertificateExpiry]
    /// How many such clients there are (``expiringClients`` names the first 100).
    public var expiringClientCount: Int
    /// The master-key versions and the rewrap's progress.
    public var masterKey: MasterKeyStatus?
    /// The CA and, during a rotation's overlap, who still holds a certificate from the previous one.
    public var ca: CAStatus?
    /// A status.
    public init(
        serverID: ServerID, version: String, database: String, keyCount: Int, devices: Int, secondaries: Int, started: Date,
        hierarchy: HierarchyStatus? = nil, escrowDrift: [KeyID] = [], certificates: [CertificateExpiry] = [],
        expiringClients: [CertificateExpiry] = [], expiringClientCount: Int = 0, masterKey: MasterKeyStatus? = nil, ca: CAStatus? = nil
    ) {
        self.masterKey = masterKey
        self.ca = ca
        self.certificates = certificates
        self.expiringClients = expiringClients
        self.expiringClientCount = expiringClientCount
        self.escrowDrift = escrowDrift
        self.hierarchy = hierarchy
        self.serverID = serverID
        self.version = version
        self.database = database
        self.keyCount = keyCount
        self.devices = devices
        self.secondaries = secondaries
        self.started = started
    }
    enum CodingKeys: String, CodingKey {
        case serverID = "server_id"
        case version, database
        case keyCount = "key_count"
        case devices, secondaries, started, hierarchy
        case escrowDrift = "escrow_drift"
        case certificates
        case expiringClients = "expiring_clients"
        case expiringClientCount = "expiring_client_count"
        case masterKey = "master_key"
        case ca
    }
    /// Decodes; `escrow_drift` and the certificates are absent from older servers' answers.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        serverID = try c.decode(ServerID.self, forKey: .serverID)
        version = try c.decode(String.self, forKey: .version)
        database = try c.decode(String.self, forKey: .database)
        keyCount = try c.decode(Int.self, forKey: .keyCount)
        devices = try c.decode(Int.self, forKey: .devices)
        secondaries = try c.decode(Int.self, forKey: .secondaries)
        started = try c.decode(Date.self, forKey: .started)
        hierarchy = try c.decodeIfPresent(HierarchyStatus.self, forKey: .hierarchy)
        escrowDrift = try c.decodeIfPresent([KeyID].self, forKey: .escrowDrift) ?? []
        certificates = try c.decodeIfPresent([CertificateExpiry].self, forKey: .certificates) ?? []
        expiringClients = try c.decodeIfPresent([CertificateExpiry].self, forKey: .expiringClients) ?? []
        expiringClientCount = try c.decodeIfPresent(Int.self, forKey: .expiringClientCount) ?? 0
        masterKey = try c.decodeIfPresent(MasterKeyStatus.self, forKey: .masterKey)
        ca = try c.decodeIfPresent(CAStatus.self, forKey: .ca)
    }
}

/// Encoders and decoders with the protocol's conventions.
public enum WireFormat {
    /// The encoder of every message: sorted keys, ISO 8601 dates, slashes unescaped.
    public static func encoder() -> JSONEncoder {
        let e = JSONEncoder()
        e.dateEncodingStrategy = .iso8601
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return e
    }

    /// Indented, sorted JSON for people and scripts (the `--json` output of the commands).
    public static func prettyText<T: Encodable>(_ value: T) throws -> String {
        let e = encoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try e.encode(value), as: UTF8.self)
    }

    /// The decoder of every message: ISO 8601 dates, base64 byte strings.
    public static func decoder() -> JSONDecoder {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .iso8601
        return d
    }
}

/// `POST /v1/admin/administrators`: a certificate for a new, named administrator. The key pair
/// is made by the caller; only the request travels.
public struct AdministratorCreateRequest: Codable, Sendable {
    /// The person's name (1…64 printable characters, unique among active administrators).
    public var name: String
    /// A PEM certificate signing request for the new administrator's key.
    public var csrPEM: String
    /// A request for `name`.
    public init(name: String, csrPEM: String) {
        self.name = name
        self.csrPEM = csrPEM
    }
    enum CodingKeys: String, CodingKey {
        case name
        case csrPEM = "csr_pem"
    }
}

/// The answer to ``AdministratorCreateRequest``.
public struct AdministratorCreateResponse: Codable, Sendable {
    /// The new administrator's client id.
    public var id: ClientID
    /// Its certificate (PEM).
    public var certificatePEM: String
    /// The server's CA certificate (PEM), for the PKCS#12 bundle and for checking the certificate.
    public var caPEM: String
    /// An answer.
    public init(id: ClientID, certificatePEM: String, caPEM: String) {
        self.id = id
        self.certificatePEM = certificatePEM
        self.caPEM = caPEM
    }
    enum CodingKeys: String, CodingKey {
        case id
        case certificatePEM = "certificate_pem"
        case caPEM = "ca_pem"
    }
}

/// `POST /v1/admin/keys/offline-response`: answer a device's offline request code.
public struct OfflineRespondRequest: Codable, Sendable {
    /// The request code the device printed.
    public var requestCode: String
    /// Why (required; recorded with the administrator).
    public var reason: String
    /// Seconds the response stays usable (1…604800; default 3600).
    public var validSeconds: Int
    /// A request.
    public init(requestCode: String, reason: String, validSeconds: Int = 3600) {
        self.requestCode = requestCode
        self.reason = reason
        self.validSeconds = validSeconds
    }
    enum CodingKeys: String, CodingKey {
        case reason
        case requestCode = "request_code"
        case validSeconds = "valid_seconds"
    }
}

/// The answer to ``OfflineRespondRequest``.
public struct OfflineRespondResponse: Codable, Sendable {
    /// The response code to read to the user.
    public var responseCode: String
    /// The key it carries.
    public var keyID: KeyID
    /// The device it is for.
    public var deviceID: ClientID
    /// The request it answers (hex).
    public var requestID: String
    /// Until when the device accepts it.
    public var expiry: Date
    /// An answer.
    public init(responseCode: String, keyID: KeyID, deviceID: ClientID, requestID: String, expiry: Date) {
        self.responseCode = responseCode
        self.keyID = keyID
        self.deviceID = deviceID
        self.requestID = requestID
        self.expiry = expiry
    }
    enum CodingKeys: String, CodingKey {
        case expiry
        case responseCode = "response_code"
        case keyID = "key_id"
        case deviceID = "device_id"
        case requestID = "request_id"
    }
}

/// `POST /v1/keys/{id}/retire`: a device that re-keyed a drive asks its server to retire the
/// drive's old key (docs/spec/protocol.md). It proves it holds the old key and names the new one,
/// which it escrowed.
public struct RetireRequest: Codable, Sendable {
    /// The key that replaced it (escrowed by the same device).
    public var replacedBy: KeyID
    /// ``RetireRequest/proof(oldSecret:old:new:)``, base64.
    public var proof: String

    /// A request proving possession of `oldSecret`.
    public init(old: KeyID, oldSecret: SecretKey, replacedBy: KeyID) {
        self.replacedBy = replacedBy
        self.proof = Data(Self.proof(oldSecret: oldSecret, old: old, new: replacedBy)).base64EncodedString()
    }

    /// HMAC-SHA256 keyed with the old key's secret over `"keyhold retire v1"`, the old key id
    /// and the new key id (16 bytes each).
    public static func proof(oldSecret: SecretKey, old: KeyID, new: KeyID) -> [UInt8] {
        oldSecret.withUnsafeBytes { secret in
            Array(HMAC<SHA256>.authenticationCode(for: message(old, new), using: SymmetricKey(data: secret)))
        }
    }

    /// Whether `proof` is the proof for these keys (compared in constant time by swift-crypto).
    public static func verify(_ proof: [UInt8], oldSecret: SecretKey, old: KeyID, new: KeyID) -> Bool {
        oldSecret.withUnsafeBytes { secret in
            HMAC<SHA256>.isValidAuthenticationCode(proof, authenticating: message(old, new), using: SymmetricKey(data: secret))
        }
    }

    private static func message(_ old: KeyID, _ new: KeyID) -> [UInt8] { Array("keyhold retire v1".utf8) + old.bytes + new.bytes }

    enum CodingKeys: String, CodingKey {
        case proof
        case replacedBy = "replaced_by"
    }
}
