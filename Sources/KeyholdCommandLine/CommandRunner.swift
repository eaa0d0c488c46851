public import ArgumentParser
public import Foundation
import KeyholdBuildStamp
public import KeyholdCore

/// Runs a command tree the way every Keyhold executable does: parse, run, and turn every failure
/// into two lines on standard error — `NAME: error: …` and `hint: …` — with the error's
/// ``ExitStatus`` (`sysexits.h` classes; 64 for command-line mistakes). With `--json` on the
/// command line the error is also printed on standard output as one JSON object (``JSONError``),
/// so a script reading the command's JSON reads its failure the same way.
///
/// It runs on the main actor: a synchronous command's blocking I/O runs on the main thread, not on
/// a thread of Swift's concurrency pool; an asynchronous command's work leaves it at its first await.
public enum CommandRunner {
    /// Parses the arguments (the process's, or `arguments` without the program name), runs the
    /// command and exits with its status.
    @MainActor
    public static func run<Root: ParsableCommand>(_ root: Root.Type, arguments: [String]? = nil) async -> Never {
        let name = root.configuration.commandName ?? "keyhold"
        // `--json` as an option of the command (before a `--` that ends the options).
        let json = (arguments ?? Array(CommandLine.arguments.dropFirst())).prefix { $0 != "--" }.contains("--json")
        do {
            var command = try root.parseAsRoot(arguments)
            if var async = command as? any AsyncParsableCommand {
                try await async.run()
            } else {
                try command.run()
            }
            exit(0)
        } catch let error as KeyholdError {
            fail(name, error, status: error.exitStatus.rawValue, json: json)
        } catch let code as ExitCode {
            // A command that already reported (e.g. a demo with failed steps) only sets the status.
            exit(code.rawValue)
        } catch {
            let code = root.exitCode(for: error)
            let text = root.fullMessage(for: error)
            if code == .success {
                // --help and --version.
                print(text)
                exit(0)
            }
            var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            var first = lines.isEmpty ? "" : lines.removeFirst()
            if first.hasPrefix("Error: ") { first.removeFirst("Error: ".count) }
            if first.isEmpty { first = "\(error)" }
            let usage = lines.first { $0.hasPrefix("Usage: ") || $0.contains("See '") }?.trimmingCharacters(in: .whitespaces)
            let given = arguments ?? Array(CommandLine.arguments.dropFirst())
            let hint = suggestion(for: given, in: root).map { "did you mean '\($0)'? (\(usage ?? "'\(name) --help' lists the commands"))" }
            // ArgumentParser's own mistakes exit 64; anything else that is not a KeyholdError is a failure of its own.
            let error =
                code.rawValue == ExitStatus.usage.rawValue
                ? KeyholdError(.usage, first, hint: hint ?? usage ?? "run '\(name) --help' to see the commands")
                : KeyholdError(.internalError, first, hint: "report this with the command that failed")
            fail(name, error, status: code.rawValue, json: json)
        }
    }

    /// The command line a mistyped subcommand in `arguments` probably meant (`keyhold file
    /// encrypt` for `keyhold file encrpyt`), or nil: the closest subcommand at the level where the
    /// words stop naming one, within two edits (a swap of neighbours counts as one) or as the
    /// only one it begins.
    public static func suggestion(for arguments: [String], in root: any ParsableCommand.Type) -> String? {
        var level = subcommands(of: root)
        var path = [commandName(of: root)]
        for word in arguments {
            guard !word.hasPrefix("-"), !level.isEmpty else { return nil }
            if let next = level.first(where: { $0.names.contains(word) }) {
                level = next.children
                path.append(word)
                continue
            }
            let names = level.map { $0.names[0] }
            let prefixed = names.filter { $0.hasPrefix(word) }
            if prefixed.count == 1 { return (path + prefixed).joined(separator: " ") }
            let scored = names.map { (name: $0, edits: editDistance(word, $0)) }.filter { $0.edits <= 2 && $0.edits < word.count }
            guard let best = scored.min(by: { $0.edits < $1.edits }), scored.filter({ $0.edits == best.edits }).count == 1 else {
                return nil
            }
            return (path + [best.name]).joined(separator: " ")
        }
        return nil
    }

    /// A subcommand's names (its name, then its aliases) and its own subcommands, found lazily.
    struct Subcommand {
        let names: [String]
        let type: any ParsableCommand.Type
        var children: [Subcommand] { CommandRunner.subcommands(of: type) }
    }

    static func commandName(of type: any ParsableCommand.Type) -> String { type._commandName }

    static func subcommands(of type: any ParsableCommand.Type) -> [Subcommand] {
        let configuration: CommandConfiguration = type.configuration
        var result: [Subcommand] = []
        for sub in configuration.subcommands {
            let subConfiguration: CommandConfiguration = sub.configuration
            result.append(Subcommand(names: [commandName(of: sub)] + subConfiguration.aliases, type: sub))
        }
        return result
    }

    /// The optimal-string-alignment distance: insertions, deletions, substitutions and swaps of
    /// two neighbouring characters, one edit each.
    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a)
        let b = Array(b)
        if a.isEmpty || b.isEmpty { return max(a.count, b.count) }
        var d = [[Int]](repeating: [Int](repeating: 0, count: b.count + 1), count: a.count + 1)
        for i in 0...a.count { d[i][0] = i }
        for j in 0...b.count { d[0][j] = j }
        for i in 1...a.count {
            for j in 1...b.count {
                let cost = a[i - 1] == b[j - 1] ? 0 : 1
                d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
                if i > 1, j > 1, a[i - 1] == b[j - 2], a[i - 2] == b[j - 1] { d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1) }
            }
        }
        return d[a.count][b.count]
    }

    /// Reports `error` (and, with `--json`, prints it as ``JSONError``) and exits with `status`.
    static func fail(_ name: String, _ error: KeyholdError, status: Int32, json: Bool) -> Never {
        report(name, error)
        if json, let line = try? JSONError(error, status: status).encoded() {
            FileHandle.standardOutput.write(line)
        }
        exit(status)
    }

    /// Prints `NAME: error: MESSAGE` and `hint: HINT` on standard error.
    public static func report(_ name: String, _ error: KeyholdError) {
        FileHandle.standardError.write(Data("\(name): error: \(error.message)\nhint: \(error.hint)\n".utf8))
    }
}

/// A failed command's error as `--json` prints it:
/// `{"error": {"code": "…", "exit_status": 75, "exit_class": "try_again", "hint": "…", "message": "…"}}`.
public struct JSONError: Codable, Equatable, Sendable {
    /// The error's fields.
    public struct Body: Codable, Equatable, Sendable {
        /// The stable error code (docs/spec/protocol.md §5).
        public var code: String
        /// The process's exit status.
        public var exitStatus: Int32
        /// The exit status's class name (docs/operations.md, "Exit status").
        public var exitClass: String
        /// What went wrong.
        public var message: String
        /// What to do next.
        public var hint: String

        enum CodingKeys: String, CodingKey {
            case code, message, hint
            case exitStatus = "exit_status"
            case exitClass = "exit_class"
        }
    }

    /// The error.
    public var error: Body

    /// The JSON form of `error`, ending with exit status `status`.
    public init(_ error: KeyholdError, status: Int32) {
        let exitClass = ExitStatus(rawValue: status)?.description ?? "failure"
        self.error = Body(code: error.code.rawValue, exitStatus: status, exitClass: exitClass, message: error.message, hint: error.hint)
    }

    /// One line of sorted JSON and a newline.
    public func encoded() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(self) + Data("\n".utf8)
    }
}

/// The version line every executable's `--version` prints: `0.1.0 (commit 1a2b3c4d5e6f, 2026-12-04T21:28:41Z)`.
public enum VersionLine {
    /// The version, the commit built and that commit's date.
    public static let text = "\(KeyholdVersion.current) (commit \(BuildStamp.commit), \(BuildStamp.date))"
}
