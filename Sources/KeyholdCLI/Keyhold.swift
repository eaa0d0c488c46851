import ArgumentParser
import CKeyholdAllocator
import Foundation
import KeyholdCommandLine
import KeyholdCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The `keyhold` command: the user's and administrator's tool on a managed device.
struct Keyhold: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keyhold",
        abstract: "Encrypt files and drives with escrowed keys.",
        version: VersionLine.text,
        subcommands: [
            FileCommand.self, DriveCommand.self, EnrollCommand.self, ReassignCommand.self, StatusCommand.self, KeyCommand.self, DemoCommand.self,
        ]
    )
}

/// The entry point of the `keyhold` executable.
public enum KeyholdMain {
    /// Runs `keyhold` with the process's arguments (or `arguments`, without the program name) and exits.
    public static func run(_ arguments: [String]? = nil) async -> Never {
        tuneAllocator()
        await CommandRunner.run(Keyhold.self, arguments: arguments)
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
