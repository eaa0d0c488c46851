import ArgumentParser
import Foundation
import KeyholdCore

/// The `keyhold-server` command tree.
struct ServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keyhold-server",
        abstract: "The Keyhold administration server: key escrow, release and audit.",
        version: KeyholdVersion.current,
        subcommands: []
    )
}

/// The entry point of the `keyhold-server` executable.
public enum KeyholdServerMain {
    /// Parses the command line, runs the command and exits; errors print `keyhold-server: error: …`
    /// and a `hint: …` line.
    public static func run() async -> Never {
        do {
            var command = try ServerCommand.parseAsRoot()
            if var async = command as? any AsyncParsableCommand {
                try await async.run()
            } else {
                try command.run()
            }
            exit(0)
        } catch let error as KeyholdError {
            FileHandle.standardError.write(Data("keyhold-server: error: \(error.message)\nhint: \(error.hint)\n".utf8))
            exit(1)
        } catch {
            let code = ServerCommand.exitCode(for: error)
            let text = ServerCommand.fullMessage(for: error)
            if code == .success {
                print(text)
                exit(0)
            }
            var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            var first = lines.removeFirst()
            if first.hasPrefix("Error: ") { first.removeFirst("Error: ".count) }
            let usage = lines.first { $0.hasPrefix("Usage: ") }?.trimmingCharacters(in: .whitespaces)
            FileHandle.standardError.write(Data("keyhold-server: error: \(first)\nhint: \(usage ?? "run 'keyhold-server --help'")\n".utf8))
            exit(code.rawValue)
        }
    }
}
