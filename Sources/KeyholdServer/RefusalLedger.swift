import Foundation
import KeyholdCore
import KeyholdProtocol
import KeyholdStore
import Logging
import ServiceLifecycle
import Synchronization

/// Refusals of callers nobody authenticated (bogus enrollments, rate-limited sources), counted in
/// memory and written to the audit trail as one `enroll_refusals` record per reason and window, so
/// a flood of them costs no durable write each. Refusals of an authenticated caller — or of a
/// request naming a real token with its secret — are audited one by one, as before.
final class RefusalLedger: Sendable {
    private struct Tally {
        var count = 0
        var addresses: [String: Int] = [:]
        var addressesDropped = 0
    }

    private struct Window {
        var start = Date()
        var tallies: [KeyholdError.Code: Tally] = [:]
    }

    /// Distinct addresses remembered per reason and window (the rest are only counted).
    private static var addressLimit: Int { 1000 }
    private let window = Mutex(Window())

    /// Counts one refusal of an anonymous request from `address`.
    func record(_ code: KeyholdError.Code, from address: String) {
        window.withLock { w in
            var tally = w.tallies[code] ?? Tally()
            tally.count += 1
            if tally.addresses[address] != nil || tally.addresses.count < Self.addressLimit {
                tally.addresses[address, default: 0] += 1
            } else {
                tally.addressesDropped += 1
            }
            w.tallies[code] = tally
        }
    }

    /// Ends the current window: one audit record per reason seen in it (none when there were no
    /// refusals).
    func summarize(now: Date = Date()) -> [AuditEvent] {
        let ended = window.withLock { w -> Window in
            defer { w = Window(start: now) }
            return w
        }
        let span = "\(formatted(ended.start)) to \(formatted(now))"
        return ended.tallies.sorted { $0.key.rawValue < $1.key.rawValue }.map { code, tally in
            let busiest = tally.addresses.max { $0.value < $1.value }
            var detail = "\(tally.count) refused from \(tally.addresses.count)\(tally.addressesDropped > 0 ? "+" : "") addresses, \(span)"
            if let busiest { detail += "; most from \(busiest.key) (\(busiest.value))" }
            return AuditEvent(time: now, actor: .anonymous, action: .enrollRefusals, route: .enrollment, result: .refused(code), detail: detail)
        }
    }

    /// Refusals counted in the current window, per reason (for tests and logs).
    func pending() -> [KeyholdError.Code: Int] { window.withLock { $0.tallies.mapValues(\.count) } }

    private func formatted(_ date: Date) -> String { date.formatted(.iso8601) }
}

/// Writes the ledger's summary to the audit trail every `interval`, and once more when the
/// server stops, so no counted refusal goes unrecorded by a graceful stop.
struct RefusalSummaryWriter: Service {
    let ledger: RefusalLedger
    let repository: any Repository
    let interval: Duration
    let logger: Logger

    func run() async throws {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
            await flush()
        }
    }

    private func flush() async {
        for event in ledger.summarize() {
            logger.notice("refused anonymous requests", metadata: ["reason": "\(event.result)", "summary": "\(event.detail)"])
            do {
                try await repository.appendAudit(event)
            } catch {
                logger.error("cannot write the refusal summary to the audit trail", metadata: ["error": "\(error)"])
            }
        }
    }
}
