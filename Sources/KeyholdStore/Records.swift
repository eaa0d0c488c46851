public import Foundation
public import KeyholdCore

/// What an enrolled client is.
public enum ClientRole: String, Codable, Sendable, CaseIterable {
    /// A managed device running the agent.
    case device
    /// A secondary administration server.
    case server
    /// An administrator (certificate made by `keyhold-server init`).
    case admin
}

/// The state of an enrolled device or secondary.
public enum EnrollmentState: String, Codable, Sendable, CaseIterable {
    case active
    /// Refused on every request from now on.
    case revoked
    /// The device moved to another server (`keyhold reassign`); its keys stay here.
    case moved
}

/// An enrolled device or secondary server, known by the certificate this server issued it.
public struct EnrolledClient: Sendable, Equatable {
    public var id: DeviceID
    public var role: ClientRole
    /// A name the client gave at enrollment (host name), for people.
    public var name: String
    /// Lowercase hex SHA-256 of the DER certificate issued at enrollment.
    public var certificateFingerprint: String
    public var enrolled: Date
    public var state: EnrollmentState
    public var lastSeen: Date?
    public var agentVersion: String?
    /// Keys the device reported holding at its last heartbeat.
    public var reportedKeyCount: Int?

    public init(
        id: DeviceID, role: ClientRole, name: String, certificateFingerprint: String, enrolled: Date = Date(),
        state: EnrollmentState = .active, lastSeen: Date? = nil, agentVersion: String? = nil, reportedKeyCount: Int? = nil
    ) {
        self.id = id
        self.role = role
        self.name = name
        self.certificateFingerprint = certificateFingerprint
        self.enrolled = enrolled
        self.state = state
        self.lastSeen = lastSeen
        self.agentVersion = agentVersion
        self.reportedKeyCount = reportedKeyCount
    }
}

/// An enrollment token as stored: only a hash of its secret.
public struct EnrollmentTokenRecord: Sendable, Equatable {
    public var id: KeyID
    /// SHA-256 of the token's secret.
    public var secretHash: [UInt8]
    public var role: ClientRole
    public var usesLeft: Int
    public var expires: Date
    public var created: Date
    public var revoked: Bool

    public init(id: KeyID, secretHash: [UInt8], role: ClientRole, usesLeft: Int, expires: Date, created: Date = Date(), revoked: Bool = false) {
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
    /// One use was taken; the record shows what is left.
    case redeemed(EnrollmentTokenRecord)
    case unknown
    case expired
    case usedUp
    case revoked
}

/// One audit record. Every key release and every refusal writes one.
public struct AuditEvent: Sendable, Equatable {
    /// Assigned by the repository, increasing.
    public var sequence: Int64?
    public var time: Date
    /// Who: `device:<id>`, `server:<id>`, `admin:<name>` or `anonymous`.
    public var actor: String
    /// What: `escrow`, `release`, `enroll`, `block`, `revoke`, `token_create` …
    public var action: String
    public var keyID: KeyID?
    /// How the request came: `agent`, `admin-api`, `secondary:<id>` …
    public var route: String
    /// `ok`, or the error code of a refusal.
    public var result: String
    /// Free text for people; never secrets.
    public var detail: String

    public init(sequence: Int64? = nil, time: Date = Date(), actor: String, action: String, keyID: KeyID? = nil, route: String, result: String, detail: String = "") {
        self.sequence = sequence
        self.time = time
        self.actor = actor
        self.action = action
        self.keyID = keyID
        self.route = route
        self.result = result
        self.detail = detail
    }
}
