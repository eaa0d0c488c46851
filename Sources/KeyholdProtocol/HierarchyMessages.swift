public import Foundation
public import KeyholdCore

/// One key in a push from a secondary to its primary.
public struct PushedKey: Codable, Sendable {
    public var record: KeyRecord
    public var secret: String
    public var blocked: Bool
    public init(record: KeyRecord, secret: String, blocked: Bool) {
        self.record = record
        self.secret = secret
        self.blocked = blocked
    }
}

/// `POST /v1/hierarchy/push`.
public struct PushRequest: Codable, Sendable {
    public var keys: [PushedKey]
    public init(keys: [PushedKey]) { self.keys = keys }
}

/// Sent after the primary committed the batch.
public struct PushResponse: Codable, Sendable, Equatable {
    public var accepted: Int
    public var alreadyPresent: Int
    public var conflicts: [KeyID]
    public init(accepted: Int, alreadyPresent: Int, conflicts: [KeyID]) {
        self.accepted = accepted
        self.alreadyPresent = alreadyPresent
        self.conflicts = conflicts
    }
    enum CodingKeys: String, CodingKey { case accepted, alreadyPresent = "already_present", conflicts }
}

/// `POST /v1/admin/primary`: join a primary.
public struct JoinRequest: Codable, Sendable {
    public var token: String
    public init(token: String) { self.token = token }
}

/// `POST /v1/admin/hierarchy`: turn the option on or off.
public struct HierarchyOptionRequest: Codable, Sendable {
    public var enabled: Bool
    public init(enabled: Bool) { self.enabled = enabled }
}

/// The hierarchy part of a server's status.
public struct HierarchyStatus: Codable, Sendable, Equatable {
    public var useHierarchy: Bool
    public var primaryServerID: ServerID?
    public var primaryAddress: String?
    /// Highest sequence number the primary acknowledged.
    public var pushCursor: Int64
    /// Keys with a sequence number above the cursor (not yet acknowledged).
    public var pending: Int
    public var lastPush: Date?
    public var lastPushResult: String?
    /// The primary refused the last exchange with `hierarchy_disabled`.
    public var primaryRefuses: Bool

    public init(useHierarchy: Bool, primaryServerID: ServerID?, primaryAddress: String?, pushCursor: Int64, pending: Int,
                lastPush: Date?, lastPushResult: String?, primaryRefuses: Bool) {
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
        case useHierarchy = "use_hierarchy", primaryServerID = "primary_server_id", primaryAddress = "primary_address"
        case pushCursor = "push_cursor", pending, lastPush = "last_push", lastPushResult = "last_push_result", primaryRefuses = "primary_refuses"
    }
}

/// What one sync (heartbeat push) did.
public struct SyncResponse: Codable, Sendable, Equatable {
    public var pushed: Int
    public var batches: Int
    public var cursor: Int64
    public init(pushed: Int, batches: Int, cursor: Int64) {
        self.pushed = pushed
        self.batches = batches
        self.cursor = cursor
    }
}
