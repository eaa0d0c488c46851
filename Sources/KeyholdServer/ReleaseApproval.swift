import Foundation
import KeyholdCore
import KeyholdProtocol
import KeyholdStore
import Logging

/// `release_policy = approval` (docs/threat-model.md, docs/spec/protocol.md "Release approval"):
/// a device receives its own keys as under `origin_device`; a request for any other key is
/// queued for an administrator, answered `202 pending_approval`, and released once the
/// administrator approved it — one release per approval, within ``ServerCore/approvalLifetime``.
/// Every step is audited: the request (`release_request`), the decision (`release_approve`,
/// `release_deny`, with the administrator and the reason) and the release itself.
extension ServerCore {
    /// The longest reason an administrator may give.
    static let reasonLimit = 500

    /// The approved request that lets `caller` receive `keyID`, or the answer that it may not
    /// yet: `pending_approval` (a new request is queued and audited; asking again while it waits
    /// writes nothing) or `forbidden` (denied; audited with the reason). `why` says why the policy
    /// does not release the key directly.
    func approvedRequest(for keyID: KeyID, by caller: Caller, why: String) async throws -> ApprovalRecord {
        var request = try await openApproval(keyID, by: caller, detail: why)
        if request.state == .approved, let decided = request.decided, Date().timeIntervalSince(decided) > approvalLifetime {
            // Not used in time: the request is history, and the device's request is a new one.
            _ = try await repository.setApprovalState(id: request.id, from: [.approved], to: .expired, decision: nil, audit: nil)
            request = try await openApproval(
                keyID, by: caller, detail: "\(why); the approval of request \(request.id) expired unused after \(Int(approvalLifetime)) s")
        }
        switch request.state {
        case .approved:
            return request
        case .denied:
            let by = request.decidedBy.map { "admin:\($0)" } ?? "an administrator"
            try await auditRefusedRelease(
                keyID, to: caller.actor, .forbidden, "release_policy approval: request \(request.id) was denied by \(by): \(request.reason)")
            throw KeyholdError(
                .forbidden, "an administrator denied key \(keyID) to this device (request \(request.id)): \(request.reason)",
                hint: "ask your administrator; they can still approve it ('keyhold-server release approve \(request.id) --reason …')")
        case .pending, .released, .expired:
            throw KeyholdError(
                .pendingApproval, "key \(keyID) waits for an administrator's approval (request \(request.id))",
                hint: "ask your administrator to run 'keyhold-server release approve \(request.id) --reason …', then try again")
        }
    }

    /// The open request of `caller` for `keyID`, or a new pending one (audited as `release_request`).
    private func openApproval(_ keyID: KeyID, by caller: Caller, detail: String) async throws -> ApprovalRecord {
        let new = ApprovalRecord(id: .random(), keyID: keyID, clientID: caller.client.id, requested: Date())
        let (request, created) = try await audited {
            try await repository.openApproval(
                new,
                audit: AuditEvent(
                    time: new.requested, actor: caller.actor, action: .releaseRequest, keyID: keyID, route: .agent, result: .ok,
                    detail: "request \(new.id) queued for an administrator: \(detail)"))
        }
        if created {
            logger.notice(
                "a key release waits for an administrator's approval",
                metadata: ["request": "\(request.id)", "key": "\(keyID)", "device": "\(caller.client.id)"])
        }
        return request
    }

    /// Marks an approved request used once its release went out. A failure here leaves the
    /// approval standing (the device may receive the key once more, audited), never the reverse.
    func consumeApproval(_ request: ApprovalRecord) async {
        do {
            _ = try await repository.setApprovalState(id: request.id, from: [.approved], to: .released, decision: nil, audit: nil)
        } catch {
            logger.error(
                "an approved release went out but its request could not be closed", metadata: ["request": "\(request.id)", "error": "\(error)"])
        }
    }

    /// `GET /v1/admin/releases`: requests in `states`, newest first, with the devices' names.
    func approvals(states: Set<ApprovalState>, limit: Int) async throws -> ApprovalListResponse {
        let records = try await repository.listApprovals(states: states, limit: limit)
        var names: [ClientID: String] = [:]
        for id in Set(records.map(\.clientID)) { names[id] = try await repository.client(id: id)?.name ?? "" }
        return ApprovalListResponse(requests: records.map { Self.info($0, name: names[$0.clientID] ?? "") })
    }

    /// `POST /v1/admin/releases/{id}/approve` or `…/deny`, with a reason (audited with the
    /// administrator). A pending or denied request can be approved; a pending or approved one
    /// (not yet used) can be denied.
    func decide(_ id: ApprovalID, approve: Bool, reason: String, by caller: Caller) async throws -> ApprovalInfo {
        try Self.checkReason(reason, for: "a decision")
        let from: Set<ApprovalState> = approve ? [.pending, .denied] : [.pending, .approved]
        let decision = ApprovalDecision(by: caller.client.id, at: Date(), reason: reason)
        guard let current = try await repository.approval(id: id) else {
            throw KeyholdError(.notFound, "no release request \(id) is known here", hint: "list them with 'keyhold-server release list'")
        }
        let audit = AuditEvent(
            time: decision.at, actor: caller.actor, action: approve ? .releaseApprove : .releaseDeny, keyID: current.keyID, route: .adminAPI,
            result: .ok, detail: "request \(id) of device \(current.clientID): \(reason)")
        guard
            let decided = try await repository.setApprovalState(
                id: id, from: from, to: approve ? .approved : .denied, decision: decision, audit: audit)
        else {
            let now = try await repository.approval(id: id)?.state ?? current.state
            throw KeyholdError(
                .conflict, "release request \(id) is \(now) and cannot be \(approve ? "approved" : "denied")",
                hint: now == .released || now == .expired
                    ? "the request is closed; the device's next request for the key opens a new one"
                    : "list requests with 'keyhold-server release list'")
        }
        logger.notice(approve ? "release request approved" : "release request denied", metadata: ["request": "\(id)", "by": "\(caller.actor)"])
        return Self.info(decided, name: try await repository.client(id: decided.clientID)?.name ?? "")
    }

    private static func info(_ r: ApprovalRecord, name: String) -> ApprovalInfo {
        ApprovalInfo(
            id: r.id, keyID: r.keyID, clientID: r.clientID, clientName: name, requested: r.requested, state: r.state, decidedBy: r.decidedBy,
            decided: r.decided, reason: r.reason)
    }
}
