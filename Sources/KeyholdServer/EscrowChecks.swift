import Foundation
import KeyholdCore
import KeyholdProtocol
import KeyholdStore
import Logging

/// Escrow checks and rotation at unlock (docs/operations.md "The help desk"): a device asks
/// whether a drive key must be replaced before it unlocks the drive, and reports at its
/// heartbeat whether each drive's escrowed key still opened it.
extension ServerCore {
    /// `GET /v1/keys/{id}/status`: blocked and rotation flags of a key held here, for a device
    /// (no secret; the flags say nothing a release would not).
    func keyStatus(_ keyID: KeyID, by caller: Caller) async throws -> KeyStatusResponse {
        guard let stored = try await repository.key(id: keyID) else {
            throw KeyholdError(
                .notFound, "key \(keyID) is not held by this server", hint: "nothing to do: the key was never escrowed or obtained here")
        }
        if stored.destroyed != nil { throw Self.destroyedError(keyID) }
        let rotation = try await repository.rotationRequired([keyID])
        return KeyStatusResponse(keyID: keyID, blocked: stored.blocked, rotationRequired: rotation.contains(keyID))
    }

    /// Stores the drive checks of a heartbeat: only drive keys held here, times no later than
    /// now. Each drift (the escrowed key no longer opened the drive) is logged at warning and
    /// audited (`escrow_drift`) with the reporting device; so is the first verified check after
    /// a drift, which clears it.
    func recordDriveChecks(_ checks: [DriveCheck], by caller: Caller) async throws {
        guard checks.count <= HeartbeatRequest.checkLimit else {
            throw KeyholdError(
                .invalidRequest, "a heartbeat carries at most \(HeartbeatRequest.checkLimit) drive checks, not \(checks.count)",
                hint: "the agent sends the newest check per drive key; update it")
        }
        let now = Date()
        var newest: [KeyID: DriveCheck] = [:]
        for check in checks where (newest[check.keyID]?.checked ?? .distantPast) <= check.checked { newest[check.keyID] = check }
        let previous = Dictionary(
            try await repository.escrowChecks(keys: Array(newest.keys)).map { ($0.keyID, $0) }, uniquingKeysWith: { a, _ in a })
        var records: [EscrowCheckRecord] = []
        var audit: [AuditEvent] = []
        for (id, check) in newest.sorted(by: { $0.key < $1.key }) {
            guard let stored = try await repository.key(id: id), stored.record.kind == .drive else { continue }
            let record = EscrowCheckRecord(keyID: id, clientID: caller.client.id, checked: min(check.checked, now), opens: check.opens)
            if let before = previous[id], before.checked > record.checked { continue }
            records.append(record)
            if !check.opens {
                logger.warning(
                    "escrow drift: a drive's escrowed key no longer opens it", metadata: ["key": "\(id)", "device": "\(caller.client.id)"])
                audit.append(
                    AuditEvent(
                        actor: caller.actor, action: .escrowDrift, keyID: id, route: .agent, result: .ok,
                        detail: "the escrowed key opened no keyslot of the drive (checked \(ISO8601DateFormatter().string(from: record.checked)))"))
            } else if previous[id]?.opens == false {
                audit.append(
                    AuditEvent(
                        actor: caller.actor, action: .escrowDrift, keyID: id, route: .agent, result: .ok,
                        detail: "drift cleared: the escrowed key opens the drive again"))
            }
        }
        try await repository.recordEscrowChecks(records, audit: audit)
    }
}
