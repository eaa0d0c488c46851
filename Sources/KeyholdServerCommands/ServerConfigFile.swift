import Foundation
import KeyholdConfig
import KeyholdCore
import KeyholdLogging
import KeyholdProtocol
import KeyholdServer
import Logging

/// `config.toml` in a server's data directory (written by `init`; `run` flags override it). Every
/// key is listed in docs/operations.md; an unknown, duplicated or mistyped key is an error.
struct ServerConfigFile: Equatable {
    var serverID: ServerID
    var name: String
    var listen: HostPort
    var enrollListen: HostPort
    /// The plain-HTTP metrics listener (`/metrics`, `/v1/health`, `/v1/ready`); off when nil.
    var metricsListen: HostPort?
    /// `sqlite` (the file in the data directory) or a `postgres://` URL.
    var database: String
    /// Addresses written into enrollment tokens; nil: the bound listen addresses.
    var advertiseAPI: String?
    var advertiseEnroll: String?
    /// Seconds between pushes to the primary.
    var hierarchyHeartbeat = 30
    var logLevel: Logger.Level = .info
    /// `text` or `json` log lines.
    var logFormat = LogFormat.text
    /// Connection and request limits (docs/operations.md, "Connection limits").
    var limits = Limits()
    /// Which devices may receive a key.
    var releasePolicy = ReleasePolicy.any
    /// Days the keys of a deleted device are kept before they are destroyed (fractions allowed).
    var keyRetentionDays = KeyRetention.standard.seconds / 86_400

    /// The listeners' caps and timeouts and the enrollment rate, in the file's units.
    struct Limits: Equatable {
        var maxConnections = ConnectionLimits.apiDefault.maxConnections
        var maxHandshakesPerAddress = ConnectionLimits.apiDefault.maxPerAddress
        var enrollMaxConnections = ConnectionLimits.enrollmentDefault.maxConnections
        var enrollMaxConnectionsPerAddress = ConnectionLimits.enrollmentDefault.maxPerAddress
        var handshakeTimeout = Int(ConnectionLimits.apiDefault.handshakeTimeout.components.seconds)
        var idleTimeout = Int(ConnectionLimits.apiDefault.idleTimeout.components.seconds)
        var enrollRate = Int(RateLimit.enrollmentDefault.perSecond)
        var enrollBurst = RateLimit.enrollmentDefault.burst
        var refusalSummaryInterval = 60
        var releaseRate = Int(RateLimit.releaseDefault.perSecond)
        var releaseBurst = RateLimit.releaseDefault.burst
        var releaseAlertKeys = ReleaseAlert.standard.keys
        var releaseAlertWindow = Int(ReleaseAlert.standard.window.components.seconds)
        var releaseApprovalLifetime = 86_400
        var deviceCertificateLifetime = Int(CertificateLifetimes.standard)
        var serverCertificateLifetime = Int(CertificateLifetimes.standard)
        var tlsCertificateLifetime = Int(CertificateLifetimes.standard)
        var masterKeyRewrapBatch = RewrapPace().batch
        var masterKeyRewrapPause = Int(RewrapPace().pause / .milliseconds(1))

        /// Every key, its range, and where its value lives.
        static var keys: [(String, ClosedRange<Int>, WritableKeyPath<Limits, Int>, String)] {
            [
                ("max_connections", 1...1_000_000, \.maxConnections, "connections the API listener holds at once"),
                (
                    "max_handshakes_per_address", 1...1_000_000, \.maxHandshakesPerAddress,
                    "API connections one address may have in their TLS handshake"
                ),
                ("enroll_max_connections", 1...1_000_000, \.enrollMaxConnections, "connections the enrollment listener holds at once"),
                ("enroll_max_connections_per_address", 1...1_000_000, \.enrollMaxConnectionsPerAddress, "enrollment connections per source address"),
                ("handshake_timeout", 1...600, \.handshakeTimeout, "seconds a connection has to finish its TLS handshake"),
                ("idle_timeout", 1...86_400, \.idleTimeout, "seconds a connection may wait between requests"),
                ("enroll_rate", 1...100_000, \.enrollRate, "enrollment requests per second per source address (sustained)"),
                ("enroll_burst", 1...100_000, \.enrollBurst, "enrollment requests per source address at once"),
                ("refusal_summary_interval", 1...86_400, \.refusalSummaryInterval, "seconds between audit records summing up anonymous refusals"),
                ("release_rate", 1...1_000_000, \.releaseRate, "key releases per second per device (sustained)"),
                ("release_burst", 1...1_000_000, \.releaseBurst, "key releases per device at once"),
                ("release_alert_keys", 1...10_000_000, \.releaseAlertKeys, "distinct keys released to one device that raise an alert"),
                ("release_alert_window", 1...2_592_000, \.releaseAlertWindow, "seconds the alert counts distinct keys in"),
                (
                    "release_approval_lifetime", 1...2_592_000, \.releaseApprovalLifetime,
                    "seconds an approved release request stays usable (release_policy = approval)"
                ),
                (
                    "device_certificate_lifetime", 10...157_680_000, \.deviceCertificateLifetime,
                    "seconds a device certificate is valid (the agent renews it once two thirds have passed)"
                ),
                (
                    "server_certificate_lifetime", 10...157_680_000, \.serverCertificateLifetime,
                    "seconds a secondary's certificate is valid (the secondary renews it once two thirds have passed)"
                ),
                (
                    "tls_certificate_lifetime", 10...157_680_000, \.tlsCertificateLifetime,
                    "seconds a renewed TLS certificate is valid (the server renews its own once two thirds have passed)"
                ),
                ("master_key_rewrap_batch", 1...100_000, \.masterKeyRewrapBatch, "keys rewrapped in one transaction during a master-key rotation"),
                (
                    "master_key_rewrap_pause", 0...60_000, \.masterKeyRewrapPause,
                    "milliseconds between rewrap transactions, which leave the database to the requests"
                ),
            ]
        }

        /// The server's settings from these values.
        func apply(to settings: inout ServerSettings) {
            settings.apiLimits = ConnectionLimits(
                maxConnections: maxConnections, maxPerAddress: maxHandshakesPerAddress, perAddressUntilHandshake: true,
                handshakeTimeout: .seconds(handshakeTimeout), idleTimeout: .seconds(idleTimeout))
            settings.enrollLimits = ConnectionLimits(
                maxConnections: enrollMaxConnections, maxPerAddress: enrollMaxConnectionsPerAddress, perAddressUntilHandshake: false,
                handshakeTimeout: .seconds(handshakeTimeout), idleTimeout: .seconds(idleTimeout))
            settings.enrollRate = RateLimit(perSecond: Double(enrollRate), burst: enrollBurst)
            settings.refusalSummaryInterval = .seconds(refusalSummaryInterval)
            settings.releaseRate = RateLimit(perSecond: Double(releaseRate), burst: releaseBurst)
            settings.releaseAlert = ReleaseAlert(keys: releaseAlertKeys, window: .seconds(releaseAlertWindow))
            settings.approvalLifetime = TimeInterval(releaseApprovalLifetime)
            settings.certificateLifetimes = CertificateLifetimes(
                device: TimeInterval(deviceCertificateLifetime), server: TimeInterval(serverCertificateLifetime))
            settings.certificateLifetimes.tls = TimeInterval(tlsCertificateLifetime)
            settings.rewrapPace = RewrapPace(batch: masterKeyRewrapBatch, pause: .milliseconds(masterKeyRewrapPause))
        }
    }

    /// Reads and checks `path`.
    static func read(_ path: String) throws -> ServerConfigFile {
        let file = try ConfigFile(path: path)
        // Every key is read first, so that a misspelt key is reported as such, not as a missing one.
        let id = try file.string("server_id")
        let name = try file.string("name")
        let listen = try file.address("listen")
        let enrollListen = try file.address("enroll_listen")
        let metricsText = try file.string("metrics_listen")
        let database = try file.string("database")
        let advertise = try ["advertise_api", "advertise_enroll"].map { key -> String? in
            guard let text = try file.string(key), !text.isEmpty else { return nil }
            guard (try? HostPort(text)) != nil else {
                throw KeyholdError(
                    .configuration, "\(path): \(key) = \"\(text)\" is not host:port",
                    hint: "write the address devices use, like \"keys.example.org:8443\"")
            }
            return text
        }
        let heartbeat = try file.integer("hierarchy_heartbeat", in: 1...86_400)
        let level = try file.choice("log_level", of: Logger.Level.allCases.map(\.rawValue))
        let format = try file.choice("log_format", of: LogFormat.allCases.map(\.rawValue))
        let policy = try file.choice("release_policy", of: ReleasePolicy.allCases.map(\.rawValue))
        let retention = try file.number("key_retention_days", in: 0...36_500)
        var limits = Limits()
        for (key, range, path, _) in Limits.keys {
            if let value = try file.integer(key, in: range) { limits[keyPath: path] = value }
        }
        try file.finish()

        let hint = "add it, or re-create the data directory with 'keyhold-server init'"
        guard let serverID = ServerID(try file.require(id, "server_id", hint: hint)) else {
            throw KeyholdError(.configuration, "\(path): server_id is not a UUID", hint: "restore config.toml from a backup")
        }
        var config = ServerConfigFile(
            serverID: serverID, name: name ?? "", listen: try file.require(listen, "listen", hint: hint),
            enrollListen: try file.require(enrollListen, "enroll_listen", hint: hint), database: database ?? "sqlite",
            advertiseAPI: advertise[0], advertiseEnroll: advertise[1]
        )
        if let metricsText, !metricsText.isEmpty {
            guard let address = try? HostPort(metricsText) else {
                throw KeyholdError(
                    .configuration, "\(path): metrics_listen = \"\(metricsText)\" is not host:port",
                    hint: "write an address only the scraper reaches, like \"127.0.0.1:9445\", or \"\" for none")
            }
            config.metricsListen = address
        }
        if let heartbeat { config.hierarchyHeartbeat = heartbeat }
        if let level { config.logLevel = Logger.Level(rawValue: level) ?? .info }
        if let format { config.logFormat = LogFormat(rawValue: format) ?? .text }
        config.limits = limits
        if let policy { config.releasePolicy = ReleasePolicy(rawValue: policy) ?? .any }
        if let retention { config.keyRetentionDays = retention }
        try RepositoryFactory.check(config.database, in: path)
        return config
    }

    /// The file's text, every key under a comment.
    func render() -> String {
        var w = ConfigWriter(header: [
            "Keyhold administration server (docs/operations.md lists every key). Command-line options override these values."
        ])
        w.add("server_id", serverID.description, comment: "this server's identity: do not change it")
        w.add("name", name)
        w.add("listen", listen.description, comment: "mutual-TLS API (host:port)")
        w.add("enroll_listen", enrollListen.description, comment: "enrollment listener (host:port; no client certificate)")
        w.add(
            "metrics_listen", metricsListen?.description ?? "",
            comment: "plain-HTTP /metrics, /v1/health and /v1/ready for Prometheus and load balancers (host:port; empty: off)")
        w.add("database", database, comment: "\"sqlite\" for keyhold.sqlite in this directory, or a postgres:// URL")
        w.add("advertise_api", advertiseAPI ?? "", comment: "addresses written into enrollment tokens (empty: the bound listen addresses)")
        w.add("advertise_enroll", advertiseEnroll ?? "")
        w.add("hierarchy_heartbeat", hierarchyHeartbeat, comment: "seconds between pushes to the primary")
        w.add("log_level", logLevel.rawValue, comment: "trace, debug, info, notice, warning, error or critical (SIGHUP re-reads it)")
        w.add("log_format", logFormat.rawValue, comment: "text, or json: one JSON object per line")
        w.add(
            "release_policy", releasePolicy.rawValue,
            comment:
                "who may receive a key: any (active device of this server), same_server (keys escrowed here), origin_device, or approval (origin_device, and an administrator approves other requests)"
        )
        w.add(
            "key_retention_days", keyRetentionDays,
            comment: "days the keys of a deleted device are kept before their secrets are destroyed (fractions allowed: 0.5 is 12 hours)")
        for (key, _, path, comment) in Limits.keys { w.add(key, limits[keyPath: path], comment: comment) }
        return w.text
    }
}
