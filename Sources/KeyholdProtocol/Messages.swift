public import Foundation
public import KeyholdCore

// Wire messages of the server API (docs/spec/protocol.md). JSON, snake_case keys, dates as
// ISO 8601, byte strings as standard base64.

/// The body of every error response.
public struct ErrorBody: Codable, Sendable, Equatable {
    public var code: String
    public var message: String
    public var hint: String
    public init(code: String, message: String, hint: String) {
        self.code = code
        self.message = message
        self.hint = hint
    }
}

/// `POST /v1/enroll` (enrollment port).
public struct EnrollRequest: Codable, Sendable {
    public var tokenID: KeyID
    /// The token's secret, base64url as in the token.
    public var secret: String
    /// PEM certificate signing request; the private key never leaves the caller.
    public var csrPEM: String
    /// A name for people (host name).
    public var name: String
    public init(tokenID: KeyID, secret: String, csrPEM: String, name: String) {
        self.tokenID = tokenID
        self.secret = secret
        self.csrPEM = csrPEM
        self.name = name
    }
    enum CodingKeys: String, CodingKey { case tokenID = "token_id", secret, csrPEM = "csr_pem", name }
}

public struct EnrollResponse: Codable, Sendable {
    public var clientID: DeviceID
    public var role: String
    public var certificatePEM: String
    public var caPEM: String
    public var serverID: ServerID
    public init(clientID: DeviceID, role: String, certificatePEM: String, caPEM: String, serverID: ServerID) {
        self.clientID = clientID
        self.role = role
        self.certificatePEM = certificatePEM
        self.caPEM = caPEM
        self.serverID = serverID
    }
    enum CodingKeys: String, CodingKey {
        case clientID = "client_id", role, certificatePEM = "certificate_pem", caPEM = "ca_pem", serverID = "server_id"
    }
}

/// `PUT /v1/keys/{id}`: escrow a key. The server answers only after its repository committed.
public struct EscrowRequest: Codable, Sendable {
    public var record: KeyRecord
    /// The 32-byte secret, base64.
    public var secret: String
    /// Set when a device moving here (`keyhold reassign`) re-escrows a key it held with this
    /// server; the audit record then says `reescrow` and names the previous server.
    public var reassignedFrom: ServerID?
    public init(record: KeyRecord, secret: String, reassignedFrom: ServerID? = nil) {
        self.record = record
        self.secret = secret
        self.reassignedFrom = reassignedFrom
    }

    enum CodingKeys: String, CodingKey { case record, secret, reassignedFrom = "reassigned_from" }
}

/// `POST /v1/leave`: a device tells its old server that it moved (best effort, `keyhold reassign`).
public struct LeaveRequest: Codable, Sendable {
    public var newServerID: ServerID
    public var newAddress: String
    public init(newServerID: ServerID, newAddress: String) {
        self.newServerID = newServerID
        self.newAddress = newAddress
    }

    enum CodingKeys: String, CodingKey { case newServerID = "new_server_id", newAddress = "new_address" }
}

public struct EscrowResponse: Codable, Sendable, Equatable {
    public var keyID: KeyID
    /// `inserted` or `already_present`.
    public var outcome: String
    public init(keyID: KeyID, outcome: String) {
        self.keyID = keyID
        self.outcome = outcome
    }
    enum CodingKeys: String, CodingKey { case keyID = "key_id", outcome }
}

/// `GET /v1/keys/{id}`: a released key.
public struct KeyResponse: Codable, Sendable {
    public var record: KeyRecord
    public var secret: String
    public init(record: KeyRecord, secret: String) {
        self.record = record
        self.secret = secret
    }
}

/// `POST /v1/heartbeat`.
public struct HeartbeatRequest: Codable, Sendable {
    public var agentVersion: String
    public var keyCount: Int
    public init(agentVersion: String, keyCount: Int) {
        self.agentVersion = agentVersion
        self.keyCount = keyCount
    }
    enum CodingKeys: String, CodingKey { case agentVersion = "agent_version", keyCount = "key_count" }
}

public struct HeartbeatResponse: Codable, Sendable {
    public var serverID: ServerID
    public var serverTime: Date
    public init(serverID: ServerID, serverTime: Date) {
        self.serverID = serverID
        self.serverTime = serverTime
    }
    enum CodingKeys: String, CodingKey { case serverID = "server_id", serverTime = "server_time" }
}

/// Key metadata for administrators (never the secret).
public struct KeyInfo: Codable, Sendable, Equatable {
    public var record: KeyRecord
    public var provenance: String
    public var stored: Date
    public var blocked: Bool
    public init(record: KeyRecord, provenance: String, stored: Date, blocked: Bool) {
        self.record = record
        self.provenance = provenance
        self.stored = stored
        self.blocked = blocked
    }
}

public struct KeyListResponse: Codable, Sendable {
    public var keys: [KeyInfo]
    /// Pass as `after` for the next page; absent on the last page.
    public var next: KeyID?
    public init(keys: [KeyInfo], next: KeyID?) {
        self.keys = keys
        self.next = next
    }
}

/// An enrolled device or secondary, for administrators.
public struct ClientInfo: Codable, Sendable, Equatable {
    public var id: DeviceID
    public var role: String
    public var name: String
    public var state: String
    public var enrolled: Date
    public var lastSeen: Date?
    public var agentVersion: String?
    public var keyCount: Int?
    public init(id: DeviceID, role: String, name: String, state: String, enrolled: Date, lastSeen: Date?, agentVersion: String?, keyCount: Int?) {
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
        case id, role, name, state, enrolled, lastSeen = "last_seen", agentVersion = "agent_version", keyCount = "key_count"
    }
}

public struct AuditEntry: Codable, Sendable, Equatable {
    public var sequence: Int64
    public var time: Date
    public var actor: String
    public var action: String
    public var keyID: KeyID?
    public var route: String
    public var result: String
    public var detail: String
    public init(sequence: Int64, time: Date, actor: String, action: String, keyID: KeyID?, route: String, result: String, detail: String) {
        self.sequence = sequence
        self.time = time
        self.actor = actor
        self.action = action
        self.keyID = keyID
        self.route = route
        self.result = result
        self.detail = detail
    }
    enum CodingKeys: String, CodingKey { case sequence, time, actor, action, keyID = "key_id", route, result, detail }
}

public struct TokenCreateRequest: Codable, Sendable {
    public var role: String
    public var uses: Int
    public var ttlSeconds: Int
    public init(role: String, uses: Int, ttlSeconds: Int) {
        self.role = role
        self.uses = uses
        self.ttlSeconds = ttlSeconds
    }
    enum CodingKeys: String, CodingKey { case role, uses, ttlSeconds = "ttl_seconds" }
}

public struct TokenCreateResponse: Codable, Sendable {
    public var token: String
    public var id: KeyID
    public var expires: Date
    public init(token: String, id: KeyID, expires: Date) {
        self.token = token
        self.id = id
        self.expires = expires
    }
}

public struct StatusResponse: Codable, Sendable {
    public var serverID: ServerID
    public var version: String
    public var database: String
    public var keyCount: Int
    public var devices: Int
    public var secondaries: Int
    public var started: Date
    public var hierarchy: HierarchyStatus?
    public init(serverID: ServerID, version: String, database: String, keyCount: Int, devices: Int, secondaries: Int, started: Date, hierarchy: HierarchyStatus? = nil) {
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
        case serverID = "server_id", version, database, keyCount = "key_count", devices, secondaries, started, hierarchy
    }
}

/// Encoders and decoders with the protocol's conventions.
public enum WireFormat {
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

    public static func decoder() -> JSONDecoder {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .iso8601
        return d
    }
}
