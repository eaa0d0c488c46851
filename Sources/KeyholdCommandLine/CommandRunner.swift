public import ArgumentParser
import Foundation
public import KeyholdCore

/// Runs a command tree the way every Keyhold executable does: parse, run, and turn every failure
/// into two lines on standard error — `NAME: error: …` and `hint: …` — with a non-zero status
/// (1 for Keyhold errors, ArgumentParser's code for command-line mistakes).
///
/// It runs on the main actor: a synchronous command's blocking I/O runs on the main thread, not on
/// a thread of Swift's concurrency pool; an asynchronous command's work leaves it at its first await.
public enum CommandRunner {
    /// Parses the arguments (the process's, or `arguments` without the program name), runs the
    /// command and exits with its status.
    @MainActor
    public static func run<Root: ParsableCommand>(_ root: Root.Type, arguments: [String]? = nil) async -> Never {
        let name = root.configuration.commandName ?? "keyhold"
        do {
            var command = try root.parseAsRoot(arguments)
            if var async = command as? any AsyncParsableCommand {
                try await async.run()
            } else {
                try command.run()
            }
            exit(0)
        } catch let error as KeyholdError {
            report(name, error)
            exit(1)
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
            report(name, KeyholdError(.usage, first, hint: usage ?? "run '\(name) --help' to see the commands"))
            exit(code.rawValue)
        }
    }

    /// Prints `NAME: error: MESSAGE` and `hint: HINT` on standard error.
    public static func report(_ name: String, _ error: KeyholdError) {
        FileHandle.standardError.write(Data("\(name): error: \(error.message)\nhint: \(error.hint)\n".utf8))
    }
}
