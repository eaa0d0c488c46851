import Foundation
import KeyholdCore
import Synchronization

/// A token bucket's parameters: `burst` requests at once, refilled at `perSecond`.
public struct RateLimit: Sendable, Equatable {
    /// Requests the bucket refills per second.
    public var perSecond: Double
    /// Requests allowed at once (the bucket's size).
    public var burst: Int

    /// A limit of `perSecond` with room for `burst` at once.
    public init(perSecond: Double, burst: Int) {
        self.perSecond = perSecond
        self.burst = burst
    }

    /// Enrollment requests per source address: far above one enrollment per device, far below
    /// what fills the audit trail or the token table's lock.
    public static let enrollmentDefault = RateLimit(perSecond: 5, burst: 20)
    /// Key releases per device: an agent asks once per key it has not cached, so even opening a
    /// folder of a thousand files stays within the burst; a harvest of the repository does not.
    public static let releaseDefault = RateLimit(perSecond: 20, burst: 1000)
}

/// One token bucket per key (a source address, a client), shared by every event loop. Buckets
/// that refilled completely are forgotten once the table grows, so an attacker who cycles
/// through addresses costs memory only for the buckets that are still draining.
final class RateLimiter<Key: Hashable & Sendable>: Sendable {
    private struct Bucket {
        var tokens: Double
        var updated: ContinuousClock.Instant
    }

    let limit: RateLimit
    private let buckets = Mutex<[Key: Bucket]>([:])
    private static var pruneAbove: Int { 10_000 }

    init(_ limit: RateLimit) { self.limit = limit }

    /// Takes one request's token for `key`: nil when the request may go on, else how long until
    /// the next token.
    func take(_ key: Key, now: ContinuousClock.Instant = .now) -> Duration? {
        buckets.withLock { buckets in
            var bucket = buckets[key] ?? Bucket(tokens: Double(limit.burst), updated: now)
            bucket.tokens = min(Double(limit.burst), bucket.tokens + limit.perSecond * Self.seconds(now - bucket.updated))
            bucket.updated = now
            defer {
                buckets[key] = bucket
                if buckets.count > Self.pruneAbove { prune(&buckets, now: now) }
            }
            if bucket.tokens >= 1 {
                bucket.tokens -= 1
                return nil
            }
            return .milliseconds(Int64(((1 - bucket.tokens) / limit.perSecond * 1000).rounded(.up)))
        }
    }

    private func prune(_ buckets: inout [Key: Bucket], now: ContinuousClock.Instant) {
        buckets = buckets.filter { _, b in b.tokens + limit.perSecond * Self.seconds(now - b.updated) < Double(limit.burst) }
    }

    private static func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }
}

/// A refusal that tells the caller when to come back (`429` with `Retry-After`).
struct RateLimited: Error {
    /// What the caller reads.
    let error: KeyholdError
    /// Whole seconds until a request would be accepted (at least 1).
    let retryAfter: Int

    init(_ what: String, wait: Duration) {
        retryAfter = max(1, Int(wait.components.seconds) + (wait.components.attoseconds > 0 ? 1 : 0))
        error = KeyholdError(.rateLimited, "\(what); try again in \(retryAfter) s", hint: "wait \(retryAfter) s before the next request")
    }
}
