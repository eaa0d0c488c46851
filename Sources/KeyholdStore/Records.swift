public import Foundation
public import KeyholdCore
public import KeyholdProtocol

/// An enrolled device or secondary server, known by the certificate this server issued it.
public struct EnrolledClient: Sendable, Equatable {
    /// The client id its certificate names.
    public var id: ClientID
    /// What it is.
    public var role: ClientRole
    /// A name the client gave at enrollment (host name), for people.
    public var name: String
    /// Lowercase hex SHA-256 of the DER certificate issued at enrollment.
    public var certificateFingerprint: String
    /// When it enrolled.
    public var enrolled: Date
    /// Whether it is served.
    public var state: EnrollmentState
    /// Its last heartbeat.
    public var lastSeen: Date?
    /// The version its last heartbeat reported.
    public var agentVersion: String?
    /// Keys the device reported holding at its last heartbeat.
    public var reportedKeyCount: Int?
    /// When its certificate expires (nil for enrollments recorded before version 8 of the schema).
    public var certificateExpires: Date?
    /// A renewed certificate issued but not presented yet (its fingerprint and expiry): until the
    /// client first presents it, both certificates are accepted; then it becomes the current one.
    public var nextCertificateFingerprint: String?
    /// When that renewed certificate expires.
    public var nextCertificateExpires: Date?
    /// When an administrator deleted it (state ``EnrollmentState/deleted``).
    public var deleted: Date?
    /// Lowercase hex SHA-256 of the CA certificate that issued its current certificate (nil:
    /// issued before the server recorded it, by the CA in use before any rotation).
    public var certificateIssuer: String?
    /// The issuer of the renewed certificate not presented yet.
    public var nextCertificateIssuer: String?

    /// A client record.
    public init(
        id: ClientID, role: ClientRole, name: String, certificateFingerprint: String, enrolled: Date = Date(),
        state: EnrollmentState = .active, lastSeen: Date? = nil, agentVersion: String? = nil, reportedKeyCount: Int? = nil,
        certificateExpires: Date? = nil, nextCertificateFingerprint: String? = nil, nextCertificateExpires: Date? = nil, deleted: Date? = nil,
        certificateIssuer: String? = nil, nextCertificateIssuer: String? = nil
    ) {
        self.deleted = deleted
        self.certificateIssuer = certificateIssuer
        self.nextCertificateIssuer = nextCertificateIssuer
        self.id = id
        self.role = role
        self.name = name
        self.certificateFingerprint = certificateFingerprint
        self.enrolled = enrolled
        self.state = state
        self.lastSeen = lastSeen
        self.agentVersion = agentVersion
        self.reportedKeyCount = reportedKeyCount
        self.certificateExpires = certificateExpires
        self.nextCertificateFingerprint = nextCertificateFingerprint
        self.nextCertificateExpires = nextCertificateExpires
    }
}

/// The last escrow check of a drive key: which device checked, when, and whether the escrowed
/// key opened the drive. One row per key; a newer check replaces an older one.
public struct EscrowCheckRecord: Sendable, Equatable {
    /// The drive key.
    public var keyID: KeyID
    /// The device that checked.
    public var clientID: ClientID
    /// When it checked (its clock, never later than the server's at receipt).
    public var checked: Date
    /// Whether the key opened the drive.
    public var opens: Bool

    /// A check.
    public init(keyID: KeyID, clientID: ClientID, checked: Date, opens: Bool) {
        self.keyID = keyID
        self.clientID = clientID
        self.checked = checked
        self.opens = opens
    }
}

/// An enrollment token as stored: only a hash of its secret.
public struct EnrollmentTokenRecord: Sendable, Equatable {
    /// The token's id.
    public var id: TokenID
    /// SHA-256 of the token's secret.
    public var secretHash: [UInt8]
    /// The role it grants.
    public var role: ClientRole
    /// Enrollments it still allows.
    public var usesLeft: Int
    /// When it stops working.
    public var expires: Date
    /// When it was made.
    public var created: Date
    /// Whether an administrator withdrew it.
    public var revoked: Bool

    /// A token record.
    public init(id: TokenID, secretHash: [UInt8], role: ClientRole, usesLeft: Int, expires: Date, created: Date = Date(), revoked: Bool = false) {
        self.id = id
        self.secretHash = secretHash
        self.role = role
        self.usesLeft = usesLeft
        self.expires = expires
        self.created = created
        self.revoked = revoked
    }
}

/// Why a token could not be used.
public enum TokenRedemption: Sendable, Equatable {
    /// What redeeming `token` (found by its id, or nil) with `secretHash` at `now` answers, before
    /// a use is taken: `.redeemed` when a use is left.
    public static func check(_ token: EnrollmentTokenRecord?, secretHash: [UInt8], now: Date) -> TokenRedemption {
        guard let t = token, t.secretHash == secretHash else { return .unknown }
        if t.revoked { return .revoked }
        if t.expires <= now { return .expired }
        if t.usesLeft <= 0 { return .usedUp }
        return .redeemed(t)
    }

    /// One use was taken; the record shows what is left.
    case redeemed(EnrollmentTokenRecord)
    /// No token has this id and secret.
    case unknown
    /// The token expired.
    case expired
    /// The token has no use left.
    case usedUp
    /// The token was withdrawn.
    case revoked
}

/// A device's request for a key that `release_policy = approval` keeps for an administrator
/// (``Repository/openApproval(keyID:client:at:audit:)``).
public struct ApprovalRecord: Sendable, Equatable {
    /// The request's id.
    public var id: ApprovalID
    /// The key asked for.
    public var keyID: KeyID
    /// The device that asked.
    public var clientID: ClientID
    /// When it first asked.
    public var requested: Date
    /// Where it stands.
    public var state: ApprovalState
    /// The administrator who last approved or denied it.
    public var decidedBy: ClientID?
    /// When they did.
    public var decided: Date?
    /// The reason they gave ("" before a decision).
    public var reason: String

    /// A request record.
    public init(
        id: ApprovalID, keyID: KeyID, clientID: ClientID, requested: Date, state: ApprovalState = .pending, decidedBy: ClientID? = nil,
        decided: Date? = nil, reason: String = ""
    ) {
        self.id = id
        self.keyID = keyID
        self.clientID = clientID
        self.requested = requested
        self.state = state
        self.decidedBy = decidedBy
        self.decided = decided
        self.reason = reason
    }
}

/// An administrator's decision on an ``ApprovalRecord``.
public struct ApprovalDecision: Sendable, Equatable {
    /// Who decided.
    public var by: ClientID
    /// When.
    public var at: Date
    /// Why.
    public var reason: String

    /// A decision.
    public init(by: ClientID, at: Date, reason: String) {
        self.by = by
        self.at = at
        self.reason = reason
    }
}
