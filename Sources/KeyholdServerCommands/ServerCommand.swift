import ArgumentParser
import Foundation
import KeyholdClient
import KeyholdCommandLine
import KeyholdCore
import KeyholdLogging
import KeyholdProtocol
import KeyholdServer
import KeyholdStore
import Logging
import ServiceLifecycle
import UnixSignals

/// The `keyhold-server` command tree.
struct ServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keyhold-server",
        abstract: "The Keyhold administration server: key escrow, release and audit.",
        version: VersionLine.text,
        subcommands: [
            Init.self, Run.self, Status.self, TLSCommand.self, CACommand.self, MasterKeyCommand.self, TokenCommand.self, DeviceCommand.self,
            KeyAdminCommand.self,
            Audit.self,
            PrimaryCommand.self, SecondaryCommand.self, HierarchyCommand.self, AdminCommand.self, ReleaseCommand.self, ExplainCommand.self,
            DoctorCommand.self,
        ]
    )
}

/// `--data-dir`, shared by every subcommand.
struct DataDirOption: ParsableArguments {
    @Option(help: ArgumentHelp("The server's data directory (default: $KEYHOLD_SERVER_DATA_DIR or /var/lib/keyhold-server).", valueName: "dir"))
    var dataDir: String?

    var directory: DataDirectory {
        DataDirectory(dataDir ?? ProcessInfo.processInfo.environment["KEYHOLD_SERVER_DATA_DIR"] ?? "/var/lib/keyhold-server")
    }

    /// The data directory's `config.toml`, checked strictly.
    func config() throws -> ServerConfigFile {
        let dir = directory
        try dir.requireInitialized()
        return try ServerConfigFile.read(dir.config)
    }

    @Option(
        help: ArgumentHelp(
            "Act as this administrator: their certificate (default: $KEYHOLD_ADMIN_CERT, else admin.pem of the data directory).",
            valueName: "file"))
    var adminCert: String?
    @Option(
        help: ArgumentHelp("The private key of --admin-cert (default: $KEYHOLD_ADMIN_KEY, else admin.key of the data directory).", valueName: "file"))
    var adminKey: String?

    /// The administrator certificate and key to act as: `--admin-cert`/`--admin-key` (or their
    /// environment variables), else the data directory's `admin.pem`/`admin.key`.
    func administrator() throws -> (certificatePEM: String, keyPEM: String) {
        let environment = ProcessInfo.processInfo.environment
        let cert = adminCert ?? environment["KEYHOLD_ADMIN_CERT"]
        let key = adminKey ?? environment["KEYHOLD_ADMIN_KEY"]
        guard (cert == nil) == (key == nil) else {
            throw KeyholdError(
                .usage, "an administrator certificate needs its key, and a key its certificate",
                hint: "give both --admin-cert and --admin-key (or KEYHOLD_ADMIN_CERT and KEYHOLD_ADMIN_KEY)")
        }
        let dir = directory
        guard let cert, let key else {
            return (String(decoding: try dir.read(dir.adminCertificate), as: UTF8.self), String(decoding: try dir.read(dir.adminKey), as: UTF8.self))
        }
        func read(_ path: String) throws -> String {
            guard let data = FileManager.default.contents(atPath: path) else {
                throw KeyholdError(.ioFailed, "cannot read \(path)", hint: "check the path and that you may read it")
            }
            return String(decoding: data, as: UTF8.self)
        }
        return (try read(cert), try read(key))
    }

    /// An admin client for the running server of this data directory: at the address the
    /// running server wrote into `runtime.json`, else the configured one.
    func adminClient(timeout: Duration = .seconds(15)) throws -> APIClient {
        let dir = directory
        let config = try config()
        let address = try ServerRuntimeInfo.read(from: dir.path)?.api ?? config.listen.description
        let (certificatePEM, keyPEM) = try administrator()
        return try APIClient(
            address: address, caPEM: String(decoding: try dir.read(dir.caCertificate), as: UTF8.self), certificatePEM: certificatePEM,
            keyPEM: keyPEM, timeout: timeout
        )
    }
}

/// Runs `body` with an admin client and shuts the client down afterwards.
func withAdmin<T>(_ options: DataDirOption, _ body: (APIClient) async throws -> T) async throws -> T {
    try await options.adminClient().using(body)
}

/// Refuses a command-line argument that is not a key id (`usage`, with where ids are listed).
func requireKeyID(_ text: String) throws {
    guard KeyID(text) != nil else {
        throw KeyholdError(.usage, "'\(text)' is not a key id", hint: "key ids are UUIDs; see 'keyhold-server key list'")
    }
}

/// Refuses a command-line argument that is not a device or secondary id.
func requireClientID(_ text: String) throws {
    guard ClientID(text) != nil else {
        throw KeyholdError(.usage, "'\(text)' is not a device id", hint: "ids are UUIDs; see 'keyhold-server device list'")
    }
}

func printJSON<T: Encodable>(_ value: T) throws {
    print(try WireFormat.prettyText(value))
}

func formatDate(_ date: Date?) -> String {
    guard let date else { return "-" }
    return ISO8601DateFormatter().string(from: date)
}

extension ServerCommand {
    struct Init: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a data directory: master key, CA, TLS and administrator certificates, configuration.",
            discussion: """
                Example:
                  keyhold-server init --data-dir /var/lib/keyhold-server --name keys.example.org --listen 0.0.0.0:8443 --enroll-listen 0.0.0.0:8444
                """)
        @OptionGroup var data: DataDirOption
        @Option(help: ArgumentHelp("host:port of the mutual-TLS API.", valueName: "address")) var listen = "127.0.0.1:8443"
        @Option(help: ArgumentHelp("host:port of the enrollment listener.", valueName: "address")) var enrollListen = "127.0.0.1:8444"
        @Option(help: "A name for this server (also a host name in its TLS certificate).") var name = ""
        @Option(
            name: .customLong("host-name"),
            help: ArgumentHelp("Another host name or address for the TLS certificate (repeatable).", valueName: "name"))
        var hostNames: [String] = []
        @Option(help: ArgumentHelp("\"sqlite\" (default) or a postgres:// URL.", valueName: "url")) var db = "sqlite"
        @Flag(help: "Turn on \"use hierarchy to obtain encryption keys\" (off by default).") var useHierarchy = false

        func validate() throws {
            for (option, value) in [("--name", name)] + hostNames.map({ ("--host-name", $0) }) where !value.isEmpty {
                guard HostName.isValid(value) else {
                    throw ValidationError(
                        "\(option) '\(PrintableText.escaped(value))' is not a host name: letters, digits and '-' in dot-separated labels of 1 to 63 characters (or an IP address)"
                    )
                }
            }
        }

        func run() async throws {
            let dir = data.directory
            try RepositoryFactory.check(db, in: "--db")
            let name = name.isEmpty ? ProcessInfo.processInfo.hostName : name
            let config = ServerConfigFile(
                serverID: .random(), name: name, listen: try HostPort(listen), enrollListen: try HostPort(enrollListen), database: db
            )
            let options = ServerSetup.Options(
                listen: config.listen, enrollListen: config.enrollListen, name: name, hostNames: hostNames, useHierarchy: useHierarchy
            )
            if dir.isInitialized {
                throw KeyholdError(
                    .configuration, "\(dir.path) already holds a Keyhold server", hint: "use another --data-dir, or run the existing server")
            }
            try FileManager.default.createDirectory(atPath: dir.path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            try await RepositoryFactory.open(db, in: dir).withRunning { repository in
                try await ServerSetup.initialize(dir, serverID: config.serverID, options: options, repository: repository)
                try await repository.close()
            }
            // The config goes last: a data directory without it is an interrupted init, not a server.
            try dir.write("config.toml", Data(config.render().utf8), mode: 0o600)
            print(
                """
                Created Keyhold server \(config.serverID) in \(dir.path)
                  database:        \(RepositoryFactory.describe(config.database))
                  API (mutual TLS): \(config.listen)
                  enrollment:      \(config.enrollListen)
                  administrator:   \(dir.adminCertificate) + admin.key
                Back up master.key: without it no stored key can be released.
                Next: keyhold-server run --data-dir \(dir.path)
                """)
        }
    }

    struct Run: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run the server until SIGTERM or SIGINT (graceful stop).",
            discussion: """
                Reads config.toml in the data directory; the options below override it for this run.
                Example:
                  keyhold-server run --data-dir /var/lib/keyhold-server --log-format json
                """
        )
        @OptionGroup var data: DataDirOption
        @Option(help: ArgumentHelp("Override the API address (listen).", valueName: "address")) var listen: String?
        @Option(help: ArgumentHelp("Override the enrollment address (enroll_listen).", valueName: "address")) var enrollListen: String?
        @Option(
            help: ArgumentHelp(
                "Serve /metrics, /v1/health and /v1/ready over plain HTTP here (metrics_listen; 'off' for none).", valueName: "address"))
        var metricsListen: String?
        @Option(help: ArgumentHelp("Override the database (\"sqlite\" or a postgres:// URL).", valueName: "url")) var db: String?
        @Option(help: "Override log_level: trace, debug, info, notice, warning, error or critical.") var logLevel: String?
        @Option(help: "Override log_format: text, or json (one JSON object per line).") var logFormat: String?
        @Option(help: ArgumentHelp("Override hierarchy_heartbeat: seconds between pushes to the primary.", valueName: "seconds"))
        var hierarchyHeartbeat: Int?

        func run() async throws {
            let dir = data.directory
            var config = try data.config()
            if let listen { config.listen = try HostPort(listen) }
            if let enrollListen { config.enrollListen = try HostPort(enrollListen) }
            if let metricsListen { config.metricsListen = metricsListen == "off" ? nil : try HostPort(metricsListen) }
            if let db {
                try RepositoryFactory.check(db, in: "--db")
                config.database = db
            }
            if let logLevel {
                guard let level = Logger.Level(rawValue: logLevel) else {
                    throw KeyholdError(
                        .usage, "--log-level \(logLevel) is not a level", hint: "use trace, debug, info, notice, warning, error or critical")
                }
                config.logLevel = level
            }
            if let hierarchyHeartbeat {
                guard (1...86_400).contains(hierarchyHeartbeat) else {
                    throw KeyholdError(.usage, "--hierarchy-heartbeat \(hierarchyHeartbeat) is out of range", hint: "give 1 to 86400 seconds")
                }
                config.hierarchyHeartbeat = hierarchyHeartbeat
            }
            if let logFormat { config.logFormat = try LogFormat(option: logFormat) }
            let levels = LogLevelControl(config.logLevel)
            LogOutput.bootstrap(format: config.logFormat, control: levels)
            var logger = Logger(label: "keyhold-server")
            logger[metadataKey: "server"] = "\(config.serverID)"
            // SIGHUP re-reads log_level from config.toml (from then on the file decides, not --log-level).
            let reloader = LogLevelReloader(control: levels, logger: logger) { [data] in try data.config().logLevel }

            // One running server per data directory, for the life of this process.
            let lock = try dir.lockForRunning()
            defer { withExtendedLifetime(lock) {} }
            let repository = try RepositoryFactory.open(config.database, in: dir)
            var settings = ServerSettings(
                serverID: config.serverID, listen: config.listen, enrollListen: config.enrollListen, advertiseAPI: config.advertiseAPI,
                advertiseEnroll: config.advertiseEnroll, databaseDescription: RepositoryFactory.describe(config.database),
                hierarchyHeartbeat: .seconds(config.hierarchyHeartbeat)
            )
            config.limits.apply(to: &settings)
            settings.releasePolicy = config.releasePolicy
            settings.keyRetention = KeyRetention(seconds: config.keyRetentionDays * 86_400)
            settings.metricsListen = config.metricsListen
            let group = ServiceGroup(
                configuration: .init(
                    services: [
                        .init(service: reloader),
                        .init(service: SystemdNotifier(logger: logger)),
                        .init(service: RepositoryService(repository: repository)),
                        .init(service: KeyholdServerService(settings: settings, directory: dir, repository: repository, logger: logger)),
                    ],
                    gracefulShutdownSignals: [.sigterm, .sigint], logger: logger
                ))
            try await group.run()
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show the running server's state.",
            discussion: """
                Example:
                  keyhold-server status --json
                """)
        @OptionGroup var data: DataDirOption
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let status = try await withAdmin(data) { try await $0.get(APIPath.adminStatus, as: StatusResponse.self) }
            if json { return try printJSON(status) }
            print(
                """
                server:       \(status.serverID) (keyhold \(status.version))
                database:     \(status.database)
                keys:         \(status.keyCount)
                devices:      \(status.devices) active
                secondaries:  \(status.secondaries) active
                running since \(formatDate(status.started))
                """)
            if let h = status.hierarchy { print(describe(h)) }
            ServerCommand.showCertificates(status)
            if let m = status.masterKey { for line in MasterKeyCommand.summary(m) { print(line) } }
            if let ca = status.ca { for line in CACommand.summary(ca) { print(line) } }
            for id in status.escrowDrift {
                print(
                    "error: DRIFT: the escrowed key \(id) no longer opens its drive (its keyslots were changed outside Keyhold); see 'keyhold-server key list'"
                )
            }
        }
    }

    /// Each certificate's expiry, then a warning with what to do for every one that expires soon.
    static func showCertificates(_ status: StatusResponse, now: Date = Date()) {
        let names = ["ca": "CA", "tls": "TLS", "primary": "at the primary", "administrator": "administrator"]
        for c in status.certificates {
            let who = c.holder.map { " \(PrintableText.escaped($0))" } ?? ""
            print("certificate:  \(names[c.kind] ?? c.kind)\(who) expires \(formatDate(c.expires))")
        }
        let hints = [
            "ca": "plan the CA's replacement before then: docs/operations.md, \"Rotating certificates\"",
            "tls":
                "it renews itself once two thirds of its lifetime have passed; if it did not, look for 'TLS certificate renewal failed' in the log, or run 'keyhold-server tls renew'",
            "primary": "it renews at the next hierarchy heartbeat; if it does not, look for 'certificate renewal at the primary failed' in the log",
            "administrator": "have another administrator run 'keyhold-server admin add NAME' for a new one, then 'admin revoke ID' the old",
        ]
        for c in status.certificates + status.expiringClients where c.soon {
            let days = Int((c.expires.timeIntervalSince(now) / 86_400).rounded(.down))
            let when = c.expires <= now ? "EXPIRED at \(formatDate(c.expires))" : "expires at \(formatDate(c.expires)) (in \(days) days)"
            let what =
                switch c.kind {
                case "device", "secondary": "the certificate of \(c.kind) \(PrintableText.escaped(c.holder ?? "?"))"
                default: "the \(names[c.kind] ?? c.kind) certificate\(c.holder.map { " of \(PrintableText.escaped($0))" } ?? "")"
                }
            print("warning: \(what) \(when)")
            print(
                "  hint: "
                    + (hints[c.kind]
                        ?? "it renews at the \(c.kind)'s next heartbeat; one that stays away past its expiry must enroll again (see 'device list')"))
        }
        if status.expiringClientCount > status.expiringClients.count {
            print("warning: \(status.expiringClientCount - status.expiringClients.count) more client certificates expire soon; see 'device list'")
        }
    }

    struct Audit: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show the audit trail, oldest first: all of it, or from --after, --since or the --last records.",
            discussion: """
                Pages through the whole trail (10000 records a request), so nothing is left out; --follow then waits for new ones.
                Examples:
                  keyhold-server audit --last 50
                  keyhold-server audit --follow --json
                """
        )
        @OptionGroup var data: DataDirOption
        @Option(help: "Records after this sequence number.") var after: Int64?
        @Option(help: ArgumentHelp("Records at or after this time (ISO 8601, e.g. 2026-12-01T00:00:00Z).", valueName: "time")) var since: String?
        @Option(help: ArgumentHelp("Only the newest N records.", valueName: "n")) var last: Int?
        @Flag(help: "Keep printing new records as they are written (Ctrl-C ends).") var follow = false
        @Flag(help: "Print JSON (one array; with --follow, one object per line).") var json = false

        static let page = 10_000

        func run() async throws {
            guard [after != nil, since != nil, last != nil].filter({ $0 }).count <= 1 else {
                throw KeyholdError(.usage, "--after, --since and --last choose where to start: give one", hint: "for example --last 100")
            }
            if let last, last < 1 { throw KeyholdError(.usage, "--last \(last) is not a positive number", hint: "for example --last 100") }
            let sinceTime = try since.map { text -> Date in
                guard let time = ISO8601DateFormatter().date(from: text) else {
                    throw KeyholdError(.usage, "'\(text)' is not an ISO 8601 time", hint: "write it like 2026-12-01T00:00:00Z")
                }
                return time
            }
            try await withAdmin(data) { client in
                let names = AdministratorNames(client)
                var cursor = after ?? 0
                if let sinceTime { cursor = try await Self.firstSequence(client, atOrAfter: sinceTime) }
                if let last { cursor = max(0, try await Self.newestSequence(client) - Int64(last)) }
                var all: [AuditEvent] = []
                while true {
                    let page = try await Self.records(client, after: cursor, limit: Self.page)
                    let shown = page.filter { sinceTime == nil || $0.time >= sinceTime! }
                    if json && !follow { all += shown } else { Self.show(shown, json: json, names: try await names.resolve(shown)) }
                    cursor = page.last?.sequence ?? cursor
                    if page.count < Self.page { break }
                }
                if json && !follow { try printJSON(all) }
                while follow {
                    try await Task.sleep(for: .seconds(1))
                    let page = try await Self.records(client, after: cursor, limit: Self.page)
                    Self.show(page, json: json, names: try await names.resolve(page))
                    cursor = page.last?.sequence ?? cursor
                }
            }
        }

        static func records(_ client: APIClient, after: Int64, limit: Int) async throws -> [AuditEvent] {
            try await client.get("\(APIPath.adminAudit)?after=\(after)&limit=\(limit)", as: [AuditEvent].self)
        }

        /// The highest sequence number (0 for an empty trail), in O(log n) one-record requests.
        static func newestSequence(_ client: APIClient) async throws -> Int64 {
            var known: Int64 = 0
            var step: Int64 = 1
            // Grow until past the end, then narrow down: "a record after x exists" is monotonic in x.
            while let next = try await records(client, after: known + step - 1, limit: 1).first?.sequence {
                known = next
                step *= 2
            }
            var low = known
            var high = known + step
            while high - low > 1 {
                let mid = low + (high - low) / 2
                if let found = try await records(client, after: mid - 1, limit: 1).first?.sequence, found >= mid { low = found } else { high = mid }
            }
            return low
        }

        /// The cursor before the first record at or after `time` (records are in time order).
        static func firstSequence(_ client: APIClient, atOrAfter time: Date) async throws -> Int64 {
            var low: Int64 = 0
            var high = try await newestSequence(client)
            while low < high {
                let mid = low + (high - low) / 2
                guard let record = try await records(client, after: mid, limit: 1).first, let seq = record.sequence else { break }
                if record.time < time { low = seq } else { high = mid }
            }
            return low
        }

        /// The actor column: an administrator also by name.
        static func actor(_ actor: AuditActor, _ names: [ClientID: String]) -> String {
            guard case .administrator(let id) = actor, let name = names[id] else { return actor.description }
            return "\(actor) (\(PrintableText.escaped(name)))"
        }

        /// Writes the records straight to standard output (unbuffered: --follow into a pipe or a
        /// file shows each page as it comes).
        static func show(_ events: [AuditEvent], json: Bool, names: [ClientID: String]) {
            var text = ""
            for e in events {
                if json {
                    text += String(decoding: (try? WireFormat.encoder().encode(e)) ?? Data(), as: UTF8.self) + "\n"
                } else {
                    text +=
                        "\(e.sequence ?? 0)\t\(formatDate(e.time))\t\(Self.actor(e.actor, names))\t\(e.action)\t\(e.keyID?.description ?? "-")\t\(e.route)\t\(e.result)\t\(PrintableText.escaped(e.detail))\n"
                }
            }
            if !text.isEmpty { FileHandle.standardOutput.write(Data(text.utf8)) }
        }
    }
}

/// Administrators' names for the audit output, fetched again when a record names one not known yet.
final class AdministratorNames {
    private let client: APIClient
    private var names: [ClientID: String] = [:]

    init(_ client: APIClient) { self.client = client }

    /// The names of every administrator the records name.
    func resolve(_ events: [AuditEvent]) async throws -> [ClientID: String] {
        let unknown = events.contains { if case .administrator(let id) = $0.actor { return names[id] == nil } else { return false } }
        if unknown {
            for admin in try await client.get(APIPath.adminAdministrators, as: [ClientInfo].self) { names[admin.id] = admin.name }
        }
        return names
    }
}

/// The hierarchy lines of `status`.
func describe(_ h: HierarchyStatus) -> String {
    var lines = ["use hierarchy: \(h.useHierarchy ? "on" : "off")"]
    if let id = h.primaryServerID {
        lines.append("primary:      \(id) at \(h.primaryAddress ?? "?")\(h.primaryRefuses ? " — REFUSES (hierarchy_disabled on the primary)" : "")")
        lines.append("push cursor:  \(h.pushCursor) acknowledged, \(h.pending) key(s) pending")
        lines.append("last push:    \(formatDate(h.lastPush)) \(h.lastPushResult ?? "")")
    } else {
        lines.append("primary:      none")
    }
    return lines.joined(separator: "\n")
}

struct PrimaryCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "primary", abstract: "This server's primary.", subcommands: [Join.self, Leave.self])

    struct Join: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Enroll this (running) server with a primary, using a server token from it.",
            discussion: """
                Example:
                  keyhold-server primary join kh1.…   (the token from 'keyhold-server token create --role server' on the primary)
                """)
        @OptionGroup var data: DataDirOption
        @Argument(help: "The token from 'keyhold-server token create --role server' on the primary.") var token: String
        func run() async throws {
            let h = try await withAdmin(data) { try await $0.post(APIPath.adminPrimary, JoinRequest(token: token), as: HierarchyStatus.self) }
            print("joined primary \(h.primaryServerID?.description ?? "?") at \(h.primaryAddress ?? "?")")
            if !h.useHierarchy { print("note: 'use hierarchy' is off here; turn it on with 'keyhold-server hierarchy enable'") }
        }
    }

    struct Leave: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Forget the primary (it keeps the keys it received).",
            discussion: """
                Example:
                  keyhold-server primary leave
                """)
        @OptionGroup var data: DataDirOption
        func run() async throws {
            try await withAdmin(data) { client -> Void in
                _ = try await client.delete(APIPath.adminPrimary)
            }
            print("left the primary")
        }
    }
}

struct SecondaryCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "secondary", abstract: "Servers that joined this one as their primary.", subcommands: [List.self, Revoke.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List secondaries with their last push, the pending keys and lag they report, and their last refusal.",
            discussion: """
                Example:
                  keyhold-server secondary list --json
                """)
        @OptionGroup var data: DataDirOption
        @Flag(help: "Print JSON.") var json = false
        func run() async throws {
            let tree = try await withAdmin(data) { try await $0.get(APIPath.adminHierarchyTree, as: HierarchyTree.self) }
            if json { return try printJSON(tree.secondaries) }
            print("id\tstate\tname\tlast push\tpending\tlag\treceived\tlast refusal")
            for s in tree.secondaries {
                let refusal = s.lastRefusal.map { "\($0) \(formatDate(s.lastRefusalAt))" } ?? "-"
                print(
                    "\(s.id)\t\(s.state)\t\(PrintableText.escaped(s.name))\t\(formatDate(s.lastPush))\t\(s.pending.map(String.init) ?? "-")\t\(s.lagSeconds.map(TreeText.seconds) ?? "-")\t\(s.keysReceived.map(String.init) ?? "-")\t\(refusal)"
                )
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Refuse a secondary from now on.",
            discussion: """
                Example:
                  keyhold-server secondary revoke 5d8bd193-6ad1-d62f-74e9-9bd02d59a60c
                """)
        @OptionGroup var data: DataDirOption
        @Argument(help: "The secondary's id (see 'secondary list').") var id: String
        func run() async throws {
            guard ClientID(id) != nil else { throw KeyholdError(.usage, "'\(id)' is not an id", hint: "see 'keyhold-server secondary list'") }
            try await withAdmin(data) { try await $0.post(APIPath.adminClientRevoke(id)) }
            print("revoked secondary \(id)")
        }
    }
}

struct HierarchyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hierarchy", abstract: "The \"use hierarchy to obtain encryption keys\" option and pushes.",
        subcommands: [Enable.self, Disable.self, Sync.self, HierarchyTreeCommand.self]
    )

    struct Enable: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Push keys to the primary and answer secondaries.",
            discussion: """
                Example:
                  keyhold-server hierarchy enable
                """)
        @OptionGroup var data: DataDirOption
        func run() async throws {
            let h = try await withAdmin(data) {
                try await $0.post(APIPath.adminHierarchy, HierarchyOptionRequest(enabled: true), as: HierarchyStatus.self)
            }
            print(describe(h))
        }
    }

    struct Disable: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Neither push nor answer secondaries (they get hierarchy_disabled).",
            discussion: """
                Example:
                  keyhold-server hierarchy disable
                """)
        @OptionGroup var data: DataDirOption
        func run() async throws {
            let h = try await withAdmin(data) {
                try await $0.post(APIPath.adminHierarchy, HierarchyOptionRequest(enabled: false), as: HierarchyStatus.self)
            }
            print(describe(h))
        }
    }

    struct Sync: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Push now instead of at the next heartbeat.",
            discussion: """
                Example:
                  keyhold-server hierarchy sync --json
                """)
        @OptionGroup var data: DataDirOption
        @Flag(help: "Print JSON.") var json = false
        func run() async throws {
            // Each answer covers a few seconds of pushing; ask again until the push is complete.
            let r = try await withAdmin(data) { admin in
                var total = SyncResponse(pushed: 0, batches: 0, cursor: 0, complete: false)
                while !total.complete {
                    let part = try await admin.post(APIPath.adminHierarchySync, Empty(), as: SyncResponse.self)
                    total = SyncResponse(
                        pushed: total.pushed + part.pushed, batches: total.batches + part.batches, cursor: part.cursor, complete: part.complete)
                }
                return total
            }
            if json { return try printJSON(r) }
            print("pushed \(r.pushed) key(s) in \(r.batches) batch(es); cursor \(r.cursor)")
        }
    }
}

/// An empty JSON object body.
struct Empty: Codable {}

struct TLSCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tls", abstract: "The listeners' TLS certificate (it renews itself once two thirds of its lifetime have passed).",
        subcommands: [Renew.self])

    struct Renew: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Renew the running server's TLS certificate now: a new key, the same names, served without a restart.",
            discussion: "Example: keyhold-server tls renew --data-dir /var/lib/keyhold-server")
        @OptionGroup var data: DataDirOption
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let answer = try await withAdmin(data) { try await $0.post(APIPath.adminTLSRenew, Empty(), as: TLSRenewResponse.self) }
            if json { return try printJSON(answer) }
            print("TLS certificate \(answer.fingerprint.prefix(16))… expires \(formatDate(answer.expires)); served from the next connection on")
        }
    }
}

struct CACommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ca",
        abstract: "The server's CA: rotate it without re-enrolling anyone, watch the overlap, retire the old one.",
        discussion: "docs/operations.md, \"CA rotation\", has the procedure.",
        subcommands: [Status.self, Rotate.self, RetireOld.self])

    /// The lines `status` and these commands print.
    static func summary(_ ca: CAStatus) -> [String] {
        var lines = ["CA:           \(ca.current.prefix(16))… (expires \(formatDate(ca.currentExpires)))"]
        if let previous = ca.previous {
            lines.append(
                "              rotated \(formatDate(ca.rotated)); the previous CA \(previous.prefix(16))… is still trusted: "
                    + (ca.onPreviousCount == 0
                        ? "no active client holds its certificates ('keyhold-server ca retire-old' ends the overlap)"
                        : "\(ca.onPreviousCount) active client\(ca.onPreviousCount == 1 ? " holds" : "s hold") its certificates"))
            for holder in ca.onPrevious.prefix(20) {
                lines.append("              still on the previous CA: \(holder.role) \(PrintableText.escaped(holder.name)) (\(holder.id))")
            }
        }
        return lines
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show the CA and, during a rotation, who still holds a certificate from the previous one.",
            discussion: "Example: keyhold-server ca status --data-dir /var/lib/keyhold-server")
        @OptionGroup var data: DataDirOption
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let answer = try await withAdmin(data) { try await $0.get(APIPath.adminCA, as: CAStatus.self) }
            if json { return try printJSON(answer) }
            for line in CACommand.summary(answer) { print(line) }
        }
    }

    struct Rotate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make a new CA, cross-signed by the current one; both are trusted until 'ca retire-old'.",
            discussion: """
                Nobody is re-enrolled: agents and secondaries learn the new CA at their next heartbeat (through its \
                cross-signature), renew their certificates under it, and keep working throughout. The running server \
                issues every certificate from the new CA at once, accepts both CAs' client certificates, and re-issues \
                admin.pem for the same key. Back up ca.pem, ca.key, ca-previous.pem and ca-cross.pem. Enrollment \
                tokens made before the rotation name the old CA: make new ones.
                Example: keyhold-server ca rotate --data-dir /var/lib/keyhold-server
                """)
        @OptionGroup var data: DataDirOption
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let answer = try await withAdmin(data) { try await $0.post(APIPath.adminCARotate, Empty(), as: CAStatus.self) }
            if json { return try printJSON(answer) }
            print("new CA \(answer.current.prefix(16))…: it issues every certificate from now on (audited as ca_rotate)")
            for line in CACommand.summary(answer) { print(line) }
        }
    }

    struct RetireOld: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "retire-old",
            abstract: "End a CA rotation's overlap: the previous CA is no longer trusted (refused while a client holds its certificates).",
            discussion:
                "Example: keyhold-server ca retire-old --data-dir /var/lib/keyhold-server  (after 'ca status' shows no client on the previous CA)")
        @OptionGroup var data: DataDirOption
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let answer = try await withAdmin(data) { try await $0.post(APIPath.adminCARetireOld, Empty(), as: CAStatus.self) }
            if json { return try printJSON(answer) }
            print("the previous CA is retired: only \(answer.current.prefix(16))… is trusted (audited as ca_retire)")
        }
    }
}

struct MasterKeyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "master-key",
        abstract: "The master key that wraps every stored secret: rotate it, watch the rewrap, retire the old version.",
        discussion: "docs/operations.md, \"Master-key rotation\", has the procedure (and the one for several processes on one database).",
        subcommands: [Rotate.self, Status.self, RetireOld.self])

    /// The lines `status` and these commands print.
    static func summary(_ m: MasterKeyStatus) -> [String] {
        var lines = ["master key:   version \(m.current) current" + (m.remaining > 0 ? ", \(m.remaining) of \(m.total) keys still to rewrap" : "")]
        for v in m.versions where v.state != "current" && v.state != "retired" {
            lines.append("              version \(v.version) \(v.state): \(v.keys) keys" + (v.held ? "" : " (not in this process's master.key)"))
        }
        if !(m.versions.first { $0.version == m.current }?.held ?? true) {
            lines.append("error: this process's master.key lacks the current version \(m.current)")
            lines.append("  hint: copy master.key from the server process where 'master-key rotate' ran")
        }
        return lines
    }

    struct Rotate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add a master-key version and rewrap every stored secret under it, in the background while the server serves.",
            discussion: """
                The new version is written to master.key (back it up), then made current; the running server rewraps the keys \
                in batches and goes on after a restart. This command shows the progress until the rewrap is done (--no-wait \
                returns at once). With several server processes on one database: --prepare first, copy master.key to every \
                process, then rotate.
                Example: keyhold-server master-key rotate --data-dir /var/lib/keyhold-server
                """)
        @OptionGroup var data: DataDirOption
        @Flag(help: "Only add the version (for several processes on one database: copy master.key to each, then rotate).") var prepare = false
        @Flag(help: "Return once the version is current, without waiting for the rewrap.") var noWait = false
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let answer = try await withAdmin(data) { admin in
                var status = try await admin.post(APIPath.adminMasterKeyRotate, MasterKeyRotateRequest(prepare: prepare), as: MasterKeyStatus.self)
                guard !prepare, !noWait else { return status }
                let progress = ProgressLine("rewrapping under version \(status.current):", total: nil)
                defer { progress.finish() }
                while status.remaining > 0 {
                    progress.note("\(status.total - status.remaining) of \(status.total) keys")
                    try await Task.sleep(for: .milliseconds(500))
                    status = try await admin.get(APIPath.adminMasterKey, as: MasterKeyStatus.self)
                }
                return status
            }
            if json { return try printJSON(answer) }
            if prepare {
                let v = answer.versions.last { $0.state == "prepared" }?.version ?? answer.current + 1
                print(
                    "master-key version \(v) prepared in master.key; copy that file to every server process on this database, then run 'keyhold-server master-key rotate'"
                )
                return
            }
            for line in MasterKeyCommand.summary(answer) { print(line) }
            if answer.remaining == 0 {
                print("every key is wrapped under version \(answer.current); back up master.key, then run 'keyhold-server master-key retire-old'")
            }
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show the master-key versions and how many keys each wraps.",
            discussion: "Example: keyhold-server master-key status --data-dir /var/lib/keyhold-server")
        @OptionGroup var data: DataDirOption
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let answer = try await withAdmin(data) { try await $0.get(APIPath.adminMasterKey, as: MasterKeyStatus.self) }
            if json { return try printJSON(answer) }
            print("version\tstate\tkeys\tin master.key\tcreated\tcurrent since\tretired")
            for v in answer.versions {
                print(
                    "\(v.version)\t\(v.state)\t\(v.keys)\t\(v.held ? "yes" : "no")\t\(formatDate(v.created))\t\(v.activated.map(formatDate) ?? "-")\t\(v.retired.map(formatDate) ?? "-")"
                )
            }
        }
    }

    struct RetireOld: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "retire-old",
            abstract: "Remove the master-key versions older than the current one, once no stored key is wrapped under them.",
            discussion: """
                Refused while the rewrap still has keys to do. Keep a backup of the old master.key as long as you keep \
                database backups made before the rotation: they need it.
                Example: keyhold-server master-key retire-old --data-dir /var/lib/keyhold-server
                """)
        @OptionGroup var data: DataDirOption

        func run() async throws {
            let answer = try await withAdmin(data) { try await $0.post(APIPath.adminMasterKeyRetireOld, Empty(), as: MasterKeyStatus.self) }
            print("retired every master-key version before \(answer.current); master.key now holds version \(answer.current) only")
        }
    }
}

struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token", abstract: "Enrollment tokens: create, list, revoke.", subcommands: [Create.self, List.self, Revoke.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create an enrollment token and print it.",
            discussion: """
                Example:
                  keyhold-server token create --role device --uses 10 --ttl 7d
                """)
        @OptionGroup var data: DataDirOption
        @Option(help: "device (an agent) or server (a secondary).") var role: TokenRole = .device
        @Option(help: "How many enrollments it allows.") var uses = 1
        @Option(help: ArgumentHelp("How long it is valid: 90s, 30m, 24h, 7d.", valueName: "duration")) var ttl = "24h"
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let seconds = try Duration.parse(ttl)
            let response = try await withAdmin(data) {
                try await $0.post(
                    APIPath.adminTokens, TokenCreateRequest(role: role.clientRole, uses: uses, ttlSeconds: seconds), as: TokenCreateResponse.self)
            }
            if json { return try printJSON(response) }
            print(response.token)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List enrollment tokens (never their secrets), newest first.",
            discussion: "Example: keyhold-server token list | grep active")
        @OptionGroup var data: DataDirOption
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let tokens = try await withAdmin(data) { try await $0.get(APIPath.adminTokens, as: [TokenInfo].self) }
            if json { return try printJSON(tokens) }
            print("id\trole\tstate\tuses left\tcreated\texpires")
            for t in tokens {
                print("\(t.id)\t\(t.role)\t\(t.state.rawValue)\t\(t.usesLeft)\t\(formatDate(t.created))\t\(formatDate(t.expires))")
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke an enrollment token at once: its remaining uses are refused.",
            discussion: "Example: keyhold-server token revoke 6f1c0b2e-…  (the id from 'token list' or 'token create --json')")
        @OptionGroup var data: DataDirOption
        @Argument(help: "The token's id (see 'token list').") var id: String

        func run() async throws {
            guard TokenID(id) != nil else { throw KeyholdError(.usage, "'\(id)' is not a token id", hint: "see 'keyhold-server token list'") }
            try await withAdmin(data) { try await $0.post(APIPath.adminTokenRevoke(id)) }
            print("revoked token \(id): it enrolls nobody from now on")
        }
    }
}

struct DeviceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "device", abstract: "Enrolled devices and secondaries.", subcommands: [List.self, Revoke.self, Delete.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List enrolled devices and secondaries.",
            discussion: """
                Example:
                  keyhold-server device list --json
                """)
        @OptionGroup var data: DataDirOption
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let clients = try await withAdmin(data) { try await $0.get(APIPath.adminClients, as: [ClientInfo].self) }
            if json { return try printJSON(clients) }
            print("id\trole\tstate\tname\tlast seen\tversion\tkeys\tescrow\tcertificate expires")
            for c in clients {
                print(
                    "\(c.id)\t\(c.role)\t\(c.state)\t\(PrintableText.escaped(c.name))\t\(formatDate(c.lastSeen))\t\(PrintableText.escaped(c.agentVersion ?? "-"))\t\(c.keyCount.map(String.init) ?? "-")\t\(c.escrowSummary)\t\(formatDate(c.certificateExpires))"
                )
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke a device or secondary: refused on its next request.",
            discussion: """
                Example:
                  keyhold-server device revoke 06c0c961-bf82-4966-3339-fac5f1577a27
                """)
        @OptionGroup var data: DataDirOption
        @Argument(help: "The device id.") var id: String

        func run() async throws {
            try requireClientID(id)
            try await withAdmin(data) { try await $0.post(APIPath.adminClientRevoke(id)) }
            print("revoked \(id)")
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete a revoked or moved device: its keys are destroyed once key_retention_days have passed.",
            discussion: """
                The device stays listed with state deleted. After the retention the server erases the secret of \
                every key the device escrowed here (crypto-shredding: the record stays, state destroyed, audited), \
                except keys another active device still uses (its drive check names them) and keys a secondary \
                pushed here. Until then nothing is lost: a mistaken deletion is noticed in time.
                Example: keyhold-server device revoke 6f1c0b2e-… && keyhold-server device delete 6f1c0b2e-…
                """)
        @OptionGroup var data: DataDirOption
        @Argument(help: "The device id.") var id: String
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            try requireClientID(id)
            let answer = try await withAdmin(data) { try await $0.post(APIPath.adminClientDelete(id), Empty(), as: ClientDeleteResponse.self) }
            if json { return try printJSON(answer) }
            print(
                "deleted \(id); its \(answer.keys) key\(answer.keys == 1 ? "" : "s") will be destroyed after \(formatDate(answer.keysDestroyedAfter))"
            )
        }
    }
}

struct KeyAdminCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "key", abstract: "Escrowed keys: metadata, blocks, transfers, and the audited reveal.",
        subcommands: [List.self, Reveal.self, Respond.self, Block.self, Unblock.self, Destroy.self, Export.self, Import.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List escrowed keys (never their secrets).",
            discussion: """
                Example:
                  keyhold-server key list --json
                """)
        @OptionGroup var data: DataDirOption
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            var all: [KeyInfo] = []
            try await withAdmin(data) { client in
                var after: KeyID? = nil
                repeat {
                    let page = try await client.get(
                        "\(APIPath.adminKeys)?limit=1000" + (after.map { "&after=\($0)" } ?? ""), as: KeyListResponse.self)
                    all += page.keys
                    after = page.next
                } while after != nil
            }
            if json { return try printJSON(all) }
            print("id\tkind\tstate\tblocked\trotation\tescrow\tprovenance\torigin server\torigin device\tlabel")
            for k in all {
                print(
                    "\(k.record.id)\t\(k.record.kind.rawValue)\t\(k.destroyed == nil ? k.record.state.rawValue : "destroyed")\t\(k.blocked)\t\(k.rotationRequired ? "required" : "-")\t\(k.check?.summary ?? "-")\t\(k.provenance)\t\(k.record.originServerID)\t\(k.record.originDeviceID)\t\(PrintableText.escaped(k.record.label))"
                )
            }
        }
    }

    struct Reveal: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a key's secret to you, with a reason (audited as reveal; the key is marked for rotation).",
            discussion: """
                Prints the 32 bytes in hex and base64 and, for a drive key, the cryptsetup command that opens \
                the drive on any Linux machine. Fail-closed: nothing is shown unless the reveal record, with \
                your name and the reason, is written.
                Example: keyhold-server key reveal 5f0c…e2 --reason 'ticket 4711: user locked out of /dev/sdb'
                """)
        @OptionGroup var data: DataDirOption
        @Argument(help: "The key id.") var id: String
        @Option(help: "Why (required; recorded in the audit trail).") var reason: String
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            try requireKeyID(id)
            let key = try await withAdmin(data) {
                try await $0.post(APIPath.adminKeyReveal(id), RevealRequest(reason: reason), as: RevealResponse.self)
            }
            if json { return try printJSON(key) }
            print(
                "key \(key.record.id) (\(key.record.kind.rawValue), \(PrintableText.escaped(key.record.label)))\(key.blocked ? " — BLOCKED here" : "")"
            )
            print("hex:    \(key.secretHex)")
            print("base64: \(key.secretBase64)")
            if let command = key.openCommand {
                print("open the drive on any Linux machine (DEVICE is the drive, for example /dev/sdb1):")
                print("  \(command)")
            }
            print("audited as reveal; the key is marked rotation required")
        }
    }

    struct Respond: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Answer a device's offline request code with a response code (audited as offline_release).",
            discussion: """
                The response carries the key sealed to that request: it opens only on the device that made the \
                request, once, until it expires. The key is marked for rotation. docs/spec/offline-access.md.
                Example: keyhold-server key respond 26D7VY-9PVRG7-… --reason 'ticket 4711: laptop offline abroad'
                """)
        @OptionGroup var data: DataDirOption
        @Argument(help: "The request code the user read out (or --request-file).") var code: String?
        @Option(help: ArgumentHelp("Read the request code from this file.", valueName: "file")) var requestFile: String?
        @Option(help: "Why (required; recorded in the audit trail).") var reason: String
        @Option(help: ArgumentHelp("Seconds the response stays usable (1…604800).", valueName: "seconds")) var valid = 3600
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            guard (code == nil) != (requestFile == nil) else {
                throw KeyholdError(
                    .usage, "give the request code or --request-file, not both or neither", hint: "for example: key respond CODE --reason …")
            }
            let text: String
            if let requestFile {
                guard let data = FileManager.default.contents(atPath: requestFile) else {
                    throw KeyholdError(.ioFailed, "cannot read \(requestFile)", hint: "check the path")
                }
                text = String(decoding: data, as: UTF8.self)
            } else {
                text = code ?? ""
            }
            let answer = try await withAdmin(data) {
                try await $0.post(
                    APIPath.adminKeysOfflineResponse, OfflineRespondRequest(requestCode: text, reason: reason, validSeconds: valid),
                    as: OfflineRespondResponse.self)
            }
            if json { return try printJSON(answer) }
            print("response for device \(answer.deviceID), key \(answer.keyID), request \(answer.requestID):")
            print(answer.responseCode)
            print("valid until \(formatDate(answer.expiry)), once, on that device; audited as offline_release; the key is marked rotation required")
        }
    }

    struct Block: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make a key unreleasable.",
            discussion: """
                Example:
                  keyhold-server key block 1b4e28ba-2fa1-4d2e-883f-0016d3cca427
                """)
        @OptionGroup var data: DataDirOption
        @Argument(help: "The key id.") var id: String
        func run() async throws {
            try requireKeyID(id)
            try await withAdmin(data) { try await $0.post(APIPath.adminKeyBlock(id)) }
            print("blocked \(id)")
        }
    }

    struct Destroy: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Destroy a key now, with a reason: its secret is erased for good (audited as key_destroy).",
            discussion: """
                For a key that must become unreadable at once (a stolen device's, a leaked one's). The record stays \
                with state destroyed; every release, lookup and escrow of the id is answered key_destroyed. The \
                destruction travels up and down the hierarchy, where a server keeps its copy only while one of its \
                own devices still uses the key. There is no undo.
                Example: keyhold-server key destroy 5f0c…e2 --reason 'ticket 4711: laptop stolen, data must be unreadable'
                """)
        @OptionGroup var data: DataDirOption
        @Argument(help: "The key id.") var id: String
        @Option(help: "Why (required; recorded in the audit trail).") var reason: String
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            try requireKeyID(id)
            let answer = try await withAdmin(data) {
                try await $0.post(APIPath.adminKeyDestroy(id), KeyDestroyRequest(reason: reason), as: KeyDestroyResponse.self)
            }
            if json { return try printJSON(answer) }
            print(
                answer.newlyDestroyed
                    ? "destroyed \(id): its secret is erased (audited as key_destroy)"
                    : "\(id) was already destroyed (\(formatDate(answer.destroyed))); nothing changed")
        }
    }

    struct Unblock: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Allow a blocked key to be released again.",
            discussion: """
                Example:
                  keyhold-server key unblock 1b4e28ba-2fa1-4d2e-883f-0016d3cca427
                """)
        @OptionGroup var data: DataDirOption
        @Argument(help: "The key id.") var id: String
        func run() async throws {
            try requireKeyID(id)
            try await withAdmin(data) { try await $0.post("/v1/admin/keys/\(id)/unblock") }
            print("unblocked \(id)")
        }
    }
}

extension Duration {
    /// Seconds in `90s`, `30m`, `24h`, `7d` or a plain number of seconds.
    static func parse(_ text: String) throws -> Int {
        let units: [Character: Int] = ["s": 1, "m": 60, "h": 3600, "d": 86_400]
        if let n = Int(text), n > 0 { return n }
        if let unit = text.last, let factor = units[unit], let n = Int(text.dropLast()), n > 0 {
            let (seconds, overflow) = n.multipliedReportingOverflow(by: factor)
            if !overflow { return seconds }
        }
        throw KeyholdError(.usage, "'\(text)' is not a duration", hint: "write it like 90s, 30m, 24h or 7d")
    }
}

/// The roles a token may grant, as `--role` spells them.
enum TokenRole: String, ExpressibleByArgument, CaseIterable {
    case device, server

    var clientRole: ClientRole { self == .device ? .device : .server }
}

/// The entry point of the `keyhold-server` executable.
public enum KeyholdServerMain {
    /// Runs `keyhold-server` with the process's arguments and exits.
    public static func run() async -> Never {
        await CommandRunner.run(ServerCommand.self)
    }
}

/// `keyhold-server admin …`: the administrators (not devices: a device command never touches them).
struct AdminCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "admin", abstract: "Administrators: add, list, revoke, and recover on the server machine.",
        subcommands: [Add.self, List.self, Revoke.self, Recover.self]
    )

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the administrators.",
            discussion: """
                Example:
                  keyhold-server admin list --json
                """)
        @OptionGroup var data: DataDirOption
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let admins = try await withAdmin(data) { try await $0.get(APIPath.adminAdministrators, as: [ClientInfo].self) }
            if json { return try printJSON(admins) }
            printEnrollments(admins)
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke an administrator at once (never the last active one).",
            discussion: """
                Example:
                  keyhold-server admin revoke 3f1c2b4a-9d8e-4f7a-b6c5-1a2b3c4d5e6f
                """)
        @OptionGroup var data: DataDirOption
        @Argument(help: "The administrator's id (see 'admin list').") var id: String

        func run() async throws {
            guard ClientID(id) != nil else { throw KeyholdError(.usage, "'\(id)' is not an id", hint: "see 'keyhold-server admin list'") }
            try await withAdmin(data) { try await $0.post(APIPath.adminAdministratorRevoke(id)) }
            print("revoked administrator \(id)")
        }
    }

    struct Recover: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Issue a new administrator certificate on the server machine (when no administrator certificate works).",
            discussion: """
                Runs beside the data directory, not over the API: it reads the CA key, so only root or the data \
                directory's owner can run it. The new certificate replaces admin.pem and admin.key, is recorded \
                as an active administrator and audited (admin_recover). The server may be running.
                Example:
                  sudo -u keyhold-server keyhold-server admin recover --data-dir /var/lib/keyhold-server
                """
        )
        @OptionGroup var data: DataDirOption

        func run() async throws {
            let dir = data.directory
            let config = try data.config()
            let owner = (try? FileManager.default.attributesOfItem(atPath: dir.path)[.ownerAccountID] as? NSNumber)?.uint32Value
            guard geteuid() == 0 || owner == geteuid() else {
                throw KeyholdError(
                    .forbidden, "only root or the owner of \(dir.path) may recover an administrator",
                    hint: "run it as root on the server machine ('sudo keyhold-server admin recover --data-dir \(dir.path)')"
                )
            }
            let id = try await RepositoryFactory.open(config.database, in: dir).withRunning { repository in
                let id = try await ServerSetup.recoverAdministrator(dir, repository: repository, by: geteuid())
                try await repository.close()
                return id
            }
            print("New administrator \(id): \(dir.adminCertificate) + admin.key (audited as admin_recover).")
            print("Revoke the lost ones with 'keyhold-server admin revoke ID' (see 'keyhold-server admin list').")
        }
    }
}

/// The table `secondary list` and `admin list` print (names escaped).
private func printEnrollments(_ clients: [ClientInfo]) {
    print("id\tstate\tname\tenrolled\tcertificate expires")
    for c in clients {
        print("\(c.id)\t\(c.state)\t\(PrintableText.escaped(c.name))\t\(formatDate(c.enrolled))\t\(formatDate(c.certificateExpires))")
    }
}
