public import Foundation
public import KeyholdCore

/// One key in a push from a secondary to its primary: the key's wire form, whether it is
/// blocked, and whether it is the secondary's own.
public struct PushedKey: Codable, Sendable {
    /// The key and its secret.
    public var key: KeyMaterial
    /// Whether the secondary holds it blocked (a block travels up).
    public var blocked: Bool
    /// Whether the key came to the secondary from below (its devices, its own secondaries, an
    /// import) rather than from its primary: the primary then holds it for the secondary, whose
    /// destruction notice it follows (docs/spec/hierarchy.md §3b). Absent from older secondaries: false.
    public var own: Bool

    /// A key to push.
    public init(key: KeyMaterial, blocked: Bool, own: Bool = true) {
        self.key = key
        self.blocked = blocked
        self.own = own
    }

    enum CodingKeys: String, CodingKey { case blocked, own }

    /// Decodes `record`, `secret`, `blocked` and `own` from one object.
    public init(from decoder: any Decoder) throws {
        key = try KeyMaterial(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        blocked = try c.decode(Bool.self, forKey: .blocked)
        own = try c.decodeIfPresent(Bool.self, forKey: .own) ?? false
    }

    /// Encodes `record`, `secret`, `blocked` and `own` into one object.
    public func encode(to encoder: any Encoder) throws {
        try key.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(blocked, forKey: .blocked)
        try c.encode(own, forKey: .own)
    }
}

/// A key a secondary destroyed, in a push: its record and when (docs/spec/hierarchy.md §3b). The
/// primary destroys its own copy unless one of its active devices still references the key.
public struct DestroyedKeyNotice: Codable, Sendable, Equatable {
    /// The key's record.
    public var record: KeyRecord
    /// When the secondary destroyed it.
    public var destroyed: Date

    /// A notice.
    public init(record: KeyRecord, destroyed: Date) {
        self.record = record
        self.destroyed = destroyed
    }
}

/// A key's block state as of one change, in a primary's change feed (docs/spec/hierarchy.md §3a).
public struct KeyStateChange: Codable, Sendable, Equatable {
    /// The key.
    public var keyID: KeyID
    /// Whether it is blocked now.
    public var blocked: Bool
    /// The change's place in the primary's feed (strictly increasing).
    public var sequence: Int64
    /// Whether the primary destroyed the key (§3b): the secondary destroys its copy unless one of
    /// its active devices still references the key.
    public var destroyed: Bool

    /// A change.
    public init(keyID: KeyID, blocked: Bool, sequence: Int64, destroyed: Bool = false) {
        self.keyID = keyID
        self.blocked = blocked
        self.sequence = sequence
        self.destroyed = destroyed
    }

    enum CodingKeys: String, CodingKey {
        case keyID = "key_id"
        case blocked
        case sequence
        case destroyed
    }

    /// Decodes a change; one without `destroyed` (from an older primary) is a block state.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        keyID = try c.decode(KeyID.self, forKey: .keyID)
        blocked = try c.decode(Bool.self, forKey: .blocked)
        sequence = try c.decode(Int64.self, forKey: .sequence)
        destroyed = try c.decodeIfPresent(Bool.self, forKey: .destroyed) ?? false
    }
}

/// `POST /v1/hierarchy/push`.
public struct PushRequest: Codable, Sendable {
    /// The batch, in the secondary's sequence order (may be empty: a heartbeat that only asks for
    /// the primary's state changes).
    public var keys: [PushedKey]
    /// Keys of the batch the secondary destroyed (no secret travels); `keys` and `destroyed`
    /// together hold at most one batch (10,000 keys).
    public var destroyed: [DestroyedKeyNotice]
    /// The last change of the primary's feed the secondary applied; nil asks for none (an older
    /// secondary).
    public var changesAfter: Int64?
    /// The secondary's report on itself, in the first batch of each push (nil in the others, and
    /// from older secondaries).
    public var report: SecondaryReport?

    /// A batch.
    public init(keys: [PushedKey], destroyed: [DestroyedKeyNotice] = [], changesAfter: Int64? = nil, report: SecondaryReport? = nil) {
        self.keys = keys
        self.destroyed = destroyed
        self.changesAfter = changesAfter
        self.report = report
    }

    enum CodingKeys: String, CodingKey {
        case keys
        case destroyed
        case report
        case changesAfter = "changes_after"
    }

    /// Decodes a batch; one without `destroyed` (from an older secondary) carries none.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        keys = try c.decode([PushedKey].self, forKey: .keys)
        destroyed = try c.decodeIfPresent([DestroyedKeyNotice].self, forKey: .destroyed) ?? []
        changesAfter = try c.decodeIfPresent(Int64.self, forKey: .changesAfter)
        report = try c.decodeIfPresent(SecondaryReport.self, forKey: .report)
    }
}

/// Sent after the primary committed the batch.
public struct PushResponse: Codable, Sendable, Equatable {
    /// Keys stored now.
    public var accepted: Int
    /// Keys that were already there with the same secret.
    public var alreadyPresent: Int
    /// Keys refused because the primary holds another secret under their id.
    public var conflicts: [KeyID]
    /// The primary's state changes after the request's `changes_after`, oldest first, at most
    /// ``PushResponse/changeLimit``; a full page means more follow.
    public var changes: [KeyStateChange]
    /// The CAs the primary's clients should trust now (absent from older primaries' answers).
    public var ca: CATrust?

    /// Most changes one answer carries.
    public static let changeLimit = 10_000

    /// An acknowledgement.
    public init(accepted: Int, alreadyPresent: Int, conflicts: [KeyID], changes: [KeyStateChange] = [], ca: CATrust? = nil) {
        self.accepted = accepted
        self.alreadyPresent = alreadyPresent
        self.conflicts = conflicts
        self.changes = changes
        self.ca = ca
    }

    enum CodingKeys: String, CodingKey {
        case accepted
        case alreadyPresent = "already_present"
        case conflicts
        case changes
        case ca
    }

    /// Decodes an acknowledgement; one without `changes` (an older primary) carries none.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        accepted = try c.decode(Int.self, forKey: .accepted)
        alreadyPresent = try c.decode(Int.self, forKey: .alreadyPresent)
        conflicts = try c.decode([KeyID].self, forKey: .conflicts)
        changes = try c.decodeIfPresent([KeyStateChange].self, forKey: .changes) ?? []
        ca = try c.decodeIfPresent(CATrust.self, forKey: .ca)
    }
}

/// `POST /v1/admin/primary`: join a primary.
public struct JoinRequest: Codable, Sendable {
    /// A server-role token of the primary.
    public var token: String
    /// A request to join.
    public init(token: String) { self.token = token }
}

/// `POST /v1/admin/hierarchy`: turn the option on or off.
public struct HierarchyOptionRequest: Codable, Sendable {
    /// The new value of "use hierarchy to obtain encryption keys".
    public var enabled: Bool
    /// A request to set it.
    public init(enabled: Bool) { self.enabled = enabled }
}

/// The hierarchy part of a server's status.
public struct HierarchyStatus: Codable, Sendable, Equatable {
    /// The option "use hierarchy to obtain encryption keys".
    public var useHierarchy: Bool
    /// The primary, if joined.
    public var primaryServerID: ServerID?
    /// The primary's API address.
    public var primaryAddress: String?
    /// Highest sequence number the primary acknowledged.
    public var pushCursor: Int64
    /// Keys with a sequence number above the cursor (not yet acknowledged).
    public var pending: Int
    /// When the last push ended.
    public var lastPush: Date?
    /// `ok: N keys`, or the error of the last push.
    public var lastPushResult: String?
    /// The primary refused the last exchange with `hierarchy_disabled`.
    public var primaryRefuses: Bool

    /// A status.
    public init(
        useHierarchy: Bool, primaryServerID: ServerID?, primaryAddress: String?, pushCursor: Int64, pending: Int,
        lastPush: Date?, lastPushResult: String?, primaryRefuses: Bool
    ) {
        self.useHierarchy = useHierarchy
        self.primaryServerID = primaryServerID
        self.primaryAddress = primaryAddress
        self.pushCursor = pushCursor
        self.pending = pending
        self.lastPush = lastPush
        self.lastPushResult = lastPushResult
        self.primaryRefuses = primaryRefuses
    }

    enum CodingKeys: String, CodingKey {
        case useHierarchy = "use_hierarchy"
        case primaryServerID = "primary_server_id"
        case primaryAddress = "primary_address"
        case pushCursor = "push_cursor"
        case pending
        case lastPush = "last_push"
        case lastPushResult = "last_push_result"
        case primaryRefuses = "primary_refuses"
    }
}

/// What one sync (heartbeat push) did.
public struct SyncResponse: Codable, Sendable, Equatable {
    /// Keys sent.
    public var pushed: Int
    /// Batches acknowledged.
    public var batches: Int
    /// The cursor after the push.
    public var cursor: Int64
    /// False when the push stopped at its time budget with keys still to send: ask again.
    public var complete: Bool

    /// A report.
    public init(pushed: Int, batches: Int, cursor: Int64, complete: Bool = true) {
        self.pushed = pushed
        self.batches = batches
        self.cursor = cursor
        self.complete = complete
    }

    enum CodingKeys: String, CodingKey { case pushed, batches, cursor, complete }

    /// Decodes a report; one without `complete` (from an older server) was complete.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        pushed = try c.decode(Int.self, forKey: .pushed)
        batches = try c.decode(Int.self, forKey: .batches)
        cursor = try c.decode(Int64.self, forKey: .cursor)
        complete = try c.decodeIfPresent(Bool.self, forKey: .complete) ?? true
    }
}

/// What a secondary says about itself in the first batch of each push (`PushRequest.report`):
/// the primary keeps it for `hierarchy tree` and `secondary list`, and records the push as the
/// secondary's last contact.
public struct SecondaryReport: Codable, Sendable, Equatable {
    /// The secondary's Keyhold version.
    public var version: String
    /// Keys the secondary holds.
    public var keyCount: Int
    /// Keys above its push cursor when the push began (not yet acknowledged by this primary).
    public var pending: Int
    /// Age in seconds of the oldest of them (0 when none is pending).
    public var lagSeconds: Double

    /// A report.
    public init(version: String, keyCount: Int, pending: Int, lagSeconds: Double) {
        self.version = version
        self.keyCount = keyCount
        self.pending = pending
        self.lagSeconds = lagSeconds
    }

    enum CodingKeys: String, CodingKey {
        case version, pending
        case keyCount = "key_count"
        case lagSeconds = "lag_seconds"
    }
}

/// One secondary as its primary sees it (`GET /v1/admin/hierarchy/tree`).
public struct SecondaryNode: Codable, Sendable, Equatable {
    /// Its client id here.
    public var id: ClientID
    /// The name it enrolled under.
    public var name: String
    /// Its enrollment state.
    public var state: EnrollmentState
    /// Its last push (recorded in the repository, so it survives a restart of this server).
    public var lastPush: Date?
    /// The version its last report gave.
    public var version: String?
    /// The key count its last report gave.
    public var keyCount: Int?
    /// Since this server started: pending keys and lag its last report gave, keys it pushed,
    /// the size of its last non-empty batch, its last refusal here. Nil when it did not push since.
    public var pending: Int?
    /// Age in seconds of its oldest unacknowledged key, as it last reported.
    public var lagSeconds: Double?
    /// Keys received from it since this server started.
    public var keysReceived: Int?
    /// When it last pushed keys (not only polled for changes).
    public var lastKeys: Date?
    /// The error code of its last refused push, and when.
    public var lastRefusal: String?
    /// When its last push was refused.
    public var lastRefusalAt: Date?

    /// A node.
    public init(
        id: ClientID, name: String, state: EnrollmentState, lastPush: Date?, version: String?, keyCount: Int?, pending: Int? = nil,
        lagSeconds: Double? = nil, keysReceived: Int? = nil, lastKeys: Date? = nil, lastRefusal: String? = nil, lastRefusalAt: Date? = nil
    ) {
        self.id = id
        self.name = name
        self.state = state
        self.lastPush = lastPush
        self.version = version
        self.keyCount = keyCount
        self.pending = pending
        self.lagSeconds = lagSeconds
        self.keysReceived = keysReceived
        self.lastKeys = lastKeys
        self.lastRefusal = lastRefusal
        self.lastRefusalAt = lastRefusalAt
    }

    enum CodingKeys: String, CodingKey {
        case id, name, state, version, pending
        case lastPush = "last_push"
        case keyCount = "key_count"
        case lagSeconds = "lag_seconds"
        case keysReceived = "keys_received"
        case lastKeys = "last_keys"
        case lastRefusal = "last_refusal"
        case lastRefusalAt = "last_refusal_at"
    }
}

/// The hierarchy as one server sees it: itself, its link to its primary, its secondaries
/// (`GET /v1/admin/hierarchy/tree`). A server sees one level each way; `hierarchy tree` on each
/// server of a longer chain shows the rest.
public struct HierarchyTree: Codable, Sendable, Equatable {
    /// This server.
    public var serverID: ServerID
    /// Its option and its push to its primary.
    public var upward: HierarchyStatus
    /// Seconds since the oldest key this server has not had acknowledged was stored (0 when none is pending).
    public var lagSeconds: Double
    /// The servers that joined this one, active ones first.
    public var secondaries: [SecondaryNode]

    /// A tree.
    public init(serverID: ServerID, upward: HierarchyStatus, lagSeconds: Double, secondaries: [SecondaryNode]) {
        self.serverID = serverID
        self.upward = upward
        self.lagSeconds = lagSeconds
        self.secondaries = secondaries
    }

    enum CodingKeys: String, CodingKey {
        case upward, secondaries
        case serverID = "server_id"
        case lagSeconds = "lag_seconds"
    }
}
