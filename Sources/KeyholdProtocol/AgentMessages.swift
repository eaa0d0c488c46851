public import Foundation
public import KeyholdCore

// The local socket API between `keyhold` and `keyhold-agent` (docs/spec/agent-socket.md):
// one JSON request line, one JSON response line, then the agent closes the connection.

/// The operations of the agent's socket, as `op` names them; the socket's policy is per operation.
public enum AgentOperation: String, Codable, Sendable, CaseIterable, CustomStringConvertible {
    /// The agent's state.
    case status
    /// Enroll with a server (root).
    case enroll
    /// Move to another server (root).
    case reassign
    /// The key new files are encrypted with (escrowed first).
    case fileKey = "file-key"
    /// A new drive key, escrowed first (root).
    case driveKey = "drive-key"
    /// A key by id, for decryption.
    case key
    /// An offline request code for a key (docs/spec/offline-access.md).
    case offlineRequest = "offline-request"
    /// The key an administrator's response code carries, for one use.
    case offlineKey = "offline-key"
    /// Retire a drive key that `keyhold drive rekey` replaced (root).
    case retireKey = "retire-key"
    /// Ask the server whether a key is blocked or marked for rotation (root).
    case keyStatus = "key-status"
    /// Note whether a drive's escrowed key opened its keyslot, for the next heartbeat (root).
    case driveCheck = "drive-check"
    /// The key new files are encrypted with, made anew if it is the given key or marked for rotation.
    case rotateFileKey = "rotate-file-key"

    /// The wire text.
    public var description: String { rawValue }

    /// Whether only root may ask for it; members of the agent's group may ask for the rest
    /// (files and the status).
    public var needsRoot: Bool {
        switch self {
        case .status, .fileKey, .rotateFileKey, .key, .offlineRequest, .offlineKey: false
        case .enroll, .reassign, .driveKey, .retireKey, .keyStatus, .driveCheck: true
        }
    }
}

/// A request to the agent: `{"op": "…", …}` with the fields its operation needs.
public enum AgentRequest: Codable, Sendable, Equatable {
    /// `{"op": "status"}`
    case status
    /// `{"op": "enroll", "token": "kh1.…", "name": "…"}` (`name` optional: the host name by default)
    case enroll(token: String, name: String?)
    /// `{"op": "reassign", "token": "kh1.…", "dry_run": false}`
    case reassign(token: String, dryRun: Bool)
    /// `{"op": "file-key"}`
    case fileKey
    /// `{"op": "drive-key", "label": "…"}`
    case driveKey(label: String)
    /// `{"op": "key", "key_id": "…"}`
    case key(KeyID)
    /// `{"op": "offline-request", "key_id": "…", "kind": "file"}`
    case offlineRequest(KeyID, kind: KeyKind)
    /// `{"op": "offline-key", "code": "…", "key_id": "…"}` (`key_id` optional: the key the
    /// caller needs; a response for another key is refused and stays usable)
    case offlineKey(code: String, keyID: KeyID?)
    /// `{"op": "retire-key", "key_id": "…", "replaced_by": "…"}`
    case retireKey(KeyID, replacedBy: KeyID)
    /// `{"op": "key-status", "key_id": "…"}`
    case keyStatus(KeyID)
    /// `{"op": "drive-check", "key_id": "…", "opens": true}`
    case driveCheck(KeyID, opens: Bool)
    /// `{"op": "rotate-file-key", "key_id": "…"}`: `key_id` is the key being replaced.
    case rotateFileKey(replacing: KeyID)

    /// Which operation this is.
    public var operation: AgentOperation {
        switch self {
        case .status: return .status
        case .enroll: return .enroll
        case .reassign: return .reassign
        case .fileKey: return .fileKey
        case .driveKey: return .driveKey
        case .key: return .key
        case .offlineRequest: return .offlineRequest
        case .offlineKey: return .offlineKey
        case .retireKey: return .retireKey
        case .keyStatus: return .keyStatus
        case .driveCheck: return .driveCheck
        case .rotateFileKey: return .rotateFileKey
        }
    }

    enum CodingKeys: String, CodingKey {
        case op, token, label, kind, code, opens, name
        case replacedBy = "replaced_by"
        case keyID = "key_id"
        case dryRun = "dry_run"
    }

    /// Decodes a request; a missing field names the operation that needs it.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        switch try c.decode(AgentOperation.self, forKey: .op) {
        case .status: self = .status
        case .enroll: self = .enroll(token: try c.decode(String.self, forKey: .token), name: try c.decodeIfPresent(String.self, forKey: .name))
        case .reassign:
            self = .reassign(token: try c.decode(String.self, forKey: .token), dryRun: try c.decodeIfPresent(Bool.self, forKey: .dryRun) ?? false)
        case .fileKey: self = .fileKey
        case .driveKey: self = .driveKey(label: try c.decodeIfPresent(String.self, forKey: .label) ?? "drive key")
        case .key: self = .key(try c.decode(KeyID.self, forKey: .keyID))
        case .offlineRequest:
            self = .offlineRequest(try c.decode(KeyID.self, forKey: .keyID), kind: try c.decodeIfPresent(KeyKind.self, forKey: .kind) ?? .file)
        case .offlineKey:
            self = .offlineKey(code: try c.decode(String.self, forKey: .code), keyID: try c.decodeIfPresent(KeyID.self, forKey: .keyID))
        case .retireKey:
            self = .retireKey(try c.decode(KeyID.self, forKey: .keyID), replacedBy: try c.decode(KeyID.self, forKey: .replacedBy))
        case .keyStatus: self = .keyStatus(try c.decode(KeyID.self, forKey: .keyID))
        case .driveCheck: self = .driveCheck(try c.decode(KeyID.self, forKey: .keyID), opens: try c.decode(Bool.self, forKey: .opens))
        case .rotateFileKey: self = .rotateFileKey(replacing: try c.decode(KeyID.self, forKey: .keyID))
        }
    }

    /// Encodes the request's `op` and fields.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(operation, forKey: .op)
        switch self {
        case .status, .fileKey: break
        case .enroll(let token, let name):
            try c.encode(token, forKey: .token)
            try c.encodeIfPresent(name, forKey: .name)
        case .reassign(let token, let dryRun):
            try c.encode(token, forKey: .token)
            try c.encode(dryRun, forKey: .dryRun)
        case .driveKey(let label): try c.encode(label, forKey: .label)
        case .key(let id): try c.encode(id, forKey: .keyID)
        case .offlineRequest(let id, let kind):
            try c.encode(id, forKey: .keyID)
            try c.encode(kind, forKey: .kind)
        case .offlineKey(let code, let keyID):
            try c.encode(code, forKey: .code)
            try c.encodeIfPresent(keyID, forKey: .keyID)
        case .retireKey(let id, let replacedBy):
            try c.encode(id, forKey: .keyID)
            try c.encode(replacedBy, forKey: .replacedBy)
        case .keyStatus(let id), .rotateFileKey(let id): try c.encode(id, forKey: .keyID)
        case .driveCheck(let id, let opens):
            try c.encode(id, forKey: .keyID)
            try c.encode(opens, forKey: .opens)
        }
    }
}

/// A request code the agent made, and what it names (`offline-request`).
public struct OfflineRequestInfo: Codable, Sendable, Equatable {
    /// The request code to give the administrator.
    public var code: String
    /// The request id (hex), as the server's audit trail will name it.
    public var requestID: String
    /// The key asked for.
    public var keyID: KeyID
    /// This device's client id.
    public var deviceID: ClientID
    /// A request's description.
    public init(code: String, requestID: String, keyID: KeyID, deviceID: ClientID) {
        self.code = code
        self.requestID = requestID
        self.keyID = keyID
        self.deviceID = deviceID
    }
    enum CodingKeys: String, CodingKey {
        case code
        case requestID = "request_id"
        case keyID = "key_id"
        case deviceID = "device_id"
    }
}

/// The agent's answer: exactly one of `status`, `key`, `reassign`, `offline_request`,
/// `key_status` or `error`.
public enum AgentResponse: Codable, Sendable {
    /// `{"status": {…}}`
    case status(AgentStatus)
    /// `{"key": {"record": {…}, "secret": "…"}}`
    case key(KeyMaterial)
    /// `{"reassign": {…}}`
    case reassign(ReassignReport)
    /// `{"offline_request": {code, request_id, key_id, device_id}}`
    case offlineRequest(OfflineRequestInfo)
    /// `{"key_status": {key_id, blocked, rotation_required}}`
    case keyStatus(KeyStatusResponse)
    /// `{"error": {"code": "…", "message": "…", "hint": "…"}}`
    case failure(ErrorBody)

    enum CodingKeys: String, CodingKey {
        case status, key, reassign, error
        case offlineRequest = "offline_request"
        case keyStatus = "key_status"
    }

    /// Decodes whichever of the four fields is present.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        if let e = try c.decodeIfPresent(ErrorBody.self, forKey: .error) {
            self = .failure(e)
        } else if let s = try c.decodeIfPresent(AgentStatus.self, forKey: .status) {
            self = .status(s)
        } else if let k = try c.decodeIfPresent(KeyMaterial.self, forKey: .key) {
            self = .key(k)
        } else if let r = try c.decodeIfPresent(ReassignReport.self, forKey: .reassign) {
            self = .reassign(r)
        } else if let o = try c.decodeIfPresent(OfflineRequestInfo.self, forKey: .offlineRequest) {
            self = .offlineRequest(o)
        } else if let k = try c.decodeIfPresent(KeyStatusResponse.self, forKey: .keyStatus) {
            self = .keyStatus(k)
        } else {
            throw DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: "an agent answer holds status, key, reassign or error"))
        }
    }

    /// Encodes the one field.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        switch self {
        case .status(let s): try c.encode(s, forKey: .status)
        case .key(let k): try c.encode(k, forKey: .key)
        case .reassign(let r): try c.encode(r, forKey: .reassign)
        case .offlineRequest(let o): try c.encode(o, forKey: .offlineRequest)
        case .keyStatus(let k): try c.encode(k, forKey: .keyStatus)
        case .failure(let e): try c.encode(e, forKey: .error)
        }
    }

    /// The answer's status, or the error it carries (or a protocol error for another answer).
    public func status() throws -> AgentStatus {
        if case .status(let s) = self { return s }
        throw unexpected("a status")
    }

    /// The answer's key, or the error it carries.
    public func key() throws -> KeyMaterial {
        if case .key(let k) = self { return k }
        throw unexpected("a key")
    }

    /// The answer's reassignment report, or the error it carries.
    public func reassignReport() throws -> ReassignReport {
        if case .reassign(let r) = self { return r }
        throw unexpected("a report")
    }

    /// The answer's offline request, or the error it carries.
    public func offlineRequest() throws -> OfflineRequestInfo {
        if case .offlineRequest(let o) = self { return o }
        throw unexpected("a request code")
    }

    /// The answer's key status, or the error it carries.
    public func keyStatus() throws -> KeyStatusResponse {
        if case .keyStatus(let k) = self { return k }
        throw unexpected("a key status")
    }

    private func unexpected(_ what: String) -> KeyholdError {
        if case .failure(let body) = self { return body.error }
        return KeyholdError(.internalError, "the agent answered without \(what)", hint: "check that keyhold and keyhold-agent are the same version")
    }
}

/// What `status` reports.
public struct AgentStatus: Codable, Sendable, Equatable {
    /// Whether the device is enrolled.
    public var enrolled: Bool
    /// Its server.
    public var serverID: ServerID?
    /// Its server's API address.
    public var serverAddress: String?
    /// Its client id at that server.
    public var deviceID: ClientID?
    /// The last successful heartbeat.
    public var lastHeartbeat: Date?
    /// The error of the last heartbeat, if it failed.
    public var lastHeartbeatError: String?
    /// Why heartbeats stopped (the server said the device is revoked or moved), and what to do.
    public var heartbeatStopped: String?
    /// Keys in the sealed cache.
    public var cachedKeys: Int
    /// The key new files are encrypted with.
    public var activeFileKey: KeyID?
    /// Keys whose escrow was started but not acknowledged (they are never used).
    public var outbox: Int
    /// The agent's version.
    public var version: String
    /// When the device's certificate expires (renewed at a heartbeat once two thirds of its
    /// lifetime have passed).
    public var certificateExpires: Date?

    /// A status.
    public init(
        enrolled: Bool, serverID: ServerID?, serverAddress: String?, deviceID: ClientID?, lastHeartbeat: Date?,
        lastHeartbeatError: String?, heartbeatStopped: String? = nil, cachedKeys: Int, activeFileKey: KeyID?, outbox: Int, version: String,
        certificateExpires: Date? = nil
    ) {
        self.enrolled = enrolled
        self.serverID = serverID
        self.serverAddress = serverAddress
        self.deviceID = deviceID
        self.lastHeartbeat = lastHeartbeat
        self.lastHeartbeatError = lastHeartbeatError
        self.heartbeatStopped = heartbeatStopped
        self.cachedKeys = cachedKeys
        self.activeFileKey = activeFileKey
        self.outbox = outbox
        self.version = version
        self.certificateExpires = certificateExpires
    }

    enum CodingKeys: String, CodingKey {
        case certificateExpires = "certificate_expires"
        case enrolled
        case serverID = "server_id"
        case serverAddress = "server_address"
        case deviceID = "device_id"
        case lastHeartbeat = "last_heartbeat"
        case lastHeartbeatError = "last_heartbeat_error"
        case heartbeatStopped = "heartbeat_stopped"
        case cachedKeys = "cached_keys"
        case activeFileKey = "active_file_key"
        case outbox, version
    }
}

/// What `reassign` did (or, with `dry_run`, would do).
public struct ReassignReport: Codable, Sendable {
    /// Whether nothing was changed.
    public var dryRun: Bool
    /// The old server.
    public var fromServerID: ServerID
    /// Its address.
    public var fromAddress: String
    /// Known once enrolled with the new server (not in a dry run).
    public var toServerID: ServerID?
    /// The new server's address.
    public var toAddress: String
    /// The device's id at the new server (not in a dry run).
    public var deviceID: ClientID?
    /// The keys that moved (or would move): every key the device holds.
    public var keys: [KeyID]
    /// Of those, how many the new server stored now and how many it already had.
    public var reescrowed: Int
    /// … and how many it already had.
    public var alreadyPresent: Int
    /// Whether the old server acknowledged the move (best effort), and why not.
    public var oldServerNotified: Bool
    /// Why the old server was not told.
    public var oldServerNote: String?

    /// A report.
    public init(
        dryRun: Bool, fromServerID: ServerID, fromAddress: String, toServerID: ServerID?, toAddress: String, deviceID: ClientID?,
        keys: [KeyID], reescrowed: Int, alreadyPresent: Int, oldServerNotified: Bool, oldServerNote: String?
    ) {
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
        case dryRun = "dry_run"
        case fromServerID = "from_server_id"
        case fromAddress = "from_address"
        case toServerID = "to_server_id"
        case toAddress = "to_address"
        case deviceID = "device_id"
        case keys, reescrowed
        case alreadyPresent = "already_present"
        case oldServerNotified = "old_server_notified"
        case oldServerNote = "old_server_note"
    }
}
