import Foundation
import Hummingbird
import HummingbirdTLS
public import KeyholdCore
public import KeyholdProtocol
public import KeyholdStore
import KeyholdSystem
public import Logging
import NIOCore
import NIOSSL
public import ServiceLifecycle

/// What a running server needs besides its data directory and repository (the configuration,
/// with command-line overrides applied).
public struct ServerSettings: Sendable {
    /// This server's identity.
    public var serverID: ServerID
    /// Where the mutual-TLS API listens.
    public var listen: HostPort
    /// Where the enrollment listener listens.
    public var enrollListen: HostPort
    /// Where the plain-HTTP metrics listener (`/metrics`, `/v1/health`, `/v1/ready`) listens; off when nil.
    public var metricsListen: HostPort?
    /// The API address tokens carry (nil: the bound one).
    public var advertiseAPI: String?
    /// The enrollment address tokens carry (nil: the bound one).
    public var advertiseEnroll: String?
    /// How the database is shown in `status` (never with a password).
    public var databaseDescription: String
    /// Time between pushes to the primary.
    public var hierarchyHeartbeat: Duration
    /// The API listener's connection limits.
    public var apiLimits = ConnectionLimits.apiDefault
    /// The enrollment listener's connection limits.
    public var enrollLimits = ConnectionLimits.enrollmentDefault
    /// Enrollment requests one source address may make (a token bucket).
    public var enrollRate = RateLimit.enrollmentDefault
    /// How often anonymous refusals are summed up into one audit record.
    public var refusalSummaryInterval: Duration = .seconds(60)
    /// Key releases one device may ask for (a token bucket).
    public var releaseRate = RateLimit.releaseDefault
    /// When a device's distinct released keys raise an alert.
    public var releaseAlert = ReleaseAlert.standard
    /// Which devices may receive a key.
    public var releasePolicy = ReleasePolicy.any
    /// Seconds an approved release request stays usable (`release_policy = approval`).
    public var approvalLifetime: Double = 86_400
    /// How long device and secondary certificates are valid.
    public var certificateLifetimes = CertificateLifetimes()
    /// How fast a master-key rotation rewraps.
    public var rewrapPace = RewrapPace()
    /// How long the keys of a deleted device are kept before they are destroyed.
    public var keyRetention = KeyRetention.standard

    /// Settings for a server.
    public init(
        serverID: ServerID, listen: HostPort, enrollListen: HostPort, advertiseAPI: String? = nil, advertiseEnroll: String? = nil,
        databaseDescription: String, hierarchyHeartbeat: Duration = .seconds(30)
    ) {
        self.serverID = serverID
        self.listen = listen
        self.enrollListen = enrollListen
        self.advertiseAPI = advertiseAPI
        self.advertiseEnroll = advertiseEnroll
        self.databaseDescription = databaseDescription
        self.hierarchyHeartbeat = hierarchyHeartbeat
    }
}

/// The administration server as one service: it checks the data directory, migrates the
/// repository, then runs its listeners, `runtime.json` and the hierarchy heartbeat in a group of
/// its own until the enclosing group shuts down. The repository's own ``Repository/run()`` belongs
/// to the enclosing group, before this service, so it stops last.
///
/// A listener that cannot bind ends the group at once with `cannot listen on ADDRESS: REASON`;
/// nothing keeps running.
public struct KeyholdServerService: Service {
    private let settings: ServerSettings
    private let directory: DataDirectory
    private let repository: any Repository
    private let logger: Logger

    /// A server on `directory` with `repository` (opened by the caller, which also runs it).
    public init(settings: ServerSettings, directory: DataDirectory, repository: any Repository, logger: Logger) {
        self.settings = settings
        self.directory = directory
        self.repository = repository
        self.logger = logger
    }

    /// Runs the server until graceful shutdown (or cancellation, or a failing part).
    public func run() async throws {
        try directory.checkSecretPermissions()
        let masterKey = MasterKey(file: try MasterKeyRotation.readFile(directory))
        let authority = try CertificateAuthorities(directory: directory)
        try await repository.migrate()
        let rotation = MasterKeyRotation(
            masterKey: masterKey, repository: repository, directory: directory, pace: settings.rewrapPace, logger: logger)
        try await rotation.reconcile(start: true)
        let hierarchy = try Hierarchy(
            serverID: settings.serverID, repository: repository, masterKey: masterKey, dir: directory, logger: logger)
        let addresses = BoundAddresses(settings)
        var core = ServerCore(
            serverID: settings.serverID, repository: repository, masterKey: masterKey, authority: authority,
            databaseDescription: settings.databaseDescription, hierarchy: hierarchy, addresses: addresses, directory: directory,
            refusals: RefusalLedger(), enrollLimiter: RateLimiter(settings.enrollRate), releaseLimiter: RateLimiter(settings.releaseRate),
            releaseWatch: ReleaseWatch(settings.releaseAlert), releasePolicy: settings.releasePolicy,
            approvalLifetime: settings.approvalLifetime, logger: logger
        )
        // Without a metrics listener nothing reads the metrics, so nothing is counted.
        core.certificateLifetimes = settings.certificateLifetimes
        core.keyRetention = settings.keyRetention
        let served = try ServedCertificate(directory: directory)
        core.served = served
        // The certificate served now starts the contexts; each handshake then takes the current
        // one from `served`, so a renewal needs no restart.
        let (chain, key) = served.chainAndKey
        var apiBase = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: key)
        apiBase.certificateVerification = .noHostnameVerification
        apiBase.sslContextCallback = served.contextCallback
        // The CAs whose client certificates it accepts change with a CA rotation.
        let apiTLS = try APITLS(base: apiBase, trusting: authority.trusted)
        core.apiTLS = apiTLS
        core.masterKeyRotation = rotation
        core.metrics = ServerMetrics(enabled: settings.metricsListen != nil)
        if settings.metricsListen != nil { repository.statistics.observe { [metrics = core.metrics] in metrics.store($0) } }
        await hierarchy.use(core.metrics)
        await hierarchy.use { [core] ids, primary in
            try await core.destroyFromElsewhere(
                ids, rule: .unlessReferenced, actor: .server(settings.serverID), route: .primary(primary), detail: "destroyed above (by the primary)")
        }
        // A CA rotation that a crash interrupted is completed before anything is served.
        try await core.completeRotation(actor: .server(settings.serverID))
        let api = ServerAPI<ServerContext>(core: core, logger: logger)

        var enrollTLS = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: key)
        enrollTLS.certificateVerification = .none
        enrollTLS.sslContextCallback = served.contextCallback

        let (apiLimits, enrollLimits) = Self.fitToOpenFileLimit(settings.apiLimits, settings.enrollLimits, logger: logger)
        var listeners = [
            try Listener(name: "API", address: settings.listen, router: api.apiRouter(), tls: apiTLS.source, limits: apiLimits, logger: logger) {
                await addresses.set(api: $0)
            },
            try Listener(
                name: "enrollment", address: settings.enrollListen, router: api.enrollmentRouter(), tls: try TLSContextSource(enrollTLS),
                limits: enrollLimits,
                logger: logger
            ) {
                await addresses.set(enroll: $0)
            },
        ]
        if let metricsListen = settings.metricsListen {
            listeners.append(
                try Listener(
                    name: "metrics", address: metricsListen, router: api.metricsRouter(), tls: nil, limits: .metricsDefault,
                    logger: logger
                ) {
                    await addresses.set(metrics: $0)
                })
        }
        let announcer = Announcer(directory: directory, addresses: addresses, serverID: settings.serverID, logger: logger)
        let heartbeat = HierarchyHeartbeat(hierarchy: hierarchy, interval: settings.hierarchyHeartbeat)
        // A part that fails shuts the others down gracefully (a listener that bound closes cleanly),
        // then the group ends with that part's error.
        // The refusal summary comes first so that it stops last, after the listeners.
        let summary = RefusalSummaryWriter(
            ledger: core.refusals, repository: repository, interval: settings.refusalSummaryInterval, logger: logger)
        let renewal = TLSRenewal(
            served: served, authority: authority, serverID: settings.serverID, lifetime: settings.certificateLifetimes.tls, repository: repository,
            logger: logger)
        let rewrap = MasterKeyRewrapService(rotation: rotation, logger: logger)
        let retention = KeyRetentionService(core: core)
        let parts: [any Service] = [summary] + listeners + [announcer, heartbeat, renewal, rewrap, retention]
        let group = ServiceGroup(
            configuration: .init(
                services: parts.map { .init(service: $0, failureTerminationBehavior: .gracefullyShutdownGroup) }, logger: logger
            ))
        do {
            try await group.run()
        } catch {
            await hierarchy.shutdown()
            ServerRuntimeInfo.remove(from: directory.path)
            throw error
        }
        await hierarchy.shutdown()
        ServerRuntimeInfo.remove(from: directory.path)
        logger.info("stopped")
    }

    /// The caps, lowered where the process's open-file limit could not hold them (with a warning):
    /// the soft limit is raised to the hard one first, and a reserve is kept for the database,
    /// files and outgoing connections.
    static func fitToOpenFileLimit(_ api: ConnectionLimits, _ enroll: ConnectionLimits, logger: Logger) -> (ConnectionLimits, ConnectionLimits) {
        let limit = OpenFileLimit.raiseToHardLimit()
        let reserve = max(32, limit / 8)
        let available = max(limit - reserve, 8)
        guard api.maxConnections + enroll.maxConnections > available else { return (api, enroll) }
        var (api, enroll) = (api, enroll)
        let wanted = (api.maxConnections, enroll.maxConnections)
        enroll.maxConnections = max(1, min(enroll.maxConnections, available / 4))
        api.maxConnections = max(1, min(api.maxConnections, available - enroll.maxConnections))
        logger.warning(
            "the open-file limit is too low for the connection caps; lowering them",
            metadata: [
                "open_file_limit": "\(limit)", "max_connections": "\(wanted.0) -> \(api.maxConnections)",
                "enroll_max_connections": "\(wanted.1) -> \(enroll.maxConnections)",
                "hint": "raise LimitNOFILE (systemd) or ulimit -n, or lower max_connections in config.toml",
            ])
        return (api, enroll)
    }
}

/// One TLS listener: a Hummingbird application whose bind failure becomes an error naming the
/// address and the reason.
struct Listener: Service {
    let name: String
    let address: HostPort
    let counter: ConnectionCounter
    let application: Application<RouterResponder<ServerContext>>

    init(
        name: String, address: HostPort, router: Router<ServerContext>, tls: TLSContextSource?, limits: ConnectionLimits, logger: Logger,
        bound: @escaping @Sendable (String) async -> Void
    ) throws {
        self.name = name
        self.address = address
        let host = address.host
        let counter = ConnectionCounter(name: name, limits: limits, logger: logger)
        self.counter = counter
        application = Application(
            router: router,
            server: try GuardedTLSChannel.builder(tls: tls, counter: counter),
            configuration: .init(address: .hostname(address.host, port: address.port), serverName: "keyhold-server"),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? 0
                await bound(HostPort.describe(host: host, port: port))
            },
            logger: logger
        )
    }

    func run() async throws {
        do {
            try await application.run()
        } catch let error as IOError {
            throw Self.cannotListen(address, name: name, errno: error.errnoCode, reason: "\(error)")
        } catch let error as SocketAddressError {
            throw KeyholdError(
                .configuration, "cannot listen on \(address) (\(name)): the host does not resolve (\(error))",
                hint: "give an address of this machine in config.toml, or --listen/--enroll-listen"
            )
        }
    }

    /// The error for a listener that cannot bind `address`.
    static func cannotListen(_ address: HostPort, name: String, errno code: Int32, reason: String) -> KeyholdError {
        switch code {
        case EADDRINUSE:
            return KeyholdError(
                .configuration, "cannot listen on \(address): address already in use",
                hint:
                    "another process (perhaps another keyhold-server) uses that port for its \(name.lowercased()) listener: stop it, or choose another port in config.toml or with --listen/--enroll-listen"
            )
        case EADDRNOTAVAIL:
            return KeyholdError(
                .configuration, "cannot listen on \(address): the address is not one of this machine's",
                hint: "give an address of this machine (or 0.0.0.0) in config.toml or with --listen/--enroll-listen"
            )
        case EACCES:
            return KeyholdError(
                .configuration, "cannot listen on \(address): permission denied",
                hint: "ports below 1024 need CAP_NET_BIND_SERVICE; choose a port of 1024 or more"
            )
        default:
            return KeyholdError(
                .configuration, "cannot listen on \(address): \(reason)", hint: "check the address in config.toml and that the port is free")
        }
    }
}

extension HostPort {
    /// `host:port` for a bound port.
    static func describe(host: String, port: Int) -> String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// The addresses the listeners actually bound (known once they run; port 0 picks a free port).
actor BoundAddresses {
    private var api: String
    private var enroll: String
    private var metrics: String?
    private let advertiseAPI: String?
    private let advertiseEnroll: String?
    private var waiters: [UUID: CheckedContinuation<Void, any Error>] = [:]
    private var bound = 0
    /// The listeners there are (two, or three with the metrics listener).
    private let expected: Int

    init(_ settings: ServerSettings) {
        api = settings.listen.description
        enroll = settings.enrollListen.description
        metrics = settings.metricsListen?.description
        expected = settings.metricsListen == nil ? 2 : 3
        advertiseAPI = settings.advertiseAPI
        advertiseEnroll = settings.advertiseEnroll
    }

    func set(api address: String) {
        api = address
        bound += 1
        wake()
    }

    func set(enroll address: String) {
        enroll = address
        bound += 1
        wake()
    }

    func set(metrics address: String) {
        metrics = address
        bound += 1
        wake()
    }

    /// Whether every listener accepts connections.
    var allBound: Bool { bound >= expected }

    private func wake() {
        guard bound >= expected else { return }
        for w in waiters.values { w.resume() }
        waiters = [:]
    }

    /// Waits until both listeners are bound; throws when the task is cancelled first (a listener
    /// that failed cancels the group).
    func waitUntilBound() async throws {
        if bound >= expected { return }
        let id = UUID()
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                if Task.isCancelled {
                    continuation.resume(throwing: CancellationError())
                } else {
                    waiters[id] = continuation
                }
            }
        } onCancel: {
            Task { await self.cancelWaiter(id) }
        }
    }

    private func cancelWaiter(_ id: UUID) {
        waiters.removeValue(forKey: id)?.resume(throwing: CancellationError())
    }

    func current() -> (api: String, enroll: String) { (api, enroll) }

    /// The metrics listener's bound address, if there is one.
    func metricsAddress() -> String? { metrics }

    /// What tokens carry: the configured advertised addresses, else the bound ones.
    func advertised() -> (String, String) { (advertiseAPI ?? api, advertiseEnroll ?? enroll) }
}

/// Writes `runtime.json` once both listeners accept, and logs the addresses.
struct Announcer: Service {
    let directory: DataDirectory
    let addresses: BoundAddresses
    let serverID: ServerID
    let logger: Logger

    func run() async throws {
        do {
            try await cancelWhenGracefulShutdown { try await addresses.waitUntilBound() }
        } catch is CancellationError {
            return  // the group stopped before both listeners were bound
        }
        let (api, enroll) = await addresses.current()
        let metrics = await addresses.metricsAddress()
        try ServerRuntimeInfo(serverID: serverID, api: api, enroll: enroll, metrics: metrics).write(to: directory.path)
        logger.info("listening", metadata: ["api": "\(api)", "enroll": "\(enroll)", "metrics": "\(metrics ?? "off")", "server_id": "\(serverID)"])
        SystemdNotify.ready(status: "serving: API \(api), enrollment \(enroll)")
        try? await gracefulShutdown()
    }
}
