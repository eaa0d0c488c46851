#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import ArgumentParser
import CKeyholdAllocator
import Foundation
import KeyholdCore

/// The `keyhold` command: the user's and administrator's tool on a managed device.
struct Keyhold: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keyhold",
        abstract: "Encrypt files and drives with escrowed keys.",
        version: KeyholdVersion.current,
        subcommands: [FileCommand.self, EnrollCommand.self, StatusCommand.self, KeyCommand.self, DemoCommand.self]
    )

    /// Parses the command line, runs the command, and turns every failure into
    /// `keyhold: error: …` plus a `hint: …` line on standard error.
    static func runMain(_ arguments: [String]? = nil) -> Never {
        do {
            var command = try parseAsRoot(arguments)
            try command.run()
            Glibc.exit(0)
        } catch let error as KeyholdError {
            report(error)
            Glibc.exit(1)
        } catch {
            let code = exitCode(for: error)
            let text = fullMessage(for: error)
            if code == .success {
                // --help and --version.
                print(text)
                Glibc.exit(0)
            }
            var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            var first = lines.removeFirst()
            if first.hasPrefix("Error: ") { first.removeFirst("Error: ".count) }
            let usage = lines.first { $0.hasPrefix("Usage: ") || $0.contains("See '") }
            report(KeyholdError(
                .usage, first,
                hint: usage.map { $0.trimmingCharacters(in: .whitespaces) } ?? "run 'keyhold --help' to see the commands"
            ))
            Glibc.exit(code.rawValue)
        }
    }

    static func report(_ error: KeyholdError) {
        FileHandle.standardError.write(Data("keyhold: error: \(error.message)\nhint: \(error.hint)\n".utf8))
    }
}

/// The entry point of the `keyhold` executable.
public enum KeyholdMain {
    /// Runs `keyhold` with the process's arguments (or `arguments`, without the program name) and exits.
    public static func run(_ arguments: [String]? = nil) -> Never {
        tuneAllocator()
        return Keyhold.runMain(arguments)
    }
}

/// Keeps segment-sized buffers (about 1 MiB) on the heap.
///
/// swift-crypto returns every sealed or opened segment in a new `Data`. glibc serves blocks of
/// 128 KiB and more with a fresh `mmap` and returns them with `munmap`, so each segment would
/// cost hundreds of page faults; measured on 1 GiB that tripled the time of `keyhold file encrypt`.
/// Raising the thresholds lets freed segment buffers be reused. Memory stays bounded: at most a
/// few segments are alive at once.
func tuneAllocator() {
    keyhold_keep_buffers_on_heap(32 << 20)
}
