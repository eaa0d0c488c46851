public import Foundation
public import KeyholdCore

// `keyhold-server explain`: why a device can or cannot get a key, hop by hop up the hierarchy
// (docs/spec/hierarchy.md §4a). Metadata only: no secret travels.

/// One server on the way up, as it describes itself for one key.
public struct ExplainHop: Codable, Sendable, Equatable {
    /// The server.
    public var serverID: ServerID
    /// Its "use hierarchy to obtain encryption keys" option; nil for a server that did not answer.
    public var useHierarchy: Bool?
    /// Whether it holds the key (destroyed ones included).
    public var held: Bool
    /// The key's state there (`active`, `retired`, …), when held.
    public var state: String?
    /// Whether the key is blocked there.
    public var blocked: Bool?
    /// When the key was destroyed there.
    public var destroyed: Date?
    /// How it got the key (`escrow`, `pushed`, `hierarchy`, `imported`).
    public var provenance: String?
    /// When it stored the key.
    public var stored: Date?
    /// Whether its primary acknowledged the key (nil without a primary or when not held).
    public var acknowledgedByPrimary: Bool?
    /// Its primary, if it joined one.
    public var primaryServerID: ServerID?
    /// Whether its primary refused its last exchange with `hierarchy_disabled`.
    public var primaryRefuses: Bool?
    /// What its last lookup of this key at its primary answered (since it started), and when.
    public var lastLookup: String?
    /// When that lookup was made.
    public var lastLookupAt: Date?
    /// For a server that could not be asked: why (`hierarchy_disabled: …`, `unreachable: …`).
    public var refusal: String?

    /// A hop.
    public init(serverID: ServerID, held: Bool) {
        self.serverID = serverID
        self.held = held
    }

    enum CodingKeys: String, CodingKey {
        case held, state, blocked, destroyed, provenance, stored, refusal
        case serverID = "server_id"
        case useHierarchy = "use_hierarchy"
        case acknowledgedByPrimary = "acknowledged_by_primary"
        case primaryServerID = "primary_server_id"
        case primaryRefuses = "primary_refuses"
        case lastLookup = "last_lookup"
        case lastLookupAt = "last_lookup_at"
    }
}

/// The device asked about, as the server asked sees it.
public struct ExplainDevice: Codable, Sendable, Equatable {
    /// Its id.
    public var id: ClientID
    /// Whether it is enrolled here at all.
    public var enrolled: Bool
    /// Its enrollment state, when enrolled.
    public var state: EnrollmentState?
    /// The name it enrolled under.
    public var name: String?
    /// This server's `release_policy`.
    public var releasePolicy: String
    /// Why the policy keeps the key from it, or nil when the policy allows it.
    public var policyRefusal: String?

    /// A device view.
    public init(id: ClientID, enrolled: Bool, state: EnrollmentState?, name: String?, releasePolicy: String, policyRefusal: String?) {
        self.id = id
        self.enrolled = enrolled
        self.state = state
        self.name = name
        self.releasePolicy = releasePolicy
        self.policyRefusal = policyRefusal
    }

    enum CodingKeys: String, CodingKey {
        case id, enrolled, state, name
        case releasePolicy = "release_policy"
        case policyRefusal = "policy_refusal"
    }
}

/// `GET /v1/admin/explain/{id}`: the hops from this server up, the device if one was named, and
/// the conclusion in one sentence.
public struct KeyExplanation: Codable, Sendable, Equatable {
    /// The key.
    public var keyID: KeyID
    /// This server first, then each primary above it that answered (or refused).
    public var hops: [ExplainHop]
    /// The device asked about.
    public var device: ExplainDevice?
    /// What it adds up to.
    public var verdict: String

    /// An explanation.
    public init(keyID: KeyID, hops: [ExplainHop], device: ExplainDevice?, verdict: String) {
        self.keyID = keyID
        self.hops = hops
        self.device = device
        self.verdict = verdict
    }

    enum CodingKeys: String, CodingKey {
        case hops, device, verdict
        case keyID = "key_id"
    }
}
