import ArgumentParser
import KeyholdCore

/// The administration server. For now it only identifies itself; the server arrives with issue 3.
struct KeyholdServer: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keyhold-server",
        abstract: "The Keyhold administration server (key escrow and release).",
        version: KeyholdVersion.current
    )
}

KeyholdServer.main()
