import ArgumentParser
import Foundation
import KeyholdCommandLine
import KeyholdCore
import Logging
import ServiceLifecycle
import UnixSignals

/// The `keyhold-agent` command.
struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keyhold-agent",
        abstract: "The Keyhold device agent: escrowed file keys, sealed key cache, local socket.",
        version: KeyholdVersion.current,
        subcommands: [Run.self]
    )

    struct Run: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Run the agent until SIGTERM or SIGINT (graceful stop).")

        @Option(help: ArgumentHelp("State directory (identity, key cache).", valueName: "dir"))
        var stateDir = "/var/lib/keyhold"
        @Option(help: ArgumentHelp("Unix socket for local clients.", valueName: "path"))
        var socket = "/run/keyhold/agent.sock"
        @Option(help: "Members of this group may encrypt and decrypt files through the agent.")
        var group = "keyhold"
        @Option(help: ArgumentHelp("Seconds between heartbeats to the server.", valueName: "seconds"))
        var heartbeat = 30
        @Option(help: "trace, debug, info, notice, warning, error or critical.")
        var logLevel = "info"

        func run() async throws {
            var logger = Logger(label: "keyhold-agent")
            logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
            let agent = try Agent(state: StateDirectory(path: stateDir), logger: logger)
            let server = SocketServer(path: socket, agent: agent, policy: SocketPolicy(group: group), logger: logger)
            let group = ServiceGroup(configuration: .init(
                services: [.init(service: server), .init(service: HeartbeatService(agent: agent, interval: .seconds(max(1, heartbeat))))],
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger
            ))
            try await group.run()
            await agent.shutdown()
            logger.info("stopped")
        }
    }
}

/// The entry point of the `keyhold-agent` executable.
public enum KeyholdAgentMain {
    public static func run() async -> Never {
        await CommandRunner.run(AgentCommand.self)
    }
}
