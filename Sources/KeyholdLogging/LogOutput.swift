public import Foundation
import KeyholdCore
import KeyholdSystem
public import Logging
public import ServiceLifecycle
import Synchronization
import UnixSignals

#if canImport(Glibc)
import Glibc
#endif

/// How the daemons write their log lines (docs/operations.md, "Logs"): `text` for people and the
/// journal, `json` for log shippers — one JSON object per line with `time`, `level`, `label`,
/// `message` and `metadata`. Either way client-supplied text is escaped onto the line (text) or
/// JSON-encoded (json), so no value can forge another line.
public enum LogFormat: String, CaseIterable, Sendable {
    case text, json

    /// The format a `--log-format` option names, or a usage error saying which there are.
    public init(option text: String) throws {
        guard let format = LogFormat(rawValue: text) else {
            throw KeyholdError(.usage, "--log-format \(text) is not a format", hint: "use text or json")
        }
        self = format
    }
}

/// The one log level of a process, changed at run time (`SIGHUP` re-reads the configuration).
public final class LogLevelControl: Sendable {
    private let level: Mutex<Logger.Level>

    /// A control starting at `level`.
    public init(_ level: Logger.Level) { self.level = Mutex(level) }

    /// The level now.
    public var current: Logger.Level {
        get { level.withLock { $0 } }
        set { level.withLock { $0 = newValue } }
    }
}

/// Installs the process's log handler: `format` lines to standard error at the level `control`
/// holds. Call once, before the first logger is made.
public enum LogOutput {
    /// Makes every logger of the process write `format` lines at `control`'s level.
    public static func bootstrap(format: LogFormat, control: LogLevelControl) {
        LoggingSystem.bootstrap { label in KeyholdLogHandler(label: label, format: format, control: control) }
    }
}

/// A swift-log handler writing one line per message to standard error, in one `write` (so lines
/// of concurrent tasks never interleave).
struct KeyholdLogHandler: LogHandler {
    let label: String
    let format: LogFormat
    let control: LogLevelControl
    var metadata: Logger.Metadata = [:]

    /// The process-wide level (setting it sets it for every logger of the process).
    var logLevel: Logger.Level {
        get { control.current }
        set { control.current = newValue }
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var all = metadata
        if let extra = event.metadata { all.merge(extra) { $1 } }
        let line: String
        switch format {
        case .text: line = Self.text(label: label, level: event.level, message: "\(event.message)", metadata: all)
        case .json: line = Self.json(label: label, level: event.level, message: "\(event.message)", metadata: all, source: event.source)
        }
        var bytes = Array((line + "\n").utf8)
        bytes.withUnsafeMutableBytes { buffer in
            var done = 0
            while done < buffer.count {
                let n = write(STDERR_FILENO, buffer.baseAddress! + done, buffer.count - done)
                if n <= 0 { if errno == EINTR { continue } else { return } }
                done += n
            }
        }
    }

    static func timestamp() -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.string(from: Date())
    }

    /// `2026-12-02T10:00:00.123Z info keyhold-server: message key=value …`, every value escaped.
    static func text(label: String, level: Logger.Level, message: String, metadata: Logger.Metadata) -> String {
        var line = "\(timestamp()) \(level) \(label): \(PrintableText.escaped(message))"
        for (key, value) in metadata.sorted(by: { $0.key < $1.key }) {
            line += " \(PrintableText.escaped(key))=\(PrintableText.escaped("\(value)"))"
        }
        return line
    }

    /// One JSON object: `{"label", "level", "message", "metadata": {…}, "source", "time"}`.
    static func json(label: String, level: Logger.Level, message: String, metadata: Logger.Metadata, source: String) -> String {
        let object: [String: Any] = [
            "time": timestamp(), "level": level.rawValue, "label": label, "message": message, "source": source,
            "metadata": Dictionary(uniqueKeysWithValues: metadata.map { ($0.key, plain($0.value)) }),
        ]
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]) else {
            return #"{"level":"error","message":"a log line could not be encoded"}"#
        }
        return String(decoding: data, as: UTF8.self)
    }

    private static func plain(_ value: Logger.MetadataValue) -> Any {
        switch value {
        case .string(let s): return s
        case .stringConvertible(let c): return "\(c)"
        case .array(let a): return a.map(plain)
        case .dictionary(let d): return Dictionary(uniqueKeysWithValues: d.map { ($0.key, plain($0.value)) })
        }
    }
}

/// Re-reads the log level at every `SIGHUP` (from the configuration file, through `read`) and
/// applies it to the whole process; a file that no longer reads keeps the level and says why.
public struct LogLevelReloader: Service {
    let control: LogLevelControl
    let read: @Sendable () throws -> Logger.Level
    let logger: Logger

    /// A reloader setting `control` from `read` at each SIGHUP.
    public init(control: LogLevelControl, logger: Logger, read: @escaping @Sendable () throws -> Logger.Level) {
        self.control = control
        self.read = read
        self.logger = logger
    }

    /// Waits for SIGHUP until graceful shutdown.
    public func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        try await cancelWhenGracefulShutdown {
            for await _ in signals {
                SystemdNotify.send("RELOADING=1")
                do {
                    let level = try read()
                    // Said at the old level (a quieter new level would hide it), then applied.
                    logger.notice("SIGHUP: log level re-read", metadata: ["log_level": "\(level)"])
                    control.current = level
                } catch {
                    logger.error("SIGHUP: the configuration does not read; the log level stays", metadata: ["error": "\(error)"])
                }
                SystemdNotify.send("READY=1")
            }
        }
    }
}
