import ArgumentParser
import Foundation
import KeyholdCommandLine
import KeyholdCore
import KeyholdProtocol
import KeyholdSystem

/// `keyhold key …`: offline key files, for tools and tests that work without an agent.
struct KeyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "key",
        abstract: "Create offline key files.",
        subcommands: [New.self]
    )

    struct New: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a new key and write it as a JSON key record (mode 0600).",
            discussion: """
                A key made this way is not escrowed: whoever loses the file loses the data. Managed devices
                get their keys from the agent, which escrows them with the server first.
                Example:
                  keyhold key new --label "laptop backups" -o key.json
                """
        )

        @Option(name: .shortAndLong, help: ArgumentHelp("Where to write the key file.", valueName: "file"))
        var output: String

        @Option(help: "What the key is for: file or drive.")
        var kind: String = "file"

        @Option(help: "A label to remember the key by.")
        var label: String = ""

        @Option(help: ArgumentHelp("Origin server id to record (default: none, all zero).", valueName: "uuid"))
        var originServer: String?

        @Option(help: ArgumentHelp("Origin device id to record (default: none, all zero).", valueName: "uuid"))
        var originDevice: String?

        @Flag(help: "Overwrite the file if it exists.")
        var force = false

        func run() throws {
            guard let kind = KeyKind(rawValue: kind) else {
                throw KeyholdError(.usage, "unknown key kind '\(kind)'", hint: "use --kind file or --kind drive")
            }
            if AtomicFileWriter.exists(output), !force {
                throw KeyholdError(.destinationExists, "\(output) already exists", hint: "choose another name, or add --force to replace it")
            }
            let key = KeyMaterial.generate(
                kind: kind, originServerID: try parseID(originServer, option: "--origin-server") ?? .zero,
                originDeviceID: try parseID(originDevice, option: "--origin-device") ?? .zero,
                created: Date(timeIntervalSince1970: Date().timeIntervalSince1970.rounded(.down)), label: label)
            let record = key.record
            var json = try key.keyFileJSON()
            defer { json.withUnsafeMutableBytes { SecretKey.wipe($0) } }
            try AtomicFileWriter.replace(output, with: json, mode: 0o600)
            print(record.id)
        }
    }
}
