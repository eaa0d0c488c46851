public import Logging
public import ServiceLifecycle

/// What a running agent needs (the configuration file, with command-line overrides applied).
public struct AgentSettings: Sendable {
    /// The state directory (identity, key cache).
    public var stateDirectory: String
    /// The Unix socket for local clients.
    public var socket: String
    /// Members of this group may encrypt and decrypt files through the agent.
    public var group: String
    /// Time between heartbeats to the server.
    public var heartbeat: Duration
    /// Where the metrics are written at each heartbeat (node-exporter's textfile collector); nil: nowhere.
    public var metricsTextfile: String?

    /// Settings for an agent.
    public init(
        stateDirectory: String = "/var/lib/keyhold", socket: String = "/run/keyhold/agent.sock", group: String = "keyhold",
        heartbeat: Duration = .seconds(30)
    ) {
        self.stateDirectory = stateDirectory
        self.socket = socket
        self.group = group
        self.heartbeat = heartbeat
    }
}

/// The device agent as one service: it checks and locks its state directory (one agent per
/// directory), loads the identity and the key cache, then serves the local socket and heartbeats
/// to its server in a group of its own until the enclosing group shuts down. A part that fails
/// (the socket cannot be bound) ends the group at once with the reason.
public struct KeyholdAgentService: Service {
    private let settings: AgentSettings
    private let logger: Logger

    /// An agent with `settings`.
    public init(settings: AgentSettings, logger: Logger) {
        self.settings = settings
        self.logger = logger
    }

    /// Runs the agent until graceful shutdown (or cancellation, or a failing part).
    public func run() async throws {
        let state = StateDirectory(path: settings.stateDirectory)
        try state.prepare()
        let lock = try state.lockForRunning()
        defer { withExtendedLifetime(lock) {} }
        let agent = try Agent(state: state, logger: logger, metricsTextfile: settings.metricsTextfile)
        let socket = AgentSocket(path: settings.socket, agent: agent, policy: SocketPolicy(group: settings.group), logger: logger)
        let heartbeat = HeartbeatService(agent: agent, interval: settings.heartbeat)
        let group = ServiceGroup(configuration: .init(services: [socket, heartbeat], logger: logger))
        do {
            try await group.run()
        } catch {
            await agent.shutdown()
            throw error
        }
        await agent.shutdown()
        logger.info("stopped")
    }
}

/// Heartbeats to the server at a fixed interval (nothing while not enrolled), until the group
/// shuts down or is cancelled.
struct HeartbeatService: Service {
    let agent: Agent
    let interval: Duration

    func run() async throws {
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            await agent.heartbeat()
            // A server that does not answer is asked less often: 1, 2, 4, at most 8 periods apart.
            let failures = await agent.heartbeatFailures
            let pause = interval * (1 << min(3, failures))
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: pause) }
        }
    }
}
