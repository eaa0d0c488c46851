import Foundation
import KeyholdConfig
import KeyholdCore
import KeyholdLogging
import Logging

/// The agent's configuration file, `/etc/keyhold/agent.toml` by default: every `run` flag as a
/// key (flags override the file; the file is optional). Every key is listed in docs/operations.md;
/// an unknown, duplicated or mistyped key is an error.
struct AgentConfigFile: Equatable {
    /// Where the agent looks when `--config` is not given.
    static let defaultPath = "/etc/keyhold/agent.toml"

    var stateDir = "/var/lib/keyhold"
    var socket = "/run/keyhold/agent.sock"
    var group = "keyhold"
    var heartbeat = 30
    var logLevel: Logger.Level = .info
    var logFormat = LogFormat.text
    /// node-exporter's textfile collector reads it (empty: no metrics file).
    var metricsTextfile = ""

    /// Reads `path`; a missing file gives the defaults unless `required`.
    static func read(_ path: String, required: Bool) throws -> AgentConfigFile {
        var config = AgentConfigFile()
        guard required || FileManager.default.fileExists(atPath: path) else { return config }
        let file = try ConfigFile(path: path)
        if let v = try file.string("state_dir") { config.stateDir = v }
        if let v = try file.string("socket") { config.socket = v }
        if let v = try file.string("group") { config.group = v }
        if let v = try file.integer("heartbeat", in: 1...86_400) { config.heartbeat = v }
        if let v = try file.string("metrics_textfile") { config.metricsTextfile = v }
        if let v = try file.choice("log_level", of: Logger.Level.allCases.map(\.rawValue)) { config.logLevel = Logger.Level(rawValue: v) ?? .info }
        if let v = try file.choice("log_format", of: LogFormat.allCases.map(\.rawValue)) { config.logFormat = LogFormat(rawValue: v) ?? .text }
        try file.finish()
        for (key, value) in [("state_dir", config.stateDir), ("socket", config.socket), ("metrics_textfile", config.metricsTextfile)]
        where !value.hasPrefix("/") && !(key == "metrics_textfile" && value.isEmpty) {
            throw KeyholdError(
                .configuration, "\(path): \(key) = \"\(value)\" is not an absolute path",
                hint: "write the full path, like \(key) = \"/var/lib/keyhold\"")
        }
        return config
    }
}
