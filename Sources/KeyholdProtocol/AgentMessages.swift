public import Foundation
public import KeyholdCore

// The local socket API between `keyhold` and `keyhold-agent` (docs/spec/agent-socket.md):
// one JSON request line, one JSON response line, then the agent closes the connection.

/// A request to the agent.
public struct AgentRequest: Codable, Sendable {
    /// `status`, `enroll`, `reassign`, `file-key`, `drive-key` or `key`.
    public var op: String
    /// For `enroll`: the token text.
    public var token: String?
    /// For `key`: the key id.
    public var keyID: KeyID?
    /// For `reassign`: only check and report what would move.
    public var dryRun: Bool?
    /// For `drive-key`: the new key's label (which drive it is for).
    public var label: String?

    public init(op: String, token: String? = nil, keyID: KeyID? = nil, dryRun: Bool? = nil, label: String? = nil) {
        self.op = op
        self.token = token
        self.keyID = keyID
        self.dryRun = dryRun
        self.label = label
    }

    enum CodingKeys: String, CodingKey { case op, token, keyID = "key_id", dryRun = "dry_run", label }
}

/// A key handed to a local client: its record and base64 secret.
public struct AgentKey: Codable, Sendable {
    public var record: KeyRecord
    public var secret: String
    public init(record: KeyRecord, secret: String) {
        self.record = record
        self.secret = secret
    }
}

/// What `status` reports.
public struct AgentStatus: Codable, Sendable, Equatable {
    public var enrolled: Bool
    public var serverID: ServerID?
    public var serverAddress: String?
    public var deviceID: DeviceID?
    public var lastHeartbeat: Date?
    public var lastHeartbeatError: String?
    public var cachedKeys: Int
    public var activeFileKey: KeyID?
    /// Keys whose escrow was started but not acknowledged (they are never used).
    public var outbox: Int
    public var version: String

    public init(enrolled: Bool, serverID: ServerID?, serverAddress: String?, deviceID: DeviceID?, lastHeartbeat: Date?,
                lastHeartbeatError: String?, cachedKeys: Int, activeFileKey: KeyID?, outbox: Int, version: String) {
        self.enrolled = enrolled
        self.serverID = serverID
        self.serverAddress = serverAddress
        self.deviceID = deviceID
        self.lastHeartbeat = lastHeartbeat
        self.lastHeartbeatError = lastHeartbeatError
        self.cachedKeys = cachedKeys
        self.activeFileKey = activeFileKey
        self.outbox = outbox
        self.version = version
    }

    enum CodingKeys: String, CodingKey {
        case enrolled, serverID = "server_id", serverAddress = "server_address", deviceID = "device_id"
        case lastHeartbeat = "last_heartbeat", lastHeartbeatError = "last_heartbeat_error", cachedKeys = "cached_keys"
        case activeFileKey = "active_file_key", outbox, version
    }
}

/// The agent's answer: exactly one of `error`, `key` or `status` is present (none for a plain ok).
public struct AgentResponse: Codable, Sendable {
    public var error: ErrorBody?
    public var key: AgentKey?
    public var status: AgentStatus?
    public var reassign: ReassignReport?

    public init(error: ErrorBody? = nil, key: AgentKey? = nil, status: AgentStatus? = nil, reassign: ReassignReport? = nil) {
        self.error = error
        self.key = key
        self.status = status
        self.reassign = reassign
    }
}

/// What `reassign` did (or, with `dry_run`, would do).
public struct ReassignReport: Codable, Sendable {
    public var dryRun: Bool
    public var fromServerID: ServerID
    public var fromAddress: String
    /// Known once enrolled with the new server (not in a dry run).
    public var toServerID: ServerID?
    public var toAddress: String
    /// The device's id at the new server (not in a dry run).
    public var deviceID: DeviceID?
    /// The keys that moved (or would move): every key the device holds.
    public var keys: [KeyID]
    /// Of those, how many the new server stored now and how many it already had.
    public var reescrowed: Int
    public var alreadyPresent: Int
    /// Whether the old server acknowledged the move (best effort), and why not.
    public var oldServerNotified: Bool
    public var oldServerNote: String?

    public init(dryRun: Bool, fromServerID: ServerID, fromAddress: String, toServerID: ServerID?, toAddress: String, deviceID: DeviceID?,
                keys: [KeyID], reescrowed: Int, alreadyPresent: Int, oldServerNotified: Bool, oldServerNote: String?) {
        self.dryRun = dryRun
        self.fromServerID = fromServerID
        self.fromAddress = fromAddress
        self.toServerID = toServerID
        self.toAddress = toAddress
        self.deviceID = deviceID
        self.keys = keys
        self.reescrowed = reescrowed
        self.alreadyPresent = alreadyPresent
        self.oldServerNotified = oldServerNotified
        self.oldServerNote = oldServerNote
    }

    enum CodingKeys: String, CodingKey {
        case dryRun = "dry_run", fromServerID = "from_server_id", fromAddress = "from_address", toServerID = "to_server_id"
        case toAddress = "to_address", deviceID = "device_id", keys, reescrowed, alreadyPresent = "already_present"
        case oldServerNotified = "old_server_notified", oldServerNote = "old_server_note"
    }
}
