import Foundation
import KeyholdCore
import KeyholdProtocol
import KeyholdStore
import Prometheus
import Synchronization
import X509

/// The server's Prometheus metrics (docs/operations.md, "Metrics"), in one registry of
/// swift-prometheus's own, served on the metrics listener. Every label takes its value from a
/// closed set (result and error codes, route templates, states): never a key, device or client id.
///
/// swift-prometheus's types are used directly rather than through swift-metrics' facade, because
/// only they carry the `# HELP` text that `promtool check metrics` requires of every metric.
public final class ServerMetrics: Sendable {
    /// Where the metrics live; `text()` renders it.
    let registry = PrometheusCollectorRegistry()
    /// False without a metrics listener: then nothing is counted (no cost on the hot paths).
    let enabled: Bool
    /// The collectors already made, by metric and label values. swift-prometheus checks the
    /// name, the labels and the help text at every `make…` call, which cost more than the count
    /// itself on the release path (make bench measured 6.5 % of release throughput); a lookup
    /// here is one lock and one hash of a few short strings, with no allocation and no dynamic cast.
    private let counters = Mutex<[SeriesKey: Counter]>([:])
    private let durations = Mutex<[SeriesKey: DurationHistogram]>([:])
    private let values = Mutex<[SeriesKey: ValueHistogram]>([:])

    /// A metric's name and up to three label values (unused ones empty) and a status code.
    private struct SeriesKey: Hashable {
        var name: String
        var a = ""
        var b = ""
        var c = ""
        var status = 0
    }

    /// The collector of `key` in `table`, made by `make` the first time.
    private static func cached<M: Sendable>(_ table: borrowing Mutex<[SeriesKey: M]>, _ key: SeriesKey, make: () -> M) -> M {
        if let found = table.withLock({ $0[key] }) { return found }
        let collector = make()
        table.withLock { $0[key] = collector }
        return collector
    }

    private func cachedCounter(_ key: SeriesKey, make: () -> Counter) -> Counter { Self.cached(counters, key, make: make) }
    private func cachedDurations(_ key: SeriesKey, make: () -> DurationHistogram) -> DurationHistogram { Self.cached(durations, key, make: make) }
    private func cachedValues(_ key: SeriesKey, make: () -> ValueHistogram) -> ValueHistogram { Self.cached(values, key, make: make) }

    /// The seconds buckets of request and escrow durations: 1 ms to 10 s.
    static let durationBuckets: [Duration] = [
        .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
        .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(10),
    ]

    /// A metrics registry with the build info set, and the main counters present at zero (so a
    /// rate over them exists before their first event).
    public init(enabled: Bool = true) {
        self.enabled = enabled
        registry.makeGauge(
            descriptor: Self.name("build_info", help: "Always 1; the labels say which build runs."),
            labels: [
                ("version", KeyholdVersion.current)
            ]
        ).set(to: 1)
        for route in ["device", "secondary"] { releaseCounter(route: route, result: "ok").increment(by: Int64(0)) }
        for outcome in ["inserted", "already_present", "conflict"] { escrowCounter(outcome).increment(by: Int64(0)) }
        enrollmentCounter("ok").increment(by: Int64(0))
        auditFailures.increment(by: Int64(0))
        pushedCounter.increment(by: Int64(0))
        databaseErrors.increment(by: Int64(0))
        for result in ["found", "not_found"] { lookupCounter(result).increment(by: Int64(0)) }
    }

    /// The buckets of release batch sizes: powers of two up to the drivers' largest batch (256).
    static let batchBuckets: [Double] = [1, 2, 4, 8, 16, 32, 64, 128, 256]

    static func name(_ base: String, unit: String = "", help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "keyhold", metricName: base, unitName: unit, helpText: help)
    }

    // MARK: Events

    /// A key asked for by a device (`route` `device`) or a secondary (`secondary`): `ok` or the
    /// error code of the refusal.
    func release(route: String, result: String) {
        guard enabled else { return }
        releaseCounter(route: route, result: result).increment()
    }

    private func releaseCounter(route: String, result: String) -> Counter {
        cachedCounter(SeriesKey(name: "releases", a: route, b: result)) {
            registry.makeCounter(
                descriptor: Self.name("releases", unit: "total", help: "Key releases asked for, by caller kind and result (ok or the error code)."),
                labels: [("route", route), ("result", result)])
        }
    }

    /// An escrow request's outcome (`inserted`, `already_present`, `conflict`, or the error code)
    /// and, for a stored key, how long it took from the request to the acknowledged commit.
    func escrow(outcome: String, duration: Duration?) {
        guard enabled else { return }
        escrowCounter(outcome).increment()
        if let duration {
            cachedDurations(SeriesKey(name: "escrow_duration")) {
                registry.makeDurationHistogram(
                    descriptor: Self.name(
                        "escrow_duration", unit: "seconds", help: "Time to escrow as the server sees it: request received to commit acknowledged."),
                    labels: [], buckets: Self.durationBuckets
                )
            }.record(duration)
        }
    }

    private func escrowCounter(_ outcome: String) -> Counter {
        cachedCounter(SeriesKey(name: "escrows", a: outcome)) {
            registry.makeCounter(
                descriptor: Self.name(
                    "escrows", unit: "total", help: "Escrow requests by outcome (inserted, already_present, conflict or the error code)."),
                labels: [("outcome", outcome)])
        }
    }

    /// An enrollment request's result (`ok` or the error code).
    func enrollment(result: String) {
        guard enabled else { return }
        enrollmentCounter(result).increment()
    }

    private func enrollmentCounter(_ result: String) -> Counter {
        cachedCounter(SeriesKey(name: "enrollments", a: result)) {
            registry.makeCounter(
                descriptor: Self.name("enrollments", unit: "total", help: "Enrollment requests by result (ok or the error code)."),
                labels: [("result", result)])
        }
    }

    /// An audit record that could not be written (the operation it guards was refused).
    func auditWriteFailure() {
        guard enabled else { return }
        auditFailures.increment()
    }

    private var auditFailures: Counter {
        cachedCounter(SeriesKey(name: "audit_write_failures")) {
            registry.makeCounter(
                descriptor: Self.name(
                    "audit_write_failures", unit: "total", help: "Audit records that could not be written; each refused its operation."),
                labels: [])
        }
    }

    /// One answered HTTP request: its listener, method, route template (never the path with
    /// ids in it), status and duration.
    func request(listener: String, method: String, route: String, status: Int, duration: Duration) {
        guard enabled else { return }
        cachedDurations(SeriesKey(name: "http_request_duration", a: listener, b: method, c: route, status: status)) {
            registry.makeDurationHistogram(
                descriptor: Self.name(
                    "http_request_duration", unit: "seconds", help: "HTTP requests by listener, method, route template and status."),
                labels: [("listener", listener), ("method", method), ("route", route), ("status", String(status))],
                buckets: Self.durationBuckets
            )
        }.record(duration)
    }

    /// Keys a push delivered to the primary (acknowledged after its commit).
    func pushed(_ count: Int) {
        guard enabled else { return }
        pushedCounter.increment(by: Int64(count))
    }

    private var pushedCounter: Counter {
        cachedCounter(SeriesKey(name: "hierarchy_keys_pushed")) {
            registry.makeCounter(
                descriptor: Self.name("hierarchy_keys_pushed", unit: "total", help: "Keys pushed to the primary and acknowledged by it."), labels: [])
        }
    }

    /// A lookup this server sent to its primary for a key it lacks: `found` (and how many servers
    /// up: 1 when the primary held it), `not_found`, or the error code of the refusal.
    func lookup(result: String, hops: Int?) {
        guard enabled else { return }
        lookupCounter(result).increment()
        if let hops {
            cachedValues(SeriesKey(name: "hierarchy_lookup_hops")) {
                registry.makeValueHistogram(
                    descriptor: Self.name(
                        "hierarchy_lookup_hops", help: "Servers up the hierarchy at which a key found by a lookup was held (1: the primary)."),
                    labels: [], buckets: (1...Hierarchy.hopLimit).map(Double.init)
                )
            }.record(Double(hops))
        }
    }

    private func lookupCounter(_ result: String) -> Counter {
        cachedCounter(SeriesKey(name: "hierarchy_lookups", a: result)) {
            registry.makeCounter(
                descriptor: Self.name(
                    "hierarchy_lookups", unit: "total",
                    help: "Keys asked of the primary because they are not held here, by result (found, not_found or the error code)."),
                labels: [("result", result)])
        }
    }

    /// What the repository's driver reports: a release batch, or an error of the database.
    func store(_ event: StoreStatistics.Event) {
        guard enabled else { return }
        switch event {
        case .releaseBatch(let size):
            cachedValues(SeriesKey(name: "release_batch_size")) {
                registry.makeValueHistogram(
                    descriptor: Self.name("release_batch_size", help: "Releases that shared one statement and one commit."),
                    labels: [], buckets: Self.batchBuckets
                )
            }.record(Double(size))
        case .databaseError:
            databaseErrors.increment()
        }
    }

    private var databaseErrors: Counter {
        cachedCounter(SeriesKey(name: "database_errors")) {
            registry.makeCounter(
                descriptor: Self.name(
                    "database_errors", unit: "total", help: "Database operations that failed in the database or on the way to it."),
                labels: [])
        }
    }

    // MARK: State, refreshed at each scrape

    /// The gauges that describe state rather than events, set just before a scrape is answered.
    func refresh(_ state: ScrapeState) {
        for (deviceState, count) in state.devices {
            registry.makeGauge(
                descriptor: Self.name("devices", help: "Enrolled devices by state."), labels: [("state", deviceState)]
            ).set(to: Double(count))
        }
        registry.makeGauge(descriptor: Self.name("keys", help: "Keys stored on this server."), labels: []).set(to: Double(state.keys))
        registry.makeGauge(
            descriptor: Self.name("database_operations_in_flight", help: "Database operations holding or waiting for a connection."),
            labels: []
        ).set(to: Double(state.databaseInFlight))
        registry.makeGauge(
            descriptor: Self.name("database_connections_max", help: "Connections the database driver opens at most."), labels: []
        ).set(to: Double(state.databaseConnections))
        registry.makeGauge(
            descriptor: Self.name(
                "escrow_drift_keys", help: "Drive keys whose last escrow check found that the escrowed key no longer opens the drive."),
            labels: []
        ).set(to: Double(state.driftedKeys))
        for (certificate, expiry) in state.certificateExpiry {
            registry.makeGauge(
                descriptor: Self.name(
                    "certificate_expiry", unit: "timestamp_seconds", help: "When a certificate of this server expires (Unix time)."),
                labels: [("certificate", certificate)]
            ).set(to: expiry.timeIntervalSince1970)
        }
        let h = state.hierarchy
        registry.makeGauge(
            descriptor: Self.name("hierarchy_pending_keys", help: "Keys stored here that the primary has not acknowledged yet."), labels: []
        ).set(to: Double(h.pending))
        registry.makeGauge(
            descriptor: Self.name(
                "hierarchy_push_lag", unit: "seconds", help: "Age of the oldest key the primary has not acknowledged (0 when none is pending)."),
            labels: []
        ).set(to: h.lagSeconds)
        registry.makeGauge(
            descriptor: Self.name("hierarchy_primary_configured", help: "1 when this server has a primary."), labels: []
        ).set(to: h.configured ? 1 : 0)
        registry.makeGauge(
            descriptor: Self.name("hierarchy_primary_reachable", help: "1 when the last push reached the primary."), labels: []
        ).set(to: h.reachable ? 1 : 0)
        registry.makeGauge(
            descriptor: Self.name("hierarchy_primary_refusing", help: "1 when the primary answered the last push with a refusal."), labels: []
        ).set(to: h.refusing ? 1 : 0)
    }

    /// The exposition text (`text/plain; version=0.0.4`).
    func text() -> [UInt8] {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return buffer
    }
}

/// What the state gauges show at one scrape.
struct ScrapeState {
    var devices: [String: Int]
    var keys: Int
    var driftedKeys: Int
    var databaseInFlight: Int
    var databaseConnections: Int
    var certificateExpiry: [String: Date]
    var hierarchy: HierarchyGauges
}

/// The hierarchy's state for the gauges.
struct HierarchyGauges {
    var configured = false
    var pending = 0
    var lagSeconds = 0.0
    var reachable = false
    var refusing = false
}
