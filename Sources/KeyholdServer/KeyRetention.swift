public import Foundation
import KeyholdCore
import KeyholdProtocol
import KeyholdStore
import Logging
import ServiceLifecycle

/// How long the keys of a deleted device are kept (`key_retention_days`, docs/operations.md,
/// "Deleting devices and destroying keys").
public struct KeyRetention: Sendable, Equatable {
    /// Seconds from a device's deletion to the destruction of its keys.
    public var seconds: TimeInterval

    /// A retention of `seconds`.
    public init(seconds: TimeInterval) { self.seconds = max(0, seconds) }

    /// 90 days: a quarter to notice a mistaken deletion (the keys are then still there).
    public static let standard = KeyRetention(seconds: 90 * 86_400)

    /// How often the server looks for keys that are due: a tenth of the retention, between one
    /// second and ten minutes, so a key is destroyed at most that long after it became due.
    public var sweepInterval: Duration { .milliseconds(Int64(min(max(seconds / 10, 1), 600) * 1000)) }
}

extension ServerCore {
    /// Keys destroyed per transaction by the retention.
    static let retentionBatch = 500

    /// Destroys the keys whose retention has passed (one batch per transaction, until none is
    /// left), each with its `key_destroy` record; returns how many were destroyed. A key that an
    /// active device came to reference meanwhile is spared inside the transaction.
    func destroyDueKeys(now: Date = Date()) async throws -> Int {
        var total = 0
        while true {
            let cutoff = now.addingTimeInterval(-keyRetention.seconds)
            let due = try await repository.keysDueForDestruction(deletedBefore: cutoff, limit: Self.retentionBatch)
            if due.isEmpty { return total }
            let formatter = ISO8601DateFormatter()
            let requests = due.map {
                KeyDestruction(
                    keyID: $0.keyID,
                    audit: AuditEvent(
                        actor: .server(serverID), action: .keyDestroy, keyID: $0.keyID, route: .local, result: .ok,
                        detail: "retention: device \($0.client) was deleted \(formatter.string(from: $0.deleted))"),
                    rule: .due(deletedBefore: cutoff))
            }
            let outcomes = try await repository.destroyKeys(requests, at: now)
            let destroyed = outcomes.filter { $0 == .destroyed }.count
            total += destroyed
            logger.notice("destroyed the keys of deleted devices after the retention", metadata: ["keys": "\(destroyed)"])
            // Every due key was decided (destroyed, or spared inside the transaction); spared ones
            // are no longer due, so the next query moves on. Stop if nothing changed, to be safe.
            if destroyed == 0 || due.count < Self.retentionBatch { return total }
        }
    }
}

/// Runs the retention: at every sweep interval the keys of deleted devices whose retention has
/// passed are destroyed. A failure is logged and tried again at the next sweep.
struct KeyRetentionService: Service {
    let core: ServerCore

    func run() async throws {
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            do {
                _ = try await core.destroyDueKeys()
            } catch {
                core.logger.warning("destroying the keys of deleted devices failed; trying again", metadata: ["error": "\(error)"])
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: core.keyRetention.sweepInterval) }
        }
    }
}
