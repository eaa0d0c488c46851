public import Foundation
public import KeyholdCore

/// Where a device's request for another device's key stands under `release_policy = approval`
/// (docs/spec/protocol.md, "Release approval").
public enum ApprovalState: String, Codable, Sendable, CaseIterable, CustomStringConvertible {
    /// Waiting for an administrator.
    case pending
    /// Approved: the device's next request for the key releases it, once, within the approval's
    /// lifetime.
    case approved
    /// Denied: the device's requests for the key are refused with the reason, until an
    /// administrator approves it after all.
    case denied
    /// The approved release happened; the request is history.
    case released
    /// The approval was not used within its lifetime; the request is history.
    case expired

    /// The states of a request that is still open: at most one per device and key.
    public static let open: Set<ApprovalState> = [.pending, .approved, .denied]

    /// The wire text.
    public var description: String { rawValue }
}

/// One request for approval (`GET /v1/admin/releases`).
public struct ApprovalInfo: Codable, Sendable, Equatable {
    /// The request's id (what `keyhold-server release approve` takes).
    public var id: ApprovalID
    /// The key asked for.
    public var keyID: KeyID
    /// The device that asked.
    public var clientID: ClientID
    /// The name that device gave at enrollment.
    public var clientName: String
    /// When it first asked.
    public var requested: Date
    /// Where it stands.
    public var state: ApprovalState
    /// The administrator who approved or denied it.
    public var decidedBy: ClientID?
    /// When they did.
    public var decided: Date?
    /// The reason they gave.
    public var reason: String

    /// One request.
    public init(
        id: ApprovalID, keyID: KeyID, clientID: ClientID, clientName: String, requested: Date, state: ApprovalState, decidedBy: ClientID?,
        decided: Date?, reason: String
    ) {
        self.id = id
        self.keyID = keyID
        self.clientID = clientID
        self.clientName = clientName
        self.requested = requested
        self.state = state
        self.decidedBy = decidedBy
        self.decided = decided
        self.reason = reason
    }

    enum CodingKeys: String, CodingKey {
        case id, state, reason, requested, decided
        case keyID = "key_id"
        case clientID = "client_id"
        case clientName = "client_name"
        case decidedBy = "decided_by"
    }
}

/// `GET /v1/admin/releases`: the requests, newest first.
public struct ApprovalListResponse: Codable, Sendable {
    /// The requests.
    public var requests: [ApprovalInfo]
    /// The requests.
    public init(requests: [ApprovalInfo]) { self.requests = requests }
}

/// `POST /v1/admin/releases/{id}/approve` and `…/deny`.
public struct ApprovalDecisionRequest: Codable, Sendable {
    /// Why (required to deny; recorded in the audit trail either way).
    public var reason: String
    /// A decision with `reason`.
    public init(reason: String) { self.reason = reason }
}
