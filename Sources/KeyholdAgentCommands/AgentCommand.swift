import ArgumentParser
import Foundation
import KeyholdAgent
import KeyholdCommandLine
import KeyholdCore
import KeyholdLogging
import Logging
import ServiceLifecycle
import UnixSignals

/// The `keyhold-agent` command.
struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keyhold-agent",
        abstract: "The Keyhold device agent: escrowed file keys, sealed key cache, local socket.",
        version: VersionLine.text,
        subcommands: [Run.self]
    )

    struct Run: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run the agent until SIGTERM or SIGINT (graceful stop).",
            discussion: """
                Reads \(AgentConfigFile.defaultPath) when it exists (or --config FILE); the options below override it.
                Example:
                  keyhold-agent run --config /etc/keyhold/agent.toml --log-format json
                """
        )

        @Option(help: ArgumentHelp("The configuration file (default \(AgentConfigFile.defaultPath), optional).", valueName: "file"))
        var config: String?
        @Option(help: ArgumentHelp("State directory (identity, key cache); state_dir, default /var/lib/keyhold.", valueName: "dir"))
        var stateDir: String?
        @Option(help: ArgumentHelp("Unix socket for local clients; socket, default /run/keyhold/agent.sock.", valueName: "path"))
        var socket: String?
        @Option(help: "Members of this group may encrypt and decrypt files through the agent; group, default keyhold.")
        var group: String?
        @Option(help: ArgumentHelp("Seconds between heartbeats to the server; heartbeat, default 30.", valueName: "seconds"))
        var heartbeat: Int?
        @Option(help: "trace, debug, info, notice, warning, error or critical; log_level, default info (SIGHUP re-reads it).")
        var logLevel: String?
        @Option(help: "text, or json (one JSON object per line); log_format, default text.")
        var logFormat: String?
        @Option(
            help: ArgumentHelp(
                "Write the agent's metrics here at each heartbeat, for node-exporter's textfile collector (a .prom file); metrics_textfile.",
                valueName: "path"))
        var metricsTextfile: String?

        func run() async throws {
            var file = try AgentConfigFile.read(config ?? AgentConfigFile.defaultPath, required: config != nil)
            if let stateDir { file.stateDir = stateDir }
            if let socket { file.socket = socket }
            if let group { file.group = group }
            if let metricsTextfile { file.metricsTextfile = metricsTextfile }
            if let heartbeat {
                guard (1...86_400).contains(heartbeat) else {
                    throw KeyholdError(.usage, "--heartbeat \(heartbeat) is out of range", hint: "give 1 to 86400 seconds")
                }
                file.heartbeat = heartbeat
            }
            if let logLevel {
                guard let level = Logger.Level(rawValue: logLevel) else {
                    throw KeyholdError(
                        .usage, "--log-level \(logLevel) is not a level", hint: "use trace, debug, info, notice, warning, error or critical")
                }
                file.logLevel = level
            }
            if let logFormat { file.logFormat = try LogFormat(option: logFormat) }
            let levels = LogLevelControl(file.logLevel)
            LogOutput.bootstrap(format: file.logFormat, control: levels)
            let logger = Logger(label: "keyhold-agent")
            // SIGHUP re-reads log_level from the configuration file (without one: the level stays).
            let path = config ?? AgentConfigFile.defaultPath
            let required = config != nil
            let startLevel = file.logLevel
            let reloader = LogLevelReloader(control: levels, logger: logger) {
                FileManager.default.fileExists(atPath: path) || required ? try AgentConfigFile.read(path, required: required).logLevel : startLevel
            }
            var settings = AgentSettings(stateDirectory: file.stateDir, socket: file.socket, group: file.group, heartbeat: .seconds(file.heartbeat))
            settings.metricsTextfile = file.metricsTextfile.isEmpty ? nil : file.metricsTextfile
            let group = ServiceGroup(
                configuration: .init(
                    services: [
                        .init(service: reloader), .init(service: SystemdNotifier(logger: logger)),
                        .init(service: KeyholdAgentService(settings: settings, logger: logger)),
                    ],
                    gracefulShutdownSignals: [.sigterm, .sigint], logger: logger
                ))
            try await group.run()
        }
    }
}

/// The entry point of the `keyhold-agent` executable.
public enum KeyholdAgentMain {
    /// Runs `keyhold-agent` with the process's arguments and exits.
    public static func run() async -> Never {
        await CommandRunner.run(AgentCommand.self)
    }
}
