import Foundation
import KeyholdCore
import KeyholdSystem
import Prometheus

/// The agent's metrics (docs/operations.md, "Metrics"), written for node-exporter's textfile
/// collector: the whole exposition replaced atomically at each heartbeat, so the collector never
/// reads half a file. No label takes an unbounded value.
final class AgentMetrics: Sendable {
    private let registry = PrometheusCollectorRegistry()

    init() {
        registry.makeGauge(
            descriptor: Self.name("build_info", help: "Always 1; the labels say which agent build runs."),
            labels: [
                ("version", KeyholdVersion.current)
            ]
        ).set(to: 1)
        escrowFailures.increment(by: Int64(0))
        heartbeatFailures.increment(by: Int64(0))
        for result in ["verified", "drift"] { unlockCounter(result).increment(by: Int64(0)) }
        for result in ["ok", "failed"] { renewalCounter(result).increment(by: Int64(0)) }
    }

    private static func name(_ base: String, unit: String = "", help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "keyhold_agent", metricName: base, unitName: unit, helpText: help)
    }

    /// A new key escrowed: how long the server took to acknowledge it.
    func escrowed(after duration: Duration) {
        registry.makeDurationHistogram(
            descriptor: Self.name("escrow_duration", unit: "seconds", help: "Time from sending a new key to the server's acknowledgement."),
            labels: [],
            buckets: [
                .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250),
                .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(15),
            ]
        ).record(duration)
    }

    /// A new key whose escrow failed (so nothing was encrypted with it).
    func escrowFailed() { escrowFailures.increment() }

    private var escrowFailures: Counter {
        registry.makeCounter(
            descriptor: Self.name("escrow_failures", unit: "total", help: "New keys whose escrow failed; nothing was encrypted with them."),
            labels: [])
    }

    /// A heartbeat that failed.
    func heartbeatFailed() { heartbeatFailures.increment() }

    private var heartbeatFailures: Counter {
        registry.makeCounter(descriptor: Self.name("heartbeat_failures", unit: "total", help: "Heartbeats that failed."), labels: [])
    }

    /// A certificate renewal that worked.
    func certificateRenewed() { renewalCounter("ok").increment() }
    /// A certificate renewal that failed (tried again at the next heartbeat).
    func certificateRenewalFailed() { renewalCounter("failed").increment() }

    private func renewalCounter(_ result: String) -> Counter {
        registry.makeCounter(
            descriptor: Self.name("certificate_renewals", unit: "total", help: "Renewals of the device's certificate, by result (ok or failed)."),
            labels: [("result", result)])
    }

    /// A drive unlock that reached its key check: `verified` or `drift`.
    func unlock(_ result: String) { unlockCounter(result).increment() }

    private func unlockCounter(_ result: String) -> Counter {
        registry.makeCounter(
            descriptor: Self.name(
                "unlocks", unit: "total",
                help: "Drive unlocks by the escrow check's result: verified, or drift (the escrowed key no longer opens it)."),
            labels: [("result", result)])
    }

    /// The state at a heartbeat: cached keys and the last successful contact with the server.
    func state(cachedKeys: Int, lastContact: Date?, certificateExpires: Date?) {
        if let certificateExpires {
            registry.makeGauge(
                descriptor: Self.name("certificate_expiry", unit: "timestamp_seconds", help: "When the device's certificate expires (Unix time)."),
                labels: []
            ).set(to: certificateExpires.timeIntervalSince1970)
        }
        registry.makeGauge(descriptor: Self.name("cached_keys", help: "Keys in the agent's sealed cache."), labels: []).set(
            to: Double(cachedKeys))
        registry.makeGauge(
            descriptor: Self.name(
                "last_contact", unit: "timestamp_seconds", help: "When a heartbeat last reached the server (Unix time; 0: never since start)."),
            labels: []
        ).set(to: lastContact?.timeIntervalSince1970 ?? 0)
    }

    /// Replaces `path` with the exposition (written beside it, synced, renamed; mode 0644).
    func write(to path: String) throws {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        try AtomicFileWriter.replace(path, with: Data(buffer), mode: 0o644)
    }
}
